//! The action state machine (SPEC §7): every change an action record's state may undergo, and
//! what each leaves it in. Pure functions of a record, what happened to it and the time; the
//! trigger and signal routes and the dispatcher call them and write what they return with the
//! store's compare-and-set, so no state rule lives anywhere else.
//!
//! ```text
//! created ─▶ pending ─lease (attempt + 1)─▶ pending, leased ─┬─ 2xx, signaling ─▶ acknowledged
//!               ▲                                             ├─ 2xx ─▶ succeeded
//!               └── attempt failed, a delay left ─────────────┤
//!                   (available_at = now + delay ± 20%)        ├─ attempt failed, none left ─▶ failed
//!                                                             └─ undeliverable ─▶ failed
//! acknowledged ─┬─ signal before timeout_at ─▶ succeeded | failed
//!               └─ timeout_at passed ─▶ timed_out
//! ```
//!
//! The lease itself (who holds a record, until when) is the store's: a pending, due record
//! nobody holds a live lease on is leased, which is how a record whose dispatcher died is
//! delivered again once the lease expired ([`lease`] says what that does to its state).

use uuid::Uuid;

use crate::action::{ActionEvent, ActionRecord, ActionState, ActionStatus, RetrySchedule};
use crate::time::Timestamp;

/// The kinds of event a record's history holds (`ActionEvent::kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The record was triggered.
    Created,
    /// A delivery got a 2xx from a destination without signaling: done.
    Delivered,
    /// A delivery got a 2xx from a signaling destination: the outcome comes by signal.
    Acknowledged,
    /// A delivery attempt failed; another is scheduled.
    AttemptFailed,
    /// The record failed: its last attempt failed, or it can never be delivered.
    Failed,
    /// A signaling destination reported the outcome.
    Signaled,
    /// No signal came before `timeout_at`.
    TimedOut,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 7] = [
        Self::Created,
        Self::Delivered,
        Self::Acknowledged,
        Self::AttemptFailed,
        Self::Failed,
        Self::Signaled,
        Self::TimedOut,
    ];

    /// The wire (and stored) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "created",
            Self::Delivered => "delivered",
            Self::Acknowledged => "acknowledged",
            Self::AttemptFailed => "attempt_failed",
            Self::Failed => "failed",
            Self::Signaled => "signaled",
            Self::TimedOut => "timed_out",
        }
    }
}

/// The outcome a signaling destination reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// `succeeded`.
    Succeeded,
    /// `failed`.
    Failed,
}

impl Signal {
    /// Parses the wire spelling (`succeeded` or `failed`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "succeeded" => Some(Self::Succeeded),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    /// The status it moves a record to.
    pub fn status(self) -> ActionStatus {
        match self {
            Self::Succeeded => ActionStatus::Succeeded,
            Self::Failed => ActionStatus::Failed,
        }
    }
}

/// What happened to a record (the input of [`transition`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Occurrence<'a> {
    /// A delivery got the 2xx `code`; with `signaling`, the destination reports the outcome
    /// later through the signal route.
    Delivered {
        /// The receiver's status code.
        code: u16,
        /// Whether the destination signals.
        signaling: bool,
    },
    /// A delivery attempt failed in a way worth another attempt, if `retry` has one left.
    AttemptFailed {
        /// Why, for the event's message.
        reason: String,
        /// The delays between attempts.
        retry: &'a RetrySchedule,
        /// In `[0, 1)`: where in ±20% of the delay the next attempt falls, so that retries of
        /// a burst do not arrive together (the dispatcher draws it at random).
        jitter: f64,
    },
    /// The record can never be delivered (its destination or credential is gone, its URL is
    /// refused): it fails without another attempt.
    Undeliverable {
        /// Why, for the event's message and `error_message`.
        reason: String,
    },
    /// A signaling destination reported the outcome of an acknowledged record.
    Signaled {
        /// The outcome.
        outcome: Signal,
        /// A detail, kept in the event (and as `error_message` when failed).
        message: Option<String>,
        /// Any JSON text, kept in the event.
        data: Option<String>,
    },
    /// The dispatcher found an acknowledged record past its `timeout_at`.
    AcknowledgementExpired,
}

