//! The operations behind every route. Holds the ports as trait objects only: which backend
//! serves them was decided once, at start-up.

use super::accounts::{Credentials, JwtKeys, PasswordHasher, TokenSubject};
use super::events::{queue_email, ChatCreated, MessageCreated, MessageEdited};
use super::*;
use crate::bus::{Bus, PublishError, Queue};
use crate::cache::Cache;
use crate::search::SearchIndex;
use crate::sequencer::{Scope, Sequencer};
use crate::store::Store;
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// Tunables of the domain, from configuration.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// How long a JWT is valid.
    pub token_ttl: Duration,
    /// How long after `DELETE /users/me` the account is deleted.
    pub deletion_delay: Duration,
    /// Recovery e-mails per user per day.
    pub recovery_mails_per_day: i64,
    /// How long verified credentials are remembered in this process.
    pub credentials_ttl: Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            token_ttl: Duration::from_secs(3600),
            deletion_delay: Duration::from_secs(24 * 3600),
            recovery_mails_per_day: 2,
            credentials_ttl: Duration::from_secs(60),
        }
    }
}

/// How deep search results can be paged (offset + limit).
pub const MAX_SEARCH_DEPTH: u64 = 10_000;

/// Failed password checks per address within `FAILED_LOGIN_WINDOW` before sign-ins are refused.
const MAX_FAILED_LOGINS: i64 = 10;
const FAILED_LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Verified Basic headers, and accounts by e-mail, remembered per process.
const REMEMBERED_ACCOUNTS: usize = 100_000;

/// Verified bearer tokens remembered per process: a token and its subject take about 400
/// bytes, so at most about 4 MB; a token is only remembered once its signature checked out.
const REMEMBERED_TOKENS: usize = 10_000;

/// Larger read results are not remembered: a few would crowd out many small ones.
const MAX_REMEMBERED_BYTES: usize = 256 * 1024;

/// Cached message pages live this long at most (they are also invalidated by the writer).
const PAGE_TTL: Duration = Duration::from_secs(60);
const DAY: Duration = Duration::from_secs(24 * 3600);

pub struct Service {
    pub store: Arc<dyn Store>,
    pub sequencer: Arc<dyn Sequencer>,
    pub bus: Arc<dyn Bus>,
    pub search: Arc<dyn SearchIndex>,
    pub cache: Arc<dyn Cache>,
    jwt: JwtKeys,
    hasher: PasswordHasher,
    settings: ServiceSettings,
    /// Keys the hash of Basic headers in `verified`; random per process.
    header_hash_key: [u8; 32],
    verified: ShortLived<[u8; 32], User>,
    /// Bearer tokens already verified, keyed by the whole token (only the exact bytes that
    /// were checked hit). The HS256 check and its two JSON parses took 4% of the process's
    /// CPU during create-message (perf) and a hit costs an eighth of one; expiry is checked on
    /// each hit.
    tokens: ShortLived<String, TokenSubject>,
    users_by_email: ShortLived<String, User>,
    /// token → (application id, creator id): both immutable, so never stale. This and
    /// `chat_ids` are read on every create and never expire, so they are `quick_cache`
    /// maps: a hit costs ~110 instructions there against ~1,300 in moka, whose reads also
    /// feed its eviction bookkeeping (callgrind, 100,000 gets of a 1,000-entry map).
    app_keys: quick_cache::sync::Cache<AppToken, (i64, i64)>,
    /// (application id, chat number) → chat id: immutable once the chat exists.
    chat_ids: quick_cache::sync::Cache<(i64, i64), i64>,
    waits: Waits,
}

/// The two waits of a create or an edit, timed so that `/metrics` shows where its time goes
/// (under load they are nearly all of it): the sequencer's number and the bus's publish
/// (on a broker, until the confirm). Handles taken once, not looked up per request.
struct Waits {
    /// By scope kind: chats, messages, versions.
    numbers: [metrics::Histogram; 3],
    publishes: std::collections::HashMap<Queue, metrics::Histogram>,
}

impl Waits {
    fn new() -> Self {
        // Handles taken before the recorder is installed would record nowhere, forever.
        crate::telemetry::metrics();
        let number =
            |kind| metrics::histogram!("parley_sequencer_duration_seconds", "scope" => kind);
        Self {
            numbers: [number("chats"), number("messages"), number("versions")],
            publishes: Queue::ALL
                .into_iter()
                .map(|q| {
                    let h =
                        metrics::histogram!("parley_publish_duration_seconds", "queue" => q.name());
                    (q, h)
                })
                .collect(),
        }
    }

