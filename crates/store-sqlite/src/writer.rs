//! The single writer: one thread owns the only writing connection and commits queued jobs in
//! groups, so that concurrent ingest calls share one transaction and one fsync.
//!
//! Durability is pipelined. The writer commits with `synchronous = NORMAL` (the WAL is written
//! but not fsynced) and hands the committed group to the syncer thread, which fsyncs the WAL
//! file once for every group committed meanwhile and only then acknowledges their jobs. So an
//! acknowledged write has been fsynced (it survives `kill -9` and power loss alike), while the
//! writer goes on building the next group instead of waiting for the disk.
//!
//! Each job runs inside its own savepoint: one failing job is rolled back alone and the rest of
//! its group still commits.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::Instant;

use apitrail_store::{Histogram, StoreError};
use rusqlite::Connection;
use tokio::sync::oneshot;

/// A unit of work for the writer.
trait Job: Send {
    /// Request logs in the job, for admission control and statistics.
    fn records(&self) -> usize;
    /// Runs the job inside the group's transaction; `false` when it failed.
    fn apply(&mut self, conn: &Connection) -> bool;
    /// Reports the outcome once the group's fate is known.
    fn finish(self: Box<Self>, committed: Result<(), String>);
    /// Whether the answer waits for the WAL's fsync (everything acknowledged to a client
    /// does); a job that may be lost with a power failure is answered at commit.
    fn durable(&self) -> bool;
}

struct TypedJob<T, F> {
    records: usize,
    durable: bool,
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn records(&self) -> usize {
        self.records
    }

    fn durable(&self) -> bool {
        self.durable
    }

    fn apply(&mut self, conn: &Connection) -> bool {
        let result = match self.work.take() {
            Some(work) => work(conn),
            None => Err(StoreError::backend(WriterError("job applied twice".into()))),
        };
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, committed: Result<(), String>) {
        let outcome = match (committed, self.result) {
            (Ok(()), Some(result)) => result,
            (Ok(()), None) => Err(StoreError::backend(WriterError("job never ran".into()))),
            // A job that failed on its own keeps its own error; the others learn the commit
            // failed.
            (Err(_), Some(Err(e))) => Err(e),
            (Err(msg), _) => Err(StoreError::backend(WriterError(msg))),
        };
        // The caller may have given up waiting; the write happened regardless.
        let _ = self.reply.send(outcome);
    }
}

/// A failure inside the writer, reported to every job it affected.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct WriterError(pub String);

/// Write-path counters shared with [`crate::SqliteStore::stats`].
#[derive(Debug)]
pub(crate) struct WriterStats {
    pub queued_records: AtomicUsize,
    pub commits: AtomicU64,
    pub committed_records: AtomicU64,
    pub commit_seconds: Histogram,
    pub fsync_seconds: Histogram,
    pub group_records: Histogram,
}

/// The handle through which the rest of the store submits writes.
#[derive(Debug)]
pub(crate) struct Writer {
    sender: RwLock<Option<Sender<Box<dyn Job>>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    capacity: usize,
    pub stats: Arc<WriterStats>,
}

/// How the writer groups work.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterConfig {
    /// Records allowed in the queue (waiting or being written) before writes are refused.
    pub queue_capacity: usize,
    /// Records after which a group stops taking more jobs.
    pub max_group_records: usize,
}

