//! Messages of a chat, numbered from 1: post, list (newest first), read, edit (sender
//! only), search.

use super::{chat_number, message_number, token};
use crate::domain::{format_ms, Body, Message, PageRequest};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, CurrentUser, ListParams};
use crate::http::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct NewMessage {
    #[schema(example = "Hello there")]
    body: String,
    /// When the message was written (RFC 3339); defaults to now.
    created_at: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct EditBody {
    body: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EditByNumber {
    message_number: i64,
    body: String,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageNumberView {
    message_number: i64,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    message_number: i64,
    sender_name: String,
    body: String,
    created_at: String,
}

impl From<Message> for MessageView {
    fn from(m: Message) -> Self {
        Self {
            message_number: m.number,
            sender_name: m.sender_name,
            body: m.body,
            created_at: format_ms(m.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchHitView {
    message_number: i64,
    body: String,
    created_at: String,
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Words to find; every word must match (whole words, prefixes or parts of words).
    q: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1)]
    page: Option<String>,
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
}

fn created_at(raw: Option<String>) -> Result<Option<i64>, ApiError> {
    raw.map(|s| {
        chrono::DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.timestamp_millis())
            .map_err(|_| ApiError::invalid("createdAt must be an RFC 3339 date-time"))
    })
    .transpose()
}

/// Post a message; answers with its number once it is durable.
#[utoipa::path(post, path = "/applications/{token}/chats/{chatNumber}/messages", tag = "messages",
    request_body = NewMessage,
    params(("token" = String, Path), ("chatNumber" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 h")),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 201, body = MessageNumberView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
        (status = 409, description = "Same Idempotency-Key still in progress", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 422, description = "Empty body, body over 64 KiB, bad createdAt", body = ErrorBody),
        (status = 503, description = "A backend is down; nothing was created", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath((raw, chat)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<NewMessage>,
) -> Result<(StatusCode, Json<MessageNumberView>), ApiError> {
    let (token, chat) = (token(&raw)?, chat_number(&chat)?);
    let text = Body::parse(body.body)?;
    let created_at = created_at(body.created_at)?;
    let number = state
        .service
        .create_message(&user, &token, chat, text, created_at)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(MessageNumberView {
            message_number: number,
        }),
    ))
}

/// Messages of a chat, newest first; `before` pages by message number (keyset).
#[utoipa::path(get, path = "/applications/{token}/chats/{chatNumber}/messages", tag = "messages",
    params(("token" = String, Path), ("chatNumber" = i64, Path), ListParams),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = Vec<MessageView>),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
        (status = 422, description = "page, limit or before out of range", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath((raw, chat)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<MessageView>>, ApiError> {
    let (token, chat) = (token(&raw)?, chat_number(&chat)?);
    let messages = state.service.messages(&token, chat, params.page()?).await?;
    Ok(Json(messages.into_iter().map(Into::into).collect()))
}

/// One message.
#[utoipa::path(get, path = "/applications/{token}/chats/{chatNumber}/messages/{messageNumber}", tag = "messages",
    params(("token" = String, Path), ("chatNumber" = i64, Path), ("messageNumber" = i64, Path)),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = MessageView),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token, chat or message", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath((raw, chat, n)): ApiPath<(String, String, String)>,
) -> Result<Json<MessageView>, ApiError> {
    let message = state
        .service
        .message(&token(&raw)?, chat_number(&chat)?, message_number(&n)?)
        .await?;
    Ok(Json(message.into()))
}

/// Edit a message (its sender only); the last accepted edit wins.
#[utoipa::path(put, path = "/applications/{token}/chats/{chatNumber}/messages/{messageNumber}", tag = "messages",
    request_body = EditBody,
    params(("token" = String, Path), ("chatNumber" = i64, Path), ("messageNumber" = i64, Path)),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = MessageNumberView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 403, description = "Not the sender", body = ErrorBody),
        (status = 404, description = "Unknown token, chat or message", body = ErrorBody),
        (status = 422, description = "Empty body or over 64 KiB", body = ErrorBody),
        (status = 503, description = "A backend is down; nothing was changed", body = ErrorBody),
    ))]
pub async fn edit(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath((raw, chat, n)): ApiPath<(String, String, String)>,
    ApiJson(body): ApiJson<EditBody>,
) -> Result<Json<MessageNumberView>, ApiError> {
    let (token, chat, number) = (token(&raw)?, chat_number(&chat)?, message_number(&n)?);
    let text = Body::parse(body.body)?;
    state
        .service
        .edit_message(&user, &token, chat, number, text)
        .await?;
    Ok(Json(MessageNumberView {
        message_number: number.get(),
    }))
}

/// Edit a message named in the body (the seed's form).
#[utoipa::path(put, path = "/applications/{token}/chats/{chatNumber}/messages", tag = "messages",
    request_body = EditByNumber,
    params(("token" = String, Path), ("chatNumber" = i64, Path)),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = MessageNumberView),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 403, description = "Not the sender", body = ErrorBody),
        (status = 404, description = "Unknown token, chat or message", body = ErrorBody),
        (status = 422, description = "Empty body or over 64 KiB", body = ErrorBody),
        (status = 503, description = "A backend is down; nothing was changed", body = ErrorBody),
    ))]
pub async fn edit_by_body(
    State(state): State<AppState>,
    user: CurrentUser,
    ApiPath((raw, chat)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<EditByNumber>,
) -> Result<Json<MessageNumberView>, ApiError> {
    let n = body.message_number.to_string();
    edit(
        State(state),
        user,
        ApiPath((raw, chat, n)),
        ApiJson(EditBody { body: body.body }),
    )
    .await
}

/// Full-text search in one chat, newest first among matches.
#[utoipa::path(get, path = "/applications/{token}/chats/{chatNumber}/messages/search", tag = "messages",
    params(("token" = String, Path), ("chatNumber" = i64, Path), SearchParams),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = Vec<SearchHitView>),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
        (status = 422, description = "Missing or empty q; page or limit out of range", body = ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath((raw, chat)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<Vec<SearchHitView>>, ApiError> {
    let hits = run_search(&state, &raw, &chat, params).await?;
    Ok(Json(
        hits.into_iter()
            .map(|m| SearchHitView {
                message_number: m.number,
                body: m.body,
                created_at: format_ms(m.created_at),
            })
            .collect(),
    ))
}

pub async fn run_search(
    state: &AppState,
    raw: &str,
    chat: &str,
    params: SearchParams,
) -> Result<Vec<Message>, ApiError> {
    let (token, chat) = (token(raw)?, chat_number(chat)?);
    let q = params.q.ok_or_else(|| ApiError::invalid("q is required"))?;
    let page = ListParams::from_parts(params.page, params.limit).page()?;
    let page = PageRequest {
        before: None,
        ..page
    };
    Ok(state.service.search(&token, chat, &q, page).await?)
}
