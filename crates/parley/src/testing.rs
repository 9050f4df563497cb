//! Test support shared by the adapters' own tests and the behaviour suites: where this
//! machine's engines are, a fresh database and namespace per test, and the rule for a missing
//! engine — skipped with a printed reason, or a failure when `CI=true` ("every backend test
//! must run").

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    MariaDb,
    Postgres,
    Redis,
    RabbitMq,
    Nats,
    Elasticsearch,
}

impl Engine {
    /// The variable that points the tests at the engine.
    pub fn env(self) -> &'static str {
        match self {
            Engine::MariaDb => "PARLEY_TEST_MYSQL_URL",
            Engine::Postgres => "PARLEY_TEST_POSTGRES_URL",
            Engine::Redis => "PARLEY_TEST_REDIS_URL",
            Engine::RabbitMq => "PARLEY_TEST_RABBITMQ_URL",
            Engine::Nats => "PARLEY_TEST_NATS_URL",
            Engine::Elasticsearch => "PARLEY_TEST_ELASTICSEARCH_URL",
        }
    }

    /// Where the engine runs on a developer machine (and on CI) when the variable is unset.
    pub fn default_url(self) -> &'static str {
        match self {
            Engine::MariaDb => "mysql://root@127.0.0.1:3306/test",
            Engine::Postgres => "postgres://postgres@127.0.0.1:5432/postgres",
            Engine::Redis => "redis://127.0.0.1:6379",
            Engine::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Engine::Nats => "nats://127.0.0.1:4222",
            Engine::Elasticsearch => "http://127.0.0.1:9200",
        }
    }

    /// The engine's URL if it answers on its port. Otherwise `None` after printing why the
    /// test is skipped — or, under `CI=true`, a panic: CI must run every backend test.
    pub fn url(self) -> Option<String> {
        let url = std::env::var(self.env()).unwrap_or_else(|_| self.default_url().to_owned());
        if reachable(&url) {
            return Some(url);
        }
        if ci() {
            panic!(
                "{self:?} is unreachable at {url} ({}), and CI=true requires every backend test to run",
                self.env()
            );
        }
        eprintln!(
            "SKIPPED: {self:?} is unreachable at {url} (set {} to point at one)",
            self.env()
        );
        None
    }
}

/// Whether this run must not skip anything (`CI=true`).
/// This process's anonymous resident memory in KiB, for tests that bound memory (nextest runs
/// each test in a process of its own, so the figure is that test's).
pub fn resident_anon_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("RssAnon:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("RssAnon in /proc/self/status")
}

pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn reachable(url: &str) -> bool {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (
        parsed.host_str(),
        parsed.port_or_known_default().or(match parsed.scheme() {
            "mysql" => Some(3306),
            "postgres" | "postgresql" => Some(5432),
            "redis" => Some(6379),
            "amqp" => Some(5672),
            "nats" => Some(4222),
            _ => None,
        }),
    ) else {
        return false;
    };
    let Ok(mut addrs) = (host, port).to_socket_addrs() else {
        return false;
    };
    addrs.any(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok())
}

