//! NATS JetStream bus. One file-storage stream with work-queue retention (`{ns}_PARLEY`)
//! holds a subject per [`Queue`] (`{ns}.{queue}`); each queue has a durable pull consumer
//! with explicit acks, `max_ack_pending` = the subscriber's prefetch, and no `max_deliver`:
//! the consumers dead-letter by attempt themselves. A publish returns once
//! JetStream has stored the message (its publish ack), or fails with `Unavailable` within
//! [`PUBLISH_TIMEOUT`]. Dead letters go to `{ns}.dead.{queue}` in a second, limits-retention
//! stream (`{ns}_PARLEY_DEAD`) with the reason in a header; the original is acked only once
//! the dead letter is stored.

use super::*;
use anyhow::Context as _;
use async_nats::connection::State;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::{self, stream, AckKind};
use async_nats::HeaderMap;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The longest a publish waits for JetStream to store a message; past it the api answers 503.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on every JetStream API request (stream and consumer management, account info).
const API_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Unacked deliveries come back after this: also how long a crashed writer's items wait
/// before another writer gets them. Long enough for a writer batch (milliseconds to a second),
/// its splits and the wait in the subscription's buffer; an item that outlives it is
/// redelivered, which the writer's insert-if-absent makes harmless.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(10);
/// Each pull request lives this long, so a closed subscription stops within it.
const PULL_EXPIRES: Duration = Duration::from_secs(1);
const DEPTH_REFRESH: Duration = Duration::from_secs(2);
/// A dead letter whose publish failed is offered again after this.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(5);
/// Headers on a dead letter.
pub const REASON_HEADER: &str = "Parley-Dead-Letter-Reason";
pub const QUEUE_HEADER: &str = "Parley-Queue";
pub const ATTEMPT_HEADER: &str = "Parley-Attempt";

/// Stream, subject and consumer names under a namespace (empty: the plain seed names).
#[derive(Debug, Clone)]
struct Names {
    ns: String,
}

impl Names {
    fn prefixed(&self, name: &str, separator: char) -> String {
        if self.ns.is_empty() {
            name.to_owned()
        } else {
            format!("{}{separator}{name}", self.ns)
        }
    }

    fn stream(&self) -> String {
        self.prefixed("PARLEY", '_')
    }

    fn dead_stream(&self) -> String {
        self.prefixed("PARLEY_DEAD", '_')
    }

    fn subject(&self, queue: Queue) -> String {
        self.prefixed(queue.name(), '.')
    }

    fn dead_subject(&self, queue: Queue) -> String {
        self.prefixed(&format!("dead.{}", queue.name()), '.')
    }

    /// Every queue's subject, for the stream and for depth lookups.
    fn subjects_filter(&self) -> String {
        self.prefixed(">", '.')
    }

    /// Durable names may not contain dots (`email.send`).
    fn consumer(queue: Queue) -> String {
        format!("parley_{}", queue.name().replace('.', "_"))
    }
}

/// Messages stored per subject of the work-queue stream, `None` when the last refresh failed.
type Depths = Arc<RwLock<Option<HashMap<String, usize>>>>;

pub struct NatsBus {
    client: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    ack_wait: Duration,
    closed: CancellationToken,
    depths: Depths,
    /// Stops the depth refresher when the bus is dropped.
    _refresher: DropGuard,
}

impl NatsBus {
    /// Connects, creates the two streams if missing (or adds the subjects of new queues to
    /// them), and reads the queue depths once. Fails within a few seconds when the server
    /// does not answer.
    pub async fn connect(url: &str, namespace: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            namespace
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-'),
            "the namespace {namespace:?} must be letters, digits, '_' or '-' (it prefixes NATS subjects and stream names)"
        );
        let names = Names {
            ns: namespace.to_owned(),
        };
        let client = async_nats::ConnectOptions::new()
            .name("parley")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(API_TIMEOUT))
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        let js = jetstream::ContextBuilder::new()
            .timeout(API_TIMEOUT)
            .build(client.clone());

        let subjects = Queue::ALL.map(|q| names.subject(q)).to_vec();
        ensure_stream(
            &js,
            stream::Config {
                name: names.stream(),
                subjects,
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;
        ensure_stream(
            &js,
            stream::Config {
                name: names.dead_stream(),
                subjects: vec![names.prefixed("dead.>", '.')],
                retention: stream::RetentionPolicy::Limits,
                storage: stream::StorageType::File,
                ..Default::default()
            },
        )
        .await?;

        let depths: Depths = Arc::default();
        *depths.write().unwrap() = read_depths(&js, &names).await.ok();
        let stop = CancellationToken::new();
        tokio::spawn(refresh_depths(
            js.clone(),
            names.clone(),
            depths.clone(),
            stop.clone(),
        ));
        Ok(Self {
            client,
            js,
            names,
            ack_wait: DEFAULT_ACK_WAIT,
            closed: CancellationToken::new(),
            depths,
            _refresher: stop.drop_guard(),
        })
    }

    /// The consumers' ack wait, for subscriptions made after this call (tests use a short one).
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }
}

