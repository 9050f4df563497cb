//! Account deletion after the recovery window: soft delete that frees the address, the
//! audit log, the e-mail, and the global daily limit.

mod common;
use common::*;
use parley::bus::RetryPolicy;
use parley::roles::notifier::Notifier;
use parley::roles::scheduler::{Scheduler, SchedulerSettings};
use parley::startup::Backends;
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

fn outbox_mentions(app: &TestApp, email: &str, subject: &str) -> bool {
    std::fs::read_dir(app.dir.path().join("outbox"))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.unwrap().path()).ok())
        .any(|mail| mail.contains(&format!("To: {email}")) && mail.contains(subject))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_deletion_removes_the_account_and_frees_the_address() {
    let app = TestApp::spawn_with(|c| {
        c.deletion_delay = Duration::ZERO;
        c.credentials_cache_ttl = Duration::from_millis(50);
    })
    .await;
    let user = app.user("Gone").await;
    let token = app.application(&user).await;
    let chat = app.chat(&user, &token).await;
    app.message(&user, &token, chat, "still here after my account")
        .await;

    let (status, body) = send(app.as_user(&user, Method::DELETE, "/users/me")).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    eventually(Duration::from_secs(10), "the deletion to run", || async {
        let (status, _) = send(app.as_user(&user, Method::GET, "/users/me")).await;
        (status == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(10),
        "the account-deleted mail",
        || async {
            outbox_mentions(&app, &user.email, "Your Parley account was deleted").then_some(())
        },
    )
    .await;

    // The address is free again; the new account is a different one.
    let (status, _) = send(
        app.request(Method::POST, "/users")
            .json(&json!({"name": "New", "email": user.email, "password": PASSWORD})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = send(app.as_user(&user, Method::GET, "/users/me")).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the old token does not open the new account"
    );
    let (status, me) = send(
        app.request(Method::GET, "/users/me")
            .basic_auth(&user.email, Some(PASSWORD)),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["name"], "New");

    // Messages stay, under a scrubbed sender.
    let (_, messages) = send(
        app.request(
            Method::GET,
            &format!("/applications/{token}/chats/{chat}/messages"),
        )
        .basic_auth(&user.email, Some(PASSWORD)),
    )
    .await;
    assert_eq!(messages[0]["senderName"], "Deleted user");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_the_daily_limit_of_deletions_runs_and_every_step_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let backends = Backends::open(&test_config(dir.path()).await)
        .await
        .unwrap();
    let store = backends.store.clone();
    tokio::spawn(
        Notifier::new(
            backends.bus.clone(),
            backends.mailer.clone(),
            RetryPolicy::default(),
        )
        .run(tokio_util::sync::CancellationToken::new()),
    );
    let scheduler = Scheduler::new(
        store.clone(),
        backends.cache.clone(),
        backends.lock.clone(),
        backends.bus.clone(),
        SchedulerSettings {
            count_sync_interval: Duration::from_secs(3600),
            deletions_per_day: 2,
        },
    );
    let now = parley::domain::now_ms();
    let mut users = Vec::new();
    for i in 0..3 {
        let user = store
            .insert_user("u", &format!("u{i}@example.com"), "hash", now)
            .await
            .unwrap()
            .unwrap();
        store
            .schedule_deletion(user.id, now - 1000 + i, &format!("token-hash-{i}"), now)
            .await
            .unwrap();
        users.push(user);
    }

    scheduler.run_once(false).await.unwrap();
    scheduler.run_once(false).await.unwrap();

    let mut remaining = Vec::new();
    for user in &users {
        if store.user_by_id(user.id).await.unwrap().is_some() {
            remaining.push(user.id);
        }
    }
    assert_eq!(
        remaining,
        vec![users[2].id],
        "the two oldest ran; the third waits for tomorrow"
    );
    for user in &users[..2] {
        let actions: Vec<String> = store
            .actions_of(user.id)
            .await
            .unwrap()
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        assert_eq!(actions, vec!["account_deleted"]);
    }
    assert!(store
        .pending_deletion_of(users[2].id)
        .await
        .unwrap()
        .is_some());
}
