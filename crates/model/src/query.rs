//! What a list query asks for: filters, a sort order, and a page.
//!
//! Every order is total: ties on the sort key are broken by `id` in the same direction, so a
//! keyset position `(key, id)` identifies exactly where a page ended.

use uuid::Uuid;

use crate::request_log::RequestLog;
use crate::time::Timestamp;

/// The field request logs are ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// `created_at`.
    CreatedAt,
    /// `duration_ms`; logs without a duration sort below every known duration.
    DurationMs,
    /// `status_code`.
    StatusCode,
}

impl SortKey {
    /// The key's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::CreatedAt => "created_at",
            SortKey::DurationMs => "duration_ms",
            SortKey::StatusCode => "status_code",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::CreatedAt, Self::DurationMs, Self::StatusCode]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Ascending or descending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SortDir {
    /// Smallest first.
    Asc,
    /// Largest first.
    Desc,
}

impl SortDir {
    /// The direction's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            SortDir::Asc => "asc",
            SortDir::Desc => "desc",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "asc" => Some(Self::Asc),
            "desc" => Some(Self::Desc),
            _ => None,
        }
    }
}

/// A total order over request logs: the key, then `id`, both in `dir`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sort {
    /// The sort key.
    pub key: SortKey,
    /// The direction, applied to the key and to the `id` tie-break.
    pub dir: SortDir,
}

impl Sort {
    /// Newest first: the default of every dialect.
    pub const NEWEST_FIRST: Sort = Sort {
        key: SortKey::CreatedAt,
        dir: SortDir::Desc,
    };

    /// The value of this order's key for `log`, as stored (a missing duration is `-1`).
    pub fn key_of(&self, log: &RequestLog) -> i64 {
        match self.key {
            SortKey::CreatedAt => log.created_at.millis(),
            SortKey::DurationMs => log.duration_ms.unwrap_or(-1),
            SortKey::StatusCode => i64::from(log.status_code),
        }
    }

    /// The position of `log` in this order.
    pub fn position_of(&self, log: &RequestLog) -> Position {
        Position {
            key: self.key_of(log),
            id: log.id,
        }
    }

    /// Whether `a` comes strictly before `b` in this order.
    pub fn before(&self, a: &Position, b: &Position) -> bool {
        match self.dir {
            SortDir::Asc => (a.key, a.id) < (b.key, b.id),
            SortDir::Desc => (a.key, a.id) > (b.key, b.id),
        }
    }
}

/// Where a page ended: the sort key and id of its last item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The sort key's stored value.
    pub key: i64,
    /// The tie-break.
    pub id: Uuid,
}

/// Which page to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// Items per page, at least 1.
    pub limit: u32,
    /// Where to start.
    pub start: PageStart,
}

/// The start of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageStart {
    /// The beginning of the order.
    First,
    /// Just after this position (keyset pagination).
    After(Position),
    /// After skipping this many items (only for dialects that document offsets).
    Offset(u64),
}

impl PageRequest {
    /// The first page of `limit` items.
    pub fn first(limit: u32) -> Self {
        Self {
            limit,
            start: PageStart::First,
        }
    }
}

/// Filters over request logs; every `Some` must hold. Text filters match exactly, except
/// `method` (stored uppercase, so callers uppercase it) and `request_id` (see
/// [`request_id_variants`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogFilter {
    /// Uppercase method.
    pub method: Option<String>,
    /// Exact route template.
    pub route_pattern: Option<String>,
    /// Request id, with or without the `req_` prefix.
    pub request_id: Option<String>,
    /// Exact auth type.
    pub auth_type: Option<String>,
    /// Lowest status code, inclusive.
    pub status_min: Option<u16>,
    /// Highest status code, inclusive.
    pub status_max: Option<u16>,
    /// Earliest `created_at`, inclusive.
    pub from: Option<Timestamp>,
    /// Latest `created_at`, exclusive.
    pub to: Option<Timestamp>,
    /// Exact API key id.
    pub api_key_id: Option<String>,
    /// Exact service account id.
    pub service_account_id: Option<String>,
    /// Exact user id.
    pub user_id: Option<String>,
    /// Exact email.
    pub email: Option<String>,
}

