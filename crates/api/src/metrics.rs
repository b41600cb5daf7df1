//! Prometheus metrics, kept in-process and written in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apitrail_dispatch::DispatchSnapshot;
use apitrail_store::{Histogram, HistogramSnapshot, StoreStats};

use crate::serve::ServeStats;

/// The registry.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Arc<Histogram>>>,
    /// Ingested records newly stored.
    pub ingest_accepted: AtomicU64,
    /// Ingested records skipped as already stored.
    pub ingest_duplicates: AtomicU64,
    /// Ingest calls refused because of invalid records.
    pub ingest_invalid_batches: AtomicU64,
    /// Ingest calls refused because the write queue was full.
    pub ingest_overloaded: AtomicU64,
    /// The listener's connection counters.
    serve: Arc<ServeStats>,
}

impl Metrics {
    /// The listener's connection counters, shared with the serving loop.
    pub fn serve_stats(&self) -> Arc<ServeStats> {
        Arc::clone(&self.serve)
    }

    /// Counts one HTTP exchange. `route` is the matched route template, so label cardinality
    /// stays bounded whatever paths clients send.
    pub fn observe_http(&self, route: Option<&str>, method: &str, status: u16, took: Duration) {
        let route = route.unwrap_or("unmatched").to_owned();
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.clone(), method.to_owned(), status))
            .or_default() += 1;
        let hist = Arc::clone(
            self.latency
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(route)
                .or_insert_with(|| Arc::new(Histogram::new(Histogram::SECONDS))),
        );
        hist.observe(took.as_secs_f64());
    }

    /// The exposition text, including the store's figures and the recorder's drops.
    pub fn render(&self, store: &StoreStats, self_logs_dropped: u64) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP apitrail_http_requests_total HTTP requests by route template, method and status."
        );
        let _ = writeln!(out, "# TYPE apitrail_http_requests_total counter");
        for ((route, method, status), n) in self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "apitrail_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        let _ = writeln!(
            out,
            "# HELP apitrail_http_request_duration_seconds Time from request to response, by route template."
        );
        let _ = writeln!(
            out,
            "# TYPE apitrail_http_request_duration_seconds histogram"
        );
        for (route, hist) in self
            .latency
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            write_histogram(
                &mut out,
                "apitrail_http_request_duration_seconds",
                &format!("route=\"{}\"", escape(route)),
                &hist.snapshot(),
            );
        }
        let counters = [
            (
                "apitrail_ingest_records_accepted_total",
                "Ingested records newly stored.",
                self.ingest_accepted.load(Ordering::Relaxed),
            ),
            (
                "apitrail_ingest_records_duplicate_total",
                "Ingested records skipped because their id was already stored.",
                self.ingest_duplicates.load(Ordering::Relaxed),
            ),
            (
                "apitrail_ingest_invalid_batches_total",
                "Ingest calls refused for invalid records.",
                self.ingest_invalid_batches.load(Ordering::Relaxed),
            ),
            (
                "apitrail_ingest_overloaded_total",
                "Ingest calls refused with 503 because the write queue was full.",
                self.ingest_overloaded.load(Ordering::Relaxed),
            ),
            (
                "apitrail_http_connections_total",
                "Connections accepted.",
                self.serve.accepted.load(Ordering::Relaxed),
            ),
            (
                "apitrail_http_connection_limit_reached_total",
                "Connections that arrived while --max-connections were open (they waited for a free slot).",
                self.serve.limit_reached.load(Ordering::Relaxed),
            ),
            (
                "apitrail_http_connections_shed_total",
                "Idle connections closed to make room under --max-connections.",
                self.serve.shed.load(Ordering::Relaxed),
            ),
            (
                "apitrail_http_header_timeouts_total",
                "Connections closed because a request's headers did not arrive within --header-read-timeout-secs.",
                self.serve.header_timeouts.load(Ordering::Relaxed),
            ),
            (
                "apitrail_http_keep_alive_timeouts_total",
                "Idle kept-alive connections closed after --keep-alive-timeout-secs.",
                self.serve.keep_alive_timeouts.load(Ordering::Relaxed),
            ),
            (
                "apitrail_http_body_timeouts_total",
                "Request bodies cut off with 408 (stalled for --body-read-timeout-secs, or not complete within --body-deadline-secs).",
                self.serve.body_timeouts.load(Ordering::Relaxed),
            ),
            (
                "apitrail_self_logs_dropped_total",
                "Self-logs dropped because their queue was full.",
                self_logs_dropped,
            ),
            (
                "apitrail_store_commits_total",
                "Transactions committed by the store's writer.",
                store.commits,
            ),
            (
                "apitrail_store_committed_records_total",
                "Request logs committed by the store's writer.",
                store.committed_records,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let gauges = [
            (
                "apitrail_http_connections_open",
                "Client connections open now.",
                self.serve.open.load(Ordering::Relaxed),
            ),
            (
                "apitrail_write_queue_records",
                "Records waiting in the write queue.",
                store.queued_records,
            ),
            (
                "apitrail_write_queue_capacity_records",
                "Records the write queue holds before ingest answers 503.",
                store.queue_capacity,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP apitrail_store_commit_duration_seconds Time each group's transaction took to run and commit.\n# TYPE apitrail_store_commit_duration_seconds histogram"
        );
        write_histogram(
            &mut out,
            "apitrail_store_commit_duration_seconds",
            "",
            &store.commit_seconds,
        );
        let _ = writeln!(
            out,
            "# HELP apitrail_store_fsync_duration_seconds Time each fsync of committed groups took; acknowledgements wait for it.\n# TYPE apitrail_store_fsync_duration_seconds histogram"
        );
        write_histogram(
            &mut out,
            "apitrail_store_fsync_duration_seconds",
            "",
            &store.fsync_seconds,
        );
        let _ = writeln!(
            out,
            "# HELP apitrail_store_group_records Records per group commit.\n# TYPE apitrail_store_group_records histogram"
        );
        write_histogram(
            &mut out,
            "apitrail_store_group_records",
            "",
            &store.group_records,
        );
        out
    }
}

/// Appends the dispatcher's figures to an exposition.
pub fn render_dispatch(out: &mut String, d: &DispatchSnapshot) {
    let gauges = [
        (
            "apitrail_dispatch_due_records",
            "Action records the latest lease pass found due (a pass takes at most its free delivery slots, up to 500).",
            d.due,
        ),
        (
            "apitrail_dispatch_deliveries_in_flight",
            "Action deliveries running now.",
            d.in_flight,
        ),
    ];
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    let counters = [
        (
            "apitrail_dispatch_leased_total",
            "Action records leased for a delivery attempt.",
            d.leased,
        ),
        (
            "apitrail_dispatch_unrecorded_total",
            "Delivery outcomes not recorded because the lease ran out first or the store failed (the record is delivered again).",
            d.unrecorded,
        ),
    ];
    for (name, help, value) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP apitrail_dispatch_transitions_total State changes the dispatcher recorded, by event kind (delivered, acknowledged, attempt_failed, failed, timed_out).\n# TYPE apitrail_dispatch_transitions_total counter"
    );
    for (kind, n) in &d.transitions {
        let _ = writeln!(
            out,
            "apitrail_dispatch_transitions_total{{kind=\"{}\"}} {n}",
            kind.as_str()
        );
    }
    let _ = writeln!(
        out,
        "# HELP apitrail_dispatch_lease_lag_seconds Time from an action record's available_at to its lease.\n# TYPE apitrail_dispatch_lease_lag_seconds histogram"
    );
    write_histogram(
        out,
        "apitrail_dispatch_lease_lag_seconds",
        "",
        &d.lag_seconds,
    );
}

