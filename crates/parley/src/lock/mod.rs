//! Port: the leader lock for scheduled jobs: one holder at a time, with an expiry so a dead
//! leader's lock lapses.

mod memory;
mod redis;

pub use self::redis::RedisLock;
pub use memory::MemoryLock;

use anyhow::Result;
use async_trait::async_trait;
use std::time::Duration;

#[async_trait]
pub trait LeaderLock: Send + Sync + 'static {
    /// Takes the lock for `holder`, or extends it if `holder` has it; true when held.
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool>;
    /// Gives the lock up if `holder` has it.
    async fn release(&self, name: &str, holder: &str) -> Result<()>;
}
