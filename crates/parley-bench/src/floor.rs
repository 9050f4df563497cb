//! `--floor`: the raw engines under the write path, measured in the same run with the same
//! concurrency, so every scenario figure can be read as a fraction of what the machine can do
//! at all: the server's own `GET /health`, Redis INCR, RabbitMQ publish with a publisher
//! confirm, NATS JetStream publish-ack, and one 500-row insert through the parley store's bulk
//! path. An engine that cannot be reached is reported unavailable, not failed. Throwaway
//! queues, streams, keys and data directories are deleted afterwards.

use crate::http::{Conn, Target};
use crate::runner::Window;
use crate::stats::Stats;
use anyhow::{Context, Result};
use http::Method;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// How long an engine may take to accept a connection before it counts as unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Rows per store insert: the writer's batch size (`WRITER_BATCH`) and SQLite's rows per statement.
const STORE_ROWS: usize = 500;

#[derive(Debug, Clone)]
pub struct FloorPlan {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub redis_url: String,
    pub rabbitmq_url: String,
    pub nats_url: String,
}

/// One engine's floor.
pub struct Floor {
    pub engine: &'static str,
    pub operation: String,
    pub concurrency: usize,
    /// Rows (or items) per operation, when more than one.
    pub items_per_op: u64,
    pub outcome: Outcome,
}

pub enum Outcome {
    Measured(Box<Stats>),
    Unavailable(String),
}

pub async fn measure(plan: &FloorPlan, target: &Arc<Target>) -> Vec<Floor> {
    let c = plan.connections.max(1);
    let mut floors = Vec::new();
    let steps: [(&'static str, String, usize, u64); 5] = [
        ("parley", "GET /health (same HTTP client)".into(), c, 1),
        ("redis", "INCR round trip".into(), c, 1),
        (
            "rabbitmq",
            "publish 100 B, persistent, durable queue, await confirm".into(),
            c,
            1,
        ),
        (
            "nats",
            "JetStream publish 100 B (file storage), await ack".into(),
            c,
            1,
        ),
        (
            "store",
            format!("parley Store::insert_messages, {STORE_ROWS} rows, SQLite (one writer)"),
            1,
            STORE_ROWS as u64,
        ),
    ];
    for (engine, operation, concurrency, items_per_op) in steps {
        eprintln!("floor: {engine} ({operation})");
        let result = match engine {
            "parley" => health(plan, target).await,
            "redis" => redis_incr(plan).await,
            "rabbitmq" => rabbitmq_publish(plan).await,
            "nats" => nats_publish(plan).await,
            _ => store_insert(plan).await,
        };
        let outcome = match result {
            Ok(stats) => Outcome::Measured(Box::new(stats)),
            Err(e) => {
                eprintln!("floor: {engine} unavailable: {e:#}");
                Outcome::Unavailable(format!("{e:#}"))
            }
        };
        floors.push(Floor {
            engine,
            operation,
            concurrency,
            items_per_op,
            outcome,
        });
    }
    floors
}

/// Runs one closed loop per state (one per connection) for the plan's window; each call of
/// `op` is one measured operation.
async fn closed_loops<S, F, Fut>(plan: &FloorPlan, states: Vec<S>, op: F) -> Stats
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Send + Sync + Clone + 'static,
    Fut: Future<Output = (S, Result<(), String>)> + Send,
{
    let window = Window::new(Instant::now(), plan.warmup, plan.duration);
    let timeout = plan.timeout;
    let tasks: Vec<_> = states
        .into_iter()
        .map(|state| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut stats = Stats::new(false);
                let mut state = Some(state);
                while Instant::now() < window.end {
                    let sent = Instant::now();
                    let result =
                        tokio::time::timeout(timeout, op(state.take().expect("state"))).await;
                    let done = Instant::now();
                    let result = match result {
                        Ok((s, r)) => {
                            state = Some(s);
                            r
                        }
                        // The state went with the timed-out future: this loop is over.
                        Err(_) => {
                            if window.measures(sent) {
                                stats.failure("timeout");
                            }
                            break;
                        }
                    };
                    if !window.measures(sent) {
                        continue;
                    }
                    match result {
                        Ok(()) => stats.answer("op", 200, done - sent, done - sent),
                        Err(e) => stats.failure(e),
                    }
                }
                stats
            })
        })
        .collect();
    let mut stats = Stats::new(false);
    for task in tasks {
        stats.merge(task.await.expect("a floor task panicked"));
    }
    stats
}

