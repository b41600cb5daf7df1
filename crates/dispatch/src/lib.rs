//! The action dispatcher that runs inside `apitrail serve` (SPEC §7).
//!
//! A loop leases due records from the store (`lease_due_actions`: across every process sharing
//! the store, no record is held by two dispatchers at once), delivers each as a signed
//! Standard Webhook on its own task (bounded by a semaphore), and writes the outcome with a
//! compare-and-set transition that only succeeds while the lease is still this dispatcher's.
//! A process that dies mid-delivery leaves its leases to expire; the record is then leased
//! again (delivery is at least once). The same loop times out acknowledged records whose
//! signal did not come.
//!
//! Per delivery the store is asked as little as possible: destinations and their secrets are
//! kept for a second ([`targets`]), and outcomes are recorded in batches, one
//! `transition_actions` call for every delivery that finished while the previous batch was
//! being written (a delivery still waits for its own outcome to be recorded before it counts
//! as done).
//!
//! The state changes themselves (what a delivery outcome or a timeout does to a record) are
//! the model's state machine ([`apitrail_model::transition`]); this crate only finds out what
//! happened and records the change. Its figures (leases, outcomes, lag) are [`DispatchStats`],
//! which `/metrics` shows.
//!
//! SSRF: whether a delivery may reach loopback and private addresses is its destination's
//! recorded decision ([`Destination::allow_private`], made by the server that created or last
//! changed it), so every dispatcher sharing the store treats a record alike whatever its own
//! flag; only destinations stored before decisions were recorded fall back to this
//! dispatcher's [`DispatchConfig::allow_private`]. A destination not allowed them is sent
//! through a client whose [`GuardedResolver`] drops loopback and private addresses; an allowed
//! one through a second client whose resolver keeps them (its own connection pool, so no
//! connection to a private address is ever reused for a destination not allowed one). IP
//! literals are checked before sending, and redirects are not followed.

mod stats;
mod targets;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use apitrail_model::action::{is_local_name, is_private_address, webhook_target};
use apitrail_model::transition::transition;
use apitrail_model::{
    ActionRecord, Destination, EventKind, Occurrence, RetrySchedule, Tenant, Timestamp,
};
use apitrail_store::{Leased, Store, StoreError, Transition};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

pub use crate::stats::{DispatchSnapshot, DispatchStats, LAG_SECONDS};
use crate::targets::{Target, Targets};

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Delays between attempts.
    pub retry: RetrySchedule,
    /// Whether destinations without a recorded decision ([`Destination::allow_private`] is
    /// `None`: stored before decisions were recorded) may reach loopback/private addresses.
    /// Every other destination is delivered by its own recorded decision.
    pub allow_private: bool,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How often to look for due records when nothing wakes the loop.
    pub poll: Duration,
    /// How long a leased record stays this dispatcher's: a record whose dispatcher died is
    /// delivered again once its lease ran out. A delivery never waits longer than three
    /// quarters of it (nor than the destination's SLA), so the outcome is recorded in time.
    pub lease: Duration,
    /// This dispatcher's name in leases (unique per process).
    pub owner: String,
    /// How long a destination (and its credential) read from the store is used for later
    /// deliveries: a change or deletion is seen by deliveries at most this much later. Zero
    /// reads them for every delivery.
    pub destination_ttl: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        Self {
            retry: RetrySchedule::default(),
            allow_private: false,
            concurrency: 256,
            poll: Duration::from_millis(100),
            lease: Duration::from_secs(150),
            owner: format!("{}-{}", std::process::id(), apitrail_model::new_record_id()),
            destination_ttl: Duration::from_secs(1),
        }
    }
}

/// A running dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    stop: Arc<Stop>,
    task: tokio::task::JoinHandle<()>,
    stats: Arc<DispatchStats>,
}

impl Dispatcher {
    /// Starts the dispatch loop; `wake` is notified when a record is created.
    pub fn spawn(
        store: Arc<dyn Store>,
        config: DispatchConfig,
        wake: Arc<Notify>,
    ) -> Result<Self, reqwest::Error> {
        let clients = Clients {
            guarded: webhook_client(false)?,
            open: webhook_client(true)?,
        };
        let stop = Arc::new(Stop::default());
        let stats = Arc::new(DispatchStats::default());
        // The recorder ends when the worker (the last sender) is dropped, after the loop and
        // every delivery in flight.
        let (outcomes, queue) = mpsc::unbounded_channel();
        tokio::spawn(record_outcomes(Arc::clone(&store), queue));
        let task = tokio::spawn(run(
            Arc::new(Worker {
                store,
                clients,
                targets: Targets::new(config.destination_ttl),
                config,
                outcomes,
                stats: Arc::clone(&stats),
            }),
            wake,
            Arc::clone(&stop),
        ));
        Ok(Self { stop, task, stats })
    }

