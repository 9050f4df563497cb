//! The compatibility API of the classic Rails + Go chat system, under `/api/v1`: same store,
//! rules and credentials as the main API, snake_case bodies wrapped the Rails way.

use super::messages::{run_search, SearchParams};
use super::{chat_number, message_number, token};
use crate::domain::{Application, Body, Chat, Message, Name};
use crate::http::error::{ApiError, ErrorBody};
use crate::http::extract::{ApiJson, ApiPath, ApiQuery, CurrentUser, ListParams};
use crate::http::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

#[derive(Deserialize, ToSchema)]
pub struct NameFields {
    name: String,
}

#[derive(Deserialize, ToSchema)]
pub struct ApplicationParams {
    chat_application: NameFields,
}

#[derive(Deserialize, ToSchema)]
pub struct BodyFields {
    body: String,
}

#[derive(Deserialize, ToSchema)]
pub struct MessageParams {
    message: BodyFields,
}

#[derive(Serialize, ToSchema)]
pub struct CompatApplication {
    name: String,
    token: String,
    chats_count: i64,
}

impl From<Application> for CompatApplication {
    fn from(a: Application) -> Self {
        Self {
            name: a.name,
            token: a.token.to_string(),
            chats_count: a.chats_count,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CompatChat {
    number: i64,
    messages_count: i64,
}

impl From<Chat> for CompatChat {
    fn from(c: Chat) -> Self {
        Self {
            number: c.number,
            messages_count: c.messages_count,
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CompatNumber {
    number: i64,
}

#[derive(Serialize, ToSchema)]
pub struct CompatMessage {
    number: i64,
    body: String,
}

impl From<Message> for CompatMessage {
    fn from(m: Message) -> Self {
        Self {
            number: m.number,
            body: m.body,
        }
    }
}

/// Create an application (classic form).
#[utoipa::path(post, path = "/api/v1/chat_applications", tag = "compatibility", request_body = ApplicationParams,
    security(("bearer" = []), ("basic" = [])),
    params(("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 h")),
    responses(
        (status = 201, body = CompatApplication),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 422, description = "Empty or over-long name", body = ErrorBody),
    ))]
pub async fn create_application(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiJson(body): ApiJson<ApplicationParams>,
) -> Result<(StatusCode, Json<CompatApplication>), ApiError> {
    let name = Name::parse("name", &body.chat_application.name)?;
    let app = state.service.create_application(&user, name).await?;
    Ok((StatusCode::CREATED, Json(app.into())))
}

/// The caller's applications (classic form).
#[utoipa::path(get, path = "/api/v1/chat_applications", tag = "compatibility", params(ListParams),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = Vec<CompatApplication>),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 422, description = "page or limit out of range, or before= (message lists only)", body = ErrorBody),
    ))]
pub async fn list_applications(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<CompatApplication>>, ApiError> {
    let apps = state
        .service
        .applications(&user, params.offset_page()?)
        .await?;
    Ok(Json(apps.into_iter().map(Into::into).collect()))
}

/// One application (classic form).
#[utoipa::path(get, path = "/api/v1/chat_applications/{token}", tag = "compatibility",
    params(("token" = String, Path)), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = CompatApplication),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
    ))]
pub async fn get_application(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath(raw): ApiPath<String>,
) -> Result<Json<CompatApplication>, ApiError> {
    Ok(Json(state.service.application(&token(&raw)?).await?.into()))
}

/// Rename an application (classic form; creator only).
#[utoipa::path(put, path = "/api/v1/chat_applications/{token}", tag = "compatibility", request_body = ApplicationParams,
    params(("token" = String, Path)), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = CompatApplication),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 403, description = "Not the creator", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 422, description = "Empty or over-long name", body = ErrorBody),
    ))]
pub async fn rename_application(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(raw): ApiPath<String>,
    ApiJson(body): ApiJson<ApplicationParams>,
) -> Result<Json<CompatApplication>, ApiError> {
    let name = Name::parse("name", &body.chat_application.name)?;
    Ok(Json(
        state
            .service
            .rename_application(&user, &token(&raw)?, name)
            .await?
            .into(),
    ))
}

/// Open a chat (classic form).
#[utoipa::path(post, path = "/api/v1/chat_applications/{token}/chats", tag = "compatibility",
    params(("token" = String, Path), ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 h")),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 201, body = CompatChat),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 503, description = "A backend is down; nothing was created", body = ErrorBody),
    ))]
pub async fn create_chat(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath(raw): ApiPath<String>,
) -> Result<(StatusCode, Json<CompatChat>), ApiError> {
    let number = state.service.create_chat(&user, &token(&raw)?).await?;
    Ok((
        StatusCode::CREATED,
        Json(CompatChat {
            number,
            messages_count: 0,
        }),
    ))
}

/// Chats of an application (classic form).
#[utoipa::path(get, path = "/api/v1/chat_applications/{token}/chats", tag = "compatibility",
    params(("token" = String, Path), ListParams), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = Vec<CompatChat>),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token", body = ErrorBody),
        (status = 422, description = "page or limit out of range, or before= (message lists only)", body = ErrorBody),
    ))]
