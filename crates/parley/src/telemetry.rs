//! Logs (human-readable or JSON) and the Prometheus recorder.

use crate::config::LogFormat;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::EnvFilter;

pub fn init_logs(format: LogFormat, filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}

/// How often histogram samples are folded into their buckets. The recorder keeps every raw
/// sample until then: without upkeep, a server nobody scraped grew by about 7 MB per 340,000
/// requests.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

/// The process-wide recorder, installed once however many servers the process starts, with a
/// thread of its own for upkeep (a thread, not a task: the recorder outlives any runtime).
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ];
            let sizes = [1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0];
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), &latency)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("batch_size".into()), &sizes)
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            let upkept = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkept.run_upkeep();
                })
                .expect("spawning the metrics upkeep thread");
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use crate::testing::resident_anon_kib;
    use std::time::{Duration, Instant};

    /// A server that nobody scrapes records a latency sample per request; the samples must be
    /// folded away, not kept: without upkeep, this test's 4M samples took about 60 MB.
    #[test]
    fn unscraped_histograms_stay_small_in_memory() {
        let _handle = super::metrics();
        let histogram = metrics::histogram!("parley_test_duration_seconds");
        let record_for = |how_long: Duration| {
            let started = Instant::now();
            while started.elapsed() < how_long {
                for _ in 0..100_000 {
                    histogram.record(0.001);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        };
        record_for(super::UPKEEP_EVERY);
        let before = resident_anon_kib();
        record_for(super::UPKEEP_EVERY * 4);
        let grown_kib = resident_anon_kib() - before;
        assert!(
            grown_kib < 8 * 1024,
            "3M unscraped samples took {grown_kib} KiB"
        );
    }
}