    /// Its figures, for `/metrics`.
    pub fn stats(&self) -> Arc<DispatchStats> {
        Arc::clone(&self.stats)
    }

    /// Stops leasing and waits (at most `grace`) for deliveries in flight to finish; those
    /// still running are abandoned, and their records delivered again once the lease expires.
    pub async fn stop(self, grace: Duration) {
        self.stop.flag.store(true, Ordering::Release);
        self.stop.notify.notify_one();
        let mut task = self.task;
        if tokio::time::timeout(grace, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// A stop request: the flag for a loop that is busy, the notification for one that waits.
#[derive(Debug, Default)]
struct Stop {
    flag: AtomicBool,
    notify: Notify,
}

/// The webhook client for destinations that may not reach private addresses, and the one for
/// those that may: separate clients, so that their pooled connections are never shared.
struct Clients {
    guarded: reqwest::Client,
    open: reqwest::Client,
}

impl Clients {
    fn get(&self, allow_private: bool) -> &reqwest::Client {
        if allow_private {
            &self.open
        } else {
            &self.guarded
        }
    }
}

/// A webhook client: no redirects, no proxy, names resolved by a [`GuardedResolver`].
fn webhook_client(allow_private: bool) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(Arc::new(GuardedResolver { allow_private }))
        .user_agent(concat!("apitrail/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Whether deliveries to `destination` may reach loopback/private addresses: its recorded
/// decision, or `fallback` (the dispatcher's own flag) for one stored before decisions were
/// recorded.
fn allows_private(destination: &Destination, fallback: bool) -> bool {
    destination.allow_private.unwrap_or(fallback)
}

struct Worker {
    store: Arc<dyn Store>,
    clients: Clients,
    config: DispatchConfig,
    targets: Targets,
    /// Outcomes to record, to the recorder ([`record_outcomes`]).
    outcomes: mpsc::UnboundedSender<Outcome>,
    stats: Arc<DispatchStats>,
}

/// A delivery's outcome to record, and the delivery waiting to hear whether it was.
struct Outcome {
    transition: Transition,
    recorded: oneshot::Sender<Result<bool, StoreError>>,
}

/// The most outcomes recorded in one call.
const OUTCOME_BATCH: usize = 512;

impl Worker {
    /// Records `transition` (with the other outcomes waiting meanwhile); returns whether it
    /// happened.
    #[tracing::instrument(level = "debug", skip_all, fields(
        org = %transition.tenant.org_id(), record = %transition.id,
        attempt = transition.expected.attempt, kind = %transition.event.kind,
    ))]
    async fn record(&self, transition: Transition) -> Result<bool, StoreError> {
        let (recorded, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(o)) = self.outcomes.send(Outcome {
            transition,
            recorded,
        }) {
            // No recorder (it cannot end while a worker lives, but if it did): alone.
            return transition_alone(&*self.store, &o.transition).await;
        }
        answer.await.unwrap_or(Err(StoreError::Closed))
    }
}

/// Records the outcomes queued by deliveries: everything queued (up to [`OUTCOME_BATCH`]) in
/// one `transition_actions` call, so outcomes cost one statement per batch instead of one
/// round trip each; while a batch is written the next one queues. If a batch fails, its
/// transitions are tried one by one, so one bad outcome cannot fail the others.
async fn record_outcomes(store: Arc<dyn Store>, mut queue: mpsc::UnboundedReceiver<Outcome>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, OUTCOME_BATCH).await > 0 {
        record_batch(&*store, &mut batch).await;
    }
}

/// Records one batch of outcomes and answers each delivery waiting for its own.
#[tracing::instrument(level = "debug", skip_all, fields(outcomes = batch.len()))]
async fn record_batch(store: &dyn Store, batch: &mut Vec<Outcome>) {
    let (transitions, waiting): (Vec<Transition>, Vec<_>) =
        batch.drain(..).map(|o| (o.transition, o.recorded)).unzip();
    match store.transition_actions(&transitions).await {
        Ok(done) if done.len() == transitions.len() => {
            for (recorded, done) in waiting.into_iter().zip(done) {
                let _ = recorded.send(Ok(done));
            }
        }
        answer => {
            if let Err(e) = answer {
                tracing::debug!(error = %e, outcomes = transitions.len(), "dispatcher: recording outcomes one by one");
            }
            for (t, recorded) in transitions.iter().zip(waiting) {
                let _ = recorded.send(transition_alone(store, t).await);
            }
        }
    }
}

/// One transition on its own: the fallback when a batch failed, so that one outcome the
/// batch statement could not take (or a lost connection) does not fail the others.
async fn transition_alone(store: &dyn Store, t: &Transition) -> Result<bool, StoreError> {
    store
        .transition_action(&t.tenant, t.id, &t.expected, &t.state, &t.event)
        .await
}

async fn run(worker: Arc<Worker>, wake: Arc<Notify>, stop: Arc<Stop>) {
    let permits = Arc::new(Semaphore::new(worker.config.concurrency.max(1)));
    let mut deliveries = JoinSet::new();
    let mut busy = false;
    let mut last_expiry = tokio::time::Instant::now();
    loop {
        if stop.flag.load(Ordering::Acquire) {
            break;
        }
        if !busy {
            tokio::select! {
                _ = stop.notify.notified() => break,
                _ = wake.notified() => {}
                _ = tokio::time::sleep(worker.config.poll) => {}
            }
        }
        while deliveries.try_join_next().is_some() {}
        busy = false;
        // Timeouts are checked once per poll interval, not at every wake-up.
        if last_expiry.elapsed() >= worker.config.poll {
            last_expiry = tokio::time::Instant::now();
            if let Err(e) = expire_acknowledgements(&worker).await {
                tracing::warn!(error = %e, "dispatcher: cannot time out acknowledgements");
            }
        }
        let free = permits.available_permits();
        if free == 0 {
            // Wait for a delivery to finish before leasing more.
            tokio::select! {
                _ = stop.notify.notified() => break,
                _ = deliveries.join_next() => {}
            }
            busy = true;
            continue;
        }
        let limit = u32::try_from(free.min(500)).unwrap_or(500);
        let leased = match lease_pass(&worker, limit).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "dispatcher: cannot lease due actions");
                continue;
            }
        };
        busy = leased.len() as u32 == limit;
        for l in leased {
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
                break;
            };
            let worker = Arc::clone(&worker);
            deliveries.spawn(async move {
                let _counted = worker.stats.delivering();
                deliver(&worker, l).await;
                drop(permit);
            });
        }
    }
    // Let deliveries in flight record their outcome.
    while deliveries.join_next().await.is_some() {}
}

