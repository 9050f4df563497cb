//! Start-up: the one place where configuration picks the adapters (STYLE habit 2), and the
//! shared lifecycle of the roles: start, run until the shutdown signal, drain in order
//! (stop accepting HTTP, finish in-flight requests, close the bus, let consumers drain).

use crate::bus::{Bus, MemoryBus, NatsBus, RabbitBus, RetryPolicy};
use crate::cache::{Cache, MemoryCache, RedisCache};
use crate::config::Config;
use crate::domain::{JwtKeys, Service, ServiceSettings};
use crate::http::{self, AppState};
use crate::lock::{LeaderLock, MemoryLock, RedisLock};
use crate::mailer::{Mailer, OutboxMailer};
use crate::roles::notifier::Notifier;
use crate::roles::scheduler::{Scheduler, SchedulerSettings};
use crate::roles::writer::{Writer, WriterSettings};
use crate::search::{ElasticsearchIndex, MySqlSearch, PgSearch, SearchIndex, TantivyIndex};
use crate::sequencer::{MemorySequencer, RedisSequencer, Sequencer};
use crate::store::{MySqlStore, PgStore, SqliteStore, Store};
use anyhow::{Context, Result};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Api,
    Writer,
    Scheduler,
    Notifier,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Api, Role::Writer, Role::Scheduler, Role::Notifier];
}

/// The adapters behind every port, chosen from the configuration.
pub struct Backends {
    pub store: Arc<dyn Store>,
    pub sequencer: Arc<dyn Sequencer>,
    pub bus: Arc<dyn Bus>,
    pub search: Arc<dyn SearchIndex>,
    pub cache: Arc<dyn Cache>,
    pub lock: Arc<dyn LeaderLock>,
    pub mailer: Arc<dyn Mailer>,
    /// Ports served in-process, by the variable that would make them shared.
    pub in_process: Vec<&'static str>,
}

impl Backends {
    pub async fn open(config: &Config) -> Result<Self> {
        let data = &config.data_dir;
        let ns = config.namespace.as_str();
        refuse_unsafe_combinations(config)?;

        let mut in_process = Vec::new();
        let opened = open_store(config).await?;
        let store = opened.store.clone();
        if matches!(opened.sql, SqlPool::Sqlite) {
            in_process.push("DATABASE_URL (SQLite is one machine's)");
        }

        let search: Arc<dyn SearchIndex> = match (&config.elasticsearch_url, &opened.sql) {
            (Some(url), _) => Arc::new(
                ElasticsearchIndex::connect(url, ns)
                    .await
                    .with_context(|| format!("connecting to ELASTICSEARCH_URL {url}"))?,
            ),
            (None, SqlPool::MySql(pool)) => Arc::new(MySqlSearch::new(pool.clone())),
            (None, SqlPool::Postgres(pool)) => Arc::new(PgSearch::new(pool.clone())),
            (None, SqlPool::Sqlite) => Arc::new(
                TantivyIndex::open(&data.join("search")).context("opening the search index")?,
            ),
        };

        let (sequencer, cache, lock): (Arc<dyn Sequencer>, Arc<dyn Cache>, Arc<dyn LeaderLock>) =
            match &config.redis_url {
                Some(url) => {
                    let conn = crate::cache::redis::connect(url)
                        .await
                        .with_context(|| format!("connecting to REDIS_URL {url}"))?;
                    (
                        Arc::new(RedisSequencer::new(
                            conn.clone(),
                            ns,
                            store.clone(),
                            NUMBER_BLOCK,
                        )),
                        Arc::new(RedisCache::new(conn.clone(), ns)),
                        Arc::new(RedisLock::new(conn, ns)),
                    )
                }
                None => {
                    in_process.push("REDIS_URL");
                    (
                        Arc::new(MemorySequencer::new(store.clone())),
                        Arc::new(MemoryCache::default()),
                        Arc::new(MemoryLock::default()),
                    )
                }
            };

        let bus: Arc<dyn Bus> = match (&config.rabbitmq_url, &config.nats_url) {
            (Some(url), _) => Arc::new(
                RabbitBus::connect(url, ns)
                    .await
                    .with_context(|| format!("connecting to RABBITMQ_URL {url}"))?,
            ),
            (None, Some(url)) => Arc::new(
                NatsBus::connect(url, ns)
                    .await
                    .with_context(|| format!("connecting to NATS_URL {url}"))?,
            ),
            (None, None) => {
                in_process.push("RABBITMQ_URL or NATS_URL");
                Arc::new(MemoryBus::default())
            }
        };
        Ok(Self {
            store,
            sequencer,
            bus,
            search,
            cache,
            lock,
            mailer: Arc::new(OutboxMailer::new(
                data.join("outbox"),
                config.mail_from.clone(),
            )?),
            in_process,
        })
    }
}

