//! Viewer tokens (SPEC §10): short-lived, read-only credentials of one org that read only
//! the record kinds they were made for, with a filter forced on every query they make.
//!
//! The filter is forced here, once per filter type ([`ViewerFilter::narrow_logs`],
//! [`ViewerFilter::narrow_audit`]), as an AND with the query's own filters, so that every
//! route reading a kind narrows it the same way.

use uuid::Uuid;

use crate::audit::AuditFilter;
use crate::id::OrgId;
use crate::query::LogFilter;
use crate::time::Timestamp;
use crate::validate::{FieldError, optional_text};

/// A record kind a viewer token may read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ViewerKind {
    /// Request logs (`/v1/logs` and the request-log dialects).
    RequestLogs,
    /// Audit entries (`/v1/audit-log` and `/audit-log`).
    AuditLog,
    /// Action records (`/v1/orgs/{org_id}/actions/records`).
    ActionRecords,
}

impl ViewerKind {
    /// Every kind, in canonical order.
    pub const ALL: [ViewerKind; 3] = [
        ViewerKind::RequestLogs,
        ViewerKind::AuditLog,
        ViewerKind::ActionRecords,
    ];

    /// The kind's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            ViewerKind::RequestLogs => "request_logs",
            ViewerKind::AuditLog => "audit_log",
            ViewerKind::ActionRecords => "action_records",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    fn bit(self) -> u8 {
        match self {
            ViewerKind::RequestLogs => 1,
            ViewerKind::AuditLog => 2,
            ViewerKind::ActionRecords => 4,
        }
    }
}

/// A set of kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct ViewerKinds(u8);

impl ViewerKinds {
    /// Every kind.
    pub const ALL: ViewerKinds = ViewerKinds(7);

    /// The set as stored: one bit per kind.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Rebuilds a set from stored bits; unknown bits are dropped.
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & 7)
    }

    /// Whether `kind` is in the set.
    pub fn contains(self, kind: ViewerKind) -> bool {
        self.0 & kind.bit() != 0
    }

    /// The kinds in canonical order.
    pub fn iter(self) -> impl Iterator<Item = ViewerKind> {
        ViewerKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

impl FromIterator<ViewerKind> for ViewerKinds {
    fn from_iter<I: IntoIterator<Item = ViewerKind>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |acc, k| acc | k.bit()))
    }
}

/// The filter forced on every query of a viewer token; every `Some` must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ViewerFilter {
    /// Only records of this user: request logs' `user_id`, audit entries' acting `user_id`.
    pub user_id: Option<String>,
    /// Only records made with this API key: request logs' `api_key_id` (audit entries and
    /// action records carry no key, so a token with this filter cannot read them).
    pub api_key_id: Option<String>,
}

impl ViewerFilter {
    /// Whether the filter narrows nothing.
    pub fn is_empty(&self) -> bool {
        self.user_id.is_none() && self.api_key_id.is_none()
    }

    /// Whether records of `kind` carry a field for every part of this filter, so that the
    /// filter can be forced on them. A kind that cannot be narrowed is never readable with a
    /// filter: it would leak what the filter hides.
    pub fn applies_to(&self, kind: ViewerKind) -> bool {
        match kind {
            ViewerKind::RequestLogs => true,
            ViewerKind::AuditLog => self.api_key_id.is_none(),
            ViewerKind::ActionRecords => self.is_empty(),
        }
    }

    /// `filter` AND this filter, over request logs.
    pub fn narrow_logs(&self, mut filter: LogFilter) -> LogFilter {
        let mut nothing = false;
        for (want, have) in [
            (&self.user_id, &mut filter.user_id),
            (&self.api_key_id, &mut filter.api_key_id),
        ] {
            if let Some(want) = want {
                match have {
                    Some(h) if h != want => nothing = true,
                    _ => *have = Some(want.clone()),
                }
            }
        }
        if nothing {
            filter.match_nothing();
        }
        filter
    }

    /// `filter` AND this filter, over audit entries (whose actor is their `user_id`).
    /// [`ViewerFilter::applies_to`] keeps an `api_key_id` filter from reaching audit entries.
    pub fn narrow_audit(&self, mut filter: AuditFilter) -> AuditFilter {
        if let Some(user) = &self.user_id {
            filter.user_ids.push(user.clone());
        }
        filter
    }
}

