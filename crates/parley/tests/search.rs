//! The search behaviour suite (DESIGN.md "Search"), over HTTP. Every search adapter must pass
//! it; on the embedded stack it runs against tantivy.

mod common;
use common::*;
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

struct Chat<'a> {
    app: &'a TestApp,
    user: &'a TestUser,
    path: String,
}

impl Chat<'_> {
    async fn search(&self, q: &str) -> Vec<i64> {
        self.search_page(q, "").await
    }

    async fn search_page(&self, q: &str, extra: &str) -> Vec<i64> {
        let url = format!("{}/search?q={}{extra}", self.path, urlencode(q));
        let (status, body) = send(self.app.as_user(self.user, Method::GET, &url)).await;
        assert_eq!(status, 200, "{body}");
        body.as_array()
            .unwrap()
            .iter()
            .map(|hit| hit["messageNumber"].as_i64().unwrap())
            .collect()
    }
}

fn urlencode(q: &str) -> String {
    q.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A chat holding `bodies`, once all of them are searchable. Search is eventually
/// consistent and indexes in commit order, so once the last message is found, all are.
async fn chat_with<'a>(app: &'a TestApp, user: &'a TestUser, bodies: &[&str]) -> Chat<'a> {
    let token = app.application(user).await;
    let chat = app.chat(user, &token).await;
    let mut last = 0;
    for body in bodies {
        last = app.message(user, &token, chat, body).await;
    }
    let chat = Chat {
        app,
        user,
        path: format!("/applications/{token}/chats/{chat}/messages"),
    };
    let word = bodies.last().unwrap().split_whitespace().next().unwrap();
    eventually(
        Duration::from_secs(10),
        "the messages to be indexed",
        || async { chat.search(word).await.contains(&last).then_some(()) },
    )
    .await;
    chat
}

#[tokio::test]
async fn matches_words_prefixes_and_parts_case_insensitively() {
    let app = TestApp::spawn().await;
    let user = app.user("Ada").await;
    let chat = chat_with(
        &app,
        &user,
        &["Hello World", "help me", "Othello was here", "nothing"],
    )
    .await;
    if stack().finds_parts_of_words() {
        assert_eq!(
            chat.search("hello").await,
            vec![3, 1],
            "whole word, and inside a word"
        );
        assert_eq!(chat.search("HELLO").await, vec![3, 1], "case-insensitive");
        assert_eq!(chat.search("ell").await, vec![3, 1], "part of a word");
    } else {
        // MySQL FULLTEXT indexes whole words: prefixes match, inner parts do not.
        assert_eq!(chat.search("hello").await, vec![1], "whole word");
        assert_eq!(chat.search("HELLO").await, vec![1], "case-insensitive");
        assert!(chat.search("ell").await.is_empty(), "no parts of words");
        assert_eq!(chat.search("hel").await, vec![2, 1], "word prefix");
    }
    if stack().finds_parts_of_words() {
        assert_eq!(chat.search("hel").await, vec![3, 2, 1], "word prefix, part");
    }
    assert_eq!(chat.search("world").await, vec![1]);
    assert!(chat.search("absent").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn every_word_of_the_query_must_match_and_newest_comes_first() {
    let app = TestApp::spawn().await;
    let user = app.user("Ada").await;
    let chat = chat_with(
        &app,
        &user,
        &["red apple", "green apple", "red car", "apple red again"],
    )
    .await;
    assert_eq!(chat.search("red apple").await, vec![4, 1]);
    assert_eq!(chat.search("apple").await, vec![4, 2, 1]);
    assert_eq!(
        chat.search("re app").await,
        vec![4, 2, 1],
        "prefixes of both words (gREen too)"
    );
    assert!(chat.search("red banana").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn results_are_paginated() {
    let app = TestApp::spawn().await;
    let user = app.user("Ada").await;
    let bodies: Vec<String> = (1..=25).map(|i| format!("item number {i}")).collect();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    let chat = chat_with(&app, &user, &refs).await;
    assert_eq!(
        chat.search_page("item", "&limit=10").await,
        (16..=25).rev().collect::<Vec<_>>()
    );
    assert_eq!(
        chat.search_page("item", "&limit=10&page=3").await,
        (1..=5).rev().collect::<Vec<_>>()
    );
    assert!(chat
        .search_page("item", "&limit=10&page=4")
        .await
        .is_empty());
    app.stop().await;
}

#[tokio::test]
async fn search_is_per_chat() {
    let app = TestApp::spawn().await;
    let user = app.user("Ada").await;
    let first = chat_with(&app, &user, &["shared word"]).await;
    let second = chat_with(&app, &user, &["shared word", "shared again"]).await;
    assert_eq!(first.search("shared").await, vec![1]);
    assert_eq!(second.search("shared").await, vec![2, 1]);
    app.stop().await;
}

#[tokio::test]
async fn an_edited_message_is_found_by_its_new_words_only() {
    let app = TestApp::spawn().await;
    let user = app.user("Ada").await;
    let chat = chat_with(&app, &user, &["original wording"]).await;
    let (status, body) = send(
        app.as_user(&user, Method::PUT, &format!("{}/1", chat.path))
            .json(&serde_json::json!({"body": "replacement text"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // The edit travels through the writer; wait until the new words are indexed.
    eventually(
        Duration::from_secs(10),
        "the edit to be indexed",
        || async { (chat.search("replacement").await == vec![1]).then_some(()) },
    )
    .await;
    assert!(chat.search("original").await.is_empty());
    let (_, message) = send(app.as_user(&user, Method::GET, &format!("{}/1", chat.path))).await;
    assert_eq!(message["body"], Value::from("replacement text"));
    app.stop().await;
}

#[tokio::test]
async fn long_words_and_unicode_are_searchable() {
    let app = TestApp::spawn().await;
    let user = app.user("Ada").await;
    let chat = chat_with(
        &app,
        &user,
        &[
            "Donaudampfschifffahrtsgesellschaft",
            "Ärger über Straße",
            "plain",
        ],
    )
    .await;
    assert_eq!(
        chat.search("donaudampfschifffahrtsgesellschaft").await,
        vec![1]
    );
    if stack().finds_parts_of_words() {
        assert_eq!(chat.search("schifffahrt").await, vec![1]);
    }
    assert_eq!(chat.search("ärger").await, vec![2]);
    if stack() != Stack::MariadbRedisRabbitmq {
        assert_eq!(
            chat.search("STRASSE").await,
            Vec::<i64>::new(),
            "no folding of ß (documented)"
        );
    }
    assert_eq!(chat.search("straße").await, vec![2]);
    app.stop().await;
}