async fn health(plan: &FloorPlan, target: &Arc<Target>) -> Result<Stats> {
    let mut probe = Conn::new(target.clone(), CONNECT_TIMEOUT);
    probe
        .json(Method::GET, "/health", None, None, http::StatusCode::OK)
        .await
        .context("GET /health")?;
    let mut conns = Vec::new();
    for _ in 0..plan.connections {
        let mut conn = Conn::new(target.clone(), plan.timeout);
        conn.open().await?;
        conns.push(conn);
    }
    Ok(closed_loops(plan, conns, |mut conn: Conn| async move {
        let result = match conn.send(&Method::GET, "/health", None, None).await {
            Ok((status, _)) if status.is_success() => Ok(()),
            Ok((status, _)) => Err(status.as_str().to_owned()),
            Err(f) => Err(f.as_str().to_owned()),
        };
        (conn, result)
    })
    .await)
}

async fn redis_incr(plan: &FloorPlan) -> Result<Stats> {
    let client = redis::Client::open(plan.redis_url.as_str())
        .with_context(|| format!("REDIS_URL {}", redact(&plan.redis_url)))?;
    let mut conns = Vec::new();
    for _ in 0..plan.connections {
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_multiplexed_async_connection())
            .await
            .context("connect timed out")?
            .with_context(|| format!("connecting to {}", redact(&plan.redis_url)))?;
        conns.push(conn);
    }
    let key = format!("parley-bench:floor:{:016x}", fastrand::u64(..));
    let stats = {
        let key = key.clone();
        closed_loops(
            plan,
            conns,
            move |mut conn: redis::aio::MultiplexedConnection| {
                let key = key.clone();
                async move {
                    let result = redis::cmd("INCR")
                        .arg(&key)
                        .query_async::<i64>(&mut conn)
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("redis: {}", e.category()));
                    (conn, result)
                }
            },
        )
        .await
    };
    let mut conn = client.get_multiplexed_async_connection().await?;
    redis::cmd("DEL")
        .arg(&key)
        .query_async::<i64>(&mut conn)
        .await
        .context("deleting the floor key")?;
    Ok(stats)
}

async fn rabbitmq_publish(plan: &FloorPlan) -> Result<Stats> {
    use lapin::options::{
        BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
    };
    use lapin::types::FieldTable;
    use lapin::{BasicProperties, Connection, ConnectionProperties};

    let connection = tokio::time::timeout(
        CONNECT_TIMEOUT,
        Connection::connect(&plan.rabbitmq_url, ConnectionProperties::default()),
    )
    .await
    .context("connect timed out")?
    .with_context(|| format!("connecting to {}", redact(&plan.rabbitmq_url)))?;
    let queue = format!("parley-bench-floor-{:016x}", fastrand::u64(..));
    let admin = connection.create_channel().await?;
    admin
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    let mut channels = Vec::new();
    for _ in 0..plan.connections {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        channels.push(channel);
    }
    let payload: Arc<[u8]> = vec![b'x'; 100].into();
    let stats = {
        let queue = queue.clone();
        closed_loops(plan, channels, move |channel: lapin::Channel| {
            let (queue, payload) = (queue.clone(), payload.clone());
            async move {
                let confirm = channel
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await;
                let result = match confirm {
                    Ok(confirm) => match confirm.await {
                        Ok(c) if c.is_ack() => Ok(()),
                        Ok(_) => Err("rabbitmq: nack".to_owned()),
                        Err(_) => Err("rabbitmq: confirm".to_owned()),
                    },
                    Err(_) => Err("rabbitmq: publish".to_owned()),
                };
                (channel, result)
            }
        })
        .await
    };
    admin
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .context("deleting the floor queue")?;
    let _ = connection.close(200, "parley-bench done".into()).await;
    Ok(stats)
}

