//! Figures a store reports for `/metrics`, kept with atomics so recording never blocks.

use std::sync::atomic::{AtomicU64, Ordering};

/// A histogram with fixed upper bounds, safe to record into from any thread.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

/// A point-in-time copy of a [`Histogram`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HistogramSnapshot {
    /// `(upper bound, cumulative count)` per bucket.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of observed values.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

impl Histogram {
    /// Bounds suited to latencies in seconds, from 100 µs to 10 s.
    pub const SECONDS: &'static [f64] = &[
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    /// Bounds suited to batch sizes in records.
    pub const RECORDS: &'static [f64] = &[
        1.0, 10.0, 100.0, 1000.0, 5000.0, 10_000.0, 25_000.0, 50_000.0, 100_000.0,
    ];

    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        // The sum is kept in millionths so it fits an atomic integer.
        self.sum_micros
            .fetch_add((value * 1e6).max(0.0) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// A consistent-enough copy for exposition.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = 0;
        let buckets = self
            .bounds
            .iter()
            .zip(&self.counts)
            .map(|(b, c)| {
                cumulative += c.load(Ordering::Relaxed);
                (*b, cumulative)
            })
            .collect();
        HistogramSnapshot {
            buckets,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

/// What a store reports about its write path.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StoreStats {
    /// Records waiting in the write queue.
    pub queued_records: u64,
    /// The queue's capacity in records; beyond it writes are refused with `Overloaded`.
    pub queue_capacity: u64,
    /// Transactions committed by the writer.
    pub commits: u64,
    /// Request logs committed.
    pub committed_records: u64,
    /// Time each group's transaction took to run and commit, in seconds.
    pub commit_seconds: HistogramSnapshot,
    /// Time each fsync of committed groups took, in seconds (acknowledgements wait for it).
    pub fsync_seconds: HistogramSnapshot,
    /// Records per committed group.
    pub group_records: HistogramSnapshot,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0, 3.0]);
        for v in [0.5, 1.5, 1.7, 2.5, 9.0] {
            h.observe(v);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(1.0, 1), (2.0, 3), (3.0, 4)]);
        assert_eq!(s.count, 5);
        assert!((s.sum - 15.2).abs() < 1e-6);
    }
}
