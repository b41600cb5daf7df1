//! Story: the platform ingests request logs, retries, and reads them back.

use std::net::IpAddr;

use apitrail_model::{LogFilter, PageRequest, RequestLog, Sort, new_record_id};
use apitrail_store::{InsertOutcome, LogBatch, Store};

use crate::support::{
    LogGen, MAX_MS, MIN_MS, assert_same_logs, at, insert, new_org, reference, ts, walk,
};

fn outcome(accepted: u64, duplicates: u64) -> InsertOutcome {
    InsertOutcome {
        accepted,
        duplicates,
    }
}

/// Inserts report what they stored; re-sent ids are duplicates and never doubled; the same id
/// is independent in two orgs; one call may carry batches of several orgs.
pub async fn ingest_is_idempotent_per_org(store: &dyn Store) {
    let a = new_org(store, "ingest-a").await;
    let b = new_org(store, "ingest-b").await;
    let mut generator = LogGen::new(3, "a");
    let first = generator.logs(100);

    assert_eq!(insert(store, &a, &first).await, outcome(100, 0));
    assert_eq!(store.count_request_logs(&a).await.expect("count"), 100);
    assert_eq!(
        insert(store, &a, &first).await,
        outcome(0, 100),
        "a full retry"
    );
    assert_eq!(store.count_request_logs(&a).await.expect("count"), 100);

    // A retry that overlaps: the stored half is skipped, the new half stored.
    let fresh = generator.logs(30);
    let mut mixed: Vec<RequestLog> = first[..50].to_vec();
    mixed.extend(fresh.iter().cloned());
    assert_eq!(insert(store, &a, &mixed).await, outcome(30, 50));
    assert_eq!(store.count_request_logs(&a).await.expect("count"), 130);

    // A duplicate keeps the stored version: a retry never overwrites.
    let mut altered = first[0].clone();
    altered.path = "/changed".into();
    altered.status_code = 599;
    assert_eq!(insert(store, &a, &[altered]).await, outcome(0, 1));
    assert_eq!(
        store.get_request_log(&a, first[0].id).await.expect("get"),
        Some(first[0].clone())
    );

    // The same ids in another org are new there, and stored as that org's own records.
    let mut in_b: Vec<RequestLog> = first[..20].to_vec();
    for log in &mut in_b {
        log.path = format!("/b{}", log.path);
        log.user_id = Some("user_only_b".into());
    }
    let more_a = generator.logs(10);
    let both = vec![
        LogBatch::new(b.clone(), in_b.clone()),
        LogBatch::new(a.clone(), more_a.clone()),
        LogBatch::new(a.clone(), Vec::new()),
    ];
    assert_eq!(
        store.insert_request_logs(both).await.expect("insert"),
        outcome(30, 0),
        "one call, three batches, two orgs"
    );
    assert_eq!(store.count_request_logs(&a).await.expect("count"), 140);
    assert_eq!(store.count_request_logs(&b).await.expect("count"), 20);
    for (log_a, log_b) in first.iter().zip(&in_b) {
        assert_eq!(
            store
                .get_request_log(&a, log_a.id)
                .await
                .expect("get")
                .as_ref(),
            Some(log_a)
        );
        assert_eq!(
            store
                .get_request_log(&b, log_b.id)
                .await
                .expect("get")
                .as_ref(),
            Some(log_b)
        );
    }

    // One record twice in one call is stored once.
    let twice = generator.logs(1);
    let call = vec![
        LogBatch::new(b.clone(), vec![twice[0].clone(), twice[0].clone()]),
        LogBatch::new(b.clone(), twice.clone()),
    ];
    assert_eq!(
        store.insert_request_logs(call).await.expect("insert"),
        outcome(1, 2)
    );
    assert_eq!(store.count_request_logs(&b).await.expect("count"), 21);

    // Nothing at all is a valid, empty insert.
    assert_eq!(
        store.insert_request_logs(Vec::new()).await.expect("insert"),
        outcome(0, 0)
    );

    // The lists agree with the counts: nothing doubled, nothing lost.
    let mut all_a = first.clone();
    all_a.extend(fresh);
    all_a.extend(more_a);
    let mut all_b = in_b;
    all_b.extend(twice);
    for (tenant, all, name) in [(&a, &all_a, "a"), (&b, &all_b, "b")] {
        let listed = walk(store, tenant, &LogFilter::default(), Sort::NEWEST_FIRST, 64).await;
        let expected = reference(all, &LogFilter::default(), Sort::NEWEST_FIRST);
        assert_same_logs(
            &listed.items,
            &expected,
            &format!("org {name} after retries"),
        );
    }
}

