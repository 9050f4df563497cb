//! Sign-up, tokens, the caller's account, deletion and recovery.

use crate::domain::{format_ms, Email, Name, Password, User};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, CurrentUser};
use crate::http::AppState;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
pub struct SignUp {
    #[schema(example = "Ada")]
    name: String,
    #[schema(example = "ada@example.com")]
    email: String,
    /// At least 10 characters.
    #[schema(example = "correct horse battery")]
    password: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    name: String,
    email: String,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            name: u.name,
            email: u.email,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenView {
    token: String,
    /// When the token stops working (RFC 3339).
    expires_at: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeletionView {
    /// When the account will be deleted unless recovered (RFC 3339).
    scheduled_for: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Recover {
    recovery_token: String,
}

/// Create an account.
#[utoipa::path(post, path = "/users", tag = "accounts", request_body = SignUp,
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 h")),
    responses(
        (status = 201, body = UserView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 409, description = "The e-mail is taken", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 422, description = "Invalid name, e-mail or password (under 10 characters)", body = ErrorBody),
    ))]
pub async fn sign_up(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<SignUp>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let name = Name::parse("name", &body.name)?;
    let email = Email::parse(&body.email)?;
    let password = Password::parse(body.password)?;
    let user = state.service.sign_up(name, email, password).await?;
    Ok((StatusCode::CREATED, Json(user.into())))
}

/// Exchange HTTP Basic credentials (email:password) for a JWT.
#[utoipa::path(post, path = "/auth/token", tag = "accounts", security(("basic" = [])),
    responses(
        (status = 200, body = TokenView),
        (status = 401, description = "Missing or wrong credentials", body = ErrorBody),
    ))]
pub async fn token(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<TokenView>, ApiError> {
    let header = crate::http::auth::authorization(&headers)?;
    let user = state.service.authenticate_basic(header).await?;
    let (token, expires) = state.service.issue_token(&user)?;
    Ok(Json(TokenView {
        token,
        expires_at: format_ms(expires * 1000),
    }))
}

/// The caller's account.
#[utoipa::path(get, path = "/users/me", tag = "accounts", security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = UserView),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
    ))]
pub async fn me(CurrentUser(user): CurrentUser) -> Json<UserView> {
    Json(user.into())
}

/// Schedule the caller's account for deletion in 24 h; a recovery token is e-mailed.
#[utoipa::path(delete, path = "/users/me", tag = "accounts", security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 202, body = DeletionView),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 429, description = "More than 2 deletion requests today", body = ErrorBody),
    ))]
pub async fn delete_me(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> Result<(StatusCode, Json<DeletionView>), ApiError> {
    let due = state.service.schedule_deletion(&user).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(DeletionView {
            scheduled_for: format_ms(due),
        }),
    ))
}

/// Cancel a scheduled deletion with the e-mailed recovery token.
#[utoipa::path(post, path = "/users/recover", tag = "accounts", request_body = Recover,
    responses(
        (status = 200, body = UserView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 404, description = "No pending deletion has this token", body = ErrorBody),
        (status = 422, description = "Missing recoveryToken", body = ErrorBody),
    ))]
pub async fn recover(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<Recover>,
) -> Result<Json<UserView>, ApiError> {
    if body.recovery_token.trim().is_empty() {
        return Err(ApiError::invalid("recoveryToken must not be empty"));
    }
    Ok(Json(
        state.service.recover(&body.recovery_token).await?.into(),
    ))
}