/// A name no other test or run uses: for Redis key prefixes, queue names, streams, indices.
pub fn namespace() -> String {
    format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Creates an empty database on the server of `server_url` (MySQL/MariaDB or PostgreSQL) and
/// returns its URL. Names start with `parley_t_` so a cleanup can find them.
pub async fn fresh_database(server_url: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let name = format!(
        "parley_t_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let mut url = reqwest::Url::parse(server_url)?;
    if url.scheme().starts_with("postgres") {
        let mut conn = sqlx::PgConnection::connect(server_url).await?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await?;
    } else {
        let mut conn = sqlx::MySqlConnection::connect(server_url).await?;
        sqlx::query(&format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        ))
        .execute(&mut conn)
        .await?;
    }
    url.set_path(&name);
    Ok(url.to_string())
}

/// A search cluster for one test: the one `PARLEY_TEST_ELASTICSEARCH_URL` points at, or a
/// private osmem-server (an in-memory OpenSearch-compatible test double, `pip install
/// osmem-server`), killed on drop. Tests share a real cluster safely through `namespace()`.
pub struct PrivateSearch {
    pub url: String,
    server: Option<std::process::Child>,
}

/// How long osmem-server may take to answer (it starts in milliseconds).
const SEARCH_START_DEADLINE: Duration = Duration::from_secs(30);

impl PrivateSearch {
    pub fn start() -> anyhow::Result<PrivateSearch> {
        search_source().start()
    }

    /// Whether this is the osmem test double, for the few tests that only a real cluster can
    /// pass (each says why when it skips).
    pub fn is_osmem(&self) -> bool {
        self.server.is_some()
    }
}

enum SearchSource {
    Cluster(String),
    Osmem(std::path::PathBuf),
    Missing(String),
}

impl SearchSource {
    fn start(self) -> anyhow::Result<PrivateSearch> {
        match self {
            SearchSource::Cluster(url) => Ok(PrivateSearch { url, server: None }),
            SearchSource::Osmem(binary) => start_osmem(&binary),
            SearchSource::Missing(why) => anyhow::bail!("{why}"),
        }
    }
}

fn search_source() -> SearchSource {
    if let Ok(url) = std::env::var(Engine::Elasticsearch.env()) {
        return SearchSource::Cluster(url);
    }
    match osmem_binary() {
        Some(binary) => SearchSource::Osmem(binary),
        None => SearchSource::Missing(format!(
            "osmem-server is not installed (pip install osmem-server, or set OSMEM_SERVER_BIN to \
             its executable) and {} is unset",
            Engine::Elasticsearch.env()
        )),
    }
}

impl Drop for PrivateSearch {
    fn drop(&mut self) {
        if let Some(server) = &mut self.server {
            let _ = server.kill();
            let _ = server.wait();
        }
    }
}

/// `PrivateSearch::start`, with the rule of `Engine::url` when no cluster can be had: `None`
/// after printing why the test is skipped, or a panic under `CI=true`. A server that is there
/// but fails to start is always a failure.
pub fn private_search() -> Option<PrivateSearch> {
    match search_source() {
        SearchSource::Missing(why) if ci() => {
            panic!("{why}, and CI=true requires every backend test to run")
        }
        SearchSource::Missing(why) => {
            eprintln!("SKIPPED: {why}");
            None
        }
        source => Some(source.start().expect("starting the search server")),
    }
}

/// osmem-server's executable: `OSMEM_SERVER_BIN`, `osmem-server` on the PATH, or the one the
/// Python package bundles (pip does not put it on the PATH).
fn osmem_binary() -> Option<std::path::PathBuf> {
    if let Some(path) = std::env::var_os("OSMEM_SERVER_BIN") {
        return Some(path.into());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("osmem-server"))
            .find(|candidate| candidate.is_file())
    });
    if on_path.is_some() {
        return on_path;
    }
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import osmem_server; print(osmem_server.resolve_binary())",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let path = std::path::PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    (output.status.success() && path.is_file()).then_some(path)
}

fn start_osmem(binary: &std::path::Path) -> anyhow::Result<PrivateSearch> {
    use anyhow::Context;
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    // Port 0: the server picks a free port and prints `{"url": …}` once it listens. It also
    // exits when its stdin closes or this process ends, so a killed test leaves nothing behind.
    let mut server = Command::new(binary)
        .args(["-addr", "127.0.0.1:0", "-no-ja", "-parent-pid"])
        .arg(std::process::id().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let stdout = server.stdout.take().expect("piped stdout");
    let (ready, announced) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps reading after the announcement, so the server never blocks on a full pipe.
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(serde_json::Value::Object(fields)) = serde_json::from_str(&line) {
                if let Some(url) = fields.get("url").and_then(|u| u.as_str()) {
                    let _ = ready.send(url.to_owned());
                }
            }
        }
    });
    let mut search = PrivateSearch {
        url: String::new(),
        server: Some(server),
    };
    let deadline = std::time::Instant::now() + SEARCH_START_DEADLINE;
    search.url = announced
        .recv_timeout(SEARCH_START_DEADLINE)
        .map_err(|_| anyhow::anyhow!("osmem-server did not announce its address"))?;
    while !reachable(&search.url) {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("osmem-server does not answer at {}", search.url);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(search)
}

