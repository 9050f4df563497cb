//! In-process cache for the embedded stack (moka, with a time-to-live per entry).

use super::Cache;
use anyhow::Result;
use async_trait::async_trait;
use moka::sync::Cache as Moka;
use moka::Expiry;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone)]
struct Entry {
    value: Vec<u8>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, entry: &Entry, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        entry: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

pub struct MemoryCache {
    entries: Moka<String, Entry>,
    sets: Mutex<HashMap<String, HashSet<i64>>>,
}

impl MemoryCache {
    /// A cache holding at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: Moka::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, entry: &Entry| {
                    (key.len() + entry.value.len() + 64)
                        .try_into()
                        .unwrap_or(u32::MAX)
                })
                .expire_after(PerEntryTtl)
                .build(),
            sets: Mutex::default(),
        }
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new(256 * 1024 * 1024)
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.entries.get(key).map(|e| e.value))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.entries.insert(key.to_owned(), Entry { value, ttl });
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        let entry = self
            .entries
            .entry(key.to_owned())
            .or_insert(Entry { value, ttl });
        Ok(entry.is_fresh())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.entries.invalidate(key);
        Ok(())
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<i64> {
        let entry = self.entries.entry(key.to_owned()).and_upsert_with(|old| {
            let n = old
                .and_then(|e| {
                    std::str::from_utf8(&e.into_value().value)
                        .ok()?
                        .parse::<i64>()
                        .ok()
                })
                .unwrap_or(0);
            Entry {
                value: (n + 1).to_string().into_bytes(),
                ttl,
            }
        });
        Ok(std::str::from_utf8(&entry.into_value().value)?.parse()?)
    }

    async fn add_to_set(&self, key: &str, members: &[i64]) -> Result<()> {
        self.sets
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default()
            .extend(members);
        Ok(())
    }

    async fn take_set(&self, key: &str) -> Result<Vec<i64>> {
        let set = self.sets.lock().unwrap().remove(key).unwrap_or_default();
        Ok(set.into_iter().collect())
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}
