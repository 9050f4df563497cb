//! Search with the database's own FULLTEXT index on `messages.body` (migrations/mysql), for
//! deployments on MySQL 8 / MariaDB that want no search cluster.
//!
//! Matches, per chat and case-insensitively (the column's `_ci` collation), every word of the
//! query as a whole word or a word prefix (`hel` finds "Hello"), newest first. Parts of words
//! (`ell` in "hello") are not found: an InnoDB FULLTEXT index holds whole words only. Words
//! shorter than `innodb_ft_min_token_size` (3 by default) are not in the index; they are
//! matched with `LIKE '%word%'`, which also finds them inside words. Stopwords are found: the
//! index is created without the stopword list.
//!
//! InnoDB tokenises at its own word boundaries, which differ from `search::words` in that `_`
//! joins words ("snake_case" is one word: `case` does not find it) and words longer than
//! `innodb_ft_max_token_size` (84) are not indexed.
//!
//! No documents to maintain: the database indexes its own rows when their transaction
//! commits, so `upsert`, `flush` and `clear` do nothing, and nothing is ever lost in a crash
//! (`indexed_up_to` is `None`).

use super::{words, SearchDoc, SearchIndex};
use crate::domain::PageRequest;
use anyhow::Result;
use async_trait::async_trait;
use sqlx::{MySql, MySqlPool, QueryBuilder};
use tokio::sync::OnceCell;

pub struct MySqlSearch {
    pool: MySqlPool,
    /// The server's `innodb_ft_min_token_size` and `innodb_ft_max_token_size`, read once.
    token_sizes: OnceCell<(usize, usize)>,
}

impl MySqlSearch {
    /// Searches the `messages` table of the database behind `pool` (the store's pool).
    pub fn new(pool: MySqlPool) -> Self {
        Self {
            pool,
            token_sizes: OnceCell::new(),
        }
    }

    async fn token_sizes(&self) -> Result<(usize, usize)> {
        let sizes = self
            .token_sizes
            .get_or_try_init(|| async {
                // CAST: the variables' integer types differ between the servers.
                let (min, max): (i64, i64) = sqlx::query_as(
                    "SELECT CAST(@@innodb_ft_min_token_size AS SIGNED), \
                     CAST(@@innodb_ft_max_token_size AS SIGNED)",
                )
                .fetch_one(&self.pool)
                .await?;
                anyhow::Ok((min as usize, max as usize))
            })
            .await?;
        Ok(*sizes)
    }
}

