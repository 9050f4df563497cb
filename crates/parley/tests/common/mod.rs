//! Test harness: the app on port 0 with a fresh data directory (in-process), or the real
//! binary as a child process; clients with credentials; polling with a deadline.
#![allow(dead_code)]

use parley::config::Config;
use parley::startup::{self, Role, Running};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    running: Option<Running>,
}

/// The configuration every in-process test starts from: loopback, port 0, quick count sync,
/// and the engines of the stack under test.
pub async fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_data_dir(dir);
    config.host = "127.0.0.1".parse().unwrap();
    config.port = 0;
    config.count_sync_interval = Duration::from_millis(100);
    for (name, value) in stack().env().await {
        match name {
            "DATABASE_URL" => config.database_url = Some(value),
            "REDIS_URL" => config.redis_url = Some(value),
            "RABBITMQ_URL" => config.rabbitmq_url = Some(value),
            "NATS_URL" => config.nats_url = Some(value),
            "ELASTICSEARCH_URL" => config.elasticsearch_url = Some(value),
            "PARLEY_NAMESPACE" => config.namespace = value,
            "JWT_SECRET" => config.jwt_secret = Some(value),
            other => unreachable!("{other}"),
        }
    }
    config
}

/// The backends the behaviour suites run on, from `PARLEY_TEST_STACK` (scripts/test runs
/// the suites once per stack this machine has).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stack {
    /// No services: SQLite, tantivy, in-process sequencer, cache and bus.
    Embedded,
    MariadbRedisRabbitmq,
    PostgresRedisNats,
    /// The embedded stack with search on Elasticsearch/OpenSearch (osmem-server here).
    EmbeddedElasticsearch,
}

pub fn stack() -> Stack {
    match std::env::var("PARLEY_TEST_STACK").as_deref() {
        Err(_) | Ok("" | "embedded") => Stack::Embedded,
        Ok("mariadb-redis-rabbitmq") => Stack::MariadbRedisRabbitmq,
        Ok("postgres-redis-nats") => Stack::PostgresRedisNats,
        Ok("embedded-elasticsearch") => Stack::EmbeddedElasticsearch,
        Ok(other) => panic!("unknown PARLEY_TEST_STACK {other:?}"),
    }
}

/// The osmem-server this test process shares (one per process, stopped at exit).
static SEARCH: std::sync::OnceLock<parley::testing::PrivateSearch> = std::sync::OnceLock::new();

impl Stack {
    /// Whether a 201 means "committed" (write-through) rather than "queued on a broker".
    pub fn is_write_through(self) -> bool {
        matches!(self, Stack::Embedded | Stack::EmbeddedElasticsearch)
    }

    /// Whether search finds parts of words (`ell` in "hello"): MySQL FULLTEXT cannot.
    pub fn finds_parts_of_words(self) -> bool {
        self != Stack::MariadbRedisRabbitmq
    }

