//! The live tail's reads: each org's records in the order they became visible.
//!
//! Request logs carry the id of the transaction that wrote them and a sequence value
//! (migration 0009). A read returns only rows whose transaction id is below the xmin of its
//! own snapshot, the safe horizon: every transaction below it has ended, so no row can
//! appear below it later, whichever server wrote it. Rows are read in (transaction id,
//! sequence value) order from there. A long-running write transaction anywhere in the
//! database holds the horizon back, and the tail waits for it.
//!
//! Wake-ups: a commit of this process runs the hooks at once; other servers hear of it by
//! `NOTIFY` (see [`Hooks`]), and every tail also polls.
//!
//! Audit entries use their chain position: each org's appends take the org's head row
//! `FOR UPDATE`, so the next append only gets its position after the previous one committed
//! and became visible; chain order is visibility order, and no horizon is needed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, mpsc};
use tokio_postgres::{AsyncMessage, NoTls};

use apitrail_model::{AuditEntry, RequestLog, Tenant};
use apitrail_store::{CommitHook, StoreError, TailKind, TailPosition, TailSnapshot, TailStart};
use uuid::Uuid;

use crate::reader::Sql;
use crate::writer::Shared;
use crate::{PgStore, audit, request_logs};

/// The channel on which servers sharing a database tell each other they committed.
const CHANNEL: &str = "apitrail_tail";

/// What runs after every commit (the live tail's wake-ups), and the link to the other
/// servers: after a local commit one `NOTIFY` goes out (bursts coalesce into one), and a
/// `NOTIFY` from any server runs the hooks here. Polling remains the fallback.
#[derive(Default)]
pub(crate) struct Hooks {
    hooks: RwLock<Vec<CommitHook>>,
    /// Woken by local commits; the listener task sends the `NOTIFY`.
    peers: Notify,
    /// The database, set at connect; the listener starts with the first hook.
    pub(crate) url: OnceLock<Arc<str>>,
    listening: AtomicBool,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.hooks.read().map(|h| h.len()).unwrap_or(0);
        f.debug_struct("Hooks").field("hooks", &n).finish()
    }
}

impl Hooks {
    /// A local commit: wake this process's tails and tell the other servers.
    pub(crate) fn run(&self) {
        self.wake();
        if self.listening.load(Ordering::Relaxed) {
            self.peers.notify_one();
        }
    }

    fn wake(&self) {
        for hook in self.hooks.read().unwrap_or_else(|e| e.into_inner()).iter() {
            hook();
        }
    }
}

pub(crate) fn on_commit(store: &PgStore, hook: CommitHook) {
    let hooks = &store.shared.stats.hooks;
    hooks
        .hooks
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .push(hook);
    if let (Some(url), Ok(runtime)) = (hooks.url.get(), tokio::runtime::Handle::try_current())
        && !hooks.listening.swap(true, Ordering::AcqRel)
    {
        runtime.spawn(listen(Arc::clone(url), Arc::downgrade(&store.shared)));
    }
}