pub async fn list_chats(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath(raw): ApiPath<String>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<CompatChat>>, ApiError> {
    let chats = state
        .service
        .chats(&token(&raw)?, params.offset_page()?)
        .await?;
    Ok(Json(chats.into_iter().map(Into::into).collect()))
}

/// One chat (classic form).
#[utoipa::path(get, path = "/api/v1/chat_applications/{token}/chats/{number}", tag = "compatibility",
    params(("token" = String, Path), ("number" = i64, Path)), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = CompatChat),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
    ))]
pub async fn get_chat(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath((raw, chat)): ApiPath<(String, String)>,
) -> Result<Json<CompatChat>, ApiError> {
    Ok(Json(
        state
            .service
            .chat(&token(&raw)?, chat_number(&chat)?)
            .await?
            .into(),
    ))
}

/// Post a message (classic form).
#[utoipa::path(post, path = "/api/v1/chat_applications/{token}/chats/{number}/messages", tag = "compatibility",
    request_body = MessageParams,
    params(("token" = String, Path), ("number" = i64, Path),
        ("Idempotency-Key" = Option<String>, Header, description = "Replays the first answer for 24 h")),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 201, body = CompatNumber),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = ErrorBody),
        (status = 422, description = "Empty body or over 64 KiB", body = ErrorBody),
        (status = 503, description = "A backend is down; nothing was created", body = ErrorBody),
    ))]
pub async fn create_message(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath((raw, chat)): ApiPath<(String, String)>,
    ApiJson(body): ApiJson<MessageParams>,
) -> Result<(StatusCode, Json<CompatNumber>), ApiError> {
    let (token, chat) = (token(&raw)?, chat_number(&chat)?);
    let text = Body::parse(body.message.body)?;
    let number = state
        .service
        .create_message(&user, &token, chat, text, None)
        .await?;
    Ok((StatusCode::CREATED, Json(CompatNumber { number })))
}

/// Messages of a chat, newest first (classic form).
#[utoipa::path(get, path = "/api/v1/chat_applications/{token}/chats/{number}/messages", tag = "compatibility",
    params(("token" = String, Path), ("number" = i64, Path), ListParams), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = Vec<CompatMessage>),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
        (status = 422, description = "page, limit or before out of range", body = ErrorBody),
    ))]
pub async fn list_messages(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath((raw, chat)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<Vec<CompatMessage>>, ApiError> {
    let messages = state
        .service
        .messages(&token(&raw)?, chat_number(&chat)?, params.page()?)
        .await?;
    Ok(Json(messages.into_iter().map(Into::into).collect()))
}

/// One message (classic form).
#[utoipa::path(get, path = "/api/v1/chat_applications/{token}/chats/{number}/messages/{n}", tag = "compatibility",
    params(("token" = String, Path), ("number" = i64, Path), ("n" = i64, Path)), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = CompatMessage),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token, chat or message", body = ErrorBody),
    ))]
pub async fn get_message(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath((raw, chat, n)): ApiPath<(String, String, String)>,
) -> Result<Json<CompatMessage>, ApiError> {
    let message = state
        .service
        .message(&token(&raw)?, chat_number(&chat)?, message_number(&n)?)
        .await?;
    Ok(Json(message.into()))
}

/// Edit a message (classic form; sender only).
#[utoipa::path(put, path = "/api/v1/chat_applications/{token}/chats/{number}/messages/{n}", tag = "compatibility",
    request_body = MessageParams,
    params(("token" = String, Path), ("number" = i64, Path), ("n" = i64, Path)), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = CompatMessage),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 403, description = "Not the sender", body = ErrorBody),
        (status = 404, description = "Unknown token, chat or message", body = ErrorBody),
        (status = 422, description = "Empty body or over 64 KiB", body = ErrorBody),
        (status = 503, description = "A backend is down; nothing was changed", body = ErrorBody),
    ))]
pub async fn edit_message(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    ApiPath((raw, chat, n)): ApiPath<(String, String, String)>,
    ApiJson(body): ApiJson<MessageParams>,
) -> Result<Json<CompatMessage>, ApiError> {
    let (token, chat, number) = (token(&raw)?, chat_number(&chat)?, message_number(&n)?);
    let text = Body::parse(body.message.body)?;
    let echo = text.as_str().to_owned();
    state
        .service
        .edit_message(&user, &token, chat, number, text)
        .await?;
    Ok(Json(CompatMessage {
        number: number.get(),
        body: echo,
    }))
}

/// Search a chat (classic form).
#[utoipa::path(get, path = "/api/v1/chat_applications/{token}/chats/{number}/messages/search", tag = "compatibility",
    params(("token" = String, Path), ("number" = i64, Path), SearchParams), security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, body = Vec<CompatMessage>),
        (status = 401, description = "Missing or bad credentials", body = ErrorBody),
        (status = 404, description = "Unknown token or chat", body = ErrorBody),
        (status = 422, description = "Missing or empty q", body = ErrorBody),
    ))]
pub async fn search(
    State(state): State<AppState>,
    _: CurrentUser,
    ApiPath((raw, chat)): ApiPath<(String, String)>,
    ApiQuery(params): ApiQuery<SearchParams>,
) -> Result<Json<Vec<CompatMessage>>, ApiError> {
    let hits = run_search(&state, &raw, &chat, params).await?;
    Ok(Json(hits.into_iter().map(Into::into).collect()))
}
