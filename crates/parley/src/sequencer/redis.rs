//! Redis sequencer, shared by every api process: numbers come from Redis under the seeds' key
//! shapes (`<token>` for an application's chats, `<token>:<chat>` for a chat's messages), with
//! the namespace in front when one is set.
//!
//! # Numbers after Redis loses them
//!
//! Invariant 1 holds even when Redis loses its data (restart, `FLUSHALL`, eviction, a restart
//! from an older snapshot, a failover to a replica that lagged): the next number is above every
//! number ever handed out, including numbers whose items are still on the bus, and numbers
//! keep increasing, however many processes race. The SQL store is the fence:
//!
//! - `Store::claim_numbers` claims a scope's next block of numbers `(end - block, end]` in one
//!   SQL transaction (`number_claims`); the first claim starts at the highest persisted number.
//!   Redis hands out numbers only from claimed blocks, so the last claim is above every number
//!   handed out, persisted or in flight.
//! - Per scope, Redis holds the counter `<key>`, the end of its block and the Redis run that
//!   installed it `<key>:claimed` (`"<end>:<run_id>"`), and while a block is being claimed a
//!   short lease `<key>:claiming`.
//! - `next` is one script: if the counter is below the block's end and the block was installed
//!   by the running Redis (`INFO server` `run_id`), `INCR`. Otherwise the caller needs a block:
//!   it takes the lease (`SET NX PX`), or, if another process holds it, waits a few
//!   milliseconds and asks again. The lease holder claims a block in SQL, then a second script
//!   installs it — counter = start, claimed = end — only if the holder still has the lease,
//!   and never over a later block of the same run (a gap, never a reuse). Then `next` again,
//!   in a loop bounded in time.
//! - Why the lease: claims and installs happen one at a time per scope, so blocks are
//!   installed in claim order and follow each other: numbers stay contiguous with many
//!   processes (racing claimants would install blocks out of order and skip the earlier ones).
//!   And a claim that was in flight when Redis lost its data is never installed afterwards
//!   (its lease went with the data), so the first block after a loss is claimed after it,
//!   above every number handed out before it.
//! - Why the run id: a Redis that restarts from a snapshot or an append-only file that missed
//!   the last writes, or a replica promoted before it caught up, brings back a counter below
//!   numbers already handed out. Its blocks carry another run id, so the next call re-seeds
//!   from SQL instead of counting on from there.
//! - Within one process, one task per scope claims while the others wait for it (a gate), so
//!   a burst on an exhausted block costs one claim, not one per task. The turn runs on a task
//!   of its own, so a cancelled request cannot leave the lease to lapse behind it.
//! - Concurrent `next` calls of one process share script calls (`grouping`): while a few
//!   calls are out, the numbers asked for meanwhile, of any scopes, go in the next one, which
//!   grants each scope as many numbers from its block as it was asked (`GRANT`). Idle, a
//!   number costs one call as before; under load, one call (and one `INFO`) serves many.
//!   A number the block cannot cover takes the one-at-a-time path above.
//!
//! Cost: one SQL claim (a one-row upsert) per `block` numbers per scope, and one more per scope
//! after Redis lost its data; each loss skips the unused rest of the scope's block (a gap).
//! Every script call runs `INFO server`: about 5 µs of Redis CPU more than a bare `INCR`
//! (measured with redis-benchmark on Redis 7.0: ~100k vs ~200k calls/s pipelined), paid once
//! per group of numbers.
//! Edit versions are a scope per edited message, so a message's first edit claims a block too.
//!
//! `current` is the counter, or when Redis has none the highest persisted number (a lower
//! bound: the api uses it to tell "handed out" from "unknown"). After a loss the counter
//! restarts at a block's start, so numbers of the skipped gap count as handed out.
//!
//! Redis configuration: `maxmemory-policy noeviction` (eviction is safe — an evicted scope is
//! re-seeded — but each eviction costs a claim and a gap; remembered reads are the cache's to
//! drop, not these keys). Any persistence setting is safe; none is needed. A cluster is not
//! supported: a scope's three keys must live on one server.

