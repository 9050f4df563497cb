//! SQLite adapter, the embedded default: one file in the data directory, WAL mode, a single
//! writing connection (SQLite serialises writers anyway; one connection avoids SQLITE_BUSY)
//! and a small pool of readers that WAL lets run beside it.

use super::*;
use crate::domain::{now_ms, PageRequest};
use deadpool::unmanaged::{Object, Pool};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteRow, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, QueryBuilder, Row, Sqlite, SqliteConnection};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;
use tokio::sync::Mutex;

/// SQLite allows 32,766 bound variables per statement; stay well below.
const MAX_ROWS_PER_INSERT: usize = 500;

/// The connections are held without sqlx's pool: it pings every connection it takes back,
/// unconditionally, and for SQLite a ping is one more round trip to the connection's worker
/// thread per query (and the connection stays out of the pool until it is answered). A
/// SQLite connection is a file handle on that thread, which no ping finds broken where the
/// next query would not.
pub struct SqliteStore {
    /// The one writing connection; a fair mutex hands it to writers in arrival order.
    writes: Mutex<SqliteConnection>,
    /// Reading connections, returned as they are dropped.
    reads: Pool<SqliteConnection>,
}

/// Each reader's page cache, in KiB as a negative `cache_size` (SQLite's default is 2,000
/// KiB). The pages a reader needs again are the B-tree's upper levels, well under 1 MiB at
/// 1M messages; leaves come from the OS page cache either way.
const READER_CACHE_KIB: i64 = -1024;

/// Reading connections: two per core. A read is CPU work on pages the OS already caches, so
/// more connections than that only add page caches and sqlx worker threads. On the 1M-message
/// fixture (2 cores), 4 readers with 1 MiB caches served get-message as fast as 8 with 2 MiB
/// (25,365 / 24,677 req/s) in 20 MB less memory.
fn readers() -> u32 {
    (2 * crate::blocking::cores() as u32).clamp(2, 8)
}

impl SqliteStore {
    /// Opens (creating if needed) `url`, e.g. `sqlite://./data/parley.db`.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed batch survives power loss too, not just a process crash;
            // group commit keeps the fsync count low.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        if let Some(dir) = options.get_filename().parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)?;
            }
        }
        let writes = Mutex::new(options.connect().await?);
        let reader = options
            .read_only(true)
            .pragma("cache_size", READER_CACHE_KIB.to_string());
        let mut reads = Vec::new();
        for _ in 0..readers() {
            reads.push(reader.connect().await?);
        }
        let reads = Pool::from(reads);
        Ok(Self { writes, reads })
    }

    /// The URL of the default database file in a data directory.
    pub fn url_in(data_dir: &Path) -> String {
        format!("sqlite://{}", data_dir.join("parley.db").display())
    }
}

fn user(row: SqliteRow) -> User {
    User {
        id: row.get(0),
        name: row.get(1),
        email: row.get(2),
        password_hash: row.get(3),
        created_at: row.get(4),
    }
}

fn application(row: SqliteRow) -> Application {
    Application {
        id: row.get(0),
        token: AppToken::parse(row.get::<&str, _>(1)).expect("stored tokens are valid"),
        name: row.get(2),
        chats_count: row.get(3),
        creator_id: row.get(4),
    }
}

fn chat(row: SqliteRow) -> Chat {
    Chat {
        id: row.get(0),
        number: row.get(1),
        messages_count: row.get(2),
    }
}

fn message(row: SqliteRow) -> Message {
    Message {
        number: row.get(0),
        sender_id: row.get(1),
        sender_name: row.get(2),
        body: row.get(3),
        created_at: row.get(4),
    }
}