/// Numbers a Redis sequencer claims from the database at a time, per scope: one SQL write per
/// this many creates, and the widest gap a Redis loss can leave.
const NUMBER_BLOCK: i64 = 1_000;

/// A store, and its pool when search runs on the same SQL database.
pub struct OpenedStore {
    pub store: Arc<dyn Store>,
    sql: SqlPool,
}

enum SqlPool {
    Sqlite,
    MySql(sqlx::MySqlPool),
    Postgres(sqlx::PgPool),
}

/// Opens and migrates the store chosen by DATABASE_URL (what `parley migrate` does).
pub async fn open_store(config: &Config) -> Result<OpenedStore> {
    let data = &config.data_dir;
    let url = match &config.database_url {
        Some(url) => url.clone(),
        None => {
            std::fs::create_dir_all(data)
                .with_context(|| format!("creating PARLEY_DATA_DIR {}", data.display()))?;
            SqliteStore::url_in(data)
        }
    };
    let opening = || format!("opening DATABASE_URL {url}");
    let opened = if url.starts_with("mysql:") || url.starts_with("mariadb:") {
        let store = MySqlStore::open(&url).await.with_context(opening)?;
        let pool = store.pool().clone();
        OpenedStore {
            store: Arc::new(store),
            sql: SqlPool::MySql(pool),
        }
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let store = PgStore::open(&url).await.with_context(opening)?;
        let pool = store.pool().clone();
        OpenedStore {
            store: Arc::new(store),
            sql: SqlPool::Postgres(pool),
        }
    } else {
        std::fs::create_dir_all(data)
            .with_context(|| format!("creating PARLEY_DATA_DIR {}", data.display()))?;
        OpenedStore {
            store: Arc::new(SqliteStore::open(&url).await.with_context(opening)?),
            sql: SqlPool::Sqlite,
        }
    };
    opened
        .store
        .migrate()
        .await
        .context("migrating the database")?;
    Ok(opened)
}

/// The JWT secret: `JWT_SECRET`, or one generated on first start and kept in the data dir.
fn jwt_secret(config: &Config) -> Result<Vec<u8>> {
    if let Some(secret) = &config.jwt_secret {
        return Ok(secret.clone().into_bytes());
    }
    let path = config.data_dir.join("jwt_secret");
    if path.exists() {
        let secret = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let secret = secret.trim();
        if secret.len() < 32 {
            anyhow::bail!(
                "{} holds a secret under 32 bytes; delete it (issued tokens stop working) or set JWT_SECRET",
                path.display()
            );
        }
        return Ok(secret.as_bytes().to_vec());
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret.into_bytes())
}

/// Writes a file readable by its owner only, whole or not at all (temporary file, fsync,
/// rename), so a crash never leaves a short secret behind.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// A started set of roles.
pub struct Running {
    /// Where the api listens, when it runs.
    pub addr: Option<SocketAddr>,
    /// Cancel to stop gracefully.
    pub shutdown: CancellationToken,
    done: JoinHandle<Result<()>>,
}

impl Running {
    /// Waits until every role has stopped and drained.
    pub async fn wait(self) -> Result<()> {
        self.done.await?
    }
}

/// Configurations that would break an invariant, refused before anything is opened.
fn refuse_unsafe_combinations(config: &Config) -> Result<()> {
    // The in-process sequencer counts for one process: a database other processes may
    // share (MySQL, PostgreSQL) needs the shared one, or two servers would hand out the
    // same numbers.
    if config.redis_url.is_none()
        && config
            .database_url
            .as_deref()
            .is_some_and(|url| !url.starts_with("sqlite:"))
    {
        anyhow::bail!(
            "a MySQL or PostgreSQL DATABASE_URL needs REDIS_URL too: numbers must be handed \
             out by one shared sequencer when several processes may share the database"
        );
    }
    // The in-process sequencer re-seeds idle scopes from the store, which is only safe
    // when a 201 means "committed" (the write-through in-process bus).
    if config.redis_url.is_none() && (config.rabbitmq_url.is_some() || config.nats_url.is_some()) {
        anyhow::bail!(
            "a broker (RABBITMQ_URL / NATS_URL) needs REDIS_URL too: numbers handed out for \
             items still on the broker must survive restarts"
        );
    }
    Ok(())
}

