//! The report of a run: the machine, the commit, the configuration and every figure, written
//! as JSON (for tools) and Markdown (for people), one timestamped pair per run.

use crate::floor::{Floor, Outcome};
use crate::setup::DataInfo;
use crate::stats::{Stats, Summary};
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub tool: String,
    pub started_at: String,
    pub machine: Machine,
    pub commit: Commit,
    pub config: RunConfig,
    pub scenarios: Vec<ScenarioResult>,
    pub floor: Vec<FloorResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub cores: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    pub cpu_model: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Commit {
    pub id: String,
    /// Uncommitted changes in the work tree when the run started.
    pub dirty: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunConfig {
    pub url: String,
    /// `closed` or `open`.
    pub mode: String,
    pub connections: usize,
    /// Open loop: requests per second.
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub timeout_s: f64,
    /// Measured time per floor engine, when the floor was measured.
    pub floor_duration_s: Option<f64>,
    pub client_threads: usize,
    pub data: Option<DataInfo>,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScenarioResult {
    pub scenario: String,
    /// Answers (any status).
    pub requests: u64,
    /// Answers per second over the measured window.
    pub throughput: f64,
    /// Closed loop: send to answer. Open loop: intended start to answer.
    pub latency: Summary,
    /// Open loop only: actual send to answer.
    pub service: Option<Summary>,
    /// Non-2xx by status code, and requests without an answer by reason.
    pub errors: BTreeMap<String, u64>,
    pub unsent: u64,
    /// Per kind of request, when the scenario mixes kinds.
    pub by_kind: BTreeMap<String, Summary>,
    pub persist_lag: Option<Summary>,
    pub persist_failures: u64,
    /// Throughput divided by the floor's GET /health throughput.
    pub of_health_floor: Option<f64>,
    /// The server's CPU time (all its threads) over the window per answered request, in µs,
    /// with `--server-pid`.
    #[serde(default)]
    pub server_cpu_us_per_request: Option<f64>,
    /// The load generator's own CPU time over the window per answered request, in µs: what
    /// it took from the machine it shares with the server.
    #[serde(default)]
    pub client_cpu_us_per_request: Option<f64>,
    /// The server's histogram means over the window, from its `/metrics` (where a create
    /// waits, how full envelopes and batches are).
    #[serde(default)]
    pub inside: Vec<crate::inside::Mean>,
}

impl ScenarioResult {
    pub fn new(scenario: &str, stats: &Stats, duration: Duration) -> Self {
        let by_kind = if stats.by_label.len() > 1 {
            stats
                .by_label
                .iter()
                .map(|(k, h)| (k.to_string(), Summary::of(h)))
                .collect()
        } else {
            BTreeMap::new()
        };
        Self {
            scenario: scenario.to_owned(),
            requests: stats.answered(),
            throughput: stats.answered() as f64 / duration.as_secs_f64(),
            latency: Summary::of(&stats.latency),
            service: stats.service.as_ref().map(Summary::of),
            errors: stats.errors_by_kind(),
            unsent: stats.unsent,
            by_kind,
            persist_lag: stats.persist_lag.as_ref().map(Summary::of),
            persist_failures: stats.persist_failures,
            of_health_floor: None,
            server_cpu_us_per_request: per_request(stats.server_cpu, stats),
            client_cpu_us_per_request: per_request(stats.client_cpu, stats),
            inside: stats.inside.clone().unwrap_or_default(),
        }
    }
}

/// A CPU time over the window, per answered request, in µs.
fn per_request(cpu: Option<Duration>, stats: &Stats) -> Option<f64> {
    cpu.filter(|_| stats.answered() > 0)
        .map(|cpu| cpu.as_secs_f64() * 1e6 / stats.answered() as f64)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FloorResult {
    pub engine: String,
    pub operation: String,
    pub concurrency: usize,
    /// `ok` or `unavailable`.
    pub status: String,
    pub reason: Option<String>,
    pub ops: u64,
    pub ops_per_s: f64,
    /// Rows or items per second (ops × items per op).
    pub items_per_s: f64,
    pub items_per_op: u64,
    pub latency: Option<Summary>,
    pub errors: BTreeMap<String, u64>,
}

impl FloorResult {
    pub fn new(floor: &Floor, duration: Duration) -> Self {
        let base = |status: &str| Self {
            engine: floor.engine.to_owned(),
            operation: floor.operation.clone(),
            concurrency: floor.concurrency,
            status: status.to_owned(),
            reason: None,
            ops: 0,
            ops_per_s: 0.0,
            items_per_s: 0.0,
            items_per_op: floor.items_per_op,
            latency: None,
            errors: BTreeMap::new(),
        };
        match &floor.outcome {
            Outcome::Unavailable(reason) => Self {
                reason: Some(reason.clone()),
                ..base("unavailable")
            },
            Outcome::Measured(stats) => {
                let ops = stats.answered();
                let per_s = ops as f64 / duration.as_secs_f64();
                Self {
                    ops,
                    ops_per_s: per_s,
                    items_per_s: per_s * floor.items_per_op as f64,
                    latency: Some(Summary::of(&stats.latency)),
                    errors: stats.errors_by_kind(),
                    ..base("ok")
                }
            }
        }
    }
}

/// The machine, from /proc (Linux); unknown elsewhere.
pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or("unknown".to_owned(), |m| m.trim().to_owned());
    let memory_bytes = read("/proc/meminfo")
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    let kernel = read("/proc/sys/kernel/osrelease").trim().to_owned();
    Machine {
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        memory_bytes,
        kernel: if kernel.is_empty() {
            "unknown".into()
        } else {
            format!("Linux {kernel}")
        },
        cpu_model,
    }
}

/// The commit of the source tree this tool was built from.
pub fn commit() -> Commit {
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    Commit {
        id: git(&["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into()),
        dirty: git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty()),
    }
}

/// `1234.5` → `1,235`; below 100, one decimal.
pub fn fmt_count(x: f64) -> String {
    if x < 100.0 {
        return format!("{x:.1}");
    }
    fmt_int(x.round() as u64)
}

/// `1234567` → `1,234,567`.
pub fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds with three significant digits (`0.123`, `1.23`, `12.3`, `123`, `1,234`).
pub fn fmt_ms(ms: f64) -> String {
    match ms {
        m if m < 1.0 => format!("{m:.3}"),
        m if m < 10.0 => format!("{m:.2}"),
        m if m < 100.0 => format!("{m:.1}"),
        m => fmt_count(m),
    }
}

fn percentiles(s: &Summary) -> String {
    [s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms]
        .map(fmt_ms)
        .join(" | ")
}

fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "0".into();
    }
    errors
        .iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    /// A short name for the file stem: the scenarios (or `floor`).
    pub fn slug(&self) -> String {
        let names: Vec<&str> = self.scenarios.iter().map(|s| s.scenario.as_str()).collect();
        let what = match names.len() {
            0 => "floor".to_owned(),
            1..=3 => names.join("+"),
            n => format!("{n}-scenarios"),
        };
        format!("{what}-{}", self.config.mode)
    }

    pub fn markdown(&self, chart: Option<&str>) -> String {
        let c = &self.config;
        let m = &self.machine;
        let mut md = String::new();
        let load = match c.rate {
            Some(rate) => format!(
                "open loop at {} req/s over {} connections",
                fmt_count(rate),
                c.connections
            ),
            None => format!("closed loop, {} connections", c.connections),
        };
        let _ = writeln!(md, "# parley-bench: {}\n", self.slug());
        let _ = writeln!(md, "- started: {}", self.started_at);
        let _ = writeln!(md, "- target: {}", c.url);
        let _ = writeln!(
            md,
            "- commit: {}{}",
            self.commit.id,
            if self.commit.dirty {
                " (with uncommitted changes)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "- machine: {} cores, {:.1} GiB memory, {}, {}",
            m.cores,
            m.memory_bytes as f64 / (1u64 << 30) as f64,
            m.kernel,
            m.cpu_model
        );
        if !self.scenarios.is_empty() {
            let _ = writeln!(
                md,
                "- load: {load}; {} s measured after {} s warm-up per scenario; timeout {} s",
                c.duration_s, c.warmup_s, c.timeout_s
            );
        }
        if let Some(floor) = c.floor_duration_s {
            let _ = writeln!(
                md,
                "- floor: closed loop, {} connections, {floor} s measured per engine",
                c.connections
            );
        }
        let _ = writeln!(
            md,
            "- client: {} thread(s), HTTP/1.1 on a bare socket (httparse), one connection per task",
            c.client_threads
        );
        if let Some(d) = &c.data {
            let _ = writeln!(
                md,
                "- data: {}; {} chats; hot chat (1) holds {} messages; {} messages in all",
                d.source,
                fmt_int(d.chats),
                fmt_int(d.hot_chat_messages.max(0) as u64),
                fmt_int(d.total_messages)
            );
        }
        if let Some(note) = &c.note {
            let _ = writeln!(md, "- note: {note}");
        }
        if !self.scenarios.is_empty() {
            let latency = if c.rate.is_some() {
                "from each request's intended start (open loop: queueing counts)"
            } else {
                "from send to answer"
            };
            let _ = writeln!(md, "\n## Scenarios\n\nLatency in milliseconds, {latency}; errors are non-2xx answers by status and requests without an answer.\n");
            let _ = writeln!(md, "| scenario | requests | req/s | p50 | p90 | p99 | p99.9 | max | errors | of /health |");
            let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
            for s in &self.scenarios {
                let floor = s
                    .of_health_floor
                    .map_or("–".into(), |f| format!("{:.0}%", f * 100.0));
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {floor} |",
                    s.scenario,
                    fmt_int(s.requests),
                    fmt_count(s.throughput),
                    percentiles(&s.latency),
                    errors_text(&s.errors)
                );
            }
            let open: Vec<_> = self
                .scenarios
                .iter()
                .filter(|s| s.service.is_some())
                .collect();
            if !open.is_empty() {
                let _ = writeln!(md, "\nOpen loop, service time alone (actual send to answer — what a closed-loop tool would report), and requests due but never sent:\n");
                let _ = writeln!(md, "| scenario | p50 | p90 | p99 | p99.9 | max | unsent |");
                let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
                for s in open {
                    let service = s.service.as_ref().expect("filtered");
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} |",
                        s.scenario,
                        percentiles(service),
                        fmt_int(s.unsent)
                    );
                }
            }
            let measured: Vec<_> = self
                .scenarios
                .iter()
                .filter(|s| {
                    s.server_cpu_us_per_request.is_some() || s.client_cpu_us_per_request.is_some()
                })
                .collect();
            if !measured.is_empty() {
                let _ = writeln!(md, "\nCPU time over the measured window per answered request, and the cores it kept busy: the server's (all its threads, `--server-pid`) and the load generator's own:\n");
                let _ = writeln!(md, "| scenario | server µs per request | server cores | load generator µs per request | load generator cores |");
                let _ = writeln!(md, "|---|---:|---:|---:|---:|");
                let cell = |us: Option<f64>, throughput: f64| match us {
                    Some(us) => format!("{us:.1} | {:.2}", us * throughput / 1e6),
                    None => "– | –".to_owned(),
                };
                for s in measured {
                    let _ = writeln!(
                        md,
                        "| {} | {} | {} |",
                        s.scenario,
                        cell(s.server_cpu_us_per_request, s.throughput),
                        cell(s.client_cpu_us_per_request, s.throughput),
                    );
                }
            }
            for s in self.scenarios.iter().filter(|s| !s.inside.is_empty()) {
                let _ = writeln!(md, "\n{}, inside the server over the measured window (its `/metrics`: each histogram's observations and their mean):\n", s.scenario);
                let _ = writeln!(md, "| series | samples | mean |");
                let _ = writeln!(md, "|---|---:|---:|");
                for m in &s.inside {
                    let mean = match m.series.split('{').next().unwrap_or_default() {
                        name if name.ends_with("_seconds") => format!("{:.3} ms", m.mean * 1e3),
                        _ => format!("{:.1}", m.mean),
                    };
                    let _ = writeln!(md, "| `{}` | {} | {mean} |", m.series, fmt_int(m.samples));
                }
            }
            for s in self.scenarios.iter().filter(|s| !s.by_kind.is_empty()) {
                let _ = writeln!(md, "\n{} by kind of request:\n", s.scenario);
                let _ = writeln!(md, "| kind | requests | p50 | p90 | p99 | p99.9 | max |");
                let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|");
                for (kind, k) in &s.by_kind {
                    let _ = writeln!(md, "| {kind} | {} | {} |", fmt_int(k.count), percentiles(k));
                }
            }
            for s in &self.scenarios {
                if let Some(lag) = &s.persist_lag {
                    let _ = writeln!(md, "\n{}: from a 201 until GET answers 200 (includes one GET round trip), {} samples, {} never readable within the timeout:\n", s.scenario, lag.count, s.persist_failures);
                    let _ = writeln!(md, "| lag | p50 | p90 | p99 | p99.9 | max |");
                    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
                    let _ = writeln!(md, "| ms | {} |", percentiles(lag));
                }
            }
        }
        if !self.floor.is_empty() {
            let _ = writeln!(md, "\n## Floor\n\nThe engines under the write path, closed loop, in this run. Latency in milliseconds.\n");
            let _ = writeln!(md, "| engine | operation | concurrency | ops/s | items/s | p50 | p90 | p99 | p99.9 | max | errors |");
            let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
            for f in &self.floor {
                match &f.latency {
                    Some(l) => {
                        let _ = writeln!(
                            md,
                            "| {} | {} | {} | {} | {} | {} | {} |",
                            f.engine,
                            f.operation,
                            f.concurrency,
                            fmt_count(f.ops_per_s),
                            fmt_count(f.items_per_s),
                            percentiles(l),
                            errors_text(&f.errors)
                        );
                    }
                    None => {
                        let reason = f.reason.as_deref().unwrap_or("").replace('|', "/");
                        let _ = writeln!(
                            md,
                            "| {} | {} | {} | unavailable | | | | | | | {reason} |",
                            f.engine, f.operation, f.concurrency
                        );
                    }
                }
            }
        }
        if let Some(chart) = chart {
            let _ = writeln!(
                md,
                "\n## Latency by percentile\n\n![latency by percentile]({chart})"
            );
        }
        md
    }

    /// Writes `<stem>.json` and `<stem>.md` (and the chart beside them); returns the stem.
    pub fn write(&self, dir: &Path, stamp: &str) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let stem = dir.join(format!("{stamp}-{}", self.slug()));
        let svg = stem.with_extension("svg");
        let chart = match crate::chart::render(self, &svg) {
            Ok(true) => svg.file_name().map(|n| n.to_string_lossy().into_owned()),
            Ok(false) => None,
            Err(e) => {
                eprintln!("chart not drawn: {e:#}");
                None
            }
        };
        let json = stem.with_extension("json");
        std::fs::write(&json, serde_json::to_string_pretty(self)? + "\n")
            .with_context(|| format!("writing {}", json.display()))?;
        let md = stem.with_extension("md");
        std::fs::write(&md, self.markdown(chart.as_deref()))
            .with_context(|| format!("writing {}", md.display()))?;
        Ok(stem)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Stats;

    #[test]
    fn numbers_are_formatted_for_people() {
        assert_eq!(fmt_count(1234567.4), "1,234,567");
        assert_eq!(fmt_count(999.6), "1,000");
        assert_eq!(fmt_count(42.25), "42.2");
        assert_eq!(fmt_int(5), "5");
        assert_eq!(fmt_int(1000), "1,000");
        assert_eq!(fmt_ms(0.1234), "0.123");
        assert_eq!(fmt_ms(1.234), "1.23");
        assert_eq!(fmt_ms(12.34), "12.3");
        assert_eq!(fmt_ms(1234.0), "1,234");
    }

    fn report() -> Report {
        let mut stats = Stats::new(true);
        for ms in [1, 2, 3, 4] {
            stats.answer(
                "create-message",
                201,
                Duration::from_millis(ms),
                Duration::from_millis(1),
            );
        }
        stats.answer(
            "create-message",
            503,
            Duration::from_millis(5),
            Duration::from_millis(5),
        );
        stats.failure("timeout");
        stats.server_cpu = Some(Duration::from_micros(250));
        stats.client_cpu = Some(Duration::from_micros(50));
        stats.inside = Some(vec![
            crate::inside::Mean {
                series: r#"parley_envelope_batch_size{queue="create_messages"}"#.into(),
                samples: 1_200,
                mean: 21.5,
            },
            crate::inside::Mean {
                series: r#"parley_publish_duration_seconds{queue="create_messages"}"#.into(),
                samples: 25_800,
                mean: 0.003_25,
            },
        ]);
        let mut scenario = ScenarioResult::new("create-message", &stats, Duration::from_secs(1));
        scenario.of_health_floor = Some(0.25);
        Report {
            tool: "parley-bench 0.1.0".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            machine: Machine {
                cores: 2,
                memory_bytes: 24 << 30,
                kernel: "Linux 6.1".into(),
                cpu_model: "Test CPU".into(),
            },
            commit: Commit {
                id: "abc123".into(),
                dirty: true,
            },
            config: RunConfig {
                url: "http://127.0.0.1:18100".into(),
                mode: "open".into(),
                connections: 4,
                rate: Some(500.0),
                duration_s: 1.0,
                warmup_s: 0.0,
                timeout_s: 10.0,
                floor_duration_s: None,
                client_threads: 1,
                data: None,
                note: None,
            },
            scenarios: vec![scenario],
            floor: vec![FloorResult::new(
                &Floor {
                    engine: "redis",
                    operation: "INCR round trip".into(),
                    concurrency: 4,
                    items_per_op: 1,
                    outcome: Outcome::Unavailable("connection refused".into()),
                },
                Duration::from_secs(1),
            )],
        }
    }

    #[test]
    fn markdown_has_the_configuration_and_a_row_per_scenario() {
        let md = report().markdown(Some("x.svg"));
        assert!(md.contains("# parley-bench: create-message-open"));
        assert!(md.contains("open loop at 500 req/s over 4 connections"));
        assert!(md.contains("abc123 (with uncommitted changes)"));
        assert!(md.contains("2 cores, 24.0 GiB memory, Linux 6.1, Test CPU"));
        assert!(
            md.contains("| create-message | 5 | 5.0 | 3.00 | 5.00 | 5.00 | 5.00 | 5.00 | 503×1, timeout×1 | 25% |"),
            "{md}"
        );
        assert!(md.contains("| redis | INCR round trip | 4 | unavailable |"));
        // 250 µs of server CPU and 50 of the load generator's over 5 answers in 1 s.
        assert!(
            md.contains("| create-message | 50.0 | 0.00 | 10.0 | 0.00 |"),
            "{md}"
        );
        assert!(md.contains("![latency by percentile](x.svg)"));
        assert!(
            md.contains(
                r#"| `parley_envelope_batch_size{queue="create_messages"}` | 1,200 | 21.5 |"#
            ),
            "{md}"
        );
        assert!(
            md.contains(r#"| `parley_publish_duration_seconds{queue="create_messages"}` | 25,800 | 3.250 ms |"#),
            "{md}"
        );
    }

    #[test]
    fn json_keeps_the_figures() {
        let json = serde_json::to_value(report()).unwrap();
        assert_eq!(json["scenarios"][0]["requests"], 5);
        assert_eq!(json["scenarios"][0]["errors"]["503"], 1);
        assert_eq!(json["config"]["rate"], 500.0);
        assert_eq!(json["floor"][0]["status"], "unavailable");
        assert_eq!(json["scenarios"][0]["clientCpuUsPerRequest"], 10.0);
        assert_eq!(json["scenarios"][0]["inside"][0]["mean"], 21.5);
    }
}
