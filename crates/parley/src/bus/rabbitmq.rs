//! RabbitMQ (AMQP 0-9-1, lapin) adapter of the bus. Per `Queue` three durable queues, named
//! from `Queue::name()` under the namespace: `<q>` (the work), `<q>.retry` (delayed
//! redelivery: per-message expiration, dead-lettered back to `<q>`) and `<q>.dead` (failed
//! for good, with the reason in a header and the original payload).
//!
//! Publishing: persistent messages on a small pool of confirm-mode channels; `publish`
//! returns Ok only once the broker confirmed (and could route) the message, and gives up
//! after `PUBLISH_TIMEOUT`. Per queue, while a message awaits its confirm, publishes arriving
//! meanwhile travel together in the next message (an `envelope`, header `x-parley-items`),
//! which goes out when that confirm came or once it is full (up to `ENVELOPES_IN_FLIGHT` full
//! ones at once), so an idle bus adds no delay and a busy one sends far fewer, larger
//! messages. Every item of an envelope is confirmed with it. A background
//! task keeps the publishing connection healthy (reconnects with backoff) and refreshes the
//! queue depths; while it is down, publishes fail at once with `Unavailable` so the api
//! answers 503 quickly.
//!
//! Consuming: each subscription owns its connection (RabbitMQ blocks a publishing connection
//! under a resource alarm; acks must not wait behind it), with `basic_qos(prefetch)` and
//! manual acks. When that connection is lost, or cannot be opened at first, the
//! subscription reconnects for up to `CONSUMER_RECONNECT_DEADLINE`; past that it logs an
//! error and ends, and the role's supervisor stops the process. Unacked deliveries of a lost
//! connection come back from the broker flagged as redelivered.
//!
//! An envelope is delivered as one `Delivery` per item and acked once all its items are
//! settled; an item retried or dead-lettered is republished alone. If such a republish
//! fails, the whole envelope is requeued (its items already written are written again,
//! harmlessly: invariant 3).
//!
//! `Delivery::attempt` = 1 + the retries recorded in the `x-parley-retries` header, + 1 when
//! the broker flags the delivery as redelivered (a flag, not a count: several crashes in a
//! row count once). Queues take the broker's default type (classic unless the vhost says
//! otherwise); their arguments never change, so redeclaring is always accepted.

use super::*;
use crate::bus::envelope;
use crate::grouping;
use anyhow::Context as _;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::uri::AMQPUri;
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// Longest wait for a TCP connection, the AMQP handshake and the topology declarations.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait for a publisher confirm: past it the api answers 503 rather than hang.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the background task checks the publishing connection and refreshes depths.
const TICK: Duration = Duration::from_secs(1);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A consumer that cannot reconnect for this long ends (and its role stops the process).
const CONSUMER_RECONNECT_DEADLINE: Duration = Duration::from_secs(60);
/// Used when the URL sets none: a dead peer is noticed within ~2 heartbeats, not the
/// broker's default 60 s.
const HEARTBEAT_SECS: u16 = 10;
/// Confirm-mode channels shared by all publishers (round robin): lapin awaits each confirm
/// independently, so one would do; a few spread the broker-side channel work.
const PUBLISHER_CHANNELS: usize = 4;
/// When a republish to `.retry` / `.dead` fails, the delivery is requeued after this long
/// at the latest, instead of at once (no hot loop while the broker is half down).
const REQUEUE_DELAY_MAX: Duration = Duration::from_secs(5);

/// Envelopes of one queue awaiting their confirms at once; only full ones go out beside
/// another (`grouping::drive`): the larger the load, the larger the envelopes.
const ENVELOPES_IN_FLIGHT: usize = 4;
/// Most items in one envelope.
const ENVELOPE_MAX_ITEMS: usize = 128;
/// An envelope takes no more items once this large (a larger item still travels alone).
const ENVELOPE_MAX_BYTES: usize = 256 * 1024;
/// Prefetch counts broker messages; a subscription asking for `prefetch` items gets
/// `prefetch / ITEMS_PER_PREFETCH` of them. Envelopes hold one item at light load (the
/// writer's batches must still fill then: a MariaDB commit has a large fixed cost) and
/// several under heavy load; the writer's 500 envelopes stay below 128 MiB at worst
/// (every one at `ENVELOPE_MAX_BYTES`).
const ITEMS_PER_PREFETCH: usize = 2;

/// The number of items in an envelope (absent on a message holding one bare item).
const ITEMS_HEADER: &str = "x-parley-items";
/// Retries recorded so far (integer); with `redelivered`, gives `Delivery::attempt`.
const RETRIES_HEADER: &str = "x-parley-retries";
/// The last failure's reason (on `.retry` and `.dead` messages).
const REASON_HEADER: &str = "x-parley-reason";
/// On a dead letter: the queue it failed on.
const QUEUE_HEADER: &str = "x-parley-queue";

pub struct RabbitBus {
    inner: Arc<Inner>,
}

struct Inner {
    uri: AMQPUri,
    names: Names,
    /// The publishing connection; `None` while down (the background task reconnects).
    link: RwLock<Option<Arc<Link>>>,
    /// Asks the background task to check the link now (a publish saw it fail).
    wake: Arc<Notify>,
    /// `close()` was called: no more publishes; subscriptions cancel and drain.
    closed: CancellationToken,
    /// Ready messages per queue from the last refresh; `u64::MAX` = unknown.
    depths: HashMap<Queue, AtomicU64>,
    /// Per queue, the publishes waiting for a place in an envelope.
    outboxes: HashMap<Queue, mpsc::UnboundedSender<Pending>>,
}

/// A publish waiting for its envelope's confirm.
struct Pending {
    payload: Vec<u8>,
    confirmed: oneshot::Sender<Result<(), PublishError>>,
}

/// One publishing connection with its channels.
struct Link {
    connection: Connection,
    publishers: Vec<Publisher>,
    /// Passive declares for depth and ping.
    admin: Channel,
    next: AtomicUsize,
    /// Set when a publish was unroutable (a queue vanished): rebuild, which redeclares.
    stale: AtomicBool,
}

struct Publisher {
    channel: Channel,
    /// lapin numbers a confirm and queues its frames in two steps; two tasks interleaving
    /// them could swap delivery tags, so an ack or nack would answer the wrong publish.
    /// Held only while the frames are queued, never while a confirm is awaited.
    order: Mutex<()>,
}