/// Every field of a request log comes back exactly as it was stored, through `get` and
/// through the list.
pub async fn request_logs_round_trip_every_field(store: &dyn Store) {
    let a = new_org(store, "roundtrip").await;
    let body = "Zoë ✓ 🚀 日本語 \"quoted\" \\ back\nslash\ttab ".repeat(1500);
    let full = RequestLog {
        id: new_record_id(),
        request_id: Some("req_01hx5v2k8m9n0p1q2r3s4t5v6w".into()),
        method: "PATCH".into(),
        path: "/v1/users/42/profile".into(),
        query: Some("expand=org&fields=a,b&q=%C3%A9".into()),
        route_pattern: Some("/v1/users/{id}/profile".into()),
        status_code: 422,
        error_code: Some("validation_failed".into()),
        duration_ms: Some(1_234),
        started_at: Some(at(-1_234)),
        completed_at: Some(at(0)),
        created_at: at(5),
        client_ip: Some("203.0.113.9".parse::<IpAddr>().expect("ip")),
        user_agent: Some("Mozilla/5.0 (X11; Linux x86_64) ☃".into()),
        origin: Some("https://app.example.com".into()),
        auth_type: Some("api_key".into()),
        principal_type: Some("service_account".into()),
        principal_id: Some("sa_7".into()),
        user_id: Some("user_ü".into()),
        email: Some("zoë@example.com".into()),
        api_key_id: Some(new_record_id().to_string()),
        service_account_id: Some("sa_7".into()),
        request_body: Some(body.clone()),
        request_body_truncated: true,
        response_body: Some(r#"{"error":"név"}"#.into()),
        response_body_truncated: false,
        price: Some("-0.000000000000000001".into()),
        minutes: Some(i64::MAX),
        seconds: Some(i64::MIN),
        stripe_invoice_item_id: Some("ii_1Nv0Yz2eZvKYlo2C".into()),
        metadata: Some(r#"{"region":"eu-west-1","ключ":"значение","empty":""}"#.into()),
    };
    let v6 = RequestLog {
        id: new_record_id(),
        client_ip: Some("2001:db8::8a2e:370:7334".parse().expect("ip")),
        duration_ms: None,
        request_body: None,
        response_body: Some(body),
        request_body_truncated: false,
        response_body_truncated: true,
        ..full.clone()
    };
    let mapped = RequestLog {
        id: new_record_id(),
        client_ip: Some("::ffff:192.0.2.128".parse().expect("ip")),
        duration_ms: Some(0),
        request_body: Some(String::new()),
        response_body: Some(String::new()),
        request_body_truncated: true,
        response_body_truncated: true,
        metadata: Some("{}".into()),
        ..full.clone()
    };
    let minimal = RequestLog {
        id: new_record_id(),
        method: "GET".into(),
        path: "/".into(),
        status_code: 200,
        created_at: at(7),
        ..RequestLog::default()
    };
    let extremes = RequestLog {
        id: new_record_id(),
        duration_ms: Some(i64::from(i32::MAX)),
        started_at: Some(ts(MIN_MS)),
        completed_at: Some(ts(MAX_MS)),
        created_at: ts(MIN_MS),
        status_code: 100,
        method: "PROPFIND".into(),
        minutes: Some(0),
        seconds: Some(-1),
        ..minimal.clone()
    };
    let latest = RequestLog {
        id: new_record_id(),
        created_at: ts(MAX_MS),
        status_code: 599,
        client_ip: Some("::".parse().expect("ip")),
        ..minimal.clone()
    };
    let pre_epoch = RequestLog {
        id: new_record_id(),
        created_at: ts(-1),
        started_at: Some(ts(-1_000)),
        completed_at: Some(ts(-1)),
        client_ip: Some("0.0.0.0".parse().expect("ip")),
        ..minimal.clone()
    };
    let logs = vec![full, v6, mapped, minimal, extremes, latest, pre_epoch];
    assert_eq!(
        insert(store, &a, &logs).await,
        outcome(logs.len() as u64, 0)
    );

    for log in &logs {
        let got = store.get_request_log(&a, log.id).await.expect("get");
        assert_eq!(
            got.as_ref(),
            Some(log),
            "get_request_log({}) round-trips every field",
            log.id
        );
    }
    assert_eq!(
        store
            .get_request_log(&a, new_record_id())
            .await
            .expect("get"),
        None
    );
    for sort in crate::support::ALL_SORTS {
        let page = store
            .list_request_logs(&a, &LogFilter::default(), sort, PageRequest::first(100))
            .await
            .expect("list");
        assert!(!page.has_more);
        assert_same_logs(
            &page.items,
            &reference(&logs, &LogFilter::default(), sort),
            &format!("round trip through the list in {sort:?}"),
        );
    }
}

/// A retry of a client id is a duplicate even when it would land on another day (a retry
/// without `created_at` gets a fresh one), also within one call and when the first copy
/// is years old; the stored record keeps its first `created_at`. Records stored under ids the
/// server minted are duplicates too when a client sends them back.
pub async fn retries_on_another_day_are_duplicates(store: &dyn Store) {
    const DAY: i64 = 86_400_000;
    let a = new_org(store, "retry-days").await;
    let mut generator = LogGen::new(31, "a");
    let mut first = generator.logs(20);
    for (i, log) in first.iter_mut().enumerate() {
        log.created_at = at(-(i as i64) * 400 * DAY);
    }
    assert_eq!(insert(store, &a, &first).await, outcome(20, 0));
    let moved: Vec<RequestLog> = first
        .iter()
        .map(|l| RequestLog {
            created_at: at(3 * DAY),
            ..l.clone()
        })
        .collect();
    assert_eq!(insert(store, &a, &moved).await, outcome(0, 20));
    // One call carrying the same new id on two days stores the first copy only.
    let mut twice = generator.logs(1);
    let mut later = twice[0].clone();
    later.created_at = at(9 * DAY);
    twice[0].created_at = at(-9 * DAY);
    let call = vec![
        LogBatch::new(a.clone(), twice.clone()),
        LogBatch::new(a.clone(), vec![later]),
    ];
    assert_eq!(
        store.insert_request_logs(call).await.expect("insert"),
        outcome(1, 1)
    );
    // Records with minted ids are stored without a check and found like any other.
    let mut minted = generator.logs(5);
    for log in &mut minted {
        log.id = new_record_id();
    }
    assert_eq!(
        store
            .insert_request_logs(vec![LogBatch::minted(a.clone(), minted.clone())])
            .await
            .expect("insert"),
        outcome(5, 0)
    );
    // A client sending those records back, as read (same created_at) or moved to another
    // day, repeats stored ids: duplicates, in a call with a new record, on every backend.
    let mut sent_back: Vec<RequestLog> = minted[..3].to_vec();
    sent_back.push(RequestLog {
        created_at: at(-40 * DAY),
        ..minted[3].clone()
    });
    let fresh = generator.logs(1);
    sent_back.extend(fresh.iter().cloned());
    assert_eq!(insert(store, &a, &sent_back).await, outcome(1, 4));
    assert_eq!(insert(store, &a, &sent_back).await, outcome(0, 5));
    assert_eq!(store.count_request_logs(&a).await.expect("count"), 27);
    let mut all = first.clone();
    all.extend(twice);
    all.extend(minted);
    all.extend(fresh);
    for log in &all {
        assert_eq!(
            store
                .get_request_log(&a, log.id)
                .await
                .expect("get")
                .as_ref(),
            Some(log)
        );
    }
    let listed = walk(store, &a, &LogFilter::default(), Sort::NEWEST_FIRST, 7).await;
    assert_same_logs(
        &listed.items,
        &reference(&all, &LogFilter::default(), Sort::NEWEST_FIRST),
        &"after retries on other days",
    );
}
