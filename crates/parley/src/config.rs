//! Configuration: one clap struct, flags with environment fallbacks (conventional names
//! first), validated at start-up with messages that name the variable to fix.

use crate::http::CorsOrigins;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "parley", version, about = "Self-hostable chat backend")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every role in one process: api, writer, scheduler, notifier.
    Serve(Config),
    /// The HTTP API alone (needs shared backends).
    Api(Config),
    /// The queue consumer that persists chats and messages (needs shared backends).
    Writer(Config),
    /// Count sync and the deletion executor, one leader at a time (needs shared backends).
    Scheduler(Config),
    /// The e-mail sender (needs shared backends).
    Notifier(Config),
    /// Applies database migrations and exits.
    Migrate(Config),
    /// Rebuilds the search index from the store, with a progress bar.
    Reindex(Config),
    /// Prints the OpenAPI document.
    Openapi,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// TCP port of the HTTP API (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// Where the embedded stack keeps its database, search index, outbox and JWT secret.
    #[arg(long, env = "PARLEY_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// The store: `mysql://…` (MySQL/MariaDB), `postgres://…` or `sqlite://PATH`. Unset:
    /// SQLite in the data directory. With MySQL or PostgreSQL, search uses the database's
    /// own full-text index unless ELASTICSEARCH_URL is set.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Redis for the sequencer, cache, idempotency keys and leader lock (`redis://host:6379`).
    /// Unset: in-process.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// RabbitMQ bus (`amqp://user:pass@host:5672/%2f`). Unset (and no NATS_URL): in-process.
    #[arg(long, env = "RABBITMQ_URL", conflicts_with = "nats_url")]
    pub rabbitmq_url: Option<String>,
    /// NATS JetStream bus (`nats://host:4222`). Unset (and no RABBITMQ_URL): in-process.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Elasticsearch or OpenSearch for search (`http://host:9200`). Unset: tantivy in the data
    /// directory (SQLite) or the database's full-text index (MySQL, PostgreSQL).
    #[arg(long, env = "ELASTICSEARCH_URL")]
    pub elasticsearch_url: Option<String>,
    /// Prefix of every shared name (Redis keys, queues, streams, search index), so several
    /// deployments can share one Redis, broker or cluster. Empty: the seeds' plain names.
    #[arg(long, env = "PARLEY_NAMESPACE", default_value = "")]
    pub namespace: String,
    /// HS256 secret for tokens. Unset: generated once and kept in `<data dir>/jwt_secret`.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// How long an issued token is valid.
    #[arg(long, env = "JWT_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    pub jwt_ttl: Duration,
    /// How often count sync writes `chatsCount` / `messagesCount` (e.g. `10s`, `500ms`).
    #[arg(long, env = "COUNT_SYNC_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub count_sync_interval: Duration,
    /// How long verified credentials (HTTP Basic, a token's signature, its account) are
    /// remembered per process; a deleted account can act this long after its deletion.
    #[arg(long, env = "CREDENTIALS_CACHE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub credentials_cache_ttl: Duration,
    /// How long a scheduled account deletion waits for recovery.
    #[arg(long, env = "DELETION_DELAY", default_value = "24h", value_parser = humantime::parse_duration)]
    pub deletion_delay: Duration,
    /// Account deletions executed per day, across the deployment.
    #[arg(long, env = "DELETIONS_PER_DAY", default_value_t = 10)]
    pub deletions_per_day: i64,
    /// Most items the writer persists per batch.
    #[arg(long, env = "WRITER_BATCH", default_value_t = 500)]
    pub writer_batch: usize,
    /// How long the writer waits after a batch's first delivery for more to join it.
    #[arg(long, env = "WRITER_LINGER", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub writer_linger: Duration,
    /// Deliveries of a failing item before it is dead-lettered.
    #[arg(long, env = "MAX_ATTEMPTS", default_value_t = 8)]
    pub max_attempts: u32,
    /// Longest a request may take (reading its body included) before a 503.
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// How long a role (and `migrate`) keeps trying to reach its database, Redis and broker
    /// at start-up before it exits with the last error (`0s`: one attempt).
    #[arg(long, env = "STARTUP_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub startup_wait: Duration,
    /// How long a stop waits for in-flight work before giving up.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// Browser origins allowed by CORS: `*` or a comma-separated list.
    #[arg(long, env = "CORS_ORIGINS", default_value = "*")]
    pub cors_origins: String,
    /// Sender address of e-mails.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Parley <no-reply@parley.localhost>"
    )]
    pub mail_from: String,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log filter (tracing `EnvFilter` syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,
}

