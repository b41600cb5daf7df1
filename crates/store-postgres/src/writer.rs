//! The group-commit ingest writer. `insert_request_logs` calls queue as [`LogJob`]s; each
//! of a few log writers takes everything queued (up to `max_group_records`) into one
//! transaction — claims for client-supplied ids, then one binary COPY of the records to
//! store, their day counts and new `request_log_values` — and answers the calls only after
//! COMMIT returned.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Instant;

use apitrail_model::is_minted_record_id;
use apitrail_store::{Histogram, IdOrigin, InsertOutcome, LogBatch, StoreError};
use tokio::sync::{Mutex, OwnedRwLockReadGuard, mpsc, oneshot};
use tokio_postgres::Client;
use uuid::Uuid;

use crate::partitions::{Partitions, day_of};
use crate::{Admitted, Writer, backend, begin, conn, request_logs};

/// State the log writers and the store share.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The partitions known to exist.
    pub(crate) partitions: Arc<Partitions>,
    /// Rows of `request_log_values` known to exist.
    pub(crate) values: KnownValues,
    /// Every committed write transaction, ingest or not.
    pub(crate) stats: CommitStats,
    /// Whether ingest keeps the stats rollups (`PgOptions::rollups`).
    pub(crate) rollups: bool,
}

/// Counts of committed write transactions, for `/metrics`.
#[derive(Debug)]
pub(crate) struct CommitStats {
    pub(crate) commits: AtomicU64,
    pub(crate) committed_records: AtomicU64,
    pub(crate) commit_seconds: Histogram,
    pub(crate) group_records: Histogram,
    /// Run after every commit: the live tail's wake-ups.
    pub(crate) hooks: crate::tail::Hooks,
}

impl CommitStats {
    pub(crate) fn new() -> Self {
        Self {
            commits: AtomicU64::new(0),
            committed_records: AtomicU64::new(0),
            commit_seconds: Histogram::new(Histogram::SECONDS),
            group_records: Histogram::new(Histogram::RECORDS),
            hooks: crate::tail::Hooks::default(),
        }
    }

    /// Counts a committed write transaction of `records` records that began at `started`.
    pub(crate) fn committed(&self, records: usize, started: Instant) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.committed_records
            .fetch_add(records as u64, Ordering::Relaxed);
        self.commit_seconds.observe(started.elapsed().as_secs_f64());
        self.group_records.observe(records as f64);
        self.hooks.run();
    }
}

/// Rows of `request_log_values` known to exist (they are never removed), so that ingest
/// adds only new ones.
#[derive(Debug, Default)]
pub(crate) struct KnownValues(std::sync::Mutex<HashSet<request_logs::Value>>);

impl KnownValues {
    /// Values remembered at most by [`KnownValues::noted`].
    const MAX: usize = 100_000;

    /// Those of `values` not known to be in `request_log_values` already.
    fn unknown(&self, mut values: Vec<request_logs::Value>) -> Vec<request_logs::Value> {
        let known = self.known();
        values.retain(|v| !known.contains(v));
        values
    }

    /// Remembers `values` as stored: called only once their transaction committed, since a
    /// value wrongly thought stored would hide records from the filters that check it.
    fn noted(&self, values: Vec<request_logs::Value>) {
        let mut known = self.known();
        // Client-chosen strings: the cache stays bounded whatever they send (values are
        // never removed from the table, so forgetting them only costs a redundant insert).
        if known.len() + values.len() > Self::MAX {
            known.clear();
        }
        known.extend(values);
    }

