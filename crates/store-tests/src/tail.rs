//! Story: a live tail reads an org's records while several writers store them.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use apitrail_model::{AuditEntry, RequestLog, Tenant};
use apitrail_store::{AuditBatch, LogBatch, Store, TailKind, TailPosition, TailStart};
use uuid::Uuid;

use crate::support::{LogGen, at, audit_entry, join_all, new_org};

const WRITERS: usize = 4;
const CALLS: usize = 15;
const PER_CALL: usize = 10;

/// Reads the org's request logs after `start` until as many as the writers write arrived
/// (and, once they are done, one more read finds nothing); returns them with their
/// positions.
async fn follow(
    store: &dyn Store,
    tenant: &Tenant,
    start: &TailStart,
    done: &AtomicUsize,
) -> Vec<(TailPosition, RequestLog)> {
    let want = WRITERS * CALLS * PER_CALL;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut got: Vec<(TailPosition, RequestLog)> = Vec::new();
    let mut cursor = start.after;
    loop {
        let writers_done = done.load(Ordering::Acquire) == WRITERS;
        let page = store
            .tail_request_logs(tenant, cursor, 37)
            .await
            .expect("tail read");
        let empty = page.is_empty();
        for (pos, log) in page {
            assert!(pos > cursor, "positions go forward");
            cursor = pos;
            if start.stored_before.as_ref().is_some_and(|s| s.saw(pos)) {
                continue;
            }
            got.push((pos, log));
        }
        if empty {
            if writers_done && got.len() >= want {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the tail read {} of {want} records",
                got.len()
            );
            // Wait for more writes, or (PostgreSQL) for the horizon to pass them.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
}

/// Four writers store request logs concurrently into one org (and some into another) while a
/// reader follows the org from a start taken before they began: it reads each of the org's
/// records exactly once, none of the other org's, in strictly increasing positions, and
/// each record's position (looked up by id) is the one it was read at, so a resume from any
/// record continues right after it. Audit entries follow their chain alike.
pub async fn tails_read_each_record_once_in_order_under_concurrent_writers(store: &dyn Store) {
    let a = new_org(store, "tail-a").await;
    let b = new_org(store, "tail-b").await;
    // Stored before the start: never read.
    let before = LogGen::new(0x7A11, "before").logs(5);
    store
        .insert_request_logs(vec![LogBatch::new(a.clone(), before.clone())])
        .await
        .expect("insert");
    let start = store
        .tail_start(&a, TailKind::RequestLogs)
        .await
        .expect("start");
    let done = AtomicUsize::new(0);
    let writers = (0..WRITERS).map(|w| {
        let (a, b, done) = (&a, &b, &done);
        async move {
            let mut generator = LogGen::new(0x7A00 + w as u64, "t");
            let mut mine = Vec::new();
            for call in 0..CALLS {
                let logs = generator.logs(PER_CALL);
                mine.extend(logs.iter().map(|l| l.id));
                let mut batches = vec![LogBatch::new(a.clone(), logs)];
                if call % 4 == w % 4 {
                    batches.push(LogBatch::new(b.clone(), generator.logs(3)));
                }
                store.insert_request_logs(batches).await.expect("insert");
            }
            done.fetch_add(1, Ordering::AcqRel);
            mine
        }
    });
    let (written, read) = {
        let writers = join_all(writers);
        let reader = follow(store, &a, &start, &done);
        let (written, read) = tokio::join!(writers, reader);
        (written, read)
    };
    let written: HashSet<Uuid> = written.into_iter().flatten().collect();
    let ids: Vec<Uuid> = read.iter().map(|(_, l)| l.id).collect();
    let distinct: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), ids.len(), "a record was read twice");
    assert_eq!(
        distinct, written,
        "the tail read exactly the records written after its start"
    );
    for (pos, log) in read.iter().step_by(17) {
        let found = store
            .tail_position(&a, TailKind::RequestLogs, log.id)
            .await
            .expect("position");
        assert_eq!(
            found,
            Some(*pos),
            "a record's position is where it was read"
        );
        // Resuming after it reads the rest of the order.
        let rest = store
            .tail_request_logs(&a, *pos, 10_000)
            .await
            .expect("tail read");
        let rest: Vec<Uuid> = rest.into_iter().map(|(_, l)| l.id).collect();
        let expected: Vec<Uuid> = read
            .iter()
            .filter(|(p, _)| p > pos)
            .map(|(_, l)| l.id)
            .collect();
        assert_eq!(rest, expected, "a resume continues right after the record");
    }
    assert_eq!(
        store
            .tail_position(&b, TailKind::RequestLogs, read[0].1.id)
            .await
            .expect("position"),
        None,
        "another org's record has no position here"
    );

    // Audit entries: chain order, from a start taken after the org's own entries.
    let start = store
        .tail_start(&a, TailKind::AuditEntries)
        .await
        .expect("start");
    let entries: Vec<AuditEntry> = (0..12)
        .map(|i| audit_entry("update", "source", &format!("src_{i}"), at(i)))
        .collect();
    for chunk in entries.chunks(5) {
        store
            .insert_audit_entries(vec![AuditBatch {
                tenant: a.clone(),
                entries: chunk.to_vec(),
            }])
            .await
            .expect("audit insert");
    }
    let got = store
        .tail_audit_entries(&a, start.after, 100)
        .await
        .expect("audit tail");
    assert_eq!(
        got.iter().map(|(_, e)| e.id).collect::<Vec<_>>(),
        entries.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
}
