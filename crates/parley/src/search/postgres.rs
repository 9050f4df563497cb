//! PostgreSQL adapter: searches the store's own `messages` table, for deployments where many
//! processes share a PostgreSQL store and no search cluster is wanted.
//!
//! A message matches when every query word is a case-insensitive part of its body
//! (`body ILIKE '%word%'`). Query words are runs of letters and digits, so a match never
//! spans two body words: this is whole words, word prefixes and parts of words at once, as
//! tantivy's per-word n-grams give. The `pg_trgm` GIN index on `body` (migrations/postgres)
//! makes each condition an index lookup for words of 3+ characters; shorter words are
//! filtered within the chat's rows.
//!
//! No `tsvector` column: `to_tsquery` matches whole words and prefixes only, a subset of the
//! trigram match, so it would answer nothing the trigram index cannot. Measured inserting
//! 200,000 15-word messages: 0.5 s bare, 4.2 s with the trigram index, 6.9 s with a generated
//! `to_tsvector('simple', body)` column and its GIN index besides (72 → 122 MB), for no query.

use super::{words, SearchDoc, SearchIndex};
use crate::domain::PageRequest;
use anyhow::Result;
use async_trait::async_trait;
use sqlx::{PgPool, Postgres, QueryBuilder};
use std::collections::BTreeSet;

pub struct PgSearch {
    pool: PgPool,
}

impl PgSearch {
    /// Searches the tables of the `PgStore` on `pool` (its migrations create the index).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// `%text%` for `ILIKE`, with the pattern characters of `text` taken literally (`\` is the
/// default escape character).
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The search statement after `prefix` (`EXPLAIN ` in tests); `None` for a query without
/// words. One condition per distinct word, each indexable on its own (`ILIKE ALL(array)`
/// would not be).
fn search_query(
    prefix: &str,
    chat_id: i64,
    query: &str,
    page: PageRequest,
) -> Option<QueryBuilder<'static, Postgres>> {
    let words: BTreeSet<String> = words(query).collect();
    if words.is_empty() {
        return None;
    }
    let mut qb = QueryBuilder::new(prefix);
    qb.push("SELECT number FROM messages WHERE chat_id = ")
        .push_bind(chat_id);
    for word in words {
        qb.push(" AND body ILIKE ")
            .push_bind(contains_pattern(&word));
    }
    qb.push(" ORDER BY number DESC LIMIT ")
        .push_bind(i64::from(page.limit))
        .push(" OFFSET ")
        .push_bind(page.offset as i64);
    Some(qb)
}