fn write_histogram(out: &mut String, name: &str, labels: &str, h: &HistogramSnapshot) {
    let sep = if labels.is_empty() { "" } else { "," };
    for (bound, count) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", h.count);
    let braces = if labels.is_empty() {
        String::new()
    } else {
        format!("{{{labels}}}")
    };
    let _ = writeln!(out, "{name}_sum{braces} {}", h.sum);
    let _ = writeln!(out, "{name}_count{braces} {}", h.count);
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_counts_requests_by_route_template() {
        let m = Metrics::default();
        m.observe_http(Some("/v1/logs"), "GET", 200, Duration::from_millis(3));
        m.observe_http(Some("/v1/logs"), "GET", 200, Duration::from_millis(4));
        m.observe_http(None, "GET", 404, Duration::from_millis(1));
        let text = m.render(&StoreStats::default(), 0);
        assert!(text.contains(
            "apitrail_http_requests_total{route=\"/v1/logs\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains("route=\"unmatched\",method=\"GET\",status=\"404\"} 1"));
        assert!(text.contains(
            "apitrail_http_request_duration_seconds_bucket{route=\"/v1/logs\",le=\"0.005\"} 2"
        ));
        assert!(
            text.contains("apitrail_http_request_duration_seconds_count{route=\"/v1/logs\"} 2")
        );
    }

    #[test]
    fn dispatcher_figures_render_as_gauges_counters_and_a_histogram() {
        use apitrail_model::EventKind;
        let snapshot = DispatchSnapshot {
            due: 4,
            leased: 9,
            in_flight: 2,
            transitions: vec![(EventKind::Delivered, 5), (EventKind::AttemptFailed, 3)],
            unrecorded: 1,
            lag_seconds: HistogramSnapshot {
                buckets: vec![(0.1, 7), (1.0, 9)],
                sum: 1.5,
                count: 9,
            },
        };
        let mut text = String::new();
        render_dispatch(&mut text, &snapshot);
        for line in [
            "# TYPE apitrail_dispatch_due_records gauge",
            "apitrail_dispatch_due_records 4",
            "apitrail_dispatch_deliveries_in_flight 2",
            "# TYPE apitrail_dispatch_leased_total counter",
            "apitrail_dispatch_leased_total 9",
            "apitrail_dispatch_unrecorded_total 1",
            "apitrail_dispatch_transitions_total{kind=\"delivered\"} 5",
            "apitrail_dispatch_transitions_total{kind=\"attempt_failed\"} 3",
            "apitrail_dispatch_lease_lag_seconds_bucket{le=\"0.1\"} 7",
            "apitrail_dispatch_lease_lag_seconds_bucket{le=\"+Inf\"} 9",
            "apitrail_dispatch_lease_lag_seconds_sum 1.5",
            "apitrail_dispatch_lease_lag_seconds_count 9",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
        }
    }
}