use super::{Scope, Sequencer};
use crate::cache::redis::{key_prefix, millis};
use crate::grouping;
use crate::store::Store;
use ::redis::aio::ConnectionManager;
use ::redis::Script;
use anyhow::{Context, Result};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// KEYS: counter, claimed, claiming. ARGV: lease token, lease in ms. Returns the number
/// (> 0); -1: a block is needed and the caller now holds the lease, so it claims; -2: another
/// caller holds it.
const NEXT: &str = r"
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local counter = redis.call('GET', KEYS[1])
local claimed = redis.call('GET', KEYS[2])
if counter and claimed then
  local e, r = string.match(claimed, '^(%d+):(%x+)$')
  if r == run and tonumber(counter) and tonumber(counter) < tonumber(e) then
    return redis.call('INCR', KEYS[1])
  end
end
if redis.call('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
return -2
";

/// KEYS: counter and claimed of each scope, in pairs. ARGV: how many numbers each scope
/// wants. Returns, per scope, the last number granted and how many were granted: as many as
/// asked, fewer when the block ends first, 0 when the scope has no block of the running
/// Redis (it needs a claim: `NEXT` with a lease token).
const GRANT: &str = r"
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local out = {}
for i = 1, #ARGV do
  local last, granted = 0, 0
  local counter = tonumber(redis.call('GET', KEYS[2 * i - 1]))
  local claimed = redis.call('GET', KEYS[2 * i])
  if counter and claimed then
    local e, r = string.match(claimed, '^(%d+):(%x+)$')
    if r == run and counter < tonumber(e) then
      granted = math.min(tonumber(ARGV[i]), tonumber(e) - counter)
      last = redis.call('INCRBY', KEYS[2 * i - 1], granted)
    end
  end
  out[2 * i - 1] = last
  out[2 * i] = granted
end
return out
";

/// Script calls of `GRANT` out at once (beside one another only when full), and the most
/// numbers one call asks for.
const GRANT_LIMITS: grouping::Limits = grouping::Limits {
    in_flight: 4,
    max_items: 512,
    max_weight: 512,
};

/// KEYS: counter, claimed, claiming. ARGV: start, end, lease token. Installs the block
/// `(start, end]` if the caller still holds the lease; returns 1 if installed, else 0.
/// Under the lease, a block of this run already installed ends at or below `start`: at it,
/// the new block follows on (the counter, exhausted, is already at `start`); below it, the
/// numbers between are skipped. A block of another run, or none, is replaced.
const INSTALL: &str = r"
if redis.call('GET', KEYS[3]) ~= ARGV[3] then return 0 end
redis.call('DEL', KEYS[3])
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
local claimed = redis.call('GET', KEYS[2])
if claimed then
  local e, r = string.match(claimed, '^(%d+):(%x+)$')
  if r == run and tonumber(e) > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[2], ARGV[2] .. ':' .. run)
return 1
";

/// KEYS: claiming. ARGV: lease token. Gives the lease up if the caller holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// How long a claimant may hold a scope's lease: one SQL claim takes milliseconds; if a
/// claimant dies, the scope waits this long before another claims.
const LEASE: Duration = Duration::from_secs(5);
/// How long `next` waits for a block before it reports the sequencer unavailable.
const GIVE_UP_AFTER: Duration = Duration::from_secs(10);
/// The longest pause between two looks while another process claims.
const MAX_PAUSE: Duration = Duration::from_millis(20);

pub struct RedisSequencer {
    claimer: Arc<Claimer>,
    prefix: String,
    /// One claimant per scope in this process (the others wait for its block).
    gates: moka::future::Cache<String, Arc<Gate>>,
    /// Numbers asked for, granted in groups by a background task (`grant_in_groups`).
    wanted: mpsc::UnboundedSender<Wanted>,
}

/// What takes a scope's lease and claims and installs its next block. Shared with the task
/// each turn runs on (`RedisSequencer::take_turn`).
struct Claimer {
    conn: ConnectionManager,
    store: Arc<dyn Store>,
    block: i64,
    next: Script,
    install: Script,
    release: Script,
}

