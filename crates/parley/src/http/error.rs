//! The one error type at the HTTP edge: maps domain errors to status codes and the JSON
//! error body of API.md. Internal details are logged, never sent.

use crate::domain::DomainError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `conflict`, `too_large`, `invalid`, `rate_limited`,
    /// `unavailable`, `internal`.
    #[schema(example = "not_found")]
    pub code: &'static str,
    #[schema(example = "chat 7 not found in this application")]
    pub message: String,
}

#[derive(Debug)]
pub enum ApiError {
    Domain(DomainError),
    TooLarge(String),
    MethodNotAllowed,
}

impl<E: Into<DomainError>> From<E> for ApiError {
    fn from(e: E) -> Self {
        Self::Domain(e.into())
    }
}

impl ApiError {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::Domain(DomainError::BadRequest(msg.into()))
    }
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Domain(DomainError::Invalid(msg.into()))
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::Domain(DomainError::NotFound(msg.into()))
    }
}

pub fn error_response(status: StatusCode, code: &'static str, message: String) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            error: ErrorDetail { code, message },
        }),
    )
        .into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::TooLarge(m) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method".into(),
            ),
            ApiError::Domain(e) => match e {
                DomainError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m),
                DomainError::Unauthorized(m) => {
                    let mut response = error_response(StatusCode::UNAUTHORIZED, "unauthorized", m);
                    response.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Basic realm=\"parley\", Bearer"),
                    );
                    return response;
                }
                DomainError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m),
                DomainError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m),
                DomainError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
                DomainError::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", m),
                DomainError::RateLimited(m) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", m),
                DomainError::Unavailable(m) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable", m),
                DomainError::Internal(e) => {
                    tracing::error!(error = %format!("{e:#}"), "internal error");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "internal error; see the server log".into(),
                    )
                }
            },
        };
        error_response(status, code, message)
    }
}
