//! Authentication middleware for every protected route: Bearer JWT or HTTP Basic.

use super::error::ApiError;
use super::extract::CurrentUser;
use super::AppState;
use crate::domain::DomainError;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::Response;

pub fn authorization(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        DomainError::Unauthorized(
            "credentials required: Authorization: Bearer <token> or HTTP Basic".into(),
        )
    })?;
    value
        .to_str()
        .map_err(|_| DomainError::Unauthorized("malformed Authorization header".into()).into())
}

pub async fn require_user(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = authorization(request.headers())?;
    let user = state.service.authenticate(header).await?;
    request.extensions_mut().insert(CurrentUser(user));
    Ok(next.run(request).await)
}