/// Where the tasks of this process that need a scope's next block take turns.
#[derive(Default)]
struct Gate {
    turn: tokio::sync::Mutex<()>,
    /// Blocks claimed through this gate: a task that sees it move while it waited for its
    /// turn knows a block was just installed.
    claims: AtomicU64,
}

/// One number asked for by a `next` call, waiting for its group's `GRANT`.
struct Wanted {
    counter: String,
    claimed: String,
    /// The number, or `None` when the scope's block cannot cover it.
    answer: oneshot::Sender<Result<Option<i64>, String>>,
}

#[derive(Clone)]
struct Keys {
    counter: String,
    claimed: String,
    claiming: String,
}

enum Step {
    Number(i64),
    Claim,
    Wait,
}

impl RedisSequencer {
    /// `block`: how many numbers one SQL claim covers (per scope).
    pub fn new(
        conn: ConnectionManager,
        namespace: &str,
        store: Arc<dyn Store>,
        block: i64,
    ) -> Self {
        assert!(block > 0, "a block holds at least one number");
        let (wanted, requests) = mpsc::unbounded_channel();
        tokio::spawn(grant_in_groups(conn.clone(), requests));
        Self {
            claimer: Arc::new(Claimer {
                conn,
                store,
                block,
                next: Script::new(NEXT),
                install: Script::new(INSTALL),
                release: Script::new(RELEASE),
            }),
            prefix: key_prefix(namespace),
            gates: moka::future::Cache::builder()
                .time_to_idle(Duration::from_secs(60))
                .build(),
            wanted,
        }
    }

    /// A number from the scope's block, asked for together with the other calls of the
    /// moment; `None` when the block cannot cover it.
    async fn granted(&self, keys: &Keys) -> Result<Option<i64>> {
        let (answer, answered) = oneshot::channel();
        let wanted = Wanted {
            counter: keys.counter.clone(),
            claimed: keys.claimed.clone(),
            answer,
        };
        self.wanted
            .send(wanted)
            .map_err(|_| anyhow::anyhow!("the number granter stopped"))?;
        answered
            .await
            .map_err(|_| anyhow::anyhow!("the number granter stopped"))?
            .map_err(|e| anyhow::anyhow!(e).context(format!("next number of {}", keys.counter)))
    }

    fn keys(&self, scope: &Scope) -> Keys {
        let counter = format!("{}{}", self.prefix, scope.key());
        Keys {
            claimed: format!("{counter}:claimed"),
            claiming: format!("{counter}:claiming"),
            counter,
        }
    }

    /// One turn at the scope's gate, on a task of its own: a caller that goes away (its
    /// request was cancelled) must not stop a turn between taking the lease and installing
    /// the block, or every caller of the scope would wait for the lease to lapse (`LEASE`,
    /// seen as 2.5–5 s stalls of all 64 connections when wrk dropped its connections) and
    /// a block claimed in SQL would be skipped.
    async fn take_turn(&self, scope: &Scope, keys: &Keys, gate: &Arc<Gate>) -> Result<Step> {
        let (claimer, scope, keys, gate) = (
            self.claimer.clone(),
            scope.clone(),
            keys.clone(),
            gate.clone(),
        );
        tokio::spawn(async move {
            let token = uuid::Uuid::new_v4().simple().to_string();
            let step = claimer.step(&keys, &token).await?;
            match step {
                // A block is in place (another process installed it): the tasks waiting
                // for their turn go back to the grouped grants.
                Step::Number(_) => {
                    gate.claims.fetch_add(1, Ordering::Release);
                }
                Step::Claim => {
                    claimer.claim(&scope, &keys, &token).await?;
                    gate.claims.fetch_add(1, Ordering::Release);
                }
                Step::Wait => {}
            }
            Ok(step)
        })
        .await
        .context("a turn at the number gate failed")?
    }
}

