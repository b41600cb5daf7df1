//! Actions (SPEC §7, seed 002): signing credentials, webhook destinations, versioned action
//! definitions, and the action records apitrail delivers, with their state and events.
//!
//! JSON documents that apitrail only passes through (a definition's schema, a record's input,
//! an event's data) are kept as the JSON text the client sent, so that they come back as sent.

use std::collections::BTreeMap;
use std::fmt;

use uuid::Uuid;

use crate::time::Timestamp;
use crate::transition::EventKind;
use crate::webhook::WebhookSecret;

/// Free-form string labels of a destination or a record.
pub type Tags = BTreeMap<String, String>;

/// The JSON text of `tags` (keys sorted), as stored.
pub fn tags_json(tags: &Tags) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "{}".into())
}

/// Reads stored tags; `None` when the text is not an object of strings.
pub fn parse_tags(text: &str) -> Option<Tags> {
    serde_json::from_str(text).ok()
}

/// The JSON text of a definition's aliases, as stored.
pub fn alias_json(alias: &[String]) -> String {
    serde_json::to_string(alias).unwrap_or_else(|_| "[]".into())
}

/// Reads stored aliases.
pub fn parse_alias(text: &str) -> Option<Vec<String>> {
    serde_json::from_str(text).ok()
}

/// The JSON text of a definition's destination links, as stored:
/// `[{"id","destination_id","is_default"}]`.
pub fn links_json(links: &[DefinitionDestination]) -> String {
    serde_json::Value::Array(
        links
            .iter()
            .map(|l| {
                serde_json::json!({
                    "id": l.id.to_string(),
                    "destination_id": l.destination_id.to_string(),
                    "is_default": l.is_default,
                })
            })
            .collect(),
    )
    .to_string()
}

/// Reads stored destination links.
pub fn parse_links(text: &str) -> Option<Vec<DefinitionDestination>> {
    let items: Vec<serde_json::Value> = serde_json::from_str(text).ok()?;
    items
        .iter()
        .map(|v| {
            Some(DefinitionDestination {
                id: Uuid::parse_str(v.get("id")?.as_str()?).ok()?,
                destination_id: Uuid::parse_str(v.get("destination_id")?.as_str()?).ok()?,
                is_default: v.get("is_default")?.as_bool()?,
            })
        })
        .collect()
}

/// A signing credential: its secret signs webhook deliveries of the destinations using it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// UUIDv7.
    pub id: Uuid,
    /// Display label.
    pub label: String,
    /// The signing secret (shown once, at creation).
    pub secret: WebhookSecret,
    /// When it was created.
    pub created_at: Timestamp,
}

/// Where and how a destination's deliveries are sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookConfig {
    /// `http(s)://…` URL receiving the POSTs.
    pub url: String,
    /// Extra headers sent with every delivery.
    pub headers: BTreeMap<String, String>,
    /// Whether a 2xx only acknowledges: the outcome then comes through the signal route.
    pub signaling: bool,
    /// How long a delivery may take before it counts as failed.
    pub response_time_sla_ms: u32,
}

/// A webhook destination; deleting one only sets `deleted_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// UUIDv7.
    pub id: Uuid,
    /// Display label.
    pub label: String,
    /// The webhook settings.
    pub config: WebhookConfig,
    /// The credential signing its deliveries, if any.
    pub credential_id: Option<Uuid>,
    /// Labels.
    pub tags: Tags,
    /// Whether its deliveries may reach loopback/private addresses: the
    /// `--allow-private-destinations` of the server that created or last changed it, so that
    /// every server sharing the store delivers it alike. `None` for a destination stored
    /// before the decision was recorded: the delivering server's own setting decides.
    pub allow_private: Option<bool>,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
    /// When it was deleted.
    pub deleted_at: Option<Timestamp>,
}

/// One destination of a definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionDestination {
    /// The link's own id.
    pub id: Uuid,
    /// The destination.
    pub destination_id: Uuid,
    /// Whether records go there unless they name another destination.
    pub is_default: bool,
}

