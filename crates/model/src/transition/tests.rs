//! The state machine as a table: every status × every occurrence, each row the full expected
//! result (the whole change, or the refusal), then the edges the table's fixed states do not
//! reach (attempt 0, not yet due, jitter bounds, the retry schedule's end, no `timeout_at`).

use super::*;
use crate::action::Tags;

/// A fixed epoch, so expected states are literal.
const T0: i64 = 1_700_000_000_000;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(T0 + ms).expect("in range")
}

/// When most occurrences happen.
fn now() -> Timestamp {
    at(10_000)
}

/// The acknowledged record's deadline, when the late occurrences happen (`timeout_at` itself
/// counts as past).
fn late() -> Timestamp {
    at(31_000)
}

/// A record's `timeout_secs`.
const TIMEOUT_SECS: u32 = 30;

fn record(state: ActionState) -> ActionRecord {
    ActionRecord {
        id: Uuid::from_u128(7),
        definition_id: Uuid::from_u128(1),
        version: 1,
        variant: "ship.order".into(),
        input: "{}".into(),
        timeout_secs: TIMEOUT_SECS,
        tags: Tags::new(),
        destination_id: Uuid::from_u128(2),
        request_id: None,
        created_at: at(0),
        state,
    }
}

/// A pending record leased once (its first attempt in flight).
fn pending() -> ActionState {
    ActionState {
        status: ActionStatus::Pending,
        attempt: 1,
        updated_at: at(0),
        available_at: at(0),
        timeout_at: None,
        started_at: Some(at(0)),
        completed_at: None,
        error_message: None,
    }
}

/// A record acknowledged at 1 s, timing out 30 s later.
fn acknowledged() -> ActionState {
    ActionState {
        status: ActionStatus::Acknowledged,
        updated_at: at(1_000),
        timeout_at: Some(late()),
        ..pending()
    }
}

/// The state a record of each status has in the table.
fn in_status(status: ActionStatus) -> ActionState {
    match status {
        ActionStatus::Pending => pending(),
        ActionStatus::Acknowledged => acknowledged(),
        ActionStatus::Succeeded => ActionState {
            status,
            updated_at: at(1_000),
            completed_at: Some(at(1_000)),
            ..pending()
        },
        ActionStatus::Failed => ActionState {
            status,
            updated_at: at(1_000),
            completed_at: Some(at(1_000)),
            error_message: Some("HTTP 500 (attempt 1 of 1)".into()),
            ..pending()
        },
        ActionStatus::TimedOut => ActionState {
            status,
            updated_at: late(),
            completed_at: Some(late()),
            error_message: Some(TIMED_OUT_MESSAGE.into()),
            ..acknowledged()
        },
    }
}

fn schedule(text: &str) -> RetrySchedule {
    RetrySchedule::parse(text).expect("a schedule")
}

/// What the table's columns do to a record (`lease` is not an [`Occurrence`]: it records no
/// event, and the lease itself is the store's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Lease,
    DeliveredSignaling,
    Delivered,
    AttemptFailedRetryLeft,
    AttemptFailedLast,
    Undeliverable,
    SignalSucceeded,
    SignalFailed,
    SignalFailedNoMessage,
    SignalAtTimeout,
    TimeoutPassed,
    TimeoutNotYet,
}

const COLUMNS: [Column; 12] = [
    Column::Lease,
    Column::DeliveredSignaling,
    Column::Delivered,
    Column::AttemptFailedRetryLeft,
    Column::AttemptFailedLast,
    Column::Undeliverable,
    Column::SignalSucceeded,
    Column::SignalFailed,
    Column::SignalFailedNoMessage,
    Column::SignalAtTimeout,
    Column::TimeoutPassed,
    Column::TimeoutNotYet,
];

/// The expected result of a cell.
#[derive(Debug, PartialEq)]
enum Expect {
    Leased(ActionState),
    Change(ActionChange),
    Refused(Refusal),
}

