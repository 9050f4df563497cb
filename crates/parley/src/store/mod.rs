//! Port: the system of record (SQL). One file per adapter; `open` picks one from the URL.

mod mysql;
mod postgres;
mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

pub use mysql::MySqlStore;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use crate::domain::{AppToken, Application, Chat, Deletion, Message, PageRequest, User};
use crate::sequencer::Scope;
use anyhow::Result;
use async_trait::async_trait;

/// A chat the writer persists. Keys are internal ids, resolved by the writer.
#[derive(Debug, Clone)]
pub struct NewChat {
    pub application_id: i64,
    pub number: i64,
    pub creator_id: i64,
    pub created_at: i64,
}

/// A message the writer persists.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub chat_id: i64,
    pub number: i64,
    pub sender_id: i64,
    pub body: String,
    pub created_at: i64,
}

/// A message edit the writer applies if its version is newer than the stored one.
#[derive(Debug, Clone)]
pub struct MessageEdit {
    pub chat_id: i64,
    pub number: i64,
    pub sender_id: i64,
    pub body: String,
    pub version: i64,
    pub updated_at: i64,
}

/// What an edit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditOutcome {
    /// Applied to the message with this row id.
    Applied { id: i64 },
    /// A newer version is already stored: the edit is superseded, not an error.
    Superseded,
    /// No such message yet (the create is still in flight): retry later.
    Missing,
    /// The message exists but belongs to someone else: never applied.
    NotSender,
}

/// Where a message landed: its row id (which grows with each commit, so search engines can
/// catch up from the store) and its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredKey {
    pub id: i64,
    pub chat_id: i64,
    pub number: i64,
}

impl StoredKey {
    /// From a row of `id, chat_id, number` (an insert's `RETURNING`).
    fn from_row<R: sqlx::Row>(row: &R) -> Self
    where
        for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
        usize: sqlx::ColumnIndex<R>,
    {
        Self {
            id: row.get(0),
            chat_id: row.get(1),
            number: row.get(2),
        }
    }
}

/// `INSERT INTO chats (…) VALUES (…), …` for the dialects that bind row by row (SQLite,
/// MySQL; PostgreSQL binds arrays). The caller adds its conflict clause.
fn insert_chats_sql<'a, DB: sqlx::Database>(
    chats: impl IntoIterator<Item = &'a NewChat>,
) -> sqlx::QueryBuilder<'a, DB>
where
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::new(
        "INSERT INTO chats (application_id, number, creator_id, created_at, updated_at) ",
    );
    qb.push_values(chats, |mut row, c| {
        row.push_bind(c.application_id)
            .push_bind(c.number)
            .push_bind(c.creator_id)
            .push_bind(c.created_at)
            .push_bind(c.created_at);
    });
    qb
}

/// `INSERT INTO messages (…) VALUES (…), …`, likewise.
fn insert_messages_sql<'a, DB: sqlx::Database>(
    messages: &'a [NewMessage],
) -> sqlx::QueryBuilder<'a, DB>
where
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    let mut qb = sqlx::QueryBuilder::new(
        "INSERT INTO messages (chat_id, number, body, sender_id, created_at, updated_at) ",
    );
    qb.push_values(messages, |mut row, m| {
        row.push_bind(m.chat_id)
            .push_bind(m.number)
            .push_bind(m.body.as_str())
            .push_bind(m.sender_id)
            .push_bind(m.created_at)
            .push_bind(m.created_at);
    });
    qb
}

