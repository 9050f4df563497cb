//! The HTTP edge (axum): routes, the middleware stack, the OpenAPI document and Swagger UI.
//! Handlers parse and validate, call `domain::Service`, and map the answer; nothing here
//! knows which backends are in use.

pub mod auth;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod routes;

use crate::domain::Service;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use error::ApiError;
use metrics_exporter_prometheus::PrometheusHandle;
use routes::{accounts, applications, chats, compat, messages, ops};
use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

/// Largest request body accepted (413 above it).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub metrics: PrometheusHandle,
}

/// Browser origins allowed by CORS: any, or a list.
#[derive(Debug, Clone)]
pub enum CorsOrigins {
    Any,
    List(Vec<String>),
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Parley", description = "Self-hostable chat backend: applications, numbered chats and messages, search, accounts."),
    modifiers(&SecuritySchemes),
    tags(
        (name = "accounts"), (name = "applications"), (name = "chats"), (name = "messages"),
        (name = "compatibility", description = "The classic Rails + Go chat API, under /api/v1"),
        (name = "operations"),
    )
)]
struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// The routes, in groups by the middleware they need, and the OpenAPI document that
/// describes them, built together so neither can drift.
struct Api {
    /// The one creating route open to all; idempotent per key (there is no user to scope by).
    sign_up: Router<AppState>,
    /// Token exchange and recovery: never idempotent (a replay would hand out a token).
    public: Router<AppState>,
    protected: Router<AppState>,
    operations: Router<AppState>,
    openapi: utoipa::openapi::OpenApi,
}

fn api() -> Api {
    let (sign_up, sign_up_doc) = OpenApiRouter::new()
        .routes(routes!(accounts::sign_up))
        .split_for_parts();
    let (public, public_doc) = OpenApiRouter::new()
        .routes(routes!(accounts::token))
        .routes(routes!(accounts::recover))
        .split_for_parts();
    let (protected, protected_doc) = OpenApiRouter::new()
        .routes(routes!(accounts::me, accounts::delete_me))
        .routes(routes!(
            applications::create,
            applications::list,
            applications::rename_by_body
        ))
        .routes(routes!(applications::get, applications::rename))
        .routes(routes!(chats::create, chats::list))
        .routes(routes!(chats::get))
        .routes(routes!(
            messages::create,
            messages::list,
            messages::edit_by_body
        ))
        .routes(routes!(messages::search))
        .routes(routes!(messages::get, messages::edit))
        .routes(routes!(
            compat::create_application,
            compat::list_applications
        ))
        .routes(routes!(compat::get_application, compat::rename_application))
        .routes(routes!(compat::create_chat, compat::list_chats))
        .routes(routes!(compat::get_chat))
        .routes(routes!(compat::create_message, compat::list_messages))
        .routes(routes!(compat::search))
        .routes(routes!(compat::get_message, compat::edit_message))
        .split_for_parts();
    let (operations, operations_doc) = OpenApiRouter::new()
        .routes(routes!(ops::health))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .split_for_parts();
    let mut openapi = ApiDoc::openapi();
    openapi.merge(sign_up_doc);
    openapi.merge(public_doc);
    openapi.merge(protected_doc);
    openapi.merge(operations_doc);
    Api {
        sign_up,
        public,
        protected,
        operations,
        openapi,
    }
}

/// The OpenAPI document, as served at `/openapi.json`.
pub fn openapi_json() -> String {
    api()
        .openapi
        .to_pretty_json()
        .expect("the document serializes")
}

