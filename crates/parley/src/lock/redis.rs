//! Redis leader lock: the key `{namespace}:{name}` holds the holder's name with an expiry, so a
//! dead leader's lock lapses after its time-to-live. Taking, extending and giving up are each
//! one script, so a holder never extends or deletes a lock that lapsed and went to another.
//!
//! Like any lease, it gives one leader at a time only while the leader renews before its
//! time-to-live ends (the scheduler renews every tick, at a third of it); a leader stalled past
//! it may overlap the next one for the rest of its job.

use super::LeaderLock;
use crate::cache::redis::{key_prefix, millis};
use ::redis::aio::ConnectionManager;
use ::redis::Script;
use anyhow::Result;
use async_trait::async_trait;
use std::time::Duration;

/// Take the lock if free, or extend it if `holder` has it.
const ACQUIRE: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Delete the lock only if `holder` has it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

pub struct RedisLock {
    conn: ConnectionManager,
    prefix: String,
    acquire: Script,
    release: Script,
}

impl RedisLock {
    pub fn new(conn: ConnectionManager, namespace: &str) -> Self {
        Self {
            conn,
            prefix: key_prefix(namespace),
            acquire: Script::new(ACQUIRE),
            release: Script::new(RELEASE),
        }
    }
}

#[async_trait]
impl LeaderLock for RedisLock {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let held: i64 = self
            .acquire
            .key(format!("{}{name}", self.prefix))
            .arg(holder)
            .arg(millis(ttl))
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(held == 1)
    }

    async fn release(&self, name: &str, holder: &str) -> Result<()> {
        self.release
            .key(format!("{}{name}", self.prefix))
            .arg(holder)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::redis::connect;
    use crate::testing::{namespace, Engine};
    use std::time::Instant;

    #[tokio::test]
    async fn one_holder_at_a_time() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let conn = connect(&url).await.unwrap();
        let ns = namespace();
        // Two "processes" (two connections) compete for the same lock.
        let a = RedisLock::new(conn, &ns);
        let b = RedisLock::new(connect(&url).await.unwrap(), &ns);
        let ttl = Duration::from_secs(30);

        let won = futures::future::join_all((0..16).map(|i| {
            let lock = if i % 2 == 0 { &a } else { &b };
            async move { lock.acquire("leader", &format!("h{i}"), ttl).await.unwrap() }
        }))
        .await;
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "exactly one holder");
        let holder = format!("h{}", won.iter().position(|w| *w).unwrap());

        // Only the holder extends; others stay out; a release by a non-holder does nothing.
        assert!(b.acquire("leader", &holder, ttl).await.unwrap());
        assert!(!a.acquire("leader", "other", ttl).await.unwrap());
        a.release("leader", "other").await.unwrap();
        assert!(!b.acquire("leader", "other", ttl).await.unwrap());
        // Another name is another lock.
        assert!(a.acquire("other-job", "other", ttl).await.unwrap());

        // The holder's release frees it at once.
        a.release("leader", &holder).await.unwrap();
        assert!(b.acquire("leader", "other", ttl).await.unwrap());
    }

    #[tokio::test]
    async fn a_lock_lapses_unless_its_holder_extends_it() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let lock = RedisLock::new(connect(&url).await.unwrap(), &namespace());
        let ttl = Duration::from_millis(600);
        assert!(lock.acquire("leader", "a", ttl).await.unwrap());

        // Extending keeps it past the first time-to-live.
        let until = Instant::now() + ttl * 3;
        while Instant::now() < until {
            assert!(lock.acquire("leader", "a", ttl).await.unwrap());
            assert!(!lock.acquire("leader", "b", ttl).await.unwrap());
            tokio::time::sleep(ttl / 6).await;
        }

        // Once "a" stops extending, the lock lapses and "b" gets it.
        let deadline = Instant::now() + Duration::from_secs(5);
        let lapsed_after = Instant::now();
        while !lock.acquire("leader", "b", ttl).await.unwrap() {
            assert!(Instant::now() < deadline, "the lock never lapsed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            lapsed_after.elapsed() >= ttl / 2,
            "lapsed after {:?}, before its time-to-live",
            lapsed_after.elapsed()
        );
        // The old holder cannot extend or release the new holder's lock.
        assert!(!lock.acquire("leader", "a", ttl).await.unwrap());
        lock.release("leader", "a").await.unwrap();
        assert!(!lock.acquire("leader", "a", ttl).await.unwrap());
    }
}
