//! The scheduler role: periodic jobs that must run on one process at a time, under the leader
//! lock. Count sync is the only writer of `chats_count` / `messages_count` (invariant 5): it
//! recounts what the writer marked dirty, and everything when it becomes leader (marks are
//! lost if a process dies). The deletion executor soft-deletes accounts whose recovery window
//! has passed, at most `deletions_per_day` per day across the deployment.

use super::writer::{DIRTY_APPLICATIONS, DIRTY_CHATS};
use crate::bus::Bus;
use crate::cache::Cache;
use crate::domain::{now_ms, queue_email};
use crate::lock::LeaderLock;
use crate::store::Store;
use anyhow::Result;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const LOCK: &str = "parley:scheduler";

#[derive(Debug, Clone)]
pub struct SchedulerSettings {
    pub count_sync_interval: Duration,
    pub deletions_per_day: i64,
}

pub struct Scheduler {
    store: Arc<dyn Store>,
    cache: Arc<dyn Cache>,
    lock: Arc<dyn LeaderLock>,
    bus: Arc<dyn Bus>,
    settings: SchedulerSettings,
    holder: String,
}

impl Scheduler {
    pub fn new(
        store: Arc<dyn Store>,
        cache: Arc<dyn Cache>,
        lock: Arc<dyn LeaderLock>,
        bus: Arc<dyn Bus>,
        settings: SchedulerSettings,
    ) -> Self {
        Self {
            store,
            cache,
            lock,
            bus,
            settings,
            holder: uuid::Uuid::new_v4().to_string(),
        }
    }

    pub async fn run(self, shutdown: CancellationToken) -> Result<()> {
        let mut ticks = tokio::time::interval(self.settings.count_sync_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leader = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = ticks.tick() => {}
            }
            let became_leader = match self.lead().await {
                Ok(true) => !std::mem::replace(&mut leader, true),
                Ok(false) => {
                    leader = false;
                    continue;
                }
                Err(e) => {
                    leader = false;
                    tracing::warn!(error = %e, "leader lock unavailable");
                    continue;
                }
            };
            // Each job on its own: one failing never holds the other back.
            if let Err(e) = self.sync_counts(became_leader).await {
                tracing::error!(error = %format!("{e:#}"), "count sync failed; the next tick retries");
                if became_leader {
                    leader = false; // the full pass is still owed
                }
            }
            // Renewed before each job, so a long job cannot outlive the lock unnoticed.
            match self.lead().await {
                Ok(true) => {
                    if let Err(e) = self.execute_deletions().await {
                        tracing::error!(error = %format!("{e:#}"), "deletion executor failed; the next tick retries");
                    }
                }
                _ => leader = false,
            }
        }
        let _ = self.lock.release(LOCK, &self.holder).await;
        tracing::info!("scheduler stopped");
        Ok(())
    }

    async fn lead(&self) -> Result<bool> {
        let ttl = (self.settings.count_sync_interval * 3).max(Duration::from_secs(5));
        self.lock.acquire(LOCK, &self.holder, ttl).await
    }

    /// One round of every job; `full` recounts everything instead of what is dirty.
    pub async fn run_once(&self, full: bool) -> Result<()> {
        self.sync_counts(full).await?;
        self.execute_deletions().await
    }

    async fn sync_counts(&self, full: bool) -> Result<()> {
        if full {
            // Marks taken before the full pass are covered by it.
            self.cache.take_set(DIRTY_APPLICATIONS).await?;
            self.cache.take_set(DIRTY_CHATS).await?;
            let apps = self.store.sync_chats_count(None).await?;
            let chats = self.store.sync_messages_count(None).await?;
            tracing::info!(apps, chats, "full count sync");
            return Ok(());
        }
        let apps = self.cache.take_set(DIRTY_APPLICATIONS).await?;
        if let Err(e) = self.store.sync_chats_count(Some(&apps)).await {
            self.cache.add_to_set(DIRTY_APPLICATIONS, &apps).await?;
            return Err(e);
        }
        let chats = self.cache.take_set(DIRTY_CHATS).await?;
        if let Err(e) = self.store.sync_messages_count(Some(&chats)).await {
            self.cache.add_to_set(DIRTY_CHATS, &chats).await?;
            return Err(e);
        }
        Ok(())
    }

    /// Deletes the accounts whose recovery window has passed, oldest first, at most
    /// `deletions_per_day` a day; a deletion that fails is skipped until the next tick.
    async fn execute_deletions(&self) -> Result<()> {
        let limit = self.settings.deletions_per_day;
        let day = chrono::Utc::now().format("%Y-%m-%d");
        let counter = format!("global:deletion:count:{day}");
        let done_today = match self.cache.get(&counter).await? {
            Some(v) => String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(0),
            None => 0,
        };
        if done_today >= limit {
            return Ok(());
        }
        let now = now_ms();
        let due = self
            .store
            .due_deletions(now, (limit - done_today) as u32)
            .await?;
        for deletion in due {
            let user = self.store.user_by_id(deletion.user_id).await?;
            match self.store.execute_deletion(&deletion, now).await {
                Ok(true) => {}
                // Recovered in the meantime.
                Ok(false) => continue,
                Err(e) => {
                    tracing::error!(deletion = deletion.id, error = %format!("{e:#}"), "an account deletion failed");
                    continue;
                }
            }
            self.cache
                .incr(&counter, Duration::from_secs(48 * 3600))
                .await?;
            self.store
                .log_action(deletion.user_id, "account_deleted", "", now)
                .await?;
            if let Some(user) = user {
                let mut context = serde_json::Map::new();
                context.insert("name".into(), user.name.into());
                queue_email(&self.bus, &user.email, "account_deleted", context);
            }
        }
        Ok(())
    }
}
