//! Where records go: a bounded buffer between the forwarding path and a [`Sink`], and the
//! embedded store as a sink. The forwarding path only ever `try_send`s into the buffer, so a
//! slow or absent sink costs traffic nothing: when the buffer is full the record is dropped
//! and counted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apitrail_model::{OrgId, RequestLog, Tenant};
use apitrail_store::{LogBatch, Store, StoreError};
use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::stats::{DropReason, ProxyStats};

/// A finished exchange on its way to a sink.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The org the record belongs to.
    pub org: OrgId,
    /// The record, validated, with an id minted by the proxy.
    pub log: RequestLog,
}

/// What became of a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    /// Records stored.
    pub recorded: u64,
    /// Records whose org the store does not know.
    pub unknown_org: u64,
    /// Records the sink failed to store (after its own retries).
    pub failed: u64,
}

/// Something that stores captured records. A call may take as long as it needs (records
/// queue in the buffer meanwhile, then are dropped); it must account for every record.
#[async_trait]
pub trait Sink: Send + Sync + std::fmt::Debug + 'static {
    /// Stores `batch` as well as it can.
    async fn write(&self, batch: Vec<Captured>) -> Written;
}

/// Most records handed to a sink in one call.
pub const MAX_BATCH: usize = 5_000;

/// The forwarding path's end of the buffer.
#[derive(Debug, Clone)]
pub(crate) struct Buffer {
    tx: mpsc::Sender<Captured>,
    stats: Arc<ProxyStats>,
}

impl Buffer {
    /// Records waiting now, and the most that may wait.
    pub(crate) fn fill(&self) -> (usize, usize) {
        let max = self.tx.max_capacity();
        (max - self.tx.capacity(), max)
    }

    /// Queues a record, or drops and counts it when the buffer is full. Never waits.
    pub(crate) fn push(&self, record: Captured) {
        match self.tx.try_send(record) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.record_drop(DropReason::BufferFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.record_drop(DropReason::Shutdown)
            }
        }
    }
}

/// The task draining the buffer into the sink.
#[derive(Debug)]
pub(crate) struct Writer {
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Writer {
    /// Starts the writer over a buffer of `capacity` records.
    pub(crate) fn spawn(
        sink: Arc<dyn Sink>,
        capacity: usize,
        stats: Arc<ProxyStats>,
    ) -> (Buffer, Self) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(run(rx, sink, Arc::clone(&stats), stop_rx));
        (
            Buffer { tx, stats },
            Self {
                stop: Some(stop_tx),
                task,
            },
        )
    }

    /// Writes what is buffered now, then stops. Records pushed after this are dropped (as
    /// `shutdown`).
    pub(crate) async fn finish(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Err(e) = (&mut self.task).await {
            tracing::error!(error = %e, "the proxy's record writer failed");
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<Captured>,
    sink: Arc<dyn Sink>,
    stats: Arc<ProxyStats>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut stopping = false;
    loop {
        let first = if stopping {
            match rx.try_recv() {
                Ok(record) => record,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                record = rx.recv() => match record {
                    Some(record) => record,
                    None => break,
                },
                _ = &mut stop => {
                    stopping = true;
                    continue;
                }
            }
        };
        // No timer: a batch is whatever arrived while the previous one was written, so an
        // idle proxy writes each record at once and a busy one writes large batches.
        let mut batch = Vec::with_capacity(rx.len().min(MAX_BATCH) + 1);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(record) => batch.push(record),
                Err(_) => break,
            }
        }
        let size = batch.len() as u64;
        let started = Instant::now();
        let written = sink.write(batch).await;
        stats
            .sink_batch_seconds
            .observe(started.elapsed().as_secs_f64());
        stats
            .recorded
            .fetch_add(written.recorded, Ordering::Relaxed);
        stats.record_drops(DropReason::UnknownOrg, written.unknown_org);
        stats.record_drops(DropReason::SinkFailed, written.failed);
        let unaccounted =
            size.saturating_sub(written.recorded + written.unknown_org + written.failed);
        stats.record_drops(DropReason::SinkFailed, unaccounted);
    }
}

/// The embedded store as a sink: records are grouped by org into one atomic
/// `insert_request_logs` call, the group-committed write path `serve`'s ingest uses.
#[derive(Debug)]
pub struct StoreSink {
    store: Arc<dyn Store>,
    tenants: Mutex<HashMap<OrgId, Known>>,
}

#[derive(Debug, Clone)]
enum Known {
    Org(Tenant),
    /// Not found at that time; asked again after [`RECHECK_MISSING`].
    Missing(Instant),
}

/// How long an org found missing is taken as missing (it may be created meanwhile).
const RECHECK_MISSING: Duration = Duration::from_secs(5);
/// How long a full write queue is waited out before a batch is given up.
const OVERLOAD_PATIENCE: Duration = Duration::from_secs(5);

impl StoreSink {
    /// A sink writing into `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    async fn tenant(&self, org: &OrgId) -> Result<Option<Tenant>, StoreError> {
        let cached = self
            .tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(org)
            .cloned();
        match cached {
            Some(Known::Org(t)) => return Ok(Some(t)),
            Some(Known::Missing(at)) if at.elapsed() < RECHECK_MISSING => return Ok(None),
            _ => {}
        }
        let found = self.store.tenant(org).await?;
        let known = match &found {
            Some(t) => Known::Org(t.clone()),
            None => Known::Missing(Instant::now()),
        };
        self.tenants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(org.clone(), known);
        Ok(found)
    }
}

#[async_trait]
impl Sink for StoreSink {
    async fn write(&self, batch: Vec<Captured>) -> Written {
        let mut by_org: HashMap<OrgId, Vec<RequestLog>> = HashMap::new();
        for c in batch {
            by_org.entry(c.org).or_default().push(c.log);
        }
        let mut written = Written::default();
        let mut batches = Vec::with_capacity(by_org.len());
        for (org, logs) in by_org {
            match self.tenant(&org).await {
                Ok(Some(tenant)) => batches.push(LogBatch::minted(tenant, logs)),
                Ok(None) => {
                    tracing::debug!(org = org.as_str(), records = logs.len(), "unknown org");
                    written.unknown_org += logs.len() as u64;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look up an org; records dropped");
                    written.failed += logs.len() as u64;
                }
            }
        }
        if batches.is_empty() {
            return written;
        }
        let count: u64 = batches.iter().map(|b| b.logs.len() as u64).sum();
        let deadline = Instant::now() + OVERLOAD_PATIENCE;
        loop {
            match self.store.insert_request_logs(batches.clone()).await {
                // Duplicates cannot happen (ids are minted here); they were stored anyway.
                Ok(outcome) => {
                    written.recorded += outcome.accepted + outcome.duplicates;
                    return written;
                }
                Err(StoreError::Overloaded { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, records = count, "cannot store captured records");
                    written.failed += count;
                    return written;
                }
            }
        }
    }
}