pub fn router(state: AppState, cors: &CorsOrigins, timeout: Duration) -> Router {
    let Api {
        sign_up,
        public,
        protected,
        operations,
        openapi,
    } = api();
    let idempotent = middleware::from_fn_with_state(state.clone(), idempotency::idempotent);
    // Layers run outside in: authenticate first, then idempotency (it needs the user).
    let protected = protected.layer(
        ServiceBuilder::new()
            .layer(middleware::from_fn_with_state(
                state.clone(),
                auth::require_user,
            ))
            .layer(idempotent.clone()),
    );
    let api = sign_up
        .layer(idempotent)
        .merge(public)
        .merge(protected)
        .merge(operations);
    let cors_layer = CorsLayer::new()
        .allow_methods(Any)
        .allow_headers(Any)
        .expose_headers([HeaderName::from_static("x-request-id")])
        .max_age(Duration::from_secs(3600))
        .allow_origin(match cors {
            CorsOrigins::Any => AllowOrigin::any(),
            CorsOrigins::List(origins) => {
                AllowOrigin::list(origins.iter().filter_map(|o| o.parse().ok()))
            }
        });
    let request_id = HeaderName::from_static("x-request-id");
    api.merge(SwaggerUi::new("/swagger").url("/openapi.json", openapi))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        // One layer made of the whole stack, outermost first: each `Router::layer` call boxes
        // every route's service again, and a request clones its route's service, so eight
        // calls cost eight boxed clones (allocations) per request.
        .layer(
            ServiceBuilder::new()
                .layer(CatchPanicLayer::custom(|_| {
                    error::error_response(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal error; see the server log".into(),
                    )
                }))
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(PropagateRequestIdLayer::new(request_id))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|request: &Request| {
                        let id = request
                            .headers()
                            .get("x-request-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("request", id, method = %request.method(), uri = %request.uri())
                    }),
                )
                .layer(cors_layer)
                .layer(middleware::from_fn(record_metrics))
                .layer(middleware::from_fn_with_state(timeout, time_limit))
                .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES)),
        )
}

/// Ends a request that takes longer than `REQUEST_TIMEOUT` (a slow body upload included),
/// so slow clients cannot hold connections, or a graceful stop, indefinitely.
async fn time_limit(
    axum::extract::State(limit): axum::extract::State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            format!("the request took longer than {limit:?}"),
        ),
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// Request counts and latency by route template (never the raw path: tokens would explode
/// the label set) and status.
async fn record_metrics(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let (requests, duration) = request_series(route, &method, response.status());
    requests.increment(1);
    duration.record(start.elapsed().as_secs_f64());
    response
}

/// The two series of one (route, method, status), registered on first use and remembered:
/// `metrics::counter!` with owned labels builds three label strings and searches the
/// registry on every call (measured: a tenth of a `/health` request's instructions).
fn request_series(
    route: &str,
    method: &Method,
    status: StatusCode,
) -> (metrics::Counter, metrics::Histogram) {
    type Series = (Method, StatusCode, metrics::Counter, metrics::Histogram);
    static SERIES: std::sync::LazyLock<std::sync::RwLock<HashMap<String, Vec<Series>>>> =
        std::sync::LazyLock::new(|| {
            // Handles taken before the recorder is installed would record nowhere, forever.
            crate::telemetry::metrics();
            Default::default()
        });
    // Only known methods become labels: invented ones would each make new series.
    let method = match *method {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::OPTIONS
        | Method::HEAD
        | Method::PATCH => method.clone(),
        _ => Method::from_bytes(b"other").expect("a valid method"),
    };
    let find = |all: &HashMap<String, Vec<Series>>| {
        all.get(route)?
            .iter()
            .find(|(m, s, ..)| *m == method && *s == status)
            .map(|(.., requests, duration)| (requests.clone(), duration.clone()))
    };
    if let Some(found) = find(&SERIES.read().unwrap_or_else(PoisonError::into_inner)) {
        return found;
    }
    let mut all = SERIES.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(found) = find(&all) {
        return found;
    }
    let labels = [
        ("route", route.to_owned()),
        ("method", method.to_string()),
        ("status", status.as_u16().to_string()),
    ];
    let requests = metrics::counter!("parley_http_requests_total", &labels);
    let duration = metrics::histogram!("parley_http_request_duration_seconds", &labels);
    all.entry(route.to_owned()).or_default().push((
        method,
        status,
        requests.clone(),
        duration.clone(),
    ));
    (requests, duration)
}