/// One version of an action definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionDefinition {
    /// UUIDv7, shared by all versions.
    pub id: Uuid,
    /// The name records are triggered by (and the webhook body's `action`).
    pub variant: String,
    /// 1 for the first; a changed schema makes the next.
    pub version: u32,
    /// Other names records may be triggered by.
    pub alias: Vec<String>,
    /// The JSON Schema of the input, as JSON text.
    pub schema: String,
    /// Where records are delivered.
    pub destinations: Vec<DefinitionDestination>,
    /// When this version was created.
    pub created_at: Timestamp,
    /// When this version last changed.
    pub updated_at: Timestamp,
    /// When the definition was deleted.
    pub deleted_at: Option<Timestamp>,
}

impl ActionDefinition {
    /// Every name the definition answers to: its variant, then its aliases.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.variant.as_str()).chain(self.alias.iter().map(String::as_str))
    }

    /// The destination a record goes to when it names none.
    pub fn default_destination(&self) -> Option<Uuid> {
        self.destinations
            .iter()
            .find(|d| d.is_default)
            .or_else(|| self.destinations.first())
            .map(|d| d.destination_id)
    }
}

/// Where an action record is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionStatus {
    /// Waiting for its next delivery attempt.
    Pending,
    /// Delivered to a signaling destination, waiting for its signal.
    Acknowledged,
    /// Done.
    Succeeded,
    /// Given up, or reported failed by the destination.
    Failed,
    /// Acknowledged, but no signal came before `timeout_at`.
    TimedOut,
}

impl ActionStatus {
    /// Every status.
    pub const ALL: [ActionStatus; 5] = [
        Self::Pending,
        Self::Acknowledged,
        Self::Succeeded,
        Self::Failed,
        Self::TimedOut,
    ];

    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Acknowledged => "acknowledged",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::TimedOut => "timed_out",
        }
    }

    /// Parses the wire spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether nothing more happens to a record in this status.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::TimedOut)
    }
}

impl fmt::Display for ActionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A record's current state (the latest of its events).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionState {
    /// The status.
    pub status: ActionStatus,
    /// Delivery attempts started so far.
    pub attempt: u32,
    /// When the state last changed.
    pub updated_at: Timestamp,
    /// When the next attempt is due (pending records).
    pub available_at: Timestamp,
    /// When an acknowledged record times out without a signal.
    pub timeout_at: Option<Timestamp>,
    /// When the first attempt started.
    pub started_at: Option<Timestamp>,
    /// When it reached a final status.
    pub completed_at: Option<Timestamp>,
    /// Why it failed or timed out.
    pub error_message: Option<String>,
}

/// An action to deliver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionRecord {
    /// UUIDv7 (also the webhook's `webhook-id`).
    pub id: Uuid,
    /// Its definition.
    pub definition_id: Uuid,
    /// The definition's version it was made with.
    pub version: u32,
    /// The definition's variant when it was made.
    pub variant: String,
    /// The input, as JSON text.
    pub input: String,
    /// Seconds a signaling destination has, after acknowledging, to signal the outcome.
    pub timeout_secs: u32,
    /// Labels.
    pub tags: Tags,
    /// Where it is delivered.
    pub destination_id: Uuid,
    /// The request that created it.
    pub request_id: Option<String>,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its state.
    pub state: ActionState,
}

/// One transition of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionEvent {
    /// UUIDv7.
    pub id: Uuid,
    /// The record.
    pub record_id: Uuid,
    /// What happened: `created`, `delivered`, `acknowledged`, `attempt_failed`, `failed`,
    /// `signaled`, `timed_out`.
    pub kind: String,
    /// The record's status after it.
    pub status: ActionStatus,
    /// The attempt it belongs to.
    pub attempt: u32,
    /// When the next attempt is due, if any.
    pub available_at: Option<Timestamp>,
    /// When an acknowledgement times out, if any.
    pub timeout_at: Option<Timestamp>,
    /// A human-readable detail (e.g. the receiver's status).
    pub message: Option<String>,
    /// Data reported with a signal, as JSON text.
    pub data: Option<String>,
    /// When it happened.
    pub created_at: Timestamp,
}