/// A Redis server of the test's own, for tests that wipe Redis (`FLUSHALL`) or restart it and
/// so must not share the one other tests use. No persistence unless asked: a restart is empty,
/// like a crash. Killed when dropped.
pub struct PrivateRedis {
    pub url: String,
    port: u16,
    args: Vec<String>,
    child: std::process::Child,
}

impl PrivateRedis {
    /// Starts `redis-server` on a free loopback port and waits until it answers `PING`.
    /// `Ok(None)` after printing why the test is skipped when `redis-server` is not installed
    /// (a panic under `CI=true`, as for [`Engine::url`]).
    pub fn start() -> anyhow::Result<Option<PrivateRedis>> {
        Self::start_with(&[])
    }

    /// As [`PrivateRedis::start`], with more `redis-server` options (e.g. `--dir` for a test
    /// that restarts Redis from a snapshot).
    pub fn start_with(options: &[&str]) -> anyhow::Result<Option<PrivateRedis>> {
        if on_path("redis-server").is_none() {
            if ci() {
                panic!(
                    "redis-server is not on PATH, and CI=true requires every backend test to run"
                );
            }
            eprintln!("SKIPPED: redis-server is not on PATH (needed for a private Redis)");
            return Ok(None);
        }
        // args[1] is the port, picked below.
        let defaults = [
            "--port",
            "",
            "--save",
            "",
            "--appendonly",
            "no",
            "--bind",
            "127.0.0.1",
        ];
        let mut args: Vec<String> = defaults
            .into_iter()
            .chain(options.iter().copied())
            .map(str::to_owned)
            .collect();
        // The port is free when picked but could be taken before redis-server binds it: retry.
        let mut last_error = None;
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            args[1] = port.to_string();
            match Self::spawn(port, args.clone()) {
                Ok(redis) => return Ok(Some(redis)),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.expect("three attempts"))
    }

    /// Kills the server (SIGKILL, as a crash) and starts it again on the same port with the
    /// same options; what it holds afterwards is what its persistence options kept.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let _ = self.child.kill();
        self.child.wait()?;
        let restarted = Self::spawn(self.port, self.args.clone())?;
        // Swap in the new server; the old handle, already reaped, is dropped harmlessly.
        *self = restarted;
        Ok(())
    }

    fn spawn(port: u16, args: Vec<String>) -> anyhow::Result<PrivateRedis> {
        let child = std::process::Command::new("redis-server")
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut redis = PrivateRedis {
            url: format!("redis://127.0.0.1:{port}"),
            port,
            args,
            child,
        };
        // On failure, dropping `redis` kills the child.
        redis.wait_until_ready(Duration::from_secs(10))?;
        Ok(redis)
    }

    fn wait_until_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + within;
        let client = redis::Client::open(self.url.as_str())?;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("redis-server exited at start ({status})");
            }
            let pong = client
                .get_connection_with_timeout(Duration::from_millis(200))
                .and_then(|mut conn| redis::cmd("PING").query::<String>(&mut conn));
            match pong {
                Ok(_) => return Ok(()),
                Err(e) if std::time::Instant::now() > deadline => {
                    anyhow::bail!("redis-server at {} did not answer PING: {e}", self.url)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The first executable called `name` on `PATH`, as `which` finds it.
fn on_path(name: &str) -> Option<std::path::PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
}
