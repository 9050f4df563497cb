//! The server's own view of a scenario: its `/metrics` read when the measured window opens
//! and when it ends, and every histogram's mean over the window (the difference of its
//! `_sum` over the difference of its `_count`): where a create waits (the number, the
//! publish, the broker's confirm), how full the envelopes and the writer's batches are.
//!
//! Read by hand: the Prometheus text format is one sample per line, `name{labels} value`,
//! and only the `_sum` and `_count` lines are needed; a parser crate would bring more than
//! these few lines.

use crate::http::{Conn, Target};
use crate::runner::Window;
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Each histogram's `(sum, count)`, by series (`name{labels}`, the name without `_sum`).
pub type Totals = BTreeMap<String, (f64, f64)>;

/// One histogram's mean over the window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mean {
    /// `name{labels}` as the server exposes it, without the `_sum` / `_count` suffix.
    pub series: String,
    /// Observations in the window.
    pub samples: u64,
    /// Their mean, in the series' unit (seconds for `_seconds` histograms).
    pub mean: f64,
}

/// The `_sum` and `_count` lines of `text` (a Prometheus exposition), by series.
pub fn totals(text: &str) -> Totals {
    let mut totals = Totals::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = key.split_at(key.find('{').unwrap_or(key.len()));
        if let Some(series) = name.strip_suffix("_sum") {
            totals.entry(format!("{series}{labels}")).or_default().0 = value;
        } else if let Some(series) = name.strip_suffix("_count") {
            totals.entry(format!("{series}{labels}")).or_default().1 = value;
        }
    }
    totals
}

/// Each series observed between `before` and `after`, with its mean over that span; the
/// scrape of `/metrics` itself left out.
pub fn means(before: &Totals, after: &Totals) -> Vec<Mean> {
    after
        .iter()
        .filter(|(series, _)| !series.contains(r#"route="/metrics""#))
        .filter_map(|(series, &(sum, count))| {
            let (sum0, count0) = before.get(series).copied().unwrap_or_default();
            let samples = count - count0;
            (samples >= 1.0).then(|| Mean {
                series: series.clone(),
                samples: samples as u64,
                mean: (sum - sum0) / samples,
            })
        })
        .collect()
}

/// The server's histogram means over `window`; `None` (with a warning) when its `/metrics`
/// cannot be read.
pub async fn over(window: Window, target: Arc<Target>) -> Option<Vec<Mean>> {
    let mut conn = Conn::new(target, Duration::from_secs(5));
    tokio::time::sleep_until(window.from).await;
    let before = scrape(&mut conn).await?;
    tokio::time::sleep_until(window.end).await;
    let after = scrape(&mut conn).await?;
    Some(means(&before, &after))
}

async fn scrape(conn: &mut Conn) -> Option<Totals> {
    match conn.send(&Method::GET, "/metrics", None, None).await {
        Ok((StatusCode::OK, body)) => Some(totals(&String::from_utf8_lossy(&body))),
        other => {
            eprintln!("warning: reading the server's /metrics: {other:?}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEFORE: &str = r#"# TYPE parley_publish_duration_seconds histogram
parley_publish_duration_seconds_bucket{queue="create_messages",le="0.005"} 10
parley_publish_duration_seconds_sum{queue="create_messages"} 0.03
parley_publish_duration_seconds_count{queue="create_messages"} 10
parley_publish_duration_seconds_sum{queue="create_chats"} 0.002
parley_publish_duration_seconds_count{queue="create_chats"} 1
parley_queue_depth{queue="create_messages"} 3
"#;
    const AFTER: &str = r#"# TYPE parley_publish_duration_seconds histogram
parley_publish_duration_seconds_bucket{queue="create_messages",le="0.005"} 110
parley_publish_duration_seconds_sum{queue="create_messages"} 0.43
parley_publish_duration_seconds_count{queue="create_messages"} 110
parley_publish_duration_seconds_sum{queue="create_chats"} 0.002
parley_publish_duration_seconds_count{queue="create_chats"} 1
parley_envelope_batch_size_sum{queue="create_messages"} 220
parley_envelope_batch_size_count{queue="create_messages"} 10
parley_http_request_duration_seconds_sum{route="/metrics",method="GET",status="200"} 0.001
parley_http_request_duration_seconds_count{route="/metrics",method="GET",status="200"} 1
parley_queue_depth{queue="create_messages"} 0
"#;

    #[test]
    fn a_histogram_mean_is_taken_over_the_window_only() {
        let means = means(&totals(BEFORE), &totals(AFTER));
        assert_eq!(means.len(), 2, "the scrape itself left out: {means:?}");
        let envelope = &means[0];
        assert_eq!(
            envelope.series, r#"parley_envelope_batch_size{queue="create_messages"}"#,
            "a series new in the window counts from zero"
        );
        assert_eq!((envelope.samples, envelope.mean), (10, 22.0));
        let publish = &means[1];
        assert_eq!(
            publish.series,
            r#"parley_publish_duration_seconds{queue="create_messages"}"#
        );
        assert_eq!(publish.samples, 100);
        assert!((publish.mean - 0.004).abs() < 1e-12, "{}", publish.mean);
    }

    #[test]
    fn lines_that_are_not_sums_or_counts_are_left_out() {
        let totals = totals("# HELP x_sum y\nx_sum 1\nx_count\nbroken line here\ny 2\n");
        assert_eq!(totals, Totals::from([("x".to_owned(), (1.0, 0.0))]));
    }
}