    fn known(&self) -> MutexGuard<'_, HashSet<request_logs::Value>> {
        // Only a cache; a panic elsewhere cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One `insert_request_logs` call waiting for (or inside) a group commit. It holds its
/// admission and the store's open guard until answered, also if the caller stopped waiting.
#[derive(Debug)]
pub(crate) struct LogJob {
    batches: Vec<LogBatch>,
    records: usize,
    done: oneshot::Sender<Result<InsertOutcome, StoreError>>,
    _admitted: Admitted,
    _open: OwnedRwLockReadGuard<bool>,
}

/// Where a [`LogJob`]'s call waits for its answer.
pub(crate) type LogAnswer = oneshot::Receiver<Result<InsertOutcome, StoreError>>;

impl LogJob {
    /// The job of a call storing `batches` (`records` records), which holds `admitted` and
    /// `open` until it is answered through the returned receiver.
    pub(crate) fn new(
        batches: Vec<LogBatch>,
        records: usize,
        admitted: Admitted,
        open: OwnedRwLockReadGuard<bool>,
    ) -> (Self, LogAnswer) {
        let (done, answer) = oneshot::channel();
        let job = Self {
            batches,
            records,
            done,
            _admitted: admitted,
            _open: open,
        };
        (job, answer)
    }
}

/// A group's failure, told to each of its calls.
#[derive(Debug, thiserror::Error)]
#[error("the group commit failed: {0}")]
struct GroupFailed(String);

/// A log writer: takes every queued ingest call (up to `max_records` records) into one
/// transaction, commits, and only then answers them. Ends when the store is dropped.
pub(crate) async fn log_writer(
    conn: Writer,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<LogJob>>>,
    shared: Arc<Shared>,
    max_records: usize,
    slot: i32,
) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = queue.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            let mut records = first.records;
            jobs.push(first);
            while records < max_records {
                match rx.try_recv() {
                    Ok(job) => {
                        records += job.records;
                        jobs.push(job);
                    }
                    Err(_) => break,
                }
            }
        }
        write_jobs(&conn, jobs, &shared, slot).await;
    }
}

/// Writes a group and answers its calls. If the group fails before its commit was sent
/// (nothing was stored), each call is tried again alone, on a reopened connection if the
/// group's was closed, so that one bad batch cannot fail the others and a dropped
/// connection fails none; if the commit itself failed, its outcome is unknown and every call
/// gets the error (a COMMIT is never retried).
async fn write_jobs(conn: &Writer, jobs: Vec<LogJob>, shared: &Shared, slot: i32) {
    let started = Instant::now();
    let records = jobs.iter().map(|j| j.records).sum();
    let mut client = match conn.lock().await {
        Ok(client) => client,
        Err(e) => return fail_all(jobs, &e),
    };
    match write_group(&mut client, &jobs, shared, slot).await {
        Ok(outcomes) => {
            shared.stats.committed(records, started);
            for (job, outcome) in jobs.into_iter().zip(outcomes) {
                let _ = job.done.send(Ok(outcome));
            }
        }
        Err(GroupError::Commit(e)) => {
            tracing::warn!(error = %e, calls = jobs.len(), "ingest commit failed");
            fail_all(jobs, &e);
        }
        Err(GroupError::Before(e)) => {
            let lost = client.is_closed() || conn::ended_session(&e);
            if jobs.len() == 1 && !lost {
                if let Some(job) = jobs.into_iter().next() {
                    let _ = job.done.send(Err(e));
                }
                return;
            }
            tracing::debug!(error = %e, calls = jobs.len(), "group failed; writing its calls one by one");
            if lost {
                // If no new connection opens, the calls below are told why.
                let _ = conn.replace(client).await;
            } else {
                drop(client);
            }
            for job in jobs {
                let started = Instant::now();
                let written = match conn.lock().await {
                    Ok(mut client) => {
                        write_group(&mut client, std::slice::from_ref(&job), shared, slot).await
                    }
                    Err(e) => Err(GroupError::Before(e)),
                };
                let answer = match written {
                    Ok(mut outcomes) => {
                        shared.stats.committed(job.records, started);
                        Ok(outcomes.pop().unwrap_or_default())
                    }
                    Err(GroupError::Before(e) | GroupError::Commit(e)) => Err(e),
                };
                let _ = job.done.send(answer);
            }
        }
    }
}

/// Answers every call of a group that failed with `e`.
fn fail_all(jobs: Vec<LogJob>, e: &StoreError) {
    let message = e.to_string();
    let unavailable = matches!(e, StoreError::Unavailable(_));
    for job in jobs {
        let failed = GroupFailed(message.clone());
        let _ = job.done.send(Err(if unavailable {
            StoreError::unavailable(failed)
        } else {
            StoreError::backend(failed)
        }));
    }
}

/// Where a group failed.
enum GroupError {
    /// Before COMMIT was sent: nothing was stored.
    Before(StoreError),
    /// At COMMIT: the outcome is unknown.
    Commit(StoreError),
}