/// A stored viewer token. The secret itself is never kept, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViewerToken {
    /// UUIDv7.
    pub id: Uuid,
    /// The org it reads.
    pub org_id: OrgId,
    /// The kinds it reads.
    pub kinds: ViewerKinds,
    /// The filter forced on its queries.
    pub filter: ViewerFilter,
    /// When it was made.
    pub created_at: Timestamp,
    /// When it stops authenticating.
    pub expires_at: Timestamp,
    /// When it was revoked, if it was.
    pub revoked_at: Option<Timestamp>,
}

impl ViewerToken {
    /// Whether the token authenticates at `now`: unrevoked and not yet expired.
    pub fn is_live(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// The shortest lifetime of a viewer token, in seconds.
pub const MIN_TTL_SECS: i64 = 60;
/// The longest lifetime of a viewer token, in seconds (24 h).
pub const MAX_TTL_SECS: i64 = 86_400;
/// The lifetime of a viewer token made without `ttl_seconds` (1 h).
pub const DEFAULT_TTL_SECS: i64 = 3_600;
/// The most live (unexpired, unrevoked) viewer tokens an org may have.
pub const MAX_LIVE_PER_ORG: u64 = 1_000;

/// A validated request to make a viewer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewViewerToken {
    /// Lifetime in seconds, within [`MIN_TTL_SECS`]..=[`MAX_TTL_SECS`].
    pub ttl_secs: i64,
    /// The kinds, never empty.
    pub kinds: ViewerKinds,
    /// The forced filter.
    pub filter: ViewerFilter,
}

/// The unchecked parts of a viewer token request.
#[derive(Debug, Clone, Default)]
pub struct NewViewerTokenInput {
    /// Optional; 60..=86400.
    pub ttl_seconds: Option<i64>,
    /// Optional (default: all); non-empty, each a known kind.
    pub kinds: Option<Vec<String>>,
    /// Optional, 1-1024 bytes.
    pub user_id: Option<String>,
    /// Optional, 1-1024 bytes.
    pub api_key_id: Option<String>,
}

impl TryFrom<NewViewerTokenInput> for NewViewerToken {
    type Error = Vec<FieldError>;

