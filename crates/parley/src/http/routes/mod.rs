//! One file per resource; each handler carries its OpenAPI description.

pub mod accounts;
pub mod applications;
pub mod chats;
pub mod compat;
pub mod messages;
pub mod ops;

use super::error::ApiError;
use crate::domain::{AppToken, Number};

/// Path segments: anything that is not a valid token or number names nothing (404).
pub fn token(raw: &str) -> Result<AppToken, ApiError> {
    Ok(AppToken::parse(raw)?)
}

pub fn chat_number(raw: &str) -> Result<Number, ApiError> {
    Ok(Number::parse("chat", raw)?)
}

pub fn message_number(raw: &str) -> Result<Number, ApiError> {
    Ok(Number::parse("message", raw)?)
}
