//! Capped pools of named threads for CPU-heavy blocking work: password hashes and searches.
//!
//! Not the main runtime's shared blocking pool: it starts a thread whenever none is idle at the
//! instant of a spawn, so under 3,500 searches/s it held 13 threads, each keeping its
//! allocator's cache of freed memory (an argon2 hash alone frees 19 MiB). A capped set of
//! threads of its own reuses what it keeps and bounds how much work runs at once.

use anyhow::{anyhow, Result};
use std::time::Duration;

/// The cores this process may use (2 when the platform cannot tell): CPU-bound work is sized
/// by it.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
}

/// A runtime used only for its blocking pool: at most `threads` threads, kept while the pool
/// lives. (rayon's pools, tried first, spin idle workers before they sleep: search p99 went
/// from 8.8 to 11–12 ms on two cores.)
pub struct Pool {
    name: &'static str,
    threads: usize,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Pool {
    /// `per_core` threads per core, named `{name}`.
    pub fn per_core(name: &'static str, per_core: usize) -> Result<Self> {
        let threads = per_core * cores();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .max_blocking_threads(threads)
            .thread_keep_alive(Duration::from_secs(24 * 3600))
            .thread_name(name)
            .build()?;
        Ok(Self {
            name,
            threads,
            runtime: Some(runtime),
        })
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `work` on the pool, after the work queued before it. Work whose caller stopped
    /// waiting before its turn is skipped; once started, it runs to the end.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T> {
        let runtime = self.runtime.as_ref().expect("a pool runs until dropped");
        let (done, answer) = tokio::sync::oneshot::channel();
        let task = runtime.spawn_blocking(move || {
            if !done.is_closed() {
                let _ = done.send(work());
            }
        });
        match answer.await {
            Ok(result) => Ok(result),
            Err(_) => match task.await {
                Err(e) if e.is_panic() => Err(anyhow!("a task of the {} pool panicked", self.name)),
                _ => Err(anyhow!("the {} pool stopped", self.name)),
            },
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Not a plain drop: that blocks, which tokio forbids inside async code.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn work_runs_on_the_pools_own_threads_at_most_so_many_at_once() {
        let pool = Arc::new(Pool::per_core("test", 1).unwrap());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let tasks = (0..pool.threads() * 4).map(|_| {
            let (pool, running, most) = (pool.clone(), running.clone(), most.clone());
            tokio::spawn(async move {
                pool.run(move || {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    running.fetch_sub(1, Ordering::SeqCst);
                    std::thread::current().name().unwrap().to_owned()
                })
                .await
                .unwrap()
            })
        });
        for name in futures::future::join_all(tasks).await {
            assert_eq!(name.unwrap(), "test");
        }
        assert!(most.load(Ordering::SeqCst) <= pool.threads());
    }

    #[tokio::test]
    async fn a_panic_is_an_error_and_the_pool_goes_on() {
        let pool = Pool::per_core("test", 1).unwrap();
        let err = pool.run(|| panic!("boom")).await.unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }
}