#[derive(Clone)]
struct Names {
    namespace: String,
}

impl Names {
    fn queue(&self, queue: Queue) -> String {
        match self.namespace.as_str() {
            "" => queue.name().to_owned(),
            ns => format!("{ns}.{}", queue.name()),
        }
    }

    fn retry(&self, queue: Queue) -> String {
        format!("{}.retry", self.queue(queue))
    }

    fn dead(&self, queue: Queue) -> String {
        format!("{}.dead", self.queue(queue))
    }
}

impl RabbitBus {
    /// Connects, declares every queue (with its `.retry` and `.dead` companions) and starts
    /// the background task that keeps the connection up. Fails within `CONNECT_TIMEOUT`
    /// when the broker is unreachable.
    pub async fn connect(url: &str, namespace: &str) -> anyhow::Result<Self> {
        let mut uri: AMQPUri = url
            .parse()
            .map_err(|e: String| anyhow::anyhow!("RABBITMQ_URL is not an AMQP URL: {e}"))?;
        uri.query.heartbeat.get_or_insert(HEARTBEAT_SECS);
        let names = Names {
            namespace: namespace.to_owned(),
        };
        let link = Link::open(&uri, &names).await.with_context(|| {
            format!(
                "connecting to RabbitMQ at {}:{} (RABBITMQ_URL)",
                uri.authority.host, uri.authority.port
            )
        })?;
        let wake = Arc::new(Notify::new());
        let (outboxes, outgoing): (HashMap<_, _>, Vec<_>) = Queue::ALL
            .into_iter()
            .map(|q| {
                let (tx, rx) = mpsc::unbounded_channel();
                ((q, tx), (q, rx))
            })
            .unzip();
        let inner = Arc::new(Inner {
            uri,
            names,
            link: RwLock::new(Some(Arc::new(link))),
            wake: wake.clone(),
            closed: CancellationToken::new(),
            depths: Queue::ALL
                .into_iter()
                .map(|q| (q, AtomicU64::new(u64::MAX)))
                .collect(),
            outboxes,
        });
        tokio::spawn(maintain(Arc::downgrade(&inner), wake));
        for (queue, pending) in outgoing {
            tokio::spawn(send_envelopes(Arc::downgrade(&inner), queue, pending));
        }
        Ok(Self { inner })
    }
}

/// Keeps the publishing link healthy and the depths fresh, until the bus and everything
/// settling through it are gone.
async fn maintain(inner: Weak<Inner>, wake: Arc<Notify>) {
    let mut backoff = BACKOFF_MIN;
    loop {
        let Some(bus) = inner.upgrade() else { return };
        let link = bus.current().filter(|l| l.healthy());
        match link {
            Some(link) => bus.refresh_depths(&link).await,
            None => {
                bus.set_link(None);
                match Link::open(&bus.uri, &bus.names).await {
                    Ok(link) => {
                        tracing::info!("reconnected to RabbitMQ");
                        bus.set_link(Some(Arc::new(link)));
                        backoff = BACKOFF_MIN;
                    }
                    Err(e) => {
                        tracing::warn!(error = %format!("{e:#}"), retry_in = ?backoff, "RabbitMQ is unreachable");
                        drop(bus);
                        // Not cut short by `wake`: failing publishes must not cause a storm.
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                        continue;
                    }
                }
            }
        }
        drop(bus);
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = wake.notified() => {}
        }
    }
}

/// Sends a queue's publishes in envelopes, up to `ENVELOPES_IN_FLIGHT` at once, until the
/// bus is gone.
async fn send_envelopes(
    inner: Weak<Inner>,
    queue: Queue,
    pending: mpsc::UnboundedReceiver<Pending>,
) {
    let limits = grouping::Limits {
        in_flight: ENVELOPES_IN_FLIGHT,
        max_items: ENVELOPE_MAX_ITEMS,
        max_weight: ENVELOPE_MAX_BYTES,
    };
    grouping::drive(pending, limits, |item| item.payload.len(), |items| {
        let bus = inner.upgrade()?;
        Some(async move {
            let started = Instant::now();
            let result = bus.send_envelope(queue, &items).await;
            metrics::histogram!("parley_envelope_confirm_duration_seconds", "queue" => queue.name())
                .record(started.elapsed().as_secs_f64());
            for item in items {
                // The publisher may have gone (its request was cancelled): nothing to tell.
                let _ = item.confirmed.send(result.clone());
            }
        })
    })
    .await;
}

impl Link {
    async fn open(uri: &AMQPUri, names: &Names) -> anyhow::Result<Self> {
        let open = async {
            let connection = connect(uri).await?;
            let admin = connection.create_channel().await?;
            for queue in Queue::ALL {
                declare(&admin, names, queue).await?;
            }
            let mut publishers = Vec::with_capacity(PUBLISHER_CHANNELS);
            for _ in 0..PUBLISHER_CHANNELS {
                let channel = connection.create_channel().await?;
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await?;
                publishers.push(Publisher {
                    channel,
                    order: Mutex::new(()),
                });
            }
            anyhow::Ok(Link {
                connection,
                publishers,
                admin,
                next: AtomicUsize::new(0),
                stale: AtomicBool::new(false),
            })
        };
        timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))?
    }

    fn healthy(&self) -> bool {
        self.connection.status().connected()
            && !self.stale.load(Ordering::Relaxed)
            && self.admin.status().connected()
            && self
                .publishers
                .iter()
                .all(|p| p.channel.status().connected())
    }

    fn publisher(&self) -> &Publisher {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.publishers[i % self.publishers.len()]
    }
}

impl Publisher {
    async fn publish(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<Confirmation> {
        let options = BasicPublishOptions {
            // An unroutable message (its queue deleted) would be confirmed yet dropped.
            mandatory: true,
            immediate: false,
        };
        let mut send = std::pin::pin!(self.channel.basic_publish(
            "".into(),
            routing_key.into(),
            options,
            payload,
            properties,
        ));
        // The first poll numbers the confirm and queues the frames, both without yielding.
        let mut queued = false;
        let confirm = std::future::poll_fn(|cx| {
            if queued {
                return send.as_mut().poll(cx);
            }
            queued = true;
            let _order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
            send.as_mut().poll(cx)
        })
        .await?;
        confirm.await
    }
}

async fn connect(uri: &AMQPUri) -> lapin::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name("parley".into());
    Connection::connect_uri(uri.clone(), properties).await
}

