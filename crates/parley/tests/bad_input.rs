//! Invariant 6, black-box: bad input on every route of the main and the compatibility API is
//! a 4xx with the JSON error body, and writes nothing. Plus the compatibility API's happy path.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// An app with Ada's application "app", its chat 1 and that chat's message 1 "hello".
struct Fixture {
    app: TestApp,
    ada: TestUser,
    token: String,
}

async fn fixture() -> Fixture {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let token = app.application(&ada).await;
    assert_eq!(app.chat(&ada, &token).await, 1);
    assert_eq!(app.message(&ada, &token, 1, "hello").await, 1);
    Fixture { app, ada, token }
}

impl Fixture {
    async fn get(&self, path: &str) -> Value {
        let (status, body) = send(self.app.as_user(&self.ada, Method::GET, path)).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn get_until(&self, path: &str, accept: impl Fn(&Value) -> bool) -> Value {
        // On a broker stack a new item answers 404 until the writer has persisted it.
        eventually(WAIT, path, || async {
            let (status, body) = send(self.app.as_user(&self.ada, Method::GET, path)).await;
            (status == StatusCode::OK && accept(&body)).then_some(body)
        })
        .await
    }

    /// Sends `body` as raw bytes (whatever they are) with Ada's token.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (StatusCode, Value) {
        send(
            self.app
                .as_user(&self.ada, method, path)
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    async fn json(&self, method: Method, path: &str, body: &Value) -> (StatusCode, Value) {
        send(self.app.as_user(&self.ada, method, path).json(body)).await
    }

    /// Nothing was written: the fixture as it was, and the next numbers are the next ones (no
    /// rejected request spent a number either).
    async fn assert_untouched(&self) {
        // Counts are eventually consistent: wait for the fixture's to settle first.
        let apps = self
            .get_until("/applications", |a| a[0]["chatsCount"] == 1)
            .await;
        assert_eq!(
            apps,
            json!([{"token": self.token, "name": "app", "chatsCount": 1}]),
            "no application created or renamed"
        );
        let chats = self
            .get_until(&format!("/applications/{}/chats", self.token), |c| {
                c[0]["messagesCount"] == 1
            })
            .await;
        assert_eq!(chats, json!([{"chatNumber": 1, "messagesCount": 1}]));
        let messages = self
            .get(&format!("/applications/{}/chats/1/messages", self.token))
            .await;
        assert_eq!(messages.as_array().unwrap().len(), 1, "{messages}");
        assert_eq!(messages[0]["messageNumber"], 1);
        assert_eq!(messages[0]["body"], "hello", "no edit applied");

        // Sentinels: the next chat is 2 and the next message 2, and once the sentinel message
        // is readable the chat holds exactly messages 1 and 2.
        assert_eq!(self.app.chat(&self.ada, &self.token).await, 2);
        assert_eq!(
            self.app
                .message(&self.ada, &self.token, 1, "sentinel")
                .await,
            2
        );
        let path = format!("/applications/{}/chats/1/messages", self.token);
        let list = self
            .get_until(&path, |l| l.as_array().unwrap().len() >= 2)
            .await;
        let numbers: Vec<i64> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["messageNumber"].as_i64().unwrap())
            .collect();
        assert_eq!(numbers, vec![2, 1]);
        assert_eq!(list[1]["body"], "hello");
        let one = self.get(&format!("{path}/1")).await;
        assert_eq!(one["body"], "hello", "no edit applied");
        assert_eq!(self.get("/applications").await.as_array().unwrap().len(), 1);
    }
}

/// Asserts a 4xx with the JSON error body and the expected status; returns the code.
fn expect_error(what: &str, status: StatusCode, body: &Value, expected: StatusCode) {
    assert_eq!(status, expected, "{what}: {body}");
    let code = error_code(body);
    let want = match expected {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        other => panic!("unexpected {other}"),
    };
    assert_eq!(code, want, "{what}: {body}");
}

/// Which body a route takes; the field that `with_text` fills is its name or body.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    SignUp,
    Recover,
    Name,
    RenameByToken,
    CompatName,
    Text,
    EditByNumber,
    CompatText,
}