impl Config {
    /// Defaults for a data directory, as if no flag or variable were set (tests, tools).
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut config = Cli::parse_from(["parley", "serve"])
            .into_config()
            .expect("serve has a config");
        config.data_dir = data_dir.into();
        config
    }

    pub fn cors(&self) -> CorsOrigins {
        match self.cors_origins.trim() {
            "*" => CorsOrigins::Any,
            list => CorsOrigins::List(
                list.split(',')
                    .map(|o| o.trim().to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            ),
        }
    }

    /// Checks what clap cannot, with messages that name the variable.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.count_sync_interval < Duration::from_millis(10) {
            anyhow::bail!("COUNT_SYNC_INTERVAL must be at least 10ms");
        }
        if self.startup_wait > Duration::from_secs(24 * 3600) {
            anyhow::bail!("STARTUP_WAIT must be at most 24h");
        }
        if self.writer_linger > Duration::from_secs(1) {
            anyhow::bail!("WRITER_LINGER must be at most 1s");
        }
        if self.writer_batch == 0 || self.writer_batch > 10_000 {
            anyhow::bail!("WRITER_BATCH must be between 1 and 10000");
        }
        if self.deletions_per_day < 0 {
            anyhow::bail!("DELETIONS_PER_DAY must be 0 or more");
        }
        if let crate::http::CorsOrigins::List(origins) = self.cors() {
            for origin in origins {
                if origin.parse::<axum::http::HeaderValue>().is_err() || !origin.contains("://") {
                    anyhow::bail!(
                        "CORS_ORIGINS: {origin:?} is not an origin like https://app.example.com"
                    );
                }
            }
        }
        if self.request_timeout.is_zero() {
            anyhow::bail!("REQUEST_TIMEOUT must be more than 0");
        }
        if self.max_attempts == 0 {
            anyhow::bail!("MAX_ATTEMPTS must be at least 1");
        }
        if let Some(secret) = &self.jwt_secret {
            if secret.len() < 32 {
                anyhow::bail!("JWT_SECRET must be at least 32 bytes");
            }
        }
        if let Some(url) = &self.database_url {
            let known = ["sqlite:", "mysql:", "mariadb:", "postgres:", "postgresql:"];
            if !known.iter().any(|scheme| url.starts_with(scheme)) {
                anyhow::bail!(
                    "DATABASE_URL {url:?}: use mysql://…, postgres://…, sqlite://PATH, or leave it unset"
                );
            }
        }
        for (name, url, schemes) in [
            ("REDIS_URL", &self.redis_url, &["redis:", "rediss:"][..]),
            ("RABBITMQ_URL", &self.rabbitmq_url, &["amqp:", "amqps:"][..]),
            ("NATS_URL", &self.nats_url, &["nats:", "tls:"][..]),
            (
                "ELASTICSEARCH_URL",
                &self.elasticsearch_url,
                &["http:", "https:"][..],
            ),
        ] {
            if let Some(url) = url {
                if !schemes.iter().any(|scheme| url.starts_with(scheme)) {
                    anyhow::bail!("{name} {url:?} must start with {}", schemes.join(" or "));
                }
            }
        }
        if !self
            .namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || self.namespace.len() > 32
        {
            anyhow::bail!("PARLEY_NAMESPACE may hold up to 32 letters, digits, '_' and '-'");
        }
        Ok(())
    }
}

impl Cli {
    fn into_config(self) -> Option<Config> {
        match self.command {
            Command::Serve(c)
            | Command::Api(c)
            | Command::Writer(c)
            | Command::Scheduler(c)
            | Command::Notifier(c)
            | Command::Migrate(c)
            | Command::Reindex(c) => Some(c),
            Command::Openapi => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_linger_over_one_second_is_refused_by_name() {
        let mut config = Config::for_data_dir("data");
        assert_eq!(config.writer_linger, Duration::ZERO, "off by default");
        config.writer_linger = Duration::from_secs(1);
        config.validate().expect("1s is allowed");
        config.writer_linger = Duration::from_millis(1001);
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("WRITER_LINGER"), "{error}");
    }
}