/// A LIKE pattern for text containing `word`, escaping LIKE's wildcards with `!` (the default
/// escape, `\`, means something else in string literals under NO_BACKSLASH_ESCAPES).
fn containing(word: &str) -> String {
    let mut pattern = String::with_capacity(word.len() + 2);
    pattern.push('%');
    for c in word.chars() {
        if matches!(c, '%' | '_' | '!') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A required word prefix in boolean mode: `+word*`. Boolean mode has no escape character, so
/// only letters and digits may pass; `search::words` yields nothing else, which keeps every
/// operator (`+-<>()~*:"@&|`) of user input out of the query.
fn required_prefix(word: &str) -> String {
    let word: String = word.chars().filter(|c| c.is_alphanumeric()).collect();
    format!("+{word}* ")
}

#[async_trait]
impl SearchIndex for MySqlSearch {
    async fn upsert(&self, _docs: Vec<SearchDoc>) -> Result<()> {
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    async fn search(&self, chat_id: i64, query: &str, page: PageRequest) -> Result<Vec<i64>> {
        let (min, max) = self.token_sizes().await?;
        let mut against = String::new();
        let mut like = Vec::new();
        for word in words(query) {
            if (min..=max).contains(&word.chars().count()) {
                against.push_str(&required_prefix(&word));
            } else {
                like.push(containing(&word));
            }
        }
        if against.is_empty() && like.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb: QueryBuilder<'_, MySql> =
            QueryBuilder::new("SELECT number FROM messages WHERE chat_id = ");
        qb.push_bind(chat_id);
        if !against.is_empty() {
            qb.push(" AND MATCH (body) AGAINST (")
                .push_bind(against)
                .push(" IN BOOLEAN MODE)");
        }
        for pattern in like {
            qb.push(" AND body LIKE ")
                .push_bind(pattern)
                .push(" ESCAPE '!'");
        }
        qb.push(" ORDER BY number DESC LIMIT ")
            .push_bind(page.limit)
            .push(" OFFSET ")
            .push_bind(page.offset);
        Ok(qb.build_query_scalar().fetch_all(&self.pool).await?)
    }

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
    use crate::store::{MessageEdit, MySqlStore, NewChat, NewMessage, Store};
    use crate::testing::{fresh_database, Engine};

    struct Fixture {
        store: MySqlStore,
        search: MySqlSearch,
        user_id: i64,
        application_id: i64,
    }

    impl Fixture {
        async fn new(url: &str) -> Self {
            let store = MySqlStore::open(&fresh_database(url).await.unwrap())
                .await
                .unwrap();
            store.migrate().await.unwrap();
            let user = store
                .insert_user("Ada", "ada@example.com", "hash", 1)
                .await
                .unwrap()
                .unwrap();
            let app = store
                .insert_application(&AppToken::generate(), "app", user.id, 1)
                .await
                .unwrap();
            let search = MySqlSearch::new(store.pool().clone());
            Self {
                store,
                search,
                user_id: user.id,
                application_id: app.id,
            }
        }

        /// A new chat holding `bodies` as messages 1, 2, …; returns its id.
        async fn chat(&self, number: i64, bodies: &[&str]) -> i64 {
            let chat = NewChat {
                application_id: self.application_id,
                number,
                creator_id: self.user_id,
                created_at: 1,
            };
            self.store.insert_chats(&[chat]).await.unwrap();
            let id = self
                .store
                .chat(self.application_id, number)
                .await
                .unwrap()
                .unwrap()
                .id;
            let rows: Vec<NewMessage> = bodies
                .iter()
                .zip(1..)
                .map(|(body, number)| NewMessage {
                    chat_id: id,
                    number,
                    sender_id: self.user_id,
                    body: (*body).into(),
                    created_at: number,
                })
                .collect();
            self.store.insert_messages(&rows).await.unwrap();
            id
        }

        async fn find(&self, chat: i64, query: &str) -> Vec<i64> {
            self.search
                .search(chat, query, PageRequest::first(100))
                .await
                .unwrap()
        }

        async fn done(self) {
            let name: String = sqlx::query_scalar("SELECT DATABASE()")
                .fetch_one(self.store.pool())
                .await
                .unwrap();
            sqlx::query(&format!("DROP DATABASE {name}"))
                .execute(self.store.pool())
                .await
                .unwrap();
        }
    }

    #[tokio::test]
    async fn whole_words_and_prefixes_case_insensitively() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let f = Fixture::new(&url).await;
        let chat = f
            .chat(
                1,
                &[
                    "Hello World",
                    "help me",
                    "Othello was here",
                    "nothing",
                    "ÉCOLE",
                ],
            )
            .await;
        assert_eq!(f.find(chat, "hello").await, [1], "no parts of words here");
        assert_eq!(f.find(chat, "HELLO").await, [1]);
        assert_eq!(f.find(chat, "hel").await, [2, 1], "word prefix");
        assert_eq!(f.find(chat, "World").await, [1]);
        assert_eq!(f.find(chat, "école").await, [5]);
        assert_eq!(
            f.find(chat, "ecol").await,
            [5],
            "the collation ignores accents"
        );
        assert!(f.find(chat, "absent").await.is_empty());
        assert!(f.find(chat, "").await.is_empty());
        assert!(f.find(chat, "  ,;  ").await.is_empty());
        f.done().await;
    }

    #[tokio::test]
    async fn every_word_must_match_and_newest_comes_first() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let f = Fixture::new(&url).await;
        let chat = f
            .chat(
                1,
                &["red apple", "green apple", "red car", "apple red again"],
            )
            .await;
        assert_eq!(f.find(chat, "red apple").await, [4, 1]);
        assert_eq!(f.find(chat, "apple").await, [4, 2, 1]);
        assert_eq!(f.find(chat, "APPLE, red!").await, [4, 1]);
        assert!(f.find(chat, "red banana").await.is_empty());
        // "re" is below the index's token size: LIKE, which also finds gREen.
        assert_eq!(f.find(chat, "re app").await, [4, 2, 1]);
        f.done().await;
    }

    #[tokio::test]
    async fn short_words_and_stopwords_are_found() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let f = Fixture::new(&url).await;
        let chat = f
            .chat(
                1,
                &[
                    "the will to go",
                    "about us",
                    "a to z",
                    "go away",
                    "Is it OK?",
                ],
            )
            .await;
        assert_eq!(f.find(chat, "the").await, [1], "a stopword");
        assert_eq!(f.find(chat, "will").await, [1]);
        assert_eq!(f.find(chat, "about").await, [2]);
        assert_eq!(
            f.find(chat, "GO").await,
            [4, 1],
            "shorter than the token size"
        );
        assert_eq!(f.find(chat, "to the").await, [1]);
        assert_eq!(f.find(chat, "z").await, [3]);
        assert_eq!(f.find(chat, "ok is").await, [5]);
        assert!(f.find(chat, "go about").await.is_empty());
        f.done().await;
    }

    #[tokio::test]
    async fn results_are_paginated() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let f = Fixture::new(&url).await;
        let bodies: Vec<String> = (1..=25).map(|i| format!("item number {i}")).collect();
        let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
        let chat = f.chat(1, &refs).await;
        let page = |page| PageRequest::parse(Some(page), Some(10), None).unwrap();
        let found = |n| f.search.search(chat, "item", page(n));
        assert_eq!(found(1).await.unwrap(), (16..=25).rev().collect::<Vec<_>>());
        assert_eq!(found(3).await.unwrap(), (1..=5).rev().collect::<Vec<_>>());
        assert!(found(4).await.unwrap().is_empty());
        // The LIKE path pages the same way.
        let short = f.search.search(chat, "it", page(2)).await.unwrap();
        assert_eq!(short, (6..=15).rev().collect::<Vec<_>>());
        f.done().await;
    }

    #[tokio::test]
    async fn other_chats_never_leak() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let f = Fixture::new(&url).await;
        let first = f.chat(1, &["shared word"]).await;
        let second = f.chat(2, &["shared word", "shared again"]).await;
        assert_eq!(f.find(first, "shared").await, [1]);
        assert_eq!(f.find(second, "shared").await, [2, 1]);
        assert_eq!(f.find(first, "wo").await, [1]);
        assert!(f.find(first, "again").await.is_empty());
        assert!(f.find(first + second + 1, "shared").await.is_empty());
        f.done().await;
    }

    #[tokio::test]
    async fn an_edit_is_found_by_its_new_words_once_committed() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let f = Fixture::new(&url).await;
        let chat = f.chat(1, &["original wording"]).await;
        let edit = MessageEdit {
            chat_id: chat,
            number: 1,
            sender_id: f.user_id,
            body: "replacement text".into(),
            version: 1,
            updated_at: 2,
        };
        f.store.edit_messages(&[edit]).await.unwrap();
        // No flush: the database indexes at commit.
        assert!(f.find(chat, "original").await.is_empty());
        assert_eq!(f.find(chat, "replacement").await, [1]);
        f.done().await;
    }

    #[tokio::test]
    async fn operators_and_wildcards_in_queries_are_harmless() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let f = Fixture::new(&url).await;
        let chat = f
            .chat(
                1,
                &["Hello World", "50% off_today", "hello there", "C++ (beta)"],
            )
            .await;
        // Boolean-mode operators are separators, never operators: `-world` does not exclude.
        assert_eq!(f.find(chat, "+hello -world").await, [1]);
        assert_eq!(f.find(chat, "\"hello world\"").await, [1]);
        assert_eq!(f.find(chat, "hel*").await, [3, 1]);
        assert_eq!(f.find(chat, "(hello) ~there").await, [3]);
        assert_eq!(f.find(chat, "hello <there >").await, [3]);
        // LIKE wildcards are separators too, not "any character".
        assert_eq!(f.find(chat, "50%").await, [2]);
        assert_eq!(f.find(chat, "c++").await, [4]);
        for query in [
            "%",
            "_",
            "%%%",
            "*",
            "+",
            "-",
            "\"",
            "'",
            "\\",
            "!",
            "@3",
            "'; DROP TABLE messages; --",
        ] {
            assert!(f.find(chat, query).await.is_empty(), "{query:?}");
        }
        assert_eq!(
            f.find(chat, "hello").await,
            [3, 1],
            "the table is still there"
        );
        f.done().await;
    }

    #[tokio::test]
    async fn like_patterns_escape_wildcards() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let f = Fixture::new(&url).await;
        assert_eq!(containing("a%b_c!"), "%a!%b!_c!!%");
        let like = |text: &'static str, word: &'static str| {
            let pool = f.store.pool().clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT ? LIKE ? ESCAPE '!'")
                    .bind(text)
                    .bind(containing(word))
                    .fetch_one(&pool)
                    .await
                    .unwrap()
                    == 1
            }
        };
        assert!(like("x a%b_c! y", "a%b_c!").await);
        assert!(!like("x aXbYc! y", "a%b_c!").await);
        assert!(!like("abc", "a_c").await);
        assert!(like("a_c", "a_c").await);
        f.done().await;
    }

    #[tokio::test]
    async fn the_database_keeps_its_own_index() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let f = Fixture::new(&url).await;
        let chat = f.chat(1, &["kept"]).await;
        let doc = SearchDoc {
            id: 1,
            chat_id: chat,
            number: 9,
            body: "ignored".into(),
        };
        f.search.upsert(vec![doc]).await.unwrap();
        f.search.flush().await.unwrap();
        assert!(f.find(chat, "ignored").await.is_empty());
        f.search.clear().await.unwrap();
        assert_eq!(f.find(chat, "kept").await, [1]);
        assert_eq!(f.search.indexed_up_to().await.unwrap(), None);
        f.search.ping().await.unwrap();
        assert_eq!(f.search.token_sizes().await.unwrap(), (3, 84));
        f.done().await;
    }
}