/// Pushes `(SELECT <highest number of the scope>)`, for `highest_number` and first claims.
/// A MAX over one table, its scope's id found by a scalar subquery: all three engines read it
/// from the end of the `(scope, number)` index. A MAX over the join with `chats` and
/// `applications` instead read every row of the scope (MariaDB, PostgreSQL), so each block
/// claim of a hot chat cost time in proportion to its size: 9.5 ms at 59k messages on
/// MariaDB, 47 ms at 300k on PostgreSQL, against 0.2 and 0.06 ms this way.
fn push_highest<'a, DB: sqlx::Database>(qb: &mut sqlx::QueryBuilder<'a, DB>, scope: &'a Scope)
where
    i64: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
    &'a str: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    // `(SELECT <the chat's id>)`
    let push_chat_id = |qb: &mut sqlx::QueryBuilder<'a, DB>, token: &'a AppToken, chat: i64| {
        qb.push(
            "(SELECT c.id FROM chats c JOIN applications a ON a.id = c.application_id \
             WHERE a.token = ",
        )
        .push_bind(token.as_str())
        .push(" AND c.number = ")
        .push_bind(chat)
        .push(")");
    };
    match scope {
        Scope::Chats(token) => {
            qb.push(
                "(SELECT COALESCE(MAX(number), 0) FROM chats WHERE application_id = \
                 (SELECT id FROM applications WHERE token = ",
            )
            .push_bind(token.as_str())
            .push("))");
        }
        Scope::Messages(token, chat) => {
            qb.push("(SELECT COALESCE(MAX(number), 0) FROM messages WHERE chat_id = ");
            push_chat_id(qb, token, *chat);
            qb.push(")");
        }
        Scope::Versions(token, chat, message) => {
            qb.push("(SELECT COALESCE(MAX(version), 0) FROM messages WHERE chat_id = ");
            push_chat_id(qb, token, *chat);
            qb.push(" AND number = ").push_bind(*message).push(")");
        }
    }
}

/// A row for the search index.
#[derive(Debug, Clone)]
pub struct IndexedMessage {
    pub id: i64,
    pub chat_id: i64,
    pub number: i64,
    pub body: String,
    pub created_at: i64,
}

/// Whether an error means the database cannot be reached or is too busy right now (as
/// opposed to a bug or bad data).
pub fn is_unavailable(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|cause| match cause.downcast_ref::<sqlx::Error>() {
            Some(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)) => true,
            // PostgreSQL: by SQLSTATE (connection lost or refused, deadlock, ...).
            Some(sqlx::Error::Database(db))
                if db
                    .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some() =>
            {
                db.code().is_some_and(|code| postgres::is_transient(&code))
            }
            // SQLITE_BUSY / SQLITE_LOCKED after the busy timeout; MySQL's "try again" codes
            // (too many connections, lock wait timeout, deadlock, server gone: mysql::TRY_AGAIN).
            Some(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("5" | "6"))
                    || db
                        .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
                        .is_some_and(|e| mysql::TRY_AGAIN.contains(&e.number()))
            }
            _ => false,
        })
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies pending migrations.
    async fn migrate(&self) -> Result<()>;
    /// Answers when the database does.
    async fn ping(&self) -> Result<()>;

    /// `None` when the e-mail is taken.
    async fn insert_user(
        &self,
        name: &str,
        email: &str,
        password_hash: &str,
        now: i64,
    ) -> Result<Option<User>>;
    /// Live (not deleted) users only.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>>;
    async fn user_by_id(&self, id: i64) -> Result<Option<User>>;

    async fn insert_application(
        &self,
        token: &AppToken,
        name: &str,
        creator_id: i64,
        now: i64,
    ) -> Result<Application>;
    async fn application(&self, token: &AppToken) -> Result<Option<Application>>;
    async fn applications_of(&self, creator_id: i64, page: PageRequest)
        -> Result<Vec<Application>>;
    async fn rename_application(&self, id: i64, name: &str, now: i64) -> Result<()>;

    async fn chat(&self, application_id: i64, number: i64) -> Result<Option<Chat>>;
    async fn chats(&self, application_id: i64, page: PageRequest) -> Result<Vec<Chat>>;

    async fn message(&self, chat_id: i64, number: i64) -> Result<Option<Message>>;
    /// Newest first; `page.before` switches to keyset pagination.
    async fn messages(&self, chat_id: i64, page: PageRequest) -> Result<Vec<Message>>;
    /// The given messages of a chat, for search hits (any order).
    async fn messages_by_number(&self, chat_id: i64, numbers: &[i64]) -> Result<Vec<Message>>;

    /// One multi-row insert-if-absent; returns how many rows were new.
    async fn insert_chats(&self, chats: &[NewChat]) -> Result<u64>;
    /// One multi-row insert-if-absent; returns the rows that were new.
    async fn insert_messages(&self, messages: &[NewMessage]) -> Result<Vec<StoredKey>>;
    /// Applies edits in one transaction, each only over an older version.
    async fn edit_messages(&self, edits: &[MessageEdit]) -> Result<Vec<EditOutcome>>;

    /// The highest number ever persisted in a scope (0 if none), to seed a sequencer.
    async fn highest_number(&self, scope: &Scope) -> Result<i64>;
    /// Claims the scope's next block of `block` numbers for a shared sequencer, atomically
    /// across processes, and returns the block's end: the block is `(end - block, end]`.
    /// A scope's first claim starts above `highest_number`. A shared sequencer hands out only
    /// numbers of claimed blocks, so the last claim's end is above every number ever handed
    /// out, persisted or in flight (see ARCHITECTURE.md, "Numbers after Redis loses them").
    async fn claim_numbers(&self, scope: &Scope, block: i64) -> Result<i64>;

    /// Sets `chats_count` of the given applications (all when `None`) to their row counts.
    async fn sync_chats_count(&self, application_ids: Option<&[i64]>) -> Result<u64>;
    /// Sets `messages_count` of the given chats (all when `None`) to their row counts.
    async fn sync_messages_count(&self, chat_ids: Option<&[i64]>) -> Result<u64>;

    /// Messages with an id above `after_id`, in id order, for `reindex`.
    async fn messages_for_index(&self, after_id: i64, limit: u32) -> Result<Vec<IndexedMessage>>;
    async fn count_messages(&self) -> Result<u64>;

    /// Schedules (or re-schedules) a user's deletion; returns it.
    async fn schedule_deletion(
        &self,
        user_id: i64,
        due: i64,
        token_hash: &str,
        now: i64,
    ) -> Result<Deletion>;
    async fn pending_deletion_of(&self, user_id: i64) -> Result<Option<Deletion>>;
    /// Cancels the pending deletion with this recovery-token hash; returns its user.
    async fn cancel_deletion(&self, token_hash: &str, now: i64) -> Result<Option<User>>;
    /// Pending deletions due at `now`, oldest first.
    async fn due_deletions(&self, now: i64, limit: u32) -> Result<Vec<Deletion>>;
    /// Soft-deletes the user (scrubbing name, e-mail and password) and marks the deletion
    /// done, in one transaction; false if it was no longer pending (recovered meanwhile).
    async fn execute_deletion(&self, deletion: &Deletion, now: i64) -> Result<bool>;
    /// Appends to the audit log.
    async fn log_action(&self, user_id: i64, action: &str, detail: &str, now: i64) -> Result<()>;
    async fn actions_of(&self, user_id: i64) -> Result<Vec<(String, String)>>;
}
