//! The live tail's fan-out: one poller per org and kind on this server, feeding every open
//! tail of that org through a bounded queue.
//!
//! A tail first catches up on its own from its start position (`TailHub::read`, paced by
//! its client, so a resume from far back buffers nothing), then attaches to its org's poller
//! ([`TailHub::attach`]: its filter, its position, its queue). The org's
//! poller reads the org's records after the lowest position of its tails from the store
//! (`Store::tail_request_logs` / `tail_audit_entries`, which stop at the store's safe
//! horizon), renders each record once, and offers it to every tail whose filter matches with
//! `try_send`: it never waits for a client. A tail whose queue is full has fallen behind: it
//! is dropped from the poller, and its stream ends with an error event saying where to
//! resume. The poller wakes when this process commits (the store's commit hook), when a tail
//! joins, and every poll interval (for writes of other processes and servers); it exits when
//! its org has no tail left. This module knows no dialect: records are rendered by the
//! caller's [`Render`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apitrail_model::{AuditEntry, AuditFilter, LogFilter, OrgId, RequestLog, Tenant};
use apitrail_store::{Store, StoreError, TailKind, TailPosition, TailSnapshot};
use tokio::sync::{Notify, mpsc, watch};

/// Limits and timings of live tails.
#[derive(Debug, Clone)]
pub struct TailConfig {
    /// Time between heartbeat comments on an idle tail.
    pub heartbeat: Duration,
    /// Time between reads when nothing woke the poller (writes of other processes).
    pub poll_interval: Duration,
    /// Least time between two reads of one poller: the commits in between are read at once
    /// (every commit wakes every poller of the server, whatever org it wrote). It doubles
    /// after each read that found nothing, up to `poll_interval`.
    pub min_read_interval: Duration,
    /// Open tails allowed per org (both kinds together); more are refused with 429.
    pub max_per_org: usize,
    /// Open tails allowed on this server; more are refused with 429.
    pub max_total: usize,
    /// Events a tail may have waiting to be sent; a tail that has this many waiting when
    /// another arrives is detached from the poller and catches up on its own, reading the
    /// store at its client's pace.
    pub queue: usize,
    /// How long a detached tail may take to catch up; one still behind after this is sent an
    /// error event and disconnected (zero: at once).
    pub max_lag: Duration,
}

impl Default for TailConfig {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(15),
            poll_interval: Duration::from_millis(250),
            min_read_interval: Duration::from_millis(50),
            max_per_org: 64,
            max_total: 2_048,
            queue: 1_024,
            max_lag: Duration::from_secs(30),
        }
    }
}

/// Records read per store call.
const PAGE: u32 = 1_000;

/// A record as a tail sends it: its id and the dialect item's JSON, rendered once for every
/// tail that receives it.
#[derive(Debug)]
pub struct TailEvent {
    /// The record's position.
    pub pos: TailPosition,
    /// The record's id (the SSE `id`).
    pub id: String,
    /// The dialect item, as JSON (the SSE `data`).
    pub json: String,
}

/// What a tail wants: its kind's filter.
#[derive(Debug, Clone)]
pub enum TailFilter {
    /// Request logs matching this filter.
    Logs(LogFilter),
    /// Audit entries matching this filter.
    Audit(AuditFilter),
}

impl TailFilter {
    fn kind(&self) -> TailKind {
        match self {
            Self::Logs(_) => TailKind::RequestLogs,
            Self::Audit(_) => TailKind::AuditEntries,
        }
    }

    /// Whether the tail wants `record`.
    pub fn matches(&self, record: &Record) -> bool {
        match (self, record) {
            (Self::Logs(f), Record::Log(log)) => f.matches(log),
            (Self::Audit(f), Record::Audit(e)) => f.matches(e),
            _ => false,
        }
    }
}

/// A record read for a tail.
#[derive(Debug)]
pub enum Record {
    /// A request log (boxed: the variants differ much in size, and pages hold many).
    Log(Box<RequestLog>),
    /// An audit entry.
    Audit(AuditEntry),
}

/// Renders a record as the dialect item its tail sends; `None` when it cannot (logged).
pub type Render = fn(&OrgId, &Record) -> Option<String>;

/// Why a tail could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The org has as many tails open as allowed.
    #[error("this org has {0} live tails open, the most allowed; close one and retry")]
    OrgFull(usize),
    /// The server has as many tails open as allowed.
    #[error("this server has {0} live tails open, the most allowed; retry later")]
    ServerFull(usize),
}

type Key = (TailKind, OrgId);