impl Writer {
    /// Starts the writer thread on `conn` (whose database's WAL is `wal`) and the syncer
    /// thread. `after_commit` runs on the writer's connection after every group, between
    /// transactions: the place for housekeeping that must not race the writer.
    pub fn start(
        conn: Connection,
        wal: PathBuf,
        config: WriterConfig,
        after_commit: impl Fn(&Connection) + Send + 'static,
    ) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<Box<dyn Job>>();
        let (synced_tx, synced_rx) = std::sync::mpsc::channel::<Committed>();
        let stats = Arc::new(WriterStats {
            queued_records: AtomicUsize::new(0),
            commits: AtomicU64::new(0),
            committed_records: AtomicU64::new(0),
            commit_seconds: Histogram::new(Histogram::SECONDS),
            fsync_seconds: Histogram::new(Histogram::SECONDS),
            group_records: Histogram::new(Histogram::RECORDS),
        });
        let syncer_stats = Arc::clone(&stats);
        let syncer = std::thread::Builder::new()
            .name("apitrail-sqlite-syncer".into())
            .spawn(move || sync_loop(&wal, synced_rx, &syncer_stats))?;
        let writer_stats = Arc::clone(&stats);
        let writer = std::thread::Builder::new()
            .name("apitrail-sqlite-writer".into())
            .spawn(move || run(conn, rx, synced_tx, config, &writer_stats, after_commit))?;
        Ok(Self {
            sender: RwLock::new(Some(tx)),
            // The writer first: it drains the queue, then its exit closes the syncer's channel.
            threads: Mutex::new(vec![writer, syncer]),
            capacity: config.queue_capacity,
            stats,
        })
    }

    /// The queue's capacity in records.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Queues `work` and waits for its group to commit. Jobs carrying records are refused
    /// with `Overloaded` when the queue is full; control jobs (`records == 0`) always queue.
    pub async fn submit<T, F>(&self, records: usize, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit_job(records, true, work).await
    }

    /// Like [`Writer::submit`], but answered as soon as the group commits (visible to every
    /// reader, safe from `kill -9`), without waiting for the fsync: for bookkeeping whose
    /// loss to a power failure is harmless (an action lease: the record is leased again).
    pub async fn submit_volatile<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.submit_job(0, false, work).await
    }

    async fn submit_job<T, F>(
        &self,
        records: usize,
        durable: bool,
        work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, wait) = oneshot::channel();
        let job = Box::new(TypedJob {
            records,
            durable,
            work: Some(work),
            result: None,
            reply,
        });
        {
            let sender = self.sender.read().unwrap_or_else(|e| e.into_inner());
            let Some(sender) = sender.as_ref() else {
                return Err(StoreError::Closed);
            };
            if records > 0 {
                apitrail_store::admit(&self.stats.queued_records, records, self.capacity)?;
            }
            if sender.send(job).is_err() {
                self.stats
                    .queued_records
                    .fetch_sub(records, Ordering::AcqRel);
                return Err(StoreError::Closed);
            }
        }
        wait.await.unwrap_or(Err(StoreError::Closed))
    }

    /// Stops accepting jobs, lets the thread commit everything queued, and waits for it.
    pub fn shutdown(&self) {
        drop(
            self.sender
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
        let handles: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for handle in handles {
            if handle.join().is_err() {
                tracing::error!("a SQLite writer thread panicked");
            }
        }
    }
}

/// A committed group on its way to the syncer.
struct Committed {
    jobs: Vec<Box<dyn Job>>,
}

fn run(
    conn: Connection,
    rx: Receiver<Box<dyn Job>>,
    synced: Sender<Committed>,
    config: WriterConfig,
    stats: &WriterStats,
    after_commit: impl Fn(&Connection),
) {
    let mut group: Vec<Box<dyn Job>> = Vec::new();
    // Blocks for the first job of each group, then takes whatever else is already waiting:
    // under load groups grow by themselves, and an idle writer adds no latency.
    while let Ok(first) = rx.recv() {
        let mut records = first.records();
        group.push(first);
        while records < config.max_group_records {
            match rx.try_recv() {
                Ok(job) => {
                    records += job.records();
                    group.push(job);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let started = Instant::now();
        let committed = commit_group(&conn, &mut group);
        let elapsed = started.elapsed().as_secs_f64();
        match committed {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
                stats
                    .committed_records
                    .fetch_add(records as u64, Ordering::Relaxed);
                stats.commit_seconds.observe(elapsed);
                stats.group_records.observe(records as f64);
                let (jobs, volatile): (Vec<_>, Vec<_>) = std::mem::take(&mut group)
                    .into_iter()
                    .partition(|j| j.durable());
                finish_all(volatile, &Ok(()), stats);
                if jobs.is_empty() {
                    // Nothing waits for an fsync.
                } else if let Err(lost) = synced.send(Committed { jobs }) {
                    // The syncer is gone (it only stops after the writer): answer here.
                    finish_all(lost.0.jobs, &Err("the syncer stopped".into()), stats);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, jobs = group.len(), "group commit failed");
                finish_all(std::mem::take(&mut group), &Err(e), stats);
            }
        }
        after_commit(&conn);
    }
    tracing::debug!("SQLite writer drained and stopped");
}

/// Copies what is left of the WAL into the database and makes the next transaction start the
/// WAL from its beginning. A background checkpointer alone cannot do this under a writer that
/// never pauses: it keeps copying, but the WAL only restarts once every frame is copied at the
/// moment a transaction begins, so the file would grow without bound (and slow every read).
/// The checkpointer has copied most frames already, so this pause is short; the database
/// file is fsynced before the WAL is reused, so nothing committed is put at risk.
pub(crate) fn restart_wal(conn: &Connection) {
    let started = Instant::now();
    match conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
        ))
    }) {
        Ok((busy, log, copied)) => tracing::debug!(
            busy,
            log,
            copied,
            ms = started.elapsed().as_millis() as u64,
            "WAL restarted"
        ),
        Err(e) => tracing::warn!(error = %e, "WAL restart checkpoint failed"),
    }
}