/// Leases up to `limit` due records for this dispatcher, counting them and their lag.
#[tracing::instrument(level = "debug", skip_all, fields(limit = limit, leased = tracing::field::Empty))]
async fn lease_pass(worker: &Worker, limit: u32) -> Result<Vec<Leased>, StoreError> {
    let now = Timestamp::now();
    let until = now.add_millis(i64::try_from(worker.config.lease.as_millis()).unwrap_or(i64::MAX));
    let leased = worker
        .store
        .lease_due_actions(now, until, &worker.config.owner, limit)
        .await?;
    tracing::Span::current().record("leased", leased.len());
    worker.stats.lease_pass(leased.len());
    for l in &leased {
        worker
            .stats
            .lag(now.millis() - l.record.state.available_at.millis());
    }
    Ok(leased)
}

/// Times out the acknowledged records whose `timeout_at` has passed.
#[tracing::instrument(level = "debug", skip_all, fields(expired = tracing::field::Empty))]
async fn expire_acknowledgements(worker: &Worker) -> Result<(), StoreError> {
    let now = Timestamp::now();
    let expired = worker.store.expired_acknowledgements(now, 500).await?;
    tracing::Span::current().record("expired", expired.len());
    if expired.is_empty() {
        return Ok(());
    }
    let transitions: Vec<Transition> = expired
        .into_iter()
        .filter_map(|Leased { tenant, record }| {
            match transition(&record, Occurrence::AcknowledgementExpired, now) {
                Ok(change) => Some(Transition::new(tenant, record.id, &change, None)),
                Err(refusal) => {
                    // The store picked it by the same rule; nothing to do if it disagrees.
                    tracing::debug!(record = %record.id, %refusal, "dispatcher: not timed out");
                    None
                }
            }
        })
        .collect();
    // One call for all of them; a signal that came meanwhile wins its compare-and-set.
    let done = worker.store.transition_actions(&transitions).await?;
    for _ in done.into_iter().filter(|d| *d) {
        worker.stats.transition(EventKind::TimedOut);
    }
    Ok(())
}

/// What one delivery attempt came to.
enum Attempt {
    /// 2xx.
    Delivered(u16),
    /// Worth another attempt.
    Failed(String),
    /// Never worth another attempt (the destination is gone or refused).
    Refused(String),
}

