//! `parley-bench load`: puts a large data set in place fast, straight through the store's bulk
//! path (the writer's own `insert_messages`), not through HTTP: a user, an application, the
//! chats, then messages in large batches. Optionally builds the search index too. Writes
//! `bench-fixture.json` in the data directory with the credentials the scenarios sign in with.

use crate::cli::LoadArgs;
use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use parley::config::Config;
use parley::domain::{now_ms, AppToken, PageRequest, PasswordHasher};
use parley::search::{SearchIndex, TantivyIndex};
use parley::store::{NewChat, NewMessage, Store};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// The fixture's file name in the data directory.
pub const FILE: &str = "bench-fixture.json";

/// What `load` put in place, and how to sign in to use it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fixture {
    pub email: String,
    pub password: String,
    pub app_token: String,
    /// Chats 1..=chats exist.
    pub chats: u64,
    /// Messages 1..=this exist in chat 1, the hot chat.
    pub hot_chat_messages: i64,
    /// Messages in all chats.
    pub messages: u64,
    pub loaded_at: String,
    pub load_seconds: f64,
    /// `None` when the index was left to the server's catch-up on start.
    pub index_seconds: Option<f64>,
}

impl Fixture {
    /// Reads a fixture from its file, or from a data directory holding one.
    pub fn read(path: &Path) -> Result<Self> {
        let file = if path.is_dir() {
            path.join(FILE)
        } else {
            path.to_owned()
        };
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {} (made by `parley-bench load`)", file.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", file.display()))
    }
}

/// How many messages each chat gets: the hot chat (1) its share, the rest spread evenly.
pub fn distribute(messages: u64, chats: u64, hot_share: f64) -> Vec<u64> {
    let chats = chats.max(1);
    if chats == 1 {
        return vec![messages];
    }
    let hot = ((messages as f64 * hot_share.clamp(0.0, 1.0)).round() as u64).min(messages);
    let rest = messages - hot;
    let others = chats - 1;
    let mut counts = vec![hot];
    counts.extend((0..others).map(|i| rest / others + u64::from(i < rest % others)));
    counts
}

pub async fn load(args: LoadArgs) -> Result<()> {
    let file = args.data_dir.join(FILE);
    if file.exists() {
        bail!(
            "{} exists: this data directory already has a fixture; use a new --data-dir",
            file.display()
        );
    }
    let config = Config::for_data_dir(&args.data_dir);
    let store = parley::startup::open_store(&config).await?.store;
    let started = Instant::now();

    let password: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect();
    let hash = PasswordHasher::default()
        .hash(password.clone())
        .await
        .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?;
    let now = now_ms();
    let user = store
        .insert_user("parley-bench", &args.email, &hash, now)
        .await?
        .with_context(|| {
            format!(
                "{} is already registered in this data directory",
                args.email
            )
        })?;
    let app = store
        .insert_application(&AppToken::generate(), "parley-bench", user.id, now)
        .await?;
    let chats: Vec<NewChat> = (1..=args.chats.max(1) as i64)
        .map(|number| NewChat {
            application_id: app.id,
            number,
            creator_id: user.id,
            created_at: now,
        })
        .collect();
    store.insert_chats(&chats).await?;
    let chat_ids: HashMap<i64, i64> = store
        .chats(
            app.id,
            PageRequest {
                limit: chats.len() as u32,
                offset: 0,
                before: None,
            },
        )
        .await?
        .into_iter()
        .map(|c| (c.number, c.id))
        .collect();
    let counts = distribute(args.messages, args.chats, args.hot_share);

    let bar = progress(args.messages, "messages");
    let (batches, mut inbox) = tokio::sync::mpsc::channel::<Vec<NewMessage>>(2);
    // Text is made on another thread while the store writes the previous batch.
    let producer = {
        let counts = counts.clone();
        let batch = args.batch.max(1);
        let sender_id = user.id;
        std::thread::spawn(move || produce(&counts, &chat_ids, sender_id, batch, now, batches))
    };
    while let Some(batch) = inbox.recv().await {
        store.insert_messages(&batch).await?;
        bar.inc(batch.len() as u64);
    }
    producer.join().expect("the text producer panicked")?;
    bar.finish();
    store.sync_messages_count(None).await?;
    store.sync_chats_count(None).await?;
    let load_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "loaded {} messages in {} chats in {load_seconds:.1} s ({:.0} messages/s)",
        args.messages,
        counts.len(),
        args.messages as f64 / load_seconds
    );

    let index_seconds = if args.no_index {
        eprintln!("search index: left to the server, which catches up from the store on start");
        None
    } else {
        Some(build_index(&args.data_dir, store.clone(), args.messages).await?)
    };

    let fixture = Fixture {
        email: args.email.clone(),
        password,
        app_token: app.token.to_string(),
        chats: counts.len() as u64,
        hot_chat_messages: counts[0] as i64,
        messages: args.messages,
        loaded_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        load_seconds,
        index_seconds,
    };
    std::fs::write(&file, serde_json::to_string_pretty(&fixture)? + "\n")
        .with_context(|| format!("writing {}", file.display()))?;
    print_usage(&args.data_dir, &file, &fixture);
    Ok(())
}