impl Claimer {
    async fn step(&self, keys: &Keys, token: &str) -> Result<Step> {
        let answer: i64 = self
            .next
            .key(&keys.counter)
            .key(&keys.claimed)
            .key(&keys.claiming)
            .arg(token)
            .arg(millis(LEASE))
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("next number of {}", keys.counter))?;
        Ok(match answer {
            n if n > 0 => Step::Number(n),
            -1 => Step::Claim,
            _ => Step::Wait,
        })
    }

    /// Claims the scope's next block in SQL and installs it; the caller holds the lease.
    async fn claim(&self, scope: &Scope, keys: &Keys, token: &str) -> Result<()> {
        let claimed = match self.store.claim_numbers(scope, self.block).await {
            Ok(end) => {
                metrics::counter!("parley_sequencer_blocks_claimed_total").increment(1);
                self.install(keys, end, token)
                    .await
                    .map(|installed| (end, installed))
            }
            Err(e) => Err(e.context(format!("claiming numbers of {}", keys.counter))),
        };
        match claimed {
            Ok((_, true)) => Ok(()),
            Ok((end, false)) => {
                // The lease lapsed or Redis lost it meanwhile: the block is skipped, never reused.
                tracing::warn!(scope = %keys.counter, end, "a claimed block was not installed; its numbers are skipped");
                Ok(())
            }
            Err(e) => {
                // Let the next claimant in now rather than when the lease lapses.
                let _ = self
                    .release
                    .key(&keys.claiming)
                    .arg(token)
                    .invoke_async::<i64>(&mut self.conn.clone())
                    .await;
                Err(e)
            }
        }
    }

    /// Installs the claimed block ending at `end`; false if the lease is no longer ours.
    async fn install(&self, keys: &Keys, end: i64, token: &str) -> Result<bool> {
        let installed: i64 = self
            .install
            .key(&keys.counter)
            .key(&keys.claimed)
            .key(&keys.claiming)
            .arg(end - self.block)
            .arg(end)
            .arg(token)
            .invoke_async(&mut self.conn.clone())
            .await
            .with_context(|| format!("installing numbers of {}", keys.counter))?;
        Ok(installed == 1)
    }
}

#[async_trait]
impl Sequencer for RedisSequencer {
    async fn next(&self, scope: &Scope) -> Result<i64> {
        let keys = self.keys(scope);
        let deadline = Instant::now() + GIVE_UP_AFTER;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(n) = self.granted(&keys).await? {
                return Ok(n);
            }
            // The block is used up or missing: one task of this process at a time goes on;
            // those that waited while it claimed a block go back to the grouped grants.
            let gate = self
                .gates
                .get_with_by_ref(&keys.counter, async { Arc::default() })
                .await;
            let claims = gate.claims.load(Ordering::Acquire);
            let _turn = gate.turn.lock().await;
            if gate.claims.load(Ordering::Acquire) == claims {
                match self.take_turn(scope, &keys, &gate).await? {
                    Step::Number(n) => return Ok(n),
                    Step::Claim => {}
                    // Another process claims: one task of this process at a time polls.
                    Step::Wait => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                    }
                }
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "no block of numbers for {} within {GIVE_UP_AFTER:?}",
                    keys.counter
                );
            }
        }
    }

    async fn current(&self, scope: &Scope) -> Result<i64> {
        let counter: Option<i64> = ::redis::cmd("GET")
            .arg(self.keys(scope).counter)
            .query_async(&mut self.claimer.conn.clone())
            .await?;
        match counter {
            Some(n) => Ok(n),
            None => self.claimer.store.highest_number(scope).await,
        }
    }
}

/// Grants the numbers asked for, in groups, until the sequencer is dropped.
async fn grant_in_groups(conn: ConnectionManager, requests: mpsc::UnboundedReceiver<Wanted>) {
    let script = Arc::new(Script::new(GRANT));
    grouping::drive(
        requests,
        GRANT_LIMITS,
        |_| 1,
        |group| Some(grant(conn.clone(), script.clone(), group)),
    )
    .await;
}