    /// The variables that point a process at this stack's engines: a fresh database and a
    /// fresh namespace (Redis keys, queues, streams, index) each time.
    pub async fn env(self) -> Vec<(&'static str, String)> {
        use parley::testing::{fresh_database, namespace, Engine};
        let need = |engine: Engine| {
            engine
                .url()
                .unwrap_or_else(|| panic!("PARLEY_TEST_STACK={self:?} needs {engine:?}"))
        };
        let mut env = vec![("PARLEY_NAMESPACE", namespace())];
        if !self.is_write_through() {
            // Processes of one deployment share the token secret.
            env.push(("JWT_SECRET", uuid::Uuid::new_v4().simple().to_string()));
        }
        match self {
            Stack::Embedded => {}
            Stack::EmbeddedElasticsearch => {
                let search = SEARCH.get_or_init(|| {
                    parley::testing::private_search()
                        .expect("PARLEY_TEST_STACK=embedded-elasticsearch needs osmem-server")
                });
                env.push(("ELASTICSEARCH_URL", search.url.clone()));
            }
            Stack::MariadbRedisRabbitmq | Stack::PostgresRedisNats => {
                let (server, bus, bus_url) = match self {
                    Stack::MariadbRedisRabbitmq => {
                        (Engine::MariaDb, "RABBITMQ_URL", need(Engine::RabbitMq))
                    }
                    _ => (Engine::Postgres, "NATS_URL", need(Engine::Nats)),
                };
                let database = fresh_database(&need(server))
                    .await
                    .expect("a fresh database");
                env.push(("DATABASE_URL", database));
                env.push(("REDIS_URL", need(Engine::Redis)));
                env.push((bus, bus_url));
            }
        }
        env
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path()).await;
        adjust(&mut config);
        let running = startup::start(config, &Role::ALL)
            .await
            .expect("the app starts");
        let base = format!("http://{}", running.addr.unwrap());
        Self {
            base,
            client: client(),
            dir,
            running: Some(running),
        }
    }

    /// Stops gracefully and waits for every role to drain.
    pub async fn stop(mut self) {
        let running = self.running.take().unwrap();
        running.shutdown.cancel();
        running.wait().await.expect("a clean stop");
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// Signs a new user up and gets a token.
    pub async fn user(&self, name: &str) -> TestUser {
        let email = format!(
            "{}-{}@example.com",
            name.to_lowercase(),
            uuid::Uuid::new_v4().simple()
        );
        let response = self
            .request(Method::POST, "/users")
            .json(&json!({"name": name, "email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        let token: Value = self
            .request(Method::POST, "/auth/token")
            .basic_auth(&email, Some(PASSWORD))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        TestUser {
            name: name.to_owned(),
            email,
            token: token["token"].as_str().unwrap().to_owned(),
        }
    }

    /// A request with the user's bearer token.
    pub fn as_user(&self, user: &TestUser, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(&user.token)
    }

    /// Creates an application and returns its token.
    pub async fn application(&self, user: &TestUser) -> String {
        let (status, body) = send(
            self.as_user(user, Method::POST, "/applications")
                .json(&json!({"name": "app"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn chat(&self, user: &TestUser, app: &str) -> i64 {
        let (status, body) =
            send(self.as_user(user, Method::POST, &format!("/applications/{app}/chats"))).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let number = body["chatNumber"].as_i64().unwrap();
        self.persisted(user, &format!("/applications/{app}/chats/{number}"))
            .await;
        number
    }

    /// On a broker stack a 201 means "queued": waits until the writer has persisted the item,
    /// so a test reads it back as it would on the write-through embedded stack.
    pub async fn persisted(&self, user: &TestUser, path: &str) {
        if stack().is_write_through() {
            return;
        }
        eventually(Duration::from_secs(10), path, || async {
            let (status, _) = send(self.as_user(user, Method::GET, path)).await;
            (status == StatusCode::OK).then_some(())
        })
        .await
    }

    pub async fn message(&self, user: &TestUser, app: &str, chat: i64, text: &str) -> i64 {
        let path = format!("/applications/{app}/chats/{chat}/messages");
        let (status, body) = send(
            self.as_user(user, Method::POST, &path)
                .json(&json!({"body": text})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let number = body["messageNumber"].as_i64().unwrap();
        self.persisted(user, &format!("{path}/{number}")).await;
        number
    }
}

pub struct TestUser {
    pub name: String,
    pub email: String,
    pub token: String,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(512)
        .build()
        .unwrap()
}

/// Sends and returns the status and the JSON body (Null when the body is not JSON).
pub async fn send(request: RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.expect("the server answers");
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Asserts the API.md error shape and returns its code.
pub fn error_code(body: &Value) -> &str {
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(!message.is_empty(), "an error body with a message: {body}");
    body["error"]["code"].as_str().expect("an error code")
}

/// Polls `check` until it yields `Some`, failing after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The real `parley` binary as a child process.
pub struct Binary {
    pub child: Child,
    pub base: String,
}

impl Binary {
    /// Starts `parley serve` on `data_dir` and the stack's engines (`env`, from
    /// `Stack::env`: pass the same to a restart) and waits until it listens.
    pub fn serve(data_dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        Self::start("serve", data_dir, env)
    }

    /// Starts a role that serves HTTP (`serve` or `api`) and waits until it listens.
    pub fn start(role: &str, data_dir: &std::path::Path, env: &[(&str, String)]) -> Self {
        let child = Self::command(role, data_dir, env)
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let mut binary = Self {
            child,
            base: String::new(),
        };
        binary.await_listening();
        binary
    }

    /// Reads the log of a process started with its stderr piped until it listens, and sets
    /// `base` to its address.
    pub fn await_listening(&mut self) {
        let stderr = self.child.stderr.take().expect("the log is piped");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the binary logs until it listens")
                .unwrap();
            let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if entry["message"] == "api listening" {
                break entry["addr"].as_str().unwrap().to_owned();
            }
        };
        // Keep draining the log so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.base = format!("http://{addr}");
    }

    /// The command that runs `role` as `start` does (its log goes nowhere unless piped).
    pub fn command(role: &str, data_dir: &std::path::Path, env: &[(&str, String)]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_parley"));
        command
            .arg(role)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("PARLEY_DATA_DIR", data_dir)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("COUNT_SYNC_INTERVAL", "100ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        command
    }

    /// Signs a user up, gets a token and creates an application: (JWT, application token).
    pub async fn account(&self, client: &reqwest::Client, email: &str) -> (String, String) {
        let base = &self.base;
        let sign_up = json!({"name": "N", "email": email, "password": PASSWORD});
        let (status, body) = send(client.post(format!("{base}/users")).json(&sign_up)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = client
            .post(format!("{base}/auth/token"))
            .basic_auth(email, Some(PASSWORD));
        let (_, token) = send(token).await;
        let jwt = token["token"].as_str().unwrap().to_owned();
        let app = client
            .post(format!("{base}/applications"))
            .bearer_auth(&jwt);
        let (status, app) = send(app.json(&json!({"name": "app"}))).await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        (jwt, app["token"].as_str().unwrap().to_owned())
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal).unwrap();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every route that names an application, with a valid request otherwise.
pub fn token_routes(token: &str) -> Vec<(Method, String, Option<Value>)> {
    let app = format!("/applications/{token}");
    let chat = format!("{app}/chats/1");
    let v1 = format!("/api/v1/chat_applications/{token}");
    let v1_chat = format!("{v1}/chats/1");
    vec![
        (Method::GET, app.clone(), None),
        (Method::PUT, app.clone(), Some(json!({"name": "x"}))),
        (Method::POST, format!("{app}/chats"), None),
        (Method::GET, format!("{app}/chats"), None),
        (Method::GET, chat.clone(), None),
        (
            Method::POST,
            format!("{chat}/messages"),
            Some(json!({"body": "x"})),
        ),
        (Method::GET, format!("{chat}/messages"), None),
        (
            Method::PUT,
            format!("{chat}/messages"),
            Some(json!({"messageNumber": 1, "body": "x"})),
        ),
        (Method::GET, format!("{chat}/messages/1"), None),
        (
            Method::PUT,
            format!("{chat}/messages/1"),
            Some(json!({"body": "x"})),
        ),
        (Method::GET, format!("{chat}/messages/search?q=hello"), None),
        (Method::GET, v1.clone(), None),
        (
            Method::PUT,
            v1.clone(),
            Some(json!({"chat_application": {"name": "x"}})),
        ),
        (Method::POST, format!("{v1}/chats"), None),
        (Method::GET, format!("{v1}/chats"), None),
        (Method::GET, v1_chat.clone(), None),
        (
            Method::POST,
            format!("{v1_chat}/messages"),
            Some(json!({"message": {"body": "x"}})),
        ),
        (Method::GET, format!("{v1_chat}/messages"), None),
        (Method::GET, format!("{v1_chat}/messages/1"), None),
        (
            Method::PUT,
            format!("{v1_chat}/messages/1"),
            Some(json!({"message": {"body": "x"}})),
        ),
        (
            Method::GET,
            format!("{v1_chat}/messages/search?q=hello"),
            None,
        ),
    ]
}

/// The production topology as local processes (scripts/local-topology): 2 api, 2 writer,
/// 1 scheduler, 1 notifier of the real binary on the stack's engines.
pub struct Topology {
    script: Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub pids: std::collections::BTreeMap<String, i32>,
    pub apis: Vec<String>,
    pub env: Vec<(&'static str, String)>,
    pub logs: tempfile::TempDir,
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Topology {
    /// Starts the topology on `env` (from `Stack::env`) and waits until every api is ready.
    pub fn start(env: Vec<(&'static str, String)>) -> Self {
        let logs = tempfile::tempdir().unwrap();
        let ports = format!("{} {}", free_port(), free_port());
        let mut script = Command::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/local-topology"
        ))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("PARLEY_BIN", env!("CARGO_BIN_EXE_parley"))
        .env("API_PORTS", &ports)
        .env("LOG_DIR", logs.path())
        .env("COUNT_SYNC_INTERVAL", "200ms")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("scripts/local-topology starts");
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = BufReader::new(script.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut topology = Self {
            script,
            lines,
            pids: Default::default(),
            apis: Vec::new(),
            env,
            logs,
        };
        loop {
            let line = topology
                .lines
                .recv_timeout(Duration::from_secs(90))
                .unwrap_or_else(|_| panic!("the topology is ready ({})", topology.log_tail()));
            if line == "ready" {
                break;
            }
            // started <name> pid=<pid> [url=<url>]
            let mut words = line.split_whitespace();
            if words.next() == Some("started") {
                let name = words.next().unwrap().to_owned();
                for word in words {
                    if let Some(pid) = word.strip_prefix("pid=") {
                        topology.pids.insert(name.clone(), pid.parse().unwrap());
                    } else if let Some(url) = word.strip_prefix("url=") {
                        topology.apis.push(url.to_owned());
                    }
                }
            }
        }
        topology
    }

    pub fn signal(&self, name: &str, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pids[name]), signal).unwrap();
    }

    /// Starts one more process of `role` on the same engines (e.g. a writer after a kill).
    pub fn spawn_role(&self, role: &str) -> Child {
        Command::new(env!("CARGO_BIN_EXE_parley"))
            .arg(role)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("COUNT_SYNC_INTERVAL", "200ms")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts")
    }

    /// SIGTERM to every process (through the script); returns each one's exit code.
    pub fn stop(mut self) -> std::collections::BTreeMap<String, i32> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.script.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let mut codes = std::collections::BTreeMap::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(60)) {
            let mut words = line.split_whitespace();
            if words.next() == Some("exited") {
                let name = words.next().unwrap().to_owned();
                let code = words.next().unwrap().strip_prefix("code=").unwrap();
                codes.insert(name, code.parse().unwrap());
            }
        }
        let _ = self.script.wait();
        // The logs go with the topology: show a failed process's end now, for the failure.
        for (name, code) in &codes {
            if *code != 0 {
                let tail = last_lines(&self.logs.path().join(format!("{name}.log")), 30);
                eprintln!("--- {name} exited with code {code}; the end of its log:\n{tail}");
            }
        }
        codes
    }

    /// The end of every process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.logs.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            out += &format!(
                "\n--- {:?}\n{}",
                entry.file_name(),
                last_lines(&entry.path(), 5)
            );
        }
        out
    }
}

/// The last `n` lines of a file (empty if it cannot be read).
fn last_lines(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(n).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

impl Drop for Topology {
    fn drop(&mut self) {
        // A failed test must not leave processes behind.
        for pid in self.pids.values() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(*pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.script.kill();
        let _ = self.script.wait();
    }
}

/// A TCP relay to a broker that a test can cut, to make the broker unreachable for one
/// process without stopping the shared service.
pub struct Relay {
    pub port: u16,
    cut: tokio_util::sync::CancellationToken,
    handle: tokio::task::JoinHandle<()>,
    /// Relaying; while false, connections are accepted and closed at once (an engine that
    /// is not up yet).
    open: Arc<std::sync::atomic::AtomicBool>,
    refused: Arc<std::sync::atomic::AtomicUsize>,
}

impl Relay {
    /// A relay to `target`, relaying from the start.
    pub async fn to(target: String) -> Self {
        Self::start(target, true).await
    }

    /// A relay to `target` that closes every connection until `open` is called.
    pub async fn refusing(target: String) -> Self {
        Self::start(target, false).await
    }

    async fn start(target: String, open: bool) -> Self {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = tokio_util::sync::CancellationToken::new();
        let open = Arc::new(AtomicBool::new(open));
        let refused = Arc::new(AtomicUsize::new(0));
        let stop = cut.clone();
        let (relaying, refusals) = (open.clone(), refused.clone());
        let handle = tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                if !relaying.load(Ordering::SeqCst) {
                    refusals.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let target = target.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Self {
            port,
            cut,
            handle,
            open,
            refused,
        }
    }

    /// Starts relaying.
    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Connections closed unrelayed so far.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes every relayed connection and refuses new ones.
    pub async fn cut(self) {
        self.cut.cancel();
        let _ = self.handle.await;
    }
}
