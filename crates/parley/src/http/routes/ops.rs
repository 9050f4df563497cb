//! Health, readiness and metrics: open to all, as load balancers and Prometheus expect.

use crate::bus::Queue;
use crate::http::error::{error_response, ErrorBody};
use crate::http::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
pub struct Status {
    #[schema(example = "healthy")]
    status: &'static str,
}

/// 200 while the process runs.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Status)))]
pub async fn health() -> Json<Status> {
    Json(Status { status: "healthy" })
}

/// 200 when every configured backend answers, else 503 naming the one that does not.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Status), (status = 503, description = "A backend is down", body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let s = &state.service;
    let checks = [
        ("store", s.store.ping().await),
        ("cache", s.cache.ping().await),
        ("bus", s.bus.ping().await),
        ("search", s.search.ping().await),
    ];
    for (name, result) in checks {
        if let Err(e) = result {
            // Details (addresses, SQL) go to the log, not to anonymous callers.
            tracing::warn!(backend = name, error = %format!("{e:#}"), "readiness check failed");
            return error_response(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("the {name} is not answering"),
            );
        }
    }
    Json(Status { status: "ready" }).into_response()
}

/// Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", content_type = "text/plain")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    for queue in Queue::ALL {
        if let Some(depth) = state.service.bus.depth(queue) {
            metrics::gauge!("parley_queue_depth", "queue" => queue.name()).set(depth as f64);
        }
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