impl ActionEvent {
    /// The event recording that `record` entered its current state.
    pub fn of(record: &ActionRecord, kind: &str, message: Option<String>) -> Self {
        Self::entering(record.id, &record.state, kind, message)
    }

    /// The event recording that record `record_id` entered `state` (through a change of
    /// [`transition`](crate::transition)).
    pub fn of_state(
        record_id: Uuid,
        state: &ActionState,
        kind: EventKind,
        message: Option<String>,
    ) -> Self {
        Self::entering(record_id, state, kind.as_str(), message)
    }

    fn entering(record_id: Uuid, s: &ActionState, kind: &str, message: Option<String>) -> Self {
        Self {
            id: crate::new_record_id(),
            record_id,
            kind: kind.into(),
            status: s.status,
            attempt: s.attempt,
            available_at: (s.status == ActionStatus::Pending).then_some(s.available_at),
            timeout_at: s.timeout_at,
            message,
            data: None,
            created_at: s.updated_at,
        }
    }
}

/// What a search of the actions dialect compares (`search[field]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionSearch {
    /// The record id; `None` for a value that is no UUID (matches nothing).
    Id(Option<Uuid>),
    /// The definition id; `None` as for `Id`.
    DefinitionId(Option<Uuid>),
    /// The variant.
    Variant(String),
    /// `state.status`; `None` for an unknown status (matches nothing).
    Status(Option<ActionStatus>),
    /// `tags.<key>` equals the value.
    Tag(String, String),
    /// `input.<path>`: the JSON value at the path (object keys) equals the value: a string
    /// equal to it, a number equal to it read as a number, or `true`/`false`.
    Input(Vec<String>, String),
}

/// The actions dialect's filters, all optional and combined with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionFilter {
    /// `action_definition_id`; `Some(None)` for a value that is no UUID (matches nothing).
    pub definition_id: Option<Option<Uuid>>,
    /// `variant`.
    pub variant: Option<String>,
    /// `version`.
    pub version: Option<u32>,
    /// `search`.
    pub search: Option<ActionSearch>,
}

impl ActionFilter {
    /// The reference semantics of the filter, which every store must agree with.
    pub fn matches(&self, r: &ActionRecord) -> bool {
        self.definition_id
            .is_none_or(|d| d == Some(r.definition_id))
            && self.variant.as_ref().is_none_or(|v| *v == r.variant)
            && self.version.is_none_or(|v| v == r.version)
            && self.search.as_ref().is_none_or(|s| s.matches(r))
    }
}

impl ActionSearch {
    /// Whether `r` matches.
    pub fn matches(&self, r: &ActionRecord) -> bool {
        match self {
            Self::Id(id) => *id == Some(r.id),
            Self::DefinitionId(id) => *id == Some(r.definition_id),
            Self::Variant(v) => *v == r.variant,
            Self::Status(s) => *s == Some(r.state.status),
            Self::Tag(k, v) => r.tags.get(k) == Some(v),
            Self::Input(path, value) => {
                let Ok(input) = serde_json::from_str::<serde_json::Value>(&r.input) else {
                    return false;
                };
                let found = path
                    .iter()
                    .try_fold(&input, |v, key| v.as_object().and_then(|o| o.get(key)));
                match found {
                    Some(serde_json::Value::String(s)) => s == value,
                    Some(serde_json::Value::Number(n)) => {
                        match (n.as_f64(), search_number(value)) {
                            (Some(a), Some(b)) => a == b,
                            _ => false,
                        }
                    }
                    Some(serde_json::Value::Bool(b)) => value == if *b { "true" } else { "false" },
                    _ => false,
                }
            }
        }
    }
}

