//! Port: per-chat full-text search. Every adapter answers the same behaviour suite
//! (tests/search.rs): case-insensitive; whole words, word prefixes and — where the engine can
//! index them — parts of words; every word of the query must match; newest first; paginated.

mod tantivy;

pub use self::tantivy::TantivyIndex;

use crate::domain::PageRequest;
use anyhow::Result;
use async_trait::async_trait;

/// A message as the index sees it; `(chat_id, number)` identifies it.
#[derive(Debug, Clone)]
pub struct SearchDoc {
    pub chat_id: i64,
    pub number: i64,
    pub body: String,
}

#[async_trait]
pub trait SearchIndex: Send + Sync + 'static {
    /// Adds or replaces documents, visible to searches once this returns.
    async fn upsert(&self, docs: Vec<SearchDoc>) -> Result<()>;
    /// Message numbers of the chat matching every word of `query`, newest first.
    async fn search(&self, chat_id: i64, query: &str, page: PageRequest) -> Result<Vec<i64>>;
    /// Drops every document (before a rebuild).
    async fn clear(&self) -> Result<()>;
    async fn ping(&self) -> Result<()>;
}

/// Lower-cased words of a text: runs of letters and digits.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}