/// Listens on [`CHANNEL`] (waking the hooks) and sends a `NOTIFY` after local commits, on
/// one connection of its own, reopened after a failure; ends with the store.
async fn listen(url: Arc<str>, shared: Weak<Shared>) {
    loop {
        if let Err(e) = listen_once(&url, &shared).await {
            tracing::warn!(error = %e, "live tail: the LISTEN connection failed; reopening in 1 s (tails poll meanwhile)");
        }
        if shared.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once(url: &str, shared: &Weak<Shared>) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = crate::conn::config(url)?.connect(NoTls).await?;
    let (tx, mut notified) = mpsc::channel::<()>(1);
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(_)) => {
                    // One pending wake-up is enough.
                    let _ = tx.try_send(());
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let outcome = loop {
        let Some(strong) = shared.upgrade() else {
            break Ok(());
        };
        let hooks = &strong.stats.hooks;
        tokio::select! {
            got = notified.recv() => match got {
                Some(()) => hooks.wake(),
                None => break Ok(()),
            },
            () = hooks.peers.notified() => {
                if let Err(e) = client.batch_execute(&format!("NOTIFY {CHANNEL}")).await {
                    break Err(e);
                }
            }
            _ = tick.tick() => {}
        }
    };
    driver.abort();
    outcome
}

/// A transaction id (`xid8`, below 2^63 in practice) as the position's major key.
const XID: &str = "::text::bigint";

pub(crate) async fn start(
    store: &PgStore,
    tenant: &Tenant,
    kind: TailKind,
) -> Result<TailStart, StoreError> {
    let reader = store.reader().await?;
    let c = &reader.client;
    match kind {
        // Rows of transactions below the snapshot's xmin were visible before this call; of
        // the others (sequence values start at 1), those of transactions the snapshot saw
        // committed are skipped.
        TailKind::RequestLogs => {
            let row = c
                .row(
                    &format!(
                        "SELECT pg_snapshot_xmin(s){XID}, pg_snapshot_xmax(s){XID}, \
                         array(SELECT pg_snapshot_xip(s){XID}) \
                         FROM (SELECT pg_current_snapshot() AS s) AS now"
                    ),
                    &[],
                )
                .await?;
            Ok(TailStart {
                after: TailPosition::new(row.get(0), 0),
                stored_before: Some(TailSnapshot {
                    xmax: row.get(1),
                    running: row.get(2),
                }),
            })
        }
        TailKind::AuditEntries => {
            let row = c
                .row(
                    "SELECT coalesce(max(chain_pos), 0) FROM audit_entries WHERE org = $1",
                    &[&tenant.key()],
                )
                .await?;
            Ok(TailStart {
                after: TailPosition::new(0, row.get(0)),
                stored_before: None,
            })
        }
    }
}

pub(crate) async fn position(
    store: &PgStore,
    tenant: &Tenant,
    kind: TailKind,
    id: Uuid,
) -> Result<Option<TailPosition>, StoreError> {
    let reader = store.reader().await?;
    let c = &reader.client;
    let org = tenant.key();
    let pos = match kind {
        TailKind::RequestLogs => c
            .opt_row(
                &format!(
                    "SELECT tail_xid{XID}, tail_seq FROM request_logs WHERE org = $1 AND id = $2 \
                     AND tail_xid IS NOT NULL LIMIT 1"
                ),
                &[&org, &id],
            )
            .await?
            .map(|r| TailPosition::new(r.get(0), r.get(1))),
        TailKind::AuditEntries => c
            .opt_row(
                "SELECT chain_pos FROM audit_entries WHERE org = $1 AND id = $2",
                &[&org, &id],
            )
            .await?
            .map(|r| TailPosition::new(0, r.get(0))),
    };
    Ok(pos)
}

pub(crate) async fn request_logs(
    store: &PgStore,
    tenant: &Tenant,
    after: TailPosition,
    limit: u32,
) -> Result<Vec<(TailPosition, RequestLog)>, StoreError> {
    let reader = store.reader().await?;
    let org = tenant.key();
    // Prepared (a generic plan, made once): planning over every day partition on each of
    // the pollers' frequent reads cost more than the reads.
    let rows = reader
        .prepared(
            &format!(
                "SELECT {}, tail_xid{XID}, tail_seq FROM request_logs \
                 WHERE org = $1 AND (tail_xid, tail_seq) > ($2::bigint::text::xid8, $3) \
                 AND tail_xid < pg_snapshot_xmin(pg_current_snapshot()) \
                 ORDER BY tail_xid, tail_seq LIMIT $4",
                request_logs::COLUMNS
            ),
            &[&org, &after.major, &after.minor, &i64::from(limit)],
        )
        .await?;
    rows.iter()
        .map(|r| {
            let log = request_logs::log_from_row(org, r)?;
            Ok((TailPosition::new(r.get(31), r.get(32)), log))
        })
        .collect()
}

pub(crate) async fn audit_entries(
    store: &PgStore,
    tenant: &Tenant,
    after: TailPosition,
    limit: u32,
) -> Result<Vec<(TailPosition, AuditEntry)>, StoreError> {
    let reader = store.reader().await?;
    reader
        .client
        .all(
            &format!(
                "SELECT {}, chain_pos FROM audit_entries WHERE org = $1 AND chain_pos > $2 \
                 ORDER BY chain_pos LIMIT $3",
                audit::ENTRY_COLUMNS
            ),
            &[&tenant.key(), &after.minor, &i64::from(limit)],
            |r| {
                let entry = audit::entry_from_row(r)?;
                Ok((TailPosition::new(0, r.get(9)), entry))
            },
        )
        .await
}
