//! What the live tail needs from a store: each org's records in the order in which they
//! become visible, resumable from any record, with no gaps.
//!
//! Neither `created_at` (set by the client) nor the id (minted before the write waits in a
//! queue) gives that order: records are written by group commits, from several processes on
//! one SQLite file or several servers on one PostgreSQL. So each backend gives every record a
//! [`TailPosition`] at write time such that a reader that has seen every record up to a
//! position never sees another record at or below it later. ARCHITECTURE.md says how each
//! backend keeps that promise.

use std::sync::Arc;

/// Which records a tail follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TailKind {
    /// Request logs.
    RequestLogs,
    /// Audit entries.
    AuditEntries,
}

/// A record's place in its org's order of visibility, compared as `(major, minor)`. What the
/// two numbers mean is the backend's business (SQLite: 0 and a counter; PostgreSQL: the
/// writing transaction's id and a sequence value; audit entries: 0 and the chain position).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TailPosition {
    /// The first key.
    pub major: i64,
    /// The second key.
    pub minor: i64,
}

impl TailPosition {
    /// The position `(major, minor)`.
    pub const fn new(major: i64, minor: i64) -> Self {
        Self { major, minor }
    }
}

/// Where a tail that starts now starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TailStart {
    /// Records after this position may be sent.
    pub after: TailPosition,
    /// Records after `after` that were nevertheless stored before the start, to skip (a
    /// backend whose horizon lags behind the present says which).
    pub stored_before: Option<TailSnapshot>,
}

/// The transactions a PostgreSQL snapshot saw as committed above its xmin: every id below
/// `xmax` except those `running`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TailSnapshot {
    /// The first transaction id the snapshot did not see.
    pub xmax: i64,
    /// Transactions that were running when the snapshot was taken.
    pub running: Vec<i64>,
}

impl TailSnapshot {
    /// Whether the record at `pos` (whose `major` is its transaction id) was committed when
    /// the snapshot was taken.
    pub fn saw(&self, pos: TailPosition) -> bool {
        pos.major < self.xmax && !self.running.contains(&pos.major)
    }
}

/// Called by a store after every commit that may have added records to a tail, from the
/// writing thread: it must be cheap and must not block.
pub type CommitHook = Arc<dyn Fn() + Send + Sync>;