/// A change of a record's state: what the store's compare-and-set needs (the status and
/// attempt the record must still be at, the state it moves to) and the event recording it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionChange {
    /// The status the record must still have when the change is written.
    pub from: ActionStatus,
    /// The attempt it must still be at.
    pub attempt: u32,
    /// The state it moves to.
    pub state: ActionState,
    /// The event's kind.
    pub kind: EventKind,
    /// The event's message.
    pub message: Option<String>,
    /// The event's data (JSON text).
    pub data: Option<String>,
}

impl ActionChange {
    /// The event recording this change of record `record_id` (with a fresh id).
    pub fn event(&self, record_id: Uuid) -> ActionEvent {
        let mut event =
            ActionEvent::of_state(record_id, &self.state, self.kind, self.message.clone());
        event.data.clone_from(&self.data);
        event
    }
}

/// Why a record cannot undergo what happened to it. The messages are the API's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Only an acknowledged record takes a signal.
    #[error(
        "the action record is {status}, not acknowledged: only an acknowledged record takes a signal"
    )]
    NotSignalable {
        /// The record's status.
        status: ActionStatus,
    },
    /// The signal came at or after `timeout_at`: the record times out instead.
    #[error(
        "the signal came after timeout_at ({}); the action record times out",
        .timeout_at.to_rfc3339()
    )]
    SignalTooLate {
        /// The record's deadline.
        timeout_at: Timestamp,
    },
    /// Only a pending record is leased or has delivery outcomes.
    #[error("the action record is {status}, not pending: it is not being delivered")]
    NotPending {
        /// The record's status.
        status: ActionStatus,
    },
    /// A pending record is leased only once its `available_at` has come.
    #[error("the action record is due at {}, not yet", .available_at.to_rfc3339())]
    NotDue {
        /// When it is due.
        available_at: Timestamp,
    },
    /// A delivery outcome for a record never leased (attempt 0).
    #[error("the action record has had no delivery attempt")]
    NotAttempted,
    /// Only an acknowledged record times out.
    #[error("the action record is {status}, not acknowledged: it is not waiting for a signal")]
    NotAcknowledged {
        /// The record's status.
        status: ActionStatus,
    },
    /// An acknowledged record times out only once its `timeout_at` has come.
    #[error("the acknowledgement has not timed out yet (timeout_at {})",
        .timeout_at.map_or_else(|| "none".to_owned(), Timestamp::to_rfc3339))]
    NotExpired {
        /// The record's deadline, if it has one.
        timeout_at: Option<Timestamp>,
    },
}

/// The message of an acknowledged record that timed out.
pub const TIMED_OUT_MESSAGE: &str = "no signal came before timeout_at";

/// The `error_message` of a record signaled failed without a message.
pub const SIGNALED_FAILURE: &str = "the destination signaled failure";

/// The state of a record triggered at `at`: pending, due at once, no attempt yet.
pub fn created(at: Timestamp) -> ActionState {
    ActionState {
        status: ActionStatus::Pending,
        attempt: 0,
        updated_at: at,
        available_at: at,
        timeout_at: None,
        started_at: None,
        completed_at: None,
        error_message: None,
    }
}

/// What leasing a record at `now` does to its state (the reference the stores' lease
/// statements follow): a pending, due record counts one more attempt and keeps the time of
/// its first. Leasing again after an expired lease is the same step.
pub fn lease(state: &ActionState, now: Timestamp) -> Result<ActionState, Refusal> {
    if state.status != ActionStatus::Pending {
        return Err(Refusal::NotPending {
            status: state.status,
        });
    }
    if state.available_at > now {
        return Err(Refusal::NotDue {
            available_at: state.available_at,
        });
    }
    let mut next = state.clone();
    next.attempt = next.attempt.saturating_add(1);
    next.started_at.get_or_insert(now);
    Ok(next)
}