/// Every live tail of this server. Cheap to share.
#[derive(Debug)]
pub struct TailHub {
    store: Arc<dyn Store>,
    config: TailConfig,
    orgs: Mutex<HashMap<Key, Arc<OrgTail>>>,
    open: Mutex<HashMap<OrgId, usize>>,
    total: AtomicUsize,
    commits: Arc<watch::Sender<u64>>,
    closed: watch::Sender<bool>,
}

#[derive(Debug)]
struct OrgTail {
    subs: Mutex<Vec<Sub>>,
    wake: Notify,
}

#[derive(Debug)]
struct Sub {
    filter: TailFilter,
    cursor: TailPosition,
    skip: Option<Arc<TailSnapshot>>,
    tx: mpsc::Sender<Arc<TailEvent>>,
    behind: Arc<AtomicBool>,
}

/// A tail attached to its org's poller: the events for it, in order, and whether it was
/// dropped by the poller for falling behind. Dropping it detaches the tail.
#[derive(Debug)]
pub struct Live {
    /// The tail's events; `None` once the poller dropped it (fell behind) or the server
    /// stops.
    pub events: mpsc::Receiver<Arc<TailEvent>>,
    /// Set when the poller dropped the tail for falling behind.
    pub behind: Arc<AtomicBool>,
}

/// A tail's place under the caps, given back when it is dropped.
#[derive(Debug)]
pub struct Slot {
    hub: Arc<TailHub>,
    org: OrgId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.total.fetch_sub(1, Ordering::AcqRel);
        let mut open = self.hub.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.org) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.org);
            }
        }
    }
}

impl TailHub {
    /// A hub over `store`, woken by its commits.
    pub fn new(store: Arc<dyn Store>, config: TailConfig) -> Arc<Self> {
        let commits = Arc::new(watch::Sender::new(0u64));
        let signal = Arc::clone(&commits);
        store.on_commit(Arc::new(move || {
            signal.send_modify(|n| *n = n.wrapping_add(1));
        }));
        Arc::new(Self {
            store,
            config,
            orgs: Mutex::new(HashMap::new()),
            open: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            commits,
            closed: watch::Sender::new(false),
        })
    }

    /// The limits and timings.
    pub fn config(&self) -> &TailConfig {
        &self.config
    }

    /// Ends every tail (the server is stopping) and refuses new ones.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Tails open now.
    pub fn open_tails(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Takes a slot under both caps for a tail of `org`.
    pub fn reserve(self: &Arc<Self>, org: &OrgId) -> Result<Slot, OpenError> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let in_org = open.get(org).copied().unwrap_or(0);
        if in_org >= self.config.max_per_org {
            return Err(OpenError::OrgFull(self.config.max_per_org));
        }
        if self.total.load(Ordering::Acquire) >= self.config.max_total {
            return Err(OpenError::ServerFull(self.config.max_total));
        }
        self.total.fetch_add(1, Ordering::AcqRel);
        *open.entry(org.clone()).or_insert(0) += 1;
        Ok(Slot {
            hub: Arc::clone(self),
            org: org.clone(),
        })
    }

    /// Whether the server is stopping (its tails end).
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// The org's records of `kind` after `after`, in position order, at most `limit`.
    pub async fn read(
        &self,
        tenant: &Tenant,
        kind: TailKind,
        after: TailPosition,
        limit: u32,
    ) -> Result<Vec<(TailPosition, Record)>, StoreError> {
        Ok(match kind {
            TailKind::RequestLogs => self
                .store
                .tail_request_logs(tenant, after, limit)
                .await?
                .into_iter()
                .map(|(p, r)| (p, Record::Log(Box::new(r))))
                .collect(),
            TailKind::AuditEntries => self
                .store
                .tail_audit_entries(tenant, after, limit)
                .await?
                .into_iter()
                .map(|(p, e)| (p, Record::Audit(e)))
                .collect(),
        })
    }

    /// Attaches a tail of `tenant`'s records matching `filter`, after position `after`, to
    /// its org's poller (started if none runs); `render` makes each record's event.
    pub fn attach(
        self: &Arc<Self>,
        tenant: &Tenant,
        filter: TailFilter,
        after: TailPosition,
        skip: Option<Arc<TailSnapshot>>,
        render: Render,
    ) -> Live {
        let (tx, events) = mpsc::channel(self.config.queue.max(1));
        let behind = Arc::new(AtomicBool::new(false));
        let key = (filter.kind(), tenant.org_id().clone());
        let sub = Sub {
            filter,
            cursor: after,
            skip,
            tx,
            behind: Arc::clone(&behind),
        };
        let mut orgs = self.orgs.lock().unwrap_or_else(|e| e.into_inner());
        match orgs.get(&key) {
            Some(org) => {
                org.subs.lock().unwrap_or_else(|e| e.into_inner()).push(sub);
                org.wake.notify_one();
            }
            None => {
                let org = Arc::new(OrgTail {
                    subs: Mutex::new(vec![sub]),
                    wake: Notify::new(),
                });
                orgs.insert(key.clone(), Arc::clone(&org));
                tokio::spawn(Arc::clone(self).poll(key, tenant.clone(), org, render));
            }
        }
        Live { events, behind }
    }

