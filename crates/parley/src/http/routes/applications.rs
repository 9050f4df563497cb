//! Applications: create, list the caller's, read, rename (creator only).

use super::token;
use crate::domain::{Application, Name};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, CurrentUser, ListParams};
use crate::http::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
pub struct NewApplication {
    #[schema(example = "support desk")]
    name: String,
}

#[derive(Deserialize, ToSchema)]
pub struct RenameByToken {
    token: String,
    name: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApplicationView {
    #[schema(example = "q3Ff0aZ1LkXr8vBn2c4D6e7G")]
    token: String,
    name: String,
    /// Eventually consistent: updated by count sync.
    chats_count: i64,
}

impl From<Application> for ApplicationView {
    fn from(a: Application) -> Self {
        Self {
            token: a.token.to_string(),
            name: a.name,
            chats_count: a.chats_count,
        }
    }
}

/// Create an application; its token is how clients name it from now on.
#[utoipa::path(post, path = "/applications", tag = "applications", request_body = NewApplication,
    security(("bearer" = []), ("basic" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 h")),
    responses(
        (status = 201, body = ApplicationView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 409, description = "Same Idempotency-Key still in progress", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 422, description = "Empty or over-long name", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<NewApplication>,
) -> Result<(StatusCode, Json<ApplicationView>), ApiError> {
    let name = Name::parse("name", &body.name)?;
    let app = state.service.create_application(&user, name).await?;
    Ok((StatusCode::CREATED, Json(app.into())))
}

/// The caller's applications, oldest first.
#[utoipa::path(get, path = "/applications", tag = "applications", params(ListParams),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = Vec<ApplicationView>),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 422, description = "page or limit out of range, or before= (message lists only)", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<ApplicationView>>, ApiError> {
    let apps = state
        .service
        .applications(&user, params.offset_page()?)
        .await?;
    Ok(Json(apps.into_iter().map(Into::into).collect()))
}

/// One application.
#[utoipa::path(get, path = "/applications/{token}", tag = "applications",
    params(("token" = String, Path)), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = ApplicationView),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<ApplicationView>, ApiError> {
    Ok(Json(state.service.application(&token(&raw)?).await?.into()))
}

/// Rename an application (its creator only).
#[utoipa::path(put, path = "/applications/{token}", tag = "applications", request_body = NewApplication,
    params(("token" = String, Path)), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = ApplicationView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 403, description = "Not the creator", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 422, description = "Empty or over-long name", body = ErrorBody),
    ))]
pub async fn rename(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<NewApplication>,
) -> Result<Json<ApplicationView>, ApiError> {
    let name = Name::parse("name", &body.name)?;
    Ok(Json(
        state
            .service
            .rename_application(&user, &token(&raw)?, name)
            .await?
            .into(),
    ))
}

/// Rename an application named in the body (the seed's form).
#[utoipa::path(put, path = "/applications", tag = "applications", request_body = RenameByToken,
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = ApplicationView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 403, description = "Not the creator", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 422, description = "Empty or over-long name", body = ErrorBody),
    ))]
pub async fn rename_by_body(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<RenameByToken>,
) -> Result<Json<ApplicationView>, ApiError> {
    let name = Name::parse("name", &body.name)?;
    Ok(Json(
        state
            .service
            .rename_application(&user, &token(&body.token)?, name)
            .await?
            .into(),
    ))
}
