//! Port: per-chat full-text search. Every adapter answers the same behaviour suite
//! (tests/search.rs): case-insensitive; whole words, word prefixes and — where the engine can
//! index them — parts of words; every word of the query must match; newest first; paginated.
//!
//! Search is eventually consistent: `upsert` queues documents, which become searchable
//! shortly after (as with Elasticsearch's refresh interval); `flush` waits until everything
//! queued is durable and searchable. An engine that can lose queued documents in a crash says
//! up to which store id it is durable, and `catch_up` re-indexes the rest from the store.

mod elasticsearch;
mod mysql;
mod postgres;
mod tantivy;

pub use self::elasticsearch::ElasticsearchIndex;
pub use self::mysql::MySqlSearch;
pub use self::postgres::PgSearch;
pub use self::tantivy::TantivyIndex;

use crate::domain::PageRequest;
use crate::store::Store;
use anyhow::Result;
use async_trait::async_trait;

/// A message as the index sees it; `(chat_id, number)` identifies it.
#[derive(Debug, Clone)]
pub struct SearchDoc {
    /// The message's row id in the store (grows with each commit).
    pub id: i64,
    pub chat_id: i64,
    pub number: i64,
    pub body: String,
}

#[async_trait]
pub trait SearchIndex: Send + Sync + 'static {
    /// Queues documents to add or replace; searchable shortly after.
    async fn upsert(&self, docs: Vec<SearchDoc>) -> Result<()>;
    /// Returns once everything queued so far is durable and searchable.
    async fn flush(&self) -> Result<()>;
    /// Message numbers of the chat matching every word of `query`, newest first.
    async fn search(&self, chat_id: i64, query: &str, page: PageRequest) -> Result<Vec<i64>>;
    /// Drops every document (before a rebuild).
    async fn clear(&self) -> Result<()>;
    /// The store id up to which every message is durably indexed, for engines that may lose
    /// queued documents in a crash; `None` when the engine never does.
    async fn indexed_up_to(&self) -> Result<Option<i64>>;
    async fn ping(&self) -> Result<()>;
}

/// Lower-cased words of a text: runs of letters and digits.
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
}

/// Indexes every stored message with an id above `after_id`, reporting the running count;
/// returns how many were indexed, durably.
pub async fn index_from_store(
    search: &dyn SearchIndex,
    store: &dyn Store,
    mut after_id: i64,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<u64> {
    let mut done = 0;
    loop {
        let rows = store.messages_for_index(after_id, 5_000).await?;
        let Some(last) = rows.last() else { break };
        after_id = last.id;
        done += rows.len() as u64;
        let docs = rows
            .into_iter()
            .map(|m| SearchDoc {
                id: m.id,
                chat_id: m.chat_id,
                number: m.number,
                body: m.body,
            })
            .collect();
        search.upsert(docs).await?;
        progress(done);
    }
    search.flush().await?;
    Ok(done)
}

/// Re-indexes what a crash may have lost: every message above the engine's durable mark.
/// A mark the store does not hold means the index was built from another store (one restored
/// from an earlier backup, say): it is rebuilt, so it shows neither messages the store lost
/// nor stale versions beside messages stored again under their numbers.
pub async fn catch_up(search: &dyn SearchIndex, store: &dyn Store) -> Result<u64> {
    let Some(after_id) = search.indexed_up_to().await? else {
        return Ok(0);
    };
    if after_id > 0 && !holds_message(store, after_id).await? {
        tracing::warn!(
            indexed_up_to = after_id,
            "the search index holds messages the store does not; rebuilding it"
        );
        search.clear().await?;
        return index_from_store(search, store, 0, &|_| {}).await;
    }
    index_from_store(search, store, after_id, &|_| {}).await
}

async fn holds_message(store: &dyn Store, id: i64) -> Result<bool> {
    let next = store.messages_for_index(id - 1, 1).await?;
    Ok(next.first().is_some_and(|m| m.id == id))
}