/// Creates the stream, or adds the subjects it lacks. Subjects are never removed, so an older
/// process cannot take away a queue a newer one added.
async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> anyhow::Result<()> {
    let name = config.name.clone();
    let mut existing = js
        .get_or_create_stream(config.clone())
        .await
        .with_context(|| format!("creating the JetStream stream {name}"))?;
    let info = existing
        .info()
        .await
        .with_context(|| format!("reading the JetStream stream {name}"))?;
    let missing: Vec<String> = config
        .subjects
        .into_iter()
        .filter(|s| !info.config.subjects.contains(s))
        .collect();
    if !missing.is_empty() {
        let mut updated = info.config.clone();
        updated.subjects.extend(missing);
        js.update_stream(updated)
            .await
            .with_context(|| format!("adding subjects to the JetStream stream {name}"))?;
    }
    Ok(())
}

/// Messages stored per queue subject. In a work-queue stream a message stays until acked, so
/// this is waiting plus delivered-but-unsettled, whichever process consumes.
async fn read_depths(
    js: &jetstream::Context,
    names: &Names,
) -> anyhow::Result<HashMap<String, usize>> {
    let stream = js.get_stream_no_info(names.stream()).await?;
    let mut subjects = stream.info_with_subjects(names.subjects_filter()).await?;
    let mut depths = HashMap::new();
    while let Some(entry) = subjects.next().await {
        let (subject, count) = entry?;
        depths.insert(subject, count);
    }
    Ok(depths)
}

async fn refresh_depths(
    js: jetstream::Context,
    names: Names,
    depths: Depths,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(DEPTH_REFRESH) => {}
            _ = stop.cancelled() => return,
        }
        let read = tokio::time::timeout(API_TIMEOUT, read_depths(&js, &names)).await;
        let fresh = match read {
            Ok(Ok(d)) => Some(d),
            Ok(Err(e)) => {
                tracing::debug!(error = %format!("{e:#}"), "reading NATS queue depths");
                None
            }
            Err(_) => None,
        };
        *depths.write().unwrap() = fresh;
    }
}

