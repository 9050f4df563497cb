//! Extractors that turn every malformed request into the JSON error body (invariant 6):
//! syntax errors are 400, well-formed JSON with wrong types or fields 422, bodies over the
//! limit 413.

use super::error::ApiError;
use crate::domain::{DomainError, PageRequest, User};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A JSON body, whatever the Content-Type says (curl users forget it).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        parse_json(&bytes).map(ApiJson)
    }
}

pub fn body_error(e: BytesRejection) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::TooLarge(format!(
            "request bodies are limited to {} bytes",
            super::MAX_REQUEST_BYTES
        ))
    } else {
        ApiError::bad_request(format!("could not read the request body: {e}"))
    }
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("a JSON body is required"));
    }
    // The whole document first, so a syntax error anywhere (trailing garbage included) is a
    // 400 even when the fields before it would already fail or pass as values.
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))?;
    // serde reads a struct from an array positionally (`["x"]` as `{"name": "x"}`); no request
    // body of this API holds an array, so one anywhere is a wrong type, not a request.
    if let Some(at) = array_in(&value, String::new()) {
        let at = if at.is_empty() { ".".to_owned() } else { at };
        return Err(ApiError::invalid(format!(
            "invalid request body at {at}: expected an object or a scalar, found an array"
        )));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let at = if path == "." {
            String::new()
        } else {
            format!(" at {path}")
        };
        ApiError::invalid(format!("invalid request body{at}: {inner}"))
    })
}

/// The path of the first array in `value`, if any.
fn array_in(value: &serde_json::Value, path: String) -> Option<String> {
    match value {
        serde_json::Value::Array(_) => Some(path),
        serde_json::Value::Object(map) => map
            .iter()
            .find_map(|(key, inner)| array_in(inner, format!("{path}.{key}"))),
        _ => None,
    }
}

/// The authenticated caller, put in the request by the auth middleware.
#[derive(Clone)]
pub struct CurrentUser(pub User);

impl<S: Send + Sync> FromRequestParts<S> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or_else(|| {
                DomainError::Internal(anyhow::anyhow!(
                    "a protected route lacks the auth middleware"
                ))
                .into()
            })
    }
}

/// `page`, `limit` and `before`, taken as text so a wrong type is a 422 that names the field.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page number, from 1.
    #[param(value_type = Option<i64>, minimum = 1)]
    page: Option<String>,
    /// Items per page, 1 to 100 (default 10).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// Messages only (422 on other lists): newest first, strictly older than this message
    /// number (keyset).
    #[param(value_type = Option<i64>, minimum = 1)]
    before: Option<String>,
}

fn int_param(name: &str, value: &Option<String>) -> Result<Option<i64>, ApiError> {
    value
        .as_deref()
        .map(|v| {
            v.trim()
                .parse::<i64>()
                .map_err(|_| ApiError::invalid(format!("{name} must be an integer")))
        })
        .transpose()
}

impl ListParams {
    pub fn from_parts(page: Option<String>, limit: Option<String>) -> Self {
        Self {
            page,
            limit,
            before: None,
        }
    }

    /// The page of a list that has no keyset paging (applications, chats): `before=` there
    /// is refused rather than ignored, so a client never takes page 1 for what it asked.
    pub fn offset_page(&self) -> Result<PageRequest, ApiError> {
        if self.before.is_some() {
            return Err(ApiError::invalid(
                "before= pages message lists only; page this list with page= and limit=",
            ));
        }
        self.page()
    }

    pub fn page(&self) -> Result<PageRequest, ApiError> {
        Ok(PageRequest::parse(
            int_param("page", &self.page)?,
            int_param("limit", &self.limit)?,
            int_param("before", &self.before)?,
        )?)
    }
}

/// Query strings: a malformed one is a 400 in the JSON error body.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))
    }
}

/// Path parameters: a malformed path (say, invalid percent-encoding) is a 400 in the JSON
/// error body, not axum's plain-text rejection.
pub struct ApiPath<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| ApiPath(path.0))
            .map_err(|e| ApiError::bad_request(format!("malformed path: {}", e.body_text())))
    }
}
