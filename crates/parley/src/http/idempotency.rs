//! `Idempotency-Key` on creating POSTs: the first answer (2xx or 4xx) is kept for 24 h in the
//! shared cache under the caller and the key, and a retry gets it again without creating
//! anything. A retry while the first is still running gets 409; the same key on a different
//! request gets 422. A 5xx is not kept, so the retry runs anew. A first request whose client
//! goes away still runs to its answer, which is kept; one whose process dies holds its key for
//! `PENDING_TTL`.

use super::error::ApiError;
use super::extract::CurrentUser;
use super::AppState;
use crate::domain::DomainError;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;

pub const HEADER: &str = "idempotency-key";
const TTL: Duration = Duration::from_secs(24 * 3600);
/// A first request that has not finished in this time is presumed dead; its key frees up.
const PENDING_TTL: Duration = Duration::from_secs(60);
const MAX_KEY_LEN: usize = 255;

#[derive(Serialize, Deserialize)]
enum Record {
    Pending {
        fingerprint: String,
    },
    Done {
        fingerprint: String,
        status: u16,
        body: Vec<u8>,
    },
}

pub async fn idempotent(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if request.method() != Method::POST {
        return Ok(next.run(request).await);
    }
    let Some(key) = request.headers().get(HEADER) else {
        return Ok(next.run(request).await);
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= MAX_KEY_LEN)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible characters"
            ))
        })?
        .to_owned();
    let owner = request
        .extensions()
        .get::<CurrentUser>()
        .map(|u| u.0.id.to_string());

    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, super::MAX_REQUEST_BYTES)
        .await
        .map_err(|e| {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if too_large {
                ApiError::TooLarge(format!(
                    "request bodies are limited to {} bytes",
                    super::MAX_REQUEST_BYTES
                ))
            } else {
                ApiError::bad_request(format!("could not read the request body: {e}"))
            }
        })?;
    let fingerprint = hex::encode(
        Sha256::new_with_prefix(parts.uri.path())
            .chain_update(&bytes)
            .finalize(),
    );
    // Without a user (sign-up), the request itself scopes the key, so strangers who pick the
    // same key neither collide nor squat each other's.
    let owner = owner.unwrap_or_else(|| format!("anonymous:{fingerprint}"));
    let cache_key = format!(
        "idempotency:{owner}:{}",
        hex::encode(Sha256::digest(key.as_bytes()))
    );

    let pending = serde_json::to_vec(&Record::Pending {
        fingerprint: fingerprint.clone(),
    })
    .expect("serializes");
    let cache = &state.service.cache;
    if !cache
        .set_if_absent(&cache_key, pending, PENDING_TTL)
        .await
        .map_err(DomainError::from)?
    {
        let stored = cache.get(&cache_key).await.map_err(DomainError::from)?;
        return match stored.and_then(|b| serde_json::from_slice::<Record>(&b).ok()) {
            Some(Record::Done {
                fingerprint: f,
                status,
                body,
            }) if f == fingerprint => Ok(replay(status, body)),
            Some(Record::Pending { fingerprint: f }) if f == fingerprint => {
                Err(DomainError::Conflict(
                    "a request with this Idempotency-Key is still in progress".into(),
                )
                .into())
            }
            Some(_) => Err(ApiError::invalid(
                "this Idempotency-Key was used for a different request",
            )),
            // Expired between the two calls: let the client retry.
            None => {
                Err(DomainError::Conflict("retry: the Idempotency-Key just expired".into()).into())
            }
        };
    }

    // On a task of its own: a client that goes away (a timeout, the usual reason to retry with
    // the same key) must not stop the request between its effect and the record of its
    // answer, or the retry would get 409 until `PENDING_TTL` and then create a second item.
    let request = Request::from_parts(parts, Body::from(bytes));
    let cache = state.service.cache.clone();
    tokio::spawn(answer_and_keep(
        next,
        request,
        cache,
        cache_key,
        fingerprint,
    ))
    .await
    .map_err(|e| DomainError::Internal(e.into()))?
}

/// Runs the request and keeps its answer (2xx or 4xx) under the key; a 5xx frees the key.
async fn answer_and_keep(
    next: Next,
    request: Request,
    cache: std::sync::Arc<dyn crate::cache::Cache>,
    cache_key: String,
    fingerprint: String,
) -> Result<Response, ApiError> {
    let response = next.run(request).await;
    if response.status().is_server_error() {
        let _ = cache.delete(&cache_key).await;
        return Ok(response);
    }
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|e| DomainError::Internal(e.into()))?;
    let record = Record::Done {
        fingerprint,
        status: parts.status.as_u16(),
        body: body.to_vec(),
    };
    if let Err(e) = cache
        .set(
            &cache_key,
            serde_json::to_vec(&record).expect("serializes"),
            TTL,
        )
        .await
    {
        tracing::warn!(error = %e, "could not keep an idempotent answer");
    }
    Ok(Response::from_parts(parts, Body::from(body)))
}

fn replay(status: u16, body: Vec<u8>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::MemoryBus;
    use crate::cache::MemoryCache;
    use crate::domain::{JwtKeys, Service, ServiceSettings};
    use crate::search::TantivyIndex;
    use crate::sequencer::MemorySequencer;
    use crate::store::Store;
    use axum::routing::post;
    use axum::Router;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    use tokio::sync::{mpsc, Notify};
    use tower::ServiceExt;

    /// The client of a first request goes away while it runs: the request still finishes
    /// and keeps its answer, so the retry gets that answer (after 409s while it runs)
    /// instead of 409 until `PENDING_TTL` and then a second run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_whose_client_went_away_still_keeps_its_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(crate::store::suite::sqlite_store(dir.path()).await);
        let service = Service::new(
            store.clone(),
            Arc::new(MemorySequencer::new(store.clone())),
            Arc::new(MemoryBus::default()),
            Arc::new(TantivyIndex::open(&dir.path().join("index")).unwrap()),
            Arc::new(MemoryCache::new(1 << 20)),
            JwtKeys::new(&[7; 32], Duration::from_secs(60)),
            ServiceSettings::default(),
        );
        let state = AppState {
            service: Arc::new(service),
            metrics: crate::telemetry::metrics(),
        };
        // A creating route that runs until the test lets it answer.
        let (entered, mut entered_rx) = mpsc::unbounded_channel();
        let release = Arc::new(Notify::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let handler = {
            let (release, runs) = (release.clone(), runs.clone());
            move || {
                let (entered, release, runs) = (entered.clone(), release.clone(), runs.clone());
                async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    entered.send(()).unwrap();
                    release.notified().await;
                    (StatusCode::CREATED, "{\"number\":1}")
                }
            }
        };
        let app = Router::new()
            .route("/things", post(handler))
            .layer(axum::middleware::from_fn_with_state(state, idempotent));
        let request = || {
            Request::post("/things")
                .header(HEADER, "key-1")
                .body(Body::from("{}"))
                .unwrap()
        };

        let first = tokio::spawn(app.clone().oneshot(request()));
        entered_rx.recv().await.unwrap();
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        release.notify_one();

        let deadline = Instant::now() + Duration::from_secs(5);
        let retry = loop {
            let response = app.clone().oneshot(request()).await.unwrap();
            if response.status() != StatusCode::CONFLICT {
                break response;
            }
            assert!(
                Instant::now() < deadline,
                "the retry still conflicts: the first request's answer was never kept"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(retry.status(), StatusCode::CREATED);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        let body = axum::body::to_bytes(retry.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"number\":1}");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the retry ran the request again"
        );
    }
}
