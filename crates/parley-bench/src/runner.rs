//! Drives one scenario over C connections, one task each. Closed loop: each connection sends
//! its next request as soon as the last one is answered. Open loop: requests are due on a fixed
//! timetable and latency counts from when a request was DUE, not when it was sent, so a server
//! that falls behind shows its queue in the figures instead of slowing the load down
//! (coordinated omission). Also the persist-lag prober.

use crate::http::{Conn, Failure, Target};
use crate::scenarios::{Scenario, Workload};
use crate::stats::Stats;
use http::header::HeaderValue;
use http::{Method, StatusCode};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How to drive a scenario.
#[derive(Debug, Clone)]
pub struct Plan {
    pub connections: usize,
    /// Requests per second across all connections; `None` for a closed loop.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    /// persist-lag: follow every Nth 201.
    pub persist_every: u64,
    /// The server's process, whose CPU time over the window is measured.
    pub server_pid: Option<u32>,
}

/// The measured window: requests due before `from` are warm-up, none is started after `end`.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub from: Instant,
    pub end: Instant,
}

impl Window {
    /// A window that opens after `warmup` from `start`.
    pub fn new(start: Instant, warmup: Duration, duration: Duration) -> Self {
        let from = start + warmup;
        Self {
            from,
            end: from + duration,
        }
    }

    pub fn measures(&self, t: Instant) -> bool {
        t >= self.from && t < self.end
    }
}

/// The open-loop timetable: slot `s` (counting every connection's requests) is due `s / rate`
/// seconds after `start`, and connection `s mod C` sends it, so together the connections send
/// `rate` requests per second, evenly spaced, each connection one every `C / rate` seconds.
pub fn due_at(start: Instant, rate: f64, slot: u64) -> Instant {
    start + Duration::from_secs_f64(slot as f64 / rate)
}

pub fn connection_of(slot: u64, connections: usize) -> usize {
    (slot % connections as u64) as usize
}

/// Open-loop latency: from when the request was due to when it was answered. A request sent
/// late (the connection was still busy) has its wait counted.
pub fn open_loop_latency(due: Instant, answered: Instant) -> Duration {
    answered.saturating_duration_since(due)
}

/// Releases open-loop requests when they fall due, on a thread of its own: tokio's timer
/// rounds sleeps up to the next millisecond, which would add up to 1 ms of the client's own
/// lateness to every latency; a thread sleep is precise to tens of microseconds. Slots due at
/// or after `end` are not released, and dropping the senders tells the connections so.
fn pace(start: Instant, rate: f64, end: Instant, slots: Vec<mpsc::UnboundedSender<Instant>>) {
    // Linux lets a sleeping thread wake up to 50 µs late by default (timer slack); ask for 1 µs.
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_TIMERSLACK takes one integer and changes only this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let connections = slots.len();
    for slot in 0u64.. {
        let due = due_at(start, rate, slot);
        if due >= end {
            return;
        }
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        // A connection that is gone stopped early; the others go on.
        let _ = slots[connection_of(slot, connections)].send(due);
    }
}

/// A create to follow until its item is readable.
struct Probe {
    path: String,
    created: Instant,
}

/// A process's CPU time from the window's opening to its end; `None` (with a warning) when
/// the process cannot be read.
async fn cpu_over(window: Window, pid: u32) -> Option<Duration> {
    tokio::time::sleep_until(window.from).await;
    let read = || match crate::cpu::process_cpu(pid) {
        Ok(cpu) => Some(cpu),
        Err(e) => {
            eprintln!("warning: reading the CPU time of process {pid}: {e}");
            None
        }
    };
    let from = read()?;
    tokio::time::sleep_until(window.end).await;
    Some(read()?.saturating_sub(from))
}

