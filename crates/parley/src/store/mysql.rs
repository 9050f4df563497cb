//! MySQL 8 / MariaDB 10.11 adapter (InnoDB), for many processes sharing one database. Behaves
//! as `sqlite.rs` does; what differs is concurrency: several writers may commit overlapping
//! batches at once (redeliveries), so inserts, edits and claims take InnoDB's row locks in key
//! order, and a transaction that InnoDB rolls back anyway (a deadlock, a duplicate committed
//! by a concurrent writer) is run again.
//!
//! Portable SQL only: no `INSERT … RETURNING` (MariaDB-only), no `VALUES ROW(…)` (MySQL-only),
//! no `||` for concatenation (an OR unless PIPES_AS_CONCAT).

use super::*;
use crate::domain::{now_ms, PageRequest};
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions, MySqlRow};
use sqlx::{MySql, MySqlPool, QueryBuilder, Row};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

/// Connections per process: writers, readers and the scheduler share them.
const POOL_SIZE: u32 = 16;
/// MySQL allows 65,535 placeholders per statement (6 per inserted row, 2 per looked-up key),
/// and a statement must fit in `max_allowed_packet` (16 MiB by default on MariaDB 10.11,
/// 64 MiB on MySQL 8): bodies of up to 64 KiB make bytes the tighter bound.
const MAX_ROWS_PER_INSERT: usize = 1_000;
const MAX_BYTES_PER_INSERT: usize = 4 << 20;
const MAX_KEYS_PER_SELECT: usize = 5_000;
const MAX_ROWS_PER_UPDATE: usize = 1_000;
/// How often a transaction is run again (see `RESTART`): a batch overlapping several
/// concurrent writers' may meet each of them in turn.
const RESTARTS: u32 = 16;

/// Server error numbers that mean "the same request may succeed shortly": too many connections
/// (1040, 1203), server shutting down (1053), lock wait timeout (1205), deadlock (1213), record
/// changed since the snapshot (1020, MariaDB's innodb_snapshot_isolation), connection killed
/// (1927, MariaDB), server gone away / lost connection (2006, 2013). A lost socket surfaces as
/// `sqlx::Error::Io`, already covered by `is_unavailable`.
pub(super) const TRY_AGAIN: &[u16] = &[1020, 1040, 1053, 1203, 1205, 1213, 1927, 2006, 2013];

pub struct MySqlStore {
    pool: MySqlPool,
    /// The server takes `INSERT … RETURNING` (MariaDB 10.5 and later; MySQL 8 does not).
    returning: bool,
}

impl MySqlStore {
    /// Connects to `url`, e.g. `mysql://parley:secret@db:3306/parley`.
    pub async fn open(url: &str) -> Result<Self> {
        let options = MySqlConnectOptions::from_str(url)?;
        let pool = MySqlPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await?;
        let version: String = sqlx::query_scalar("SELECT VERSION()")
            .fetch_one(&pool)
            .await?;
        Ok(Self {
            returning: takes_returning(&version),
            pool,
        })
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }
}

/// Whether a server of this `VERSION()` takes `INSERT … RETURNING`: MariaDB from 10.5
/// (`10.11.19-MariaDB-0+deb12u1`, `5.5.5-10.11.6-MariaDB` behind some proxies).
fn takes_returning(version: &str) -> bool {
    let Some((head, _)) = version.split_once("-MariaDB") else {
        return false;
    };
    let release = head.rsplit('-').next().unwrap_or(head);
    let mut parts = release.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (10, 5)
}

/// Errors after which a transaction is run again: InnoDB rolls a transaction back after a
/// deadlock (1213) and, on MariaDB with `innodb_snapshot_isolation` (the default from 11.6),
/// after a write that met a row committed since the transaction's snapshot (1020); the
/// manual's answer to both is to run it again.
const RESTART: &[u16] = &[1020, 1213];
/// For inserts, also a duplicate key (1062): a concurrent writer committed one of the batch's
/// rows after this transaction's snapshot; the next snapshot sees it.
const RESTART_INSERT: &[u16] = &[1020, 1062, 1213];

