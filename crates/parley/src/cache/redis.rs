//! Redis cache, shared by every process, with the semantics of the in-process cache: state
//! (`get`/`set`/`incr`/sets) lives until its time-to-live; remembered reads are plain keys with
//! a time-to-live too. Redis has one memory budget for both: under a `maxmemory` eviction
//! policy a remembered read may go early (allowed: it costs a query), and under `noeviction`
//! (advised, because the sequencer's keys must not be evicted) a full Redis refuses writes, which
//! `remember` treats as "no room" and every other call reports as an error.
//!
//! Also home of [`connect`], the one connection every Redis adapter uses.

use super::Cache;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use anyhow::{Context, Result};
use async_trait::async_trait;
use std::time::Duration;

/// Opens a connection that reconnects by itself after Redis restarts or the network drops
/// (commands issued while it is down fail; the next ones use the new connection).
pub async fn connect(url: &str) -> Result<ConnectionManager> {
    let client = ::redis::Client::open(url).with_context(|| format!("REDIS_URL {url}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)));
    ConnectionManager::new_with_config(client, config)
        .await
        .with_context(|| format!("connecting to Redis at {url}"))
}

/// What every key of a deployment starts with: `"{namespace}:"`, or nothing for the seeds'
/// plain names.
pub(crate) fn key_prefix(namespace: &str) -> String {
    if namespace.is_empty() {
        String::new()
    } else {
        format!("{namespace}:")
    }
}

/// Redis wants a positive expiry; a zero time-to-live means "gone at once", as in memory.
pub(crate) fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
}

impl RedisCache {
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Self {
            conn,
            prefix: key_prefix(namespace),
        }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    async fn set_px(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        ::redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(::redis::cmd("GET")
            .arg(self.key(key))
            .query_async(&mut self.conn.clone())
            .await?)
    }

    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        self.set_px(key, value, ttl).await
    }

    async fn set_if_absent(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool> {
        let set: Option<String> = ::redis::cmd("SET")
            .arg(self.key(key))
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(set.is_some())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        ::redis::cmd("DEL")
            .arg(self.key(key))
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn incr(&self, key: &str, ttl: Duration) -> Result<i64> {
        // One transaction: create at 0 with the time-to-live only if absent, then add one, so
        // a counter never exists without its expiry and an existing one keeps its window.
        let key = self.key(key);
        let (n,): (i64,) = ::redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&key)
            .arg(0)
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl))
            .ignore()
            .cmd("INCR")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(n)
    }

    async fn add_to_set(&self, key: &str, members: &[i64]) -> Result<()> {
        if members.is_empty() {
            return Ok(()); // SADD needs at least one member.
        }
        ::redis::cmd("SADD")
            .arg(self.key(key))
            .arg(members)
            .query_async::<()>(&mut self.conn.clone())
            .await?;
        Ok(())
    }

    async fn take_set(&self, key: &str) -> Result<Vec<i64>> {
        // MULTI/EXEC: a member added between the read and the delete is either in this take
        // or in the next one, never lost.
        let key = self.key(key);
        let (members,): (Vec<i64>,) = ::redis::pipe()
            .atomic()
            .cmd("SMEMBERS")
            .arg(&key)
            .cmd("DEL")
            .arg(&key)
            .ignore()
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(members)
    }

    async fn remember(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()> {
        match self.set_px(key, value, ttl).await {
            Err(e) if is_out_of_memory(&e) => Ok(()), // no room: the read is simply not kept
            other => other,
        }
    }

    async fn recall(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get(key).await
    }

    async fn ping(&self) -> Result<()> {
        ::redis::cmd("PING")
            .query_async::<String>(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

/// Redis at `maxmemory` under `noeviction` answers writes with an `OOM` error.
fn is_out_of_memory(e: &anyhow::Error) -> bool {
    e.downcast_ref::<::redis::RedisError>()
        .is_some_and(|e| e.code() == Some("OOM"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{namespace, Engine, PrivateRedis};
    use std::time::Instant;

    async fn cache(url: &str) -> (RedisCache, ConnectionManager, String) {
        let conn = connect(url).await.unwrap();
        let ns = namespace();
        (RedisCache::new(conn.clone(), &ns), conn, ns)
    }

    /// Polls `read` until it returns `want` or the deadline passes; returns the last value.
    async fn eventually<T, F, Fut>(want: T, mut read: F) -> T
    where
        T: PartialEq,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = read().await;
            if got == want || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn values_expire_by_their_time_to_live() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let (cache, _, _) = cache(&url).await;
        let short = Duration::from_millis(100);
        cache.set("k", b"v".to_vec(), short).await.unwrap();
        cache
            .set("long", b"w".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(cache.get("k").await.unwrap(), Some(b"v".to_vec()));
        assert_eq!(
            eventually(None, || async { cache.get("k").await.unwrap() }).await,
            None
        );
        assert_eq!(cache.get("long").await.unwrap(), Some(b"w".to_vec()));
        cache.delete("long").await.unwrap();
        assert_eq!(cache.get("long").await.unwrap(), None);
        assert_eq!(cache.get("never-set").await.unwrap(), None);

        cache.remember("page", b"p".to_vec(), short).await.unwrap();
        assert_eq!(cache.recall("page").await.unwrap(), Some(b"p".to_vec()));
        assert_eq!(
            eventually(None, || async { cache.recall("page").await.unwrap() }).await,
            None
        );
        cache.ping().await.unwrap();
    }

    #[tokio::test]
    async fn set_if_absent_sets_once_until_expiry() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let (cache, _, _) = cache(&url).await;
        let ttl = Duration::from_millis(200);
        assert!(cache.set_if_absent("k", b"a".to_vec(), ttl).await.unwrap());
        assert!(!cache.set_if_absent("k", b"b".to_vec(), ttl).await.unwrap());
        assert_eq!(cache.get("k").await.unwrap(), Some(b"a".to_vec()));
        eventually(None, || async { cache.get("k").await.unwrap() }).await;
        assert!(cache.set_if_absent("k", b"c".to_vec(), ttl).await.unwrap());
        assert_eq!(cache.get("k").await.unwrap(), Some(b"c".to_vec()));

        // Concurrent callers: exactly one wins.
        let wins = futures::future::join_all((0..32).map(|i| {
            let cache = &cache;
            async move {
                cache
                    .set_if_absent("race", vec![i], Duration::from_secs(60))
                    .await
                    .unwrap()
            }
        }))
        .await;
        assert_eq!(wins.iter().filter(|w| **w).count(), 1);
    }

    #[tokio::test]
    async fn counters_are_created_with_their_time_to_live_and_keep_it() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let (cache, mut conn, ns) = cache(&url).await;
        let ttl = Duration::from_secs(30);
        let counted = futures::future::join_all(
            (0..200).map(|_| async { cache.incr("n", ttl).await.unwrap() }),
        )
        .await;
        let mut sorted = counted.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (1..=200).collect::<Vec<_>>(),
            "atomic: each value once"
        );
        let pttl: i64 = ::redis::cmd("PTTL")
            .arg(format!("{ns}:n"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            pttl > 0 && pttl <= 30_000,
            "created with its ttl, got {pttl}"
        );

        // A later increment does not extend the window: the counter restarts when it ends.
        let short = Duration::from_millis(150);
        assert_eq!(cache.incr("w", short).await.unwrap(), 1);
        assert_eq!(cache.incr("w", Duration::from_secs(60)).await.unwrap(), 2);
        eventually(None, || async { cache.get("w").await.unwrap() }).await;
        assert_eq!(
            cache.incr("w", short).await.unwrap(),
            1,
            "restarts once expired"
        );
        assert_eq!(cache.get("w").await.unwrap(), Some(b"1".to_vec()));
    }

    #[tokio::test]
    async fn take_set_takes_every_member_exactly_once() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let (cache, _, _) = cache(&url).await;
        assert!(cache.take_set("s").await.unwrap().is_empty());
        cache.add_to_set("s", &[]).await.unwrap();
        cache.add_to_set("s", &[1, 2, 3]).await.unwrap();
        cache.add_to_set("s", &[3, 4]).await.unwrap();
        let mut taken = cache.take_set("s").await.unwrap();
        taken.sort_unstable();
        assert_eq!(taken, vec![1, 2, 3, 4]);
        assert!(cache.take_set("s").await.unwrap().is_empty());

        // Adders racing a taker: every member ends up in exactly one take.
        let adders = futures::future::join_all((0..8).map(|t| {
            let cache = &cache;
            async move {
                for i in 0..250 {
                    cache.add_to_set("race", &[t * 1000 + i]).await.unwrap();
                }
            }
        }));
        let taker = async {
            let mut all = Vec::new();
            for _ in 0..50 {
                all.extend(cache.take_set("race").await.unwrap());
                tokio::task::yield_now().await;
            }
            all
        };
        let (_, mut all) = tokio::join!(adders, taker);
        all.extend(cache.take_set("race").await.unwrap());
        all.sort_unstable();
        let want: Vec<i64> = (0..8)
            .flat_map(|t| (0..250).map(move |i| t * 1000 + i))
            .collect();
        assert_eq!(all, want);
    }

    #[tokio::test]
    async fn keys_live_under_the_namespace() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let (cache, mut conn, ns) = cache(&url).await;
        cache
            .set("k", b"v".to_vec(), Duration::from_secs(60))
            .await
            .unwrap();
        let raw: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(format!("{ns}:k"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(raw, Some(b"v".to_vec()));
        let other = RedisCache::new(conn.clone(), &namespace());
        assert_eq!(other.get("k").await.unwrap(), None);
        assert_eq!(key_prefix(""), "");
    }

    #[tokio::test]
    async fn a_full_redis_skips_remembered_reads_and_refuses_state() {
        let Some(redis) = PrivateRedis::start().unwrap() else {
            return;
        };
        let (cache, mut conn, _) = cache(&redis.url).await;
        ::redis::cmd("CONFIG")
            .arg(&["SET", "maxmemory", "1"])
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        let ttl = Duration::from_secs(60);
        cache.remember("page", b"p".to_vec(), ttl).await.unwrap();
        assert_eq!(
            cache.recall("page").await.unwrap(),
            None,
            "no room: not kept"
        );
        let refused = cache.set("state", b"s".to_vec(), ttl).await.unwrap_err();
        assert!(is_out_of_memory(&refused), "{refused:#}");
    }
}