/// Runs `scenario` as planned and returns what it measured.
pub async fn run(
    target: &Arc<Target>,
    auth: &HeaderValue,
    workload: &Arc<Workload>,
    scenario: Scenario,
    plan: &Plan,
) -> Stats {
    let open = plan.rate.is_some();
    // Connections are opened before the clock starts; one that cannot open is retried on
    // its first request, where the failure is counted.
    let mut conns = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        let mut conn = Conn::new(target.clone(), plan.timeout);
        let _ = conn.open().await;
        conns.push(conn);
    }
    let (probes, prober) = if scenario == Scenario::PersistLag {
        let (tx, rx) = probe_channel();
        let conn = Conn::new(target.clone(), plan.timeout);
        let task = tokio::spawn(prober(rx, conn, auth.clone(), plan.timeout));
        (Some(tx), Some(task))
    } else {
        (None, None)
    };
    let start = Instant::now() + Duration::from_millis(20);
    let window = Window::new(start, plan.warmup, plan.duration);
    let server_cpu = plan
        .server_pid
        .map(|pid| tokio::spawn(cpu_over(window, pid)));
    let client_cpu = tokio::spawn(cpu_over(window, std::process::id()));
    let inside = tokio::spawn(crate::inside::over(window, target.clone()));
    let (senders, mut receivers): (Vec<_>, Vec<_>) = (0..plan.connections)
        .map(|_| {
            let (tx, rx) = mpsc::unbounded_channel();
            (tx, Some(rx))
        })
        .unzip();
    let pacer = plan.rate.map(|rate| {
        std::thread::Builder::new()
            .name("pacer".into())
            .spawn(move || pace(start, rate, window.end, senders))
            .expect("starting the pacer thread")
    });
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(index, conn)| {
            let worker = Worker {
                conn,
                start,
                auth: auth.clone(),
                workload: workload.clone(),
                scenario,
                window,
                due: if open { receivers[index].take() } else { None },
                probes: probes.clone(),
                persist_every: plan.persist_every.max(1),
                rng: fastrand::Rng::with_seed(0x5eed ^ index as u64),
            };
            tokio::spawn(worker.run())
        })
        .collect();
    drop(probes);
    let mut stats = Stats::new(open);
    for task in tasks {
        stats.merge(task.await.expect("a load task panicked"));
    }
    if let Some(pacer) = pacer {
        pacer.join().expect("the pacer panicked");
    }
    if let Some(prober) = prober {
        stats.merge(prober.await.expect("the prober panicked"));
    }
    if let Some(server_cpu) = server_cpu {
        stats.server_cpu = server_cpu.await.expect("the CPU sampler panicked");
    }
    stats.client_cpu = client_cpu.await.expect("the CPU sampler panicked");
    stats.inside = inside.await.expect("the metrics reader panicked");
    stats
}

struct Worker {
    conn: Conn,
    /// When the warm-up begins.
    start: Instant,
    auth: HeaderValue,
    workload: Arc<Workload>,
    scenario: Scenario,
    window: Window,
    /// Open loop: when each of this connection's requests falls due, from the pacer.
    due: Option<mpsc::UnboundedReceiver<Instant>>,
    probes: Option<mpsc::Sender<Probe>>,
    persist_every: u64,
    rng: fastrand::Rng,
}

impl Worker {
    async fn run(mut self) -> Stats {
        let open = self.due.is_some();
        let mut stats = Stats::new(open);
        tokio::time::sleep_until(self.start).await;
        let mut created: u64 = 0;
        loop {
            let due = match &mut self.due {
                Some(slots) => match slots.recv().await {
                    Some(due) => due,
                    None => break,
                },
                None => Instant::now(),
            };
            if Instant::now() >= self.window.end {
                if open && self.window.measures(due) {
                    stats.unsent(self.window.end - due);
                }
                break;
            }
            let call = self.scenario.next_call(&self.workload, &mut self.rng);
            let sent = Instant::now();
            // Closed loop: a request counts if it was sent in the window. Open loop: if it
            // was due in the window.
            let counted = self.window.measures(if open { due } else { sent });
            let answer = self
                .conn
                .send(&call.method, &call.path, Some(&self.auth), call.body)
                .await;
            let answered = Instant::now();
            if !counted {
                continue;
            }
            match answer {
                Ok((status, body)) => {
                    let latency = if open {
                        open_loop_latency(due, answered)
                    } else {
                        answered - sent
                    };
                    stats.answer(call.label, status.as_u16(), latency, answered - sent);
                    if call.probe && status == StatusCode::CREATED {
                        created += 1;
                        if created.is_multiple_of(self.persist_every) {
                            if let (Some(tx), Some(number)) = (&self.probes, message_number(&body))
                            {
                                let probe = Probe {
                                    path: format!("{}/{number}", call.path),
                                    created: answered,
                                };
                                // A busy prober skips samples rather than slowing the load.
                                let _ = tx.try_send(probe);
                            }
                        }
                    }
                }
                Err(failure) => stats.failure(failure.as_str()),
            }
        }
        // Open loop: requests due in the window that this connection never got to send.
        if let Some(slots) = &mut self.due {
            while let Some(due) = slots.recv().await {
                if self.window.measures(due) {
                    stats.unsent(self.window.end - due);
                }
            }
        }
        stats
    }
}

fn message_number(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Created {
        message_number: i64,
    }
    serde_json::from_slice::<Created>(body)
        .ok()
        .map(|c| c.message_number)
}

/// Room for one probe: a sample waits at most while the one before it is followed, and the
/// prober drops it then (a busy prober skips samples rather than slowing the load).
fn probe_channel() -> (mpsc::Sender<Probe>, mpsc::Receiver<Probe>) {
    mpsc::channel(1)
}

