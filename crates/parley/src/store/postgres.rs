//! PostgreSQL adapter, for many stateless processes sharing one database: one pool per
//! process, every multi-row write one statement over `UNNEST` arrays (a fixed handful of bind
//! parameters whatever the batch size, so PostgreSQL's 65,535-parameter limit never applies,
//! and one plan to cache).
//!
//! Concurrency: two writers may hold overlapping batches (a redelivery). Rows are written in
//! key order, so two batches wait on each other's keys in the same order and never deadlock;
//! `ON CONFLICT DO NOTHING` turns the loser's rows into no-ops. Row ids come from a sequence
//! taken at insert time, so, unlike SQLite's single writer, ids of concurrent transactions
//! may commit out of order.

use super::*;
use crate::domain::{now_ms, PageRequest};
use anyhow::Context;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{PgPool, QueryBuilder, Row};
use std::collections::HashMap;
use std::time::Duration;

/// Connections per process: enough for a busy api and writer, while a few processes stay
/// under PostgreSQL's default `max_connections` of 100.
const POOL_SIZE: u32 = 16;

pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url`, e.g. `postgres://parley@db/parley`.
    pub async fn open(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .context("connecting to PostgreSQL (DATABASE_URL)")?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Whether a PostgreSQL error (by SQLSTATE) means "try again": the connection broke or was
/// refused (class 08), too many connections, the server is shutting down or starting up
/// (57P01-57P03), or the transaction lost a serialization conflict or a deadlock (40001,
/// 40P01), which PostgreSQL resolves by aborting one side that may simply retry.
pub(super) fn is_transient(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "53300" | "57P01" | "57P02" | "57P03" | "40001" | "40P01"
        )
}

fn user(row: PgRow) -> User {
    User {
        id: row.get(0),
        name: row.get(1),
        email: row.get(2),
        password_hash: row.get(3),
        created_at: row.get(4),
    }
}

fn application(row: PgRow) -> Application {
    Application {
        id: row.get(0),
        token: AppToken::parse(row.get::<&str, _>(1)).expect("stored tokens are valid"),
        name: row.get(2),
        chats_count: row.get(3),
        creator_id: row.get(4),
    }
}

fn chat(row: PgRow) -> Chat {
    Chat {
        id: row.get(0),
        number: row.get(1),
        messages_count: row.get(2),
    }
}

fn message(row: PgRow) -> Message {
    Message {
        number: row.get(0),
        sender_id: row.get(1),
        sender_name: row.get(2),
        body: row.get(3),
        created_at: row.get(4),
    }
}

fn deletion(row: PgRow) -> Deletion {
    Deletion {
        id: row.get(0),
        user_id: row.get(1),
        scheduled_for: row.get(2),
    }
}

const USER_COLUMNS: &str = "id, name, email, password_hash, created_at";
const APP_COLUMNS: &str = "id, token, name, chats_count, creator_id";
const MESSAGE_COLUMNS: &str =
    "m.number, m.sender_id, u.name, m.body, m.created_at FROM messages m JOIN users u ON u.id = m.sender_id";
const DELETION_COLUMNS: &str = "id, user_id, scheduled_for";

impl PgStore {
    /// Sets a count column to the row count where they differ, in one statement: the counting
    /// reads an MVCC snapshot, so it holds up no writer, and only changed rows are written
    /// (and locked). The lock is `FOR NO KEY UPDATE`, which inserts' foreign-key checks
    /// (`FOR KEY SHARE`) do not wait for. A count that misses a concurrent commit is corrected
    /// by the next pass: that commit marked its scope dirty again.
    async fn sync_counts(&self, some: &str, all: &str, ids: Option<&[i64]>) -> Result<u64> {
        // Two statements rather than `$1 IS NULL OR id = ANY($1)`, whose cached generic plan
        // could not use the primary key and would scan every row each pass.
        let query = match ids {
            Some([]) => return Ok(0),
            Some(ids) => sqlx::query(some).bind(ids),
            None => sqlx::query(all),
        };
        Ok(query.execute(&self.pool).await?.rows_affected())
    }
}