/// One transaction for `jobs`, retried when a partition it needed was dropped meanwhile (by
/// retention on this or another server); returns each job's outcome.
async fn write_group(
    client: &mut Client,
    jobs: &[LogJob],
    shared: &Shared,
    slot: i32,
) -> Result<Vec<InsertOutcome>, GroupError> {
    let days: HashSet<i64> = jobs
        .iter()
        .flat_map(|j| &j.batches)
        .flat_map(|b| &b.logs)
        .map(|l| day_of(l.created_at.millis()))
        .collect();
    let mut attempt = 0;
    loop {
        shared
            .partitions
            .ensure(client, days.iter().copied())
            .await
            .map_err(GroupError::Before)?;
        match try_write_group(client, jobs, shared, slot).await {
            Err(GroupError::Before(StoreError::Backend(e)))
                if attempt < 3 && is_missing_partition(e.as_ref()) =>
            {
                attempt += 1;
                shared.partitions.forget_all();
            }
            other => return other,
        }
    }
}

/// "No partition of relation found for row": a partition this process knew was dropped.
fn is_missing_partition(e: &(dyn std::error::Error + 'static)) -> bool {
    e.downcast_ref::<tokio_postgres::Error>()
        .and_then(tokio_postgres::Error::code)
        == Some(&tokio_postgres::error::SqlState::CHECK_VIOLATION)
}

async fn try_write_group(
    client: &mut Client,
    jobs: &[LogJob],
    shared: &Shared,
    slot: i32,
) -> Result<Vec<InsertOutcome>, GroupError> {
    let before = GroupError::Before;
    // Client-supplied ids are claimed first; the first record (in call order) to carry an
    // id is the one stored, later ones are duplicates.
    let mut first: HashMap<(i64, Uuid), i64> = HashMap::new();
    for batch in jobs.iter().flat_map(|j| &j.batches) {
        if batch.ids == IdOrigin::Client {
            for log in &batch.logs {
                first
                    .entry((batch.tenant.key(), log.id))
                    .or_insert(log.created_at.millis());
            }
        }
    }
    let tx = begin(client).await.map_err(before)?;
    // Minted ids are stored without a claim, so a client sending one back (a record it read,
    // re-sent) is looked up among the records: such a record is a duplicate, and gets the
    // claim it lacked, with its own created_at so that retention removes both together.
    let sent_back: Vec<(i64, Uuid)> = first
        .keys()
        .filter(|(_, id)| is_minted_record_id(id))
        .copied()
        .collect();
    let mut stored = HashSet::new();
    for (org, id, created) in request_logs::stored_among(&tx, &sent_back)
        .await
        .map_err(before)?
    {
        first.insert((org, id), created);
        stored.insert((org, id));
    }
    let mut claims: Vec<(i64, Uuid, i64)> = first
        .into_iter()
        .map(|((org, id), created)| (org, id, created))
        .collect();
    claims.sort_unstable();
    let mut claimed: HashSet<(i64, Uuid)> = request_logs::claim(&tx, &claims)
        .await
        .map_err(before)?
        .into_iter()
        .filter(|key| !stored.contains(key))
        .collect();
    let mut outcomes = Vec::with_capacity(jobs.len());
    let mut rows = Vec::new();
    for job in jobs {
        let mut outcome = InsertOutcome::default();
        for batch in &job.batches {
            let org = batch.tenant.key();
            for log in &batch.logs {
                if batch.ids == IdOrigin::Minted || claimed.remove(&(org, log.id)) {
                    rows.push((org, log));
                    outcome.accepted += 1;
                } else {
                    outcome.duplicates += 1;
                }
            }
        }
        outcomes.push(outcome);
    }
    request_logs::copy(&tx, &rows).await.map_err(before)?;
    request_logs::count_stored(&tx, slot, &rows)
        .await
        .map_err(before)?;
    if shared.rollups {
        crate::rollups::write(&tx, slot, &rows)
            .await
            .map_err(before)?;
    }
    let values = shared.values.unknown(request_logs::values_of(&rows));
    request_logs::note_values(&tx, &values)
        .await
        .map_err(before)?;
    tx.commit()
        .await
        .map_err(|e| GroupError::Commit(backend(e)))?;
    shared.values.noted(values);
    Ok(outcomes)
}
