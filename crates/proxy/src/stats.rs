//! The proxy's figures, kept with atomics so that counting never blocks traffic.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use apitrail_store::{Histogram, HistogramSnapshot};

/// Why a record was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// No `apitrail-org` header and no `--org`.
    Unattributed,
    /// An `apitrail-org` header that is not an org id.
    InvalidOrg,
    /// The store has no such org.
    UnknownOrg,
    /// The buffer towards the sink was full.
    BufferFull,
    /// The sink failed to store it.
    SinkFailed,
    /// The proxy was stopping and its writer had finished.
    Shutdown,
    /// The exchange breaks a rule of the model (a method token over 32 characters, a
    /// status outside 100–599, a clock before 2000).
    Invalid,
}

impl DropReason {
    /// Every reason, in the order of `/metrics`.
    pub const ALL: [DropReason; 7] = [
        DropReason::Unattributed,
        DropReason::InvalidOrg,
        DropReason::UnknownOrg,
        DropReason::BufferFull,
        DropReason::SinkFailed,
        DropReason::Shutdown,
        DropReason::Invalid,
    ];

    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Unattributed => "unattributed",
            DropReason::InvalidOrg => "invalid_org",
            DropReason::UnknownOrg => "unknown_org",
            DropReason::BufferFull => "buffer_full",
            DropReason::SinkFailed => "sink_failed",
            DropReason::Shutdown => "shutdown",
            DropReason::Invalid => "invalid",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters and histograms of a running proxy.
#[derive(Debug)]
pub struct ProxyStats {
    /// Exchanges whose request reached the upstream and got an answer.
    pub forwarded: AtomicU64,
    /// Exchanges answered 502 because the upstream could not be reached or failed.
    pub upstream_errors: AtomicU64,
    /// Exchanges whose client went away before the response ended (recorded as 499).
    pub client_gone: AtomicU64,
    /// Records stored by the sink.
    pub recorded: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    /// Seconds each sink write took.
    pub sink_batch_seconds: Histogram,
    /// Seconds from sending a request upstream to its response head.
    pub upstream_seconds: Histogram,
}

impl Default for ProxyStats {
    fn default() -> Self {
        Self {
            forwarded: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            client_gone: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
            dropped: Default::default(),
            sink_batch_seconds: Histogram::new(Histogram::SECONDS),
            upstream_seconds: Histogram::new(Histogram::SECONDS),
        }
    }
}

/// How often a drop is logged at most: the first, then at each power of two.
fn worth_logging(n: u64) -> bool {
    n.is_power_of_two()
}

impl ProxyStats {
    /// Counts one dropped record.
    pub fn record_drop(&self, reason: DropReason) {
        self.record_drops(reason, 1);
    }

    /// Counts `n` dropped records (and logs now and then).
    pub fn record_drops(&self, reason: DropReason, n: u64) {
        if n == 0 {
            return;
        }
        let before = self.dropped[reason.index()].fetch_add(n, Ordering::Relaxed);
        if worth_logging(before + 1) || (before + 1..=before + n).any(worth_logging) {
            tracing::warn!(
                reason = reason.label(),
                dropped = before + n,
                "capture proxy: records dropped"
            );
        }
    }

    /// Records dropped for `reason` so far.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason.index()].load(Ordering::Relaxed)
    }

    /// Records dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        DropReason::ALL.iter().map(|r| self.dropped(*r)).sum()
    }

    /// The Prometheus text exposition of these figures; `buffered` is the buffer's fill.
    pub fn render(&self, buffered: usize, capacity: usize) -> String {
        let mut out = String::with_capacity(4096);
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut out,
            "apitrail_proxy_forwarded_total",
            "Exchanges forwarded to the upstream and answered by it.",
            load(&self.forwarded),
        );
        counter(
            &mut out,
            "apitrail_proxy_upstream_errors_total",
            "Exchanges answered 502 because the upstream failed.",
            load(&self.upstream_errors),
        );
        counter(
            &mut out,
            "apitrail_proxy_client_gone_total",
            "Exchanges whose client left before the response ended (recorded as 499).",
            load(&self.client_gone),
        );
        counter(
            &mut out,
            "apitrail_proxy_recorded_total",
            "Records stored by the sink.",
            load(&self.recorded),
        );
        counter(
            &mut out,
            "apitrail_proxy_unattributed_total",
            "Exchanges without an org (no apitrail-org header and no --org); not recorded.",
            self.dropped(DropReason::Unattributed),
        );
        let _ = writeln!(
            out,
            "# HELP apitrail_proxy_dropped_total Records not stored, by reason.\n# TYPE apitrail_proxy_dropped_total counter"
        );
        for reason in DropReason::ALL {
            let _ = writeln!(
                out,
                "apitrail_proxy_dropped_total{{reason=\"{}\"}} {}",
                reason.label(),
                self.dropped(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP apitrail_proxy_buffer_records Records waiting for the sink.\n# TYPE apitrail_proxy_buffer_records gauge\napitrail_proxy_buffer_records {buffered}\n# HELP apitrail_proxy_buffer_capacity_records Records the buffer holds before dropping.\n# TYPE apitrail_proxy_buffer_capacity_records gauge\napitrail_proxy_buffer_capacity_records {capacity}"
        );
        histogram(
            &mut out,
            "apitrail_proxy_sink_batch_seconds",
            "Time each write of a batch of records to the sink took.",
            &self.sink_batch_seconds.snapshot(),
        );
        histogram(
            &mut out,
            "apitrail_proxy_upstream_seconds",
            "Time from sending a request to the upstream to its response head.",
            &self.upstream_seconds.snapshot(),
        );
        out
    }
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, count) in &h.buckets {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum {}\n{name}_count {}", h.sum, h.count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_by_reason_and_rendered() {
        let s = ProxyStats::default();
        s.record_drop(DropReason::BufferFull);
        s.record_drops(DropReason::BufferFull, 4);
        s.record_drop(DropReason::Unattributed);
        s.upstream_seconds.observe(0.003);
        assert_eq!(s.dropped(DropReason::BufferFull), 5);
        assert_eq!(s.dropped_total(), 6);
        let text = s.render(3, 10);
        assert!(text.contains("apitrail_proxy_dropped_total{reason=\"buffer_full\"} 5\n"));
        assert!(text.contains("apitrail_proxy_unattributed_total 1\n"));
        assert!(text.contains("apitrail_proxy_buffer_records 3\n"));
        assert!(text.contains("apitrail_proxy_upstream_seconds_bucket{le=\"0.005\"} 1\n"));
        assert!(text.contains("apitrail_proxy_upstream_seconds_count 1\n"));
    }
}
