//! The writer role: consumes `create_chats`, `create_messages` and `update_messages` in
//! batches (group commit: everything already delivered, up to `batch_max`, after an optional
//! linger that lets more arrive), persists each batch with one multi-row insert-if-absent,
//! indexes it for search, invalidates cached pages, marks counts dirty, then acks.
//! Redeliveries are harmless (invariant 3). A failing batch is split in halves until the
//! poison item is alone; it is retried with exponential backoff and dead-lettered after
//! `max_attempts`.

use crate::bus::{Bus, Delivery, Queue, RetryPolicy};
use crate::cache::Cache;
use crate::domain::{page_generation_key, AppToken, ChatCreated, MessageCreated, MessageEdited};
use crate::search::{SearchDoc, SearchIndex};
use crate::store::{EditOutcome, MessageEdit, NewChat, NewMessage, Store, StoredKey};
use anyhow::Result;
use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Cache sets naming what count sync must recount.
pub const DIRTY_APPLICATIONS: &str = "dirty:applications";
pub const DIRTY_CHATS: &str = "dirty:chats";

#[derive(Debug, Clone)]
pub struct WriterSettings {
    /// Most items per batch (and per multi-row insert).
    pub batch_max: usize,
    /// How long a batch waits after its first delivery for more to join it.
    pub linger: Duration,
    pub retry: RetryPolicy,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            batch_max: 500,
            linger: Duration::ZERO,
            retry: RetryPolicy::default(),
        }
    }
}

#[derive(Clone)]
pub struct Writer {
    store: Arc<dyn Store>,
    search: Arc<dyn SearchIndex>,
    cache: Arc<dyn Cache>,
    bus: Arc<dyn Bus>,
    settings: WriterSettings,
    /// Held from a store commit until its documents are queued for search, so the index
    /// receives creates and edits in commit order (an edit's body is never overwritten by
    /// its message's create, and the durable store-id mark stays true).
    index_order: Arc<tokio::sync::Mutex<()>>,
    /// Immutable ids read for every item (so cheap `quick_cache` maps, as in the service),
    /// shared by the clones.
    app_ids: Arc<quick_cache::sync::Cache<AppToken, i64>>,
    chat_ids: Arc<quick_cache::sync::Cache<(i64, i64), i64>>,
}

/// A decoded delivery.
struct Item<T> {
    event: T,
    delivery: Delivery,
}

impl Writer {
    pub fn new(
        store: Arc<dyn Store>,
        search: Arc<dyn SearchIndex>,
        cache: Arc<dyn Cache>,
        bus: Arc<dyn Bus>,
        settings: WriterSettings,
    ) -> Self {
        Self {
            store,
            search,
            cache,
            bus,
            settings,
            index_order: Arc::default(),
            app_ids: Arc::new(quick_cache::sync::Cache::new(100_000)),
            chat_ids: Arc::new(quick_cache::sync::Cache::new(1_000_000)),
        }
    }

    /// Consumes the three queues until the bus closes and they are drained.
    /// `stopping` is cancelled before the bus closes: a subscription that ends without it has
    /// failed (e.g. lost its broker for good), which must stop the process, not go unnoticed.
    pub async fn run(self, stopping: CancellationToken) -> Result<()> {
        let tasks = [
            Queue::CreateChats,
            Queue::CreateMessages,
            Queue::UpdateMessages,
        ]
        .map(|queue| tokio::spawn(self.clone().consume(queue, stopping.clone())));
        // The first consumer to fail ends the role (and, supervised, the process).
        futures::future::try_join_all(
            tasks.map(|t| async move { t.await.map_err(anyhow::Error::from)? }),
        )
        .await?;
        tracing::info!("writer drained");
        Ok(())
    }

    async fn consume(self, queue: Queue, stopping: CancellationToken) -> Result<()> {
        let mut subscription = self
            .bus
            .subscribe(queue, self.settings.batch_max * 2)
            .await?;
        while let Some(first) = subscription.next().await {
            let mut batch = vec![first];
            // Larger batches for later persistence: on MariaDB a row of a ~200-item insert
            // cost a fifth less of the server's CPU than one of a ~50-item insert, the
            // FULLTEXT index being most of it (bench/RESULTS.md, 2026-12-07, second session).
            if !self.settings.linger.is_zero() {
                tokio::time::sleep(self.settings.linger).await;
            }
            while batch.len() < self.settings.batch_max {
                match subscription.try_next() {
                    Some(d) => batch.push(d),
                    None => break,
                }
            }
            metrics::histogram!("parley_writer_batch_size", "queue" => queue.name())
                .record(batch.len() as f64);
            match queue {
                Queue::CreateChats => self.process(batch, Self::write_chats).await,
                Queue::CreateMessages => self.process(batch, Self::write_messages).await,
                Queue::UpdateMessages => self.process(batch, Self::write_edits).await,
                _ => unreachable!("the writer consumes the write queues only"),
            }
        }
        if !stopping.is_cancelled() {
            anyhow::bail!("the {} subscription ended before shutdown", queue.name());
        }
        Ok(())
    }