impl Kind {
    fn is_name(self) -> bool {
        matches!(
            self,
            Kind::SignUp | Kind::Name | Kind::RenameByToken | Kind::CompatName
        )
    }
    fn is_body(self) -> bool {
        matches!(self, Kind::Text | Kind::EditByNumber | Kind::CompatText)
    }
}

struct Route {
    method: Method,
    path: String,
    kind: Kind,
}

impl Route {
    fn what(&self) -> String {
        format!("{} {} ({:?})", self.method, self.path, self.kind)
    }
}

fn fresh_email() -> String {
    format!("new-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// The body of `kind` with its validated field (name, message body, recovery token) = `v`.
fn with_text(kind: Kind, token: &str, v: Value) -> Value {
    match kind {
        Kind::SignUp => json!({"name": v, "email": fresh_email(), "password": PASSWORD}),
        Kind::Recover => json!({ "recoveryToken": v }),
        Kind::Name => json!({ "name": v }),
        Kind::RenameByToken => json!({"token": token, "name": v}),
        Kind::CompatName => json!({"chat_application": {"name": v}}),
        Kind::Text => json!({ "body": v }),
        Kind::EditByNumber => json!({"messageNumber": 1, "body": v}),
        Kind::CompatText => json!({"message": {"body": v}}),
    }
}

/// The same values, positionally: what serde would take for a struct if let.
fn positional(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Array(map.values().map(positional).collect()),
        other => other.clone(),
    }
}

/// Every route that takes a JSON body, aimed at the fixture.
fn body_routes(token: &str) -> Vec<Route> {
    let app = format!("/applications/{token}");
    let v1 = format!("/api/v1/chat_applications/{token}");
    let route = |method: Method, path: String, kind: Kind| Route { method, path, kind };
    vec![
        route(Method::POST, "/users".into(), Kind::SignUp),
        route(Method::POST, "/users/recover".into(), Kind::Recover),
        route(Method::POST, "/applications".into(), Kind::Name),
        route(Method::PUT, "/applications".into(), Kind::RenameByToken),
        route(Method::PUT, app.clone(), Kind::Name),
        route(Method::POST, format!("{app}/chats/1/messages"), Kind::Text),
        route(
            Method::PUT,
            format!("{app}/chats/1/messages"),
            Kind::EditByNumber,
        ),
        route(Method::PUT, format!("{app}/chats/1/messages/1"), Kind::Text),
        route(
            Method::POST,
            "/api/v1/chat_applications".into(),
            Kind::CompatName,
        ),
        route(Method::PUT, v1.clone(), Kind::CompatName),
        route(
            Method::POST,
            format!("{v1}/chats/1/messages"),
            Kind::CompatText,
        ),
        route(
            Method::PUT,
            format!("{v1}/chats/1/messages/1"),
            Kind::CompatText,
        ),
    ]
}

#[tokio::test]
async fn malformed_json_is_400_on_every_route() {
    let fx = fixture().await;
    let malformed: &[&[u8]] = &[
        b"{",
        b"not json",
        b"{\"name\": }",
        b"{\"body\": \"x\",}",
        b"{'name': 'x'}",
        b"",
        b"   \n",
        b"{\"name\": \"x\"} trailing",
        b"{\"name\": \"x\"}{\"name\": \"y\"}",
        b"{\"name\": \"\xff\xfe\"}",
        b"\"unterminated",
        b"{\"name\": \"x\", \"body\": \"x\", \"password\": nul}",
    ];
    for route in body_routes(&fx.token) {
        for raw in malformed {
            let (status, body) = fx
                .raw(route.method.clone(), &route.path, raw.to_vec())
                .await;
            let what = format!("{} with {:?}", route.what(), String::from_utf8_lossy(raw));
            expect_error(&what, status, &body, StatusCode::BAD_REQUEST);
        }
    }
    fx.assert_untouched().await;
    fx.app.stop().await;
}

#[tokio::test]
async fn wrong_types_and_missing_fields_are_422_on_every_route() {
    let fx = fixture().await;
    let t = fx.token.clone();
    for route in body_routes(&t) {
        let valid = with_text(route.kind, &t, json!("fine words"));
        let mut bodies = vec![
            json!(42),
            json!("a string"),
            json!(null),
            json!(true),
            json!([]),
            json!({}),
            positional(&valid),
        ];
        for v in [
            json!(5),
            json!(1.5),
            json!(null),
            json!(false),
            json!(["x"]),
            json!({"a": "x"}),
        ] {
            bodies.push(with_text(route.kind, &t, v));
        }
        // Fields of the right name in the wrong place, or the wrong name.
        bodies.extend(match route.kind {
            Kind::SignUp => vec![
                json!({"name": "Eve", "email": fresh_email()}),
                json!({"name": "Eve", "password": PASSWORD}),
                json!({"email": fresh_email(), "password": PASSWORD}),
                json!({"name": "Eve", "email": 7, "password": PASSWORD}),
                json!({"name": "Eve", "email": fresh_email(), "password": 1234567890}),
                json!({"name": "Eve", "email": [fresh_email()], "password": PASSWORD}),
            ],
            Kind::Recover => vec![json!({"recovery_token": "abc"}), json!({"token": "abc"})],
            Kind::Name => vec![
                json!({"Name": "x"}),
                json!({"chat_application": {"name": "x"}}),
            ],
            Kind::RenameByToken => vec![
                json!({"name": "x"}),
                json!({"token": t}),
                json!({"token": 5, "name": "x"}),
                json!({"token": [t], "name": "x"}),
            ],
            Kind::CompatName => vec![
                json!({"name": "x"}),
                json!({"chat_application": "x"}),
                json!({"chat_application": null}),
                json!({"chat_application": {}}),
                json!({"chat_application": [{"name": "x"}]}),
            ],
            Kind::Text if route.method == Method::POST => vec![
                json!({"text": "x"}),
                json!({"message": {"body": "x"}}),
                json!({"body": "x", "createdAt": 5}),
                json!({"body": "x", "createdAt": "yesterday"}),
                json!({"body": "x", "createdAt": "2024-13-45T99:00:00Z"}),
                json!({"body": "x", "createdAt": ["2024-01-01T00:00:00Z"]}),
            ],
            Kind::Text => vec![json!({"text": "x"}), json!({"message": {"body": "x"}})],
            Kind::EditByNumber => vec![
                json!({"body": "x"}),
                json!({"messageNumber": 1}),
                json!({"messageNumber": "1", "body": "x"}),
                json!({"messageNumber": 1.5, "body": "x"}),
                json!({"messageNumber": null, "body": "x"}),
                json!({"messageNumber": 9223372036854775808u64, "body": "x"}),
                json!({"messageNumber": 1e30, "body": "x"}),
            ],
            Kind::CompatText => vec![
                json!({"body": "x"}),
                json!({"message": "x"}),
                json!({"message": null}),
                json!({"message": {}}),
                json!({"message": [{"body": "x"}]}),
            ],
        });
        for body in bodies {
            let (status, answer) = fx.json(route.method.clone(), &route.path, &body).await;
            let what = format!("{} with {body}", route.what());
            expect_error(&what, status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }
    fx.assert_untouched().await;
    fx.app.stop().await;
}

#[tokio::test]
async fn empty_and_whitespace_names_and_bodies_are_422() {
    let fx = fixture().await;
    for route in body_routes(&fx.token) {
        for blank in ["", " ", "   ", "\n\t \r\n", "\u{a0}", "\u{3000}"] {
            let body = with_text(route.kind, &fx.token, json!(blank));
            let (status, answer) = fx.json(route.method.clone(), &route.path, &body).await;
            let what = format!("{} with {body}", route.what());
            expect_error(&what, status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }
    fx.assert_untouched().await;
    fx.app.stop().await;
}

#[tokio::test]
async fn names_over_255_characters_are_422_and_255_is_fine() {
    let fx = fixture().await;
    let routes: Vec<Route> = body_routes(&fx.token)
        .into_iter()
        .filter(|r| r.kind.is_name())
        .collect();
    for route in &routes {
        for long in [
            "a".repeat(256),
            "é".repeat(256),
            "🦀".repeat(256),
            format!(" {} ", "a".repeat(256)),
        ] {
            let body = with_text(route.kind, &fx.token, json!(long));
            let (status, answer) = fx.json(route.method.clone(), &route.path, &body).await;
            let what = format!(
                "{} with a {}-character name",
                route.what(),
                long.chars().count()
            );
            expect_error(&what, status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }
    // Nothing was written by those.
    fx.assert_untouched().await;

    // 255 characters is fine, counted in characters (not bytes), after trimming.
    for route in &routes {
        for ok in [
            "b".repeat(255),
            "é".repeat(255),
            "🦀".repeat(255),
            format!("  {}  ", "c".repeat(255)),
        ] {
            let body = with_text(route.kind, &fx.token, json!(ok));
            let (status, answer) = fx.json(route.method.clone(), &route.path, &body).await;
            assert!(
                status.is_success(),
                "{} with 255 characters: {status} {answer}",
                route.what()
            );
            assert_eq!(answer["name"], ok.trim(), "{}", route.what());
        }
    }
    let one = fx.get(&format!("/applications/{}", fx.token)).await;
    assert_eq!(one["name"], "c".repeat(255));
    fx.app.stop().await;
}

#[tokio::test]
async fn bodies_over_64_kib_are_422_and_64_kib_is_fine() {
    let fx = fixture().await;
    let routes: Vec<Route> = body_routes(&fx.token)
        .into_iter()
        .filter(|r| r.kind.is_body())
        .collect();
    let max = 65536;
    for route in &routes {
        for long in [
            "x".repeat(max + 1),
            "é".repeat(max / 2) + "x",
            "🦀".repeat(max / 4) + " ",
        ] {
            let body = with_text(route.kind, &fx.token, json!(long));
            let (status, answer) = fx.json(route.method.clone(), &route.path, &body).await;
            let what = format!("{} with a {}-byte body", route.what(), long.len());
            expect_error(&what, status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }
    fx.assert_untouched().await;

    // Exactly 64 KiB is fine, counted in bytes, and kept as sent.
    let messages = format!("/applications/{}/chats/1/messages", fx.token);
    for (i, route) in routes.iter().enumerate() {
        let ok = if i % 2 == 0 {
            "y".repeat(max)
        } else {
            "é".repeat(max / 2)
        };
        let body = with_text(route.kind, &fx.token, json!(ok));
        let (status, answer) = fx.json(route.method.clone(), &route.path, &body).await;
        assert!(
            status.is_success(),
            "{} with 64 KiB: {status} {answer}",
            route.what()
        );
        // Each edit of message 1 lands; each new message is readable with its whole body.
        if route.method == Method::PUT {
            fx.get_until(&format!("{messages}/1"), |m| m["body"] == ok.as_str())
                .await;
        } else {
            let n = answer["messageNumber"]
                .as_i64()
                .or(answer["number"].as_i64())
                .unwrap();
            let m = fx.get_until(&format!("{messages}/{n}"), |_| true).await;
            assert_eq!(m["body"].as_str().unwrap().len(), max);
        }
    }
    fx.app.stop().await;
}

#[tokio::test]
async fn request_bodies_over_1_mib_are_413() {
    let fx = fixture().await;
    let huge = "z".repeat(1024 * 1024 + 1);
    for route in body_routes(&fx.token) {
        let body = with_text(route.kind, &fx.token, json!(huge));
        let (status, answer) = fx.json(route.method.clone(), &route.path, &body).await;
        expect_error(
            &route.what(),
            status,
            &answer,
            StatusCode::PAYLOAD_TOO_LARGE,
        );
        // Not JSON at all: the size is checked first.
        let (status, answer) = fx
            .raw(route.method.clone(), &route.path, huge.clone())
            .await;
        expect_error(
            &route.what(),
            status,
            &answer,
            StatusCode::PAYLOAD_TOO_LARGE,
        );
        // With an Idempotency-Key (it reads the body first).
        let (status, answer) = send(
            fx.app
                .as_user(&fx.ada, route.method.clone(), &route.path)
                .header("Idempotency-Key", "big")
                .json(&body),
        )
        .await;
        expect_error(
            &route.what(),
            status,
            &answer,
            StatusCode::PAYLOAD_TOO_LARGE,
        );
    }
    fx.assert_untouched().await;
    fx.app.stop().await;
}

#[tokio::test]
async fn unknown_tokens_are_404_on_every_route() {
    let fx = fixture().await;
    let unknown = [
        "A".repeat(24),
        fx.token
            .to_lowercase()
            .replace(|c: char| c.is_ascii_digit(), "0")
            + "Q",
        "no-such-token".into(),
        "a".repeat(65),
        "%20".into(),
        "tok%2Fen".into(),
        "%C3%BCml%C3%A4ut".into(),
        "..".into(),
    ];
    for bad in &unknown {
        for (method, path, body) in token_routes(bad) {
            let mut request = fx.app.as_user(&fx.ada, method.clone(), &path);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let (status, answer) = send(request).await;
            expect_error(
                &format!("{method} {path}"),
                status,
                &answer,
                StatusCode::NOT_FOUND,
            );
        }
        // The seed's rename names the application in its body.
        let (status, answer) = fx
            .json(
                Method::PUT,
                "/applications",
                &json!({"token": bad, "name": "x"}),
            )
            .await;
        expect_error(
            &format!("PUT /applications token {bad}"),
            status,
            &answer,
            StatusCode::NOT_FOUND,
        );
    }
    fx.assert_untouched().await;
    fx.app.stop().await;
}

#[tokio::test]
async fn unknown_and_out_of_range_numbers_are_404_on_every_route() {
    let fx = fixture().await;
    let t = &fx.token;
    let bad_numbers = [
        "2",
        "999",
        "0",
        "-1",
        "-9223372036854775808",
        "abc",
        "1.5",
        "1e3",
        "0x1",
        "9223372036854775807",
        "9223372036854775808",
        "99999999999999999999",
        "%201",
    ];
    for bad in bad_numbers {
        // A bad chat number on every route under a chat.
        let app = format!("/applications/{t}");
        let v1 = format!("/api/v1/chat_applications/{t}");
        let mut cases = vec![
            (Method::GET, format!("{app}/chats/{bad}"), None),
            (
                Method::POST,
                format!("{app}/chats/{bad}/messages"),
                Some(json!({"body": "x"})),
            ),
            (Method::GET, format!("{app}/chats/{bad}/messages"), None),
            (
                Method::PUT,
                format!("{app}/chats/{bad}/messages"),
                Some(json!({"messageNumber": 1, "body": "x"})),
            ),
            (Method::GET, format!("{app}/chats/{bad}/messages/1"), None),
            (
                Method::PUT,
                format!("{app}/chats/{bad}/messages/1"),
                Some(json!({"body": "x"})),
            ),
            (
                Method::GET,
                format!("{app}/chats/{bad}/messages/search?q=hello"),
                None,
            ),
            (Method::GET, format!("{v1}/chats/{bad}"), None),
            (
                Method::POST,
                format!("{v1}/chats/{bad}/messages"),
                Some(json!({"message": {"body": "x"}})),
            ),
            (Method::GET, format!("{v1}/chats/{bad}/messages"), None),
            (Method::GET, format!("{v1}/chats/{bad}/messages/1"), None),
            (
                Method::PUT,
                format!("{v1}/chats/{bad}/messages/1"),
                Some(json!({"message": {"body": "x"}})),
            ),
            (
                Method::GET,
                format!("{v1}/chats/{bad}/messages/search?q=hello"),
                None,
            ),
        ];
        // A bad message number in an existing chat.
        cases.extend([
            (Method::GET, format!("{app}/chats/1/messages/{bad}"), None),
            (
                Method::PUT,
                format!("{app}/chats/1/messages/{bad}"),
                Some(json!({"body": "x"})),
            ),
            (Method::GET, format!("{v1}/chats/1/messages/{bad}"), None),
            (
                Method::PUT,
                format!("{v1}/chats/1/messages/{bad}"),
                Some(json!({"message": {"body": "x"}})),
            ),
        ]);
        for (method, path, body) in cases {
            let mut request = fx.app.as_user(&fx.ada, method.clone(), &path);
            if let Some(body) = &body {
                request = request.json(body);
            }
            let (status, answer) = send(request).await;
            expect_error(
                &format!("{method} {path}"),
                status,
                &answer,
                StatusCode::NOT_FOUND,
            );
        }
    }
    // The seed's edit names the message in its body: integers out of range name nothing.
    for n in [2i64, 999, 0, -1, i64::MIN, i64::MAX] {
        let (status, answer) = fx
            .json(
                Method::PUT,
                &format!("/applications/{t}/chats/1/messages"),
                &json!({"messageNumber": n, "body": "x"}),
            )
            .await;
        expect_error(
            &format!("messageNumber {n}"),
            status,
            &answer,
            StatusCode::NOT_FOUND,
        );
    }
    fx.assert_untouched().await;
    fx.app.stop().await;
}

#[tokio::test]
async fn bad_page_limit_and_before_are_422_on_every_list() {
    let fx = fixture().await;
    let t = &fx.token;
    let lists = [
        "/applications".to_owned(),
        format!("/applications/{t}/chats"),
        format!("/applications/{t}/chats/1/messages"),
        format!("/applications/{t}/chats/1/messages/search?q=hello"),
        "/api/v1/chat_applications".to_owned(),
        format!("/api/v1/chat_applications/{t}/chats"),
        format!("/api/v1/chat_applications/{t}/chats/1/messages"),
        format!("/api/v1/chat_applications/{t}/chats/1/messages/search?q=hello"),
    ];
    let bad = [
        "page=0",
        "page=-1",
        "page=abc",
        "page=1.5",
        "page=",
        "page=1000001",
        "page=99999999999999999999",
        "limit=0",
        "limit=101",
        "limit=-5",
        "limit=abc",
        "limit=",
        "limit=99999999999999999999",
        "page=1&limit=1000",
    ];
    for list in &lists {
        let sep = if list.contains('?') { '&' } else { '?' };
        for query in bad {
            let path = format!("{list}{sep}{query}");
            let (status, answer) = send(fx.app.as_user(&fx.ada, Method::GET, &path)).await;
            expect_error(&path, status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        }
        // The deepest page is fine on plain lists; search is left out (its depth is the
        // engine's matter: tantivy allocates for offset + limit up front).
        let deepest = if list.contains("/search") {
            "page=2"
        } else {
            "page=1000000"
        };
        for query in ["page=1&limit=100", "limit=1", deepest] {
            let path = format!("{list}{sep}{query}");
            let (status, answer) = send(fx.app.as_user(&fx.ada, Method::GET, &path)).await;
            assert_eq!(status, StatusCode::OK, "{path}: {answer}");
            assert!(answer.is_array(), "{path}: {answer}");
        }
    }
    // `before` on message lists.
    for list in [
        format!("/applications/{t}/chats/1/messages"),
        format!("/api/v1/chat_applications/{t}/chats/1/messages"),
    ] {
        for query in [
            "before=0",
            "before=-1",
            "before=abc",
            "before=",
            "before=1.5",
        ] {
            let path = format!("{list}?{query}");
            let (status, answer) = send(fx.app.as_user(&fx.ada, Method::GET, &path)).await;
            expect_error(&path, status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }
    // `before` where there is no keyset paging: refused, not ignored.
    for list in [
        "/applications".to_owned(),
        format!("/applications/{t}/chats"),
        "/api/v1/chat_applications".to_owned(),
        format!("/api/v1/chat_applications/{t}/chats"),
    ] {
        let path = format!("{list}?before=5");
        let (status, answer) = send(fx.app.as_user(&fx.ada, Method::GET, &path)).await;
        expect_error(&path, status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("before="), "{path}: {answer}");
    }
    fx.assert_untouched().await;
    fx.app.stop().await;
}

#[tokio::test]
async fn search_without_words_is_422() {
    let fx = fixture().await;
    let t = &fx.token;
    for search in [
        format!("/applications/{t}/chats/1/messages/search"),
        format!("/api/v1/chat_applications/{t}/chats/1/messages/search"),
    ] {
        for query in [
            "",
            "?q=",
            "?q=%20%20",
            "?q=!!!",
            "?page=1",
            "?Q=hello",
            &format!("?q={}", "a".repeat(1025)),
            // Deeper than the first 10,000 matches (engines allocate for offset + limit).
            "?q=hello&page=1000000&limit=100",
            "?q=hello&page=101&limit=100",
        ] {
            let path = format!("{search}{query}");
            let (status, answer) = send(fx.app.as_user(&fx.ada, Method::GET, &path)).await;
            expect_error(&path, status, &answer, StatusCode::UNPROCESSABLE_ENTITY);
        }
    }
    fx.assert_untouched().await;
    fx.app.stop().await;
}

#[tokio::test]
async fn sign_up_and_recover_rules() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let sign_up = |name: &str, email: &str, password: &str| {
        app.request(Method::POST, "/users")
            .json(&json!({"name": name, "email": email, "password": password}))
    };

    // Password under 10 characters (counted in characters, not bytes).
    let short = fresh_email();
    for password in ["", "123456789", "ééééééééé", "         "] {
        let (status, body) = send(sign_up("Eve", &short, password)).await;
        expect_error(
            &format!("password {password:?}"),
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let (status, body) = send(sign_up("Eve", &short, &"p".repeat(1025))).await;
    expect_error(
        "a password over 1 KiB",
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
    );

    // Bad e-mails.
    for email in [
        "",
        " ",
        "a",
        "a@b",
        "@b.io",
        "a@@b.io",
        "a b@c.io",
        "a@.io",
        "a@b.io.",
        "ada.example.com",
    ] {
        let (status, body) = send(sign_up("Eve", email, PASSWORD)).await;
        expect_error(
            &format!("email {email:?}"),
            status,
            &body,
            StatusCode::UNPROCESSABLE_ENTITY,
        );
    }
    let long = format!("{}@example.com", "a".repeat(250));
    let (status, body) = send(sign_up("Eve", &long, PASSWORD)).await;
    expect_error(
        "an over-long e-mail",
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
    );

    // Duplicate e-mail, whatever its case or padding.
    for email in [
        ada.email.clone(),
        ada.email.to_uppercase(),
        format!("  {}  ", ada.email),
    ] {
        let (status, body) = send(sign_up("Mallory", &email, "another password")).await;
        expect_error(
            &format!("duplicate {email:?}"),
            status,
            &body,
            StatusCode::CONFLICT,
        );
    }

    // Nothing was written: Ada is still Ada with her password, the short-password address is
    // free, and no rejected password works.
    let (status, me) = send(app.as_user(&ada, Method::GET, "/users/me")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me, json!({"name": "Ada", "email": ada.email}));
    let (status, body) = send(
        app.request(Method::POST, "/auth/token")
            .basic_auth(&ada.email, Some("another password")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = send(
        app.request(Method::POST, "/auth/token")
            .basic_auth(&short, Some("123456789")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = send(sign_up("Eve", &short, "0123456789")).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "10 characters is enough: {body}"
    );

    // Recovery tokens.
    for (body, expected) in [
        (
            json!({"recoveryToken": "no-such-token"}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"recoveryToken": "A".repeat(48)}),
            StatusCode::NOT_FOUND,
        ),
        (
            json!({"recoveryToken": ""}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"recoveryToken": "  "}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"recoveryToken": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (json!({}), StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (status, answer) = send(app.request(Method::POST, "/users/recover").json(&body)).await;
        expect_error(&format!("recover {body}"), status, &answer, expected);
    }
    app.stop().await;
}

// ---- the compatibility API's happy path ------------------------------------------------

fn assert_keys(value: &Value, keys: &[&str]) {
    let mut got: Vec<&str> = value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"))
        .keys()
        .map(String::as_str)
        .collect();
    got.sort();
    let mut want = keys.to_vec();
    want.sort();
    assert_eq!(got, want, "the keys of {value}");
}

#[tokio::test]
async fn compatibility_api_happy_path() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let call = |method: Method, path: &str, body: Option<Value>| {
        let mut request = app.as_user(&ada, method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        send(request)
    };

    let (status, created) = call(
        Method::POST,
        "/api/v1/chat_applications",
        Some(json!({"chat_application": {"name": "classic"}})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_keys(&created, &["name", "token", "chats_count"]);
    assert_eq!(created["name"], "classic");
    assert_eq!(created["chats_count"], 0);
    let token = created["token"].as_str().unwrap().to_owned();
    let v1 = format!("/api/v1/chat_applications/{token}");

    let (status, list) = call(Method::GET, "/api/v1/chat_applications", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([created]));
    let (status, one) = call(Method::GET, &v1, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, created);

    let (status, renamed) = call(
        Method::PUT,
        &v1,
        Some(json!({"chat_application": {"name": "renamed"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(
        renamed,
        json!({"name": "renamed", "token": token, "chats_count": 0})
    );
    // Same store: the main API sees it.
    let (status, main) = call(Method::GET, &format!("/applications/{token}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(main["name"], "renamed");

    for number in 1..=2 {
        let (status, chat) = call(Method::POST, &format!("{v1}/chats"), None).await;
        assert_eq!(status, StatusCode::CREATED, "{chat}");
        assert_eq!(chat, json!({"number": number, "messages_count": 0}));
    }
    let chats = eventually(WAIT, "both chats persisted", || async {
        let (status, chats) = call(Method::GET, &format!("{v1}/chats"), None).await;
        assert_eq!(status, StatusCode::OK);
        (chats.as_array().unwrap().len() == 2).then_some(chats)
    })
    .await;
    for chat in chats.as_array().unwrap() {
        assert_keys(chat, &["number", "messages_count"]);
    }
    assert_eq!(chats.as_array().unwrap().len(), 2, "{chats}");
    let (status, chat) = call(Method::GET, &format!("{v1}/chats/1"), None).await;
    assert_eq!(status, StatusCode::OK, "{chat}");
    assert_eq!(chat, json!({"number": 1, "messages_count": 0}));

    let messages = format!("{v1}/chats/1/messages");
    for (number, text) in [
        (1, "hello classic"),
        (2, "goodbye classic"),
        (3, "other words"),
    ] {
        let (status, created) = call(
            Method::POST,
            &messages,
            Some(json!({"message": {"body": text}})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created, json!({ "number": number }));
    }
    let expected = json!([
        {"number": 3, "body": "other words"},
        {"number": 2, "body": "goodbye classic"},
        {"number": 1, "body": "hello classic"},
    ]);
    // Newest first, once persisted (at once on the embedded stack).
    eventually(WAIT, "the three messages listed", || async {
        let (status, list) = call(Method::GET, &messages, None).await;
        assert_eq!(status, StatusCode::OK);
        (list == expected).then_some(())
    })
    .await;
    let (status, list) = call(Method::GET, &format!("{messages}?page=2&limit=2"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list, json!([{"number": 1, "body": "hello classic"}]));
    let (status, one) = call(Method::GET, &format!("{messages}/2"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one, json!({"number": 2, "body": "goodbye classic"}));

    let (status, edited) = call(
        Method::PUT,
        &format!("{messages}/2"),
        Some(json!({"message": {"body": "farewell classic"}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{edited}");
    assert_eq!(edited, json!({"number": 2, "body": "farewell classic"}));
    eventually(WAIT, "the edit", || async {
        let (_, one) = call(Method::GET, &format!("{messages}/2"), None).await;
        (one["body"] == "farewell classic").then_some(())
    })
    .await;

    let hits = eventually(WAIT, "search hits", || async {
        let (status, hits) = call(Method::GET, &format!("{messages}/search?q=classic"), None).await;
        assert_eq!(status, StatusCode::OK, "{hits}");
        (hits.as_array().unwrap().len() == 2 && hits[0]["body"] == "farewell classic")
            .then_some(hits)
    })
    .await;
    assert_eq!(
        hits,
        json!([
            {"number": 2, "body": "farewell classic"},
            {"number": 1, "body": "hello classic"},
        ])
    );

    // Counts converge here as on the main API.
    eventually(WAIT, "chats_count", || async {
        let (_, one) = call(Method::GET, &v1, None).await;
        (one["chats_count"] == 2).then_some(())
    })
    .await;
    eventually(WAIT, "messages_count", || async {
        let (_, chat) = call(Method::GET, &format!("{v1}/chats/1"), None).await;
        (chat == json!({"number": 1, "messages_count": 3})).then_some(())
    })
    .await;
    app.stop().await;
}

#[tokio::test]
async fn malformed_paths_get_the_json_error_body() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    for path in [
        "/applications/%FF",
        "/applications/%FF/chats/1",
        "/api/v1/chat_applications/%C3%28",
    ] {
        let (status, body) = send(app.as_user(&ada, Method::GET, path)).await;
        assert!(
            status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND,
            "{path}: {status}"
        );
        error_code(&body);
    }
    app.stop().await;
}