/// The database indexes its own rows as part of each commit, so there is nothing to queue,
/// flush or rebuild: a message is searchable as soon as the store has committed it, and a
/// crash loses nothing that `catch_up` would have to repair.
#[async_trait]
impl SearchIndex for PgSearch {
    async fn upsert(&self, _docs: Vec<SearchDoc>) -> Result<()> {
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn search(&self, chat_id: i64, query: &str, page: PageRequest) -> Result<Vec<i64>> {
        let Some(mut qb) = search_query("", chat_id, query, page) else {
            return Ok(Vec::new());
        };
        // Not a cached prepared statement: its generic plan cannot see the patterns, and
        // would search `%h%` through the trigram index (every entry) rather than through the
        // chat's rows; an unnamed statement is planned for its values each time.
        Ok(qb
            .build_query_scalar::<i64>()
            .persistent(false)
            .fetch_all(&self.pool)
            .await?)
    }

    /// Nothing to drop: the index is the store's, and `reindex` re-reads the same rows.
    async fn clear(&self) -> Result<()> {
        Ok(())
    }

    async fn indexed_up_to(&self) -> Result<Option<i64>> {
        Ok(None)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::AppToken;
    use crate::store::{MessageEdit, NewChat, NewMessage, PgStore, Store};
    use crate::testing::{fresh_database, Engine};

    /// A fresh store with one user and application, and its search.
    struct Fixture {
        store: PgStore,
        search: PgSearch,
        user: i64,
        app: i64,
        chats: i64,
    }

    async fn fixture(server_url: &str) -> Fixture {
        let url = fresh_database(server_url).await.unwrap();
        let store = PgStore::open(&url).await.unwrap();
        store.migrate().await.unwrap();
        let user = store
            .insert_user("Ada", "ada@example.com", "hash", 1)
            .await
            .unwrap()
            .unwrap()
            .id;
        let app = store
            .insert_application(&AppToken::generate(), "app", user, 1)
            .await
            .unwrap()
            .id;
        let search = PgSearch::new(store.pool().clone());
        Fixture {
            store,
            search,
            user,
            app,
            chats: 0,
        }
    }

    impl Fixture {
        /// A new chat holding `bodies` as messages 1, 2, …; returns its id.
        async fn chat_with(&mut self, bodies: &[&str]) -> i64 {
            self.chats += 1;
            let chat = NewChat {
                application_id: self.app,
                number: self.chats,
                creator_id: self.user,
                created_at: 1,
            };
            self.store.insert_chats(&[chat]).await.unwrap();
            let chat_id = self
                .store
                .chat(self.app, self.chats)
                .await
                .unwrap()
                .unwrap()
                .id;
            let rows: Vec<NewMessage> = (1..)
                .zip(bodies)
                .map(|(number, body)| NewMessage {
                    chat_id,
                    number,
                    sender_id: self.user,
                    body: body.to_string(),
                    created_at: number,
                })
                .collect();
            self.store.insert_messages(&rows).await.unwrap();
            chat_id
        }

        async fn search(&self, chat_id: i64, query: &str) -> Vec<i64> {
            let page = PageRequest::first(100);
            self.search.search(chat_id, query, page).await.unwrap()
        }
    }

    #[tokio::test]
    async fn matches_words_prefixes_and_parts_case_insensitively() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let mut f = fixture(&url).await;
        let chat = f
            .chat_with(&[
                "Hello World",
                "help me",
                "Othello was here",
                "nothing",
                "ÄRGER",
            ])
            .await;
        assert_eq!(f.search(chat, "hello").await, vec![3, 1]);
        assert_eq!(
            f.search(chat, "HELLO").await,
            vec![3, 1],
            "case-insensitive"
        );
        assert_eq!(f.search(chat, "hel").await, vec![3, 2, 1], "word prefix");
        assert_eq!(f.search(chat, "ell").await, vec![3, 1], "part of a word");
        assert_eq!(f.search(chat, "h").await, vec![4, 3, 2, 1], "one letter");
        assert_eq!(f.search(chat, "world").await, vec![1]);
        assert_eq!(f.search(chat, "ärg").await, vec![5], "beyond ASCII");
        assert!(f.search(chat, "absent").await.is_empty());
        assert!(f.search(chat, "lo wo").await.contains(&1));
        assert!(
            f.search(chat, "loworld").await.is_empty(),
            "a match never spans two words"
        );
    }

    #[tokio::test]
    async fn every_word_must_match_and_newest_comes_first() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let mut f = fixture(&url).await;
        let chat = f
            .chat_with(&["red apple", "green apple", "red car", "apple red again"])
            .await;
        assert_eq!(f.search(chat, "red apple").await, vec![4, 1]);
        assert_eq!(f.search(chat, "apple").await, vec![4, 2, 1]);
        assert_eq!(f.search(chat, "re app").await, vec![4, 2, 1]);
        assert_eq!(f.search(chat, "apple apple").await, vec![4, 2, 1]);
        assert!(f.search(chat, "red banana").await.is_empty());
    }

    #[tokio::test]
    async fn results_are_paginated() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let mut f = fixture(&url).await;
        let bodies: Vec<String> = (1..=25).map(|i| format!("item number {i}")).collect();
        let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
        let chat = f.chat_with(&refs).await;
        let page = |page: u64| PageRequest {
            limit: 10,
            offset: (page - 1) * 10,
            before: None,
        };
        let search = |n| f.search.search(chat, "item", page(n));
        assert_eq!(
            search(1).await.unwrap(),
            (16..=25).rev().collect::<Vec<_>>()
        );
        assert_eq!(search(3).await.unwrap(), (1..=5).rev().collect::<Vec<_>>());
        assert!(search(4).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn other_chats_never_leak() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let mut f = fixture(&url).await;
        let first = f.chat_with(&["shared word"]).await;
        let second = f.chat_with(&["shared word", "shared again"]).await;
        assert_eq!(f.search(first, "shared").await, vec![1]);
        assert_eq!(f.search(second, "shared").await, vec![2, 1]);
        assert!(f.search(second + 1, "shared").await.is_empty());
    }

