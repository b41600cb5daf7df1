//! Figures of the dispatcher for `/metrics`, kept with atomics so that leasing and deliveries
//! never wait on them (the API reads them through an `Arc` of [`DispatchStats`]).

use std::sync::atomic::{AtomicU64, Ordering};

use apitrail_model::EventKind;
use apitrail_store::{Histogram, HistogramSnapshot};

/// Bounds of the lease lag (seconds from a record's `available_at` to its lease): the poll
/// interval shows up below a second, a dispatcher falling behind in seconds to an hour.
pub const LAG_SECONDS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// What the dispatcher counts.
#[derive(Debug)]
pub struct DispatchStats {
    due: AtomicU64,
    leased: AtomicU64,
    in_flight: AtomicU64,
    /// Indexed like [`EventKind::ALL`].
    transitions: [AtomicU64; EventKind::ALL.len()],
    unrecorded: AtomicU64,
    lag: Histogram,
}

/// A point-in-time copy of [`DispatchStats`].
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DispatchSnapshot {
    /// Records the latest lease pass found due (a pass takes at most its free delivery
    /// slots, up to 500, so a full pass means more may be waiting).
    pub due: u64,
    /// Records leased so far (each one a delivery attempt).
    pub leased: u64,
    /// Deliveries running now.
    pub in_flight: u64,
    /// State changes recorded, by event kind (delivery outcomes and acknowledgement
    /// timeouts), every kind listed.
    pub transitions: Vec<(EventKind, u64)>,
    /// Delivery outcomes not recorded: the lease ran out first, or the store failed (the
    /// record is delivered again).
    pub unrecorded: u64,
    /// Seconds from a record's `available_at` to its lease.
    pub lag_seconds: HistogramSnapshot,
}

impl Default for DispatchStats {
    fn default() -> Self {
        Self {
            due: AtomicU64::new(0),
            leased: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            transitions: Default::default(),
            unrecorded: AtomicU64::new(0),
            lag: Histogram::new(LAG_SECONDS),
        }
    }
}

impl DispatchStats {
    /// A lease pass found `n` records due and leased them.
    pub(crate) fn lease_pass(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.due.store(n, Ordering::Relaxed);
        self.leased.fetch_add(n, Ordering::Relaxed);
    }

    /// A record was leased `lag_ms` after it became due.
    pub(crate) fn lag(&self, lag_ms: i64) {
        self.lag.observe(lag_ms.max(0) as f64 / 1000.0);
    }

    /// A state change of `kind` was recorded.
    pub(crate) fn transition(&self, kind: EventKind) {
        if let Some(i) = EventKind::ALL.iter().position(|k| *k == kind) {
            self.transitions[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A delivery outcome was not recorded.
    pub(crate) fn unrecorded(&self) {
        self.unrecorded.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a delivery as running until the returned guard is dropped (also when its task
    /// is aborted).
    pub(crate) fn delivering(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// A consistent-enough copy for exposition.
    pub fn snapshot(&self) -> DispatchSnapshot {
        DispatchSnapshot {
            due: self.due.load(Ordering::Relaxed),
            leased: self.leased.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
            transitions: EventKind::ALL
                .iter()
                .zip(&self.transitions)
                .map(|(k, n)| (*k, n.load(Ordering::Relaxed)))
                .collect(),
            unrecorded: self.unrecorded.load(Ordering::Relaxed),
            lag_seconds: self.lag.snapshot(),
        }
    }
}

/// A delivery counted in [`DispatchSnapshot::in_flight`].
pub(crate) struct InFlight<'a>(&'a DispatchStats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_the_lag_histogram_add_up() {
        let s = DispatchStats::default();
        s.lease_pass(3);
        s.lease_pass(2);
        s.lag(50);
        s.lag(-5);
        s.lag(2_000);
        s.transition(EventKind::Delivered);
        s.transition(EventKind::Delivered);
        s.transition(EventKind::Failed);
        s.unrecorded();
        let held = s.delivering();
        let snap = s.snapshot();
        assert_eq!((snap.due, snap.leased, snap.in_flight), (2, 5, 1));
        drop(held);
        assert_eq!(s.snapshot().in_flight, 0);
        let count = |kind| {
            snap.transitions
                .iter()
                .find(|(k, _)| *k == kind)
                .map(|(_, n)| *n)
        };
        assert_eq!(count(EventKind::Delivered), Some(2));
        assert_eq!(count(EventKind::Failed), Some(1));
        assert_eq!(count(EventKind::TimedOut), Some(0));
        assert_eq!(snap.transitions.len(), EventKind::ALL.len());
        assert_eq!(snap.unrecorded, 1);
        assert_eq!(snap.lag_seconds.count, 3);
        assert_eq!(
            snap.lag_seconds.buckets[0],
            (0.01, 1),
            "a negative lag counts as 0"
        );
        assert_eq!(snap.lag_seconds.buckets[1], (0.05, 2));
        assert_eq!(snap.lag_seconds.buckets[6], (2.5, 3));
    }
}
