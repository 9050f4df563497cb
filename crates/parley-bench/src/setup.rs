//! Gets the scenarios something to work on: from a fixture made by `load` (sign in with its
//! credentials), or fresh through the public API (a user, an application, chats, and seed
//! messages in the hot chat).

use crate::fixture::Fixture;
use crate::http::{basic, bearer, Conn, Target};
use crate::scenarios::Workload;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http::header::HeaderValue;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the scenarios need in place.
#[derive(Debug, Clone)]
pub struct Needs {
    /// Chats numbered 1..=this (the spread chats).
    pub chats: usize,
    /// Messages in the hot chat, for reading scenarios (fresh setup only).
    pub hot_messages: u64,
    /// Wait until the search index has caught up with the seed messages.
    pub search: bool,
    /// Connections used to create things.
    pub connections: usize,
}

/// The data a run worked on, for the report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DataInfo {
    /// `fixture <path>` or `api setup`.
    pub source: String,
    pub chats: u64,
    pub hot_chat_messages: i64,
    pub total_messages: u64,
}

pub struct Session {
    /// The bearer token, and the `Authorization` value made of it.
    pub token: String,
    pub auth: HeaderValue,
    pub app: String,
    pub hot_messages: i64,
    pub data: DataInfo,
}

impl Session {
    pub fn workload(&self, chats: usize, deep_page: u32) -> Workload {
        Workload {
            app: self.app.clone(),
            hot_chat: 1,
            hot_messages: self.hot_messages,
            spread_chats: (1..=chats.max(1) as i64).collect(),
            bodies: crate::text::json_bodies(1024, 42),
            words: crate::text::vocabulary(),
            deep_page,
        }
    }
}

/// Signs in with a fixture's credentials; creates missing spread chats through the API.
pub async fn from_fixture(target: &Arc<Target>, path: &Path, needs: &Needs) -> Result<Session> {
    let fixture = Fixture::read(path)?;
    let mut conn = Conn::new(target.clone(), Duration::from_secs(30));
    let (token, auth) = sign_in(&mut conn, &fixture.email, &fixture.password).await?;
    let missing = (needs.chats as u64).saturating_sub(fixture.chats);
    if missing > 0 {
        eprintln!(
            "creating {missing} more chats through the API (the fixture has {})",
            fixture.chats
        );
        create_chats(
            target,
            &auth,
            &fixture.app_token,
            missing,
            needs.connections,
        )
        .await?;
    }
    Ok(Session {
        token,
        auth,
        app: fixture.app_token.clone(),
        hot_messages: fixture.hot_chat_messages,
        data: DataInfo {
            source: format!("fixture {}", path.display()),
            chats: fixture.chats.max(needs.chats as u64),
            hot_chat_messages: fixture.hot_chat_messages,
            total_messages: fixture.messages,
        },
    })
}

/// A new user, application, chats and seed messages, all through the API.
pub async fn fresh(target: &Arc<Target>, needs: &Needs) -> Result<Session> {
    let mut conn = Conn::new(target.clone(), Duration::from_secs(30));
    let email = format!("bench-{:016x}@parley.test", fastrand::u64(..));
    let password: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect();
    conn.json(
        Method::POST,
        "/users",
        None,
        Some(json!({"name": "parley-bench", "email": email, "password": password})),
        StatusCode::CREATED,
    )
    .await
    .context("signing up")?;
    let (token, auth) = sign_in(&mut conn, &email, &password).await?;
    let app = conn
        .json(
            Method::POST,
            "/applications",
            Some(&auth),
            Some(json!({"name": "parley-bench"})),
            StatusCode::CREATED,
        )
        .await
        .context("creating the application")?;
    let app = app["token"]
        .as_str()
        .context("the application has no token")?
        .to_owned();
    let chats = needs.chats.max(1) as u64;
    eprintln!("setup: {chats} chats through the API");
    create_chats(target, &auth, &app, chats, needs.connections).await?;
    if needs.hot_messages > 0 {
        eprintln!(
            "setup: {} messages in the hot chat through the API",
            needs.hot_messages
        );
        let bodies = Arc::new(crate::text::json_bodies(1024, 7));
        let path = format!("/applications/{app}/chats/1/messages");
        fan_out(
            target,
            &auth,
            needs.hot_messages,
            needs.connections,
            move |i| {
                (
                    path.clone(),
                    Some(bodies[i as usize % bodies.len()].clone()),
                )
            },
        )
        .await
        .context("seeding messages")?;
        if needs.search {
            wait_for_search(&mut conn, &auth, &app).await?;
        }
    }
    Ok(Session {
        token,
        auth,
        app,
        hot_messages: needs.hot_messages as i64,
        data: DataInfo {
            source: "api setup".into(),
            chats,
            hot_chat_messages: needs.hot_messages as i64,
            total_messages: needs.hot_messages,
        },
    })
}

async fn sign_in(conn: &mut Conn, email: &str, password: &str) -> Result<(String, HeaderValue)> {
    let answer = conn
        .json(
            Method::POST,
            "/auth/token",
            Some(&basic(email, password)?),
            None,
            StatusCode::OK,
        )
        .await
        .context("getting a token (POST /auth/token)")?;
    let token = answer["token"].as_str().context("no token in the answer")?;
    Ok((token.to_owned(), bearer(token)?))
}

async fn create_chats(
    target: &Arc<Target>,
    auth: &HeaderValue,
    app: &str,
    count: u64,
    connections: usize,
) -> Result<()> {
    let path = format!("/applications/{app}/chats");
    fan_out(target, auth, count, connections, move |_| {
        (path.clone(), None)
    })
    .await
    .context("creating chats")
}

/// POSTs `total` requests over `connections` connections; fails on the first non-201.
async fn fan_out(
    target: &Arc<Target>,
    auth: &HeaderValue,
    total: u64,
    connections: usize,
    request: impl Fn(u64) -> (String, Option<Bytes>) + Send + Sync + 'static,
) -> Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let request = Arc::new(request);
    let tasks: Vec<_> = (0..connections.clamp(1, 64))
        .map(|_| {
            let (next, request, auth) = (next.clone(), request.clone(), auth.clone());
            let mut conn = Conn::new(target.clone(), Duration::from_secs(30));
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        return Ok(());
                    }
                    let (path, body) = request(i);
                    let (status, answer) =
                        conn.send(&Method::POST, &path, Some(&auth), body).await?;
                    if status != StatusCode::CREATED {
                        bail!(
                            "POST {path}: {status}: {}",
                            String::from_utf8_lossy(&answer)
                        );
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

/// Search is eventually consistent: wait until a seeded word is found (a different word each
/// try, so a small seed still has one).
async fn wait_for_search(conn: &mut Conn, auth: &HeaderValue, app: &str) -> Result<()> {
    for i in 0..300 {
        let path = format!(
            "/applications/{app}/chats/1/messages/search?q={}",
            crate::text::word(i)
        );
        let hits = conn
            .json(Method::GET, &path, Some(auth), None, StatusCode::OK)
            .await?;
        if hits.as_array().is_some_and(|h| !h.is_empty()) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the search index did not catch up with the seed messages within 30 s")
}
