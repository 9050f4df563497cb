//! Store behaviour every adapter's tests run against its own engine.

use super::*;

/// A migrated SQLite store in `dir`.
pub async fn sqlite_store(dir: &std::path::Path) -> SqliteStore {
    let store = SqliteStore::open(&SqliteStore::url_in(dir)).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// A migrated MySQL/MariaDB store on a database of its own on the server at `server_url`.
pub async fn mysql_store(server_url: &str) -> MySqlStore {
    let url = crate::testing::fresh_database(server_url).await.unwrap();
    let store = MySqlStore::open(&url).await.unwrap();
    store.migrate().await.unwrap();
    store
}

/// Drops the database of a store made by `mysql_store`.
pub async fn drop_mysql_database(store: &MySqlStore) {
    let name: String = sqlx::query_scalar("SELECT DATABASE()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE {name}"))
        .execute(store.pool())
        .await
        .unwrap();
}

/// A user, an application and `chats` chats (numbers 1..=chats); returns the chat ids.
pub async fn chats(store: &dyn Store, chats: i64) -> (User, AppToken, Vec<i64>) {
    let email = format!("{}@example.com", crate::testing::namespace());
    let user = store
        .insert_user("Ada", &email, "hash", 1)
        .await
        .unwrap()
        .unwrap();
    let token = AppToken::generate();
    let app = store
        .insert_application(&token, "app", user.id, 1)
        .await
        .unwrap();
    let rows: Vec<NewChat> = (1..=chats)
        .map(|number| NewChat {
            application_id: app.id,
            number,
            creator_id: user.id,
            created_at: 1,
        })
        .collect();
    assert_eq!(store.insert_chats(&rows).await.unwrap(), chats as u64);
    let mut ids = Vec::new();
    for number in 1..=chats {
        ids.push(store.chat(app.id, number).await.unwrap().unwrap().id);
    }
    (user, token, ids)
}

pub fn new_message(chat_id: i64, number: i64, sender_id: i64, body: &str) -> NewMessage {
    NewMessage {
        chat_id,
        number,
        sender_id,
        body: body.into(),
        created_at: number,
    }
}

/// A redelivered row keeps its first body and is not reported; the keys reported are the new
/// rows' own ids (search documents and catch-up depend on them).
pub async fn insert_if_absent_returns_only_the_new_rows(store: &dyn Store) {
    let (user, _, chat) = chats(store, 2).await;
    let first = store
        .insert_messages(&[
            new_message(chat[0], 2, user.id, "two"),
            new_message(chat[0], 1, user.id, "one"),
            new_message(chat[1], 1, user.id, "other chat"),
        ])
        .await
        .unwrap();
    assert_eq!(first.len(), 3);
    let again = store
        .insert_messages(&[
            new_message(chat[0], 1, user.id, "redelivered"),
            new_message(chat[0], 3, user.id, "three"),
            new_message(chat[0], 3, user.id, "three, twice in a batch"),
            new_message(chat[1], 1, user.id, "redelivered"),
        ])
        .await
        .unwrap();
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((again[0].chat_id, again[0].number), (chat[0], 3));
    let stored = |number| store.message(chat[0], number);
    assert_eq!(stored(1).await.unwrap().unwrap().body, "one");
    assert_eq!(stored(3).await.unwrap().unwrap().body, "three");
    let mut all: Vec<StoredKey> = first.into_iter().chain(again).collect();
    all.sort_by_key(|k| k.id);
    let indexed: Vec<StoredKey> = store
        .messages_for_index(0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|m| StoredKey {
            id: m.id,
            chat_id: m.chat_id,
            number: m.number,
        })
        .collect();
    assert_eq!(all, indexed);
    assert_eq!(store.count_messages().await.unwrap(), 4);
    assert!(store.insert_messages(&[]).await.unwrap().is_empty());
}