fn unavailable(why: impl Into<String>) -> PublishError {
    PublishError::Unavailable(why.into())
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, queue: Queue, payload: Vec<u8>) -> Result<(), PublishError> {
        if self.closed.is_cancelled() {
            return Err(unavailable("the server is shutting down"));
        }
        // While reconnecting, the client would queue the message and the caller would wait
        // for the timeout; answer at once instead.
        if self.client.connection_state() != State::Connected {
            return Err(unavailable("not connected to NATS"));
        }
        let subject = self.names.subject(queue);
        let stored = async {
            let ack = self.js.publish(subject, payload.into()).await?;
            ack.await
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, stored).await {
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(e)) => Err(unavailable(format!("NATS did not store the message: {e}"))),
            Err(_) => Err(unavailable(format!(
                "NATS did not confirm the message within {PUBLISH_TIMEOUT:?}"
            ))),
        }
    }

    async fn subscribe(
        &self,
        queue: Queue,
        prefetch: usize,
    ) -> anyhow::Result<Box<dyn Subscription>> {
        let prefetch = prefetch.max(1);
        let stream = self
            .js
            .get_stream_no_info(self.names.stream())
            .await
            .context("opening the JetStream work-queue stream")?;
        let consumer: PullConsumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(Names::consumer(queue)),
                filter_subject: self.names.subject(queue),
                deliver_policy: DeliverPolicy::All,
                ack_policy: AckPolicy::Explicit,
                ack_wait: self.ack_wait,
                // Unlimited: the consumers dead-letter by attempt themselves; a server-side cap
                // would strand an item whose dead-lettering failed, neither redelivered nor dead.
                max_deliver: -1,
                max_ack_pending: prefetch as i64,
                ..Default::default()
            })
            .await
            .with_context(|| format!("creating the JetStream consumer of {}", queue.name()))?;
        // The server delivers at most `prefetch` unacked messages, so the buffer never holds
        // more than that.
        let (buffer, received) = mpsc::channel(prefetch);
        tokio::spawn(pull(consumer, prefetch, buffer, self.closed.clone()));
        Ok(Box::new(NatsSubscription {
            received,
            client: self.client.clone(),
            dead: Arc::new(DeadLetters {
                js: self.js.clone(),
                queue,
                subject: self.names.dead_subject(queue),
            }),
        }))
    }

    fn depth(&self, queue: Queue) -> Option<usize> {
        let depths = self.depths.read().unwrap();
        let depths = depths.as_ref()?;
        // Subjects without messages are not listed.
        Some(depths.get(&self.names.subject(queue)).copied().unwrap_or(0))
    }

    async fn ping(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.client.connection_state() == State::Connected,
            "not connected to NATS"
        );
        // The work-queue stream's info: JetStream answers and the stream exists. (Account
        // info would do too, but 0.51 cannot parse a 2.9 server's reply.)
        tokio::time::timeout(API_TIMEOUT, self.js.get_stream(self.names.stream()))
            .await
            .context("NATS did not answer in time")?
            .context("reading the JetStream work-queue stream")?;
        Ok(())
    }

    fn close(&self) {
        self.closed.cancel();
    }
}

/// Pulls batches into the subscription's buffer until the bus closes or the subscription is
/// dropped. A pull request in progress is finished, not abandoned: what the server sends for
/// it would otherwise wait out the ack wait before anyone else could have it.
async fn pull(
    consumer: PullConsumer,
    batch: usize,
    buffer: mpsc::Sender<jetstream::Message>,
    closed: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    while !closed.is_cancelled() && !buffer.is_closed() {
        let request = consumer
            .batch()
            .max_messages(batch)
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut messages = match request {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, ?backoff, "NATS pull request failed");
                pause(&mut backoff, &closed).await;
                continue;
            }
        };
        let mut failed = false;
        while let Some(message) = messages.next().await {
            match message {
                Ok(m) => {
                    if buffer.send(m).await.is_err() {
                        return; // the subscription is gone
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, ?backoff, "NATS pull failed");
                    failed = true;
                    break;
                }
            }
        }
        if failed {
            pause(&mut backoff, &closed).await;
        } else {
            backoff = Duration::from_millis(100);
        }
    }
}

async fn pause(backoff: &mut Duration, closed: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = closed.cancelled() => {}
    }
    *backoff = (*backoff * 2).min(Duration::from_secs(5));
}

struct NatsSubscription {
    received: mpsc::Receiver<jetstream::Message>,
    client: async_nats::Client,
    dead: Arc<DeadLetters>,
}

impl NatsSubscription {
    fn delivery(&self, message: jetstream::Message) -> Delivery {
        let attempt = message
            .info()
            .map(|i| u32::try_from(i.delivered).unwrap_or(1).max(1))
            .unwrap_or(1);
        Delivery {
            payload: message.payload.to_vec(),
            attempt,
            settle: Box::new(NatsSettle {
                message,
                attempt,
                dead: self.dead.clone(),
            }),
        }
    }
}

#[async_trait]
impl Subscription for NatsSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        match self.received.recv().await {
            Some(message) => Some(self.delivery(message)),
            None => {
                // Closed and drained: make sure the acks of the last batch left the process.
                if tokio::time::timeout(API_TIMEOUT, self.client.flush())
                    .await
                    .is_err()
                {
                    tracing::warn!("NATS flush timed out; the last acks may be redelivered");
                }
                None
            }
        }
    }

    fn try_next(&mut self) -> Option<Delivery> {
        let message = self.received.try_recv().ok()?;
        Some(self.delivery(message))
    }
}

struct DeadLetters {
    js: jetstream::Context,
    queue: Queue,
    subject: String,
}

