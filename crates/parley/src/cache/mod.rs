//! Port: shared, expiring key-value state: cached reads, idempotency records, rate-limit
//! counters and the count-sync "dirty" sets. Losing it costs speed or a recount, never data.

mod memory;

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
    async fn ping(&self) -> Result<()>;
}
