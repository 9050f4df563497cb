//! In-process sequencer for the embedded stack: an atomic counter per scope, seeded from the
//! store on first use. Only correct with one process, which is why roles that scale out
//! refuse it.

use super::{Scope, Sequencer};
use crate::store::Store;
use anyhow::Result;
use async_trait::async_trait;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub struct MemorySequencer {
    store: Arc<dyn Store>,
    // Idle scopes are dropped and re-seeded from the store when next used. That is safe here
    // because the embedded bus is write-through: once a scope has been idle for minutes, every
    // number it handed out is committed (or was refused with an error and never promised).
    counters: moka::future::Cache<Scope, Arc<AtomicI64>>,
}

impl MemorySequencer {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let counters = moka::future::Cache::builder()
            .time_to_idle(Duration::from_secs(600))
            .build();
        Self { store, counters }
    }

    async fn counter(&self, scope: &Scope) -> Result<Arc<AtomicI64>> {
        // try_get_with runs one seeding query per scope even under concurrent first use.
        self.counters
            .try_get_with_by_ref(scope, async {
                let seed = self.store.highest_number(scope).await?;
                Ok::<_, anyhow::Error>(Arc::new(AtomicI64::new(seed)))
            })
            .await
            .map_err(|e| anyhow::anyhow!("seeding {}: {e}", scope.key()))
    }
}

#[async_trait]
impl Sequencer for MemorySequencer {
    async fn next(&self, scope: &Scope) -> Result<i64> {
        Ok(self.counter(scope).await?.fetch_add(1, Ordering::SeqCst) + 1)
    }

    async fn current(&self, scope: &Scope) -> Result<i64> {
        match self.counters.get(scope).await {
            Some(counter) => Ok(counter.load(Ordering::SeqCst)),
            None => self.store.highest_number(scope).await,
        }
    }
}