/// The change `what` makes to `record` at `now`, or why it cannot happen.
pub fn transition(
    record: &ActionRecord,
    what: Occurrence<'_>,
    now: Timestamp,
) -> Result<ActionChange, Refusal> {
    let current = &record.state;
    let mut s = current.clone();
    s.updated_at = now;
    let (kind, message, data) = match what {
        Occurrence::Delivered { code, signaling } => {
            being_delivered(current)?;
            if signaling {
                s.status = ActionStatus::Acknowledged;
                s.timeout_at = Some(now.add_millis(i64::from(record.timeout_secs) * 1000));
                (EventKind::Acknowledged, Some(format!("HTTP {code}")), None)
            } else {
                s.status = ActionStatus::Succeeded;
                s.completed_at = Some(now);
                (EventKind::Delivered, Some(format!("HTTP {code}")), None)
            }
        }
        Occurrence::AttemptFailed {
            reason,
            retry,
            jitter,
        } => {
            being_delivered(current)?;
            match retry.delay_after(current.attempt) {
                Some(delay) => {
                    let jittered = (delay as f64 * (0.8 + 0.4 * jitter.clamp(0.0, 1.0))) as i64;
                    s.available_at = now.add_millis(jittered.max(1));
                    (EventKind::AttemptFailed, Some(reason), None)
                }
                None => {
                    s.status = ActionStatus::Failed;
                    s.completed_at = Some(now);
                    s.error_message = Some(format!(
                        "{reason} (attempt {} of {})",
                        current.attempt,
                        retry.max_attempts()
                    ));
                    (EventKind::Failed, Some(reason), None)
                }
            }
        }
        Occurrence::Undeliverable { reason } => {
            being_delivered(current)?;
            s.status = ActionStatus::Failed;
            s.completed_at = Some(now);
            s.error_message = Some(reason.clone());
            (EventKind::Failed, Some(reason), None)
        }
        Occurrence::Signaled {
            outcome,
            message,
            data,
        } => {
            if current.status != ActionStatus::Acknowledged {
                return Err(Refusal::NotSignalable {
                    status: current.status,
                });
            }
            if let Some(timeout_at) = current.timeout_at.filter(|t| *t <= now) {
                // The dispatcher marks it timed_out at its next pass; the signal is late
                // either way.
                return Err(Refusal::SignalTooLate { timeout_at });
            }
            s.status = outcome.status();
            s.completed_at = Some(now);
            s.error_message = match outcome {
                Signal::Failed => Some(
                    message
                        .clone()
                        .unwrap_or_else(|| SIGNALED_FAILURE.to_owned()),
                ),
                Signal::Succeeded => None,
            };
            (EventKind::Signaled, message, data)
        }
        Occurrence::AcknowledgementExpired => {
            if current.status != ActionStatus::Acknowledged {
                return Err(Refusal::NotAcknowledged {
                    status: current.status,
                });
            }
            if current.timeout_at.is_none_or(|t| t > now) {
                return Err(Refusal::NotExpired {
                    timeout_at: current.timeout_at,
                });
            }
            s.status = ActionStatus::TimedOut;
            s.completed_at = Some(now);
            s.error_message = Some(TIMED_OUT_MESSAGE.to_owned());
            (
                EventKind::TimedOut,
                Some(TIMED_OUT_MESSAGE.to_owned()),
                None,
            )
        }
    };
    Ok(ActionChange {
        from: current.status,
        attempt: current.attempt,
        state: s,
        kind,
        message,
        data,
    })
}

/// Whether a record can have a delivery outcome: it is pending and was leased at least once.
fn being_delivered(state: &ActionState) -> Result<(), Refusal> {
    if state.status != ActionStatus::Pending {
        return Err(Refusal::NotPending {
            status: state.status,
        });
    }
    if state.attempt == 0 {
        return Err(Refusal::NotAttempted);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