/// A search value read as a number, when it is one (finite).
pub fn search_number(value: &str) -> Option<f64> {
    value.parse::<f64>().ok().filter(|f| f.is_finite())
}

/// The most names (variant plus aliases) a definition may have.
pub const MAX_NAMES: usize = 20;

/// Whether `name` may be a variant or alias: 1-100 characters of `[A-Za-z0-9_.:-]`, not a
/// UUID (a UUID names a definition by id).
pub fn valid_action_name(name: &str) -> bool {
    (1..=100).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
        && Uuid::parse_str(name).is_err()
}

/// The delays between delivery attempts (`--retry-schedule`): attempt `n` (1-based) that
/// fails is retried after `delays[n-1]`; after the last delay's attempt, the record fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    delays_ms: Vec<u64>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self::parse("5s,30s,2m,10m,30m,1h,2h,5h").unwrap_or(Self { delays_ms: vec![] })
    }
}

impl RetrySchedule {
    /// Parses `5s,30s,2m,...` (units `ms`, `s`, `m`, `h`; an empty list means no retries).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut delays_ms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (digits, unit) = part
                .find(|c: char| !c.is_ascii_digit())
                .map_or((part, ""), |i| part.split_at(i));
            let n: u64 = digits
                .parse()
                .map_err(|_| format!("{part:?} is not a delay such as 5s, 2m or 250ms"))?;
            let factor = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return Err(format!("{part:?} needs a unit: ms, s, m or h")),
            };
            delays_ms.push(n.saturating_mul(factor));
        }
        Ok(Self { delays_ms })
    }

    /// Attempts in all (the first plus one per delay).
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.delays_ms.len()).unwrap_or(u32::MAX - 1) + 1
    }

    /// The delay after failed attempt `attempt` (1-based), or `None` when it was the last.
    pub fn delay_after(&self, attempt: u32) -> Option<u64> {
        let i = usize::try_from(attempt.checked_sub(1)?).ok()?;
        self.delays_ms.get(i).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(input: &str) -> ActionRecord {
        let now = Timestamp::now();
        ActionRecord {
            id: Uuid::nil(),
            definition_id: Uuid::nil(),
            version: 1,
            variant: "v".into(),
            input: input.into(),
            timeout_secs: 30,
            tags: Tags::from([("team".to_string(), "a".to_string())]),
            destination_id: Uuid::nil(),
            request_id: None,
            created_at: now,
            state: ActionState {
                status: ActionStatus::Pending,
                attempt: 0,
                updated_at: now,
                available_at: now,
                timeout_at: None,
                started_at: None,
                completed_at: None,
                error_message: None,
            },
        }
    }

    #[test]
    fn input_search_compares_strings_numbers_and_booleans() {
        let r = record(r#"{"a":{"b":"x","n":1.50,"t":true,"z":null},"arr":[1]}"#);
        let s = |path: &str, v: &str| {
            ActionSearch::Input(path.split('.').map(String::from).collect(), v.into()).matches(&r)
        };
        assert!(s("a.b", "x"));
        assert!(!s("a.b", "y"));
        assert!(s("a.n", "1.5"));
        assert!(s("a.n", "1.50"));
        assert!(!s("a.n", "2"));
        assert!(s("a.t", "true"));
        assert!(!s("a.t", "1"));
        assert!(!s("a.z", "null"));
        assert!(!s("arr.0", "1"));
        assert!(!s("a.missing", "x"));
        assert!(ActionSearch::Tag("team".into(), "a".into()).matches(&r));
        assert!(!ActionSearch::Tag("team".into(), "b".into()).matches(&r));
    }

    #[test]
    fn retry_schedules_parse_with_units() {
        let s = RetrySchedule::parse("250ms, 2s,1m,1h").expect("parses");
        assert_eq!(s.max_attempts(), 5);
        assert_eq!(s.delay_after(1), Some(250));
        assert_eq!(s.delay_after(2), Some(2_000));
        assert_eq!(s.delay_after(4), Some(3_600_000));
        assert_eq!(s.delay_after(5), None);
        assert_eq!(s.delay_after(0), None);
        assert_eq!(RetrySchedule::default().max_attempts(), 9);
        assert!(RetrySchedule::parse("5").is_err());
        assert!(RetrySchedule::parse("5d").is_err());
        assert_eq!(RetrySchedule::parse("").expect("empty").max_attempts(), 1);
    }

    #[test]
    fn names_exclude_uuids_and_odd_characters() {
        assert!(valid_action_name("send_email.v2"));
        assert!(!valid_action_name(""));
        assert!(!valid_action_name("has space"));
        assert!(!valid_action_name("0190b4c4-0c1c-7cc0-8f6e-2f0f5e1a0b1c"));
    }
}

/// A webhook URL's parts that the SSRF checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookTarget {
    /// The host as written (brackets removed from an IPv6 literal), lowercased.
    pub host: String,
    /// The port (the scheme's default when absent).
    pub port: u16,
    /// The address, when the host is an IP literal.
    pub ip: Option<std::net::IpAddr>,
}