/// Declares a queue with its companions; idempotent (same arguments every time).
async fn declare(channel: &Channel, names: &Names, queue: Queue) -> lapin::Result<()> {
    let main = names.queue(queue);
    let durable = QueueDeclareOptions::durable();
    channel
        .queue_declare(main.as_str().into(), durable, FieldTable::default())
        .await?;
    // Expired messages go back to the main queue through the default exchange. RabbitMQ
    // expires only at the head of a queue, so a short delay queued behind a longer one
    // waits for it (head-of-line): with exponential backoff, a retry may come later than
    // asked, never sooner. Per-delay queues would avoid that, at the cost of more queues.
    let mut retry_arguments = FieldTable::default();
    retry_arguments.insert("x-dead-letter-exchange".into(), long_string(""));
    retry_arguments.insert("x-dead-letter-routing-key".into(), long_string(&main));
    channel
        .queue_declare(names.retry(queue).as_str().into(), durable, retry_arguments)
        .await?;
    channel
        .queue_declare(
            names.dead(queue).as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

fn unavailable(reason: impl Into<String>) -> PublishError {
    PublishError::Unavailable(reason.into())
}

impl Inner {
    fn current(&self) -> Option<Arc<Link>> {
        self.link
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn set_link(&self, link: Option<Arc<Link>>) {
        if link.is_none() {
            for depth in self.depths.values() {
                depth.store(u64::MAX, Ordering::Relaxed);
            }
        }
        *self.link.write().unwrap_or_else(PoisonError::into_inner) = link;
    }

    async fn refresh_depths(&self, link: &Link) {
        for (queue, depth) in &self.depths {
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let declared = timeout(
                PING_TIMEOUT,
                link.admin.queue_declare(
                    self.names.queue(*queue).as_str().into(),
                    passive,
                    FieldTable::default(),
                ),
            )
            .await;
            let count = match declared {
                Ok(Ok(q)) => u64::from(q.message_count()),
                // A failed passive declare closes the admin channel: the next tick rebuilds.
                _ => u64::MAX,
            };
            depth.store(count, Ordering::Relaxed);
        }
    }

    /// Publishes the items as one persistent message (bare when alone) and waits for the
    /// broker's confirm.
    async fn send_envelope(&self, queue: Queue, items: &[Pending]) -> Result<(), PublishError> {
        let name = self.names.queue(queue);
        let count = u32::try_from(items.len()).expect("at most ENVELOPE_MAX_ITEMS");
        metrics::histogram!("parley_envelope_batch_size", "queue" => queue.name())
            .record(f64::from(count));
        if let [item] = items {
            return self.send(&name, &item.payload, persistent()).await;
        }
        // Compressed, a busy envelope stays under the broker's `queue_index_embed_msgs_below`
        // (4 KiB by default): RabbitMQ then keeps it in the queue index alone, where a larger
        // body is written and synced to the message store as well: 28% fewer broker fsyncs
        // an item at 64 connections (bench/RESULTS.md, 2026-12-07, third session).
        let (body, encoding) = envelope::encode(items.iter().map(|i| i.payload.as_slice()));
        let mut headers = FieldTable::default();
        headers.insert(ITEMS_HEADER.into(), AMQPValue::LongUInt(count));
        let mut properties = persistent().with_headers(headers);
        if let Some(encoding) = encoding {
            properties = properties.with_content_encoding(encoding.into());
        }
        self.send(&name, &body, properties).await
    }

    /// Publishes persistently and waits for the broker's confirm. Also used by settles,
    /// which must work after `close()` (a draining consumer still retries and dead-letters).
    async fn send(
        &self,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let Some(link) = self.current() else {
            self.wake.notify_one();
            return Err(unavailable("not connected to RabbitMQ"));
        };
        if link.connection.status().blocked() {
            return Err(unavailable(
                "RabbitMQ is blocking publishers (resource alarm)",
            ));
        }
        let confirmed = timeout(
            PUBLISH_TIMEOUT,
            link.publisher().publish(routing_key, payload, properties),
        )
        .await;
        let failure = match confirmed {
            Ok(Ok(Confirmation::Ack(None))) => return Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => {
                link.stale.store(true, Ordering::Relaxed);
                format!(
                    "RabbitMQ could not route to {routing_key}: {}",
                    returned.reply_text
                )
            }
            Ok(Ok(Confirmation::Nack(_))) => "RabbitMQ refused the message".to_owned(),
            Ok(Ok(Confirmation::NotRequested)) => "the channel is not in confirm mode".into(),
            Ok(Err(e)) => format!("publishing to RabbitMQ: {e}"),
            Err(_) => format!("RabbitMQ did not confirm within {PUBLISH_TIMEOUT:?}"),
        };
        self.wake.notify_one();
        Err(unavailable(failure))
    }
}

#[async_trait]
impl Bus for RabbitBus {
    async fn publish(&self, queue: Queue, payload: Vec<u8>) -> Result<(), PublishError> {
        if self.inner.closed.is_cancelled() {
            return Err(unavailable("the server is shutting down"));
        }
        let (confirmed, confirm) = oneshot::channel();
        self.inner.outboxes[&queue]
            .send(Pending { payload, confirmed })
            .map_err(|_| unavailable("the publisher stopped"))?;
        confirm
            .await
            .unwrap_or_else(|_| Err(unavailable("the publisher stopped")))
    }

    async fn subscribe(
        &self,
        queue: Queue,
        prefetch: usize,
    ) -> anyhow::Result<Box<dyn Subscription>> {
        // 0 would mean "unlimited" to the broker.
        let prefetch = u16::try_from(prefetch / ITEMS_PER_PREFETCH)
            .unwrap_or(u16::MAX)
            .max(1);
        // Not reachable now (the broker restarts, or is too slow to answer under load): the
        // first `next` reconnects as after a lost connection, for up to
        // `CONSUMER_RECONNECT_DEADLINE`, rather than the role failing at start-up.
        let feed = match Feed::open(&self.inner, queue, prefetch).await {
            Ok(feed) => Some(feed),
            Err(e) => {
                tracing::warn!(queue = queue.name(), error = %format!("{e:#}"),
                    "consumer not connected to RabbitMQ yet; reconnecting");
                None
            }
        };
        Ok(Box::new(RabbitSubscription {
            bus: self.inner.clone(),
            queue,
            prefetch,
            feed,
            state: State::Consuming,
            unpacked: VecDeque::new(),
        }))
    }

    /// The main queue's ready broker messages (not those delivered and unacked, nor those
    /// waiting in `.retry`; an envelope counts once), as of the last background refresh
    /// (every `TICK`); `None` while disconnected.
    fn depth(&self, queue: Queue) -> Option<usize> {
        self.inner.current().filter(|l| l.healthy())?;
        let depth = self.inner.depths.get(&queue)?.load(Ordering::Relaxed);
        (depth != u64::MAX).then(|| usize::try_from(depth).unwrap_or(usize::MAX))
    }

    async fn ping(&self) -> anyhow::Result<()> {
        let link = self
            .inner
            .current()
            .filter(|l| l.healthy())
            .ok_or_else(|| anyhow::anyhow!("not connected to RabbitMQ"))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let name = self.inner.names.queue(Queue::ALL[0]);
        timeout(
            PING_TIMEOUT,
            link.admin
                .queue_declare(name.as_str().into(), passive, FieldTable::default()),
        )
        .await
        .context("RabbitMQ did not answer")?
        .context("RabbitMQ refused a passive declare")?;
        Ok(())
    }

    fn close(&self) {
        self.inner.closed.cancel();
    }
}

/// A subscription's own connection, channel and consumer.
struct Feed {
    _connection: Connection,
    channel: Channel,
    consumer: Consumer,
}

impl Feed {
    async fn open(bus: &Inner, queue: Queue, prefetch: u16) -> anyhow::Result<Self> {
        let open = async {
            let connection = connect(&bus.uri).await?;
            let channel = connection.create_channel().await?;
            declare(&channel, &bus.names, queue).await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    bus.names.queue(queue).as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            anyhow::Ok(Feed {
                _connection: connection,
                channel,
                consumer,
            })
        };
        timeout(CONNECT_TIMEOUT, open)
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))?
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Consuming,
    /// `basic_cancel` sent: hand out what already arrived, then end.
    Draining,
    Ended,
}

struct RabbitSubscription {
    bus: Arc<Inner>,
    queue: Queue,
    prefetch: u16,
    /// `None` after the connection was lost, until reconnected.
    feed: Option<Feed>,
    state: State,
    /// Items of an envelope not handed out yet.
    unpacked: VecDeque<Delivery>,
}

impl RabbitSubscription {
    /// Unpacks a broker message into `unpacked`: its items, or itself when it holds one bare
    /// item (or a malformed envelope, which then fails as one item and is dead-lettered).
    fn unpack(&mut self, d: lapin::message::Delivery, channel: &Channel) {
        let retries = header_u32(&d.properties, RETRIES_HEADER).unwrap_or(0);
        let attempt = retries
            .saturating_add(1)
            .saturating_add(u32::from(d.redelivered));
        let items = header_u32(&d.properties, ITEMS_HEADER)
            .and_then(|count| {
                let encoding = d.properties.content_encoding().as_ref();
                envelope::decode(
                    &d.data,
                    usize::try_from(count).ok()?,
                    encoding.map(|e| e.as_str()),
                )
            })
            .unwrap_or_else(|| vec![d.data]);
        let message = Arc::new(BrokerMessage {
            acker: d.acker,
            _channel: channel.clone(),
            bus: self.bus.clone(),
            queue: self.queue,
            retries,
            unsettled: AtomicUsize::new(items.len()),
            requeue_after: Mutex::new(None),
        });
        self.unpacked
            .extend(items.into_iter().map(|payload| Delivery {
                payload: payload.clone(),
                attempt,
                settle: Box::new(RabbitSettle {
                    message: message.clone(),
                    payload,
                }),
            }));
    }

    /// Stops the broker from delivering more; what already arrived is still handed out.
    async fn cancel(&mut self) {
        self.state = State::Draining;
        let Some(feed) = &self.feed else {
            self.state = State::Ended;
            return;
        };
        if let Err(e) = feed
            .channel
            .basic_cancel(feed.consumer.tag(), BasicCancelOptions::default())
            .await
        {
            tracing::warn!(queue = self.queue.name(), error = %e, "cancelling the consumer failed");
            self.state = State::Ended;
        }
    }

    /// Reconnects with backoff until `CONSUMER_RECONNECT_DEADLINE`; false if it gave up or
    /// the bus closed meanwhile.
    async fn reconnect(&mut self) -> bool {
        let deadline = Instant::now() + CONSUMER_RECONNECT_DEADLINE;
        let mut backoff = BACKOFF_MIN;
        loop {
            if self.bus.closed.is_cancelled() {
                return false;
            }
            match Feed::open(&self.bus, self.queue, self.prefetch).await {
                Ok(feed) => {
                    tracing::info!(
                        queue = self.queue.name(),
                        "consumer reconnected to RabbitMQ"
                    );
                    self.feed = Some(feed);
                    return true;
                }
                Err(e) if Instant::now() + backoff > deadline => {
                    tracing::error!(queue = self.queue.name(), error = %format!("{e:#}"),
                        "RabbitMQ unreachable for {CONSUMER_RECONNECT_DEADLINE:?}; the consumer stops");
                    return false;
                }
                Err(e) => {
                    tracing::warn!(queue = self.queue.name(), error = %format!("{e:#}"), retry_in = ?backoff,
                        "consumer reconnecting to RabbitMQ");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.bus.closed.cancelled() => return false,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn lost(&mut self, error: Option<lapin::Error>) {
        match self.state {
            State::Draining => self.state = State::Ended,
            _ => {
                let error = error.map_or("the broker cancelled the consumer".into(), |e| {
                    e.to_string()
                });
                tracing::warn!(queue = self.queue.name(), %error, "consumer lost its RabbitMQ connection");
            }
        }
        // Their acks could not reach the broker any more: it delivers them again.
        self.unpacked.clear();
        self.feed = None;
    }
}

#[async_trait]
impl Subscription for RabbitSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(d) = self.unpacked.pop_front() {
                return Some(d);
            }
            if self.state == State::Ended {
                return None;
            }
            if self.feed.is_none() && (self.state == State::Draining || !self.reconnect().await) {
                self.state = State::Ended;
                return None;
            }
            let closed = self.bus.closed.clone();
            let feed = self.feed.as_mut()?;
            // The outer `None`: the bus closed.
            let item = if self.state == State::Draining {
                Some(feed.consumer.next().await)
            } else {
                tokio::select! {
                    biased;
                    () = closed.cancelled() => None,
                    item = feed.consumer.next() => Some(item),
                }
            };
            match item {
                None => self.cancel().await,
                Some(Some(Ok(d))) => {
                    let channel = self.feed.as_ref()?.channel.clone();
                    self.unpack(d, &channel);
                }
                Some(Some(Err(e))) => self.lost(Some(e)),
                Some(None) => self.lost(None),
            }
        }
    }

    fn try_next(&mut self) -> Option<Delivery> {
        if let Some(d) = self.unpacked.pop_front() {
            return Some(d);
        }
        if self.state == State::Ended {
            return None;
        }
        let feed = self.feed.as_mut()?;
        match feed.consumer.next().now_or_never()? {
            Some(Ok(d)) => {
                let channel = feed.channel.clone();
                self.unpack(d, &channel);
                self.unpacked.pop_front()
            }
            Some(Err(e)) => {
                self.lost(Some(e));
                None
            }
            None => {
                self.lost(None);
                None
            }
        }
    }
}

/// One delivered broker message (a bare item or an envelope), shared by its items' settles:
/// acked once the last of them is settled, or requeued if one could not be republished.
struct BrokerMessage {
    acker: Acker,
    /// Keeps the channel (and its connection) open until settled, even if the
    /// subscription is dropped first.
    _channel: Channel,
    bus: Arc<Inner>,
    queue: Queue,
    retries: u32,
    unsettled: AtomicUsize,
    /// Set when an item's republish failed: the whole message goes back to the broker
    /// after this delay (the longest asked for).
    requeue_after: Mutex<Option<Duration>>,
}

impl BrokerMessage {
    /// One item settled; the last one acks the message (or requeues it).
    async fn settled(self: Arc<Self>) {
        if self.unsettled.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let requeue = *self
            .requeue_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match requeue {
            Some(delay) => self.requeue_later(delay),
            None => self.ack().await,
        }
    }

    fn requeue_when_settled(&self, delay: Duration) {
        let mut requeue = self
            .requeue_after
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *requeue = Some(requeue.map_or(delay, |d| d.max(delay)));
    }

    async fn ack(&self) {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                queue = self.queue.name(),
                "ack not sent: the channel closed; RabbitMQ will redeliver"
            ),
            Err(e) => tracing::warn!(queue = self.queue.name(), error = %e,
                "ack failed; RabbitMQ will redeliver"),
        }
    }

    /// A republish failed: hand the message back to the broker later (not at once, or a
    /// consumer would spin on it while the broker refuses publishes).
    fn requeue_later(self: Arc<Self>, delay: Duration) {
        tokio::spawn(async move {
            // At least a second: a broker that refuses every republish (a resource alarm) must
            // not see the prefetched items cycle every 100 ms.
            tokio::time::sleep(delay.clamp(Duration::from_secs(1), REQUEUE_DELAY_MAX)).await;
            let requeue = BasicNackOptions {
                requeue: true,
                multiple: false,
            };
            if let Err(e) = self.acker.nack(requeue).await {
                tracing::warn!(error = %e, "requeue failed; RabbitMQ will redeliver when the channel closes");
            }
        });
    }
}

/// Settles one item of a `BrokerMessage`.
struct RabbitSettle {
    message: Arc<BrokerMessage>,
    payload: Vec<u8>,
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(self: Box<Self>) {
        self.message.settled().await;
    }

    async fn retry(self: Box<Self>, delay: Duration, reason: String) {
        let message = &self.message;
        let mut headers = FieldTable::default();
        headers.insert(
            RETRIES_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(message.retries) + 1),
        );
        headers.insert(REASON_HEADER.into(), long_string(&reason));
        let properties = persistent()
            .with_expiration(delay.as_millis().to_string().into())
            .with_headers(headers);
        let target = message.bus.names.retry(message.queue);
        // Only once it is on `.retry` is the item settled: a crash before that redelivers
        // the original, never loses it.
        if let Err(e) = message.bus.send(&target, &self.payload, properties).await {
            tracing::warn!(queue = message.queue.name(), error = %e, "could not schedule a retry; requeueing");
            message.requeue_when_settled(delay);
        }
        self.message.settled().await;
    }

    async fn dead_letter(self: Box<Self>, reason: String) {
        let message = &self.message;
        let mut headers = FieldTable::default();
        headers.insert(
            RETRIES_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(message.retries)),
        );
        headers.insert(REASON_HEADER.into(), long_string(&reason));
        headers.insert(
            QUEUE_HEADER.into(),
            long_string(&message.bus.names.queue(message.queue)),
        );
        let properties = persistent().with_headers(headers);
        let target = message.bus.names.dead(message.queue);
        if let Err(e) = message.bus.send(&target, &self.payload, properties).await {
            tracing::error!(queue = message.queue.name(), error = %e, %reason,
                "could not dead-letter an item; requeueing it");
            message.requeue_when_settled(REQUEUE_DELAY_MAX);
        }
        self.message.settled().await;
    }
}

