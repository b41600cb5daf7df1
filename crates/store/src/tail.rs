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

/// Called by a store after every commit that may have added records to a tail, from the
/// writing thread: it must be cheap and must not block.
pub type CommitHook = Arc<dyn Fn() + Send + Sync>;