/// One `GRANT` call for a group: each scope once, asked for as many numbers as the group has
/// calls for it; the granted numbers go to those calls in the order they asked.
async fn grant(mut conn: ConnectionManager, script: Arc<Script>, group: Vec<Wanted>) {
    let mut scopes: Vec<(String, String, Vec<oneshot::Sender<_>>)> = Vec::new();
    let mut index = HashMap::new();
    // A caller that went away (its request was cancelled) is not given a number.
    for wanted in group.into_iter().filter(|w| !w.answer.is_closed()) {
        let at = *index.entry(wanted.counter.clone()).or_insert_with(|| {
            scopes.push((wanted.counter, wanted.claimed, Vec::new()));
            scopes.len() - 1
        });
        scopes[at].2.push(wanted.answer);
    }
    if scopes.is_empty() {
        return;
    }
    // One failure (Redis down, a timeout) fails every call of the group, as it would have
    // failed each of them alone.
    let mut call = script.prepare_invoke();
    for (counter, claimed, calls) in &scopes {
        call.key(counter).key(claimed).arg(calls.len());
    }
    let answer: Result<Vec<i64>, String> = match call.invoke_async::<Vec<i64>>(&mut conn).await {
        Ok(answer) if answer.len() == 2 * scopes.len() => Ok(answer),
        Ok(answer) => Err(format!(
            "an answer of {} values to {} scopes",
            answer.len(),
            scopes.len()
        )),
        Err(e) => Err(e.to_string()),
    };
    for (at, (_, _, calls)) in scopes.into_iter().enumerate() {
        let granted = match &answer {
            Ok(a) => Ok((a[2 * at], a[2 * at + 1])),
            Err(e) => Err(e.clone()),
        };
        for (i, call) in (0..).zip(calls) {
            // A caller that went away leaves its number unused: a gap, never a reuse.
            let _ = call.send(
                granted
                    .clone()
                    .map(|(last, granted)| (i < granted).then(|| last - granted + 1 + i)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::redis::connect;
    use crate::domain::AppToken;
    use crate::store::NewChat;
    use crate::testing::{namespace, Engine, PrivateRedis};
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};

    async fn store(dir: &tempfile::TempDir) -> Arc<dyn Store> {
        Arc::new(crate::store::suite::sqlite_store(dir.path()).await)
    }

    async fn sequencer(url: &str, ns: &str, store: &Arc<dyn Store>, block: i64) -> RedisSequencer {
        RedisSequencer::new(connect(url).await.unwrap(), ns, store.clone(), block)
    }

    fn chats() -> Scope {
        Scope::Chats(AppToken::generate())
    }

    async fn flushall(url: &str) {
        let mut conn = connect(url).await.unwrap();
        ::redis::cmd("FLUSHALL")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
    }

    /// `calls` calls of `next` spread over `tasks` tasks; every task's numbers in call order.
    async fn hand_out(
        sequencers: &[Arc<RedisSequencer>],
        scope: &Scope,
        tasks: usize,
        calls: usize,
    ) -> Vec<Vec<i64>> {
        let started = Arc::new(AtomicUsize::new(0));
        let handles: Vec<_> = (0..tasks)
            .map(|t| {
                let sequencer = sequencers[t % sequencers.len()].clone();
                let (scope, started) = (scope.clone(), started.clone());
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    while started.fetch_add(1, Ordering::SeqCst) < calls {
                        got.push(sequencer.next(&scope).await.unwrap());
                    }
                    got
                })
            })
            .collect();
        futures::future::try_join_all(handles).await.unwrap()
    }

    fn assert_increasing(per_task: &[Vec<i64>]) {
        for numbers in per_task {
            assert!(
                numbers.windows(2).all(|w| w[0] < w[1]),
                "a task's numbers went back: {numbers:?}"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_get_exactly_one_to_n() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let sequencer = Arc::new(sequencer(&url, &namespace(), &store, 10).await);
        let scope = chats();

        let per_task = hand_out(std::slice::from_ref(&sequencer), &scope, 32, 2000).await;
        assert_increasing(&per_task);
        let mut all: Vec<i64> = per_task.concat();
        all.sort_unstable();
        assert_eq!(all, (1..=2000).collect::<Vec<_>>());
        assert_eq!(sequencer.current(&scope).await.unwrap(), 2000);
        // Exactly 200 blocks were claimed: none was wasted by racing claimants.
        assert_eq!(store.claim_numbers(&scope, 10).await.unwrap(), 2010);
    }

    /// A call that goes away while it claims a block (its request was cancelled) does not
    /// strand the scope: its turn runs to the end, so the next call is answered at once, not
    /// once the stranded lease lapses, and the numbers stay contiguous. MariaDB, because a
    /// row lock held here can keep the claim waiting inside the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_cancelled_while_claiming_leaves_no_lease_behind() {
        let (Some(url), Some(server)) = (Engine::Redis.url(), Engine::MariaDb.url()) else {
            return;
        };
        let mysql = Arc::new(crate::store::suite::mysql_store(&server).await);
        let store: Arc<dyn Store> = mysql.clone();
        let sequencer = Arc::new(sequencer(&url, &namespace(), &store, 10).await);
        let scope = chats();

        // The scope's claim row, locked here until the first call has been cancelled.
        sqlx::query("INSERT INTO number_claims (scope, claimed, updated_at) VALUES (?, 0, 0)")
            .bind(scope.key())
            .execute(mysql.pool())
            .await
            .unwrap();
        let mut lock = mysql.pool().begin().await.unwrap();
        sqlx::query("SELECT claimed FROM number_claims WHERE scope = ? FOR UPDATE")
            .bind(scope.key())
            .execute(&mut *lock)
            .await
            .unwrap();
        let first = tokio::spawn({
            let (sequencer, scope) = (sequencer.clone(), scope.clone());
            async move { sequencer.next(&scope).await }
        });
        let lease = sequencer.keys(&scope).claiming;
        let mut redis = connect(&url).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !::redis::cmd("EXISTS")
            .arg(&lease)
            .query_async::<bool>(&mut redis)
            .await
            .unwrap()
        {
            assert!(
                Instant::now() < deadline,
                "the first call never took the lease"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        first.abort();
        assert!(first.await.unwrap_err().is_cancelled());
        lock.commit().await.unwrap();

        let next = tokio::time::timeout(LEASE / 2, sequencer.next(&scope))
            .await
            .expect("the next call waited for the cancelled call's lease to lapse");
        assert_eq!(next.unwrap(), 1);
        assert_eq!(sequencer.next(&scope).await.unwrap(), 2);
        crate::store::suite::drop_mysql_database(&mysql).await;
    }

    /// Script calls (EVAL and EVALSHA) a Redis has run so far.
    async fn script_calls(url: &str) -> u64 {
        let mut conn = connect(url).await.unwrap();
        let stats: String = ::redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .unwrap();
        stats
            .lines()
            .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
            .filter_map(|l| {
                l.split("calls=")
                    .nth(1)?
                    .split(',')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_calls_of_many_scopes_share_script_calls() {
        let Some(redis) = PrivateRedis::start().unwrap() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let sequencer = Arc::new(sequencer(&redis.url, "", &store, 1000).await);
        let scopes: Vec<Scope> = (0..8).map(|_| chats()).collect();
        // Each scope's first block, so that what follows is the grouped path alone.
        for scope in &scopes {
            assert_eq!(sequencer.next(scope).await.unwrap(), 1);
        }
        let before = script_calls(&redis.url).await;

        let calls = scopes.iter().flat_map(|scope| {
            (0..200).map(|_| {
                let (sequencer, scope) = (sequencer.clone(), scope.clone());
                tokio::spawn(async move { (scope.key(), sequencer.next(&scope).await.unwrap()) })
            })
        });
        let got = futures::future::try_join_all(calls).await.unwrap();
        for scope in &scopes {
            let mut numbers: Vec<i64> = got
                .iter()
                .filter(|(key, _)| *key == scope.key())
                .map(|(_, n)| *n)
                .collect();
            numbers.sort_unstable();
            assert_eq!(numbers, (2..=201).collect::<Vec<_>>(), "{}", scope.key());
        }
        let used = script_calls(&redis.url).await - before;
        assert!(
            used <= 1600 / 4,
            "1,600 numbers took {used} script calls: they were not grouped"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_second_process_shares_the_sequence() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let ns = namespace();
        // Two "processes": own connections and gates, one database.
        let store = store(&dir).await;
        let a = Arc::new(sequencer(&url, &ns, &store, 7).await);
        let b = Arc::new(sequencer(&url, &ns, &store, 7).await);
        let scope = Scope::Messages(AppToken::generate(), 3);

        assert_eq!(a.next(&scope).await.unwrap(), 1);
        assert_eq!(b.next(&scope).await.unwrap(), 2);
        assert_eq!(a.next(&scope).await.unwrap(), 3);
        assert_eq!(b.current(&scope).await.unwrap(), 3);

        let per_task = hand_out(&[a.clone(), b.clone()], &scope, 16, 997).await;
        assert_increasing(&per_task);
        let mut all = per_task.concat();
        all.sort_unstable();
        assert_eq!(
            all,
            (4..=1000).collect::<Vec<_>>(),
            "contiguous across processes"
        );
    }

    #[tokio::test]
    async fn the_first_block_starts_above_the_highest_persisted_number() {
        let Some(url) = Engine::Redis.url() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let user = store
            .insert_user("u", "u@example.com", "x", 0)
            .await
            .unwrap()
            .unwrap();
        let token = AppToken::generate();
        let app = store
            .insert_application(&token, "app", user.id, 0)
            .await
            .unwrap();
        let chat = |number| NewChat {
            application_id: app.id,
            number,
            creator_id: user.id,
            created_at: 0,
        };
        store.insert_chats(&[chat(1), chat(7)]).await.unwrap();
        let ns = namespace();
        let sequencer = sequencer(&url, &ns, &store, 10).await;
        let scope = Scope::Chats(token.clone());

        assert_eq!(
            sequencer.current(&scope).await.unwrap(),
            7,
            "from the store"
        );
        assert_eq!(sequencer.next(&scope).await.unwrap(), 8);
        assert_eq!(sequencer.current(&scope).await.unwrap(), 8, "from Redis");
        // The seeds' key shape, under the namespace.
        let mut conn = connect(&url).await.unwrap();
        let raw: Option<i64> = ::redis::cmd("GET")
            .arg(format!("{ns}:{token}"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(raw, Some(8));
        assert_eq!(
            Scope::Messages(token.clone(), 2).key(),
            format!("{token}:2")
        );
    }

    #[tokio::test]
    async fn after_a_flush_numbers_continue_above_every_number_handed_out() {
        let Some(redis) = PrivateRedis::start().unwrap() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let sequencer = sequencer(&redis.url, "", &store, 10).await;
        let scope = chats();
        for want in 1..=25 {
            assert_eq!(sequencer.next(&scope).await.unwrap(), want);
        }
        // Nothing was persisted: 1..25 are all "in flight".
        flushall(&redis.url).await;
        assert_eq!(sequencer.current(&scope).await.unwrap(), 0, "a lower bound");
        let next = sequencer.next(&scope).await.unwrap();
        assert!(next > 25, "reused or went back: {next}");
        // The gap is the unused rest of the last claimed block (26..30).
        assert_eq!(next, 31);
        assert_eq!(sequencer.next(&scope).await.unwrap(), 32);
    }

    #[tokio::test]
    async fn a_restart_from_an_older_snapshot_never_reuses_a_number() {
        let dir = tempfile::tempdir().unwrap();
        let redis_dir = dir.path().join("redis");
        std::fs::create_dir(&redis_dir).unwrap();
        let Some(mut redis) =
            PrivateRedis::start_with(&["--dir", redis_dir.to_str().unwrap()]).unwrap()
        else {
            return;
        };
        let store = store(&dir).await;
        let sequencer = sequencer(&redis.url, "", &store, 100).await;
        let scope = chats();
        for want in 1..=5 {
            assert_eq!(sequencer.next(&scope).await.unwrap(), want);
        }
        let mut conn = connect(&redis.url).await.unwrap();
        ::redis::cmd("SAVE")
            .query_async::<()>(&mut conn)
            .await
            .unwrap();
        for want in 6..=25 {
            assert_eq!(sequencer.next(&scope).await.unwrap(), want);
        }
        // Killed and restarted: Redis comes back with the snapshot's counter, 5.
        redis.restart().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let restored: Option<i64> = loop {
            // The first commands may fail while the connection is re-established.
            match ::redis::cmd("GET")
                .arg(scope.key())
                .query_async(&mut conn)
                .await
            {
                Ok(n) => break n,
                Err(e) => assert!(Instant::now() < deadline, "no reconnect: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(restored, Some(5), "the snapshot's counter is back");
        let next = loop {
            match sequencer.next(&scope).await {
                Ok(n) => break n,
                Err(e) => assert!(Instant::now() < deadline, "no reconnect: {e:#}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(next > 25, "reused {next}");
        assert_eq!(next, 101, "re-seeded from the last claim");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn flushes_while_numbers_are_handed_out_never_reuse_nor_go_back() {
        let Some(redis) = PrivateRedis::start().unwrap() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let processes = [
            Arc::new(sequencer(&redis.url, "", &store, 10).await),
            Arc::new(sequencer(&redis.url, "", &store, 10).await),
        ];
        let scope = chats();
        // Flush k ends when `flushes` becomes k; a call that starts after it must get a number
        // above `before[k]`, the highest number of any call that had returned before it began.
        let flushes = Arc::new(AtomicUsize::new(0));
        let highest = Arc::new(AtomicI64::new(0));
        let calls = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (sequencer, scope) = (processes[t % 2].clone(), scope.clone());
                let (flushes, highest, stop) = (flushes.clone(), highest.clone(), stop.clone());
                let calls = calls.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let after = flushes.load(Ordering::SeqCst);
                        let n = sequencer.next(&scope).await.unwrap();
                        highest.fetch_max(n, Ordering::SeqCst);
                        calls.fetch_add(1, Ordering::SeqCst);
                        got.push((after, n));
                    }
                    got
                })
            })
            .collect();
        let mut before = vec![0];
        for k in 1..=25 {
            // Let numbers flow between flushes: wait for a few more of them.
            let deadline = Instant::now() + Duration::from_secs(10);
            let seen = calls.load(Ordering::SeqCst);
            while calls.load(Ordering::SeqCst) < seen + 15 {
                assert!(Instant::now() < deadline, "numbers stopped flowing");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            before.push(highest.load(Ordering::SeqCst));
            flushall(&redis.url).await;
            flushes.store(k, Ordering::SeqCst);
        }
        stop.store(true, Ordering::SeqCst);
        let per_task: Vec<Vec<(usize, i64)>> = futures::future::try_join_all(tasks).await.unwrap();

        let mut seen = HashSet::new();
        for numbers in &per_task {
            assert!(
                numbers.windows(2).all(|w| w[0].1 < w[1].1),
                "went back: {numbers:?}"
            );
            for &(after, n) in numbers {
                assert!(seen.insert(n), "{n} handed out twice");
                assert!(
                    n > before[after],
                    "{n} after flush {after}, but {} was handed out before it",
                    before[after]
                );
            }
        }
        assert!(seen.len() >= 25 * 15);
    }

    #[tokio::test]
    async fn a_claim_in_flight_when_redis_lost_its_data_is_never_installed() {
        let Some(redis) = PrivateRedis::start().unwrap() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let a = sequencer(&redis.url, "", &store, 10).await;
        let b = sequencer(&redis.url, "", &store, 10).await;
        let scope = chats();
        let keys = a.keys(&scope);

        // "a" takes the lease and claims (0, 10] in SQL, then stalls before installing it.
        assert!(matches!(
            a.claimer.step(&keys, "stalled").await.unwrap(),
            Step::Claim
        ));
        let stale_end = store.claim_numbers(&scope, 10).await.unwrap();
        assert_eq!(stale_end, 10);
        // Redis loses everything; "b" claims (10, 20] and hands out numbers; Redis loses
        // everything again.
        flushall(&redis.url).await;
        for want in 11..=13 {
            assert_eq!(b.next(&scope).await.unwrap(), want);
        }
        flushall(&redis.url).await;
        // "a" wakes up: its block is older than numbers handed out, so it must not count.
        assert!(!a
            .claimer
            .install(&keys, stale_end, "stalled")
            .await
            .unwrap());
        let next = a.next(&scope).await.unwrap();
        assert!(next > 13, "went back to {next}");
    }
}