/// Runs `attempt` until it succeeds, for up to `STARTUP_WAIT`: a process started with (or
/// before) its database, Redis or broker, or while one restarts, waits for it rather than
/// exiting. Every error is tried again (a wrong password too), and each failed attempt is
/// logged with its reason, so a lasting one shows at once. The last attempt starts at the
/// deadline.
pub async fn patiently<T, F, Fut>(config: &Config, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = tokio::time::Instant::now() + config.startup_wait;
    let mut backoff = STARTUP_BACKOFF_MIN;
    loop {
        let error = match attempt().await {
            Ok(opened) => return Ok(opened),
            Err(e) => e,
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            let waited = humantime::format_duration(config.startup_wait);
            return Err(error.context(format!("not reachable within STARTUP_WAIT ({waited})")));
        }
        let pause = backoff.min(left);
        tracing::warn!(error = %format!("{error:#}"), retry_in = ?pause,
            "a backend is not reachable yet; trying again (STARTUP_WAIT)");
        tokio::time::sleep(pause).await;
        backoff = (backoff * 2).min(STARTUP_BACKOFF_MAX);
    }
}

const STARTUP_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(200);
const STARTUP_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts `roles` on the configured backends.
pub async fn start(config: Config, roles: &[Role]) -> Result<Running> {
    config.validate()?;
    let alone = roles.len() < Role::ALL.len();
    if alone && roles.contains(&Role::Api) && config.jwt_secret.is_none() {
        anyhow::bail!(
            "the api runs apart from the other roles, so set JWT_SECRET: every api process must \
             sign and check tokens with the same secret"
        );
    }
    // A refused configuration fails at once, not after the wait.
    refuse_unsafe_combinations(&config)?;
    let backends = patiently(&config, || Backends::open(&config)).await?;
    if alone && !backends.in_process.is_empty() {
        anyhow::bail!(
            "this role runs apart from the others, so it needs shared backends, but these are in-process: set {}; \
             or run every role in one process with `parley serve`",
            backends.in_process.join(", ")
        );
    }
    let caught_up = crate::search::catch_up(backends.search.as_ref(), backends.store.as_ref())
        .await
        .context("catching the search index up with the store")?;
    if caught_up > 0 {
        tracing::info!(
            messages = caught_up,
            "search index caught up with the store"
        );
    }
    let retry = RetryPolicy {
        max_attempts: config.max_attempts,
        ..RetryPolicy::default()
    };
    let shutdown = CancellationToken::new();
    let mut consumers: Vec<JoinHandle<Result<()>>> = Vec::new();

    if roles.contains(&Role::Writer) {
        if !config.writer_linger.is_zero()
            && config.rabbitmq_url.is_none()
            && config.nats_url.is_none()
        {
            tracing::warn!(
                linger = ?config.writer_linger,
                "WRITER_LINGER on the in-process bus: every create waits for its batch's commit, so it adds to each create's latency"
            );
        }
        let writer = Writer::new(
            backends.store.clone(),
            backends.search.clone(),
            backends.cache.clone(),
            backends.bus.clone(),
            WriterSettings {
                batch_max: config.writer_batch,
                linger: config.writer_linger,
                retry: retry.clone(),
            },
        );
        consumers.push(supervise("writer", &shutdown, writer.run(shutdown.clone())));
    }
    if roles.contains(&Role::Notifier) {
        let notifier = Notifier::new(backends.bus.clone(), backends.mailer.clone(), retry);
        consumers.push(supervise(
            "notifier",
            &shutdown,
            notifier.run(shutdown.clone()),
        ));
    }
    let scheduler = roles.contains(&Role::Scheduler).then(|| {
        let scheduler = Scheduler::new(
            backends.store.clone(),
            backends.cache.clone(),
            backends.lock.clone(),
            backends.bus.clone(),
            SchedulerSettings {
                count_sync_interval: config.count_sync_interval,
                deletions_per_day: config.deletions_per_day,
            },
        );
        supervise("scheduler", &shutdown, scheduler.run(shutdown.clone()))
    });

    let mut addr = None;
    let server = if roles.contains(&Role::Api) {
        let settings = ServiceSettings {
            token_ttl: config.jwt_ttl,
            deletion_delay: config.deletion_delay,
            credentials_ttl: config.credentials_cache_ttl,
            ..ServiceSettings::default()
        };
        let service = Service::new(
            backends.store.clone(),
            backends.sequencer.clone(),
            backends.bus.clone(),
            backends.search.clone(),
            backends.cache.clone(),
            JwtKeys::new(&jwt_secret(&config)?, config.jwt_ttl),
            settings,
        );
        let state = AppState {
            service: Arc::new(service),
            metrics: crate::telemetry::metrics(),
        };
        let app = http::router(state, &config.cors(), config.request_timeout);
        let listener = tokio::net::TcpListener::bind((config.host, config.port))
            .await
            .with_context(|| format!("listening on {}:{} (PORT)", config.host, config.port))?;
        addr = Some(listener.local_addr()?);
        tracing::info!(addr = %listener.local_addr()?, "api listening");
        let stop = shutdown.clone();
        let serve = async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("serving HTTP")
        };
        Some(supervise("api", &shutdown, serve))
    } else {
        None
    };

    let bus = backends.bus.clone();
    let search = backends.search.clone();
    let stop = shutdown.clone();
    let done = tokio::spawn(async move {
        stop.cancelled().await;
        tracing::info!("stopping: finishing in-flight requests");
        // Every step runs even if an earlier one failed; the errors are reported together.
        let mut errors = Vec::new();
        if let Some(server) = server {
            errors.extend(joined(server.await));
        }
        if let Some(scheduler) = scheduler {
            errors.extend(joined(scheduler.await));
        }
        // Only now: requests in flight and the scheduler's last tick still published.
        bus.close();
        for consumer in consumers {
            errors.extend(joined(consumer.await));
        }
        errors.extend(search.flush().await.err());
        match errors.len() {
            0 => {
                tracing::info!("stopped cleanly");
                Ok(())
            }
            _ => Err(anyhow::anyhow!(
                "{}",
                errors
                    .iter()
                    .map(|e| format!("{e:#}"))
                    .collect::<Vec<_>>()
                    .join("; ")
            )),
        }
    });
    Ok(Running {
        addr,
        shutdown,
        done,
    })
}