#[async_trait]
impl Store for PgStore {
    async fn migrate(&self) -> Result<()> {
        // sqlx holds an advisory lock while migrating, so processes starting together take
        // turns.
        sqlx::migrate!("./migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn insert_user(
        &self,
        name: &str,
        email: &str,
        hash: &str,
        now: i64,
    ) -> Result<Option<User>> {
        let result = sqlx::query(&format!(
            "INSERT INTO users (name, email, password_hash, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) RETURNING {USER_COLUMNS}"
        ))
        .bind(name)
        .bind(email)
        .bind(hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        match result {
            Ok(row) => Ok(Some(user(row))),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1 AND NOT is_deleted");
        Ok(sqlx::query(&sql)
            .bind(email)
            .fetch_optional(&self.pool)
            .await?
            .map(user))
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 AND NOT is_deleted");
        Ok(sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(user))
    }

    async fn insert_application(
        &self,
        token: &AppToken,
        name: &str,
        creator_id: i64,
        now: i64,
    ) -> Result<Application> {
        let row = sqlx::query(&format!(
            "INSERT INTO applications (token, name, creator_id, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $4) RETURNING {APP_COLUMNS}"
        ))
        .bind(token.as_str())
        .bind(name)
        .bind(creator_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(application(row))
    }

    async fn application(&self, token: &AppToken) -> Result<Option<Application>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM applications WHERE token = $1");
        Ok(sqlx::query(&sql)
            .bind(token.as_str())
            .fetch_optional(&self.pool)
            .await?
            .map(application))
    }

    async fn applications_of(
        &self,
        creator_id: i64,
        page: PageRequest,
    ) -> Result<Vec<Application>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM applications WHERE creator_id = $1 ORDER BY id LIMIT $2 OFFSET $3"
        );
        let rows = sqlx::query(&sql)
            .bind(creator_id)
            .bind(i64::from(page.limit))
            .bind(page.offset as i64)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(application).collect())
    }

    async fn rename_application(&self, id: i64, name: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE applications SET name = $1, updated_at = $2 WHERE id = $3")
            .bind(name)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn chat(&self, application_id: i64, number: i64) -> Result<Option<Chat>> {
        let row = sqlx::query(
            "SELECT id, number, messages_count FROM chats WHERE application_id = $1 AND number = $2",
        )
        .bind(application_id)
        .bind(number)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(chat))
    }

    async fn chats(&self, application_id: i64, page: PageRequest) -> Result<Vec<Chat>> {
        let rows = sqlx::query(
            "SELECT id, number, messages_count FROM chats WHERE application_id = $1 \
             ORDER BY number LIMIT $2 OFFSET $3",
        )
        .bind(application_id)
        .bind(i64::from(page.limit))
        .bind(page.offset as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(chat).collect())
    }