fn error_number(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// Whether `e` is one of the `restart` errors.
fn restarts(e: &sqlx::Error, restart: &[u16]) -> bool {
    error_number(e).is_some_and(|n| restart.contains(&n))
}

/// Runs `transaction` until it commits or fails with an error not in `restart`. Every
/// transaction run through here is idempotent.
async fn restarting<T, F, Fut>(restart: &[u16], mut transaction: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut attempt = 0;
    loop {
        match transaction().await {
            Err(e) if attempt < RESTARTS && restarts(&e, restart) => {
                attempt += 1;
                metrics::counter!("parley_store_transaction_restarts_total").increment(1);
                // Jitter, so the transactions that collided do not collide again.
                let ms = rand::random::<u64>() % (5 << attempt.min(5));
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            result => return Ok(result?),
        }
    }
}

/// A `utf8mb4_bin` column as text. The server flags such columns BINARY, and sqlx then refuses
/// to decode them as strings (only the check is skipped: the bytes are still checked UTF-8).
fn bin_text(row: &MySqlRow, column: usize) -> String {
    row.try_get_unchecked(column)
        .unwrap_or_else(|e| panic!("column {column} is text: {e}"))
}

fn user(row: MySqlRow) -> User {
    User {
        id: row.get(0),
        name: row.get(1),
        email: bin_text(&row, 2),
        password_hash: bin_text(&row, 3),
        created_at: row.get(4),
    }
}

fn application(row: MySqlRow) -> Application {
    Application {
        id: row.get(0),
        token: AppToken::parse(&bin_text(&row, 1)).expect("stored tokens are valid"),
        name: row.get(2),
        chats_count: row.get(3),
        creator_id: row.get(4),
    }
}

fn chat(row: MySqlRow) -> Chat {
    Chat {
        id: row.get(0),
        number: row.get(1),
        messages_count: row.get(2),
    }
}

fn message(row: MySqlRow) -> Message {
    Message {
        number: row.get(0),
        sender_id: row.get(1),
        sender_name: row.get(2),
        body: row.get(3),
        created_at: row.get(4),
    }
}

fn deletion(row: MySqlRow) -> Deletion {
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

fn push_ids(qb: &mut QueryBuilder<'_, MySql>, ids: &[i64]) {
    let mut list = qb.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
}

/// `(scope, number) IN ((?, ?), …)`: a range scan of the unique key on both servers.
fn push_keys(qb: &mut QueryBuilder<'_, MySql>, scope: &str, keys: &[(i64, i64)]) {
    qb.push(format!("({scope}, number) IN ("));
    let mut list = qb.separated(", ");
    for (chat_id, number) in keys {
        list.push("(")
            .push_bind_unseparated(*chat_id)
            .push_unseparated(", ")
            .push_bind_unseparated(*number)
            .push_unseparated(")");
    }
    qb.push(")");
}

/// Splits rows into statements within the placeholder and packet limits (at least one row
/// each: a single body is at most 64 KiB).
fn insert_chunks(rows: &[NewMessage]) -> Vec<&[NewMessage]> {
    let mut chunks = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        if i > start
            && (i - start == MAX_ROWS_PER_INSERT || bytes + row.body.len() > MAX_BYTES_PER_INSERT)
        {
            chunks.push(&rows[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += row.body.len();
    }
    if start < rows.len() {
        chunks.push(&rows[start..]);
    }
    chunks
}

impl MySqlStore {
    /// `(id, scope, number)` of the given keys of `table` (`messages` by `chat_id`, `chats` by
    /// `application_id`) that this transaction sees.
    async fn stored_keys(
        tx: &mut sqlx::MySqlConnection,
        table: &str,
        scope: &str,
        keys: &[(i64, i64)],
    ) -> Result<Vec<(i64, i64, i64)>, sqlx::Error> {
        let mut found = Vec::new();
        for part in keys.chunks(MAX_KEYS_PER_SELECT) {
            let mut qb =
                QueryBuilder::new(format!("SELECT id, {scope}, number FROM {table} WHERE "));
            push_keys(&mut qb, scope, part);
            let rows = qb.build().fetch_all(&mut *tx).await?;
            found.extend(rows.into_iter().map(|r| (r.get(0), r.get(1), r.get(2))));
        }
        Ok(found)
    }

    /// A transaction whose reads all see one snapshot, taken now. REPEATABLE READ explicitly:
    /// under READ COMMITTED (a common server setting) every read takes a new snapshot.
    async fn begin_snapshot(&self) -> Result<sqlx::Transaction<'static, MySql>, sqlx::Error> {
        self.pool
            .begin_with(
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; \
                 START TRANSACTION WITH CONSISTENT SNAPSHOT",
            )
            .await
    }

    /// One attempt of `insert_chats`, over rows sorted and unique by key; see
    /// `insert_messages_once`.
    async fn insert_chats_once(
        &self,
        rows: &[NewChat],
        keys: &[(i64, i64)],
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.begin_snapshot().await?;
        let before: HashSet<(i64, i64)> =
            Self::stored_keys(&mut tx, "chats", "application_id", keys)
                .await?
                .into_iter()
                .map(|(_, application_id, number)| (application_id, number))
                .collect();
        let fresh: Vec<&NewChat> = rows
            .iter()
            .filter(|c| !before.contains(&(c.application_id, c.number)))
            .collect();
        for part in fresh.chunks(MAX_ROWS_PER_INSERT) {
            insert_chats_sql::<MySql>(part.iter().copied())
                .build()
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(fresh.len() as u64)
    }

    /// One attempt of `insert_messages`, over rows sorted and unique by key.
    ///
    /// MySQL has no `RETURNING`, so the transaction works from one snapshot: it reads which
    /// of the batch's keys exist, inserts the others with a plain INSERT, and reads their ids
    /// back (a snapshot read sees the transaction's own rows). A concurrent writer that
    /// commits one of those keys first makes the INSERT fail with a duplicate key, and the
    /// transaction runs again on a new snapshot that sees it.
    ///
    /// Not `INSERT IGNORE` nor `ON DUPLICATE KEY UPDATE`: on MariaDB 10.11, concurrent such
    /// inserts that meet duplicates hand out an auto-increment id twice, and the second row
    /// is then silently taken for a duplicate of the first on the primary key and dropped
    /// (measured here: 80 of 960 rows lost with 12 overlapping writers). IGNORE would also
    /// turn a foreign-key failure into a warning.
    async fn insert_messages_once(
        &self,
        rows: &[NewMessage],
        keys: &[(i64, i64)],
    ) -> Result<Vec<StoredKey>, sqlx::Error> {
        let mut tx = self.begin_snapshot().await?;
        let before: HashSet<(i64, i64)> = Self::stored_keys(&mut tx, "messages", "chat_id", keys)
            .await?
            .into_iter()
            .map(|(_, chat_id, number)| (chat_id, number))
            .collect();
        let fresh: Vec<NewMessage> = rows
            .iter()
            .filter(|m| !before.contains(&(m.chat_id, m.number)))
            .cloned()
            .collect();
        if fresh.is_empty() {
            tx.rollback().await?;
            return Ok(Vec::new());
        }
        for part in insert_chunks(&fresh) {
            insert_messages_sql::<MySql>(part)
                .build()
                .execute(&mut *tx)
                .await?;
        }
        let fresh_keys: Vec<(i64, i64)> = fresh.iter().map(|m| (m.chat_id, m.number)).collect();
        let inserted = Self::stored_keys(&mut tx, "messages", "chat_id", &fresh_keys)
            .await?
            .into_iter()
            .map(|(id, chat_id, number)| StoredKey {
                id,
                chat_id,
                number,
            })
            .collect();
        tx.commit().await?;
        Ok(inserted)
    }

    /// One attempt of `edit_messages`; `order` lists the edits sorted by key (stable, so
    /// edits of one message keep their given order).
    async fn edit_messages_once(
        &self,
        edits: &[MessageEdit],
        order: &[usize],
    ) -> Result<Vec<EditOutcome>, sqlx::Error> {
        let mut keys: Vec<(i64, i64)> = order
            .iter()
            .map(|&i| (edits[i].chat_id, edits[i].number))
            .collect();
        keys.dedup();
        let mut tx = self.pool.begin().await?;
        // Lock every row of the batch first, in key order (as writers insert), so concurrent
        // edit batches and inserts take locks in one order.
        let mut stored: HashMap<(i64, i64), (i64, i64, i64)> = HashMap::new();
        for part in keys.chunks(MAX_KEYS_PER_SELECT) {
            let mut qb = QueryBuilder::new(
                "SELECT chat_id, number, sender_id, version, id FROM messages WHERE ",
            );
            push_keys(&mut qb, "chat_id", part);
            qb.push(" ORDER BY chat_id, number FOR UPDATE");
            for r in qb.build().fetch_all(&mut *tx).await? {
                stored.insert((r.get(0), r.get(1)), (r.get(2), r.get(3), r.get(4)));
            }
        }
        // Decide as SQLite does, one edit after the other; write each message once, with the
        // last edit applied to it.
        let mut outcomes = vec![EditOutcome::Missing; edits.len()];
        let mut writes: Vec<(i64, usize)> = Vec::new();
        for &i in order {
            let e = &edits[i];
            outcomes[i] = match stored.get_mut(&(e.chat_id, e.number)) {
                None => EditOutcome::Missing,
                Some((sender, _, _)) if *sender != e.sender_id => EditOutcome::NotSender,
                Some((_, version, _)) if *version >= e.version => EditOutcome::Superseded,
                Some((_, version, id)) => {
                    *version = e.version;
                    match writes.last_mut() {
                        Some((last, edit)) if *last == *id => *edit = i,
                        _ => writes.push((*id, i)),
                    }
                    EditOutcome::Applied { id: *id }
                }
            };
        }
        for (id, i) in writes {
            let e = &edits[i];
            sqlx::query("UPDATE messages SET body = ?, version = ?, updated_at = ? WHERE id = ?")
                .bind(&e.body)
                .bind(e.version)
                .bind(e.updated_at)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// One attempt of `claim_numbers`: `None` when the scope has no row yet.
    /// `floor`: the highest persisted number; a mark below it (numbers were handed out by
    /// another sequencer meanwhile) is lifted to it.
    async fn claim_once(
        &self,
        key: &str,
        block: i64,
        floor: i64,
    ) -> Result<Option<i64>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The row lock serialises claims of a scope across processes until commit.
        let claimed: Option<i64> =
            sqlx::query_scalar("SELECT claimed FROM number_claims WHERE scope = ? FOR UPDATE")
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(claimed) = claimed else {
            // Now, not when the pool gets to it: the read holds a gap lock that the caller's
            // next statement (creating the row) would wait for.
            tx.rollback().await?;
            return Ok(None);
        };
        let end = claimed.max(floor) + block;
        sqlx::query("UPDATE number_claims SET claimed = ?, updated_at = ? WHERE scope = ?")
            .bind(end)
            .bind(now_ms())
            .bind(key)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(Some(end))
    }

    /// Counts on a consistent read (no locks: a large chat's count must not hold up writers),
    /// then writes only the counts that changed, a statement per chunk so row locks on
    /// `chats` (which every message insert's foreign-key check share-locks) are held briefly.
    /// A count taken just before a commit is stale, but that commit marked its scope dirty
    /// again, so the next pass corrects it.
    async fn sync_counts(
        &self,
        select: &str,
        id: &str,
        table: &str,
        column: &str,
        ids: Option<&[i64]>,
    ) -> Result<u64> {
        let mut counted = Vec::new();
        match ids {
            None => {
                counted = QueryBuilder::new(select)
                    .build()
                    .fetch_all(&self.pool)
                    .await?
            }
            Some(ids) => {
                for part in ids.chunks(MAX_KEYS_PER_SELECT) {
                    let mut qb = QueryBuilder::new(select);
                    qb.push(format!(" WHERE {id} IN ("));
                    push_ids(&mut qb, part);
                    qb.push(")");
                    counted.extend(qb.build().fetch_all(&self.pool).await?);
                }
            }
        }
        let mut changed: Vec<(i64, i64)> = counted
            .into_iter()
            .map(|r| (r.get::<i64, _>(0), r.get::<i64, _>(1), r.get::<i64, _>(2)))
            .filter(|(_, stored, counted)| stored != counted)
            .map(|(id, _, counted)| (id, counted))
            .collect();
        // Id order: concurrent passes lock rows in one order.
        changed.sort_unstable();
        for part in changed.chunks(MAX_ROWS_PER_UPDATE) {
            let mut qb = QueryBuilder::new(format!("UPDATE {table} SET {column} = CASE id"));
            for (id, count) in part {
                qb.push(" WHEN ")
                    .push_bind(*id)
                    .push(" THEN ")
                    .push_bind(*count);
            }
            qb.push(format!(" ELSE {column} END WHERE id IN ("));
            let ids: Vec<i64> = part.iter().map(|(id, _)| *id).collect();
            push_ids(&mut qb, &ids);
            qb.push(")");
            qb.build().execute(&self.pool).await?;
        }
        Ok(changed.len() as u64)
    }
}

/// Longest wait for another process's migrations (they take about a second on a new
/// database).
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(120);
/// The migration lock's name: per database, as lock names are server-wide (SHA1 keeps it
/// within the 64 characters MySQL allows).
const MIGRATION_LOCK: &str = "CONCAT('parley-migrate:', SHA1(DATABASE()))";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/mysql");

#[async_trait]
impl Store for MySqlStore {
    async fn migrate(&self) -> Result<()> {
        // Processes starting together (an api, a writer and a scheduler on a new database)
        // must apply each migration once. sqlx's own lock is `GET_LOCK(name, -1)` with its
        // answer ignored, and MariaDB (10.11 here) answers NULL at once to a negative timeout
        // instead of waiting: no lock at all, and two of three processes started together
        // failed on a duplicate `_sqlx_migrations` row. So the migrations run on one
        // connection holding a lock of our own, taken with a finite timeout and checked.
        let mut conn = self.pool.acquire().await?;
        let taken: Option<i64> = sqlx::query_scalar(&format!(
            "SELECT GET_LOCK({MIGRATION_LOCK}, {})",
            MIGRATION_LOCK_WAIT.as_secs()
        ))
        .fetch_one(&mut *conn)
        .await?;
        if taken != Some(1) {
            anyhow::bail!(
                "another process held the migration lock for over {MIGRATION_LOCK_WAIT:?}"
            );
        }
        let migrated = MIGRATOR.run_direct(&mut *conn).await;
        // Released explicitly: the pooled connection outlives this call.
        let released = sqlx::query(&format!("SELECT RELEASE_LOCK({MIGRATION_LOCK})"))
            .execute(&mut *conn)
            .await;
        // A failed migration's error matters more than a failed release.
        migrated?;
        released?;
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
        let result = sqlx::query(
            "INSERT INTO users (name, email, password_hash, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(name)
        .bind(email)
        .bind(hash)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await;
        match result {
            Ok(done) => Ok(Some(User {
                id: done.last_insert_id() as i64,
                name: name.to_owned(),
                email: email.to_owned(),
                password_hash: hash.to_owned(),
                created_at: now,
            })),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = ? AND is_deleted = 0");
        Ok(sqlx::query(&sql)
            .bind(email)
            .fetch_optional(&self.pool)
            .await?
            .map(user))
    }

    async fn user_by_id(&self, id: i64) -> Result<Option<User>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ? AND is_deleted = 0");
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
        let done = sqlx::query(
            "INSERT INTO applications (token, name, creator_id, created_at, updated_at) \
             VALUES (?, ?, ?, ?, ?)",
        )
        .bind(token.as_str())
        .bind(name)
        .bind(creator_id)
        .bind(now)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(Application {
            id: done.last_insert_id() as i64,
            token: token.clone(),
            name: name.to_owned(),
            chats_count: 0,
            creator_id,
        })
    }

    async fn application(&self, token: &AppToken) -> Result<Option<Application>> {
        let sql = format!("SELECT {APP_COLUMNS} FROM applications WHERE token = ?");
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
            "SELECT {APP_COLUMNS} FROM applications WHERE creator_id = ? ORDER BY id LIMIT ? OFFSET ?"
        );
        let rows = sqlx::query(&sql)
            .bind(creator_id)
            .bind(page.limit)
            .bind(page.offset)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(application).collect())
    }

    async fn rename_application(&self, id: i64, name: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE applications SET name = ?, updated_at = ? WHERE id = ?")
            .bind(name)
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn chat(&self, application_id: i64, number: i64) -> Result<Option<Chat>> {
        let row = sqlx::query(
            "SELECT id, number, messages_count FROM chats WHERE application_id = ? AND number = ?",
        )
        .bind(application_id)
        .bind(number)
        .fetch_optional(&self.pool)
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
        .bind(page.offset)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(chat).collect())
    }

    async fn message(&self, chat_id: i64, number: i64) -> Result<Option<Message>> {
        let sql = format!("SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = ? AND m.number = ?");
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
                    "SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = ? AND m.number < ? \
                     ORDER BY m.number DESC LIMIT ?"
                );
                sqlx::query(&sql)
                    .bind(chat_id)
                    .bind(before)
                    .bind(page.limit)
                    .fetch_all(&self.pool)
                    .await?
            }
            None => {
                let sql = format!(
                    "SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = ? ORDER BY m.number DESC LIMIT ? OFFSET ?"
                );
                sqlx::query(&sql)
                    .bind(chat_id)
                    .bind(page.limit)
                    .bind(page.offset)
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
        let mut found = Vec::with_capacity(numbers.len());
        for part in numbers.chunks(MAX_KEYS_PER_SELECT) {
            let mut qb = QueryBuilder::new(format!("SELECT {MESSAGE_COLUMNS} WHERE m.chat_id = "));
            qb.push_bind(chat_id).push(" AND m.number IN (");
            push_ids(&mut qb, part);
            qb.push(")");
            found.extend(
                qb.build()
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .map(message),
            );
        }
        Ok(found)
    }

    async fn insert_chats(&self, chats: &[NewChat]) -> Result<u64> {
        if chats.is_empty() {
            return Ok(0);
        }
        // Key order, unique keys: see insert_messages.
        let mut rows = chats.to_vec();
        rows.sort_by_key(|c| (c.application_id, c.number));
        rows.dedup_by_key(|c| (c.application_id, c.number));
        // The common case, no row stored yet, in one autocommit statement (committed when it
        // returns); a redelivered row fails it with a duplicate key, and then the batch
        // takes the general path, which sorts out which rows are new.
        if rows.len() <= MAX_ROWS_PER_INSERT {
            match insert_chats_sql::<MySql>(&rows)
                .build()
                .execute(&self.pool)
                .await
            {
                Ok(done) => return Ok(done.rows_affected()),
                Err(e) if restarts(&e, RESTART_INSERT) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let keys: Vec<(i64, i64)> = rows.iter().map(|c| (c.application_id, c.number)).collect();
        restarting(RESTART_INSERT, || self.insert_chats_once(&rows, &keys)).await
    }

    async fn insert_messages(&self, messages: &[NewMessage]) -> Result<Vec<StoredKey>> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        // Key order: concurrent batches lock index records in one order, so overlapping
        // batches wait for each other instead of deadlocking. The first of equal keys wins,
        // as with SQLite's ON CONFLICT DO NOTHING.
        let mut rows = messages.to_vec();
        rows.sort_by_key(|m| (m.chat_id, m.number));
        rows.dedup_by_key(|m| (m.chat_id, m.number));
        // On MariaDB the common case, no row stored yet, is one autocommit INSERT … RETURNING
        // (committed when it returns): one round trip instead of the general path's five
        // (snapshot, existing keys, insert, new ids, commit). A redelivered row fails it with
        // a duplicate key, and then the batch takes the general path.
        if self.returning {
            if let [chunk] = insert_chunks(&rows)[..] {
                let mut qb = insert_messages_sql::<MySql>(chunk);
                qb.push(" RETURNING id, chat_id, number");
                match qb.build().fetch_all(&self.pool).await {
                    Ok(stored) => return Ok(stored.iter().map(StoredKey::from_row).collect()),
                    Err(e) if restarts(&e, RESTART_INSERT) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let keys: Vec<(i64, i64)> = rows.iter().map(|m| (m.chat_id, m.number)).collect();
        restarting(RESTART_INSERT, || self.insert_messages_once(&rows, &keys)).await
    }

    async fn edit_messages(&self, edits: &[MessageEdit]) -> Result<Vec<EditOutcome>> {
        if edits.is_empty() {
            return Ok(Vec::new());
        }
        let mut order: Vec<usize> = (0..edits.len()).collect();
        order.sort_by_key(|&i| (edits[i].chat_id, edits[i].number));
        restarting(RESTART, || self.edit_messages_once(edits, &order)).await
    }

    async fn highest_number(&self, scope: &Scope) -> Result<i64> {
        let mut qb = QueryBuilder::new("SELECT ");
        push_highest(&mut qb, scope);
        Ok(qb.build().fetch_one(&self.pool).await?.get(0))
    }

    async fn claim_numbers(&self, scope: &Scope, block: i64) -> Result<i64> {
        let key = scope.key();
        let floor = self.highest_number(scope).await?;
        if let Some(end) = restarting(RESTART, || self.claim_once(&key, block, floor)).await? {
            return Ok(end);
        }
        // First claim of the scope: create its row at the highest persisted number, in a
        // statement of its own (a locking read of a missing row holds a gap lock, and two
        // such transactions inserting into the gap deadlock). Of concurrent first claims one
        // row wins; every claim then takes its block under the row lock.
        sqlx::query(
            "INSERT INTO number_claims (scope, claimed, updated_at) VALUES (?, ?, ?) \
             ON DUPLICATE KEY UPDATE claimed = claimed",
        )
        .bind(&key)
        .bind(floor)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        restarting(RESTART, || self.claim_once(&key, block, floor))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the number claim of {key} vanished"))
    }

    async fn sync_chats_count(&self, ids: Option<&[i64]>) -> Result<u64> {
        self.sync_counts(
            "SELECT a.id, a.chats_count, (SELECT COUNT(*) FROM chats c WHERE c.application_id = a.id) \
             FROM applications a",
            "a.id",
            "applications",
            "chats_count",
            ids,
        )
        .await
    }

    async fn sync_messages_count(&self, ids: Option<&[i64]>) -> Result<u64> {
        self.sync_counts(
            "SELECT c.id, c.messages_count, (SELECT COUNT(*) FROM messages m WHERE m.chat_id = c.id) \
             FROM chats c",
            "c.id",
            "chats",
            "messages_count",
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
        let n: i64 = sqlx::query("SELECT COUNT(*) FROM messages")
            .fetch_one(&self.pool)
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
        restarting(RESTART, || async move {
            let mut tx = self.pool.begin().await?;
            // The user's row lock serialises requests of one user (SQLite's single writer
            // does it there), so two never both insert a pending deletion.
            sqlx::query("SELECT id FROM users WHERE id = ? FOR UPDATE")
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            let existing = sqlx::query(
                "SELECT id, user_id, scheduled_for FROM user_deletions \
                 WHERE user_id = ? AND status = 'pending'",
            )
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await?
            .map(deletion);
            let result = match existing {
                // A second request keeps the first schedule but replaces the recovery token.
                Some(d) => {
                    sqlx::query(
                        "UPDATE user_deletions SET recovery_token_hash = ?, updated_at = ? WHERE id = ?",
                    )
                    .bind(token_hash)
                    .bind(now)
                    .bind(d.id)
                    .execute(&mut *tx)
                    .await?;
                    d
                }
                None => {
                    let done = sqlx::query(
                        "INSERT INTO user_deletions (user_id, status, scheduled_for, \
                         recovery_token_hash, created_at, updated_at) \
                         VALUES (?, 'pending', ?, ?, ?, ?)",
                    )
                    .bind(user_id)
                    .bind(due)
                    .bind(token_hash)
                    .bind(now)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    Deletion {
                        id: done.last_insert_id() as i64,
                        user_id,
                        scheduled_for: due,
                    }
                }
            };
            tx.commit().await?;
            Ok(result)
        })
        .await
    }

    async fn pending_deletion_of(&self, user_id: i64) -> Result<Option<Deletion>> {
        Ok(sqlx::query(
            "SELECT id, user_id, scheduled_for FROM user_deletions WHERE user_id = ? AND status = 'pending'",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?
        .map(deletion))
    }

    async fn cancel_deletion(&self, token_hash: &str, now: i64) -> Result<Option<User>> {
        restarting(RESTART, || async move {
            let mut tx = self.pool.begin().await?;
            let pending: Option<(i64, i64)> = sqlx::query_as(
                "SELECT id, user_id FROM user_deletions \
                 WHERE recovery_token_hash = ? AND status = 'pending' FOR UPDATE",
            )
            .bind(token_hash)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((id, user_id)) = pending else {
                tx.rollback().await?;
                return Ok(None);
            };
            sqlx::query(
                "UPDATE user_deletions SET status = 'cancelled', updated_at = ? WHERE id = ?",
            )
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = ? AND is_deleted = 0");
            let found = sqlx::query(&sql)
                .bind(user_id)
                .fetch_optional(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(found.map(user))
        })
        .await
    }

    async fn due_deletions(&self, now: i64, limit: u32) -> Result<Vec<Deletion>> {
        let rows = sqlx::query(
            "SELECT id, user_id, scheduled_for FROM user_deletions \
             WHERE status = 'pending' AND scheduled_for <= ? ORDER BY scheduled_for, id LIMIT ?",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(deletion).collect())
    }

    async fn execute_deletion(&self, d: &Deletion, now: i64) -> Result<bool> {
        restarting(RESTART, || async move {
            let mut tx = self.pool.begin().await?;
            let done = sqlx::query(
                "UPDATE user_deletions SET status = 'done', updated_at = ? \
                 WHERE id = ? AND status = 'pending'",
            )
            .bind(now)
            .bind(d.id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 1 {
                // Soft delete that scrubs personal data and frees the address: `deleted-<id>`
                // is no e-mail address, so no sign-up can take it first. The row stays so
                // messages keep a sender.
                sqlx::query(
                    "UPDATE users SET is_deleted = 1, deleted_at = ?, updated_at = ?, \
                     name = 'Deleted user', email = CONCAT('deleted-', id), password_hash = '' \
                     WHERE id = ?",
                )
                .bind(now)
                .bind(now)
                .bind(d.user_id)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    async fn log_action(&self, user_id: i64, action: &str, detail: &str, now: i64) -> Result<()> {
        sqlx::query(
            "INSERT INTO action_logs (user_id, action, detail, created_at) VALUES (?, ?, ?, ?)",
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
            sqlx::query("SELECT action, detail FROM action_logs WHERE user_id = ? ORDER BY id")
                .bind(user_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::suite::{
        self, chats, drop_mysql_database as drop_database, mysql_store as store, new_message,
    };
    use super::*;
    use crate::testing::Engine;
    use std::collections::BTreeSet;
    use std::sync::Arc;

    fn edit(chat_id: i64, number: i64, sender_id: i64, version: i64) -> MessageEdit {
        MessageEdit {
            chat_id,
            number,
            sender_id,
            body: format!("version {version}"),
            version,
            updated_at: version,
        }
    }

    #[test]
    fn insert_returning_is_used_on_mariadb_from_10_5_only() {
        for (version, takes) in [
            ("10.11.19-MariaDB-0+deb12u1", true),
            ("5.5.5-10.11.6-MariaDB", true),
            ("10.5.0-MariaDB", true),
            ("10.4.34-MariaDB-log", false),
            ("8.0.36", false),
            ("8.4.2-commercial", false),
        ] {
            assert_eq!(takes_returning(version), takes, "{version}");
        }
    }

    #[tokio::test]
    async fn migrations_apply_twice_and_from_a_second_process() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        store.migrate().await.unwrap();
        let name: String = sqlx::query_scalar("SELECT DATABASE()")
            .fetch_one(store.pool())
            .await
            .unwrap();
        let other = MySqlStore::open(&format!("{}/{name}", url.rsplit_once('/').unwrap().0))
            .await
            .unwrap();
        other.migrate().await.unwrap();
        other.ping().await.unwrap();
        let mut tables: Vec<String> = sqlx::query_scalar(
            "SELECT CAST(table_name AS CHAR) FROM information_schema.tables \
             WHERE table_schema = DATABASE()",
        )
        .fetch_all(store.pool())
        .await
        .unwrap();
        tables.sort();
        assert_eq!(
            tables,
            [
                "_sqlx_migrations",
                "action_logs",
                "applications",
                "chats",
                "messages",
                "number_claims",
                "user_deletions",
                "users"
            ]
        );
        drop_database(&store).await;
    }

    #[tokio::test]
    async fn processes_migrating_a_new_database_together_all_succeed() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let url = crate::testing::fresh_database(&url).await.unwrap();
        let mut stores = Vec::new();
        for _ in 0..4 {
            stores.push(MySqlStore::open(&url).await.unwrap());
        }
        let results = futures::future::join_all(stores.iter().map(|store| store.migrate())).await;
        for result in results {
            result.unwrap();
        }
        let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations")
            .fetch_one(stores[0].pool())
            .await
            .unwrap();
        let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/mysql"))
            .unwrap()
            .count();
        assert_eq!(applied, files as i64, "each migration applied once");
        drop_database(&stores[0]).await;
    }

    #[tokio::test]
    async fn users_and_applications() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        let ada = store
            .insert_user("Ada", "ada@example.com", "h1", 5)
            .await
            .unwrap()
            .unwrap();
        let by_email = store.user_by_email("ada@example.com").await.unwrap();
        assert_eq!(by_email.map(|u| u.id), Some(ada.id));
        let by_id = store.user_by_id(ada.id).await.unwrap().unwrap();
        assert_eq!(
            (
                by_id.name,
                by_id.email,
                by_id.password_hash,
                by_id.created_at
            ),
            ("Ada".into(), "ada@example.com".into(), "h1".into(), 5)
        );
        assert!(store
            .insert_user("Other", "ada@example.com", "h2", 6)
            .await
            .unwrap()
            .is_none());
        // Addresses compare byte for byte, as on SQLite: no collation folds them together.
        assert!(store
            .insert_user("Strasse", "strasse@example.com", "h", 6)
            .await
            .unwrap()
            .is_some());
        assert!(store
            .insert_user("Straße", "straße@example.com", "h", 6)
            .await
            .unwrap()
            .is_some());

        let token = AppToken::parse("AbCdEfGhIjKlMnOpQrStUvWx").unwrap();
        let app = store
            .insert_application(&token, "first", ada.id, 7)
            .await
            .unwrap();
        let found = store.application(&token).await.unwrap().unwrap();
        assert_eq!(
            (
                found.id,
                found.token,
                found.name,
                found.chats_count,
                found.creator_id
            ),
            (app.id, token.clone(), "first".into(), 0, ada.id)
        );
        let lower = AppToken::parse(&token.as_str().to_lowercase()).unwrap();
        assert!(
            store.application(&lower).await.unwrap().is_none(),
            "tokens are case-sensitive"
        );
        store
            .rename_application(app.id, "renamed", 8)
            .await
            .unwrap();
        let second = store
            .insert_application(&AppToken::generate(), "second", ada.id, 9)
            .await
            .unwrap();
        let page = |limit, offset| PageRequest {
            limit,
            offset,
            before: None,
        };
        let names: Vec<String> = store
            .applications_of(ada.id, page(10, 0))
            .await
            .unwrap()
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, ["renamed", "second"]);
        let ids: Vec<i64> = store
            .applications_of(ada.id, page(1, 1))
            .await
            .unwrap()
            .iter()
            .map(|a| a.id)
            .collect();
        assert_eq!(ids, [second.id]);
        drop_database(&store).await;
    }

    #[tokio::test]
    async fn insert_if_absent_returns_only_the_new_rows() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        suite::insert_if_absent_returns_only_the_new_rows(&store).await;
        drop_database(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_overlapping_batches_insert_each_row_once() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = Arc::new(store(&url).await);
        let (user, _, chat) = chats(store.as_ref(), 3).await;
        // 12 writers, each redelivering a window that overlaps its neighbours' in every chat,
        // in an order of its own.
        let tasks: Vec<_> = (0..12i64)
            .map(|writer| {
                let (store, chat) = (store.clone(), chat.clone());
                tokio::spawn(async move {
                    let mut rows = Vec::new();
                    for chat_id in &chat {
                        for number in writer * 20 + 1..=writer * 20 + 100 {
                            rows.push(new_message(*chat_id, number, user.id, "body"));
                        }
                    }
                    if writer % 2 == 1 {
                        rows.reverse();
                    }
                    store.insert_messages(&rows).await.unwrap()
                })
            })
            .collect();
        let mut reported = Vec::new();
        for task in tasks {
            reported.extend(task.await.unwrap());
        }
        let expected = 3 * (11 * 20 + 100);
        assert_eq!(reported.len(), expected, "every row reported exactly once");
        let keys: BTreeSet<(i64, i64)> = reported.iter().map(|k| (k.chat_id, k.number)).collect();
        assert_eq!(keys.len(), expected);
        let ids: BTreeSet<i64> = reported.iter().map(|k| k.id).collect();
        let stored: BTreeSet<i64> = store
            .messages_for_index(0, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(ids, stored);

        let tasks: Vec<_> = (0..8i64)
            .map(|writer| {
                let store = store.clone();
                let app = chat[0];
                tokio::spawn(async move {
                    let application_id: i64 =
                        sqlx::query_scalar("SELECT application_id FROM chats WHERE id = ?")
                            .bind(app)
                            .fetch_one(store.pool())
                            .await
                            .unwrap();
                    let rows: Vec<NewChat> = (writer * 10 + 1..=writer * 10 + 50)
                        .map(|number| NewChat {
                            application_id,
                            number,
                            creator_id: user.id,
                            created_at: 1,
                        })
                        .collect();
                    store.insert_chats(&rows).await.unwrap()
                })
            })
            .collect();
        let mut new_chats = 0;
        for task in tasks {
            new_chats += task.await.unwrap();
        }
        assert_eq!(new_chats, 7 * 10 + 50 - 3, "chats 1..=3 existed");
        drop_database(&store).await;
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_statement_limits_is_inserted_whole() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        let (user, _, chat) = chats(&store, 1).await;
        // 2,500 rows > MAX_ROWS_PER_INSERT, and 120 bodies of 60 KiB > MAX_BYTES_PER_INSERT.
        let big = "x".repeat(60 * 1024);
        let rows: Vec<NewMessage> = (1..=2_500)
            .map(|n| new_message(chat[0], n, user.id, if n <= 120 { &big } else { "small" }))
            .collect();
        assert!(insert_chunks(&rows).len() >= 4);
        assert_eq!(store.insert_messages(&rows).await.unwrap().len(), 2_500);
        assert_eq!(store.insert_messages(&rows).await.unwrap().len(), 0);
        assert_eq!(store.count_messages().await.unwrap(), 2_500);
        let numbers: Vec<i64> = (1..=2_500).collect();
        assert_eq!(
            store
                .messages_by_number(chat[0], &numbers)
                .await
                .unwrap()
                .len(),
            2_500
        );
        drop_database(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_claims_get_disjoint_blocks_above_the_highest_number() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let first = store(&url).await;
        let (user, token, chat) = chats(&first, 1).await;
        let rows: Vec<NewMessage> = (1..=7)
            .map(|n| new_message(chat[0], n, user.id, "hi"))
            .collect();
        first.insert_messages(&rows).await.unwrap();
        let scope = Scope::Messages(token.clone(), 1);
        assert_eq!(first.highest_number(&scope).await.unwrap(), 7);
        // Two pools: two processes.
        let name: String = sqlx::query_scalar("SELECT DATABASE()")
            .fetch_one(first.pool())
            .await
            .unwrap();
        let second = MySqlStore::open(&format!("{}/{name}", url.rsplit_once('/').unwrap().0))
            .await
            .unwrap();
        let stores = [Arc::new(first), Arc::new(second)];
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let (store, scope) = (stores[i % 2].clone(), scope.clone());
                tokio::spawn(async move { store.claim_numbers(&scope, 10).await.unwrap() })
            })
            .collect();
        let mut ends = Vec::new();
        for task in tasks {
            ends.push(task.await.unwrap());
        }
        ends.sort_unstable();
        let expected: Vec<i64> = (1..=20).map(|i| 7 + 10 * i).collect();
        assert_eq!(ends, expected, "disjoint blocks of 10, the first above 7");
        assert_eq!(stores[0].claim_numbers(&scope, 5).await.unwrap(), 212);
        // Scopes are independent; an empty one starts at 0.
        let chats = Scope::Chats(token.clone());
        assert_eq!(stores[1].highest_number(&chats).await.unwrap(), 1);
        assert_eq!(stores[1].claim_numbers(&chats, 100).await.unwrap(), 101);
        let versions = Scope::Versions(token, 1, 3);
        assert_eq!(stores[1].claim_numbers(&versions, 1).await.unwrap(), 1);
        drop_database(&stores[0]).await;
    }

    /// A block claim's `highest_number` reads the end of the scope's index, not every row of
    /// the scope: counted by the session's handler reads, which a MAX over the join raised
    /// by one per message (and per chat) of the scope.
    #[tokio::test]
    async fn the_highest_number_reads_a_few_index_entries_whatever_the_scope_size() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        let (user, token, chat) = chats(&store, 300).await;
        let rows: Vec<NewMessage> = (1..=2_000)
            .map(|n| new_message(chat[0], n, user.id, "hi"))
            .collect();
        store.insert_messages(&rows).await.unwrap();
        let mut conn = store.pool().acquire().await.unwrap();
        for (scope, highest) in [
            (Scope::Messages(token.clone(), 1), 2_000),
            (Scope::Chats(token.clone()), 300),
            (Scope::Versions(token.clone(), 1, 1_999), 0),
        ] {
            let reads_before = handler_reads(&mut conn).await;
            let mut qb = QueryBuilder::new("SELECT ");
            push_highest(&mut qb, &scope);
            let found: i64 = qb.build().fetch_one(&mut *conn).await.unwrap().get(0);
            let reads = handler_reads(&mut conn).await - reads_before;
            assert_eq!(found, highest, "{scope:?}");
            // Three key lookups here; the scan read 300 or 2,000 rows.
            assert!(reads < 20, "{scope:?}: {reads} handler reads");
        }
        drop(conn);
        drop_database(&store).await;
    }

    /// The session's row reads so far (`Handler_read_*`).
    async fn handler_reads(conn: &mut sqlx::MySqlConnection) -> i64 {
        let rows = sqlx::query("SHOW SESSION STATUS LIKE 'Handler_read%'")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
        rows.iter()
            .map(|r| bin_text(r, 1).parse::<i64>().unwrap())
            .sum()
    }

    #[tokio::test]
    async fn edits_apply_only_over_older_versions() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        let (user, token, chat) = chats(&store, 1).await;
        let c = chat[0];
        store
            .insert_messages(&[
                new_message(c, 1, user.id, "first"),
                new_message(c, 2, user.id, "second"),
            ])
            .await
            .unwrap();
        let id: i64 =
            sqlx::query_scalar("SELECT id FROM messages WHERE chat_id = ? AND number = 1")
                .bind(c)
                .fetch_one(store.pool())
                .await
                .unwrap();
        let outcomes = store
            .edit_messages(&[
                edit(c, 1, user.id, 5),
                edit(c, 1, user.id, 3),
                edit(c, 2, user.id + 1000, 9),
                edit(c, 7, user.id, 1),
                edit(c, 1, user.id, 6),
            ])
            .await
            .unwrap();
        assert_eq!(
            outcomes,
            [
                EditOutcome::Applied { id },
                EditOutcome::Superseded,
                EditOutcome::NotSender,
                EditOutcome::Missing,
                EditOutcome::Applied { id },
            ]
        );
        let store = &store;
        let body = |n| async move { store.message(c, n).await.unwrap().unwrap().body };
        assert_eq!(body(1).await, "version 6");
        assert_eq!(body(2).await, "second");
        assert_eq!(
            store
                .highest_number(&Scope::Versions(token.clone(), 1, 1))
                .await
                .unwrap(),
            6
        );
        // An older version never overwrites a newer one, in a later batch either.
        assert_eq!(
            store
                .edit_messages(&[edit(c, 1, user.id, 4)])
                .await
                .unwrap(),
            [EditOutcome::Superseded]
        );
        assert_eq!(
            store
                .edit_messages(&[edit(c, 1, user.id, 6)])
                .await
                .unwrap(),
            [EditOutcome::Superseded],
            "an equal version is a redelivery"
        );
        assert_eq!(body(1).await, "version 6");
        assert!(store.edit_messages(&[]).await.unwrap().is_empty());
        drop_database(store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_edits_leave_the_newest_version() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = Arc::new(store(&url).await);
        let (user, _, chat) = chats(store.as_ref(), 1).await;
        let rows: Vec<NewMessage> = (1..=20)
            .map(|n| new_message(chat[0], n, user.id, "original"))
            .collect();
        store.insert_messages(&rows).await.unwrap();
        // 10 batches, each editing every message with versions that interleave the others'.
        let tasks: Vec<_> = (0..10i64)
            .map(|batch| {
                let store = store.clone();
                let c = chat[0];
                tokio::spawn(async move {
                    let mut edits: Vec<MessageEdit> = (1..=20)
                        .map(|n| edit(c, n, user.id, batch * 100 + n))
                        .collect();
                    if batch % 2 == 0 {
                        edits.reverse();
                    }
                    store.edit_messages(&edits).await.unwrap()
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        for n in 1..=20 {
            let body = store.message(chat[0], n).await.unwrap().unwrap().body;
            assert_eq!(body, format!("version {}", 900 + n));
        }
        drop_database(&store).await;
    }

    #[tokio::test]
    async fn count_sync_writes_only_changed_counts() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        let (user, token, chat) = chats(&store, 3).await;
        let app = store.application(&token).await.unwrap().unwrap();
        assert_eq!(app.chats_count, 0, "only count sync writes counts");
        let rows: Vec<NewMessage> = (1..=5)
            .map(|n| new_message(chat[0], n, user.id, "hi"))
            .chain((1..=2).map(|n| new_message(chat[1], n, user.id, "hi")))
            .collect();
        store.insert_messages(&rows).await.unwrap();

        assert_eq!(store.sync_chats_count(None).await.unwrap(), 1);
        assert_eq!(store.sync_chats_count(None).await.unwrap(), 0);
        let app = store.application(&token).await.unwrap().unwrap();
        assert_eq!(app.chats_count, 3);

        assert_eq!(store.sync_messages_count(Some(&[])).await.unwrap(), 0);
        assert_eq!(
            store.sync_messages_count(Some(&[chat[0]])).await.unwrap(),
            1
        );
        assert_eq!(store.sync_messages_count(None).await.unwrap(), 1, "chat 2");
        assert_eq!(store.sync_messages_count(None).await.unwrap(), 0);
        let counts: Vec<i64> = store
            .chats(app.id, PageRequest::first(10))
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.messages_count)
            .collect();
        assert_eq!(counts, [5, 2, 0]);
        store
            .insert_messages(&[new_message(chat[2], 1, user.id, "hi")])
            .await
            .unwrap();
        assert_eq!(store.sync_messages_count(Some(&chat)).await.unwrap(), 1);
        assert_eq!(
            store.chat(app.id, 3).await.unwrap().unwrap().messages_count,
            1
        );
        drop_database(&store).await;
    }

    #[tokio::test]
    async fn reading_messages() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        let (user, _, chat) = chats(&store, 1).await;
        let rows: Vec<NewMessage> = (1..=12)
            .map(|n| new_message(chat[0], n, user.id, &format!("message {n}")))
            .collect();
        store.insert_messages(&rows).await.unwrap();
        let (store, c) = (&store, chat[0]);
        let numbers = |page| async move {
            store
                .messages(c, page)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.number)
                .collect::<Vec<_>>()
        };
        let page = PageRequest::parse(Some(2), Some(5), None).unwrap();
        assert_eq!(numbers(page).await, [7, 6, 5, 4, 3]);
        let before = PageRequest::parse(None, Some(3), Some(5)).unwrap();
        assert_eq!(numbers(before).await, [4, 3, 2]);
        let one = store.message(chat[0], 12).await.unwrap().unwrap();
        assert_eq!(
            (
                one.sender_id,
                one.sender_name.as_str(),
                one.body.as_str(),
                one.created_at
            ),
            (user.id, "Ada", "message 12", 12)
        );
        let mut some: Vec<i64> = store
            .messages_by_number(chat[0], &[3, 9, 40])
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.number)
            .collect();
        some.sort_unstable();
        assert_eq!(some, [3, 9]);
        let after: Vec<i64> = store
            .messages_for_index(0, 100)
            .await
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        let tail = store.messages_for_index(after[9], 100).await.unwrap();
        assert_eq!(tail.len(), 2);
        drop_database(store).await;
    }

    #[tokio::test]
    async fn deletion_schedule_cancel_and_execute() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        let ada = store
            .insert_user("Ada", "ada@example.com", "hash", 1)
            .await
            .unwrap()
            .unwrap();
        let scheduled = store
            .schedule_deletion(ada.id, 100, "t1", 10)
            .await
            .unwrap();
        assert_eq!((scheduled.user_id, scheduled.scheduled_for), (ada.id, 100));
        // A second request keeps the schedule and replaces the recovery token.
        let key = |d: &Deletion| (d.id, d.user_id, d.scheduled_for);
        let again = store
            .schedule_deletion(ada.id, 200, "t2", 20)
            .await
            .unwrap();
        assert_eq!(key(&again), key(&scheduled));
        let pending = store.pending_deletion_of(ada.id).await.unwrap();
        assert_eq!(pending.as_ref().map(key), Some(key(&scheduled)));
        assert!(store.cancel_deletion("t1", 30).await.unwrap().is_none());
        assert!(store.due_deletions(99, 10).await.unwrap().is_empty());
        let recovered = store.cancel_deletion("t2", 30).await.unwrap();
        assert_eq!(recovered.map(|u| u.id), Some(ada.id));
        assert!(store.pending_deletion_of(ada.id).await.unwrap().is_none());
        assert!(store.cancel_deletion("t2", 31).await.unwrap().is_none());

        let d = store
            .schedule_deletion(ada.id, 300, "t3", 40)
            .await
            .unwrap();
        assert_ne!(d.id, scheduled.id);
        let due: Vec<_> = store.due_deletions(300, 10).await.unwrap();
        assert_eq!(due.iter().map(key).collect::<Vec<_>>(), [key(&d)]);
        assert!(store.execute_deletion(&d, 301).await.unwrap());
        assert!(!store.execute_deletion(&d, 302).await.unwrap(), "done once");
        assert!(store.user_by_id(ada.id).await.unwrap().is_none());
        assert!(store
            .user_by_email("ada@example.com")
            .await
            .unwrap()
            .is_none());
        assert!(store.due_deletions(1_000, 10).await.unwrap().is_empty());
        assert!(store.cancel_deletion("t3", 303).await.unwrap().is_none());
        let scrubbed: (String, String, String, bool) = sqlx::query_as(
            "SELECT name, CAST(email AS CHAR), CAST(password_hash AS CHAR), is_deleted \
             FROM users WHERE id = ?",
        )
        .bind(ada.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(
            scrubbed,
            (
                "Deleted user".into(),
                format!("deleted-{}", ada.id),
                String::new(),
                true
            )
        );
        // The address is free again.
        assert!(store
            .insert_user("Ada", "ada@example.com", "hash", 400)
            .await
            .unwrap()
            .is_some());

        store
            .log_action(ada.id, "deletion_scheduled", "a", 1)
            .await
            .unwrap();
        store.log_action(ada.id, "deleted", "b", 2).await.unwrap();
        assert_eq!(
            store.actions_of(ada.id).await.unwrap(),
            [
                ("deletion_scheduled".to_owned(), "a".to_owned()),
                ("deleted".to_owned(), "b".to_owned())
            ]
        );
        drop_database(&store).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_schedules_keep_one_pending_deletion() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = Arc::new(store(&url).await);
        let ada = store
            .insert_user("Ada", "ada@example.com", "hash", 1)
            .await
            .unwrap()
            .unwrap();
        let tasks: Vec<_> = (0..10)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .schedule_deletion(ada.id, 100, &format!("token {i}"), i)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut ids = BTreeSet::new();
        for task in tasks {
            ids.insert(task.await.unwrap().id);
        }
        assert_eq!(ids.len(), 1);
        let pending: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM user_deletions WHERE user_id = ? AND status = 'pending'",
        )
        .bind(ada.id)
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(pending, 1);
        drop_database(&store).await;
    }

    #[test]
    fn only_retryable_server_errors_count_as_unavailable() {
        assert!(TRY_AGAIN.contains(&1213) && TRY_AGAIN.contains(&1205));
        assert!(!TRY_AGAIN.contains(&1062), "a duplicate key is no outage");
    }

    #[tokio::test]
    async fn a_deadlock_is_unavailable_and_a_syntax_error_is_not() {
        let Some(url) = Engine::MariaDb.url() else {
            return;
        };
        let store = store(&url).await;
        let store = &store;
        let err = |sql: &'static str| async move {
            anyhow::Error::from(sqlx::query(sql).execute(store.pool()).await.unwrap_err())
        };
        // SIGNAL raises a server error with the number of our choice.
        let deadlock = err("SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213").await;
        assert!(is_unavailable(&deadlock), "{deadlock:#}");
        let bad = err("SELEC 1").await;
        assert!(!is_unavailable(&bad), "{bad:#}");
        drop_database(store).await;
    }
}