/// Messages chat by chat, numbers 1..=count, one second apart ending now, in batches.
fn produce(
    counts: &[u64],
    chat_ids: &HashMap<i64, i64>,
    sender_id: i64,
    batch: usize,
    now: i64,
    out: tokio::sync::mpsc::Sender<Vec<NewMessage>>,
) -> Result<()> {
    let mut rng = fastrand::Rng::with_seed(1);
    let mut pending = Vec::with_capacity(batch);
    for (i, &count) in counts.iter().enumerate() {
        let chat_id = chat_ids[&(i as i64 + 1)];
        let first = now - count as i64 * 1000;
        for number in 1..=count as i64 {
            pending.push(NewMessage {
                chat_id,
                number,
                sender_id,
                body: crate::text::body(&mut rng),
                created_at: first + number * 1000,
            });
            if pending.len() == batch {
                let full = std::mem::replace(&mut pending, Vec::with_capacity(batch));
                out.blocking_send(full).context("the loader stopped")?;
            }
        }
    }
    if !pending.is_empty() {
        out.blocking_send(pending).context("the loader stopped")?;
    }
    Ok(())
}

/// `parley::search::index_from_store` into the data directory's index, as `parley reindex`
/// does; the server then finds it caught up.
async fn build_index(data_dir: &Path, store: Arc<dyn Store>, total: u64) -> Result<f64> {
    let started = Instant::now();
    let index = TantivyIndex::open(&data_dir.join("search")).context(
        "opening the search index (is a server running on this data directory? stop it first)",
    )?;
    let after = index.indexed_up_to().await?.unwrap_or(0);
    let bar = progress(total, "indexed");
    parley::search::index_from_store(&index, store.as_ref(), after, &|n| bar.set_position(n))
        .await?;
    bar.finish();
    let seconds = started.elapsed().as_secs_f64();
    eprintln!("search index built in {seconds:.1} s");
    Ok(seconds)
}

fn progress(total: u64, what: &str) -> ProgressBar {
    ProgressBar::new(total).with_style(
        ProgressStyle::with_template(&format!(
            "{{bar:40}} {{human_pos}}/{{human_len}} {what} ({{per_sec}}, {{eta}} left)"
        ))
        .expect("valid template"),
    )
}

fn print_usage(data_dir: &Path, file: &Path, f: &Fixture) {
    let dir: PathBuf = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_owned());
    println!("fixture written to {}", file.display());
    println!("  email:     {}", f.email);
    println!("  password:  {}", f.password);
    println!("  app token: {}", f.app_token);
    println!(
        "  chats:     {} (chat 1 holds {} messages)",
        f.chats, f.hot_chat_messages
    );
    println!("start the server on it:");
    println!(
        "  PORT=8080 PARLEY_DATA_DIR={} target/release/parley serve",
        dir.display()
    );
    println!("then run scenarios against it:");
    println!(
        "  target/release/parley-bench run --fixture {} --url http://127.0.0.1:8080 --scenario search",
        dir.display()
    );
    println!("or get a token for wrk:");
    println!(
        "  curl -s -X POST -u '{}:{}' http://127.0.0.1:8080/auth/token",
        f.email, f.password
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_distributed_without_loss() {
        let counts = distribute(1_000_000, 1000, 0.5);
        assert_eq!(counts.len(), 1000);
        assert_eq!(counts[0], 500_000);
        assert_eq!(counts.iter().sum::<u64>(), 1_000_000);
        assert!(counts[1..].iter().all(|&c| c == 500 || c == 501));
        assert_eq!(distribute(7, 1, 0.5), vec![7]);
        assert_eq!(distribute(10, 4, 0.5).iter().sum::<u64>(), 10);
    }
}
