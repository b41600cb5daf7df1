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
//! SSRF: the HTTP client resolves names through [`GuardedResolver`], which refuses loopback
//! and private addresses (unless allowed), IP literals are checked before sending, and
//! redirects are not followed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use apitrail_model::action::{is_local_name, is_private_address, webhook_target};
use apitrail_model::{ActionEvent, ActionRecord, ActionStatus, RetrySchedule, Tenant, Timestamp};
use apitrail_store::{Expected, Leased, Store};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

/// Settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatchConfig {
    /// Delays between attempts.
    pub retry: RetrySchedule,
    /// Whether destinations may resolve to loopback/private addresses.
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
        }
    }
}

/// A running dispatcher.
#[derive(Debug)]
pub struct Dispatcher {
    stop: Arc<Stop>,
    task: tokio::task::JoinHandle<()>,
}

impl Dispatcher {
    /// Starts the dispatch loop; `wake` is notified when a record is created.
    pub fn spawn(
        store: Arc<dyn Store>,
        config: DispatchConfig,
        wake: Arc<Notify>,
    ) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver {
                allow_private: config.allow_private,
            }))
            .user_agent(concat!("apitrail/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let stop = Arc::new(Stop::default());
        let task = tokio::spawn(run(
            Arc::new(Worker {
                store,
                client,
                config,
            }),
            wake,
            Arc::clone(&stop),
        ));
        Ok(Self { stop, task })
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

struct Worker {
    store: Arc<dyn Store>,
    client: reqwest::Client,
    config: DispatchConfig,
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
        let now = Timestamp::now();
        let until =
            now.add_millis(i64::try_from(worker.config.lease.as_millis()).unwrap_or(i64::MAX));
        let leased = match worker
            .store
            .lease_due_actions(now, until, &worker.config.owner, limit)
            .await
        {
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
                deliver(&worker, l).await;
                drop(permit);
            });
        }
    }
    // Let deliveries in flight record their outcome.
    while deliveries.join_next().await.is_some() {}
}

async fn expire_acknowledgements(worker: &Worker) -> Result<(), apitrail_store::StoreError> {
    let now = Timestamp::now();
    for Leased { tenant, mut record } in worker.store.expired_acknowledgements(now, 500).await? {
        let expected = Expected {
            status: ActionStatus::Acknowledged,
            attempt: record.state.attempt,
            lease_owner: None,
        };
        record.state.status = ActionStatus::TimedOut;
        record.state.updated_at = now;
        record.state.completed_at = Some(now);
        record.state.error_message = Some("no signal came before timeout_at".into());
        let event = ActionEvent::of(&record, "timed_out", record.state.error_message.clone());
        worker
            .store
            .transition_action(&tenant, record.id, &expected, &record.state, &event)
            .await?;
    }
    Ok(())
}

/// What one delivery attempt came to.
enum Outcome {
    /// 2xx.
    Delivered(u16),
    /// Worth another attempt.
    Failed(String),
    /// Never worth another attempt (the destination is gone or refused).
    Refused(String),
}

async fn deliver(worker: &Worker, leased: Leased) {
    let Leased { tenant, record } = leased;
    let (outcome, signaling) = attempt(worker, &tenant, &record).await;
    let expected = Expected {
        status: ActionStatus::Pending,
        attempt: record.state.attempt,
        lease_owner: Some(worker.config.owner.clone()),
    };
    let now = Timestamp::now();
    let mut next = record.clone();
    let s = &mut next.state;
    s.updated_at = now;
    let (kind, message) = match outcome {
        Outcome::Delivered(code) if signaling => {
            s.status = ActionStatus::Acknowledged;
            s.timeout_at = Some(now.add_millis(i64::from(record.timeout_secs) * 1000));
            ("acknowledged", format!("HTTP {code}"))
        }
        Outcome::Delivered(code) => {
            s.status = ActionStatus::Succeeded;
            s.completed_at = Some(now);
            ("delivered", format!("HTTP {code}"))
        }
        Outcome::Failed(why) => match worker.config.retry.delay_after(record.state.attempt) {
            Some(delay) => {
                // Jitter (±20%) keeps retries of a burst from arriving together.
                let jittered = (delay as f64 * (0.8 + 0.4 * fastrand::f64())) as i64;
                s.available_at = now.add_millis(jittered.max(1));
                ("attempt_failed", why)
            }
            None => {
                s.status = ActionStatus::Failed;
                s.completed_at = Some(now);
                s.error_message = Some(format!(
                    "{why} (attempt {} of {})",
                    record.state.attempt,
                    worker.config.retry.max_attempts()
                ));
                ("failed", why)
            }
        },
        Outcome::Refused(why) => {
            s.status = ActionStatus::Failed;
            s.completed_at = Some(now);
            s.error_message = Some(why.clone());
            ("failed", why)
        }
    };
    let event = ActionEvent::of(&next, kind, Some(message));
    match worker
        .store
        .transition_action(&tenant, record.id, &expected, &next.state, &event)
        .await
    {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            record = %record.id,
            "dispatcher: the lease ran out before the outcome was recorded; the record is delivered again"
        ),
        Err(e) => {
            tracing::warn!(record = %record.id, error = %e, "dispatcher: cannot record a delivery outcome")
        }
    }
}

/// Sends one delivery; returns its outcome and whether the destination signals.
async fn attempt(worker: &Worker, tenant: &Tenant, record: &ActionRecord) -> (Outcome, bool) {
    let store = &worker.store;
    let destination = match store.get_destination(tenant, record.destination_id).await {
        Ok(Some(d)) if d.deleted_at.is_none() => d,
        Ok(_) => {
            return (
                Outcome::Refused("the destination was deleted".into()),
                false,
            );
        }
        Err(e) => return (Outcome::Failed(format!("store: {e}")), false),
    };
    let signaling = destination.config.signaling;
    match webhook_target(&destination.config.url) {
        Err(e) => {
            return (
                Outcome::Refused(format!("the destination URL {e}")),
                signaling,
            );
        }
        Ok(t)
            if !worker.config.allow_private
                && (t.ip.is_some_and(is_private_address) || is_local_name(&t.host)) =>
        {
            return (
                Outcome::Refused("the destination points to a loopback or private address".into()),
                signaling,
            );
        }
        Ok(_) => {}
    }
    let secret = match destination.credential_id {
        None => None,
        Some(id) => match store.get_credential(tenant, id).await {
            Ok(Some(c)) => Some(c.secret),
            Ok(None) => {
                return (
                    Outcome::Refused("the destination's credential no longer exists".into()),
                    signaling,
                );
            }
            Err(e) => return (Outcome::Failed(format!("store: {e}")), signaling),
        },
    };
    let body = webhook_body(record);
    let id = record.id.to_string();
    let timestamp = Timestamp::now().millis() / 1000;
    let mut request = worker
        .client
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
            Outcome::Delivered(response.status().as_u16())
        }
        Ok(response) => Outcome::Failed(format!("HTTP {}", response.status().as_u16())),
        Err(e) if e.is_timeout() => Outcome::Failed(format!(
            "no response within response_time_sla_ms ({} ms)",
            destination.config.response_time_sla_ms
        )),
        Err(e) => {
            let why = describe(&e);
            // A name that resolves only to refused addresses will not change its mind on
            // retry: refused at once, like an address.
            if why.contains(NO_PUBLIC_ADDRESS) {
                Outcome::Refused(why)
            } else {
                Outcome::Failed(why)
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
                    "{host} {NO_PUBLIC_ADDRESS} (loopback and private addresses need --allow-private-destinations)"
                )
                .into());
            }
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}
