//! The scheduler role: periodic jobs that must run on one process at a time, under the leader
//! lock. Count sync is the only writer of `chats_count` / `messages_count` (invariant 5): it
//! recounts what the writer marked dirty, and everything when it becomes leader (marks are
//! lost if a process dies). The deletion executor soft-deletes accounts whose recovery window
//! has passed, at most `deletions_per_day` per day across the deployment.

use super::writer::{DIRTY_APPLICATIONS, DIRTY_CHATS};
use crate::bus::{Bus, Queue};
use crate::cache::Cache;
use crate::domain::{now_ms, EmailRequested};
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
            let ttl = (self.settings.count_sync_interval * 3).max(Duration::from_secs(5));
            match self.lock.acquire(LOCK, &self.holder, ttl).await {
                Ok(true) => {
                    if let Err(e) = self.run_once(!leader).await {
                        tracing::error!(error = %format!("{e:#}"), "scheduled jobs failed; next tick retries");
                    } else {
                        leader = true;
                    }
                }
                Ok(false) => leader = false,
                Err(e) => {
                    leader = false;
                    tracing::warn!(error = %e, "leader lock unavailable");
                }
            }
        }
        let _ = self.lock.release(LOCK, &self.holder).await;
        tracing::info!("scheduler stopped");
        Ok(())
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

    async fn execute_deletions(&self) -> Result<()> {
        let now = now_ms();
        let due = self
            .store
            .due_deletions(now, self.settings.deletions_per_day as u32)
            .await?;
        for deletion in due {
            let day = chrono::Utc::now().format("%Y-%m-%d");
            let counter = format!("global:deletion:count:{day}");
            if self
                .cache
                .incr(&counter, Duration::from_secs(48 * 3600))
                .await?
                > self.settings.deletions_per_day
            {
                tracing::info!("daily deletion limit reached; the rest wait for tomorrow");
                break;
            }
            let user = self.store.user_by_id(deletion.user_id).await?;
            self.store.execute_deletion(&deletion, now).await?;
            self.store
                .log_action(deletion.user_id, "account_deleted", "", now)
                .await?;
            if let Some(user) = user {
                let mut context = serde_json::Map::new();
                context.insert("name".into(), user.name.into());
                let mail = EmailRequested {
                    recipient: user.email,
                    subject: String::new(),
                    body: String::new(),
                    template_name: Some("account_deleted".into()),
                    context,
                };
                if let Err(e) = self
                    .bus
                    .publish(Queue::EmailSend, serde_json::to_vec(&mail)?)
                    .await
                {
                    tracing::error!(error = %e, "could not queue the account-deleted e-mail");
                }
            }
        }
        Ok(())
    }
}
