//! What a run measures: HDR histograms of latency in microseconds, answers by status code,
//! and failures without an answer. Each task keeps its own `Stats`; they are merged at the end
//! so recording never takes a lock.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Highest latency a histogram holds (longer values are clamped to it): one hour.
const MAX_MICROS: u64 = 3_600_000_000;

/// A histogram of microseconds, 1 µs to 1 h, three significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3).expect("valid histogram bounds")
}

pub fn micros(d: Duration) -> u64 {
    (d.as_micros() as u64).clamp(1, MAX_MICROS)
}

/// Measurements of one scenario or one floor engine.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Every answered request. Closed loop: from send to answer. Open loop: from the
    /// request's intended start to its answer, so time spent queued behind a slow
    /// server counts.
    pub latency: Histogram<u64>,
    /// Open loop only: from the actual send to the answer (what a closed-loop tool reports).
    pub service: Option<Histogram<u64>>,
    /// Latency per kind of request, for scenarios that mix kinds.
    pub by_label: BTreeMap<&'static str, Histogram<u64>>,
    /// Answers with a 2xx status.
    pub ok: u64,
    /// Answers with any other status, by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no answer, by reason (`connect`, `io`, `timeout`, or an engine's error).
    pub failures: BTreeMap<String, u64>,
    /// Open loop: requests due inside the window that were never sent because the connection
    /// was still busy when the window closed. Each is recorded in `latency` with the time it
    /// had waited so far (a lower bound), so a stalled server cannot look fast.
    pub unsent: u64,
    /// persist-lag: from a 201 until GET first answered 200.
    pub persist_lag: Option<Histogram<u64>>,
    /// persist-lag probes that never saw a 200 within the timeout.
    pub persist_failures: u64,
    /// The server's CPU time over the measured window, when its process was given.
    pub server_cpu: Option<Duration>,
    /// The load generator's own CPU time over the measured window (it shares the machine).
    pub client_cpu: Option<Duration>,
    /// The server's histogram means over the measured window, from its `/metrics`.
    pub inside: Option<Vec<crate::inside::Mean>>,
}

impl Stats {
    pub fn new(open_loop: bool) -> Self {
        Self {
            latency: histogram(),
            service: open_loop.then(histogram),
            by_label: BTreeMap::new(),
            ok: 0,
            statuses: BTreeMap::new(),
            failures: BTreeMap::new(),
            unsent: 0,
            persist_lag: None,
            persist_failures: 0,
            server_cpu: None,
            client_cpu: None,
            inside: None,
        }
    }

    /// Records an answer: `latency` as the caller accounts it, `service` from the actual send.
    pub fn answer(
        &mut self,
        label: &'static str,
        status: u16,
        latency: Duration,
        service: Duration,
    ) {
        let value = micros(latency);
        self.latency.saturating_record(value);
        if let Some(h) = &mut self.service {
            h.saturating_record(micros(service));
        }
        self.by_label
            .entry(label)
            .or_insert_with(histogram)
            .saturating_record(value);
        if (200..300).contains(&status) {
            self.ok += 1;
        } else {
            *self.statuses.entry(status).or_default() += 1;
        }
    }

    /// Records a request that got no answer.
    pub fn failure(&mut self, reason: impl Into<String>) {
        *self.failures.entry(reason.into()).or_default() += 1;
    }

    /// Records an open-loop request that was due but never sent, with its wait so far.
    pub fn unsent(&mut self, waited: Duration) {
        self.unsent += 1;
        self.latency.saturating_record(micros(waited));
    }

    pub fn persist_lag(&mut self, lag: Duration) {
        self.persist_lag
            .get_or_insert_with(histogram)
            .saturating_record(micros(lag));
    }

    /// Answers received (any status).
    pub fn answered(&self) -> u64 {
        self.ok + self.statuses.values().sum::<u64>()
    }

    /// Non-2xx answers plus requests without an answer.
    pub fn errors(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.failures.values().sum::<u64>()
    }

    /// Errors by kind: status codes as numbers, failures by name.
    pub fn errors_by_kind(&self) -> BTreeMap<String, u64> {
        let mut all: BTreeMap<String, u64> = self
            .statuses
            .iter()
            .map(|(s, n)| (s.to_string(), *n))
            .collect();
        all.extend(self.failures.iter().map(|(k, n)| (k.clone(), *n)));
        all
    }

    pub fn merge(&mut self, other: Stats) {
        let add = |a: &mut Histogram<u64>, b: &Histogram<u64>| {
            a.add(b).expect("histograms share their bounds");
        };
        add(&mut self.latency, &other.latency);
        if let (Some(a), Some(b)) = (&mut self.service, &other.service) {
            add(a, b);
        }
        for (label, h) in &other.by_label {
            add(self.by_label.entry(label).or_insert_with(histogram), h);
        }
        self.ok += other.ok;
        for (s, n) in other.statuses {
            *self.statuses.entry(s).or_default() += n;
        }
        for (k, n) in other.failures {
            *self.failures.entry(k).or_default() += n;
        }
        self.unsent += other.unsent;
        if let Some(b) = &other.persist_lag {
            add(self.persist_lag.get_or_insert_with(histogram), b);
        }
        self.persist_failures += other.persist_failures;
        self.server_cpu = self.server_cpu.or(other.server_cpu);
        self.client_cpu = self.client_cpu.or(other.client_cpu);
        self.inside = self.inside.take().or(other.inside);
    }
}

/// A histogram as reported: the usual percentiles in milliseconds, and the percentile curve
/// for plotting.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// (percentile 0–100, milliseconds), from the histogram's percentile iterator.
    pub curve: Vec<(f64, f64)>,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Self {
        let curve = if h.is_empty() {
            Vec::new()
        } else {
            h.iter_quantiles(5)
                .map(|v| (v.quantile_iterated_to() * 100.0, ms(v.value_iterated_to())))
                .collect()
        };
        Self {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            curve,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_counts_and_histograms() {
        let mut a = Stats::new(true);
        a.answer("x", 201, Duration::from_millis(2), Duration::from_millis(1));
        a.failure("timeout");
        let mut b = Stats::new(true);
        b.answer("x", 503, Duration::from_millis(4), Duration::from_millis(4));
        b.unsent(Duration::from_millis(8));
        a.merge(b);
        assert_eq!(a.answered(), 2);
        assert_eq!(a.errors(), 2);
        assert_eq!(a.latency.len(), 3, "answers and the unsent request");
        assert_eq!(a.service.as_ref().unwrap().len(), 2);
        assert_eq!(a.errors_by_kind()["503"], 1);
        assert_eq!(a.errors_by_kind()["timeout"], 1);
        let s = Summary::of(&a.latency);
        assert!((s.max_ms - 8.0).abs() < 0.01);
        assert!(s.curve.last().unwrap().0 > 99.9);
    }
}