/// Delivers one leased record and records the outcome.
#[tracing::instrument(level = "debug", skip_all, fields(
    org = %leased.tenant.org_id(), record = %leased.record.id, attempt = leased.record.state.attempt,
))]
async fn deliver(worker: &Worker, leased: Leased) {
    let Leased { tenant, record } = leased;
    let (outcome, signaling) = attempt(worker, &tenant, &record).await;
    let what = match outcome {
        Attempt::Delivered(code) => Occurrence::Delivered { code, signaling },
        Attempt::Failed(reason) => Occurrence::AttemptFailed {
            reason,
            retry: &worker.config.retry,
            jitter: fastrand::f64(),
        },
        Attempt::Refused(reason) => Occurrence::Undeliverable { reason },
    };
    let change = match transition(&record, what, Timestamp::now()) {
        Ok(change) => change,
        Err(refusal) => {
            // A leased record is pending at attempt 1 or more: this cannot happen, but if it
            // did, the lease runs out and the record is delivered again.
            tracing::warn!(record = %record.id, %refusal, "dispatcher: a delivery outcome the record cannot take");
            worker.stats.unrecorded();
            return;
        }
    };
    let kind = change.kind;
    let owner = Some(worker.config.owner.clone());
    match worker
        .record(Transition::new(tenant, record.id, &change, owner))
        .await
    {
        Ok(true) => worker.stats.transition(kind),
        Ok(false) => {
            worker.stats.unrecorded();
            tracing::warn!(
                record = %record.id,
                "dispatcher: the lease ran out before the outcome was recorded; the record is delivered again"
            );
        }
        Err(e) => {
            worker.stats.unrecorded();
            tracing::warn!(record = %record.id, error = %e, "dispatcher: cannot record a delivery outcome");
        }
    }
}

/// Sends one delivery; returns its outcome and whether the destination signals.
async fn attempt(worker: &Worker, tenant: &Tenant, record: &ActionRecord) -> (Attempt, bool) {
    let target = match worker
        .targets
        .get(&*worker.store, tenant, record.destination_id)
        .await
    {
        Ok(t) => t,
        Err(e) => return (Attempt::Failed(format!("store: {e}")), false),
    };
    let (destination, secret) = match &*target {
        Target::Ready {
            destination,
            secret,
        } => (destination, secret),
        Target::Gone => {
            return (
                Attempt::Refused("the destination was deleted".into()),
                false,
            );
        }
        Target::NoCredential { signaling } => {
            return (
                Attempt::Refused("the destination's credential no longer exists".into()),
                *signaling,
            );
        }
    };
    let signaling = destination.config.signaling;
    let allow_private = allows_private(destination, worker.config.allow_private);
    match webhook_target(&destination.config.url) {
        Err(e) => {
            return (
                Attempt::Refused(format!("the destination URL {e}")),
                signaling,
            );
        }
        Ok(t)
            if !allow_private
                && (t.ip.is_some_and(is_private_address) || is_local_name(&t.host)) =>
        {
            return (
                Attempt::Refused("the destination points to a loopback or private address".into()),
                signaling,
            );
        }
        Ok(_) => {}
    }
    let body = webhook_body(record);
    let id = record.id.to_string();
    let timestamp = Timestamp::now().millis() / 1000;
    let mut request = worker
        .clients
        .get(allow_private)
        .post(&destination.config.url)
        .timeout(
            Duration::from_millis(u64::from(destination.config.response_time_sla_ms))
                .min(worker.config.lease * 3 / 4),
        )
        .header("content-type", "application/json");
    for (name, value) in &destination.config.headers {
        request = request.header(name, value);
    }
    request = request
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(secret) = secret {
        request = request.header("webhook-signature", secret.sign(&id, timestamp, &body));
    }
    let outcome = match request.body(body).send().await {
        Ok(response) if response.status().is_success() => {
            Attempt::Delivered(response.status().as_u16())
        }
        Ok(response) => Attempt::Failed(format!("HTTP {}", response.status().as_u16())),
        Err(e) if e.is_timeout() => Attempt::Failed(format!(
            "no response within response_time_sla_ms ({} ms)",
            destination.config.response_time_sla_ms
        )),
        Err(e) => {
            let why = describe(&e);
            // A name that resolves only to refused addresses will not change its mind on
            // retry: refused at once, like an address.
            if why.contains(NO_PUBLIC_ADDRESS) {
                Attempt::Refused(why)
            } else {
                Attempt::Failed(why)
            }
        }
    };
    (outcome, signaling)
}