    #[tokio::test]
    async fn pattern_characters_and_quotes_are_harmless() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let mut f = fixture(&url).await;
        let chat = f
            .chat_with(&["100% sure", "snake_case", "it's O'Brien", "back\\slash"])
            .await;
        for query in ["%", "_", "'", "\\", "%%", "' OR '1'='1"] {
            let hits = f.search(chat, query).await;
            assert!(hits.is_empty(), "{query:?}: {hits:?}");
        }
        assert_eq!(f.search(chat, "100%").await, vec![1]);
        assert_eq!(f.search(chat, "snake_case").await, vec![2]);
        assert_eq!(f.search(chat, "o'brien").await, vec![3]);
        assert!(f
            .search(chat, "'; DROP TABLE messages; --")
            .await
            .is_empty());
        assert_eq!(f.store.count_messages().await.unwrap(), 4);

        // The escaping itself, should a word ever carry a pattern character.
        assert_eq!(contains_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
        for (text, literal, matches) in [
            ("a%b", "a%b", true),
            ("axxb", "a%b", false),
            ("a_b", "a_b", true),
            ("axb", "a_b", false),
            ("a\\b", "a\\b", true),
        ] {
            let found: bool = sqlx::query_scalar("SELECT $1 ILIKE $2")
                .bind(text)
                .bind(contains_pattern(literal))
                .fetch_one(f.store.pool())
                .await
                .unwrap();
            assert_eq!(found, matches, "{text:?} ILIKE {literal:?}");
        }
    }

    #[tokio::test]
    async fn reads_the_stores_rows_as_committed() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let mut f = fixture(&url).await;
        let chat = f.chat_with(&["original wording"]).await;
        let edit = MessageEdit {
            chat_id: chat,
            number: 1,
            sender_id: f.user,
            body: "revised text".into(),
            version: 1,
            updated_at: 2,
        };
        f.store.edit_messages(&[edit]).await.unwrap();
        assert_eq!(f.search(chat, "revised").await, vec![1]);
        assert!(f.search(chat, "original").await.is_empty());
        // Nothing to queue, flush or clear; nothing a crash could lose.
        f.search.upsert(Vec::new()).await.unwrap();
        f.search.flush().await.unwrap();
        f.search.clear().await.unwrap();
        assert_eq!(f.search(chat, "revised").await, vec![1]);
        assert_eq!(f.search.indexed_up_to().await.unwrap(), None);
        f.search.ping().await.unwrap();
        assert!(
            f.search(chat, "  ,;  ").await.is_empty(),
            "no words, no hits"
        );
    }

    #[tokio::test]
    async fn a_rare_word_is_found_through_the_trigram_index() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let mut f = fixture(&url).await;
        let bodies: Vec<String> = (0..20_000)
            .map(|i| format!("routine status update {i} from the build"))
            .collect();
        let mut refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
        refs[1234] = "the Zebracorn escaped";
        let chat = f.chat_with(&refs).await;
        // What autovacuum does: statistics, and the GIN pending list merged (while fresh
        // rows wait in it, the planner rightly prefers a scan).
        sqlx::query("VACUUM ANALYZE messages")
            .execute(f.store.pool())
            .await
            .unwrap();
        let plan = |query: &'static str| {
            let pool = f.store.pool().clone();
            async move {
                let page = PageRequest::first(10);
                let mut explain = search_query("EXPLAIN ", chat, query, page).unwrap();
                let lines: Vec<String> = explain
                    .build_query_scalar()
                    .persistent(false)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                lines.join("\n")
            }
        };
        let rare = plan("ZEBRACORN").await;
        assert!(rare.contains("messages_body_trgm"), "{rare}");
        // Two letters make no trigram: the chat's rows are filtered instead.
        let short = plan("ro").await;
        assert!(!short.contains("messages_body_trgm"), "{short}");
        assert_eq!(f.search(chat, "ZEBRACORN").await, vec![1235]);
        assert_eq!(f.search(chat, "ebraco").await, vec![1235]);
    }
}
