//! In-process cache for the embedded stack. State lives in a map that only its time-to-live
//! empties (a size-bounded cache may refuse or evict entries, which would lose idempotency
//! records and reset rate limits); remembered reads live in a moka cache bounded in bytes.

use super::Cache;
use anyhow::Result;
use async_trait::async_trait;
use moka::sync::Cache as Moka;
use moka::Expiry;
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Expired state is swept after this many writes (lazy expiry covers reads).
const SWEEP_EVERY: u64 = 10_000;
/// What a remembered read costs beyond its key and value bytes: moka's entry, its
/// expiry-timer and access-order nodes, the hash table's share and the allocations' headers.
/// Measured: 142k entries of 150-byte values took 612 bytes each in RSS. With 64 here, the
/// 32 MiB budget held 83 MB (a third of the server's memory after a get-message run on the
/// 1M-message fixture).
const ENTRY_OVERHEAD: usize = 448;

#[derive(Clone)]
struct Remembered {
    value: Vec<u8>,
    ttl: Duration,
}

struct PerEntryTtl;

impl Expiry<String, Remembered> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, entry: &Remembered, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
    fn expire_after_update(
        &self,
        _: &String,
        entry: &Remembered,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

#[derive(Default)]
struct State {
    values: HashMap<String, (Vec<u8>, Instant)>,
    sets: HashMap<String, HashSet<i64>>,
    writes: u64,
}

impl State {
    fn live(&mut self, key: &str) -> Option<&mut (Vec<u8>, Instant)> {
        let now = Instant::now();
        if self.values.get(key).is_some_and(|(_, until)| *until <= now) {
            self.values.remove(key);
        }
        self.values.get_mut(key)
    }

    fn wrote(&mut self) {
        self.writes += 1;
        if self.writes.is_multiple_of(SWEEP_EVERY) {
            let now = Instant::now();
            self.values.retain(|_, (_, until)| *until > now);
        }
    }
}

pub struct MemoryCache {
    state: Mutex<State>,
    remembered: Moka<String, Remembered>,
}

impl MemoryCache {
    /// Remembered reads take at most about `max_bytes`.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            state: Mutex::default(),
            remembered: Moka::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, entry: &Remembered| {
                    (key.len() + entry.value.len() + ENTRY_OVERHEAD)
                        .try_into()
                        .unwrap_or(u32::MAX)
                })
                .expire_after(PerEntryTtl)
                .build(),
        }
    }
}

impl Default for MemoryCache {
    fn default() -> Self {
        Self::new(32 * 1024 * 1024)
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state.lock().unwrap().live(key).map(|(v, _)| v.clone()))
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        state
            .values
            .insert(key.to_owned(), (value, Instant::now() + ttl));
        state.wrote();
        Ok(())
    }

    async fn set_if_absent(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        let mut state = self.state.lock().unwrap();
        if state.live(key).is_some() {
            return Ok(false);
        }
        state
            .values
            .insert(key.to_owned(), (value, Instant::now() + ttl));
        state.wrote();
        Ok(true)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.state.lock().unwrap().values.remove(key);
        Ok(())
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<i64> {
        let mut state = self.state.lock().unwrap();
        let next = match state.live(key) {
            Some((value, _)) => {
                let n = std::str::from_utf8(value)?.parse::<i64>()? + 1;
                *value = n.to_string().into_bytes();
                n
            }
            None => {
                state
                    .values
                    .insert(key.to_owned(), (b"1".to_vec(), Instant::now() + ttl));
                1
            }
        };
        state.wrote();
        Ok(next)
    }

    async fn add_to_set(&self, key: &str, members: &[i64]) -> Result<()> {
        let mut state = self.state.lock().unwrap();
        state
            .sets
            .entry(key.to_owned())
            .or_default()
            .extend(members);
        Ok(())
    }

    async fn take_set(&self, key: &str) -> Result<Vec<i64>> {
        let set = self
            .state
            .lock()
            .unwrap()
            .sets
            .remove(key)
            .unwrap_or_default();
        Ok(set.into_iter().collect())
    }

    async fn remember(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.remembered
            .insert(key.to_owned(), Remembered { value, ttl });
        Ok(())
    }

    async fn recall(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.remembered.get(key).map(|e| e.value))
    }

    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn state_expires_by_its_time_to_live_only() {
        let cache = MemoryCache::new(1024);
        let ttl = Duration::from_millis(50);
        assert!(cache.set_if_absent("k", b"a".to_vec(), ttl).await.unwrap());
        assert!(!cache.set_if_absent("k", b"b".to_vec(), ttl).await.unwrap());
        assert_eq!(cache.incr("n", ttl).await.unwrap(), 1);
        assert_eq!(cache.incr("n", ttl).await.unwrap(), 2);
        // Remembered reads far over the byte budget do not push state out.
        for i in 0..100 {
            cache
                .remember(&format!("r{i}"), vec![0; 512], ttl)
                .await
                .unwrap();
        }
        assert_eq!(cache.get("k").await.unwrap(), Some(b"a".to_vec()));
        tokio::time::sleep(ttl * 2).await;
        assert_eq!(cache.get("k").await.unwrap(), None);
        assert_eq!(
            cache.incr("n", ttl).await.unwrap(),
            1,
            "a counter restarts once expired"
        );
    }

    #[tokio::test]
    async fn remembered_reads_stay_near_their_byte_budget_in_real_memory() {
        const BUDGET: u64 = 16 * 1024 * 1024;
        let cache = MemoryCache::new(BUDGET);
        let before = crate::testing::resident_anon_kib();
        // Small values, like single messages: the per-entry overhead dominates.
        for i in 0..200_000 {
            let key = format!("chat:1:pages:17:m{i}");
            cache
                .remember(&key, vec![b'x'; 150], Duration::from_secs(60))
                .await
                .unwrap();
        }
        cache.remembered.run_pending_tasks();
        let grown = (crate::testing::resident_anon_kib() - before) * 1024;
        assert!(
            grown <= (BUDGET + BUDGET / 2) as i64,
            "a {BUDGET}-byte budget took {grown} bytes for {} entries",
            cache.remembered.entry_count()
        );
    }
}