/// Runs a role; if it ends before the shutdown signal (an error, a panic, or a consumer whose
/// bus went away), that is a failure of the whole process: stop everything.
fn supervise(
    role: &'static str,
    shutdown: &CancellationToken,
    work: impl std::future::Future<Output = Result<()>> + Send + 'static,
) -> JoinHandle<Result<()>> {
    let shutdown = shutdown.clone();
    let task = tokio::spawn(work);
    tokio::spawn(async move {
        let result = joined(task.await).map_or(Ok(()), Err);
        if shutdown.is_cancelled() {
            return result.map_err(|e| e.context(format!("{role} failed while stopping")));
        }
        let error = result
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("stopped unexpectedly"));
        let error = error.context(format!("the {role} role stopped"));
        tracing::error!(error = %format!("{error:#}"), "stopping every role");
        shutdown.cancel();
        Err(error)
    })
}

/// The error of a finished task, if it failed or panicked.
fn joined(outcome: Result<Result<()>, tokio::task::JoinError>) -> Option<anyhow::Error> {
    match outcome {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(e) => Some(anyhow::anyhow!("panicked: {e}")),
    }
}

/// `parley reindex`: rebuilds the search index from the store.
pub async fn reindex(config: &Config) -> Result<u64> {
    let sql_search = config.elasticsearch_url.is_none()
        && config.database_url.as_deref().is_some_and(|url| {
            ["mysql:", "mariadb:", "postgres:", "postgresql:"]
                .iter()
                .any(|scheme| url.starts_with(scheme))
        });
    if sql_search {
        tracing::info!("search uses the database's own full-text index, which keeps itself: nothing to rebuild");
        return Ok(0);
    }
    let backends = Backends::open(config).await?;
    let total = backends.store.count_messages().await?;
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} messages ({per_sec}, {eta} left)",
        )
        .expect("valid template"),
    );
    backends.search.clear().await?;
    let done = crate::search::index_from_store(
        backends.search.as_ref(),
        backends.store.as_ref(),
        0,
        &|n| bar.set_position(n),
    )
    .await?;
    bar.finish();
    Ok(done)
}