    async fn message(&self, chat_id: i64, number: i64) -> Result<Option<Message>> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = $1 AND m.number = $2");
        Ok(sqlx::query(&sql)
            .bind(chat_id)
            .bind(number)
            .fetch_optional(&self.pool)
            .await?
            .map(message))
    }

    async fn messages(&self, chat_id: i64, page: PageRequest) -> Result<Vec<Message>> {
        let rows = match page.before {
            Some(before) => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = $1 AND m.number < $2 \
                     ORDER BY m.number DESC LIMIT $3"
                );
                sqlx::query(&sql)
                    .bind(chat_id)
                    .bind(before)
                    .bind(i64::from(page.limit))
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = $1 \
                     ORDER BY m.number DESC LIMIT $2 OFFSET $3"
                );
                sqlx::query(&sql)
                    .bind(chat_id)
                    .bind(i64::from(page.limit))
                    .bind(page.offset as i64)
                    .fetch_all(&self.pool)
                    .await?
            }
        };
        Ok(rows.into_iter().map(message).collect())
    }

    async fn messages_by_number(&self, chat_id: i64, numbers: &[i64]) -> Result<Vec<Message>> {
        if numbers.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = $1 AND m.number = ANY($2)");
        Ok(sqlx::query(&sql)
            .bind(chat_id)
            .bind(numbers)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(message)
            .collect())
    }

    async fn insert_chats(&self, chats: &[NewChat]) -> Result<u64> {
        if chats.is_empty() {
            return Ok(0);
        }
        // Key order: see the module comment (stable, so a key repeated in the batch keeps its
        // first occurrence, as on SQLite).
        let mut rows: Vec<&NewChat> = chats.iter().collect();
        rows.sort_by_key(|c| (c.application_id, c.number));
        let result = sqlx::query(
            "INSERT INTO chats (application_id, number, creator_id, created_at, updated_at) \
             SELECT a, n, c, t, t FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[]) \
             AS r(a, n, c, t) \
             ON CONFLICT (application_id, number) DO NOTHING",
        )
        .bind(rows.iter().map(|c| c.application_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|c| c.number).collect::<Vec<_>>())
        .bind(rows.iter().map(|c| c.creator_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|c| c.created_at).collect::<Vec<_>>())
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn insert_messages(&self, messages: &[NewMessage]) -> Result<Vec<StoredKey>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut rows: Vec<&NewMessage> = messages.iter().collect();
        rows.sort_by_key(|m| (m.chat_id, m.number));
        let inserted = sqlx::query(
            "INSERT INTO messages (chat_id, number, body, sender_id, created_at, updated_at) \
             SELECT c, n, b, s, t, t \
             FROM UNNEST($1::int8[], $2::int8[], $3::text[], $4::int8[], $5::int8[]) \
             AS r(c, n, b, s, t) \
             ON CONFLICT (chat_id, number) DO NOTHING RETURNING id, chat_id, number",
        )
        .bind(rows.iter().map(|m| m.chat_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.number).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.body.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.sender_id).collect::<Vec<_>>())
        .bind(rows.iter().map(|m| m.created_at).collect::<Vec<_>>())
        .fetch_all(&self.pool)
        .await?;
        Ok(inserted.iter().map(StoredKey::from_row).collect())
    }

    /// Three statements whatever the batch size: lock the messages in key order and read
    /// them, decide each edit in the given order exactly as SQLite does one by one, then write
    /// each message's last applied edit. The locks make the decisions hold until commit.
    async fn edit_messages(&self, edits: &[MessageEdit]) -> Result<Vec<EditOutcome>> {
        if edits.is_empty() {
            return Ok(Vec::new());
        }
        let mut keys: Vec<(i64, i64)> = edits.iter().map(|e| (e.chat_id, e.number)).collect();
        keys.sort_unstable();
        keys.dedup();
        let (chat_ids, numbers): (Vec<i64>, Vec<i64>) = keys.into_iter().unzip();
        let mut tx = self.pool.begin().await?;
        // Locked in ORDER BY order (the lock step runs above the sort), so concurrent batches
        // never deadlock. Under READ COMMITTED each locked row is re-read at its latest version.
        let rows = sqlx::query(
            "SELECT m.chat_id, m.number, m.id, m.sender_id, m.version FROM messages m \
             JOIN UNNEST($1::int8[], $2::int8[]) AS k(chat_id, number) \
             ON m.chat_id = k.chat_id AND m.number = k.number \
             ORDER BY m.chat_id, m.number FOR NO KEY UPDATE OF m",
        )
        .bind(&chat_ids)
        .bind(&numbers)
        .fetch_all(&mut *tx)
        .await?;
        struct Current {
            id: i64,
            sender_id: i64,
            version: i64,
            /// The last edit applied to it, by index.
            applied: Option<usize>,
        }
        let mut current: HashMap<(i64, i64), Current> = rows
            .into_iter()
            .map(|r| {
                let key = (r.get(0), r.get(1));
                let row = Current {
                    id: r.get(2),
                    sender_id: r.get(3),
                    version: r.get(4),
                    applied: None,
                };
                (key, row)
            })
            .collect();
        let mut outcomes = Vec::with_capacity(edits.len());
        for (i, e) in edits.iter().enumerate() {
            let outcome = match current.get_mut(&(e.chat_id, e.number)) {
                None => EditOutcome::Missing,
                Some(m) if m.sender_id != e.sender_id => EditOutcome::NotSender,
                Some(m) if m.version >= e.version => EditOutcome::Superseded,
                Some(m) => {
                    m.version = e.version;
                    m.applied = Some(i);
                    EditOutcome::Applied { id: m.id }
                }
            };
            outcomes.push(outcome);
        }
        let applied: Vec<(i64, &MessageEdit)> = current
            .values()
            .filter_map(|m| m.applied.map(|i| (m.id, &edits[i])))
            .collect();
        if !applied.is_empty() {
            sqlx::query(
                "UPDATE messages m SET body = u.body, version = u.version, updated_at = u.updated_at \
                 FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[]) \
                 AS u(id, body, version, updated_at) WHERE m.id = u.id",
            )
            .bind(applied.iter().map(|(id, _)| *id).collect::<Vec<_>>())
            .bind(applied.iter().map(|(_, e)| e.body.as_str()).collect::<Vec<_>>())
            .bind(applied.iter().map(|(_, e)| e.version).collect::<Vec<_>>())
            .bind(applied.iter().map(|(_, e)| e.updated_at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn highest_number(&self, scope: &Scope) -> Result<i64> {
        let mut qb = QueryBuilder::new("SELECT ");
        push_highest(&mut qb, scope);
        Ok(qb.build().fetch_one(&self.pool).await?.get(0))
    }

    /// One statement, atomic across processes: the first claim inserts the row above the
    /// scope's highest number; a concurrent first claim conflicts on the key, waits for the
    /// winner's commit and then adds its block to the winner's end. Either way each caller
    /// gets its own block.
    async fn claim_numbers(&self, scope: &Scope, block: i64) -> Result<i64> {
        let mut qb =
            QueryBuilder::new("INSERT INTO number_claims (scope, claimed, updated_at) SELECT ");
        qb.push_bind(scope.key()).push(", ");
        push_highest(&mut qb, scope);
        qb.push(" + ")
            .push_bind(block)
            .push(", ")
            .push_bind(now_ms())
            .push(
                " ON CONFLICT (scope) DO UPDATE SET updated_at = EXCLUDED.updated_at, \
                 claimed = GREATEST(number_claims.claimed + ",
            )
            .push_bind(block)
            // EXCLUDED.claimed is the highest persisted number + block: a mark below what
            // another sequencer persisted meanwhile is lifted above it.
            .push(", EXCLUDED.claimed) RETURNING claimed");
        Ok(qb.build().fetch_one(&self.pool).await?.get(0))
    }

    async fn sync_chats_count(&self, ids: Option<&[i64]>) -> Result<u64> {
        const COUNTED: &str = "UPDATE applications a SET chats_count = n.counted \
             FROM (SELECT a2.id, (SELECT COUNT(*) FROM chats c WHERE c.application_id = a2.id) \
             AS counted FROM applications a2";
        const CHANGED: &str = ") n WHERE a.id = n.id AND a.chats_count <> n.counted";
        self.sync_counts(
            &format!("{COUNTED} WHERE a2.id = ANY($1){CHANGED}"),
            &format!("{COUNTED}{CHANGED}"),
            ids,
        )
        .await
    }

    async fn sync_messages_count(&self, ids: Option<&[i64]>) -> Result<u64> {
        const COUNTED: &str = "UPDATE chats c SET messages_count = n.counted \
             FROM (SELECT c2.id, (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c2.id) \
             AS counted FROM chats c2";
        const CHANGED: &str = ") n WHERE c.id = n.id AND c.messages_count <> n.counted";
        self.sync_counts(
            &format!("{COUNTED} WHERE c2.id = ANY($1){CHANGED}"),
            &format!("{COUNTED}{CHANGED}"),
            ids,
        )
        .await
    }

    async fn messages_for_index(&self, after_id: i64, limit: u32) -> Result<Vec<IndexedMessage>> {
        let rows = sqlx::query(
            "SELECT id, chat_id, number, body, created_at FROM messages WHERE id > $1 \
             ORDER BY id LIMIT $2",
        )
        .bind(after_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| IndexedMessage {
                id: r.get(0),
                chat_id: r.get(1),
                number: r.get(2),
                body: r.get(3),
                created_at: r.get(4),
            })
            .collect())
    }

    async fn count_messages(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(&self.pool)
            .await?;
        Ok(n as u64)
    }

    /// A second request keeps the first schedule but replaces the recovery token, as on
    /// SQLite; the partial unique index on pending deletions makes that one atomic statement
    /// even when two processes schedule at once.
    async fn schedule_deletion(
        &self,
        user_id: i64,
        due: i64,
        token_hash: &str,
        now: i64,
    ) -> Result<Deletion> {
        let row = sqlx::query(&format!(
            "INSERT INTO user_deletions (user_id, status, scheduled_for, recovery_token_hash, \
             created_at, updated_at) VALUES ($1, 'pending', $2, $3, $4, $4) \
             ON CONFLICT (user_id) WHERE status = 'pending' DO UPDATE SET \
             recovery_token_hash = EXCLUDED.recovery_token_hash, updated_at = EXCLUDED.updated_at \
             RETURNING {DELETION_COLUMNS}"
        ))
        .bind(user_id)
        .bind(due)
        .bind(token_hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(deletion(row))
    }

    async fn pending_deletion_of(&self, user_id: i64) -> Result<Option<Deletion>> {
        let sql = format!(
            "SELECT {DELETION_COLUMNS} FROM user_deletions WHERE user_id = $1 AND status = 'pending'"
        );
        Ok(sqlx::query(&sql)
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .map(deletion))
    }

    async fn cancel_deletion(&self, token_hash: &str, now: i64) -> Result<Option<User>> {
        let sql = format!(
            "WITH cancelled AS (UPDATE user_deletions SET status = 'cancelled', updated_at = $1 \
             WHERE recovery_token_hash = $2 AND status = 'pending' RETURNING user_id) \
             SELECT {USER_COLUMNS} FROM users WHERE id = (SELECT user_id FROM cancelled) \
             AND NOT is_deleted"
        );
        Ok(sqlx::query(&sql)
            .bind(now)
            .bind(token_hash)
            .fetch_optional(&self.pool)
            .await?
            .map(user))
    }

    async fn due_deletions(&self, now: i64, limit: u32) -> Result<Vec<Deletion>> {
        let sql = format!(
            "SELECT {DELETION_COLUMNS} FROM user_deletions \
             WHERE status = 'pending' AND scheduled_for <= $1 ORDER BY scheduled_for, id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(deletion).collect())
    }

    async fn execute_deletion(&self, d: &Deletion, now: i64) -> Result<bool> {
        // One statement: the user is scrubbed only if this call moved the deletion from
        // pending to done (not recovered meanwhile, not done by another scheduler). Soft
        // delete that scrubs personal data and frees the address: `deleted-<id>` is no e-mail
        // address, so no sign-up can take it first. The row stays so messages keep a sender.
        let scrubbed = sqlx::query(
            "WITH done AS (UPDATE user_deletions SET status = 'done', updated_at = $1 \
             WHERE id = $2 AND status = 'pending' RETURNING user_id) \
             UPDATE users u SET is_deleted = TRUE, deleted_at = $1, updated_at = $1, \
             name = 'Deleted user', email = 'deleted-' || u.id, password_hash = '' \
             FROM done WHERE u.id = done.user_id",
        )
        .bind(now)
        .bind(d.id)
        .execute(&self.pool)
        .await?;
        Ok(scrubbed.rows_affected() == 1)
    }

    async fn log_action(&self, user_id: i64, action: &str, detail: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO action_logs (user_id, action, detail, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(action)
        .bind(detail)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn actions_of(&self, user_id: i64) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT action, detail FROM action_logs WHERE user_id = $1 ORDER BY id")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::suite::new_message as msg;
    use super::*;
    use crate::testing::{fresh_database, Engine};
    use std::collections::HashSet;
    use std::sync::Arc;

    /// A store with one user (Ada), one application and its chat 1.
    struct Fixture {
        url: String,
        store: Arc<PgStore>,
        user: i64,
        app: i64,
        token: AppToken,
        chat: i64,
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
        let token = AppToken::generate();
        let app = store
            .insert_application(&token, "app", user, 1)
            .await
            .unwrap()
            .id;
        let chat = new_chat(&store, app, user, 1).await;
        Fixture {
            url,
            store: Arc::new(store),
            user,
            app,
            token,
            chat,
        }
    }

    async fn new_chat(store: &PgStore, app: i64, user: i64, number: i64) -> i64 {
        let row = NewChat {
            application_id: app,
            number,
            creator_id: user,
            created_at: 1,
        };
        store.insert_chats(&[row]).await.unwrap();
        store.chat(app, number).await.unwrap().unwrap().id
    }

    fn edit(chat_id: i64, number: i64, sender_id: i64, version: i64, body: &str) -> MessageEdit {
        MessageEdit {
            chat_id,
            number,
            sender_id,
            body: body.into(),
            version,
            updated_at: version,
        }
    }

    #[tokio::test]
    async fn migrations_apply_twice() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let db = fresh_database(&url).await.unwrap();
        for _ in 0..2 {
            let store = PgStore::open(&db).await.unwrap();
            store.migrate().await.unwrap();
            store.migrate().await.unwrap();
        }
        let store = PgStore::open(&db).await.unwrap();
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(store.pool())
            .await
            .unwrap();
        assert_eq!(applied, 2);
        let trgm: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM pg_extension WHERE extname = 'pg_trgm'")
                .fetch_one(store.pool())
                .await
                .unwrap();
        assert_eq!(trgm, 1);
    }

    #[tokio::test]
    async fn users_and_applications() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let s = &f.store;
        assert!(
            s.insert_user("Other", "ada@example.com", "h", 2)
                .await
                .unwrap()
                .is_none(),
            "a taken e-mail is None, not an error"
        );
        let ada = s.user_by_email("ada@example.com").await.unwrap().unwrap();
        assert_eq!((ada.id, ada.name.as_str()), (f.user, "Ada"));
        assert_eq!(
            s.user_by_id(f.user).await.unwrap().unwrap().email,
            "ada@example.com"
        );

        let second = s
            .insert_application(&AppToken::generate(), "second", f.user, 2)
            .await
            .unwrap();
        s.rename_application(second.id, "renamed", 3).await.unwrap();
        let page = PageRequest {
            limit: 1,
            offset: 1,
            before: None,
        };
        let apps = s.applications_of(f.user, page).await.unwrap();
        assert_eq!(apps.len(), 1);
        assert_eq!((apps[0].id, apps[0].name.as_str()), (second.id, "renamed"));
        let found = s.application(&f.token).await.unwrap().unwrap();
        assert_eq!((found.id, found.creator_id), (f.app, f.user));
        assert!(s
            .application(&AppToken::generate())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn insert_if_absent_returns_only_new_rows() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let s = &f.store;
        let first = s
            .insert_messages(&[msg(f.chat, 2, f.user, "b"), msg(f.chat, 1, f.user, "a")])
            .await
            .unwrap();
        let keys: Vec<i64> = first.iter().map(|k| k.number).collect();
        assert_eq!(keys, vec![1, 2], "written in key order");
        let again = s
            .insert_messages(&[
                msg(f.chat, 2, f.user, "redelivered"),
                msg(f.chat, 3, f.user, "c"),
                msg(f.chat, 3, f.user, "c twice in one batch"),
            ])
            .await
            .unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].chat_id, again[0].number), (f.chat, 3));
        assert!(again[0].id > first[1].id, "ids grow");
        assert_eq!(s.message(f.chat, 2).await.unwrap().unwrap().body, "b");
        assert_eq!(s.message(f.chat, 3).await.unwrap().unwrap().body, "c");
        assert!(s.insert_messages(&[]).await.unwrap().is_empty());

        let chat = |number| NewChat {
            application_id: f.app,
            number,
            creator_id: f.user,
            created_at: 1,
        };
        assert_eq!(
            s.insert_chats(&[chat(1), chat(2), chat(3)]).await.unwrap(),
            2
        );
        assert_eq!(s.insert_chats(&[chat(3)]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn concurrent_overlapping_batches_never_fail_or_duplicate() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let other = new_chat(&f.store, f.app, f.user, 2).await;
        // 12 writers, each with a window of 300 keys over two chats that overlaps its
        // neighbours', half of them in reverse order: unsorted, they deadlock.
        let tasks: Vec<_> = (0..12)
            .map(|w| {
                let (s, chat, user) = (f.store.clone(), f.chat, f.user);
                tokio::spawn(async move {
                    let mut rows: Vec<NewMessage> = (w * 50 + 1..=w * 50 + 150)
                        .flat_map(|n| [msg(chat, n, user, "x"), msg(other, n, user, "y")])
                        .collect();
                    if w % 2 == 1 {
                        rows.reverse();
                    }
                    s.insert_messages(&rows).await
                })
            })
            .collect();
        let mut seen = HashSet::new();
        for task in tasks {
            for key in task.await.unwrap().expect("no error, no deadlock") {
                assert!(seen.insert((key.chat_id, key.number)), "{key:?} twice");
            }
        }
        let expected: HashSet<(i64, i64)> =
            (1..=700).flat_map(|n| [(f.chat, n), (other, n)]).collect();
        assert_eq!(seen, expected, "every key reported new exactly once");
        assert_eq!(f.store.count_messages().await.unwrap(), 1_400);
    }

    #[tokio::test]
    async fn claims_from_concurrent_tasks_are_disjoint_blocks_above_the_highest_number() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let rows: Vec<_> = (1..=7).map(|n| msg(f.chat, n, f.user, "m")).collect();
        f.store.insert_messages(&rows).await.unwrap();
        let scope = Scope::Messages(f.token.clone(), 1);
        assert_eq!(f.store.highest_number(&scope).await.unwrap(), 7);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (s, scope) = (f.store.clone(), scope.clone());
                tokio::spawn(async move { s.claim_numbers(&scope, 10).await })
            })
            .collect();
        let mut ends = Vec::new();
        for task in tasks {
            ends.push(task.await.unwrap().unwrap());
        }
        ends.sort_unstable();
        let expected: Vec<i64> = (1..=20).map(|k| 7 + 10 * k).collect();
        assert_eq!(ends, expected, "blocks (end - 10, end] tile 8..=207");
        assert_eq!(f.store.claim_numbers(&scope, 5).await.unwrap(), 212);

        // Scopes are independent; chats start above their own highest number.
        let chats = Scope::Chats(f.token.clone());
        assert_eq!(f.store.claim_numbers(&chats, 100).await.unwrap(), 101);
        let versions = Scope::Versions(f.token.clone(), 1, 1);
        assert_eq!(f.store.claim_numbers(&versions, 3).await.unwrap(), 3);
    }

    /// A block claim's `highest_number` reads the end of the scope's index, not every row of
    /// the scope: counted by the rows the plan's nodes produced (`EXPLAIN ANALYZE`), which a
    /// MAX over the join made one per message (and per chat) of the scope.
    #[tokio::test]
    async fn the_highest_number_reads_a_few_index_entries_whatever_the_scope_size() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let rows: Vec<_> = (1..=2_000).map(|n| msg(f.chat, n, f.user, "m")).collect();
        f.store.insert_messages(&rows).await.unwrap();
        let chats: Vec<NewChat> = (2..=300)
            .map(|number| NewChat {
                application_id: f.app,
                number,
                creator_id: f.user,
                created_at: 1,
            })
            .collect();
        f.store.insert_chats(&chats).await.unwrap();
        for (scope, highest) in [
            (Scope::Messages(f.token.clone(), 1), 2_000),
            (Scope::Chats(f.token.clone()), 300),
            (Scope::Versions(f.token.clone(), 1, 1_999), 0),
        ] {
            let mut qb = QueryBuilder::new("SELECT ");
            push_highest(&mut qb, &scope);
            let found: i64 = qb.build().fetch_one(f.store.pool()).await.unwrap().get(0);
            assert_eq!(found, highest, "{scope:?}");
            let mut qb = QueryBuilder::new("EXPLAIN (ANALYZE, FORMAT JSON) SELECT ");
            push_highest(&mut qb, &scope);
            let row = qb.build().fetch_one(f.store.pool()).await.unwrap();
            // `json` arrives as its text (sqlx's json feature is not needed elsewhere).
            let plan: serde_json::Value =
                serde_json::from_str(&row.try_get_unchecked::<String, _>(0).unwrap()).unwrap();
            let rows = rows_produced(&plan);
            // One or two rows per node here; the scan read 300 or 2,000.
            assert!(rows < 20.0, "{scope:?}: {rows} rows in the plan {plan}");
        }
    }

    /// The rows all nodes of an `EXPLAIN (ANALYZE, FORMAT JSON)` plan produced.
    fn rows_produced(plan: &serde_json::Value) -> f64 {
        match plan {
            serde_json::Value::Array(items) => items.iter().map(rows_produced).sum(),
            serde_json::Value::Object(node) => {
                let own = match (node.get("Actual Rows"), node.get("Actual Loops")) {
                    (Some(rows), Some(loops)) => {
                        rows.as_f64().unwrap_or(0.0) * loops.as_f64().unwrap_or(0.0)
                    }
                    _ => 0.0,
                };
                own + node.values().map(rows_produced).sum::<f64>()
            }
            _ => 0.0,
        }
    }

    #[tokio::test]
    async fn edits_apply_only_over_older_versions() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let s = &f.store;
        let stored = s
            .insert_messages(&[msg(f.chat, 1, f.user, "original")])
            .await
            .unwrap();
        let id = stored[0].id;
        let outcomes = s
            .edit_messages(&[
                edit(f.chat, 1, f.user, 2, "two"),
                edit(f.chat, 1, f.user, 1, "one"),
                edit(f.chat, 1, f.user + 1000, 9, "not mine"),
                edit(f.chat, 99, f.user, 1, "in flight"),
                edit(f.chat, 1, f.user, 3, "three"),
                edit(f.chat, 1, f.user, 3, "three again"),
            ])
            .await
            .unwrap();
        use EditOutcome::*;
        assert_eq!(
            outcomes,
            vec![
                Applied { id },
                Superseded,
                NotSender,
                Missing,
                Applied { id },
                Superseded
            ]
        );
        assert_eq!(s.message(f.chat, 1).await.unwrap().unwrap().body, "three");
        let late = s
            .edit_messages(&[edit(f.chat, 1, f.user, 2, "late")])
            .await
            .unwrap();
        assert_eq!(late, vec![Superseded]);
        let scope = Scope::Versions(f.token.clone(), 1, 1);
        assert_eq!(s.highest_number(&scope).await.unwrap(), 3);
        assert!(s.edit_messages(&[]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn concurrent_edit_batches_never_deadlock_and_the_newest_wins() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let rows: Vec<_> = (1..=300).map(|n| msg(f.chat, n, f.user, "v0")).collect();
        f.store.insert_messages(&rows).await.unwrap();
        // The riskiest plan, which a large table gets: index lookups in the batch's order
        // (this small one would be scanned in its physical order whatever the batch's).
        let nested_loops = "options%5Benable_hashjoin%5D=off&options%5Benable_mergejoin%5D=off\
                            &options%5Benable_seqscan%5D=off";
        let store = PgStore::open(&format!("{}?{nested_loops}", f.url))
            .await
            .unwrap();
        let store = Arc::new(store);
        // Writer w edits every message to version w + 1, half of them in reverse key order.
        let tasks: Vec<_> = (0..16)
            .map(|w| {
                let (s, chat, user) = (store.clone(), f.chat, f.user);
                tokio::spawn(async move {
                    let mut edits: Vec<_> = (1..=300)
                        .map(|n| edit(chat, n, user, w + 1, &format!("v{}", w + 1)))
                        .collect();
                    if w % 2 == 1 {
                        edits.reverse();
                    }
                    s.edit_messages(&edits).await
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap().expect("no error, no deadlock");
        }
        let edited: Vec<i64> = (1..=300).collect();
        let messages = f.store.messages_by_number(f.chat, &edited).await.unwrap();
        assert_eq!(messages.len(), 300);
        assert!(
            messages.iter().all(|m| m.body == "v16"),
            "the newest version wins"
        );
    }

    #[tokio::test]
    async fn counts_sync_to_row_counts_writing_only_changed_rows() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let s = &f.store;
        let empty = new_chat(s, f.app, f.user, 2).await;
        let rows: Vec<_> = (1..=3).map(|n| msg(f.chat, n, f.user, "m")).collect();
        s.insert_messages(&rows).await.unwrap();

        assert_eq!(s.sync_messages_count(Some(&[])).await.unwrap(), 0);
        let both = [f.chat, empty];
        assert_eq!(s.sync_messages_count(Some(&both)).await.unwrap(), 1);
        assert_eq!(s.chat(f.app, 1).await.unwrap().unwrap().messages_count, 3);
        assert_eq!(s.chat(f.app, 2).await.unwrap().unwrap().messages_count, 0);
        assert_eq!(
            s.sync_messages_count(Some(&both)).await.unwrap(),
            0,
            "unchanged"
        );
        assert_eq!(s.sync_messages_count(None).await.unwrap(), 0);

        s.insert_messages(&[msg(empty, 1, f.user, "m")])
            .await
            .unwrap();
        assert_eq!(s.sync_messages_count(None).await.unwrap(), 1);
        assert_eq!(s.chat(f.app, 2).await.unwrap().unwrap().messages_count, 1);

        assert_eq!(s.sync_chats_count(Some(&[f.app])).await.unwrap(), 1);
        assert_eq!(
            s.application(&f.token).await.unwrap().unwrap().chats_count,
            2
        );
        assert_eq!(s.sync_chats_count(None).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn reads_pages_and_rows_for_the_index() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let s = &f.store;
        let rows: Vec<_> = (1..=5)
            .map(|n| msg(f.chat, n, f.user, &format!("m{n}")))
            .collect();
        let stored = s.insert_messages(&rows).await.unwrap();

        let numbers = |ms: Vec<Message>| ms.into_iter().map(|m| m.number).collect::<Vec<_>>();
        let page = PageRequest {
            limit: 2,
            offset: 1,
            before: None,
        };
        assert_eq!(numbers(s.messages(f.chat, page).await.unwrap()), vec![4, 3]);
        let keyset = PageRequest {
            before: Some(3),
            ..page
        };
        assert_eq!(
            numbers(s.messages(f.chat, keyset).await.unwrap()),
            vec![2, 1]
        );
        let mut found = numbers(s.messages_by_number(f.chat, &[5, 2, 42]).await.unwrap());
        found.sort_unstable();
        assert_eq!(found, vec![2, 5]);
        let one = s.message(f.chat, 4).await.unwrap().unwrap();
        assert_eq!((one.sender_name.as_str(), one.body.as_str()), ("Ada", "m4"));

        let indexed = s.messages_for_index(stored[1].id, 2).await.unwrap();
        let ids: Vec<i64> = indexed.iter().map(|m| m.id).collect();
        assert_eq!(ids, vec![stored[2].id, stored[3].id]);
        assert_eq!(indexed[0].body, "m3");
        assert_eq!(
            s.highest_number(&Scope::Chats(f.token.clone()))
                .await
                .unwrap(),
            1
        );
        let none = Scope::Messages(f.token.clone(), 9);
        assert_eq!(s.highest_number(&none).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn deletion_is_scheduled_cancelled_and_executed() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let f = fixture(&url).await;
        let s = &f.store;
        let d = s.schedule_deletion(f.user, 100, "h1", 10).await.unwrap();
        let again = s.schedule_deletion(f.user, 200, "h2", 20).await.unwrap();
        assert_eq!(
            (again.id, again.scheduled_for),
            (d.id, 100),
            "first schedule kept"
        );
        assert_eq!(
            s.pending_deletion_of(f.user).await.unwrap().unwrap().id,
            d.id
        );
        assert!(
            s.cancel_deletion("h1", 30).await.unwrap().is_none(),
            "token replaced"
        );
        let recovered = s.cancel_deletion("h2", 30).await.unwrap().unwrap();
        assert_eq!(recovered.id, f.user);
        assert!(s.pending_deletion_of(f.user).await.unwrap().is_none());
        assert!(
            !s.execute_deletion(&d, 40).await.unwrap(),
            "recovered: not executed"
        );

        // Concurrent requests still leave one pending deletion.
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let (s, user) = (f.store.clone(), f.user);
                tokio::spawn(
                    async move { s.schedule_deletion(user, 500, &format!("t{i}"), 50).await },
                )
            })
            .collect();
        let mut ids = HashSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap().unwrap().id);
        }
        assert_eq!(ids.len(), 1);
        let d = s.pending_deletion_of(f.user).await.unwrap().unwrap();
        assert!(s.due_deletions(499, 10).await.unwrap().is_empty());
        let due = s.due_deletions(500, 10).await.unwrap();
        assert_eq!(due.iter().map(|d| d.id).collect::<Vec<_>>(), vec![d.id]);

        assert!(s.execute_deletion(&d, 600).await.unwrap());
        assert!(!s.execute_deletion(&d, 601).await.unwrap(), "only once");
        assert!(s.user_by_id(f.user).await.unwrap().is_none());
        assert!(s.user_by_email("ada@example.com").await.unwrap().is_none());
        let scrubbed: (String, String) =
            sqlx::query_as("SELECT name, email FROM users WHERE id = $1")
                .bind(f.user)
                .fetch_one(s.pool())
                .await
                .unwrap();
        assert_eq!(
            scrubbed,
            ("Deleted user".into(), format!("deleted-{}", f.user))
        );
        assert!(
            s.insert_user("New Ada", "ada@example.com", "h", 700)
                .await
                .unwrap()
                .is_some(),
            "the address is free again"
        );
        assert!(s.due_deletions(10_000, 10).await.unwrap().is_empty());

        s.log_action(f.user, "deletion_executed", "{}", 600)
            .await
            .unwrap();
        s.log_action(f.user, "second", "x", 601).await.unwrap();
        let actions = s.actions_of(f.user).await.unwrap();
        assert_eq!(
            actions,
            vec![
                ("deletion_executed".into(), "{}".into()),
                ("second".into(), "x".into())
            ]
        );
    }

    #[tokio::test]
    async fn transient_errors_count_as_unavailable() {
        let Some(url) = Engine::Postgres.url() else {
            return;
        };
        let store = PgStore::open(&url).await.unwrap();
        let raise = |code: &str| {
            format!("DO $$ BEGIN RAISE EXCEPTION 'test' USING ERRCODE = '{code}'; END $$")
        };
        for (code, transient) in [
            ("40P01", true),
            ("40001", true),
            ("53300", true),
            ("57P03", true),
            ("08006", true),
            ("23505", false),
            ("22P02", false),
        ] {
            let e: anyhow::Error = sqlx::query(&raise(code))
                .execute(store.pool())
                .await
                .unwrap_err()
                .into();
            assert_eq!(is_unavailable(&e), transient, "{code}");
        }
        let refused = PgPoolOptions::new()
            .acquire_timeout(Duration::from_secs(1))
            .connect("postgres://postgres@127.0.0.1:1/x")
            .await;
        assert!(is_unavailable(&refused.err().unwrap().into()));
    }
}