struct NatsSettle {
    message: jetstream::Message,
    attempt: u32,
    dead: Arc<DeadLetters>,
}

/// Header values are one line; reasons carry error chains.
fn header_value(reason: &str) -> String {
    reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect()
}

#[async_trait]
impl Settle for NatsSettle {
    async fn ack(self: Box<Self>) {
        // A lost ack means one redelivery, which the writer absorbs (invariant 3).
        if let Err(e) = self.message.ack().await {
            tracing::warn!(error = %e, "acking a NATS message");
        }
    }

    async fn retry(self: Box<Self>, delay: Duration, reason: String) {
        tracing::debug!(%reason, attempt = self.attempt, ?delay, "NATS redelivery requested");
        if let Err(e) = self.message.ack_with(AckKind::Nak(Some(delay))).await {
            tracing::warn!(error = %e, "nacking a NATS message; it returns after the ack wait");
        }
    }

    async fn dead_letter(self: Box<Self>, reason: String) {
        let mut headers = HeaderMap::new();
        headers.insert(REASON_HEADER, header_value(&reason));
        headers.insert(QUEUE_HEADER, self.dead.queue.name());
        headers.insert(ATTEMPT_HEADER, self.attempt.to_string());
        let stored = async {
            let ack = self
                .dead
                .js
                .publish_with_headers(
                    self.dead.subject.clone(),
                    headers,
                    self.message.payload.clone(),
                )
                .await?;
            ack.await
        };
        let outcome = match tokio::time::timeout(PUBLISH_TIMEOUT, stored).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no confirmation in time".to_owned()),
        };
        match outcome {
            // Only now may the original leave the work queue.
            Ok(()) => {
                if let Err(e) = self.message.ack().await {
                    tracing::warn!(error = %e, "acking a dead-lettered NATS message");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, %reason, "storing a dead letter failed; the item stays queued");
                let _ = self
                    .message
                    .ack_with(AckKind::Nak(Some(DEAD_LETTER_RETRY)))
                    .await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{namespace, Engine};
    use std::collections::HashSet;
    use std::net::SocketAddr;
    use std::time::Instant;
    use tokio::net::{TcpListener, TcpStream};

    const WAIT: Duration = Duration::from_secs(10);

    /// Deletes a test's streams when dropped, also when the test fails.
    struct Cleanup {
        url: String,
        names: Names,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let (url, names) = (self.url.clone(), self.names.clone());
            // Drop cannot await; a thread with its own runtime can.
            let deleted = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let js = jetstream::new(async_nats::connect(&url).await?);
                    for name in [names.stream(), names.dead_stream()] {
                        js.delete_stream(&name).await?;
                    }
                    anyhow::Ok(())
                })
            })
            .join();
            if !matches!(deleted, Ok(Ok(()))) && !std::thread::panicking() {
                panic!("deleting the test streams of {:?} failed", self.names.ns);
            }
        }
    }

    /// A bus on a fresh namespace, and the guard that deletes its streams.
    async fn bus(url: &str) -> (NatsBus, Cleanup) {
        let ns = namespace();
        let bus = NatsBus::connect(url, &ns).await.unwrap();
        let cleanup = Cleanup {
            url: url.to_owned(),
            names: Names { ns },
        };
        (bus, cleanup)
    }

    impl NatsBus {
        async fn consumer_info(&self, queue: Queue) -> async_nats::jetstream::consumer::Info {
            self.js
                .get_stream_no_info(self.names.stream())
                .await
                .unwrap()
                .consumer_info(Names::consumer(queue))
                .await
                .unwrap()
        }

        /// Messages stored on the queue's subject, read now (not the cached depth).
        async fn stored(&self, queue: Queue) -> usize {
            read_depths(&self.js, &self.names)
                .await
                .unwrap()
                .get(&self.names.subject(queue))
                .copied()
                .unwrap_or(0)
        }
    }

    async fn next(sub: &mut Box<dyn Subscription>) -> Delivery {
        tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("a delivery in time")
            .expect("the subscription is open")
    }

    /// Polls `check` until it holds, failing after [`WAIT`].
    async fn eventually<F, Fut>(what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + WAIT;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[test]
    fn names_follow_the_namespace_rule() {
        let plain = Names { ns: String::new() };
        assert_eq!(plain.stream(), "PARLEY");
        assert_eq!(plain.dead_stream(), "PARLEY_DEAD");
        assert_eq!(plain.subject(Queue::EmailSend), "email.send");
        assert_eq!(plain.dead_subject(Queue::EmailSend), "dead.email.send");
        let ns = Names { ns: "t1".into() };
        assert_eq!(ns.stream(), "t1_PARLEY");
        assert_eq!(ns.subject(Queue::CreateChats), "t1.create_chats");
        assert_eq!(ns.dead_subject(Queue::CreateChats), "t1.dead.create_chats");
        assert_eq!(ns.subjects_filter(), "t1.>");
        assert_eq!(Names::consumer(Queue::EmailSend), "parley_email_send");
    }

    #[tokio::test]
    async fn a_namespace_that_would_break_subjects_is_refused() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        for bad in ["a.b", "a b", "a*", ">"] {
            assert!(NatsBus::connect(&url, bad).await.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn published_items_are_consumed_and_acked() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        let (bus, _cleanup) = bus(&url).await;
        bus.ping().await.unwrap();
        bus.publish(Queue::EmailSend, b"hello".to_vec())
            .await
            .unwrap();
        assert_eq!(bus.stored(Queue::EmailSend).await, 1);
        eventually("the cached depth sees the item", || async {
            bus.depth(Queue::EmailSend) == Some(1)
        })
        .await;

        let mut sub = bus.subscribe(Queue::EmailSend, 8).await.unwrap();
        let delivery = next(&mut sub).await;
        assert_eq!(delivery.payload, b"hello");
        assert_eq!(delivery.attempt, 1);
        assert!(sub.try_next().is_none(), "one item, one delivery");
        delivery.settle.ack().await;
        eventually("the ack empties the work queue", || async {
            bus.stored(Queue::EmailSend).await == 0
        })
        .await;
        eventually("the cached depth follows", || async {
            bus.depth(Queue::EmailSend) == Some(0)
        })
        .await;
        assert_eq!(bus.consumer_info(Queue::EmailSend).await.num_redelivered, 0);
    }

    #[tokio::test]
    async fn an_unsettled_item_comes_back_after_the_ack_wait() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        let ack_wait = Duration::from_secs(1);
        let (bus, _cleanup) = bus(&url).await;
        let bus = bus.with_ack_wait(ack_wait);
        bus.publish(Queue::CreateChats, b"chat".to_vec())
            .await
            .unwrap();
        let mut sub = bus.subscribe(Queue::CreateChats, 8).await.unwrap();
        let first = next(&mut sub).await;
        let received = Instant::now();
        assert_eq!(first.attempt, 1);
        drop(first); // the consumer "crashed" before settling

        let again = next(&mut sub).await;
        let waited = received.elapsed();
        assert_eq!(again.payload, b"chat");
        assert_eq!(again.attempt, 2);
        assert!(
            waited >= ack_wait - Duration::from_millis(100),
            "redelivered after {waited:?}, before the ack wait"
        );
        again.settle.ack().await;
        eventually("acked", || async {
            bus.stored(Queue::CreateChats).await == 0
        })
        .await;
    }

    #[tokio::test]
    async fn a_retry_comes_back_after_its_delay() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        let (bus, _cleanup) = bus(&url).await;
        bus.publish(Queue::CreateMessages, b"m".to_vec())
            .await
            .unwrap();
        let mut sub = bus.subscribe(Queue::CreateMessages, 8).await.unwrap();
        let first = next(&mut sub).await;
        let delay = Duration::from_millis(1500);
        let retried = Instant::now();
        first.settle.retry(delay, "chat not there yet".into()).await;

        let again = next(&mut sub).await;
        let waited = retried.elapsed();
        assert_eq!(again.attempt, 2);
        assert_eq!(again.payload, b"m");
        assert!(waited >= delay, "redelivered after {waited:?}");
        assert!(
            waited < DEFAULT_ACK_WAIT,
            "came back through the ack wait, not the delay"
        );
        again.settle.ack().await;
    }

    #[tokio::test]
    async fn a_dead_letter_keeps_the_payload_and_reason_and_leaves_the_queue() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        let (bus, _cleanup) = bus(&url).await;
        bus.publish(Queue::UpdateMessages, b"poison".to_vec())
            .await
            .unwrap();
        let mut sub = bus.subscribe(Queue::UpdateMessages, 8).await.unwrap();
        let delivery = next(&mut sub).await;
        delivery
            .settle
            .dead_letter("bad edit:\nno such message".into())
            .await;

        let dead = bus
            .js
            .get_stream(bus.names.dead_stream())
            .await
            .unwrap()
            .get_last_raw_message_by_subject(&bus.names.dead_subject(Queue::UpdateMessages))
            .await
            .expect("the dead letter is stored");
        assert_eq!(dead.payload.as_ref(), b"poison");
        assert_eq!(
            dead.headers.get(REASON_HEADER).map(|v| v.as_str()),
            Some("bad edit: no such message")
        );
        assert_eq!(
            dead.headers.get(QUEUE_HEADER).map(|v| v.as_str()),
            Some("update_messages")
        );
        assert_eq!(
            dead.headers.get(ATTEMPT_HEADER).map(|v| v.as_str()),
            Some("1")
        );
        eventually("the original is acked", || async {
            bus.stored(Queue::UpdateMessages).await == 0
        })
        .await;
    }

    #[tokio::test]
    async fn prefetch_bounds_unsettled_deliveries() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        let (bus, _cleanup) = bus(&url).await;
        for i in 0..10u8 {
            bus.publish(Queue::CreateMessages, vec![i]).await.unwrap();
        }
        let mut sub = bus.subscribe(Queue::CreateMessages, 3).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(next(&mut sub).await);
        }
        // A fourth must not come while three are unsettled.
        let fourth = tokio::time::timeout(Duration::from_secs(2), sub.next()).await;
        assert!(fourth.is_err(), "a fourth delivery beyond the prefetch");
        let info = bus.consumer_info(Queue::CreateMessages).await;
        assert_eq!(info.num_ack_pending, 3);
        assert_eq!(info.num_pending, 7);

        held.pop().unwrap().settle.ack().await;
        let fourth = next(&mut sub).await;
        assert_eq!(fourth.attempt, 1);
        held.push(fourth);
        for d in held {
            d.settle.ack().await;
        }
    }

    #[tokio::test]
    async fn a_thousand_concurrent_publishes_are_consumed_exactly_once() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        let (bus, _cleanup) = bus(&url).await;
        futures::future::try_join_all(
            (0..1000u32).map(|i| bus.publish(Queue::CreateMessages, i.to_string().into_bytes())),
        )
        .await
        .unwrap();
        assert_eq!(bus.stored(Queue::CreateMessages).await, 1000);

        let mut sub = bus.subscribe(Queue::CreateMessages, 200).await.unwrap();
        // As the writer does: wait for one, then take what is already buffered.
        let (mut seen, mut batches) = (HashSet::new(), 0);
        while seen.len() < 1000 {
            let mut batch = vec![next(&mut sub).await];
            while let Some(d) = sub.try_next() {
                batch.push(d);
            }
            batches += 1;
            for d in batch {
                assert_eq!(d.attempt, 1);
                let n: u32 = std::str::from_utf8(&d.payload).unwrap().parse().unwrap();
                assert!(seen.insert(n), "{n} delivered twice");
                d.settle.ack().await;
            }
        }
        assert_eq!(seen, (0..1000).collect());
        assert!(
            batches < 1000,
            "try_next never handed out a buffered delivery"
        );
        eventually("every ack reached the server", || async {
            bus.stored(Queue::CreateMessages).await == 0
        })
        .await;
        let info = bus.consumer_info(Queue::CreateMessages).await;
        assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
        assert_eq!(info.num_redelivered, 0);
    }

    #[tokio::test]
    async fn close_refuses_publishes_and_drains_subscriptions() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        let (bus, _cleanup) = bus(&url).await;
        for i in 0..3u8 {
            bus.publish(Queue::CreateChats, vec![i]).await.unwrap();
        }
        let mut sub = bus.subscribe(Queue::CreateChats, 8).await.unwrap();
        let first = next(&mut sub).await;
        bus.close();
        assert!(matches!(
            bus.publish(Queue::CreateChats, b"late".to_vec()).await,
            Err(PublishError::Unavailable(_))
        ));

        // What was received is still handed out, then the subscription ends.
        let mut received = vec![first];
        loop {
            match tokio::time::timeout(WAIT, sub.next()).await {
                Ok(Some(d)) => received.push(d),
                Ok(None) => break,
                Err(_) => panic!("a closed subscription did not end"),
            }
        }
        let count = received.len();
        // Settling still works after close (a draining writer acks its last batch).
        for d in received {
            d.settle.ack().await;
        }
        eventually("acks after close reach the server", || async {
            bus.stored(Queue::CreateChats).await == 3 - count
        })
        .await;
    }

    #[tokio::test]
    async fn connecting_to_a_dead_port_fails_fast() {
        let started = Instant::now();
        let result = NatsBus::connect("nats://127.0.0.1:1", &namespace()).await;
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// A TCP relay to the server that can stop forwarding while keeping the sockets open
    /// (a hung broker), or drop everything (a dead one).
    struct Relay {
        addr: SocketAddr,
        freeze: CancellationToken,
        cut: CancellationToken,
    }

    async fn relay(url: &str) -> Relay {
        let target = reqwest::Url::parse(url).unwrap();
        let target = format!(
            "{}:{}",
            target.host_str().unwrap(),
            target.port().unwrap_or(4222)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (freeze, cut) = (CancellationToken::new(), CancellationToken::new());
        let (f, c) = (freeze.clone(), cut.clone());
        tokio::spawn(async move {
            loop {
                let mut inbound = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap().0,
                    _ = c.cancelled() => return,
                };
                let mut outbound = TcpStream::connect(&target).await.unwrap();
                let (f, c) = (f.clone(), c.clone());
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = f.cancelled() => c.cancelled().await,
                        _ = c.cancelled() => {}
                    }
                });
            }
        });
        Relay { addr, freeze, cut }
    }

    #[tokio::test]
    async fn publishes_fail_fast_when_the_broker_hangs_or_goes_away() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        let (direct, _cleanup) = bus(&url).await;
        let ns = direct.names.ns.clone();
        let relay = relay(&url).await;
        let bus = NatsBus::connect(&format!("nats://{}", relay.addr), &ns)
            .await
            .unwrap();
        bus.publish(Queue::CreateChats, b"ok".to_vec())
            .await
            .unwrap();

        // Hung: 50 publishes in flight together each give up at the timeout, not in turn.
        relay.freeze.cancel();
        let started = Instant::now();
        let outcomes = futures::future::join_all(
            (0..50).map(|_| bus.publish(Queue::CreateChats, b"x".to_vec())),
        )
        .await;
        let waited = started.elapsed();
        assert!(outcomes
            .iter()
            .all(|o| matches!(o, Err(PublishError::Unavailable(_)))));
        assert!(
            waited < PUBLISH_TIMEOUT + Duration::from_secs(2),
            "publishes hung for {waited:?}"
        );

        // Gone: the client notices and publishes are refused at once.
        relay.cut.cancel();
        eventually("the client sees the connection drop", || async {
            bus.client.connection_state() != State::Connected
        })
        .await;
        let started = Instant::now();
        assert!(matches!(
            bus.publish(Queue::CreateChats, b"y".to_vec()).await,
            Err(PublishError::Unavailable(_))
        ));
        assert!(started.elapsed() < Duration::from_millis(100));
        assert!(bus.ping().await.is_err());
        assert_eq!(direct.stored(Queue::CreateChats).await, 1);
    }

    #[tokio::test]
    async fn a_new_queue_subject_is_added_to_an_existing_stream() {
        let Some(url) = Engine::Nats.url() else {
            return;
        };
        let ns = namespace();
        let names = Names { ns: ns.clone() };
        let _cleanup = Cleanup {
            url: url.clone(),
            names: names.clone(),
        };
        let client = async_nats::connect(&url).await.unwrap();
        let js = jetstream::new(client);
        // A stream made by an older version that knew one queue only.
        js.create_stream(stream::Config {
            name: names.stream(),
            subjects: vec![names.subject(Queue::CreateChats)],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
        let bus = NatsBus::connect(&url, &ns).await.unwrap();
        for queue in Queue::ALL {
            bus.publish(queue, b"x".to_vec()).await.unwrap();
            assert_eq!(bus.stored(queue).await, 1, "{}", queue.name());
        }
    }
}
