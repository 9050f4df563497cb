//! Start-up: the one place where configuration picks the adapters (STYLE habit 2), and the
//! shared lifecycle of the roles: start, run until the shutdown signal, drain in order
//! (stop accepting HTTP, finish in-flight requests, close the bus, let consumers drain).

use crate::bus::{Bus, MemoryBus, RetryPolicy};
use crate::cache::{Cache, MemoryCache};
use crate::config::Config;
use crate::domain::{JwtKeys, Service, ServiceSettings};
use crate::http::{self, AppState};
use crate::lock::{LeaderLock, MemoryLock};
use crate::mailer::{Mailer, OutboxMailer};
use crate::roles::notifier::Notifier;
use crate::roles::scheduler::{Scheduler, SchedulerSettings};
use crate::roles::writer::{Writer, WriterSettings};
use crate::search::{SearchIndex, TantivyIndex};
use crate::sequencer::{MemorySequencer, Sequencer};
use crate::store::{SqliteStore, Store};
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
        std::fs::create_dir_all(data)
            .with_context(|| format!("creating PARLEY_DATA_DIR {}", data.display()))?;
        let url = config
            .database_url
            .clone()
            .unwrap_or_else(|| SqliteStore::url_in(data));
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(&url)
                .await
                .with_context(|| format!("opening DATABASE_URL {url}"))?,
        );
        store.migrate().await.context("migrating the database")?;
        let search: Arc<dyn SearchIndex> =
            Arc::new(TantivyIndex::open(&data.join("search")).context("opening the search index")?);
        let caught_up = crate::search::catch_up(search.as_ref(), store.as_ref())
            .await
            .context("catching the search index up with the store")?;
        if caught_up > 0 {
            tracing::info!(
                messages = caught_up,
                "search index caught up with the store"
            );
        }
        Ok(Self {
            sequencer: Arc::new(MemorySequencer::new(store.clone())),
            store,
            bus: Arc::new(MemoryBus::default()),
            search,
            cache: Arc::new(MemoryCache::default()),
            lock: Arc::new(MemoryLock::default()),
            mailer: Arc::new(OutboxMailer::new(
                data.join("outbox"),
                config.mail_from.clone(),
            )?),
            in_process: vec![
                "DATABASE_URL (sqlite is one machine's)",
                "REDIS_URL",
                "RABBITMQ_URL or NATS_URL",
            ],
        })
    }
}

/// The JWT secret: `JWT_SECRET`, or one generated on first start and kept in the data dir.
fn jwt_secret(config: &Config) -> Result<Vec<u8>> {
    if let Some(secret) = &config.jwt_secret {
        return Ok(secret.clone().into_bytes());
    }
    let path = config.data_dir.join("jwt_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        return Ok(existing.trim().as_bytes().to_vec());
    }
    let secret = hex::encode(rand::random::<[u8; 32]>());
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    Ok(secret.into_bytes())
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    options.open(path)?.write_all(text.as_bytes())
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

/// Starts `roles` on the configured backends.
pub async fn start(config: Config, roles: &[Role]) -> Result<Running> {
    config.validate()?;
    let backends = Backends::open(&config).await?;
    let alone = roles.len() < Role::ALL.len();
    if alone && !backends.in_process.is_empty() {
        anyhow::bail!(
            "this role runs apart from the others, so it needs shared backends, but these are in-process: set {}; \
             or run every role in one process with `parley serve`",
            backends.in_process.join(", ")
        );
    }
    let retry = RetryPolicy {
        max_attempts: config.max_attempts,
        ..RetryPolicy::default()
    };
    let shutdown = CancellationToken::new();
    let mut consumers: Vec<JoinHandle<Result<()>>> = Vec::new();

    if roles.contains(&Role::Writer) {
        let writer = Writer::new(
            backends.store.clone(),
            backends.search.clone(),
            backends.cache.clone(),
            backends.bus.clone(),
            WriterSettings {
                batch_max: config.writer_batch,
                retry: retry.clone(),
            },
        );
        consumers.push(tokio::spawn(writer.run()));
    }
    if roles.contains(&Role::Notifier) {
        consumers.push(tokio::spawn(
            Notifier::new(backends.bus.clone(), backends.mailer.clone(), retry).run(),
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
        tokio::spawn(scheduler.run(shutdown.clone()))
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
        let app = http::router(state, &config.cors());
        let listener = tokio::net::TcpListener::bind((config.host, config.port))
            .await
            .with_context(|| format!("listening on {}:{} (PORT)", config.host, config.port))?;
        addr = Some(listener.local_addr()?);
        tracing::info!(addr = %listener.local_addr()?, "api listening");
        let stop = shutdown.clone();
        Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
        }))
    } else {
        None
    };

    let bus = backends.bus.clone();
    let search = backends.search.clone();
    let stop = shutdown.clone();
    let done = tokio::spawn(async move {
        stop.cancelled().await;
        tracing::info!("stopping: finishing in-flight requests");
        if let Some(server) = server {
            server.await??;
        }
        // Only now: requests in flight were still waiting for their items to be persisted.
        bus.close();
        for consumer in consumers {
            consumer.await??;
        }
        if let Some(scheduler) = scheduler {
            scheduler.await??;
        }
        search.flush().await?;
        tracing::info!("stopped cleanly");
        Ok(())
    });
    Ok(Running {
        addr,
        shutdown,
        done,
    })
}

/// `parley reindex`: rebuilds the search index from the store.
pub async fn reindex(config: &Config) -> Result<u64> {
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