    fn try_from(input: NewViewerTokenInput) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        let ttl_secs = input.ttl_seconds.unwrap_or(DEFAULT_TTL_SECS);
        if !(MIN_TTL_SECS..=MAX_TTL_SECS).contains(&ttl_secs) {
            errors.push(FieldError::new(
                "ttl_seconds",
                format!("must be between {MIN_TTL_SECS} and {MAX_TTL_SECS} (24 h)"),
            ));
        }
        let kinds = match input.kinds {
            None => ViewerKinds::ALL,
            Some(list) if list.is_empty() => {
                errors.push(FieldError::new(
                    "kinds",
                    "must name at least one of request_logs, audit_log, action_records",
                ));
                ViewerKinds::default()
            }
            Some(list) => {
                let mut set = Vec::new();
                for k in &list {
                    match ViewerKind::parse(k) {
                        Some(kind) => set.push(kind),
                        None => errors.push(FieldError::new(
                            "kinds",
                            format!(
                                "unknown kind {k:?}; use request_logs, audit_log or action_records"
                            ),
                        )),
                    }
                }
                set.into_iter().collect()
            }
        };
        let max = crate::request_log::rules::MAX_TEXT;
        let filter = ViewerFilter {
            user_id: optional_text(&mut errors, "filter.user_id", input.user_id, max),
            api_key_id: optional_text(&mut errors, "filter.api_key_id", input.api_key_id, max),
        };
        if let Some(kind) = kinds.iter().find(|k| !filter.applies_to(*k)) {
            errors.push(FieldError::new(
                "filter",
                format!(
                    "cannot be forced on {}, whose records carry no such field; leave {} out of \
                     kinds or drop the filter",
                    kind.as_str(),
                    kind.as_str()
                ),
            ));
        }
        if errors.is_empty() {
            Ok(NewViewerToken {
                ttl_secs,
                kinds,
                filter,
            })
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::AuditEntry;
    use crate::request_log::RequestLog;

    fn input(
        ttl: Option<i64>,
        kinds: Option<&[&str]>,
        user: Option<&str>,
        key: Option<&str>,
    ) -> NewViewerTokenInput {
        NewViewerTokenInput {
            ttl_seconds: ttl,
            kinds: kinds.map(|k| k.iter().map(|s| (*s).to_owned()).collect()),
            user_id: user.map(str::to_owned),
            api_key_id: key.map(str::to_owned),
        }
    }

    fn fields(i: NewViewerTokenInput) -> Vec<String> {
        NewViewerToken::try_from(i)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = NewViewerToken::try_from(input(None, None, None, None)).unwrap();
        assert_eq!(ok.ttl_secs, DEFAULT_TTL_SECS);
        assert_eq!(ok.kinds, ViewerKinds::ALL);
        assert!(ok.filter.is_empty());
        assert_eq!(fields(input(Some(59), None, None, None)), ["ttl_seconds"]);
        assert_eq!(
            fields(input(Some(86_401), None, None, None)),
            ["ttl_seconds"]
        );
        assert!(NewViewerToken::try_from(input(Some(60), None, None, None)).is_ok());
        assert!(NewViewerToken::try_from(input(Some(86_400), None, None, None)).is_ok());
        assert_eq!(fields(input(None, Some(&[]), None, None)), ["kinds"]);
        assert_eq!(fields(input(None, Some(&["logs"]), None, None)), ["kinds"]);
        // A filter on a kind that cannot carry it is refused, never ignored.
        assert_eq!(fields(input(None, None, Some("u1"), None)), ["filter"]);
        assert_eq!(
            fields(input(None, Some(&["audit_log"]), None, Some("k1"))),
            ["filter"]
        );
        let t = NewViewerToken::try_from(input(
            None,
            Some(&["request_logs", "audit_log"]),
            Some("u1"),
            None,
        ))
        .unwrap();
        assert_eq!(
            t.kinds.iter().collect::<Vec<_>>(),
            [ViewerKind::RequestLogs, ViewerKind::AuditLog]
        );
        assert_eq!(
            fields(input(None, Some(&["request_logs"]), Some(""), None)),
            ["filter.user_id"]
        );
    }

    #[test]
    fn the_forced_filter_is_anded_with_the_query() {
        let f = ViewerFilter {
            user_id: Some("u1".into()),
            api_key_id: Some("k1".into()),
        };
        let log = |user: &str, key: &str| RequestLog {
            user_id: Some(user.into()),
            api_key_id: Some(key.into()),
            status_code: 200,
            ..RequestLog::default()
        };
        let open = f.narrow_logs(LogFilter::default());
        assert!(open.matches(&log("u1", "k1")));
        assert!(!open.matches(&log("u2", "k1")));
        assert!(!open.matches(&log("u1", "k2")));
        // A query for another key or user gets nothing, never that key's records.
        let other = f.narrow_logs(LogFilter {
            api_key_id: Some("k2".into()),
            ..LogFilter::default()
        });
        for (u, k) in [("u1", "k1"), ("u1", "k2"), ("u2", "k2")] {
            assert!(!other.matches(&log(u, k)), "{u} {k}");
        }
        let same = f.narrow_logs(LogFilter {
            api_key_id: Some("k1".into()),
            ..LogFilter::default()
        });
        assert!(same.matches(&log("u1", "k1")));

        let entry = |user: Option<&str>| AuditEntry {
            id: Uuid::nil(),
            user_id: user.map(str::to_owned),
            action: "create".into(),
            resource_type: "api_key".into(),
            resource_id: None,
            details: None,
            ip_address: None,
            request_id: None,
            created_at: Timestamp::from_millis(0).unwrap(),
        };
        let audit = ViewerFilter {
            user_id: Some("u1".into()),
            api_key_id: None,
        }
        .narrow_audit(AuditFilter::default());
        assert!(audit.matches(&entry(Some("u1"))));
        assert!(!audit.matches(&entry(Some("u2"))));
        assert!(!audit.matches(&entry(None)));
        let twice = ViewerFilter {
            user_id: Some("u2".into()),
            api_key_id: None,
        }
        .narrow_audit(audit);
        assert!(!twice.matches(&entry(Some("u1"))) && !twice.matches(&entry(Some("u2"))));
    }
}
