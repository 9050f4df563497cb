//! `Idempotency-Key` on creating POSTs: the first answer (2xx or 4xx) is kept for 24 h in the
//! shared cache under the caller and the key, and a retry gets it again without creating
//! anything. A retry while the first is still running gets 409; the same key on a different
//! request gets 422. A 5xx is not kept, so the retry runs anew. A first request that dies
//! unanswered holds its key for `PENDING_TTL`.

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

    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
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
