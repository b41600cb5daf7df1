//! Partition upkeep of `request_logs`, partitioned by UTC day of `created_at` (migration
//! 0003): the partitions known to exist, making the ones a write needs (a day inside the
//! window its own, an older one the coarse partition of its gap, migration 0007), making the
//! coming days' ahead of time, and dropping whole days for retention.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use apitrail_model::Timestamp;
use apitrail_store::StoreError;
use tokio_postgres::Client;

use crate::reader::Sql;
use crate::{backend, begin, commit, conn};

/// The partitions known to exist, as `lo -> hi` in Unix ms: a cache, so that a write asks
/// the database only about days no known partition holds. A partition dropped by another
/// server is noticed when a write fails, and the cache is read again.
#[derive(Debug)]
pub(crate) struct Partitions {
    known: Mutex<BTreeMap<i64, i64>>,
    /// See [`crate::PgOptions::partition_window_days`].
    window_days: i64,
}

impl Partitions {
    /// An empty cache; days older than `window_days` before today share coarse partitions.
    pub(crate) fn new(window_days: u32) -> Self {
        Self {
            known: Mutex::new(BTreeMap::new()),
            window_days: i64::from(window_days),
        }
    }

    /// Makes sure partitions hold `days`, asking the database only about days no known
    /// partition holds. A day inside the window gets its own partition; an older one the
    /// coarse partition of its gap, which then holds the other days of that gap too.
    pub(crate) async fn ensure(
        &self,
        client: &Client,
        days: impl IntoIterator<Item = i64>,
    ) -> Result<(), StoreError> {
        let mut days: Vec<i64> = days.into_iter().collect();
        days.sort_unstable();
        days.dedup();
        let first_day = day_of(Timestamp::now().millis()) - self.window_days;
        for day in days {
            if self.holds(day) {
                continue;
            }
            let (lo, hi) = make_home(client, day, first_day).await?;
            self.known().insert(lo, hi);
        }
        Ok(())
    }

    /// Whether a known partition holds `day`.
    fn holds(&self, day: i64) -> bool {
        let at = day.saturating_mul(DAY_MS);
        self.known()
            .range(..=at)
            .next_back()
            .is_some_and(|(_, hi)| at < *hi)
    }

    /// Forgets the partition starting at `lo` (dropped).
    pub(crate) fn forget(&self, lo: i64) {
        self.known().remove(&lo);
    }

    /// Forgets every partition (one this process knew was dropped elsewhere).
    pub(crate) fn forget_all(&self) {
        self.known().clear();
    }

    fn known(&self) -> MutexGuard<'_, BTreeMap<i64, i64>> {
        // The set is only a cache; a panic elsewhere cannot leave it inconsistent.
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The days whose partitions are kept ready: yesterday (clocks differ) to a week ahead.
pub(crate) fn days_ahead() -> std::ops::RangeInclusive<i64> {
    let today = day_of(Timestamp::now().millis());
    today - 1..=today + 7
}

/// Makes the coming days' partitions every hour, so that the write path rarely has to.
pub(crate) async fn maintain(url: Arc<str>, partitions: Arc<Partitions>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    tick.tick().await;
    loop {
        tick.tick().await;
        let made = async {
            let client = conn::connect(&url, conn::PLAIN).await?;
            partitions.ensure(&client, days_ahead()).await
        };
        if let Err(e) = made.await {
            tracing::warn!(error = %e, "could not make the coming days' partitions");
        }
    }
}

/// Milliseconds in a UTC day, the width of a partition.
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The partition (UTC day since 1970-01-01) a `created_at` falls in.
pub(crate) fn day_of(created_at_ms: i64) -> i64 {
    created_at_ms.div_euclid(DAY_MS)
}

/// The partitions of `request_logs`: `(table name, lo, hi)`, holding `[lo, hi)` in Unix ms.
pub(crate) async fn list(c: &impl Sql) -> Result<Vec<(String, i64, i64)>, StoreError> {
    c.all(
        "SELECT name, lo, hi FROM apitrail_request_log_bounds() ORDER BY lo",
        &[],
        |r| Ok((r.get(0), r.get(1), r.get(2))),
    )
    .await
}

/// Drops a partition retention has emptied of live days. Waits at most a few seconds for
/// the exclusive lock on the parent (long reads would otherwise queue every query behind
/// the DROP); a partition not dropped now is dropped by the next pass.
pub(crate) async fn drop_partition(
    client: &mut Client,
    name: &str,
    (lo, hi): (i64, i64),
) -> Result<bool, StoreError> {
    let tx = begin(client).await?;
    tx.batch("SET LOCAL lock_timeout = '5s'").await?;
    let sql = format!("DROP TABLE IF EXISTS \"{}\"", name.replace('"', "\"\""));
    match tx.batch_execute(&sql).await {
        Ok(()) => {
            // After the DROP, which waited for every write to the table to end, so no
            // ingest holds these rows.
            tx.exec(
                "DELETE FROM request_log_counts WHERE day >= $1 AND day < $2",
                &[&day_of(lo), &day_of(hi)],
            )
            .await?;
            commit(tx).await?;
            Ok(true)
        }
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            tracing::info!(
                partition = name,
                "retention: partition busy, dropped next time"
            );
            Ok(false)
        }
        Err(e) => Err(backend(e)),
    }
}

/// Makes sure a partition holds UTC day `day` and returns its bounds `[lo, hi)` in Unix ms:
/// the day's own when `day >= first_day`, else the coarse partition of the gap below the
/// window (see migration 0007). Servers racing for the same day are serialized in the
/// database; the few errors a race with a version-6 server can still raise are retried.
pub(crate) async fn make_home(
    c: &impl Sql,
    day: i64,
    first_day: i64,
) -> Result<(i64, i64), StoreError> {
    use tokio_postgres::error::SqlState;
    let mut attempt = 0;
    loop {
        match c
            .query_one(
                "SELECT lo, hi FROM apitrail_request_log_home($1, $2)",
                &[&day, &first_day],
            )
            .await
        {
            Ok(row) => return Ok((row.get(0), row.get(1))),
            Err(e)
                if attempt < 5
                    && e.code().is_some_and(|code| {
                        [
                            SqlState::DUPLICATE_TABLE,
                            SqlState::UNIQUE_VIOLATION,
                            SqlState::T_R_DEADLOCK_DETECTED,
                            SqlState::INVALID_OBJECT_DEFINITION,
                            SqlState::WRONG_OBJECT_TYPE,
                        ]
                        .contains(code)
                    }) =>
            {
                attempt += 1;
                tracing::debug!(day, error = %e, "making a partition raced; retrying");
            }
            Err(e) => return Err(backend(e)),
        }
    }
}
