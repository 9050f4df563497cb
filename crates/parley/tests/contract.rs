//! The HTTP contract of API.md, black-box: every route of the main API with its success
//! status and exact body shape, tenancy, credentials, the account lifecycle and
//! `Idempotency-Key`.

mod common;

use common::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// Asserts that `value` is an object with exactly these keys, and no internal id anywhere.
fn assert_shape(value: &Value, keys: &[&str]) {
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("an object: {value}"));
    let got: BTreeSet<&str> = object.keys().map(String::as_str).collect();
    let want: BTreeSet<&str> = keys.iter().copied().collect();
    assert_eq!(got, want, "the keys of {value}");
    assert_no_internal_id(value);
}

/// Asserts a JSON array whose every item has exactly these keys.
fn assert_list_shape(value: &Value, keys: &[&str]) -> Vec<Value> {
    let items = value
        .as_array()
        .unwrap_or_else(|| panic!("an array: {value}"))
        .clone();
    for item in &items {
        assert_shape(item, keys);
    }
    items
}

/// No `id` key (nor `somethingId` / `something_id`) at any depth: internal ids never leave.
fn assert_no_internal_id(value: &Value) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                assert!(
                    key != "id" && !key.ends_with("Id") && !key.ends_with("_id"),
                    "an internal id key {key:?} in {value}"
                );
                assert_no_internal_id(inner);
            }
        }
        Value::Array(items) => items.iter().for_each(assert_no_internal_id),
        _ => {}
    }
}

fn rfc3339(value: &Value) -> chrono::DateTime<chrono::FixedOffset> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("a string: {value}"));
    chrono::DateTime::parse_from_rfc3339(text).unwrap_or_else(|e| panic!("{text}: {e}"))
}

/// An authenticated request with an optional JSON body.
async fn call(
    app: &TestApp,
    user: &TestUser,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = app.as_user(user, method, path);
    if let Some(body) = body {
        request = request.json(&body);
    }
    send(request).await
}

async fn get_ok(app: &TestApp, user: &TestUser, path: &str) -> Value {
    let (status, body) = call(app, user, Method::GET, path, None).await;
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    assert_no_internal_id(&body);
    body
}

/// Polls a GET until `accept` holds for its body.
async fn get_until(
    app: &TestApp,
    user: &TestUser,
    path: &str,
    accept: impl Fn(&Value) -> bool,
) -> Value {
    eventually(WAIT, path, || async {
        let body = get_ok(app, user, path).await;
        accept(&body).then_some(body)
    })
    .await
}

fn numbers(list: &Value, key: &str) -> Vec<i64> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].as_i64().unwrap())
        .collect()
}

// ---- accounts --------------------------------------------------------------------------

