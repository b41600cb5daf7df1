//! Story: many ingest calls arrive at once (group commit), including racing retries.

use apitrail_model::{LogFilter, RequestLog, Sort, SortDir, SortKey, Tenant};
use apitrail_store::{InsertOutcome, LogBatch, Store};

use crate::support::{LogGen, assert_same_logs, join_all, new_org, reference, walk};

async fn assert_stored_exactly(store: &dyn Store, tenant: &Tenant, logs: &[RequestLog], ctx: &str) {
    assert_eq!(
        store.count_request_logs(tenant).await.expect("count"),
        logs.len() as u64,
        "{ctx}: count"
    );
    let sort = Sort {
        key: SortKey::CreatedAt,
        dir: SortDir::Asc,
    };
    let got = walk(store, tenant, &LogFilter::default(), sort, 500).await;
    assert_same_logs(
        &got.items,
        &reference(logs, &LogFilter::default(), sort),
        &ctx,
    );
}

/// 32 concurrent writers, each sending several calls (some spanning two orgs, some re-sending
/// an earlier call): every call gets an exact outcome and every acknowledged log is stored
/// exactly once.
pub async fn concurrent_batches_are_all_committed_once(store: &dyn Store) {
    let a = new_org(store, "group-a").await;
    let b = new_org(store, "group-b").await;
    let writers = (0..32u64).map(|w| {
        let (a, b) = (&a, &b);
        async move {
            let mut generator = LogGen::new(0x6000 + w, "w");
            let mut mine_a = Vec::new();
            let mut mine_b = Vec::new();
            let mut previous: Option<Vec<LogBatch>> = None;
            for round in 0..4 {
                let n_a = generator.rng.usize(1..40);
                let logs_a = generator.logs(n_a);
                let logs_b = if (w + round) % 3 == 0 {
                    generator.logs(5)
                } else {
                    Vec::new()
                };
                let n = (logs_a.len() + logs_b.len()) as u64;
                let mut call = vec![LogBatch::new(a.clone(), logs_a.clone())];
                if !logs_b.is_empty() {
                    call.push(LogBatch::new(b.clone(), logs_b.clone()));
                }
                let outcome = store
                    .insert_request_logs(call.clone())
                    .await
                    .expect("insert");
                assert_eq!(
                    outcome,
                    InsertOutcome {
                        accepted: n,
                        duplicates: 0
                    }
                );
                mine_a.extend(logs_a);
                mine_b.extend(logs_b);
                // A client retry of the previous call, as if its acknowledgement had been lost.
                if let Some(retry) = previous.replace(call) {
                    let n: usize = retry.iter().map(|b| b.logs.len()).sum();
                    let outcome = store.insert_request_logs(retry).await.expect("insert");
                    assert_eq!(
                        outcome,
                        InsertOutcome {
                            accepted: 0,
                            duplicates: n as u64
                        }
                    );
                }
            }
            (mine_a, mine_b)
        }
    });
    let results = join_all(writers).await;
    let (mut all_a, mut all_b) = (Vec::new(), Vec::new());
    for (mine_a, mine_b) in results {
        all_a.extend(mine_a);
        all_b.extend(mine_b);
    }
    assert_stored_exactly(store, &a, &all_a, "org a after concurrent ingest").await;
    assert_stored_exactly(store, &b, &all_b, "org b after concurrent ingest").await;
}

/// Concurrent calls carrying the same or overlapping records (in different orders) store each
/// record once, and their outcomes add up: the accepted counts sum to the number of distinct
/// records, and every call accounts for each of its records as accepted or duplicate.
pub async fn racing_retries_store_each_record_once(store: &dyn Store) {
    let a = new_org(store, "race-a").await;
    let mut generator = LogGen::new(0x7ACE, "a");
    let mut stored: Vec<RequestLog> = Vec::new();
    for round in 0..3 {
        let records = generator.logs(60);
        let mut calls: Vec<Vec<RequestLog>> = Vec::new();
        for i in 0..8 {
            calls.push(records.clone());
            let mut reversed = records[(i * 5)..(30 + i * 4)].to_vec();
            reversed.reverse();
            calls.push(reversed);
            let mut shuffled = records.clone();
            generator.rng.shuffle(&mut shuffled);
            calls.push(shuffled);
        }
        // From the second round on, every call also re-sends records stored earlier.
        if round > 0 {
            for call in &mut calls {
                call.extend(stored.iter().take(10).cloned());
            }
        }
        let outcomes =
            join_all(calls.iter().map(|logs| {
                store.insert_request_logs(vec![LogBatch::new(a.clone(), logs.clone())])
            }))
            .await;
        let mut accepted = 0;
        for (call, outcome) in calls.iter().zip(outcomes) {
            let outcome = outcome.expect("a racing retry succeeds");
            assert_eq!(
                outcome.accepted + outcome.duplicates,
                call.len() as u64,
                "every record of a call is accepted or a duplicate"
            );
            accepted += outcome.accepted;
        }
        assert_eq!(
            accepted, 60,
            "round {round}: each distinct record accepted exactly once"
        );
        stored.extend(records);
        assert_stored_exactly(store, &a, &stored, &format!("after racing round {round}")).await;
    }
}