    /// Decodes a batch, dead-lettering what is not valid JSON, and writes the rest.
    async fn process<T, F>(&self, batch: Vec<Delivery>, write: F)
    where
        T: DeserializeOwned + Send + 'static,
        F: for<'a> Fn(&'a Self, &'a [Item<T>]) -> BoxFuture<'a, Result<Verdicts>>
            + Copy
            + Send
            + Sync,
    {
        let mut items = Vec::with_capacity(batch.len());
        for delivery in batch {
            match serde_json::from_slice::<T>(&delivery.payload) {
                Ok(event) => items.push(Item { event, delivery }),
                Err(e) => {
                    delivery
                        .settle
                        .dead_letter(format!("malformed payload: {e}"))
                        .await
                }
            }
        }
        self.write_splitting(items, write).await;
    }

    /// Writes `items`; on failure splits them to isolate the poison item, which alone is
    /// retried or dead-lettered.
    fn write_splitting<'a, T, F>(&'a self, items: Vec<Item<T>>, write: F) -> BoxFuture<'a, ()>
    where
        T: Send + 'static,
        F: for<'b> Fn(&'b Self, &'b [Item<T>]) -> BoxFuture<'b, Result<Verdicts>>
            + Copy
            + Send
            + Sync
            + 'a,
    {
        Box::pin(async move {
            if items.is_empty() {
                return;
            }
            match write(self, &items).await {
                Ok(verdicts) => self.settle(items, verdicts).await,
                Err(e) if items.len() == 1 => {
                    let item = items.into_iter().next().unwrap();
                    // An outage of the database, search or cache is not the item's fault:
                    // waiting it out must not use up its attempts (a 201 is a promise).
                    if self.a_dependency_is_down(&e).await {
                        self.wait(item.delivery, format!("{e:#}")).await;
                    } else {
                        self.fail(item.delivery, format!("{e:#}")).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), size = items.len(), "batch failed; splitting it");
                    let mut items = items;
                    let second = items.split_off(items.len() / 2);
                    self.write_splitting(items, write).await;
                    self.write_splitting(second, write).await;
                }
            }
        })
    }

    async fn settle<T>(&self, items: Vec<Item<T>>, verdicts: Verdicts) {
        for (i, item) in items.into_iter().enumerate() {
            match verdicts.get(&i) {
                None => item.delivery.settle.ack().await,
                Some(Verdict::Wait(reason)) => self.wait(item.delivery, reason.clone()).await,
                Some(Verdict::DeadLetter(reason)) => {
                    item.delivery.settle.dead_letter(reason.clone()).await
                }
            }
        }
    }

    async fn fail(&self, delivery: Delivery, reason: String) {
        self.settings.retry.fail(delivery, reason).await;
    }

    /// Retries an item that waits for something else (its parent's create, a backend's
    /// recovery) with backoff, on a budget far beyond `MAX_ATTEMPTS` (about 25 minutes with
    /// the default backoff), so a busy writer or a short outage never dead-letters it.
    async fn wait(&self, delivery: Delivery, reason: String) {
        if delivery.attempt >= WAIT_ATTEMPTS {
            let reason = format!("{reason} (still so after {} deliveries)", delivery.attempt);
            tracing::error!(%reason, "dead-lettering an item");
            metrics::counter!("parley_dead_letters_total").increment(1);
            delivery.settle.dead_letter(reason).await;
        } else {
            let delay = self.settings.retry.delay(delivery.attempt);
            tracing::debug!(%reason, attempt = delivery.attempt, ?delay, "item waits");
            metrics::counter!("parley_retries_total").increment(1);
            delivery.settle.retry(delay, reason).await;
        }
    }

    async fn a_dependency_is_down(&self, error: &anyhow::Error) -> bool {
        crate::store::is_unavailable(error)
            || self.store.ping().await.is_err()
            || self.search.ping().await.is_err()
            || self.cache.ping().await.is_err()
    }

    async fn app_id(&self, token: &AppToken) -> Result<Option<i64>> {
        if let Some(id) = self.app_ids.get(token) {
            return Ok(Some(id));
        }
        let id = self.store.application(token).await?.map(|a| a.id);
        if let Some(id) = id {
            self.app_ids.insert(token.clone(), id);
        }
        Ok(id)
    }

    async fn chat_id(&self, token: &AppToken, number: i64) -> Result<Option<i64>> {
        let Some(app_id) = self.app_id(token).await? else {
            return Ok(None);
        };
        if let Some(id) = self.chat_ids.get(&(app_id, number)) {
            return Ok(Some(id));
        }
        let id = self.store.chat(app_id, number).await?.map(|c| c.id);
        if let Some(id) = id {
            self.chat_ids.insert((app_id, number), id);
        }
        Ok(id)
    }

    fn write_chats<'a>(
        &'a self,
        items: &'a [Item<ChatCreated>],
    ) -> BoxFuture<'a, Result<Verdicts>> {
        Box::pin(async move {
            let mut verdicts = Verdicts::new();
            let mut rows = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let e = &item.event;
                match self.app_id(&e.token).await? {
                    Some(application_id) => rows.push(NewChat {
                        application_id,
                        number: e.chat_number,
                        creator_id: e.creator_id,
                        created_at: e.created_at,
                    }),
                    None => {
                        verdicts.insert(
                            i,
                            Verdict::DeadLetter(format!("unknown application {}", e.token)),
                        );
                    }
                }
            }
            self.store.insert_chats(&rows).await?;
            let apps: Vec<i64> = rows
                .iter()
                .map(|r| r.application_id)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            self.cache.add_to_set(DIRTY_APPLICATIONS, &apps).await?;
            Ok(verdicts)
        })
    }

    fn write_messages<'a>(
        &'a self,
        items: &'a [Item<MessageCreated>],
    ) -> BoxFuture<'a, Result<Verdicts>> {
        Box::pin(async move {
            let mut verdicts = Verdicts::new();
            let mut rows = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let e = &item.event;
                match self.chat_id(&e.token, e.chat_number).await? {
                    Some(chat_id) => rows.push(NewMessage {
                        chat_id,
                        number: e.message_number,
                        sender_id: e.sender_id,
                        body: e.body.clone(),
                        created_at: e.created_at,
                    }),
                    // Invariant 4: the chat's own create may still be in flight.
                    None => {
                        verdicts.insert(
                            i,
                            Verdict::Wait(format!(
                                "chat {} of {} not persisted yet",
                                e.chat_number, e.token
                            )),
                        );
                    }
                }
            }
            let order = self.index_order.lock().await;
            let inserted = timed("store", self.store.insert_messages(&rows)).await?;
            // Only new rows are indexed: a redelivered create must not overwrite the indexed
            // body of a message edited since. A crash between the commit and indexing is
            // repaired by `search::catch_up` from the store at the next start.
            let bodies: HashMap<(i64, i64), &str> = rows
                .iter()
                .map(|r| ((r.chat_id, r.number), r.body.as_str()))
                .collect();
            let mut docs: Vec<SearchDoc> = inserted
                .iter()
                .map(|k| SearchDoc {
                    id: k.id,
                    chat_id: k.chat_id,
                    number: k.number,
                    body: bodies[&(k.chat_id, k.number)].to_owned(),
                })
                .collect();
            docs.extend(self.redelivered_docs(items, &rows, &inserted).await?);
            timed("search", self.search.upsert(docs)).await?;
            drop(order);
            let chats: Vec<i64> = rows
                .iter()
                .map(|r| r.chat_id)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            self.invalidate_pages(&chats).await;
            self.cache.add_to_set(DIRTY_CHATS, &chats).await?;
            Ok(verdicts)
        })
    }

    fn write_edits<'a>(
        &'a self,
        items: &'a [Item<MessageEdited>],
    ) -> BoxFuture<'a, Result<Verdicts>> {
        Box::pin(async move {
            let mut verdicts = Verdicts::new();
            let mut edits = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                let e = &item.event;
                match self.chat_id(&e.token, e.chat_number).await? {
                    Some(chat_id) => edits.push((
                        i,
                        MessageEdit {
                            chat_id,
                            number: e.message_number,
                            sender_id: e.sender_id,
                            body: e.body.clone(),
                            version: e.version,
                            updated_at: e.updated_at,
                        },
                    )),
                    None => {
                        verdicts.insert(
                            i,
                            Verdict::Wait(format!(
                                "chat {} of {} not persisted yet",
                                e.chat_number, e.token
                            )),
                        );
                    }
                }
            }
            // Oldest version first, so the newest edit of a message in this batch lands last.
            edits.sort_by_key(|(_, e)| e.version);
            let rows: Vec<MessageEdit> = edits.iter().map(|(_, e)| e.clone()).collect();
            let order = self.index_order.lock().await;
            let outcomes = self.store.edit_messages(&rows).await?;
            let mut latest: BTreeMap<(i64, i64), (i64, String)> = BTreeMap::new();
            for ((i, edit), outcome) in edits.into_iter().zip(outcomes) {
                match outcome {
                    EditOutcome::Applied { id } => {
                        latest.insert((edit.chat_id, edit.number), (id, edit.body));
                    }
                    EditOutcome::Superseded => {}
                    EditOutcome::Missing => {
                        verdicts.insert(
                            i,
                            Verdict::Wait(format!("message {} not persisted yet", edit.number)),
                        );
                    }
                    EditOutcome::NotSender => {
                        verdicts.insert(
                            i,
                            Verdict::DeadLetter("only the message's sender may edit it".into()),
                        );
                    }
                }
            }
            let chats: Vec<i64> = latest
                .keys()
                .map(|(c, _)| *c)
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let docs = latest
                .into_iter()
                .map(|((chat_id, number), (id, body))| SearchDoc {
                    id,
                    chat_id,
                    number,
                    body,
                })
                .collect();
            self.search.upsert(docs).await?;
            drop(order);
            // Edits are not covered by catch-up (ids do not move): ack only once durable.
            timed("search", self.search.flush()).await?;
            self.invalidate_pages(&chats).await;
            Ok(verdicts)
        })
    }

    /// A redelivered create that is already stored may have been committed by a writer that
    /// died before indexing it (an index that acks per request, such as Elasticsearch, has no
    /// store-id mark to catch up from): index it again, with its stored (possibly edited) body.
    async fn redelivered_docs(
        &self,
        items: &[Item<MessageCreated>],
        rows: &[NewMessage],
        inserted: &[StoredKey],
    ) -> Result<Vec<SearchDoc>> {
        let new: HashSet<(i64, i64)> = inserted.iter().map(|k| (k.chat_id, k.number)).collect();
        let wanted: HashSet<(i64, i64)> = rows.iter().map(|r| (r.chat_id, r.number)).collect();
        let mut by_chat: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
        for item in items.iter().filter(|i| i.delivery.attempt > 1) {
            let e = &item.event;
            if let Some(chat_id) = self.chat_id(&e.token, e.chat_number).await? {
                let key = (chat_id, e.message_number);
                if wanted.contains(&key) && !new.contains(&key) {
                    by_chat.entry(chat_id).or_default().push(e.message_number);
                }
            }
        }
        let mut docs = Vec::new();
        for (chat_id, numbers) in by_chat {
            for m in self.store.messages_by_number(chat_id, &numbers).await? {
                docs.push(SearchDoc {
                    // Not a new row: 0 leaves an engine's durable store-id mark where it is.
                    id: 0,
                    chat_id,
                    number: m.number,
                    body: m.body,
                });
            }
        }
        Ok(docs)
    }

    async fn invalidate_pages(&self, chat_ids: &[i64]) {
        for chat_id in chat_ids {
            if let Err(e) = self
                .cache
                .incr(&page_generation_key(*chat_id), PAGE_GENERATION_TTL)
                .await
            {
                // A failed bump leaves pages cached for at most their TTL.
                tracing::warn!(chat_id, error = %e, "could not invalidate cached pages");
            }
        }
    }
}

/// Outlives any cached page, so a generation never restarts while its pages live.
const PAGE_GENERATION_TTL: Duration = Duration::from_secs(24 * 3600);

/// Runs one phase of a batch, recording its duration.
async fn timed<T>(phase: &'static str, work: impl std::future::Future<Output = T>) -> T {
    let start = std::time::Instant::now();
    let result = work.await;
    metrics::histogram!("parley_writer_phase_duration_seconds", "phase" => phase)
        .record(start.elapsed().as_secs_f64());
    result
}

/// Per-item outcomes other than "ack", by index in the batch.
type Verdicts = HashMap<usize, Verdict>;

#[derive(Debug, Clone)]
enum Verdict {
    /// Waits for something else to happen first (its parent's create): retried, not failed.
    Wait(String),
    DeadLetter(String),
}

/// Deliveries of an item that waits (see `Writer::wait`) before it is dead-lettered.
const WAIT_ATTEMPTS: u32 = 60;