/// Runs a column on `state`.
fn run(column: Column, state: ActionState) -> Expect {
    let two_seconds = schedule("2s");
    let no_retries = schedule("");
    let r = record(state);
    let (what, when) = match column {
        Column::Lease => {
            return match lease(&r.state, now()) {
                Ok(s) => Expect::Leased(s),
                Err(e) => Expect::Refused(e),
            };
        }
        Column::DeliveredSignaling => (
            Occurrence::Delivered {
                code: 202,
                signaling: true,
            },
            now(),
        ),
        Column::Delivered => (
            Occurrence::Delivered {
                code: 200,
                signaling: false,
            },
            now(),
        ),
        Column::AttemptFailedRetryLeft => (
            Occurrence::AttemptFailed {
                reason: "HTTP 503".into(),
                retry: &two_seconds,
                jitter: 0.5,
            },
            now(),
        ),
        Column::AttemptFailedLast => (
            Occurrence::AttemptFailed {
                reason: "HTTP 503".into(),
                retry: &no_retries,
                jitter: 0.5,
            },
            now(),
        ),
        Column::Undeliverable => (
            Occurrence::Undeliverable {
                reason: "the destination was deleted".into(),
            },
            now(),
        ),
        Column::SignalSucceeded => (
            Occurrence::Signaled {
                outcome: Signal::Succeeded,
                message: Some("shipped".into()),
                data: Some(r#"{"parcels":2}"#.into()),
            },
            now(),
        ),
        Column::SignalFailed => (
            Occurrence::Signaled {
                outcome: Signal::Failed,
                message: Some("address unknown".into()),
                data: None,
            },
            now(),
        ),
        Column::SignalFailedNoMessage => (
            Occurrence::Signaled {
                outcome: Signal::Failed,
                message: None,
                data: None,
            },
            now(),
        ),
        Column::SignalAtTimeout => (
            Occurrence::Signaled {
                outcome: Signal::Succeeded,
                message: None,
                data: None,
            },
            late(),
        ),
        Column::TimeoutPassed => (Occurrence::AcknowledgementExpired, late()),
        Column::TimeoutNotYet => (Occurrence::AcknowledgementExpired, now()),
    };
    match transition(&r, what, when) {
        Ok(c) => Expect::Change(c),
        Err(e) => Expect::Refused(e),
    }
}

fn change(
    from: ActionStatus,
    state: ActionState,
    kind: EventKind,
    message: Option<&str>,
    data: Option<&str>,
) -> Expect {
    Expect::Change(ActionChange {
        from,
        attempt: 1,
        state,
        kind,
        message: message.map(str::to_owned),
        data: data.map(str::to_owned),
    })
}

/// The table: one row per status × column.
fn table() -> Vec<(ActionStatus, Column, Expect)> {
    use ActionStatus::{Acknowledged, Failed, Pending, Succeeded, TimedOut};
    use Column as C;
    let not_pending = |status| Expect::Refused(Refusal::NotPending { status });
    let not_signalable = |status| Expect::Refused(Refusal::NotSignalable { status });
    let not_acknowledged = |status| Expect::Refused(Refusal::NotAcknowledged { status });
    let mut rows = vec![
        // Pending: leased again (attempt 2, the first attempt's start kept), and every
        // delivery outcome; no signal, no timeout.
        (
            Pending,
            C::Lease,
            Expect::Leased(ActionState {
                attempt: 2,
                ..pending()
            }),
        ),
        (
            Pending,
            C::DeliveredSignaling,
            change(
                Pending,
                ActionState {
                    status: Acknowledged,
                    updated_at: now(),
                    timeout_at: Some(now().add_millis(i64::from(TIMEOUT_SECS) * 1_000)),
                    ..pending()
                },
                EventKind::Acknowledged,
                Some("HTTP 202"),
                None,
            ),
        ),
        (
            Pending,
            C::Delivered,
            change(
                Pending,
                ActionState {
                    status: Succeeded,
                    updated_at: now(),
                    completed_at: Some(now()),
                    ..pending()
                },
                EventKind::Delivered,
                Some("HTTP 200"),
                None,
            ),
        ),
        (
            Pending,
            C::AttemptFailedRetryLeft,
            change(
                Pending,
                ActionState {
                    updated_at: now(),
                    available_at: now().add_millis(2_000),
                    ..pending()
                },
                EventKind::AttemptFailed,
                Some("HTTP 503"),
                None,
            ),
        ),
        (
            Pending,
            C::AttemptFailedLast,
            change(
                Pending,
                ActionState {
                    status: Failed,
                    updated_at: now(),
                    completed_at: Some(now()),
                    error_message: Some("HTTP 503 (attempt 1 of 1)".into()),
                    ..pending()
                },
                EventKind::Failed,
                Some("HTTP 503"),
                None,
            ),
        ),
        (
            Pending,
            C::Undeliverable,
            change(
                Pending,
                ActionState {
                    status: Failed,
                    updated_at: now(),
                    completed_at: Some(now()),
                    error_message: Some("the destination was deleted".into()),
                    ..pending()
                },
                EventKind::Failed,
                Some("the destination was deleted"),
                None,
            ),
        ),
        (Pending, C::SignalSucceeded, not_signalable(Pending)),
        (Pending, C::SignalFailed, not_signalable(Pending)),
        (Pending, C::SignalFailedNoMessage, not_signalable(Pending)),
        (Pending, C::SignalAtTimeout, not_signalable(Pending)),
        (Pending, C::TimeoutPassed, not_acknowledged(Pending)),
        (Pending, C::TimeoutNotYet, not_acknowledged(Pending)),
        // Acknowledged: signals before timeout_at, the timeout from timeout_at on; nothing of
        // delivery.
        (Acknowledged, C::Lease, not_pending(Acknowledged)),
        (
            Acknowledged,
            C::DeliveredSignaling,
            not_pending(Acknowledged),
        ),
        (Acknowledged, C::Delivered, not_pending(Acknowledged)),
        (
            Acknowledged,
            C::AttemptFailedRetryLeft,
            not_pending(Acknowledged),
        ),
        (
            Acknowledged,
            C::AttemptFailedLast,
            not_pending(Acknowledged),
        ),
        (Acknowledged, C::Undeliverable, not_pending(Acknowledged)),
        (
            Acknowledged,
            C::SignalSucceeded,
            change(
                Acknowledged,
                ActionState {
                    status: Succeeded,
                    updated_at: now(),
                    completed_at: Some(now()),
                    ..acknowledged()
                },
                EventKind::Signaled,
                Some("shipped"),
                Some(r#"{"parcels":2}"#),
            ),
        ),
        (
            Acknowledged,
            C::SignalFailed,
            change(
                Acknowledged,
                ActionState {
                    status: Failed,
                    updated_at: now(),
                    completed_at: Some(now()),
                    error_message: Some("address unknown".into()),
                    ..acknowledged()
                },
                EventKind::Signaled,
                Some("address unknown"),
                None,
            ),
        ),
        (
            Acknowledged,
            C::SignalFailedNoMessage,
            change(
                Acknowledged,
                ActionState {
                    status: Failed,
                    updated_at: now(),
                    completed_at: Some(now()),
                    error_message: Some(SIGNALED_FAILURE.into()),
                    ..acknowledged()
                },
                EventKind::Signaled,
                None,
                None,
            ),
        ),
        (
            Acknowledged,
            C::SignalAtTimeout,
            Expect::Refused(Refusal::SignalTooLate { timeout_at: late() }),
        ),
        (
            Acknowledged,
            C::TimeoutPassed,
            change(
                Acknowledged,
                ActionState {
                    status: TimedOut,
                    updated_at: late(),
                    completed_at: Some(late()),
                    error_message: Some(TIMED_OUT_MESSAGE.into()),
                    ..acknowledged()
                },
                EventKind::TimedOut,
                Some(TIMED_OUT_MESSAGE),
                None,
            ),
        ),
        (
            Acknowledged,
            C::TimeoutNotYet,
            Expect::Refused(Refusal::NotExpired {
                timeout_at: Some(late()),
            }),
        ),
    ];
    // Final statuses refuse everything.
    for status in [Succeeded, Failed, TimedOut] {
        for column in COLUMNS {
            let refusal = match column {
                C::Lease
                | C::DeliveredSignaling
                | C::Delivered
                | C::AttemptFailedRetryLeft
                | C::AttemptFailedLast
                | C::Undeliverable => not_pending(status),
                C::SignalSucceeded
                | C::SignalFailed
                | C::SignalFailedNoMessage
                | C::SignalAtTimeout => not_signalable(status),
                C::TimeoutPassed | C::TimeoutNotYet => not_acknowledged(status),
            };
            rows.push((status, column, refusal));
        }
    }
    rows
}

#[test]
fn every_status_and_occurrence_has_its_transition_or_refusal() {
    let rows = table();
    // The table is complete: one row per cell.
    for status in ActionStatus::ALL {
        for column in COLUMNS {
            let n = rows
                .iter()
                .filter(|(s, c, _)| *s == status && *c == column)
                .count();
            assert_eq!(n, 1, "rows for {status} × {column:?}");
        }
    }
    assert_eq!(rows.len(), ActionStatus::ALL.len() * COLUMNS.len());
    for (status, column, want) in rows {
        let got = run(column, in_status(status));
        assert_eq!(got, want, "{status} × {column:?}");
    }
}

#[test]
fn a_record_never_leased_is_leased_but_has_no_delivery_outcome() {
    let fresh = created(at(0));
    assert_eq!(
        fresh,
        ActionState {
            status: ActionStatus::Pending,
            attempt: 0,
            updated_at: at(0),
            available_at: at(0),
            timeout_at: None,
            started_at: None,
            completed_at: None,
            error_message: None,
        }
    );
    assert_eq!(
        lease(&fresh, now()),
        Ok(ActionState {
            attempt: 1,
            started_at: Some(now()),
            ..fresh.clone()
        }),
        "the first lease starts the first attempt"
    );
    let no_retries = schedule("");
    for what in [
        Occurrence::Delivered {
            code: 200,
            signaling: false,
        },
        Occurrence::AttemptFailed {
            reason: "x".into(),
            retry: &no_retries,
            jitter: 0.0,
        },
        Occurrence::Undeliverable { reason: "x".into() },
    ] {
        assert_eq!(
            transition(&record(fresh.clone()), what.clone(), now()),
            Err(Refusal::NotAttempted),
            "{what:?}"
        );
    }
}

#[test]
fn a_record_is_leased_only_once_due() {
    let waiting = ActionState {
        available_at: now().add_millis(1),
        ..pending()
    };
    assert_eq!(
        lease(&waiting, now()),
        Err(Refusal::NotDue {
            available_at: now().add_millis(1)
        })
    );
    let due_now = ActionState {
        available_at: now(),
        ..pending()
    };
    assert_eq!(
        lease(&due_now, now()).map(|s| s.attempt),
        Ok(2),
        "available_at itself is due"
    );
}

/// The retry delay follows the schedule by attempt, spread by the jitter over ±20%, and the
/// last attempt of the schedule fails the record.
#[test]
fn failed_attempts_follow_the_schedule_with_jitter() {
    let retry = schedule("1s,2s");
    let failed = |attempt: u32, jitter: f64| {
        transition(
            &record(ActionState {
                attempt,
                ..pending()
            }),
            Occurrence::AttemptFailed {
                reason: "HTTP 500".into(),
                retry: &retry,
                jitter,
            },
            now(),
        )
        .expect("a pending record's attempt fails")
    };
    let delay = |attempt: u32, jitter: f64| {
        let c = failed(attempt, jitter);
        assert_eq!(c.state.status, ActionStatus::Pending);
        assert_eq!(c.kind, EventKind::AttemptFailed);
        c.state.available_at.millis() - now().millis()
    };
    assert_eq!(delay(1, 0.5), 1_000);
    assert_eq!(delay(2, 0.5), 2_000);
    assert_eq!(delay(2, 0.0), 1_600, "jitter 0: 80% of the delay");
    let top = delay(2, 0.999_999);
    assert!(
        (2_399..2_400).contains(&top),
        "jitter → 1: under 120%: {top}"
    );
    let last = failed(3, 0.5);
    assert_eq!(last.state.status, ActionStatus::Failed);
    assert_eq!(last.kind, EventKind::Failed);
    assert_eq!(
        last.state.error_message.as_deref(),
        Some("HTTP 500 (attempt 3 of 3)")
    );
    // A zero delay still moves available_at (the next attempt is a new lease).
    let zero = transition(
        &record(pending()),
        Occurrence::AttemptFailed {
            reason: "HTTP 500".into(),
            retry: &schedule("0ms"),
            jitter: 0.5,
        },
        now(),
    )
    .expect("fails");
    assert_eq!(zero.state.available_at, now().add_millis(1));
}

#[test]
fn an_acknowledgement_without_a_deadline_takes_signals_and_never_times_out() {
    let open = ActionState {
        timeout_at: None,
        ..acknowledged()
    };
    let signaled = transition(
        &record(open.clone()),
        Occurrence::Signaled {
            outcome: Signal::Succeeded,
            message: None,
            data: None,
        },
        late(),
    )
    .expect("a signal");
    assert_eq!(signaled.state.status, ActionStatus::Succeeded);
    assert_eq!(
        transition(&record(open), Occurrence::AcknowledgementExpired, late()),
        Err(Refusal::NotExpired { timeout_at: None })
    );
}

#[test]
fn changes_make_their_events_and_refusals_read_as_the_api_says() {
    let r = record(acknowledged());
    let c = transition(
        &r,
        Occurrence::Signaled {
            outcome: Signal::Failed,
            message: Some("no".into()),
            data: Some("[1]".into()),
        },
        now(),
    )
    .expect("a signal");
    let e = c.event(r.id);
    assert_eq!(
        ActionEvent {
            id: e.id,
            ..ActionEvent {
                id: Uuid::nil(),
                record_id: r.id,
                kind: "signaled".into(),
                status: ActionStatus::Failed,
                attempt: 1,
                available_at: None,
                timeout_at: Some(late()),
                message: Some("no".into()),
                data: Some("[1]".into()),
                created_at: now(),
            }
        },
        e
    );
    // A pending record's event carries when it is due next.
    let retried = transition(
        &record(pending()),
        Occurrence::AttemptFailed {
            reason: "HTTP 500".into(),
            retry: &schedule("1s"),
            jitter: 0.5,
        },
        now(),
    )
    .expect("fails")
    .event(r.id);
    assert_eq!(retried.available_at, Some(now().add_millis(1_000)));
    assert_eq!(retried.kind, "attempt_failed");

    assert_eq!(
        Refusal::NotSignalable {
            status: ActionStatus::Pending
        }
        .to_string(),
        "the action record is pending, not acknowledged: only an acknowledged record takes a signal"
    );
    assert_eq!(
        Refusal::SignalTooLate {
            timeout_at: Timestamp::parse("2026-01-02T03:04:05Z").expect("time")
        }
        .to_string(),
        "the signal came after timeout_at (2026-01-02T03:04:05.000Z); the action record times out"
    );
    assert_eq!(Signal::parse("succeeded"), Some(Signal::Succeeded));
    assert_eq!(Signal::parse("failed"), Some(Signal::Failed));
    assert_eq!(Signal::parse("timed_out"), None);
    let kinds: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "created",
            "delivered",
            "acknowledged",
            "attempt_failed",
            "failed",
            "signaled",
            "timed_out"
        ]
    );
}