/// Follows sampled creates: GET, back to back, until 200, and records the lag from the 201.
/// The lag includes at least one GET round trip, and nothing of the prober's own backlog: a
/// probe that waited while another was followed is dropped, since its wait would count as lag
/// (with a queue of 1,024 the embedded stack, where a 201 means readable, showed 0.5–0.8 s).
async fn prober(
    mut probes: mpsc::Receiver<Probe>,
    mut conn: Conn,
    auth: HeaderValue,
    give_up: Duration,
) -> Stats {
    let mut stats = Stats::new(false);
    while let Some(probe) = probes.recv().await {
        loop {
            let answer = conn
                .send(&Method::GET, &probe.path, Some(&auth), None)
                .await;
            let now = Instant::now();
            if let Ok((StatusCode::OK, _)) = answer {
                stats.persist_lag(now - probe.created);
                break;
            }
            if now - probe.created > give_up {
                stats.persist_failures += 1;
                break;
            }
            if let Err(Failure::Connect) = answer {
                // Refused: do not spin; the next try reconnects.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        while probes.try_recv().is_ok() {}
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{histogram, micros};

    /// Simulates one open-loop connection against a server that takes `service` per request,
    /// with the same timetable and accounting as `Worker`, on virtual time.
    fn simulate(rate: f64, service: Duration, requests: u64) -> (Vec<Duration>, Vec<Duration>) {
        let start = Instant::now();
        let mut free_at = start;
        let (mut latencies, mut services) = (Vec::new(), Vec::new());
        for slot in 0..requests {
            let due = due_at(start, rate, slot);
            let sent = due.max(free_at);
            let answered = sent + service;
            free_at = answered;
            latencies.push(open_loop_latency(due, answered));
            services.push(answered - sent);
        }
        (latencies, services)
    }

    #[test]
    fn timetable_spreads_connections_evenly() {
        let start = Instant::now();
        let at = |slot| due_at(start, 1000.0, slot) - start;
        // Together, 1000/s: one request every millisecond, connections taking turns.
        assert_eq!(at(0), Duration::ZERO);
        assert_eq!(at(3), Duration::from_millis(3));
        assert_eq!(at(1002), Duration::from_millis(1002));
        assert_eq!(connection_of(1, 4), 1);
        assert_eq!(connection_of(4, 4), 0);
        assert_eq!(connection_of(1002, 4), 2);
    }

    #[test]
    fn a_server_keeping_up_shows_its_service_time() {
        let (latencies, _) = simulate(100.0, Duration::from_millis(2), 100);
        assert!(latencies.iter().all(|l| *l == Duration::from_millis(2)));
    }

    #[test]
    fn queueing_behind_a_slow_server_is_counted() {
        // 100/s is one request every 10 ms, but each takes 20 ms: the queue grows by 10 ms
        // per request. Service time alone (what a closed-loop tool sees) stays at 20 ms.
        let (latencies, services) = simulate(100.0, Duration::from_millis(20), 100);
        assert!(services.iter().all(|s| *s == Duration::from_millis(20)));
        assert_eq!(latencies[0], Duration::from_millis(20));
        assert_eq!(latencies[1], Duration::from_millis(30));
        assert_eq!(latencies[99], Duration::from_millis(20 + 99 * 10));
        let mut h = histogram();
        for l in &latencies {
            h.record(micros(*l)).unwrap();
        }
        assert!(h.value_at_quantile(0.99) >= 990_000, "p99 shows the queue");
    }

    #[test]
    fn the_window_measures_only_after_warmup() {
        let start = Instant::now();
        let w = Window::new(start, Duration::from_secs(1), Duration::from_secs(2));
        assert!(!w.measures(start));
        assert!(w.measures(start + Duration::from_secs(1)));
        assert!(!w.measures(start + Duration::from_secs(3)));
    }

    /// A keep-alive HTTP server that answers every request with 200 after `delay`.
    async fn slow_server(delay: Duration) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            buf.drain(..end + 4);
                            tokio::time::sleep(delay).await;
                            let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                            if socket.write_all(answer).await.is_err() {
                                return;
                            }
                        }
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn the_persist_lag_leaves_out_the_probers_backlog() {
        // Samples arrive every 2 ms; following one takes 20 ms (one GET). Each recorded lag
        // must be that one GET, not the time a sample queued behind others (with a queue,
        // the last of 100 samples would show about 100 × 20 ms - 200 ms).
        let follow = Duration::from_millis(20);
        let target = Target::resolve(&slow_server(follow).await).await.unwrap();
        let (tx, rx) = probe_channel();
        let conn = Conn::new(target, Duration::from_secs(5));
        let auth = HeaderValue::from_static("Bearer test");
        let task = tokio::spawn(prober(rx, conn, auth, Duration::from_secs(5)));
        for _ in 0..100 {
            let _ = tx.try_send(Probe {
                path: "/m".into(),
                created: Instant::now(),
            });
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        drop(tx);
        let stats = task.await.unwrap();
        let lag = stats.persist_lag.expect("some samples were followed");
        assert!(lag.len() >= 5, "{} samples", lag.len());
        assert!(lag.min() >= micros(follow), "a lag includes its GET");
        assert!(
            lag.max() < micros(follow * 3 / 2),
            "max lag {} µs: a sample's wait behind another counted as lag",
            lag.max()
        );
    }
}
