//! Port: shared, expiring key-value state, in two kinds:
//! - state (`get`/`set`/`incr`/sets): idempotency records, rate-limit counters, page
//!   generations, count-sync "dirty" sets; kept until its time-to-live ends;
//! - remembered reads (`remember`/`recall`): copies of query results, which may be evicted
//!   early under memory pressure; losing one costs a query, never correctness.

mod memory;
pub mod redis;

pub use self::redis::RedisCache;
pub use memory::MemoryCache;

use anyhow::Result;
use async_trait::async_trait;
use std::time::Duration;

#[async_trait]
pub trait Cache: Send + Sync + 'static {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()>;
    /// Sets only if absent; true when this call set it.
    async fn set_if_absent(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<bool>;
    async fn delete(&self, key: &str) -> Result<()>;
    /// Adds one to a counter, creating it with `ttl`; returns the new value.
    async fn incr(&self, key: &str, ttl: Duration) -> Result<i64>;
    /// Adds members to a set.
    async fn add_to_set(&self, key: &str, members: &[i64]) -> Result<()>;
    /// Removes and returns every member of a set.
    async fn take_set(&self, key: &str) -> Result<Vec<i64>>;
    /// Keeps a copy of a read result, if there is room.
    async fn remember(&self, key: &str, value: Vec<u8>, ttl: Duration) -> Result<()>;
    /// A remembered read result, if it is still there.
    async fn recall(&self, key: &str) -> Result<Option<Vec<u8>>>;
    async fn ping(&self) -> Result<()>;
}
