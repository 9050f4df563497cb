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
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery";

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    running: Option<Running>,
}

/// The configuration every in-process test starts from: loopback, port 0, quick count sync.
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut config = Config::for_data_dir(dir);
    config.host = "127.0.0.1".parse().unwrap();
    config.port = 0;
    config.count_sync_interval = Duration::from_millis(100);
    config
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
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
        body["chatNumber"].as_i64().unwrap()
    }

    pub async fn message(&self, user: &TestUser, app: &str, chat: i64, text: &str) -> i64 {
        let path = format!("/applications/{app}/chats/{chat}/messages");
        let (status, body) = send(
            self.as_user(user, Method::POST, &path)
                .json(&json!({"body": text})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["messageNumber"].as_i64().unwrap()
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
    /// Starts `parley serve` on `data_dir` and waits until it listens.
    pub fn serve(data_dir: &std::path::Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_parley"))
            .arg("serve")
            .env("PORT", "0")
            .env("HOST", "127.0.0.1")
            .env("PARLEY_DATA_DIR", data_dir)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("COUNT_SYNC_INTERVAL", "100ms")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the binary starts");
        let stderr = child.stderr.take().unwrap();
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
        Self {
            child,
            base: format!("http://{addr}"),
        }
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
