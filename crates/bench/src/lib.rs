//! What the benchmark binaries share: an org to fill and a month of synthetic request logs
//! written into it straight through the store's ingest path.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Instant;

use apitrail_model::{AuditEntry, Org, OrgId, RequestLog, Tenant, Timestamp, new_record_id};
use apitrail_store::{LogBatch, Store};
use apitrail_traffic::Traffic;

const DAY_MS: i64 = 86_400_000;

/// Creates the org `id` (with its audit entry) and returns its tenant.
pub async fn create_org(store: &Arc<dyn Store>, id: &str, now: Timestamp) -> Tenant {
    store
        .create_org(
            &Org {
                id: OrgId::parse(id).unwrap(),
                name: "Bench".into(),
                created_at: now,
            },
            &AuditEntry {
                id: new_record_id(),
                user_id: None,
                action: "create".into(),
                resource_type: "org".into(),
                resource_id: Some(id.into()),
                details: None,
                ip_address: None,
                request_id: None,
                created_at: now,
            },
        )
        .await
        .unwrap()
}

/// Writes `rows` logs of the traffic generator's month ending `now` into `tenant`'s org,
/// oldest first, in batches of `batch` from `clients` concurrent writers; returns
/// records/s.
pub async fn fill_month(
    store: &Arc<dyn Store>,
    tenant: &Tenant,
    rows: usize,
    batch: usize,
    clients: usize,
    now: Timestamp,
) -> f64 {
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<RequestLog>>(clients * 2);
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let started = Instant::now();
    let writers: Vec<_> = (0..clients)
        .map(|_| {
            let (store, tenant, rx) = (Arc::clone(store), tenant.clone(), Arc::clone(&rx));
            tokio::spawn(async move {
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(logs) = next else { break };
                    store
                        .insert_request_logs(vec![LogBatch::minted(tenant.clone(), logs)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut traffic = Traffic::new(2024);
    let batches = rows.div_ceil(batch).max(1);
    let span = 30 * DAY_MS / batches as i64;
    let mut left = rows;
    for i in 0..batches {
        let n = left.min(batch);
        left -= n;
        let from = now.add_millis(-30 * DAY_MS + i as i64 * span);
        tx.send(traffic.spread(n, from, from.add_millis(span)))
            .await
            .unwrap();
    }
    drop(tx);
    for w in writers {
        w.await.unwrap();
    }
    rows as f64 / started.elapsed().as_secs_f64()
}