fn header_u32(properties: &BasicProperties, key: &str) -> Option<u32> {
    let value = properties.headers().as_ref()?.inner().get(key)?;
    let n = match value {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        _ => return None,
    };
    u32::try_from(n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{namespace, Engine};
    use lapin::options::{BasicGetOptions, QueueDeleteOptions};
    use std::collections::HashSet;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    const WAIT: Duration = Duration::from_secs(10);

    /// A plain channel to look at the broker from outside the adapter.
    async fn raw(url: &str) -> Channel {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .unwrap();
        // The channel keeps its connection open.
        connection.create_channel().await.unwrap()
    }

    async fn ready(channel: &Channel, name: &str) -> u32 {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    /// Polls until the queue holds `expected` ready messages, or fails after `WAIT`.
    async fn await_ready(channel: &Channel, name: &str, expected: u32) {
        let deadline = Instant::now() + WAIT;
        loop {
            let count = ready(channel, name).await;
            if count == expected {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} holds {count} ready messages, expected {expected}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn cleanup(url: &str, ns: &str) {
        let channel = raw(url).await;
        let names = Names {
            namespace: ns.to_owned(),
        };
        for queue in Queue::ALL {
            for name in [names.queue(queue), names.retry(queue), names.dead(queue)] {
                channel
                    .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .unwrap();
            }
        }
    }

    async fn next(subscription: &mut Box<dyn Subscription>) -> Delivery {
        timeout(WAIT, subscription.next())
            .await
            .expect("no delivery in time")
            .expect("the subscription ended")
    }

    fn names(ns: &str) -> Names {
        Names {
            namespace: ns.to_owned(),
        }
    }

    #[tokio::test]
    async fn publish_consume_ack() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let bus = RabbitBus::connect(&url, &ns).await.unwrap();
        bus.publish(Queue::CreateChats, b"a".to_vec())
            .await
            .unwrap();
        bus.publish(Queue::CreateChats, b"b".to_vec())
            .await
            .unwrap();
        let mut sub = bus.subscribe(Queue::CreateChats, 1).await.unwrap();
        let a = next(&mut sub).await;
        assert_eq!((a.payload.as_slice(), a.attempt), (&b"a"[..], 1));
        // Prefetch 1: "b" comes only once the broker has taken the ack of "a".
        a.settle.ack().await;
        let b = next(&mut sub).await;
        assert_eq!((b.payload.as_slice(), b.attempt), (&b"b"[..], 1));
        b.settle.ack().await;
        drop(sub);
        // Nothing left, and nothing comes back once the consumer's connection is gone.
        let channel = raw(&url).await;
        await_ready(&channel, &names(&ns).queue(Queue::CreateChats), 0).await;
        let mut sub = bus.subscribe(Queue::CreateChats, 1).await.unwrap();
        bus.publish(Queue::CreateChats, b"c".to_vec())
            .await
            .unwrap();
        let c = next(&mut sub).await;
        assert_eq!((c.payload.as_slice(), c.attempt), (&b"c"[..], 1));
        c.settle.ack().await;
        drop((sub, bus));
        cleanup(&url, &ns).await;
    }

    #[tokio::test]
    async fn unacked_delivery_comes_back_as_attempt_2() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let bus = RabbitBus::connect(&url, &ns).await.unwrap();
        bus.publish(Queue::CreateMessages, b"m".to_vec())
            .await
            .unwrap();
        let mut sub = bus.subscribe(Queue::CreateMessages, 10).await.unwrap();
        let first = next(&mut sub).await;
        assert_eq!(first.attempt, 1);
        // A consumer that dies unsettled: its connection closes, the broker requeues.
        drop((first, sub));
        let mut sub = bus.subscribe(Queue::CreateMessages, 10).await.unwrap();
        let again = next(&mut sub).await;
        assert_eq!((again.payload.as_slice(), again.attempt), (&b"m"[..], 2));
        again.settle.ack().await;
        drop((sub, bus));
        cleanup(&url, &ns).await;
    }

    #[tokio::test]
    async fn retry_redelivers_after_the_delay_as_attempt_2() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let bus = RabbitBus::connect(&url, &ns).await.unwrap();
        bus.publish(Queue::UpdateMessages, b"r".to_vec())
            .await
            .unwrap();
        let mut sub = bus.subscribe(Queue::UpdateMessages, 10).await.unwrap();
        let first = next(&mut sub).await;
        assert_eq!(first.attempt, 1);
        let delay = Duration::from_millis(700);
        let asked = Instant::now();
        first.settle.retry(delay, "not yet".into()).await;
        let again = next(&mut sub).await;
        let waited = asked.elapsed();
        assert!(
            waited >= delay,
            "redelivered after {waited:?}, asked {delay:?}"
        );
        assert_eq!((again.payload.as_slice(), again.attempt), (&b"r"[..], 2));
        // A second retry counts on from the header.
        again.settle.retry(Duration::ZERO, "still not".into()).await;
        let third = next(&mut sub).await;
        assert_eq!(third.attempt, 3);
        third.settle.ack().await;
        let channel = raw(&url).await;
        let n = names(&ns);
        await_ready(&channel, &n.retry(Queue::UpdateMessages), 0).await;
        await_ready(&channel, &n.queue(Queue::UpdateMessages), 0).await;
        drop((sub, bus));
        cleanup(&url, &ns).await;
    }

    #[tokio::test]
    async fn dead_letter_keeps_payload_and_reason() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let bus = RabbitBus::connect(&url, &ns).await.unwrap();
        bus.publish(Queue::EmailSend, b"{\"poison\":1}".to_vec())
            .await
            .unwrap();
        let mut sub = bus.subscribe(Queue::EmailSend, 10).await.unwrap();
        let d = next(&mut sub).await;
        d.settle.dead_letter("malformed payload".into()).await;
        let channel = raw(&url).await;
        let n = names(&ns);
        let dead = channel
            .basic_get(
                n.dead(Queue::EmailSend).as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("the dead-letter queue holds the item");
        assert_eq!(dead.delivery.data, b"{\"poison\":1}");
        let headers = dead.delivery.properties.headers().clone().unwrap();
        let text = |key: &str| match headers.inner().get(key) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(text(REASON_HEADER), "malformed payload");
        assert_eq!(text(QUEUE_HEADER), n.queue(Queue::EmailSend));
        assert_eq!(dead.delivery.properties.delivery_mode(), &Some(2));
        // Acked on the main queue: gone for good there, even once the consumer disconnects.
        drop(sub);
        await_ready(&channel, &n.queue(Queue::EmailSend), 0).await;
        drop(bus);
        cleanup(&url, &ns).await;
    }

    #[tokio::test]
    async fn prefetch_bounds_unacked_deliveries() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let bus = RabbitBus::connect(&url, &ns).await.unwrap();
        for i in 0..20 {
            bus.publish(Queue::CreateChats, vec![i]).await.unwrap();
        }
        // Bare items (published one after the other): 5 broker messages.
        let mut sub = bus
            .subscribe(Queue::CreateChats, 5 * ITEMS_PER_PREFETCH)
            .await
            .unwrap();
        let mut held = Vec::new();
        for _ in 0..5 {
            held.push(next(&mut sub).await);
        }
        // The broker keeps the other 15: none reached the consumer before an ack.
        let channel = raw(&url).await;
        let name = names(&ns).queue(Queue::CreateChats);
        await_ready(&channel, &name, 15).await;
        assert!(sub.try_next().is_none());
        for d in held {
            d.settle.ack().await;
        }
        let mut seen = HashSet::new();
        while seen.len() < 15 {
            let d = next(&mut sub).await;
            seen.insert(d.payload[0]);
            d.settle.ack().await;
        }
        assert_eq!(seen, (5..20).collect());
        drop((sub, bus));
        cleanup(&url, &ns).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousand_concurrent_publishes_are_confirmed_and_consumed_once() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let bus = Arc::new(RabbitBus::connect(&url, &ns).await.unwrap());
        let publishes = (0..1000u32).map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.publish(Queue::CreateMessages, i.to_be_bytes().to_vec())
                    .await
            })
        });
        for result in futures::future::join_all(publishes).await {
            result.unwrap().unwrap();
        }
        let mut sub = bus.subscribe(Queue::CreateMessages, 200).await.unwrap();
        let mut seen = HashSet::new();
        for _ in 0..1000 {
            let d = next(&mut sub).await;
            assert_eq!(d.attempt, 1);
            assert!(seen.insert(d.payload.clone()), "delivered twice");
            d.settle.ack().await;
        }
        assert_eq!(seen.len(), 1000);
        let channel = raw(&url).await;
        await_ready(&channel, &names(&ns).queue(Queue::CreateMessages), 0).await;
        assert!(sub.try_next().is_none());
        drop((sub, bus));
        cleanup(&url, &ns).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn busy_envelopes_travel_compressed_and_arrive_whole() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let name = names(&ns).queue(Queue::CreateMessages);
        let bus = Arc::new(RabbitBus::connect(&url, &ns).await.unwrap());
        let payload = |i: u32| {
            format!(r#"{{"token":"f3Qm9ZkR2xWbT7yLpC4vNa8s","messageNumber":{i},"body":"line {i}: is the deploy still frozen until the audit is over?"}}"#)
                .into_bytes()
        };
        let publishes = (0..300u32).map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move { bus.publish(Queue::CreateMessages, payload(i)).await })
        });
        for result in futures::future::join_all(publishes).await {
            result.unwrap().unwrap();
        }
        // Looked at from outside, unacked: closing the channel puts them back.
        let channel = raw(&url).await;
        let (mut items, mut compressed) = (0, 0);
        while let Some(m) = channel
            .basic_get(name.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .unwrap()
        {
            let count = header_u32(&m.delivery.properties, ITEMS_HEADER).unwrap_or(1);
            let encoding = m.delivery.properties.content_encoding().as_ref();
            if encoding.map(|e| e.as_str()) == Some(envelope::LZ4) {
                compressed += 1;
                assert!(
                    m.delivery.data.len() < 150 * count as usize,
                    "smaller than its items"
                );
            }
            items += count;
        }
        assert_eq!(items, 300);
        assert!(compressed > 0, "no envelope was compressed");
        channel.close(200, "looked".into()).await.unwrap();

        let mut sub = bus.subscribe(Queue::CreateMessages, 1000).await.unwrap();
        let mut seen = HashSet::new();
        for _ in 0..300 {
            let d = next(&mut sub).await;
            assert!(seen.insert(d.payload.clone()), "delivered twice");
            d.settle.ack().await;
        }
        assert_eq!(seen, (0..300).map(payload).collect());
        drop((sub, bus));
        cleanup(&url, &ns).await;
    }

    /// Polls until no consumer is left on the queue: the broker has then requeued whatever
    /// those consumers left unacked.
    async fn await_no_consumer(channel: &Channel, name: &str) {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let deadline = Instant::now() + WAIT;
        while channel
            .queue_declare(name.into(), passive, FieldTable::default())
            .await
            .unwrap()
            .consumer_count()
            > 0
        {
            assert!(Instant::now() < deadline, "{name} kept its consumer");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_publishes_share_envelopes_and_settle_item_by_item() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let n = names(&ns);
        let bus = Arc::new(RabbitBus::connect(&url, &ns).await.unwrap());
        let publishes = (0..300u32).map(|i| {
            let bus = bus.clone();
            tokio::spawn(async move {
                bus.publish(Queue::CreateMessages, i.to_be_bytes().to_vec())
                    .await
            })
        });
        for result in futures::future::join_all(publishes).await {
            result.unwrap().unwrap();
        }
        let channel = raw(&url).await;
        let messages = ready(&channel, &n.queue(Queue::CreateMessages)).await;
        assert!(messages < 300, "300 items in {messages} broker messages");

        let mut sub = bus.subscribe(Queue::CreateMessages, 1000).await.unwrap();
        let (retried, poison) = (7u32.to_be_bytes().to_vec(), 8u32.to_be_bytes().to_vec());
        let mut seen = HashSet::new();
        for _ in 0..300 {
            let d = next(&mut sub).await;
            assert_eq!(d.attempt, 1);
            assert!(seen.insert(d.payload.clone()), "delivered twice");
            if d.payload == retried {
                d.settle
                    .retry(Duration::from_millis(50), "later".into())
                    .await;
            } else if d.payload == poison {
                d.settle.dead_letter("poison".into()).await;
            } else {
                d.settle.ack().await;
            }
        }
        // The retried item comes back alone; the poison one is dead-lettered alone.
        let again = next(&mut sub).await;
        assert_eq!((again.payload.clone(), again.attempt), (retried, 2));
        again.settle.ack().await;
        let dead_queue = n.dead(Queue::CreateMessages);
        for expected in [Some(poison), None] {
            let got = channel
                .basic_get(dead_queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .map(|m| m.delivery.data);
            assert_eq!(got, expected);
        }
        // Every envelope was acked: nothing comes back once the consumer is gone.
        drop(sub);
        await_no_consumer(&channel, &n.queue(Queue::CreateMessages)).await;
        assert_eq!(ready(&channel, &n.queue(Queue::CreateMessages)).await, 0);
        assert_eq!(ready(&channel, &n.retry(Queue::CreateMessages)).await, 0);
        drop(bus);
        cleanup(&url, &ns).await;
    }

    #[tokio::test]
    async fn a_malformed_envelope_is_delivered_as_one_item() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let bus = RabbitBus::connect(&url, &ns).await.unwrap();
        let channel = raw(&url).await;
        let mut headers = FieldTable::default();
        headers.insert(ITEMS_HEADER.into(), AMQPValue::LongUInt(3));
        channel
            .basic_publish(
                "".into(),
                names(&ns).queue(Queue::CreateChats).as_str().into(),
                BasicPublishOptions::default(),
                b"\0\0\0\x09short",
                persistent().with_headers(headers),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        let mut sub = bus.subscribe(Queue::CreateChats, 10).await.unwrap();
        let d = next(&mut sub).await;
        assert_eq!(d.payload, b"\0\0\0\x09short");
        assert!(sub.try_next().is_none());
        d.settle.ack().await;
        drop((sub, bus));
        cleanup(&url, &ns).await;
    }

    #[tokio::test]
    async fn close_refuses_publishes_and_drains_subscriptions() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let ns = namespace();
        let bus = RabbitBus::connect(&url, &ns).await.unwrap();
        for i in 0..3 {
            bus.publish(Queue::CreateChats, vec![i]).await.unwrap();
        }
        let mut sub = bus.subscribe(Queue::CreateChats, 10).await.unwrap();
        let mut received = vec![next(&mut sub).await];
        bus.close();
        let refused = bus.publish(Queue::CreateChats, b"late".to_vec()).await;
        assert!(matches!(refused, Err(PublishError::Unavailable(_))));
        // What already arrived is handed out, then the subscription ends.
        while let Some(d) = timeout(WAIT, sub.next()).await.expect("drain stalled") {
            received.push(d);
        }
        assert!(sub.next().await.is_none());
        // Settles still work after close: a draining writer acks, retries, dead-letters.
        let n = received.len();
        for d in received {
            d.settle.ack().await;
        }
        drop(sub);
        let channel = raw(&url).await;
        await_ready(
            &channel,
            &names(&ns).queue(Queue::CreateChats),
            3 - n as u32,
        )
        .await;
        drop(bus);
        cleanup(&url, &ns).await;
    }

    #[tokio::test]
    async fn connecting_to_a_dead_port_fails_fast() {
        // No broker needed: nothing listens on the port.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let started = Instant::now();
        let result =
            RabbitBus::connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"), "x").await;
        assert!(result.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }

    /// A TCP relay to the broker that a test can cut (every connection dropped, new ones
    /// refused) and restore, to play a broker outage.
    struct Relay {
        port: u16,
        up: Arc<AtomicBool>,
        links: Arc<Mutex<Vec<JoinHandle<()>>>>,
        /// Connections refused so far.
        refused: Arc<AtomicUsize>,
    }

    impl Relay {
        async fn start(target: String) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let up = Arc::new(AtomicBool::new(true));
            let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
            let refused = Arc::new(AtomicUsize::new(0));
            let (accept_up, accept_links, refusals) = (up.clone(), links.clone(), refused.clone());
            tokio::spawn(async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    if !accept_up.load(Ordering::SeqCst) {
                        refusals.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                    let target = target.clone();
                    accept_links.lock().unwrap().push(tokio::spawn(async move {
                        if let Ok(mut broker) = TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                        }
                    }));
                }
            });
            Relay {
                port,
                up,
                links,
                refused,
            }
        }

        fn cut(&self) {
            self.up.store(false, Ordering::SeqCst);
            for link in self.links.lock().unwrap().drain(..) {
                link.abort();
            }
        }

        /// A relay to the broker at `url`, a bus connected through it and one connected
        /// directly, on a new namespace.
        async fn buses(url: &str) -> (Self, RabbitBus, RabbitBus, String) {
            let parsed = reqwest::Url::parse(url).unwrap();
            let target = format!(
                "{}:{}",
                parsed.host_str().unwrap(),
                parsed.port().unwrap_or(5672)
            );
            let relay = Relay::start(target).await;
            let mut relayed = parsed.clone();
            relayed.set_host(Some("127.0.0.1")).unwrap();
            relayed.set_port(Some(relay.port)).unwrap();
            let ns = namespace();
            let bus = RabbitBus::connect(relayed.as_str(), &ns).await.unwrap();
            let direct = RabbitBus::connect(url, &ns).await.unwrap();
            (relay, bus, direct, ns)
        }

        /// Refuses new connections; those already relayed stay.
        fn refuse_new(&self) {
            self.up.store(false, Ordering::SeqCst);
        }

        fn restore(&self) {
            self.up.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broker_outage_fails_publishes_fast_then_both_sides_recover() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let (relay, bus, direct, ns) = Relay::buses(&url).await;
        let mut sub = bus.subscribe(Queue::CreateChats, 10).await.unwrap();
        bus.publish(Queue::CreateChats, b"before".to_vec())
            .await
            .unwrap();
        next(&mut sub).await.settle.ack().await;

        relay.cut();
        for _ in 0..5 {
            let started = Instant::now();
            let result = bus.publish(Queue::CreateChats, b"lost".to_vec()).await;
            assert!(
                matches!(result, Err(PublishError::Unavailable(_))),
                "{result:?}"
            );
            assert!(started.elapsed() <= PUBLISH_TIMEOUT + Duration::from_millis(500));
        }
        assert!(bus.ping().await.is_err());
        assert_eq!(bus.depth(Queue::CreateChats), None);
        direct
            .publish(Queue::CreateChats, b"during".to_vec())
            .await
            .unwrap();

        relay.restore();
        let deadline = Instant::now() + Duration::from_secs(15);
        while bus
            .publish(Queue::CreateChats, b"after".to_vec())
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the publisher never reconnected");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bus.ping().await.unwrap();
        // The subscription reconnected on its own and gets what was queued meanwhile. The
        // ack of "before" may have died in the relay when it was cut (the relay had not
        // forwarded it yet): then the broker rightly delivers "before" again.
        let mut got = Vec::new();
        while got.len() < 2 {
            let d = next(&mut sub).await;
            if d.payload == b"before" {
                assert!(d.attempt > 1, "an acked item came back as new");
            } else {
                got.push(d.payload.clone());
            }
            d.settle.ack().await;
        }
        got.sort();
        assert_eq!(got, vec![b"after".to_vec(), b"during".to_vec()]);
        drop((sub, bus, direct));
        cleanup(&url, &ns).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_subscription_opened_while_the_broker_refuses_connects_later() {
        let Some(url) = Engine::RabbitMq.url() else {
            return;
        };
        let (relay, bus, direct, ns) = Relay::buses(&url).await;
        // The publishing link is up; the subscription's own connection is refused.
        relay.refuse_new();
        let mut sub = bus
            .subscribe(Queue::CreateChats, 10)
            .await
            .expect("a subscription that connects later");
        assert!(
            relay.refused.load(Ordering::SeqCst) >= 1,
            "it was refused first"
        );
        relay.restore();
        direct
            .publish(Queue::CreateChats, b"later".to_vec())
            .await
            .unwrap();
        let d = next(&mut sub).await;
        assert_eq!(d.payload, b"later");
        d.settle.ack().await;
        drop((sub, bus, direct));
        cleanup(&url, &ns).await;
    }
}