/// The delivery body: `{id, action, version, input, tags, attempt}` (input as it was sent).
pub fn webhook_body(record: &ActionRecord) -> Vec<u8> {
    #[derive(serde::Serialize)]
    struct Body<'a> {
        id: String,
        action: &'a str,
        version: u32,
        input: &'a RawValue,
        tags: &'a apitrail_model::Tags,
        attempt: u32,
    }
    let input: Box<RawValue> = RawValue::from_string(record.input.clone())
        .unwrap_or_else(|_| RawValue::from_string("null".into()).unwrap_or_default());
    serde_json::to_vec(&Body {
        id: record.id.to_string(),
        action: &record.variant,
        version: record.version,
        input: &input,
        tags: &record.tags,
        attempt: record.state.attempt,
    })
    .unwrap_or_default()
}

/// A connection error's chain of causes, for the event's message.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The resolver's refusal, recognized in delivery errors.
const NO_PUBLIC_ADDRESS: &str = "resolves to no public address";

/// Resolves names for the webhook client, dropping loopback and private addresses unless
/// they are allowed (a name resolving only to such addresses fails the attempt).
#[derive(Debug)]
pub struct GuardedResolver {
    allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let found: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let allowed: Vec<SocketAddr> = found
                .into_iter()
                .filter(|a| allow_private || !is_private_address(a.ip()))
                .collect();
            if allowed.is_empty() {
                return Err(format!(
                    "{host} {NO_PUBLIC_ADDRESS} (loopback and private addresses need a destination \
                     created or changed through a server with --allow-private-destinations)"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use apitrail_model::{ActionEvent, ActionStatus, new_record_id};
    use apitrail_store::Expected;
    use apitrail_store_sqlite::{SqliteOptions, SqliteStore};
    use apitrail_store_tests::support::{at, create_record, new_org, pending};

    use super::*;

    /// Outcomes sent together are recorded (in batches) and each sender hears about its own:
    /// those under this dispatcher's lease happen, with their events; one expecting another
    /// owner's lease does not.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outcomes_are_recorded_in_batches_and_answered_one_by_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path(), SqliteOptions::default()).expect("open"));
        let tenant = new_org(&*store, "recorder").await;
        for i in 0..40 {
            let record = pending(new_record_id(), "notify", at(i), at(i));
            create_record(&*store, &tenant, &record).await;
        }
        let now = at(1_000);
        let leased = store
            .lease_due_actions(now, now.add_millis(60_000), "me", 100)
            .await
            .expect("lease");
        assert_eq!(leased.len(), 40);

        let (outcomes, queue) = mpsc::unbounded_channel();
        let recorder = tokio::spawn(record_outcomes(Arc::clone(&store), queue));
        let mut answers = Vec::new();
        for (i, Leased { tenant, record }) in leased.iter().cloned().enumerate() {
            let mut next = record.clone();
            next.state.status = ActionStatus::Succeeded;
            next.state.completed_at = Some(now);
            let owner = if i == 7 { "someone else" } else { "me" };
            let (recorded, answer) = oneshot::channel();
            let sent = outcomes.send(Outcome {
                transition: Transition {
                    tenant,
                    id: record.id,
                    expected: Expected {
                        status: ActionStatus::Pending,
                        attempt: record.state.attempt,
                        lease_owner: Some(owner.into()),
                    },
                    event: ActionEvent::of(&next, "delivered", None),
                    state: next.state,
                },
                recorded,
            });
            assert!(sent.is_ok(), "the recorder is running");
            answers.push((record.id, i, answer));
        }
        drop(outcomes);
        for (id, i, answer) in answers {
            let happened = answer.await.expect("an answer").expect("recorded");
            assert_eq!(happened, i != 7, "outcome {i}");
            let stored = store
                .get_action_record(&tenant, id)
                .await
                .expect("get")
                .expect("stored");
            let want = if i == 7 {
                ActionStatus::Pending
            } else {
                ActionStatus::Succeeded
            };
            assert_eq!(stored.state.status, want, "record {i}");
            let kinds: Vec<String> = store
                .action_events(&tenant, &[id])
                .await
                .expect("events")
                .into_iter()
                .map(|e| e.kind)
                .collect();
            let want: &[&str] = if i == 7 {
                &["created"]
            } else {
                &["created", "delivered"]
            };
            assert_eq!(kinds, want, "events of record {i}");
        }
        recorder
            .await
            .expect("the recorder ends with its last sender");
        store.shutdown().await.expect("shutdown");
    }
}