/// The two spellings a request id filter matches: as given, and with the `req_` prefix added
/// or removed.
pub fn request_id_variants(v: &str) -> [String; 2] {
    match v.strip_prefix("req_") {
        Some(bare) => [v.to_owned(), bare.to_owned()],
        None => [v.to_owned(), format!("req_{v}")],
    }
}

/// Whether a stored request id (`have`) is the one asked for (`want`, in either spelling:
/// [`request_id_variants`]). The reference semantics of every lookup by request id: the
/// request log filter and the request timeline's audit entries and action records.
pub fn request_id_matches(want: &str, have: Option<&str>) -> bool {
    have.is_some_and(|have| request_id_variants(want).iter().any(|v| v == have))
}

impl LogFilter {
    /// Makes the filter match no record: its status range becomes empty (no status code is
    /// at least 600 and at most 99), which every store answers as it answers any range. An
    /// AND of two different values for one field (a viewer token's forced filter and a
    /// query's own, [`crate::viewer::ViewerFilter::narrow_logs`]) is this filter.
    pub fn match_nothing(&mut self) {
        self.status_min = Some(600);
        self.status_max = Some(99);
    }

    /// The reference semantics of the filter, which every store must agree with.
    pub fn matches(&self, log: &RequestLog) -> bool {
        fn eq(want: &Option<String>, have: &Option<String>) -> bool {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        }
        self.method.as_ref().is_none_or(|m| *m == log.method)
            && eq(&self.route_pattern, &log.route_pattern)
            && self
                .request_id
                .as_ref()
                .is_none_or(|r| request_id_matches(r, log.request_id.as_deref()))
            && eq(&self.auth_type, &log.auth_type)
            && self.status_min.is_none_or(|s| log.status_code >= s)
            && self.status_max.is_none_or(|s| log.status_code <= s)
            && self.from.is_none_or(|t| log.created_at >= t)
            && self.to.is_none_or(|t| log.created_at < t)
            && eq(&self.api_key_id, &log.api_key_id)
            && eq(&self.service_account_id, &log.service_account_id)
            && eq(&self.user_id, &log.user_id)
            && eq(&self.email, &log.email)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_filters_match_both_spellings() {
        let log = |rid: &str| RequestLog {
            request_id: Some(rid.into()),
            ..Default::default()
        };
        for (filter, stored) in [
            ("abc", "abc"),
            ("abc", "req_abc"),
            ("req_abc", "abc"),
            ("req_abc", "req_abc"),
        ] {
            let f = LogFilter {
                request_id: Some(filter.into()),
                ..Default::default()
            };
            assert!(f.matches(&log(stored)), "{filter} vs {stored}");
        }
        let f = LogFilter {
            request_id: Some("abc".into()),
            ..Default::default()
        };
        assert!(!f.matches(&log("req_abcd")));
        assert!(!f.matches(&RequestLog::default()));
    }

    #[test]
    fn request_ids_match_in_either_spelling_and_never_absent_ones() {
        for (want, have) in [("abc", "abc"), ("abc", "req_abc"), ("req_abc", "abc")] {
            assert!(request_id_matches(want, Some(have)), "{want} vs {have}");
        }
        for (want, have) in [
            ("abc", "req_abcd"),
            ("abc", "ab"),
            ("req_abc", "req_req_abc"),
        ] {
            assert!(!request_id_matches(want, Some(have)), "{want} vs {have}");
        }
        assert!(!request_id_matches("abc", None));
    }

    #[test]
    fn orders_break_ties_by_id_in_the_same_direction() {
        let a = Position {
            key: 5,
            id: Uuid::from_u128(1),
        };
        let b = Position {
            key: 5,
            id: Uuid::from_u128(2),
        };
        let asc = Sort {
            key: SortKey::StatusCode,
            dir: SortDir::Asc,
        };
        let desc = Sort {
            dir: SortDir::Desc,
            ..asc
        };
        assert!(asc.before(&a, &b) && !asc.before(&b, &a));
        assert!(desc.before(&b, &a) && !desc.before(&a, &b));
    }
}
