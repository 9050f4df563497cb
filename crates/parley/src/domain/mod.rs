//! The domain: what Parley's operations mean, independent of HTTP and of any backend.
//! It holds the ports (traits) only; `startup` picks the adapters.

mod accounts;
mod events;
mod service;
mod values;

pub use accounts::{Credentials, JwtKeys, PasswordHasher};
pub use events::{queue_email, ChatCreated, EmailRequested, MessageCreated, MessageEdited};
pub use service::{page_generation_key, Service, ServiceSettings};
pub use values::*;

use serde::Serialize;

/// Why an operation did not happen. The HTTP edge maps each kind to one status code.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    RateLimited(String),
    /// A backend cannot take the request now; nothing was accepted.
    #[error("{0}")]
    Unavailable(String),
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<anyhow::Error> for DomainError {
    /// A backend that cannot be reached is a 503 (nothing was accepted), not a 500.
    fn from(e: anyhow::Error) -> Self {
        if crate::store::is_unavailable(&e) {
            tracing::error!(error = %format!("{e:#}"), "the database is unavailable");
            Self::Unavailable("the database is unavailable; retry shortly".into())
        } else {
            Self::Internal(e)
        }
    }
}

impl DomainError {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
}

/// A user as stored. `id` never leaves the process.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    pub password_hash: String,
    /// Milliseconds since the Unix epoch; tokens issued before it are not this user's.
    pub created_at: i64,
}

/// An application as stored.
#[derive(Debug, Clone)]
pub struct Application {
    pub id: i64,
    pub token: AppToken,
    pub name: String,
    pub chats_count: i64,
    pub creator_id: i64,
}

/// A chat as stored.
#[derive(Debug, Clone, Copy)]
pub struct Chat {
    pub id: i64,
    pub number: i64,
    pub messages_count: i64,
}

/// A message as read, with its sender's name.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Message {
    pub number: i64,
    pub sender_id: i64,
    pub sender_name: String,
    pub body: String,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
}

/// A pending account deletion.
#[derive(Debug, Clone)]
pub struct Deletion {
    pub id: i64,
    pub user_id: i64,
    /// Milliseconds since the Unix epoch.
    pub scheduled_for: i64,
}

/// Milliseconds since the Unix epoch, the one time unit stored and carried on the bus.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 with milliseconds, the one time format clients see.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