    /// The poller of one org and kind; returns when the org has no tail left.
    async fn poll(self: Arc<Self>, key: Key, tenant: Tenant, org: Arc<OrgTail>, render: Render) {
        let mut commits = self.commits.subscribe();
        let mut closed = self.closed.subscribe();
        let mut interval = self.config.min_read_interval;
        loop {
            if *closed.borrow() {
                self.retire(&key, &org, true);
                return;
            }
            let Some(from) = self.retire(&key, &org, false) else {
                return;
            };
            let read = self.read(&tenant, key.0, from, PAGE).await;
            let again = match read {
                Ok(records) => {
                    // A poller whose reads find nothing reads less often, down to the poll
                    // interval: every commit of the server wakes it, whatever org it wrote.
                    interval = if records.is_empty() {
                        (interval * 2).min(self.config.poll_interval)
                    } else {
                        self.config.min_read_interval
                    };
                    deliver(&org, &key.1, from, records, render)
                }
                Err(e) => {
                    log_failure(&e);
                    false
                }
            };
            if again {
                continue;
            }
            let read_at = tokio::time::Instant::now();
            tokio::select! {
                _ = commits.changed() => {}
                () = org.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll_interval) => {}
                _ = closed.changed() => continue,
            }
            tokio::select! {
                () = tokio::time::sleep_until(read_at + interval) => {}
                _ = closed.changed() => {}
            }
        }
    }

    /// Drops the tails whose client went away (all of them when `all`), and removes the
    /// poller when none is left (`None`); otherwise the lowest position of its tails.
    fn retire(&self, key: &Key, org: &Arc<OrgTail>, all: bool) -> Option<TailPosition> {
        let mut orgs = self.orgs.lock().unwrap_or_else(|e| e.into_inner());
        let mut subs = org.subs.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| !all && !s.tx.is_closed());
        match subs.iter().map(|s| s.cursor).min() {
            Some(min) => Some(min),
            None => {
                if orgs.get(key).is_some_and(|o| Arc::ptr_eq(o, org)) {
                    orgs.remove(key);
                }
                None
            }
        }
    }
}

/// Offers `records` (read after `from`) to the org's tails; `true` when another read should
/// follow at once (a full page, or a tail that joined behind `from`).
fn deliver(
    org: &OrgTail,
    org_id: &OrgId,
    from: TailPosition,
    records: Vec<(TailPosition, Record)>,
    render: Render,
) -> bool {
    let full = records.len() >= PAGE as usize;
    let end = records.last().map_or(from, |(p, _)| *p);
    let mut subs = org.subs.lock().unwrap_or_else(|e| e.into_inner());
    for (pos, record) in &records {
        let mut event: Option<Arc<TailEvent>> = None;
        for sub in subs.iter_mut() {
            // A tail that joined behind `from` while the read ran waits for the next read,
            // which starts from its position.
            if sub.cursor < from || *pos <= sub.cursor {
                continue;
            }
            if !sub.filter.matches(record) || sub.skip.as_ref().is_some_and(|s| s.saw(*pos)) {
                sub.cursor = *pos;
                continue;
            }
            let event = match &event {
                Some(e) => Arc::clone(e),
                None => {
                    let Some(json) = render(org_id, record) else {
                        sub.cursor = *pos;
                        continue;
                    };
                    let e = Arc::new(TailEvent {
                        pos: *pos,
                        id: record_id(record),
                        json,
                    });
                    event = Some(Arc::clone(&e));
                    e
                }
            };
            match sub.tx.try_send(event) {
                Ok(()) => sub.cursor = *pos,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    sub.behind.store(true, Ordering::Release);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        // A tail that fell behind is closed here; its stream ends after the events queued.
        subs.retain(|s| !s.behind.load(Ordering::Acquire) && !s.tx.is_closed());
    }
    for sub in subs.iter_mut() {
        if sub.cursor >= from && sub.cursor < end {
            sub.cursor = end;
        }
    }
    full || subs.iter().any(|s| s.cursor < end)
}

/// The record's id, as its event's `id`.
pub fn record_id(record: &Record) -> String {
    match record {
        Record::Log(log) => log.id.to_string(),
        Record::Audit(e) => e.id.to_string(),
    }
}

fn log_failure(e: &StoreError) {
    tracing::warn!(error = %e, "live tail: reading new records failed; retrying");
}
