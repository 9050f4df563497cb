//! In-process leader lock: with one process there is one candidate, but the expiry rules are
//! the same as a shared lock's, so the scheduler behaves the same on every stack.

use super::LeaderLock;
use anyhow::Result;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct MemoryLock {
    held: Mutex<HashMap<String, (String, Instant)>>,
}

#[async_trait]
impl LeaderLock for MemoryLock {
    async fn acquire(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let mut held = self.held.lock().unwrap();
        let now = Instant::now();
        match held.get(name) {
            Some((other, until)) if other != holder && *until > now => Ok(false),
            _ => {
                held.insert(name.to_owned(), (holder.to_owned(), now + ttl));
                Ok(true)
            }
        }
    }

    async fn release(&self, name: &str, holder: &str) -> Result<()> {
        let mut held = self.held.lock().unwrap();
        if held.get(name).is_some_and(|(h, _)| h == holder) {
            held.remove(name);
        }
        Ok(())
    }
}