    fn number(&self, scope: &Scope) -> &metrics::Histogram {
        &self.numbers[match scope {
            Scope::Chats(_) => 0,
            Scope::Messages(..) => 1,
            Scope::Versions(..) => 2,
        }]
    }
}

/// The cache key of the counter that invalidates a chat's cached pages.
pub fn page_generation_key(chat_id: i64) -> String {
    format!("chat:{chat_id}:pages")
}

fn publish_error(e: PublishError) -> DomainError {
    match e {
        PublishError::Unavailable(m) => DomainError::Unavailable(m),
        PublishError::Rejected(m) => {
            DomainError::Unavailable(format!("the item could not be persisted: {m}"))
        }
    }
}

/// Remembered for a while: credentials checked once are trusted for `ttl`, then checked again
/// (so a deleted account or a changed password takes effect within it). A `quick_cache` map
/// with the time of each entry: a hit is read on every authenticated request, and costs ~110
/// instructions there against ~1,300 in moka (see `app_keys`).
struct ShortLived<K, V> {
    entries: quick_cache::sync::Cache<K, (V, std::time::Instant)>,
    ttl: Duration,
}

impl<K, V> ShortLived<K, V>
where
    K: std::hash::Hash + Eq + Clone,
    V: Clone,
{
    fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            entries: quick_cache::sync::Cache::new(capacity),
            ttl,
        }
    }

    fn get(&self, key: &K) -> Option<V> {
        let (value, since) = self.entries.get(key)?;
        if since.elapsed() < self.ttl {
            return Some(value);
        }
        self.entries.remove(key);
        None
    }

    fn insert(&self, key: K, value: V) {
        self.entries.insert(key, (value, std::time::Instant::now()));
    }
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        sequencer: Arc<dyn Sequencer>,
        bus: Arc<dyn Bus>,
        search: Arc<dyn SearchIndex>,
        cache: Arc<dyn Cache>,
        jwt: JwtKeys,
        settings: ServiceSettings,
    ) -> Self {
        Self {
            store,
            sequencer,
            bus,
            search,
            cache,
            jwt,
            hasher: PasswordHasher::default(),
            header_hash_key: rand::random(),
            verified: ShortLived::new(settings.credentials_ttl, REMEMBERED_ACCOUNTS),
            tokens: ShortLived::new(settings.credentials_ttl, REMEMBERED_TOKENS),
            users_by_email: ShortLived::new(settings.credentials_ttl, REMEMBERED_ACCOUNTS),
            app_keys: quick_cache::sync::Cache::new(100_000),
            chat_ids: quick_cache::sync::Cache::new(1_000_000),
            waits: Waits::new(),
            settings,
        }
    }

    // ---- accounts ----------------------------------------------------------------------

    pub async fn sign_up(
        &self,
        name: Name,
        email: Email,
        password: Password,
    ) -> Result<User, DomainError> {
        let hash = self.hasher.hash(password.expose().to_owned()).await?;
        let user = self
            .store
            .insert_user(name.as_str(), email.as_str(), &hash, now_ms())
            .await?
            .ok_or_else(|| {
                DomainError::Conflict(format!("{} is already registered", email.as_str()))
            })?;
        self.audit(user.id, "signed_up", "").await;
        self.mail(&user, "welcome", serde_json::Map::new());
        Ok(user)
    }

    /// Resolves an `Authorization` header to a live user.
    pub async fn authenticate(&self, header: &str) -> Result<User, DomainError> {
        match Credentials::parse(header, &self.header_hash_key)? {
            Credentials::Bearer(token) => {
                let subject = self.token_subject(token).await?;
                let is_holder = |u: &User| u.created_at == subject.user_created_at;
                if let Some(user) = self.users_by_email.get(&subject.email) {
                    if is_holder(&user) {
                        return Ok(user);
                    }
                }
                // Not cached, or cached for another holder of the address: ask the store.
                match self.store.user_by_email(&subject.email).await? {
                    Some(user) if is_holder(&user) => {
                        self.users_by_email.insert(subject.email, user.clone());
                        Ok(user)
                    }
                    _ => Err(DomainError::Unauthorized(
                        "the token's account no longer exists".into(),
                    )),
                }
            }
            Credentials::Basic {
                email,
                password,
                header_key,
            } => {
                if let Some(user) = self.verified.get(&header_key) {
                    return Ok(user);
                }
                let user = self.check_password(&email, password).await?;
                self.verified.insert(header_key, user.clone());
                Ok(user)
            }
        }
    }

    /// Whose the token is, verified here or, within its lifetime, remembered from an earlier
    /// verification.
    async fn token_subject(&self, token: String) -> Result<TokenSubject, DomainError> {
        if let Some(subject) = self.tokens.get(&token) {
            if subject.valid_at(jsonwebtoken::get_current_timestamp()) {
                return Ok(subject);
            }
        }
        let subject = self.jwt.verify(&token)?;
        self.tokens.insert(token, subject.clone());
        Ok(subject)
    }

    /// Basic credentials only: what `POST /auth/token` accepts.
    pub async fn authenticate_basic(&self, header: &str) -> Result<User, DomainError> {
        match Credentials::parse(header, &self.header_hash_key)? {
            Credentials::Basic { .. } => self.authenticate(header).await,
            Credentials::Bearer(_) => Err(DomainError::Unauthorized(
                "a token is issued for HTTP Basic credentials (email:password)".into(),
            )),
        }
    }

    async fn check_password(&self, email: &str, password: String) -> Result<User, DomainError> {
        let bad = || DomainError::Unauthorized("wrong e-mail or password".into());
        let failures_key = format!("auth:failures:{email}");
        let failures = match self.cache.get(&failures_key).await? {
            Some(n) => String::from_utf8_lossy(&n).parse::<i64>().unwrap_or(0),
            None => 0,
        };
        if failures >= MAX_FAILED_LOGINS {
            return Err(DomainError::RateLimited(format!(
                "too many failed sign-ins for this address; wait {} minutes",
                FAILED_LOGIN_WINDOW.as_secs() / 60
            )));
        }
        let user = self.store.user_by_email(email).await?;
        // Unknown addresses cost a real verification too, so timing does not tell who exists.
        let hash = user
            .as_ref()
            .map_or(DUMMY_HASH.to_owned(), |u| u.password_hash.clone());
        let verified = self.hasher.verify(password, hash).await?;
        match user {
            Some(user) if verified => {
                if failures > 0 {
                    self.cache.delete(&failures_key).await?;
                }
                Ok(user)
            }
            _ => {
                self.cache.incr(&failures_key, FAILED_LOGIN_WINDOW).await?;
                Err(bad())
            }
        }
    }

    pub fn issue_token(&self, user: &User) -> Result<(String, i64), DomainError> {
        Ok(self.jwt.issue(user)?)
    }

    /// Schedules the caller's deletion and mails a recovery token; returns when it is due.
    pub async fn schedule_deletion(&self, user: &User) -> Result<i64, DomainError> {
        let counter = format!("user:email:count:{}:{}", user.id, today());
        if self.cache.incr(&counter, DAY * 2).await? > self.settings.recovery_mails_per_day {
            return Err(DomainError::RateLimited(format!(
                "at most {} deletion requests per day; try again tomorrow",
                self.settings.recovery_mails_per_day
            )));
        }
        let recovery_token = AppToken::generate().to_string() + &AppToken::generate().to_string();
        let now = now_ms();
        let due = now + self.settings.deletion_delay.as_millis() as i64;
        let deletion = self
            .store
            .schedule_deletion(user.id, due, &sha256_hex(&recovery_token), now)
            .await?;
        self.audit(
            user.id,
            "deletion_scheduled",
            &format_ms(deletion.scheduled_for),
        )
        .await;
        let mut context = serde_json::Map::new();
        context.insert("recovery_token".into(), recovery_token.into());
        context.insert(
            "scheduled_for".into(),
            format_ms(deletion.scheduled_for).into(),
        );
        self.mail(user, "account_deletion_scheduled", context);
        Ok(deletion.scheduled_for)
    }

    pub async fn recover(&self, recovery_token: &str) -> Result<User, DomainError> {
        let user = self
            .store
            .cancel_deletion(&sha256_hex(recovery_token.trim()), now_ms())
            .await?
            .ok_or_else(|| DomainError::not_found("no pending deletion has this recovery token"))?;
        self.audit(user.id, "deletion_cancelled", "").await;
        self.mail(&user, "account_recovered", serde_json::Map::new());
        Ok(user)
    }

    fn mail(
        &self,
        user: &User,
        template: &str,
        mut context: serde_json::Map<String, serde_json::Value>,
    ) {
        context.insert("name".into(), user.name.clone().into());
        queue_email(&self.bus, &user.email, template, context);
    }

    async fn audit(&self, user_id: i64, action: &str, detail: &str) {
        if let Err(e) = self
            .store
            .log_action(user_id, action, detail, now_ms())
            .await
        {
            tracing::error!(user_id, action, error = %e, "could not write the audit log");
        }
    }

    // ---- applications ------------------------------------------------------------------

    pub async fn create_application(
        &self,
        user: &User,
        name: Name,
    ) -> Result<Application, DomainError> {
        Ok(self
            .store
            .insert_application(&AppToken::generate(), name.as_str(), user.id, now_ms())
            .await?)
    }

    pub async fn applications(
        &self,
        user: &User,
        page: PageRequest,
    ) -> Result<Vec<Application>, DomainError> {
        Ok(self.store.applications_of(user.id, page).await?)
    }

    pub async fn application(&self, token: &AppToken) -> Result<Application, DomainError> {
        self.store
            .application(token)
            .await?
            .ok_or_else(|| DomainError::not_found(format!("application {token} not found")))
    }

    pub async fn rename_application(
        &self,
        user: &User,
        token: &AppToken,
        name: Name,
    ) -> Result<Application, DomainError> {
        let mut app = self.application(token).await?;
        if app.creator_id != user.id {
            return Err(DomainError::Forbidden(
                "only the application's creator may rename it".into(),
            ));
        }
        self.store
            .rename_application(app.id, name.as_str(), now_ms())
            .await?;
        app.name = name.as_str().to_owned();
        Ok(app)
    }

    /// The application's (id, creator id), cached: the write path's only lookup.
    async fn app_key(&self, token: &AppToken) -> Result<(i64, i64), DomainError> {
        if let Some(key) = self.app_keys.get(token) {
            return Ok(key);
        }
        let app = self.application(token).await?;
        self.app_keys
            .insert(token.clone(), (app.id, app.creator_id));
        Ok((app.id, app.creator_id))
    }

    // ---- chats -------------------------------------------------------------------------

    pub async fn create_chat(&self, user: &User, token: &AppToken) -> Result<i64, DomainError> {
        self.app_key(token).await?;
        let number = self.next_number(&Scope::Chats(token.clone())).await?;
        let event = ChatCreated {
            token: token.clone(),
            chat_number: number,
            creator_id: user.id,
            created_at: now_ms(),
        };
        self.publish(Queue::CreateChats, &event).await?;
        Ok(number)
    }

    pub async fn chats(
        &self,
        token: &AppToken,
        page: PageRequest,
    ) -> Result<Vec<Chat>, DomainError> {
        let (app_id, _) = self.app_key(token).await?;
        Ok(self.store.chats(app_id, page).await?)
    }

    pub async fn chat(&self, token: &AppToken, number: Number) -> Result<Chat, DomainError> {
        let (app_id, _) = self.app_key(token).await?;
        self.store.chat(app_id, number.get()).await?.ok_or_else(|| {
            DomainError::not_found(format!("chat {number} not found in this application"))
        })
    }

    /// The chat's id if it is persisted; `None` if it was handed out but is still in flight.
    async fn chat_id(&self, token: &AppToken, number: Number) -> Result<Option<i64>, DomainError> {
        let (app_id, _) = self.app_key(token).await?;
        if let Some(id) = self.chat_ids.get(&(app_id, number.get())) {
            return Ok(Some(id));
        }
        if let Some(chat) = self.store.chat(app_id, number.get()).await? {
            self.chat_ids.insert((app_id, number.get()), chat.id);
            return Ok(Some(chat.id));
        }
        let handed_out = self
            .sequencer
            .current(&Scope::Chats(token.clone()))
            .await
            .map_err(unavailable)?;
        if number.get() <= handed_out {
            Ok(None)
        } else {
            Err(DomainError::not_found(format!(
                "chat {number} not found in this application"
            )))
        }
    }

    async fn persisted_chat_id(
        &self,
        token: &AppToken,
        number: Number,
    ) -> Result<i64, DomainError> {
        // A chat still in flight has no messages yet to read.
        self.chat_id(token, number).await?.ok_or_else(|| {
            DomainError::not_found(format!("chat {number} not found in this application"))
        })
    }

    // ---- messages ----------------------------------------------------------------------

    pub async fn create_message(
        &self,
        user: &User,
        token: &AppToken,
        chat: Number,
        body: Body,
        created_at: Option<i64>,
    ) -> Result<i64, DomainError> {
        // Invariant 4: a chat that was handed out but is not persisted yet is accepted.
        self.chat_id(token, chat).await?;
        let scope = Scope::Messages(token.clone(), chat.get());
        let number = self.next_number(&scope).await?;
        let event = MessageCreated {
            token: token.clone(),
            chat_number: chat.get(),
            message_number: number,
            sender_id: user.id,
            body: body.into_string(),
            created_at: created_at.unwrap_or_else(now_ms),
        };
        self.publish(Queue::CreateMessages, &event).await?;
        Ok(number)
    }

    pub async fn messages(
        &self,
        token: &AppToken,
        chat: Number,
        page: PageRequest,
    ) -> Result<Vec<Message>, DomainError> {
        let chat_id = self.persisted_chat_id(token, chat).await?;
        // Keyset pages (`before=`) are remembered as offset pages are: readers scrolling back
        // through one chat's history ask for the same pages.
        let what = match page.before {
            Some(before) => format!("b{before}:{}", page.limit),
            None => format!("{}:{}", page.offset, page.limit),
        };
        let found = self
            .remembered(chat_id, &what, || self.store.messages(chat_id, page))
            .await?;
        Ok(found)
    }

    pub async fn message(
        &self,
        token: &AppToken,
        chat: Number,
        number: Number,
    ) -> Result<Message, DomainError> {
        let chat_id = self.persisted_chat_id(token, chat).await?;
        self.remembered(chat_id, &format!("m{number}"), || {
            self.store.message(chat_id, number.get())
        })
        .await?
        .ok_or_else(|| DomainError::not_found(format!("message {number} not found in chat {chat}")))
    }

    /// A read of a chat's messages, remembered under the chat's page generation, which the
    /// writer bumps after each commit touching the chat: a result read before a commit is
    /// never served after it.
    async fn remembered<T, F, Fut>(&self, chat_id: i64, what: &str, read: F) -> anyhow::Result<T>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let generation = self
            .cache
            .get(&page_generation_key(chat_id))
            .await
            .ok()
            .flatten();
        let generation = generation
            .map(|g| String::from_utf8_lossy(&g).into_owned())
            .unwrap_or_default();
        let key = format!("chat:{chat_id}:pages:{generation}:{what}");
        if let Ok(Some(bytes)) = self.cache.recall(&key).await {
            if let Ok(value) = serde_json::from_slice(&bytes) {
                return Ok(value);
            }
        }
        let value = read().await?;
        if let Ok(bytes) = serde_json::to_vec(&value) {
            if bytes.len() <= MAX_REMEMBERED_BYTES {
                let _ = self.cache.remember(&key, bytes, PAGE_TTL).await;
            }
        }
        Ok(value)
    }

    pub async fn edit_message(
        &self,
        user: &User,
        token: &AppToken,
        chat: Number,
        number: Number,
        body: Body,
    ) -> Result<(), DomainError> {
        let not_found =
            || DomainError::not_found(format!("message {number} not found in chat {chat}"));
        let mut stored = match self.chat_id(token, chat).await? {
            Some(chat_id) => self.store.message(chat_id, number.get()).await?,
            None => None,
        };
        match stored {
            Some(m) if m.sender_id != user.id => {
                return Err(DomainError::Forbidden(
                    "only the message's sender may edit it".into(),
                ));
            }
            Some(_) => {}
            // Invariant 4: a message handed out but still in flight may be edited; the writer
            // applies the edit once the message exists, and only for its sender.
            None => {
                let handed_out = self
                    .sequencer
                    .current(&Scope::Messages(token.clone(), chat.get()))
                    .await
                    .map_err(unavailable)?;
                if number.get() > handed_out {
                    return Err(not_found());
                }
                // Usually the writer commits within milliseconds: wait a little for it, so the
                // sender can be checked here (403) rather than only by the writer.
                stored = self.await_persisted(token, chat, number).await?;
                if stored.as_ref().is_some_and(|m| m.sender_id != user.id) {
                    return Err(DomainError::Forbidden(
                        "only the message's sender may edit it".into(),
                    ));
                }
            }
        }
        let version = self
            .next_number(&Scope::Versions(token.clone(), chat.get(), number.get()))
            .await?;
        let event = MessageEdited {
            token: token.clone(),
            chat_number: chat.get(),
            message_number: number.get(),
            sender_id: user.id,
            body: body.into_string(),
            version,
            updated_at: now_ms(),
        };
        self.publish(Queue::UpdateMessages, &event).await
    }

    /// Polls the store for a message that was handed out but not yet persisted, for up to
    /// `IN_FLIGHT_WAIT`; `None` if it is still in flight.
    async fn await_persisted(
        &self,
        token: &AppToken,
        chat: Number,
        number: Number,
    ) -> Result<Option<Message>, DomainError> {
        let deadline = tokio::time::Instant::now() + IN_FLIGHT_WAIT;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if let Some(chat_id) = self.chat_id(token, chat).await? {
                if let Some(m) = self.store.message(chat_id, number.get()).await? {
                    return Ok(Some(m));
                }
            }
        }
        Ok(None)
    }

    pub async fn search(
        &self,
        token: &AppToken,
        chat: Number,
        query: &str,
        page: PageRequest,
    ) -> Result<Vec<Message>, DomainError> {
        if crate::search::words(query).next().is_none() {
            return Err(DomainError::invalid(
                "q must contain at least one letter or digit",
            ));
        }
        if query.len() > 1024 {
            return Err(DomainError::invalid("q must be at most 1024 bytes"));
        }
        // Search engines collect offset + limit hits before paging (and allocate for them):
        // cap the depth as Elasticsearch does by default.
        if page.offset + page.limit as u64 > MAX_SEARCH_DEPTH {
            return Err(DomainError::invalid(format!(
                "search pages reach the first {MAX_SEARCH_DEPTH} matches at most; narrow the query"
            )));
        }
        let chat_id = self.persisted_chat_id(token, chat).await?;
        let numbers = self
            .search
            .search(chat_id, query, page)
            .await
            .context("searching")?;
        let mut found = self.store.messages_by_number(chat_id, &numbers).await?;
        found.sort_by_key(|m| std::cmp::Reverse(m.number));
        Ok(found)
    }

    async fn publish<T: serde::Serialize>(
        &self,
        queue: Queue,
        event: &T,
    ) -> Result<(), DomainError> {
        let payload = serde_json::to_vec(event).context("encoding an event")?;
        let started = std::time::Instant::now();
        let published = self.bus.publish(queue, payload).await;
        self.waits.publishes[&queue].record(started.elapsed().as_secs_f64());
        published.map_err(publish_error)
    }

    /// The scope's next number, timed (`Waits`).
    async fn next_number(&self, scope: &Scope) -> Result<i64, DomainError> {
        let started = std::time::Instant::now();
        let number = self.sequencer.next(scope).await;
        self.waits
            .number(scope)
            .record(started.elapsed().as_secs_f64());
        number.map_err(unavailable)
    }
}

/// How long an edit of a message still in flight waits for the writer to persist it.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

fn unavailable(e: anyhow::Error) -> DomainError {
    tracing::error!(error = %e, "sequencer unavailable");
    DomainError::Unavailable("the sequencer is unavailable".into())
}

/// A valid argon2 hash of a random password, verified against when the e-mail is unknown.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$V+1hYVq4s3JFDU6gQ1fC6m3QzQKb3y0qf3Gq7aN8R0E";

#[cfg(test)]
mod tests {
    use super::ShortLived;
    use std::time::Duration;

    #[test]
    fn remembered_credentials_last_their_lifetime_and_no_longer() {
        let long = ShortLived::new(Duration::from_secs(3600), 10);
        long.insert("token", 7);
        assert_eq!(long.get(&"token"), Some(7));
        assert_eq!(long.get(&"other"), None);
        // A lifetime already over on insertion: the entry is never served, and is dropped.
        let over = ShortLived::new(Duration::ZERO, 10);
        over.insert("token", 7);
        assert_eq!(over.get(&"token"), None);
        assert_eq!(over.entries.len(), 0);
    }
}
