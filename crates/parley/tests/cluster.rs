//! Many cooperating processes on the production engines (scripts/test runs this binary once per
//! stack, `PARLEY_TEST_STACK`): 2 api + 2 writer + 1 scheduler processes of the real binary,
//! started by scripts/local-topology. Invariants 1 (numbers, also after Redis loses its state),
//! 2 (a 201 survives a writer's SIGKILL), 3 (exactly once), 4 (children right after their
//! parents, across processes), 5 (counts converge) and 8 (SIGTERM on every role, also while
//! one waits for its broker); and a server started before its broker, or `parley migrate`
//! before its database, waits for it, up to `STARTUP_WAIT`.

mod common;
use common::*;
use futures::stream::{self, StreamExt};
use nix::sys::signal::Signal;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

/// The cluster tests need a production stack; the embedded run leaves them out.
fn production_stack() -> bool {
    if stack().is_write_through() {
        eprintln!("SKIPPED: the multi-process tests need PARLEY_TEST_STACK (scripts/test sets it)");
        return false;
    }
    true
}

struct Account {
    client: reqwest::Client,
    jwt: String,
    app: String,
}

impl Account {
    async fn open(base: &str) -> Self {
        let client = client();
        let email = format!("c-{}@example.com", uuid::Uuid::new_v4().simple());
        let sign_up = json!({"name": "C", "email": email, "password": PASSWORD});
        let (status, body) = send(client.post(format!("{base}/users")).json(&sign_up)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (_, token) = send(
            client
                .post(format!("{base}/auth/token"))
                .basic_auth(&email, Some(PASSWORD)),
        )
        .await;
        let jwt = token["token"].as_str().unwrap().to_owned();
        let (status, app) = send(
            client
                .post(format!("{base}/applications"))
                .bearer_auth(&jwt)
                .json(&json!({"name": "cluster"})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        Self {
            client,
            jwt,
            app: app["token"].as_str().unwrap().to_owned(),
        }
    }

    async fn post(&self, base: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let url = format!("{base}/applications/{}{path}", self.app);
        send(self.client.post(url).bearer_auth(&self.jwt).json(&body)).await
    }

    async fn put(&self, base: &str, path: &str, body: Value) -> (StatusCode, Value) {
        let url = format!("{base}/applications/{}{path}", self.app);
        send(self.client.put(url).bearer_auth(&self.jwt).json(&body)).await
    }

    async fn get(&self, base: &str, path: &str) -> (StatusCode, Value) {
        let url = format!("{base}/applications/{}{path}", self.app);
        send(self.client.get(url).bearer_auth(&self.jwt)).await
    }

    /// `count` concurrent message creates into `chat`, alternating between the apis (64 in
    /// flight); the numbers of the 201s, and the other statuses.
    async fn burst(&self, apis: &[String], chat: i64, count: usize) -> (Vec<i64>, Vec<StatusCode>) {
        let answers: Vec<(StatusCode, Value)> = stream::iter(0..count)
            .map(|i| async move {
                let base = &apis[i % apis.len()];
                let url = format!("{base}/applications/{}/chats/{chat}/messages", self.app);
                let request = self.client.post(url).bearer_auth(&self.jwt);
                // A refused connection (an api that has stopped) counts as "not accepted".
                match request
                    .json(&json!({"body": format!("burst {i}")}))
                    .send()
                    .await
                {
                    Ok(response) => {
                        let status = response.status();
                        (status, response.json().await.unwrap_or(Value::Null))
                    }
                    Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Value::Null),
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        let mut numbers = Vec::new();
        let mut others = Vec::new();
        for (status, body) in answers {
            match status {
                StatusCode::CREATED => numbers.push(body["messageNumber"].as_i64().unwrap()),
                other => others.push(other),
            }
        }
        (numbers, others)
    }

    /// Every persisted message number of a chat (pages of 100); none while the chat itself
    /// is still in flight (its messages are then 404, like the chat).
    async fn stored(&self, base: &str, chat: i64) -> Vec<i64> {
        let mut all = Vec::new();
        for page in 1.. {
            let (status, body) = self
                .get(
                    base,
                    &format!("/chats/{chat}/messages?limit=100&page={page}"),
                )
                .await;
            if page == 1 && status == StatusCode::NOT_FOUND {
                break;
            }
            assert_eq!(status, StatusCode::OK, "{body}");
            let rows = body.as_array().unwrap();
            all.extend(rows.iter().map(|m| m["messageNumber"].as_i64().unwrap()));
            if rows.len() < 100 {
                break;
            }
        }
        all
    }

    /// Waits until every number in `expected` is stored, exactly once, and nothing else is.
    async fn assert_stored_exactly(&self, base: &str, chat: i64, expected: &BTreeSet<i64>) {
        // Pages read while the writers insert may shift: compare sets until they match, then
        // read once more, at rest, to see that no number is stored twice.
        eventually(
            Duration::from_secs(60),
            "every acknowledged message stored",
            || async {
                let unique: BTreeSet<i64> = self.stored(base, chat).await.into_iter().collect();
                (unique == *expected).then_some(())
            },
        )
        .await;
        let stored = self.stored(base, chat).await;
        assert_eq!(
            stored.len(),
            expected.len(),
            "each message stored exactly once"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_creates_over_two_apis_are_numbered_1_to_n_and_counts_converge() {
    if !production_stack() {
        return;
    }
    let topology = Topology::start(stack().env().await);
    let apis = &topology.apis;
    let account = Account::open(&apis[0]).await;

    // Chats from both apis at once.
    let chats: Vec<(StatusCode, Value)> = stream::iter(0..100)
        .map(|i| account.post(&apis[i % 2], "/chats", Value::Null))
        .buffer_unordered(32)
        .collect()
        .await;
    let numbers: BTreeSet<i64> = chats
        .iter()
        .map(|(status, body)| {
            assert_eq!(*status, StatusCode::CREATED, "{body}");
            body["chatNumber"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(
        numbers,
        (1..=100).collect(),
        "chat numbers are exactly 1..100"
    );

    // Messages into one chat from both apis, right after the chat's 201 (invariant 4).
    const N: usize = 3_000;
    let (numbers, failures) = account.burst(apis, 7, N).await;
    assert!(failures.is_empty(), "every create succeeded: {failures:?}");
    let numbers: BTreeSet<i64> = numbers.into_iter().collect();
    assert_eq!(
        numbers,
        (1..=N as i64).collect(),
        "message numbers are exactly 1..{N}"
    );
    account.assert_stored_exactly(&apis[1], 7, &numbers).await;

    // Counts converge (count sync runs on the scheduler, every 200 ms here).
    eventually(Duration::from_secs(30), "counts converge", || async {
        let (_, app) = account.get(&apis[0], "").await;
        let (_, chat) = account.get(&apis[1], "/chats/7").await;
        (app["chatsCount"] == 100 && chat["messagesCount"] == N).then_some(())
    })
    .await;
    let codes = topology.stop();
    assert!(codes.values().all(|c| *c == 0), "clean exits: {codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_right_after_their_parents_201_succeed_across_processes() {
    if !production_stack() {
        return;
    }
    let topology = Topology::start(stack().env().await);
    let (a, b) = (&topology.apis[0], &topology.apis[1]);
    let account = Account::open(a).await;
    for round in 0..20 {
        // Each step on the other api, without waiting for the writer.
        let (status, chat) = account.post(a, "/chats", Value::Null).await;
        assert_eq!(status, StatusCode::CREATED, "{chat}");
        let chat = chat["chatNumber"].as_i64().unwrap();
        let (status, message) = account
            .post(
                b,
                &format!("/chats/{chat}/messages"),
                json!({"body": "first"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "round {round}: {message}");
        let number = message["messageNumber"].as_i64().unwrap();
        let path = format!("/chats/{chat}/messages/{number}");
        for (api, body) in [(a, "second"), (b, "third")] {
            let (status, edited) = account.put(api, &path, json!({"body": body})).await;
            assert_eq!(status, StatusCode::OK, "round {round}: {edited}");
        }
        // The later edit wins.
        eventually(Duration::from_secs(30), "the last edit stored", || async {
            let (status, stored) = account.get(a, &path).await;
            (status == StatusCode::OK && stored["body"] == "third").then_some(())
        })
        .await;
    }
    topology.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_killed_mid_burst_loses_nothing_acknowledged() {
    if !production_stack() {
        return;
    }
    let topology = Topology::start(stack().env().await);
    let apis = topology.apis.clone();
    let account = Account::open(&apis[0]).await;
    let (status, _) = account.post(&apis[0], "/chats", Value::Null).await;
    assert_eq!(status, StatusCode::CREATED);

    let burst = account.burst(&apis, 1, 2_000);
    let kill = async {
        // Mid-burst: once the writers are busy persisting.
        eventually(Duration::from_secs(30), "the burst under way", || async {
            let (_, page) = account.get(&apis[0], "/chats/1/messages?limit=100").await;
            (page.as_array().is_some_and(|rows| rows.len() >= 50)).then_some(())
        })
        .await;
        topology.signal("writer-1", Signal::SIGKILL);
    };
    let ((numbers, failures), ()) = tokio::join!(burst, kill);
    assert!(
        failures.is_empty(),
        "the api is unaffected by a writer's death: {failures:?}"
    );
    // A replacement takes over what writer-1 had received but not acked.
    let mut replacement = topology.spawn_role("writer");
    let acknowledged: BTreeSet<i64> = numbers.into_iter().collect();
    assert_eq!(acknowledged.len(), 2_000);
    account
        .assert_stored_exactly(&apis[1], 1, &acknowledged)
        .await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(replacement.id() as i32),
        Signal::SIGTERM,
    );
    assert!(replacement.wait().unwrap().success());
    let codes = topology.stop();
    assert_eq!(
        codes.get("writer-1"),
        Some(&137),
        "writer-1 was killed: {codes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_flushall_mid_run_never_reuses_a_number() {
    if !production_stack() {
        return;
    }
    // A private Redis: FLUSHALL must not disturb the other tests.
    let Some(redis) = parley::testing::PrivateRedis::start().expect("redis-server starts") else {
        return;
    };
    let mut env = stack().env().await;
    for (name, value) in env.iter_mut() {
        if *name == "REDIS_URL" {
            *value = redis.url.clone();
        }
    }
    let topology = Topology::start(env);
    let apis = topology.apis.clone();
    let account = Account::open(&apis[0]).await;
    let (status, _) = account.post(&apis[0], "/chats", Value::Null).await;
    assert_eq!(status, StatusCode::CREATED);

    // Before: numbers handed out, many still in flight when Redis loses everything.
    let (before, failures) = account.burst(&apis, 1, 500).await;
    assert!(failures.is_empty(), "{failures:?}");
    let client = redis::Client::open(redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("FLUSHALL").query_async(&mut conn).await.unwrap();
    let (after, failures) = account.burst(&apis, 1, 500).await;
    assert!(failures.is_empty(), "{failures:?}");
    let highest_before = *before.iter().max().unwrap();
    let lowest_after = *after.iter().min().unwrap();
    assert!(
        lowest_after > highest_before,
        "every number after FLUSHALL ({lowest_after}..) is above every earlier one (..{highest_before})"
    );
    let (status, chat) = account.post(&apis[1], "/chats", Value::Null).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        chat["chatNumber"].as_i64().unwrap() > 1,
        "chat numbers are not reused: {chat}"
    );
    let all: BTreeSet<i64> = before.into_iter().chain(after).collect();
    assert_eq!(all.len(), 1_000, "no number handed out twice");
    account.assert_stored_exactly(&apis[0], 1, &all).await;
    let codes = topology.stop();
    assert!(codes.values().all(|c| *c == 0), "clean exits: {codes:?}");
}

/// The variables that name a stack's broker.
const BROKER: [&str; 2] = ["RABBITMQ_URL", "NATS_URL"];

/// Points the first of the variables `names` that `env` sets at a new relay to its engine.
async fn through_relay(
    env: &mut [(&'static str, String)],
    names: &[&str],
    relaying: bool,
) -> Relay {
    for (name, value) in env.iter_mut() {
        if !names.contains(name) {
            continue;
        }
        let mut url = reqwest::Url::parse(value).unwrap();
        let default_port = match url.scheme() {
            "amqp" => 5672,
            "nats" => 4222,
            "mysql" => 3306,
            "postgres" | "postgresql" => 5432,
            other => panic!("no default port for {other}"),
        };
        let target = format!(
            "{}:{}",
            url.host_str().unwrap(),
            url.port().unwrap_or(default_port)
        );
        let relay = match relaying {
            true => Relay::to(target).await,
            false => Relay::refusing(target).await,
        };
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(relay.port)).unwrap();
        *value = url.to_string();
        return relay;
    }
    panic!("the stack sets none of {names:?}");
}

/// On a production stack: its engines, with the first of `names` behind a relay that
/// refuses connections until opened, and a data directory.
async fn refusing(
    names: &[&str],
) -> Option<(Vec<(&'static str, String)>, Relay, tempfile::TempDir)> {
    if !production_stack() {
        return None;
    }
    let mut env = stack().env().await;
    let relay = through_relay(&mut env, names, false).await;
    Some((env, relay, tempfile::tempdir().unwrap()))
}

/// Starts `command`, whose engine behind `relay` refuses connections, and returns once it
/// has been refused twice and still runs (waiting). A `Binary` kills its process when
/// dropped, should an assertion fail first.
async fn waiting_on(relay: &Relay, mut command: std::process::Command) -> Binary {
    let mut binary = Binary {
        child: command.spawn().unwrap(),
        base: String::new(),
    };
    let child = std::sync::Mutex::new(&mut binary.child);
    eventually(
        Duration::from_secs(30),
        "the process tried its engine and was refused",
        || async {
            let exited = child.lock().unwrap().try_wait().unwrap();
            assert!(exited.is_none(), "the process did not wait: {exited:?}");
            (relay.refused() >= 2).then_some(())
        },
    )
    .await;
    binary
}

async fn exit_code(mut binary: Binary) -> Option<i32> {
    tokio::task::spawn_blocking(move || binary.child.wait().unwrap().code())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_waits_for_its_database() {
    let Some((env, relay, dir)) = refusing(&["DATABASE_URL"]).await else {
        return;
    };
    let migrate = waiting_on(&relay, Binary::command("migrate", dir.path(), &env)).await;
    relay.open();
    let code = exit_code(migrate).await;
    assert_eq!(
        code,
        Some(0),
        "migrations applied once the database answered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_started_before_its_broker_waits_for_it() {
    let Some((env, relay, dir)) = refusing(&BROKER).await else {
        return;
    };
    let mut command = Binary::command("serve", dir.path(), &env);
    command.stderr(std::process::Stdio::piped());
    let mut server = waiting_on(&relay, command).await;
    relay.open();
    // It listens only once its backends opened; a process that gave up would end its log
    // early and fail here.
    let server = tokio::task::spawn_blocking(move || {
        server.await_listening();
        server
    })
    .await
    .expect("the server waited for its broker and started");
    let account = Account::open(&server.base).await;
    let (status, body) = account.post(&server.base, "/chats", Value::Null).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = account
        .post(
            &server.base,
            "/chats/1/messages",
            json!({"body": "late broker"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    account
        .assert_stored_exactly(&server.base, 1, &BTreeSet::from([1]))
        .await;
    server.signal(Signal::SIGTERM);
    assert_eq!(exit_code(server).await, Some(0), "exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stopped_while_it_waits_for_its_broker_exits_zero() {
    let Some((env, relay, dir)) = refusing(&BROKER).await else {
        return;
    };
    let server = waiting_on(&relay, Binary::command("serve", dir.path(), &env)).await;
    server.signal(Signal::SIGTERM);
    let code = exit_code(server).await;
    assert_eq!(code, Some(0), "exit after SIGTERM while starting");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_broker_stays_away_exits_1_after_startup_wait() {
    let Some((mut env, relay, dir)) = refusing(&BROKER).await else {
        return;
    };
    env.push(("STARTUP_WAIT", "2s".into()));
    let mut command = Binary::command("serve", dir.path(), &env);
    command.stderr(std::process::Stdio::piped());
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{log}");
    assert!(
        log.contains("not reachable within STARTUP_WAIT (2s)"),
        "the reason is given: {log}"
    );
    assert!(
        relay.refused() >= 3,
        "tried again meanwhile: {}",
        relay.refused()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_a_503_and_nothing_is_persisted() {
    if !production_stack() {
        return;
    }
    let topology = Topology::start(stack().env().await);
    // One more api, whose broker connection runs through a relay the test cuts.
    let mut env = topology.env.clone();
    let relay = through_relay(&mut env, &BROKER, true).await;
    let dir = tempfile::tempdir().unwrap();
    let api = Binary::start("api", dir.path(), &env);
    let (base, other) = (api.base.clone(), topology.apis[0].clone());
    let account = Account::open(&base).await;
    let (status, _) = account.post(&base, "/chats", Value::Null).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = account
        .post(&base, "/chats/1/messages", json!({"body": "before"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    account
        .assert_stored_exactly(&other, 1, &BTreeSet::from([1]))
        .await;

    relay.cut().await;
    let (status, body) = account
        .post(&base, "/chats/1/messages", json!({"body": "lost"}))
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(error_code(&body), "unavailable");
    let (status, body) = account.post(&base, "/chats", Value::Null).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    let (status, body) = send(account.client.get(format!("{base}/ready"))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");

    // Nothing of the refused requests reaches the store: a message created through the other
    // api, after them, is the only new row.
    let (status, _) = account
        .post(&other, "/chats/1/messages", json!({"body": "after"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let stored = eventually(
        Duration::from_secs(30),
        "the later message stored",
        || async {
            let stored = account.stored(&other, 1).await;
            (stored.len() == 2).then_some(stored)
        },
    )
    .await;
    let (_, body) = account
        .get(&other, &format!("/chats/1/messages/{}", stored[0]))
        .await;
    assert_eq!(
        body["body"], "after",
        "the refused message was not persisted"
    );
    let (_, chats) = account.get(&other, "/chats").await;
    assert_eq!(
        chats.as_array().unwrap().len(),
        1,
        "the refused chat was not persisted: {chats}"
    );
    topology.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_on_every_role_drains_and_exits_zero() {
    if !production_stack() {
        return;
    }
    let topology = Topology::start(stack().env().await);
    let apis = topology.apis.clone();
    let env = topology.env.clone();
    let account = Account::open(&apis[0]).await;
    let (status, _) = account.post(&apis[0], "/chats", Value::Null).await;
    assert_eq!(status, StatusCode::CREATED);
    // Stop every role while creates are in flight.
    let burst = account.burst(&apis, 1, 1_000);
    let stop = async {
        eventually(Duration::from_secs(30), "the burst under way", || async {
            let (_, page) = account.get(&apis[0], "/chats/1/messages?limit=100").await;
            (page.as_array().is_some_and(|rows| rows.len() >= 20)).then_some(())
        })
        .await;
        tokio::task::spawn_blocking(move || topology.stop())
            .await
            .unwrap()
    };
    let ((numbers, _refused), codes) = tokio::join!(burst, stop);
    assert_eq!(codes.len(), 6, "every process reported: {codes:?}");
    assert!(
        codes.values().all(|c| *c == 0),
        "every role exits 0 after SIGTERM: {codes:?}"
    );

    // Every acknowledged create is persisted once the topology runs again.
    let topology = Topology::start(env);
    let acknowledged: BTreeSet<i64> = numbers.into_iter().collect();
    account
        .assert_stored_exactly(&topology.apis[0], 1, &acknowledged)
        .await;
    topology.stop();
}