/// Answers every job, releasing its queue space first so that a caller who has its answer can
/// submit again at once without being refused for its own records.
fn finish_all(jobs: Vec<Box<dyn Job>>, outcome: &Result<(), String>, stats: &WriterStats) {
    for job in jobs {
        stats
            .queued_records
            .fetch_sub(job.records(), Ordering::AcqRel);
        job.finish(outcome.clone());
    }
}

/// Fsyncs the WAL for every batch of committed groups, then acknowledges them.
fn sync_loop(wal: &Path, rx: Receiver<Committed>, stats: &WriterStats) {
    let mut file: Option<(std::fs::File, u64)> = None;
    while let Ok(first) = rx.recv() {
        let mut pending = vec![first];
        while let Ok(more) = rx.try_recv() {
            pending.push(more);
        }
        let started = Instant::now();
        let outcome = sync_wal(wal, &mut file);
        stats.fsync_seconds.observe(started.elapsed().as_secs_f64());
        if let Err(e) = &outcome {
            tracing::error!(error = %e, "fsync of the WAL failed; the affected writes are reported as failed");
        }
        for group in pending {
            finish_all(group.jobs, &outcome, stats);
        }
    }
}

/// Flushes the WAL file to disk. The file is reopened if it was replaced, so the fsync always
/// reaches the file SQLite wrote to; any descriptor of a file flushes all of its dirty pages.
fn sync_wal(path: &Path, file: &mut Option<(std::fs::File, u64)>) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let current = std::fs::metadata(path)
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?
        .ino();
    if file.as_ref().is_none_or(|(_, ino)| *ino != current) {
        let f = std::fs::File::open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        *file = Some((f, current));
    }
    match file {
        Some((f, _)) => f
            .sync_data()
            .map_err(|e| format!("fsync of {} failed: {e}", path.display())),
        None => Err("no WAL file".into()),
    }
}

fn commit_group(conn: &Connection, group: &mut [Box<dyn Job>]) -> Result<(), String> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| format!("begin: {e}"))?;
    for job in group.iter_mut() {
        let mut applied = false;
        let step = conn.execute_batch("SAVEPOINT job").and_then(|()| {
            if job.apply(conn) {
                applied = true;
                conn.execute_batch("RELEASE job")
            } else {
                conn.execute_batch("ROLLBACK TO job; RELEASE job")
            }
        });
        // The stats rollups a job staged count only if its records stay.
        crate::rollups::job_finished(applied && step.is_ok());
        if let Err(e) = step {
            crate::rollups::abandon();
            let _ = conn.execute_batch("ROLLBACK");
            return Err(format!("savepoint: {e}"));
        }
    }
    // The group's stats rollups, summed over its jobs: each touched bucket written once.
    if let Err(e) = crate::rollups::flush(conn) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(format!("stats rollups: {e}"));
    }
    conn.execute_batch("COMMIT").map_err(|e| {
        let _ = conn.execute_batch("ROLLBACK");
        format!("commit: {e}")
    })
}
