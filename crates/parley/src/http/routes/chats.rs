//! Chats of an application, numbered from 1.

use super::{chat_number, token};
use crate::domain::Chat;
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiPath, ApiQuery, CurrentUser, ListParams};
use crate::http::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatCreatedView {
    chat_number: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChatView {
    chat_number: i64,
    /// Eventually consistent: updated by count sync.
    messages_count: i64,
}

impl From<Chat> for ChatView {
    fn from(c: Chat) -> Self {
        Self {
            chat_number: c.number,
            messages_count: c.messages_count,
        }
    }
}

/// Open a chat; answers with its number once it is durable.
#[utoipa::path(post, path = "/applications/{token}/chats", tag = "chats",
    params(("token" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 h")),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 201, body = ChatCreatedView),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 409, description = "Same Idempotency-Key still in progress", body = ErrorBody),
        (status = 503, description = "A backend is down; nothing was created", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(raw): ApiPath<String>,
) -> Result<(StatusCode, Json<ChatCreatedView>), ApiError> {
    let number = state.service.create_chat(&user, &token(&raw)?).await?;
    Ok((
        StatusCode::CREATED,
        Json(ChatCreatedView {
            chat_number: number,
        }),
    ))
}

/// The application's chats by number.
#[utoipa::path(get, path = "/applications/{token}/chats", tag = "chats",
    params(("token" = String, Path), ListParams), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = Vec<ChatView>),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 422, description = "page or limit out of range, or before= (message lists only)", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<ChatView>>, ApiError> {
    let chats = state
        .service
        .chats(&token(&raw)?, params.offset_page()?)
        .await?;
    Ok(Json(chats.into_iter().map(Into::into).collect()))
}

/// One chat.
#[utoipa::path(get, path = "/applications/{token}/chats/{chatNumber}", tag = "chats",
    params(("token" = String, Path), ("chatNumber" = i64, Path)), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = ChatView),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath((raw, chat)): ApiPath<(String, String)>,
) -> Result<Json<ChatView>, ApiError> {
    Ok(Json(
        state
            .service
            .chat(&token(&raw)?, chat_number(&chat)?)
            .await?
            .into(),
    ))
}
