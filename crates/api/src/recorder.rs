//! The self-log and key-usage recorder: queues the self-logs of calls (and API keys'
//! `last_used_at` updates) for a background task that writes them in batches, so a call never
//! waits for its own log to be written; a log is stored within about 100 ms.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apitrail_model::{ApiKey, RequestLog, Tenant, Timestamp};
use apitrail_store::{LogBatch, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use uuid::Uuid;

enum Msg {
    Log(Tenant, Box<RequestLog>),
    Touch(Uuid, Timestamp),
    Flush(oneshot::Sender<()>),
}

/// Queues self-logs and key usage for the background writer task.
#[derive(Debug)]
pub struct Recorder {
    tx: mpsc::Sender<Msg>,
    last_touch: Mutex<HashMap<Uuid, Instant>>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Msg::Log(..) => "Log",
            Msg::Touch(..) => "Touch",
            Msg::Flush(..) => "Flush",
        })
    }
}

/// How often a key's `last_used_at` is written at most.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
/// Logs waiting for the background task before new ones are dropped.
const QUEUE: usize = 20_000;
/// How long the task gathers logs into one write.
const GATHER: Duration = Duration::from_millis(50);
/// Most logs per write.
const BATCH: usize = 5_000;

impl Recorder {
    /// Starts the background task writing into `store`.
    pub fn spawn(store: Arc<dyn Store>) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(run(store, rx, Arc::clone(&dropped)));
        (
            Self {
                tx,
                last_touch: Mutex::new(HashMap::new()),
                dropped,
            },
            task,
        )
    }

    /// Queues a self-log; drops it (and counts the drop) if the queue is full, because a
    /// call must never wait for its own log.
    pub fn record(&self, tenant: Tenant, log: RequestLog) {
        if self.tx.try_send(Msg::Log(tenant, Box::new(log))).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(dropped = n + 1, "self-log queue full; dropping self-logs");
            }
        }
    }

    /// Notes that `key` was used, writing `last_used_at` at most once a minute per key.
    pub fn touch(&self, key: &ApiKey) {
        let now = Instant::now();
        {
            let mut last = self.last_touch.lock().unwrap_or_else(|e| e.into_inner());
            match last.get(&key.id) {
                Some(t) if now.duration_since(*t) < TOUCH_EVERY => return,
                _ => {
                    last.insert(key.id, now);
                }
            }
        }
        let _ = self.tx.try_send(Msg::Touch(key.id, Timestamp::now()));
    }

    /// Waits until everything queued so far is written.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Msg::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    /// Self-logs dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn run(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Msg>, dropped: Arc<AtomicU64>) {
    while let Some(first) = rx.recv().await {
        let mut logs: HashMap<Tenant, Vec<RequestLog>> = HashMap::new();
        let mut touches = Vec::new();
        let mut flushes = Vec::new();
        let mut count = 0;
        let mut take = |msg: Msg, count: &mut usize, flushes: &mut Vec<_>| match msg {
            Msg::Log(tenant, log) => {
                logs.entry(tenant).or_default().push(*log);
                *count += 1;
            }
            Msg::Touch(id, at) => touches.push((id, at)),
            Msg::Flush(done) => flushes.push(done),
        };
        take(first, &mut count, &mut flushes);
        let deadline = tokio::time::Instant::now() + GATHER;
        while count < BATCH && flushes.is_empty() {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(msg)) => take(msg, &mut count, &mut flushes),
                Ok(None) | Err(_) => break,
            }
        }
        if !logs.is_empty() {
            let batches: Vec<LogBatch> = logs
                .into_iter()
                .map(|(tenant, logs)| LogBatch::minted(tenant, logs))
                .collect();
            write_logs(store.as_ref(), batches, &dropped).await;
        }
        if !touches.is_empty()
            && let Err(e) = store.touch_api_keys(touches).await
        {
            tracing::warn!(error = %e, "could not record API key usage");
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Writes self-logs, riding out a full write queue for a few seconds before giving up.
async fn write_logs(store: &dyn Store, batches: Vec<LogBatch>, dropped: &AtomicU64) {
    let count: usize = batches.iter().map(|b| b.logs.len()).sum();
    for attempt in 0..50 {
        match store.insert_request_logs(batches.clone()).await {
            Ok(_) => return,
            Err(StoreError::Overloaded { .. }) if attempt < 49 => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => {
                dropped.fetch_add(count as u64, Ordering::Relaxed);
                tracing::warn!(error = %e, count, "could not write self-logs");
                return;
            }
        }
    }
}