/// Checks a webhook URL's form (`http`/`https`, a host, no user info) and returns its target.
pub fn webhook_target(url: &str) -> Result<WebhookTarget, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| "must be an absolute http(s) URL".to_owned())?;
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err("must use the http or https scheme".into()),
    };
    if url.chars().count() > 2048 || url.chars().any(|c| c.is_control() || c == ' ') {
        return Err("must be at most 2048 characters without spaces or control characters".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("must not carry user info (put credentials in headers)".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| "has an unterminated IPv6 address".to_owned())?;
        (host, after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("must name a host".into());
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("has an invalid port {p:?}"))?,
    };
    let host = host.to_ascii_lowercase();
    let ip = host.parse().ok();
    Ok(WebhookTarget { host, port, ip })
}

/// Whether a host name always means this machine (`localhost` and its subdomains).
pub fn is_local_name(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host == "localhost" || host.ends_with(".localhost")
}

/// Whether an address is loopback, private, link-local or otherwise not a public unicast
/// address: a destination there could reach the server's own network (SSRF).
pub fn is_private_address(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240
                || (a == 192 && b == 0 && v4.octets()[2] == 0)
                || (a == 198 && (18..20).contains(&b))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_private_address(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first == 0x2001 && v6.segments()[1] == 0x0db8)
                || (first == 0x0064 && v6.segments()[1] == 0xff9b)
        }
    }
}

#[cfg(test)]
mod ssrf_tests {
    use super::*;

    #[test]
    fn urls_are_split_into_targets() {
        let t = webhook_target("https://Example.com/hook?x=1").expect("valid");
        assert_eq!((t.host.as_str(), t.port, t.ip), ("example.com", 443, None));
        let t = webhook_target("http://127.0.0.1:8080/x").expect("valid");
        assert_eq!(t.port, 8080);
        assert_eq!(t.ip, Some("127.0.0.1".parse().expect("ip")));
        let t = webhook_target("http://[::1]:9/").expect("valid");
        assert_eq!(t.ip, Some("::1".parse().expect("ip")));
        for bad in [
            "ftp://x.com",
            "x.com/hook",
            "http://user:pw@x.com/",
            "http:///path",
            "http://x.com:0/",
            "http://x.com:99999/",
            "http://x .com/",
        ] {
            assert!(webhook_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn private_and_loopback_addresses_are_recognized() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(
                is_private_address(private.parse().expect("ip")),
                "{private}"
            );
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private_address(public.parse().expect("ip")), "{public}");
        }
        assert!(is_local_name("localhost"));
        assert!(is_local_name("api.localhost."));
        assert!(!is_local_name("localhost.example.com"));
    }
}