#[tokio::test]
async fn accounts_sign_up_token_and_me() {
    let app = TestApp::spawn().await;
    let email = format!("Grace-{}@Example.com", uuid::Uuid::new_v4().simple());
    let (status, body) = send(
        app.request(Method::POST, "/users")
            .json(&json!({"name": "Grace", "email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_shape(&body, &["name", "email"]);
    assert_eq!(body["name"], "Grace");
    assert_eq!(body["email"], email.to_lowercase());

    // A token for HTTP Basic credentials; the e-mail is case-insensitive.
    let (status, body) = send(
        app.request(Method::POST, "/auth/token")
            .basic_auth(&email, Some(PASSWORD)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_shape(&body, &["token", "expiresAt"]);
    assert!(rfc3339(&body["expiresAt"]) > chrono::Utc::now());
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let (status, body) = send(app.request(Method::GET, "/users/me").bearer_auth(&token)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_shape(&body, &["name", "email"]);
    assert_eq!(
        body,
        json!({"name": "Grace", "email": email.to_lowercase()})
    );

    // HTTP Basic works on protected routes too.
    let (status, body) = send(
        app.request(Method::GET, "/users/me")
            .basic_auth(&email, Some(PASSWORD)),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "Grace");

    // Bad credentials.
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        (
            "token: wrong password",
            app.request(Method::POST, "/auth/token")
                .basic_auth(&email, Some("wrong password!")),
        ),
        (
            "token: unknown user",
            app.request(Method::POST, "/auth/token")
                .basic_auth("nobody@example.com", Some(PASSWORD)),
        ),
        (
            "token: no credentials",
            app.request(Method::POST, "/auth/token"),
        ),
        (
            "token: a bearer token instead of Basic",
            app.request(Method::POST, "/auth/token").bearer_auth(&token),
        ),
        (
            "me: wrong password",
            app.request(Method::GET, "/users/me")
                .basic_auth(&email, Some("wrong password!")),
        ),
        (
            "me: garbage bearer",
            app.request(Method::GET, "/users/me")
                .bearer_auth("garbage.not.ajwt"),
        ),
        (
            "me: tampered bearer",
            app.request(Method::GET, "/users/me")
                .bearer_auth(format!("{token}x")),
        ),
        (
            "me: unknown scheme",
            app.request(Method::GET, "/users/me")
                .header("Authorization", "Digest abc"),
        ),
        (
            "me: Basic that is not base64",
            app.request(Method::GET, "/users/me")
                .header("Authorization", "Basic !!!"),
        ),
    ];
    for (what, request) in cases {
        let (status, body) = send(request).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(error_code(&body), "unauthorized", "{what}");
    }
    app.stop().await;
}

/// Reads the outbox until a mail to `email` with a recovery token not in `seen` appears.
async fn recovery_token(app: &TestApp, email: &str, seen: &[String]) -> String {
    let outbox = app.dir.path().join("outbox");
    eventually(WAIT, "a recovery mail in the outbox", || async {
        let entries = std::fs::read_dir(&outbox).ok()?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("eml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).ok()?;
            if !text.lines().any(|l| l.trim() == format!("To: {email}")) {
                continue;
            }
            let Some((_, after)) = text.split_once("recovery token:") else {
                continue;
            };
            let line = after.lines().find(|l| !l.trim().is_empty())?;
            assert!(
                line.starts_with(' '),
                "the token on its own indented line: {line:?}"
            );
            let token = line.trim().to_owned();
            if !seen.contains(&token) {
                return Some(token);
            }
        }
        None
    })
    .await
}

#[tokio::test]
async fn account_deletion_recovery_and_its_daily_limit() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;

    let (status, body) = call(&app, &ada, Method::DELETE, "/users/me", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_shape(&body, &["scheduledFor"]);
    let due = rfc3339(&body["scheduledFor"]);
    let ahead = due.signed_duration_since(chrono::Utc::now());
    assert!(
        ahead > chrono::Duration::hours(23) && ahead <= chrono::Duration::hours(24),
        "deletion in 24 h, got {due}"
    );

    let token = recovery_token(&app, &ada.email, &[]).await;
    assert!(token.len() >= 24, "{token}");

    // A wrong token names no pending deletion.
    for wrong in [
        "x".repeat(48),
        format!("{token}x"),
        token.to_lowercase() + "Z",
    ] {
        let (status, body) = send(
            app.request(Method::POST, "/users/recover")
                .json(&json!({"recoveryToken": wrong})),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(error_code(&body), "not_found");
    }

    let (status, body) = send(
        app.request(Method::POST, "/users/recover")
            .json(&json!({"recoveryToken": token})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_shape(&body, &["name", "email"]);
    assert_eq!(body, json!({"name": "Ada", "email": ada.email}));

    // Used once: the deletion is cancelled, the token names nothing any more.
    let (status, body) = send(
        app.request(Method::POST, "/users/recover")
            .json(&json!({"recoveryToken": token})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(error_code(&body), "not_found");

    // Still a working account.
    let me = get_ok(&app, &ada, "/users/me").await;
    assert_eq!(me["email"], ada.email.as_str());

    // Two deletion requests a day; the third is rate limited.
    let (status, body) = call(&app, &ada, Method::DELETE, "/users/me", None).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_shape(&body, &["scheduledFor"]);
    let (status, body) = call(&app, &ada, Method::DELETE, "/users/me", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(error_code(&body), "rate_limited");

    // The second request mailed a fresh token that works.
    let second = recovery_token(&app, &ada.email, std::slice::from_ref(&token)).await;
    let (status, body) = send(
        app.request(Method::POST, "/users/recover")
            .json(&json!({"recoveryToken": second})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["email"], ada.email.as_str());
    app.stop().await;
}

// ---- applications ----------------------------------------------------------------------

#[tokio::test]
async fn applications_create_list_get_and_rename() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;

    let (status, created) = call(
        &app,
        &ada,
        Method::POST,
        "/applications",
        Some(json!({"name": "  support desk  "})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_shape(&created, &["token", "name", "chatsCount"]);
    assert_eq!(created["name"], "support desk", "names are trimmed");
    assert_eq!(created["chatsCount"], 0);
    let token = created["token"].as_str().unwrap().to_owned();
    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()), "{token}");

    let one = get_ok(&app, &ada, &format!("/applications/{token}")).await;
    assert_shape(&one, &["token", "name", "chatsCount"]);
    assert_eq!(one, created);

    let mut tokens = vec![token.clone()];
    for name in ["second", "third"] {
        let (status, body) = call(
            &app,
            &ada,
            Method::POST,
            "/applications",
            Some(json!({ "name": name })),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        tokens.push(body["token"].as_str().unwrap().to_owned());
    }
    let list = get_ok(&app, &ada, "/applications").await;
    let items = assert_list_shape(&list, &["token", "name", "chatsCount"]);
    let listed: Vec<&str> = items.iter().map(|a| a["token"].as_str().unwrap()).collect();
    assert_eq!(listed, tokens, "the caller's applications, oldest first");
    assert_eq!(items[0], created);

    // page / limit.
    let page = get_ok(&app, &ada, "/applications?page=1&limit=2").await;
    assert_eq!(page.as_array().unwrap().len(), 2);
    assert_eq!(page[0]["token"], tokens[0].as_str());
    let page = get_ok(&app, &ada, "/applications?page=2&limit=2").await;
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert_eq!(page[0]["token"], tokens[2].as_str());
    let page = get_ok(&app, &ada, "/applications?page=3&limit=2").await;
    assert_eq!(page, json!([]));
    let page = get_ok(&app, &ada, "/applications?limit=100").await;
    assert_eq!(page.as_array().unwrap().len(), 3);

    // Another user sees only their own.
    let bob = app.user("Bob").await;
    assert_eq!(get_ok(&app, &bob, "/applications").await, json!([]));

    // Rename by path.
    let (status, renamed) = call(
        &app,
        &ada,
        Method::PUT,
        &format!("/applications/{token}"),
        Some(json!({"name": "help desk"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_shape(&renamed, &["token", "name", "chatsCount"]);
    assert_eq!(
        renamed,
        json!({"token": token, "name": "help desk", "chatsCount": 0})
    );
    let one = get_ok(&app, &ada, &format!("/applications/{token}")).await;
    assert_eq!(one["name"], "help desk");

    // Rename by body (the seed's form).
    let (status, renamed) = call(
        &app,
        &ada,
        Method::PUT,
        "/applications",
        Some(json!({"token": token, "name": "front desk"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_shape(&renamed, &["token", "name", "chatsCount"]);
    assert_eq!(
        renamed,
        json!({"token": token, "name": "front desk", "chatsCount": 0})
    );
    let one = get_ok(&app, &ada, &format!("/applications/{token}")).await;
    assert_eq!(one["name"], "front desk");
    app.stop().await;
}

// ---- chats -----------------------------------------------------------------------------

#[tokio::test]
async fn chats_create_list_get_and_counts() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let token = app.application(&ada).await;
    let chats = format!("/applications/{token}/chats");

    for expected in 1..=3 {
        let (status, body) = call(&app, &ada, Method::POST, &chats, None).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_shape(&body, &["chatNumber"]);
        assert_eq!(
            body["chatNumber"], expected,
            "chat numbers start at 1, contiguous"
        );
    }

    let list = get_until(&app, &ada, &chats, |b| {
        b.as_array().is_some_and(|a| a.len() == 3)
    })
    .await;
    let items = assert_list_shape(&list, &["chatNumber", "messagesCount"]);
    let mut listed = numbers(&list, "chatNumber");
    listed.sort();
    assert_eq!(listed, vec![1, 2, 3]);
    assert!(items.iter().all(|c| c["messagesCount"] == 0));

    let page = get_ok(&app, &ada, &format!("{chats}?page=2&limit=2")).await;
    assert_list_shape(&page, &["chatNumber", "messagesCount"]);
    assert_eq!(page.as_array().unwrap().len(), 1);

    let one = get_ok(&app, &ada, &format!("{chats}/2")).await;
    assert_shape(&one, &["chatNumber", "messagesCount"]);
    assert_eq!(one, json!({"chatNumber": 2, "messagesCount": 0}));

    // Counts converge through count sync.
    get_until(&app, &ada, &format!("/applications/{token}"), |a| {
        a["chatsCount"] == 3
    })
    .await;
    app.message(&ada, &token, 2, "one").await;
    app.message(&ada, &token, 2, "two").await;
    let one = get_until(&app, &ada, &format!("{chats}/2"), |c| {
        c["messagesCount"] == 2
    })
    .await;
    assert_shape(&one, &["chatNumber", "messagesCount"]);
    let list = get_until(&app, &ada, &chats, |l| {
        l.as_array()
            .unwrap()
            .iter()
            .any(|c| c["chatNumber"] == 2 && c["messagesCount"] == 2)
    })
    .await;
    assert_list_shape(&list, &["chatNumber", "messagesCount"]);
    app.stop().await;
}

// ---- messages --------------------------------------------------------------------------

#[tokio::test]
async fn messages_post_list_page_before_get_and_edit() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let token = app.application(&ada).await;
    let chat = app.chat(&ada, &token).await;
    let messages = format!("/applications/{token}/chats/{chat}/messages");

    // createdAt is optional; when given it is kept.
    let (status, body) = call(
        &app,
        &ada,
        Method::POST,
        &messages,
        Some(json!({"body": "first", "createdAt": "2024-01-02T03:04:05.678Z"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_shape(&body, &["messageNumber"]);
    assert_eq!(body["messageNumber"], 1);
    for n in 2..=12 {
        let (status, body) = call(
            &app,
            &ada,
            Method::POST,
            &messages,
            Some(json!({"body": format!("message {n}")})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_shape(&body, &["messageNumber"]);
        assert_eq!(body["messageNumber"], n);
    }
    // On a broker stack a 201 means "queued": read back once the writer has stored them.
    for n in 1..=12 {
        app.persisted(&ada, &format!("{messages}/{n}")).await;
    }

    let keys = ["messageNumber", "senderName", "body", "createdAt"];
    let one = get_ok(&app, &ada, &format!("{messages}/1")).await;
    assert_shape(&one, &keys);
    assert_eq!(
        one,
        json!({"messageNumber": 1, "senderName": "Ada", "body": "first",
               "createdAt": "2024-01-02T03:04:05.678Z"})
    );
    let one = get_ok(&app, &ada, &format!("{messages}/5")).await;
    assert_eq!(one["body"], "message 5");
    let written = rfc3339(&one["createdAt"]);
    assert!(
        (chrono::Utc::now() - written.with_timezone(&chrono::Utc))
            .num_minutes()
            .abs()
            < 5
    );

    // Default limit 10, newest first.
    let list = get_ok(&app, &ada, &messages).await;
    assert_list_shape(&list, &keys);
    assert_eq!(
        numbers(&list, "messageNumber"),
        (3..=12).rev().collect::<Vec<_>>()
    );
    assert_eq!(list[0]["body"], "message 12");
    assert_eq!(list[0]["senderName"], "Ada");

    let page = get_ok(&app, &ada, &format!("{messages}?page=2&limit=5")).await;
    assert_list_shape(&page, &keys);
    assert_eq!(numbers(&page, "messageNumber"), vec![7, 6, 5, 4, 3]);
    let page = get_ok(&app, &ada, &format!("{messages}?page=3&limit=5")).await;
    assert_eq!(numbers(&page, "messageNumber"), vec![2, 1]);
    let page = get_ok(&app, &ada, &format!("{messages}?page=4&limit=5")).await;
    assert_eq!(page, json!([]));
    let page = get_ok(&app, &ada, &format!("{messages}?limit=100")).await;
    assert_eq!(page.as_array().unwrap().len(), 12);

    // Keyset: strictly older than `before`, newest first.
    let page = get_ok(&app, &ada, &format!("{messages}?before=6&limit=3")).await;
    assert_list_shape(&page, &keys);
    assert_eq!(numbers(&page, "messageNumber"), vec![5, 4, 3]);
    let page = get_ok(&app, &ada, &format!("{messages}?before=3")).await;
    assert_eq!(numbers(&page, "messageNumber"), vec![2, 1]);
    let page = get_ok(&app, &ada, &format!("{messages}?before=1")).await;
    assert_eq!(page, json!([]));
    let page = get_ok(&app, &ada, &format!("{messages}?before=1000&limit=2")).await;
    assert_eq!(numbers(&page, "messageNumber"), vec![12, 11]);

    // Edit by path.
    let (status, body) = call(
        &app,
        &ada,
        Method::PUT,
        &format!("{messages}/3"),
        Some(json!({"body": "edited by path"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_shape(&body, &["messageNumber"]);
    assert_eq!(body["messageNumber"], 3);
    // Edit by body (the seed's form).
    let (status, body) = call(
        &app,
        &ada,
        Method::PUT,
        &messages,
        Some(json!({"messageNumber": 4, "body": "edited by body"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_shape(&body, &["messageNumber"]);
    assert_eq!(body["messageNumber"], 4);

    let three = get_until(&app, &ada, &format!("{messages}/3"), |m| {
        m["body"] == "edited by path"
    })
    .await;
    assert_shape(&three, &keys);
    assert_eq!(three["senderName"], "Ada");
    let four = get_until(&app, &ada, &format!("{messages}/4"), |m| {
        m["body"] == "edited by body"
    })
    .await;
    assert_shape(&four, &keys);
    get_until(&app, &ada, &messages, |l| {
        l.as_array()
            .unwrap()
            .iter()
            .any(|m| m["messageNumber"] == 3 && m["body"] == "edited by path")
    })
    .await;

    // Counts converge.
    get_until(
        &app,
        &ada,
        &format!("/applications/{token}/chats/{chat}"),
        |c| c["messagesCount"] == 12,
    )
    .await;
    app.stop().await;
}

#[tokio::test]
async fn search_finds_words_prefixes_newest_first() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let token = app.application(&ada).await;
    let chat = app.chat(&ada, &token).await;
    let other = app.chat(&ada, &token).await;
    for text in ["Hello world", "goodbye world", "help me", "nothing here"] {
        app.message(&ada, &token, chat, text).await;
    }
    app.message(&ada, &token, other, "hello from the other chat")
        .await;
    let search = format!("/applications/{token}/chats/{chat}/messages/search");
    let keys = ["messageNumber", "body", "createdAt"];

    let hits = get_until(&app, &ada, &format!("{search}?q=world"), |h| {
        h.as_array().unwrap().len() == 2
    })
    .await;
    assert_list_shape(&hits, &keys);
    assert_eq!(numbers(&hits, "messageNumber"), vec![2, 1], "newest first");
    assert_eq!(hits[1]["body"], "Hello world");
    rfc3339(&hits[0]["createdAt"]);

    // Prefixes, case-insensitive, and every word must match; only this chat.
    let hits = get_until(&app, &ada, &format!("{search}?q=hel"), |h| {
        h.as_array().unwrap().len() == 2
    })
    .await;
    assert_eq!(numbers(&hits, "messageNumber"), vec![3, 1]);
    let hits = get_ok(&app, &ada, &format!("{search}?q=HELLO%20world")).await;
    assert_eq!(numbers(&hits, "messageNumber"), vec![1]);
    let hits = get_ok(&app, &ada, &format!("{search}?q=absent")).await;
    assert_eq!(hits, json!([]));

    // page / limit.
    let hits = get_ok(&app, &ada, &format!("{search}?q=world&limit=1")).await;
    assert_list_shape(&hits, &keys);
    assert_eq!(numbers(&hits, "messageNumber"), vec![2]);
    let hits = get_ok(&app, &ada, &format!("{search}?q=world&limit=1&page=2")).await;
    assert_eq!(numbers(&hits, "messageNumber"), vec![1]);

    // An edit is searchable under its new words.
    app.message(&ada, &token, chat, "placeholder").await;
    let (status, body) = call(
        &app,
        &ada,
        Method::PUT,
        &format!("/applications/{token}/chats/{chat}/messages/5"),
        Some(json!({"body": "zebra crossing"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let hits = get_until(&app, &ada, &format!("{search}?q=zebra"), |h| {
        h.as_array().unwrap().len() == 1
    })
    .await;
    assert_eq!(
        hits[0]["body"], "zebra crossing",
        "the hit carries the edited body"
    );
    app.stop().await;
}

// ---- operations and docs ---------------------------------------------------------------

/// Every route of API.md, as the OpenAPI document must name it.
const DOCUMENTED: &[(&str, &str)] = &[
    ("post", "/users"),
    ("post", "/auth/token"),
    ("get", "/users/me"),
    ("delete", "/users/me"),
    ("post", "/users/recover"),
    ("post", "/applications"),
    ("get", "/applications"),
    ("put", "/applications"),
    ("get", "/applications/{token}"),
    ("put", "/applications/{token}"),
    ("post", "/applications/{token}/chats"),
    ("get", "/applications/{token}/chats"),
    ("get", "/applications/{token}/chats/{chatNumber}"),
    ("post", "/applications/{token}/chats/{chatNumber}/messages"),
    ("get", "/applications/{token}/chats/{chatNumber}/messages"),
    ("put", "/applications/{token}/chats/{chatNumber}/messages"),
    (
        "get",
        "/applications/{token}/chats/{chatNumber}/messages/{messageNumber}",
    ),
    (
        "put",
        "/applications/{token}/chats/{chatNumber}/messages/{messageNumber}",
    ),
    (
        "get",
        "/applications/{token}/chats/{chatNumber}/messages/search",
    ),
    ("post", "/api/v1/chat_applications"),
    ("get", "/api/v1/chat_applications"),
    ("get", "/api/v1/chat_applications/{token}"),
    ("put", "/api/v1/chat_applications/{token}"),
    ("post", "/api/v1/chat_applications/{token}/chats"),
    ("get", "/api/v1/chat_applications/{token}/chats"),
    ("get", "/api/v1/chat_applications/{token}/chats/{number}"),
    (
        "post",
        "/api/v1/chat_applications/{token}/chats/{number}/messages",
    ),
    (
        "get",
        "/api/v1/chat_applications/{token}/chats/{number}/messages",
    ),
    (
        "get",
        "/api/v1/chat_applications/{token}/chats/{number}/messages/{n}",
    ),
    (
        "put",
        "/api/v1/chat_applications/{token}/chats/{number}/messages/{n}",
    ),
    (
        "get",
        "/api/v1/chat_applications/{token}/chats/{number}/messages/search",
    ),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
];

#[tokio::test]
async fn operations_health_ready_metrics_and_docs() {
    let app = TestApp::spawn().await;

    let (status, body) = send(app.request(Method::GET, "/health")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "healthy"}));

    let (status, body) = send(app.request(Method::GET, "/ready")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");

    // Some traffic on a templated route, then the Prometheus text.
    let ada = app.user("Ada").await;
    let token = app.application(&ada).await;
    get_ok(&app, &ada, &format!("/applications/{token}")).await;
    let response = app.request(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = response.text().await.unwrap();
    let counters: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("parley_http_requests_total{"))
        .collect();
    assert!(!counters.is_empty(), "parley_http_requests_total in {text}");
    assert!(
        counters
            .iter()
            .any(|l| l.contains("route=\"/applications/{token}\"")),
        "a route label by template: {counters:#?}"
    );
    assert!(
        counters.iter().all(|l| !l.contains(&token)),
        "no raw tokens in labels: {counters:#?}"
    );
    assert!(counters.iter().all(|l| l.contains("route=\"")));

    // The series' handles are remembered after their first request: later requests still
    // count, and another status of the same route is a series of its own.
    let count = |text: &str, status: &str| -> u64 {
        let series = format!(
            "parley_http_requests_total{{route=\"/applications/{{token}}\",method=\"GET\",status=\"{status}\"}} "
        );
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str()))
            .map_or(0, |n| n.trim().parse().unwrap())
    };
    let metrics_text = || async {
        let response = app.request(Method::GET, "/metrics").send().await.unwrap();
        response.text().await.unwrap()
    };
    let before = count(&text, "200");
    assert!(before >= 1, "{text}");
    get_ok(&app, &ada, &format!("/applications/{token}")).await;
    let (status, _) = call(&app, &ada, Method::GET, "/applications/unknown-token", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let text = metrics_text().await;
    assert!(count(&text, "200") > before, "{text}");
    assert!(count(&text, "404") >= 1, "{text}");

    // A create's two waits are timed: the number, and the publish (until persisted here).
    let chat = app.chat(&ada, &token).await;
    app.message(&ada, &token, chat, "timed").await;
    let text = metrics_text().await;
    for (series, label) in [
        ("parley_sequencer_duration_seconds", "scope=\"chats\""),
        ("parley_sequencer_duration_seconds", "scope=\"messages\""),
        ("parley_publish_duration_seconds", "queue=\"create_chats\""),
        (
            "parley_publish_duration_seconds",
            "queue=\"create_messages\"",
        ),
    ] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{series}_count{{{label}}}")))
            .unwrap_or_else(|| panic!("{series} {{{label}}} in {text}"));
        assert!(line.ends_with(" 1"), "one sample: {line}");
    }

    let response = app
        .request(Method::GET, "/openapi.json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value =
        serde_json::from_str(&response.text().await.unwrap()).expect("/openapi.json is valid JSON");
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "OpenAPI 3"
    );
    for (method, path) in DOCUMENTED {
        assert!(
            doc["paths"][path][method].is_object(),
            "/openapi.json documents {method} {path}"
        );
    }

    let response = app
        .request(Method::GET, "/swagger/index.html")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let html = response.text().await.unwrap();
    assert!(html.to_lowercase().contains("<html"), "{html}");
    assert!(html.contains("swagger"), "Swagger UI");

    // The open routes need no credentials; unknown routes answer with the error body.
    let (status, body) = send(app.request(Method::GET, "/no/such/route")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "not_found");
    app.stop().await;
}

// ---- tenancy and credentials -----------------------------------------------------------

#[tokio::test]
async fn only_the_creator_renames_and_only_the_sender_edits() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let bob = app.user("Bob").await;
    let token = app.application(&ada).await;
    let chat = app.chat(&ada, &token).await;
    let n = app.message(&ada, &token, chat, "ada's words").await;
    let messages = format!("/applications/{token}/chats/{chat}/messages");

    let forbidden = [
        (
            Method::PUT,
            format!("/applications/{token}"),
            json!({"name": "bob's now"}),
        ),
        (
            Method::PUT,
            "/applications".to_owned(),
            json!({"token": token, "name": "bob's now"}),
        ),
        (
            Method::PUT,
            format!("/api/v1/chat_applications/{token}"),
            json!({"chat_application": {"name": "bob's now"}}),
        ),
        (
            Method::PUT,
            format!("{messages}/{n}"),
            json!({"body": "bob's words"}),
        ),
        (
            Method::PUT,
            messages.clone(),
            json!({"messageNumber": n, "body": "bob's words"}),
        ),
        (
            Method::PUT,
            format!("/api/v1/chat_applications/{token}/chats/{chat}/messages/{n}"),
            json!({"message": {"body": "bob's words"}}),
        ),
    ];
    for (method, path, body) in forbidden {
        let (status, answer) = call(&app, &bob, method.clone(), &path, Some(body)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path}: {answer}");
        assert_eq!(error_code(&answer), "forbidden");
    }

    // Bob may still read and post (tenancy is about renames and edits)...
    let (status, _) = call(
        &app,
        &bob,
        Method::POST,
        &messages,
        Some(json!({"body": "bob's own"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // ...and Ada may not edit Bob's message.
    let (status, answer) = call(
        &app,
        &ada,
        Method::PUT,
        &format!("{messages}/2"),
        Some(json!({"body": "ada's over bob's"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(error_code(&answer), "forbidden");

    // Nothing changed: a sentinel edit by the owner lands, the forbidden ones never did.
    let (status, _) = call(
        &app,
        &ada,
        Method::PUT,
        &format!("{messages}/{n}"),
        Some(json!({"body": "ada's edit"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    get_until(&app, &ada, &format!("{messages}/{n}"), |m| {
        m["body"] == "ada's edit"
    })
    .await;
    let two = get_until(&app, &ada, &format!("{messages}/2"), |_| true).await;
    assert_eq!(two["body"], "bob's own");
    assert_eq!(two["senderName"], "Bob");
    let one = get_ok(&app, &ada, &format!("/applications/{token}")).await;
    assert_eq!(one["name"], "app");
    assert_eq!(get_ok(&app, &bob, "/applications").await, json!([]));
    app.stop().await;
}

/// Every protected route with a valid request, for a user who owns `token`, chat 1 and its
/// message 1.
fn protected_routes(token: &str) -> Vec<(Method, String, Option<Value>)> {
    let mut routes = vec![
        (Method::GET, "/users/me".into(), None),
        (
            Method::POST,
            "/applications".into(),
            Some(json!({"name": "x"})),
        ),
        (Method::GET, "/applications".into(), None),
        (
            Method::PUT,
            "/applications".into(),
            Some(json!({"token": token, "name": "x"})),
        ),
        (
            Method::POST,
            "/api/v1/chat_applications".into(),
            Some(json!({"chat_application": {"name": "x"}})),
        ),
        (Method::GET, "/api/v1/chat_applications".into(), None),
    ];
    routes.extend(token_routes(token));
    // Last: it schedules the account's deletion.
    routes.push((Method::DELETE, "/users/me".into(), None));
    routes
}

/// A token that was accepted (and so is remembered as verified) is refused once it expires.
#[tokio::test]
async fn an_accepted_token_is_refused_once_it_expires() {
    let app = TestApp::spawn_with(|c| c.jwt_ttl = Duration::from_secs(1)).await;
    let ada = app.user("Ada").await;
    let (status, body) = send(app.as_user(&ada, Method::GET, "/users/me")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The token's `exp` is at most 1 s away and the server allows 5 s of clock skew, while
    // the memo would keep it for 60 s: refused within 15 s means refused at its expiry.
    let (status, body) = eventually(Duration::from_secs(15), "the token to expire", || async {
        let (status, body) = send(app.as_user(&ada, Method::GET, "/users/me")).await;
        (status != StatusCode::OK).then_some((status, body))
    })
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("expired"),
        "says why: {body}"
    );
}

#[tokio::test]
async fn every_protected_route_needs_good_credentials() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let token = app.application(&ada).await;
    app.chat(&ada, &token).await;
    app.message(&ada, &token, 1, "hello").await;

    for (i, (method, path, body)) in protected_routes(&token).into_iter().enumerate() {
        // Failed sign-ins are throttled per address (see `failed_sign_ins_are_throttled`):
        // the real account's wrong password is tried on a few routes, strangers on the rest.
        let wrong_for = if i < 5 {
            ada.email.clone()
        } else {
            format!("stranger{i}@example.com")
        };
        let attempts: Vec<(&str, reqwest::RequestBuilder)> = vec![
            ("no credentials", app.request(method.clone(), &path)),
            (
                "garbage bearer",
                app.request(method.clone(), &path).bearer_auth("garbage"),
            ),
            (
                "bearer signed by someone else",
                app.request(method.clone(), &path).bearer_auth(
                    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                     eyJzdWIiOiJhZGFAZXhhbXBsZS5jb20iLCJleHAiOjQxMDI0NDQ4MDB9.\
                     c2lnbmF0dXJlLW5vdC1vdXJz",
                ),
            ),
            (
                "bad password",
                app.request(method.clone(), &path)
                    .basic_auth(&wrong_for, Some("not the password")),
            ),
            (
                "empty Authorization",
                app.request(method.clone(), &path)
                    .header("Authorization", ""),
            ),
        ];
        for (what, mut request) in attempts {
            if let Some(body) = &body {
                request = request.json(body);
            }
            let (status, answer) = send(request).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{what}: {method} {path}: {answer}"
            );
            assert_eq!(
                error_code(&answer),
                "unauthorized",
                "{what}: {method} {path}"
            );
        }
    }

    // Nothing was written by the rejected requests.
    let apps = get_ok(&app, &ada, "/applications").await;
    assert_eq!(apps.as_array().unwrap().len(), 1, "{apps}");
    assert_eq!(apps[0]["name"], "app");
    let chats = get_ok(&app, &ada, &format!("/applications/{token}/chats")).await;
    assert_eq!(numbers(&chats, "chatNumber"), vec![1]);
    let list = get_ok(
        &app,
        &ada,
        &format!("/applications/{token}/chats/1/messages"),
    )
    .await;
    assert_eq!(numbers(&list, "messageNumber"), vec![1]);
    assert_eq!(list[0]["body"], "hello");
    app.stop().await;
}

#[tokio::test]
async fn http_basic_works_on_every_protected_route() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let token = app.application(&ada).await;
    app.chat(&ada, &token).await;
    app.message(&ada, &token, 1, "x marks the spot").await;
    // The search index catches up before the search routes are tried.
    get_until(
        &app,
        &ada,
        &format!("/applications/{token}/chats/1/messages/search?q=marks"),
        |h| h.as_array().unwrap().len() == 1,
    )
    .await;

    for (method, path, body) in protected_routes(&token) {
        let mut request = app
            .request(method.clone(), &path)
            .basic_auth(&ada.email, Some(PASSWORD));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, answer) = send(request).await;
        assert!(
            status.is_success(),
            "{method} {path} with HTTP Basic: {status} {answer}"
        );
        assert_no_internal_id(&answer);
    }
    app.stop().await;
}

// ---- Idempotency-Key -------------------------------------------------------------------

#[tokio::test]
async fn idempotent_application_create() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let bob = app.user("Bob").await;
    let post = |user: &TestUser, key: &str, name: &str| {
        app.as_user(user, Method::POST, "/applications")
            .header("Idempotency-Key", key)
            .json(&json!({ "name": name }))
    };

    let first = post(&ada, "key-1", "desk").send().await.unwrap();
    let first_status = first.status();
    let first_body: Value = first.json().await.unwrap();
    assert_eq!(first_status, StatusCode::CREATED, "{first_body}");
    assert_shape(&first_body, &["token", "name", "chatsCount"]);

    let (status, body) = send(post(&ada, "key-1", "desk")).await;
    assert_eq!(status, first_status, "the same status again");
    assert_eq!(body, first_body, "the same body again");
    let apps = get_ok(&app, &ada, "/applications").await;
    assert_eq!(apps, json!([first_body]), "one application");

    // The same key for a different request.
    let (status, body) = send(post(&ada, "key-1", "another desk")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "invalid");
    assert_eq!(
        get_ok(&app, &ada, "/applications")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Keys belong to their user.
    let (status, bobs) = send(post(&bob, "key-1", "desk")).await;
    assert_eq!(status, StatusCode::CREATED, "{bobs}");
    assert_ne!(bobs["token"], first_body["token"]);
    assert_eq!(get_ok(&app, &bob, "/applications").await, json!([bobs]));
    assert_eq!(
        get_ok(&app, &ada, "/applications").await,
        json!([first_body])
    );

    // A new key is a new request.
    let (status, body) = send(post(&ada, "key-2", "desk")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["token"], first_body["token"]);
    assert_eq!(
        get_ok(&app, &ada, "/applications")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // A replayed error is an error again, and writes nothing.
    let (status, body) = send(post(&ada, "key-3", " ")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (again, body_again) = send(post(&ada, "key-3", " ")).await;
    assert_eq!((again, body_again), (status, body));
    assert_eq!(
        get_ok(&app, &ada, "/applications")
            .await
            .as_array()
            .unwrap()
            .len(),
        2
    );
    app.stop().await;
}

#[tokio::test]
async fn idempotent_chat_and_message_create() {
    let app = TestApp::spawn().await;
    let ada = app.user("Ada").await;
    let bob = app.user("Bob").await;
    let token = app.application(&ada).await;
    let chats = format!("/applications/{token}/chats");

    let post_chat = |key: &str| {
        app.as_user(&ada, Method::POST, &chats)
            .header("Idempotency-Key", key)
    };
    let (status, first) = send(post_chat("chat-key")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, again) = send(post_chat("chat-key")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again, first);
    // No number was spent on the retry.
    assert_eq!(app.chat(&ada, &token).await, 2);

    let messages = format!("{chats}/1/messages");
    let post = |user: &TestUser, key: &str, body: &str| {
        app.as_user(user, Method::POST, &messages)
            .header("Idempotency-Key", key)
            .json(&json!({ "body": body }))
    };
    let (status, first) = send(post(&ada, "msg-key", "once")).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first, json!({"messageNumber": 1}));
    for _ in 0..2 {
        let (status, again) = send(post(&ada, "msg-key", "once")).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(again, first, "the same messageNumber");
    }
    let (status, body) = send(post(&ada, "msg-key", "twice?")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(error_code(&body), "invalid");

    // Bob's identical key is his own request.
    let (status, bobs) = send(post(&bob, "msg-key", "once")).await;
    assert_eq!(status, StatusCode::CREATED, "{bobs}");
    assert_eq!(bobs, json!({"messageNumber": 2}));
    // The next number shows no retry spent one; then exactly these messages exist.
    assert_eq!(app.message(&ada, &token, 1, "sentinel").await, 3);
    let list = get_until(&app, &ada, &messages, |l| l.as_array().unwrap().len() >= 3).await;
    assert_eq!(numbers(&list, "messageNumber"), vec![3, 2, 1]);
    assert_eq!(list[2]["body"], "once");
    assert_eq!(list[2]["senderName"], "Ada");
    assert_eq!(list[1]["senderName"], "Bob");
    app.stop().await;
}

#[tokio::test]
async fn browsers_get_cors_and_every_answer_a_request_id() {
    let app = TestApp::spawn().await;
    let preflight = app
        .request(Method::OPTIONS, "/applications")
        .header("Origin", "https://chat.example.com")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");
    let methods = preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods == "*" || methods.contains("POST"), "{methods}");

    let answer = app.request(Method::GET, "/health").send().await.unwrap();
    let id = answer.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a generated UUID: {id}");
    let answer = app
        .request(Method::GET, "/nope")
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.headers()["x-request-id"],
        "abc-123",
        "a client's id is kept"
    );
    app.stop().await;
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_address() {
    let app = TestApp::spawn().await;
    // An account whose password has never been verified (nothing cached for it).
    let email = "throttled@example.com";
    let (status, _) = send(
        app.request(Method::POST, "/users")
            .json(&json!({"name": "T", "email": email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let token = |password: &str| {
        app.request(Method::POST, "/auth/token")
            .basic_auth(email, Some(password))
    };
    for attempt in 1..=10 {
        let (status, _) = send(token("wrong password!")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let (status, body) = send(token("wrong password!")).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(error_code(&body), "rate_limited");
    let (status, _) = send(token(PASSWORD)).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "even the right password waits"
    );
    // Other addresses are unaffected.
    let bob = app.user("Bob").await;
    let (status, _) = send(
        app.request(Method::POST, "/auth/token")
            .basic_auth(&bob.email, Some(PASSWORD)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    app.stop().await;
}