fn deletion(row: SqliteRow) -> Deletion {
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

/// One multi-row insert-if-absent of at most `MAX_ROWS_PER_INSERT` chats.
async fn insert_chat_rows(conn: &mut SqliteConnection, part: &[NewChat]) -> Result<u64> {
    let mut qb = insert_chats_sql::<Sqlite>(part);
    qb.push(" ON CONFLICT (application_id, number) DO NOTHING");
    Ok(qb.build().execute(&mut *conn).await?.rows_affected())
}

/// One multi-row insert-if-absent of at most `MAX_ROWS_PER_INSERT` messages; the keys of
/// the rows it added.
async fn insert_message_rows(
    conn: &mut SqliteConnection,
    part: &[NewMessage],
) -> Result<Vec<StoredKey>> {
    let mut qb = insert_messages_sql::<Sqlite>(part);
    qb.push(" ON CONFLICT (chat_id, number) DO NOTHING RETURNING id, chat_id, number");
    let rows = qb.build().fetch_all(&mut *conn).await?;
    Ok(rows.iter().map(StoredKey::from_row).collect())
}

fn push_ids(qb: &mut QueryBuilder<'_, Sqlite>, ids: &[i64]) {
    let mut list = qb.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
}

impl SqliteStore {
    async fn reader(&self) -> Result<Object<SqliteConnection>> {
        Ok(self.reads.get().await?)
    }

    /// Counts on a reader (WAL lets it run beside the writer: a large chat's count takes tens
    /// of milliseconds and must not hold up commits), then writes only the counts that
    /// changed. A count taken just before a commit is stale, but that commit marked its
    /// scope dirty again, so the next pass corrects it.
    async fn sync_counts(
        &self,
        select: &str,
        id: &str,
        update: &str,
        ids: Option<&[i64]>,
    ) -> Result<u64> {
        let mut qb = QueryBuilder::new(select);
        if let Some(ids) = ids {
            if ids.is_empty() {
                return Ok(0);
            }
            qb.push(format!(" WHERE {id} IN ("));
            push_ids(&mut qb, ids);
            qb.push(")");
        }
        let changed: Vec<(i64, i64)> = qb
            .build()
            .fetch_all(&mut *self.reader().await?)
            .await?
            .into_iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1), r.get::<i64, _>(2)))
            .filter(|(_, stored, counted)| stored != counted)
            .map(|(id, _, counted)| (id, counted))
            .collect();
        if changed.is_empty() {
            return Ok(0);
        }
        let mut conn = self.writes.lock().await;
        let mut tx = conn.begin().await?;
        for (id, count) in &changed {
            sqlx::query(update)
                .bind(count)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(changed.len() as u64)
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<()> {
        sqlx::migrate!("./migrations/sqlite")
            .run_direct(&mut *self.writes.lock().await)
            .await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&mut *self.reader().await?)
            .await?;
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
             VALUES (?, ?, ?, ?, ?) RETURNING {USER_COLUMNS}"
        ))
        .bind(name)
        .bind(email)
        .bind(hash)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *self.writes.lock().await)
        .await;
        match result {
            Ok(row) => Ok(Some(user(row))),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = ? AND is_deleted = 0");
        Ok(sqlx::query(&sql)
            .bind(email)
            .fetch_optional(&mut *self.reader().await?)
            .await?
            .map(user))
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ? AND is_deleted = 0");
        Ok(sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&mut *self.reader().await?)
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
             VALUES (?, ?, ?, ?, ?) RETURNING {APP_COLUMNS}"
        ))
        .bind(token.as_str())
        .bind(name)
        .bind(creator_id)
        .bind(now)
        .bind(now)
        .fetch_one(&mut *self.writes.lock().await)
        .await?;
        Ok(application(row))
    }

    async fn application(&self, token: &AppToken) -> Result<Option<Application>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM applications WHERE token = ?");
        Ok(sqlx::query(&sql)
            .bind(token.as_str())
            .fetch_optional(&mut *self.reader().await?)
            .await?
            .map(application))
    }

    async fn applications_of(
        &self,
        creator_id: i64,
        page: PageRequest,
    ) -> Result<Vec<Application>> {
        let sql = format!(
            "SELECT {APP_COLUMNS} FROM applications WHERE creator_id = ? ORDER BY id LIMIT ? OFFSET ?"
        );
        let rows = sqlx::query(&sql)
            .bind(creator_id)
            .bind(page.limit)
            .bind(page.offset as i64)
            .fetch_all(&mut *self.reader().await?)
            .await?;
        Ok(rows.into_iter().map(application).collect())
    }

    async fn rename_application(&self, id: i64, name: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE applications SET name = ?, updated_at = ? WHERE id = ?")
            .bind(name)
            .bind(now)
            .bind(id)
            .execute(&mut *self.writes.lock().await)
            .await?;
        Ok(())
    }

    async fn chat(&self, application_id: i64, number: i64) -> Result<Option<Chat>> {
        let row = sqlx::query(
            "SELECT id, number, messages_count FROM chats WHERE application_id = ? AND number = ?",
        )
        .bind(application_id)
        .bind(number)
        .fetch_optional(&mut *self.reader().await?)
        .await?;
        Ok(row.map(chat))
    }

    async fn chats(&self, application_id: i64, page: PageRequest) -> Result<Vec<Chat>> {
        let rows = sqlx::query(
            "SELECT id, number, messages_count FROM chats WHERE application_id = ? \
             ORDER BY number LIMIT ? OFFSET ?",
        )
        .bind(application_id)
        .bind(page.limit)
        .bind(page.offset as i64)
        .fetch_all(&mut *self.reader().await?)
        .await?;
        Ok(rows.into_iter().map(chat).collect())
    }

    async fn message(&self, chat_id: i64, number: i64) -> Result<Option<Message>> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = ? AND m.number = ?");
        Ok(sqlx::query(&sql)
            .bind(chat_id)
            .bind(number)
            .fetch_optional(&mut *self.reader().await?)
            .await?
            .map(message))
    }

    async fn messages(&self, chat_id: i64, page: PageRequest) -> Result<Vec<Message>> {
        let rows = match page.before {
            Some(before) => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = ? AND m.number < ? \
                     ORDER BY m.number DESC LIMIT ?"
                );
                sqlx::query(&sql)
                    .bind(chat_id)
                    .bind(before)
                    .bind(page.limit)
                    .fetch_all(&mut *self.reader().await?)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = ? ORDER BY m.number DESC LIMIT ? OFFSET ?"
                );
                sqlx::query(&sql)
                    .bind(chat_id)
                    .bind(page.limit)
                    .bind(page.offset as i64)
                    .fetch_all(&mut *self.reader().await?)
                    .await?
            }
        };
        Ok(rows.into_iter().map(message).collect())
    }

    async fn messages_by_number(&self, chat_id: i64, numbers: &[i64]) -> Result<Vec<Message>> {
        if numbers.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb = QueryBuilder::new(format!("SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = "));
        qb.push_bind(chat_id).push(" AND m.number IN (");
        push_ids(&mut qb, numbers);
        qb.push(")");
        Ok(qb
            .build()
            .fetch_all(&mut *self.reader().await?)
            .await?
            .into_iter()
            .map(message)
            .collect())
    }

    // A batch that fits one statement runs without BEGIN and COMMIT: a lone statement is its
    // own transaction (committed, with its fsync, before its last step returns), and each of
    // BEGIN and COMMIT is one more round trip to the connection's worker thread, on the path
    // every create waits for (bench/RESULTS.md, 2026-12-01 evening).
    async fn insert_chats(&self, chats: &[NewChat]) -> Result<u64> {
        if chats.is_empty() {
            return Ok(0);
        }
        let mut conn = self.writes.lock().await;
        if chats.len() <= MAX_ROWS_PER_INSERT {
            return insert_chat_rows(&mut conn, chats).await;
        }
        let mut tx = conn.begin().await?;
        let mut inserted = 0;
        for part in chats.chunks(MAX_ROWS_PER_INSERT) {
            inserted += insert_chat_rows(&mut tx, part).await?;
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn insert_messages(&self, messages: &[NewMessage]) -> Result<Vec<StoredKey>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.writes.lock().await;
        if messages.len() <= MAX_ROWS_PER_INSERT {
            return insert_message_rows(&mut conn, messages).await;
        }
        let mut tx = conn.begin().await?;
        let mut inserted = Vec::with_capacity(messages.len());
        for part in messages.chunks(MAX_ROWS_PER_INSERT) {
            inserted.extend(insert_message_rows(&mut tx, part).await?);
        }
        tx.commit().await?;
        Ok(inserted)
    }

    async fn edit_messages(&self, edits: &[MessageEdit]) -> Result<Vec<EditOutcome>> {
        let mut conn = self.writes.lock().await;
        let mut tx = conn.begin().await?;
        let mut outcomes = Vec::with_capacity(edits.len());
        for e in edits {
            let row = sqlx::query(
                "SELECT sender_id, version, id FROM messages WHERE chat_id = ? AND number = ?",
            )
            .bind(e.chat_id)
            .bind(e.number)
            .fetch_optional(&mut *tx)
            .await?;
            let row = row.map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1), r.get::<i64, _>(2)));
            let outcome = match row {
                None => EditOutcome::Missing,
                Some((sender, _, _)) if sender != e.sender_id => EditOutcome::NotSender,
                Some((_, version, _)) if version >= e.version => EditOutcome::Superseded,
                Some((_, _, id)) => {
                    sqlx::query(
                        "UPDATE messages SET body = ?, version = ?, updated_at = ? \
                         WHERE chat_id = ? AND number = ?",
                    )
                    .bind(&e.body)
                    .bind(e.version)
                    .bind(e.updated_at)
                    .bind(e.chat_id)
                    .bind(e.number)
                    .execute(&mut *tx)
                    .await?;
                    EditOutcome::Applied { id }
                }
            };
            outcomes.push(outcome);
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    async fn highest_number(&self, scope: &Scope) -> Result<i64> {
        let mut qb = QueryBuilder::new("SELECT ");
        push_highest(&mut qb, scope);
        Ok(qb
            .build()
            .fetch_one(&mut *self.reader().await?)
            .await?
            .get(0))
    }

    async fn claim_numbers(&self, scope: &Scope, block: i64) -> Result<i64> {
        let key = scope.key();
        let mut conn = self.writes.lock().await;
        let mut tx = conn.begin().await?;
        let claimed: Option<i64> =
            sqlx::query_scalar("SELECT claimed FROM number_claims WHERE scope = ?")
                .bind(&key)
                .fetch_optional(&mut *tx)
                .await?;
        // Above what is persisted too: numbers may have been handed out by the in-process
        // sequencer since the last claim (REDIS_URL unset for a while).
        let highest = self.highest_number(scope).await?;
        let start = claimed.map_or(highest, |claimed| claimed.max(highest));
        let end = start + block;
        sqlx::query(
            "INSERT INTO number_claims (scope, claimed, updated_at) VALUES (?, ?, ?) \
             ON CONFLICT (scope) DO UPDATE SET claimed = excluded.claimed, updated_at = excluded.updated_at",
        )
        .bind(&key)
        .bind(end)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(end)
    }

    async fn sync_chats_count(&self, ids: Option<&[i64]>) -> Result<u64> {
        self.sync_counts(
            "SELECT a.id, a.chats_count, (SELECT COUNT(*) FROM chats c WHERE c.application_id = a.id) \
             FROM applications a",
            "a.id",
            "UPDATE applications SET chats_count = ? WHERE id = ?",
            ids,
        )
        .await
    }

    async fn sync_messages_count(&self, ids: Option<&[i64]>) -> Result<u64> {
        self.sync_counts(
            "SELECT c.id, c.messages_count, (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id) \
             FROM chats c",
            "c.id",
            "UPDATE chats SET messages_count = ? WHERE id = ?",
            ids,
        )
        .await
    }

    async fn messages_for_index(&self, after_id: i64, limit: u32) -> Result<Vec<IndexedMessage>> {
        let rows = sqlx::query(
            "SELECT id, chat_id, number, body, created_at FROM messages WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after_id)
        .bind(limit)
        .fetch_all(&mut *self.reader().await?)
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
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM messages")
            .fetch_one(&mut *self.reader().await?)
            .await?
            .get(0);
        Ok(n as u64)
    }

    async fn schedule_deletion(
        &self,
        user_id: i64,
        due: i64,
        token_hash: &str,
        now: i64,
    ) -> Result<Deletion> {
        let mut conn = self.writes.lock().await;
        let mut tx = conn.begin().await?;
        let existing = sqlx::query(
            "SELECT id, user_id, scheduled_for FROM user_deletions WHERE user_id = ? AND status = 'pending'",
        )
        .bind(user_id)
        .fetch_optional(&mut *tx)
        .await?
        .map(deletion);
        let result = match existing {
            // A second request keeps the first schedule but replaces the recovery token.
            Some(d) => {
                sqlx::query("UPDATE user_deletions SET recovery_token_hash = ?, updated_at = ? WHERE id = ?")
                    .bind(token_hash)
                    .bind(now)
                    .bind(d.id)
                    .execute(&mut *tx)
                    .await?;
                d
            }
            None => deletion(
                sqlx::query(
                    "INSERT INTO user_deletions (user_id, status, scheduled_for, recovery_token_hash, \
                     created_at, updated_at) VALUES (?, 'pending', ?, ?, ?, ?) \
                     RETURNING id, user_id, scheduled_for",
                )
                .bind(user_id)
                .bind(due)
                .bind(token_hash)
                .bind(now)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?,
            ),
        };
        tx.commit().await?;
        Ok(result)
    }

    async fn pending_deletion_of(&self, user_id: i64) -> Result<Option<Deletion>> {
        Ok(sqlx::query(
            "SELECT id, user_id, scheduled_for FROM user_deletions WHERE user_id = ? AND status = 'pending'",
        )
        .bind(user_id)
        .fetch_optional(&mut *self.reader().await?)
        .await?
        .map(deletion))
    }

    async fn cancel_deletion(&self, token_hash: &str, now: i64) -> Result<Option<User>> {
        let mut conn = self.writes.lock().await;
        let mut tx = conn.begin().await?;
        let row = sqlx::query(
            "UPDATE user_deletions SET status = 'cancelled', updated_at = ? \
             WHERE recovery_token_hash = ? AND status = 'pending' RETURNING user_id",
        )
        .bind(now)
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ? AND is_deleted = 0");
        let found = sqlx::query(&sql)
            .bind(row.get::<i64, _>(0))
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(found.map(user))
    }

    async fn due_deletions(&self, now: i64, limit: u32) -> Result<Vec<Deletion>> {
        let rows = sqlx::query(
            "SELECT id, user_id, scheduled_for FROM user_deletions \
             WHERE status = 'pending' AND scheduled_for <= ? ORDER BY scheduled_for, id LIMIT ?",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&mut *self.writes.lock().await)
        .await?;
        Ok(rows.into_iter().map(deletion).collect())
    }

    async fn execute_deletion(&self, d: &Deletion, now: i64) -> Result<bool> {
        let mut conn = self.writes.lock().await;
        let mut tx = conn.begin().await?;
        let done = sqlx::query(
            "UPDATE user_deletions SET status = 'done', updated_at = ? WHERE id = ? AND status = 'pending'",
        )
        .bind(now)
        .bind(d.id)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            // Soft delete that scrubs personal data and frees the address: `deleted-<id>` is
            // no e-mail address, so no sign-up can take it first. The row stays so messages
            // keep a sender.
            sqlx::query(
                "UPDATE users SET is_deleted = 1, deleted_at = ?, updated_at = ?, name = 'Deleted user', \
                 email = 'deleted-' || id, password_hash = '' WHERE id = ?",
            )
                .bind(now)
                .bind(now)
                .bind(d.user_id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn log_action(&self, user_id: i64, action: &str, detail: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO action_logs (user_id, action, detail, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(user_id)
        .bind(action)
        .bind(detail)
        .bind(now)
        .execute(&mut *self.writes.lock().await)
        .await?;
        Ok(())
    }

    async fn actions_of(&self, user_id: i64) -> Result<Vec<(String, String)>> {
        let rows =
            sqlx::query("SELECT action, detail FROM action_logs WHERE user_id = ? ORDER BY id")
                .bind(user_id)
                .fetch_all(&mut *self.reader().await?)
                .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::suite;

    #[tokio::test]
    async fn insert_if_absent_returns_only_the_new_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = suite::sqlite_store(dir.path()).await;
        suite::insert_if_absent_returns_only_the_new_rows(&store).await;
    }
}