async fn nats_publish(plan: &FloorPlan) -> Result<Stats> {
    use async_nats::jetstream::{self, stream};

    let client = async_nats::ConnectOptions::new()
        .connection_timeout(CONNECT_TIMEOUT)
        .connect(plan.nats_url.as_str())
        .await
        .with_context(|| format!("connecting to {}", redact(&plan.nats_url)))?;
    let js = jetstream::new(client);
    let id = format!("{:016x}", fastrand::u64(..));
    let name = format!("PARLEY_BENCH_FLOOR_{id}");
    let subject = format!("parley-bench.floor.{id}");
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![subject.clone()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the floor stream (is JetStream enabled?)")?;
    let payload = bytes::Bytes::from(vec![b'x'; 100]);
    let stats = closed_loops(
        plan,
        vec![js.clone(); plan.connections],
        move |js: jetstream::Context| {
            let (subject, payload) = (subject.clone(), payload.clone());
            async move {
                let result = match js.publish(subject, payload).await {
                    Ok(ack) => ack
                        .await
                        .map(|_| ())
                        .map_err(|e| format!("nats: {}", e.kind())),
                    Err(e) => Err(format!("nats: {}", e.kind())),
                };
                (js, result)
            }
        },
    )
    .await;
    js.delete_stream(&name)
        .await
        .context("deleting the floor stream")?;
    Ok(stats)
}

async fn store_insert(plan: &FloorPlan) -> Result<Stats> {
    use parley::store::{NewChat, NewMessage};

    let dir = tempfile::Builder::new()
        .prefix("parley-bench-floor-")
        .tempdir()?;
    let mut config = parley::config::Config::for_data_dir(dir.path());
    config.database_url = None;
    let store = parley::startup::open_store(&config).await?.store;
    let now = parley::domain::now_ms();
    let user = store
        .insert_user("floor", "floor@parley.test", "not-a-hash", now)
        .await?
        .context("inserting the floor user")?;
    let app = store
        .insert_application(&parley::domain::AppToken::generate(), "floor", user.id, now)
        .await?;
    store
        .insert_chats(&[NewChat {
            application_id: app.id,
            number: 1,
            creator_id: user.id,
            created_at: now,
        }])
        .await?;
    let chat = store.chat(app.id, 1).await?.context("the floor chat")?;
    let mut rng = fastrand::Rng::with_seed(5);
    let bodies: Arc<Vec<String>> = Arc::new(
        (0..STORE_ROWS)
            .map(|_| crate::text::body(&mut rng))
            .collect(),
    );
    let sender_id = user.id;
    // One writer, as in the server: SQLite serialises writes, and the store has one
    // writing connection.
    let stats = closed_loops(plan, vec![(store.clone(), 0i64)], move |(store, next)| {
        let bodies = bodies.clone();
        async move {
            let batch: Vec<NewMessage> = bodies
                .iter()
                .enumerate()
                .map(|(i, body)| NewMessage {
                    chat_id: chat.id,
                    number: next + i as i64 + 1,
                    sender_id,
                    body: body.clone(),
                    created_at: now,
                })
                .collect();
            let result = match store.insert_messages(&batch).await {
                Ok(rows) if rows.len() == STORE_ROWS => Ok(()),
                Ok(_) => Err("store: rows skipped".to_owned()),
                Err(_) => Err("store: insert".to_owned()),
            };
            ((store, next + STORE_ROWS as i64), result)
        }
    })
    .await;
    drop(store);
    dir.close().context("removing the floor data directory")?;
    Ok(stats)
}

/// Drops a password from a URL for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_lose_their_passwords_in_messages() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://…@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
    }
}
