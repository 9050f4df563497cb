//! Port: hands out the next number of a scope (chats of an application, messages of a chat,
//! versions of a message). Numbers are unique and never reused, even across restarts: a
//! sequencer that lacks a scope seeds it from the highest number the store holds.

mod memory;
mod redis;

pub use self::redis::RedisSequencer;
pub use memory::MemorySequencer;

use crate::domain::AppToken;
use anyhow::Result;
use async_trait::async_trait;

/// A numbering scope, named by what clients see (tokens and numbers), as the seeds' Redis keys
/// were: `<token>` and `<token>:<chatNumber>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Chat numbers of an application.
    Chats(AppToken),
    /// Message numbers of a chat.
    Messages(AppToken, i64),
    /// Edit versions of a message (the last accepted edit wins).
    Versions(AppToken, i64, i64),
}

impl Scope {
    /// The key a shared sequencer stores this scope under.
    pub fn key(&self) -> String {
        match self {
            Scope::Chats(token) => token.to_string(),
            Scope::Messages(token, chat) => format!("{token}:{chat}"),
            Scope::Versions(token, chat, message) => format!("{token}:{chat}:{message}:version"),
        }
    }
}

#[async_trait]
pub trait Sequencer: Send + Sync + 'static {
    /// The next number of the scope, starting at 1.
    async fn next(&self, scope: &Scope) -> Result<i64>;
    /// The last number handed out (0 if none): anything at or below it exists or is in flight.
    async fn current(&self, scope: &Scope) -> Result<i64>;
}
