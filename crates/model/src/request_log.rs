//! Request logs: one row per HTTP call made to a platform's API, and the checks their fields
//! pass at ingest.

use std::net::IpAddr;

use uuid::Uuid;

use crate::time::Timestamp;

/// A request log, as stored. It is the superset of what the three request-log dialects print;
/// each dialect picks and renames its own fields.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestLog {
    /// UUIDv7, or the UUID it was ingested with.
    pub id: Uuid,
    /// The platform's request id (`X-Request-Id`), if known.
    pub request_id: Option<String>,
    /// Uppercase HTTP method token.
    pub method: String,
    /// The path as requested, without the query string.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: Option<String>,
    /// The route template, e.g. `/v1/users/{id}`.
    pub route_pattern: Option<String>,
    /// 100–599.
    pub status_code: u16,
    /// The platform's error code for failed calls.
    pub error_code: Option<String>,
    /// Milliseconds from the request's start to its completion, when known.
    pub duration_ms: Option<i64>,
    /// When the platform started handling the request.
    pub started_at: Option<Timestamp>,
    /// When the platform finished handling the request.
    pub completed_at: Option<Timestamp>,
    /// When the log was created (defaults to ingest time).
    pub created_at: Timestamp,
    /// The caller's address.
    pub client_ip: Option<IpAddr>,
    /// The caller's `User-Agent`.
    pub user_agent: Option<String>,
    /// The caller's `Origin`.
    pub origin: Option<String>,
    /// How the caller authenticated, e.g. `api_key`, `session`, `jwt`.
    pub auth_type: Option<String>,
    /// `user` or `service_account`, or any platform-specific kind.
    pub principal_type: Option<String>,
    /// The acting principal's id.
    pub principal_id: Option<String>,
    /// The acting user's id.
    pub user_id: Option<String>,
    /// The acting user's email.
    pub email: Option<String>,
    /// The id of the API key used (never the secret).
    pub api_key_id: Option<String>,
    /// The acting service account's id.
    pub service_account_id: Option<String>,
    /// The request body, capped at ingest.
    pub request_body: Option<String>,
    /// Whether `request_body` was cut at the cap.
    pub request_body_truncated: bool,
    /// The response body, capped at ingest.
    pub response_body: Option<String>,
    /// Whether `response_body` was cut at the cap.
    pub response_body_truncated: bool,
    /// The call's price as a decimal string.
    pub price: Option<String>,
    /// Billable minutes.
    pub minutes: Option<i64>,
    /// Billable seconds.
    pub seconds: Option<i64>,
    /// The invoice item the call was billed on.
    pub stripe_invoice_item_id: Option<String>,
    /// Free-form string pairs, as JSON object text.
    pub metadata: Option<String>,
}

/// Field rules for request logs, shared by every way records enter apitrail.
pub mod rules {
    use super::*;

    /// Longest accepted path or query string.
    pub const MAX_PATH: usize = 8192;
    /// Longest accepted value of the other free-text fields.
    pub const MAX_TEXT: usize = 1024;
    /// Default cap of stored request and response bodies, in bytes.
    pub const DEFAULT_BODY_CAP: usize = 64 * 1024;

    /// An HTTP method: a token (RFC 9110) of at most 32 characters, stored uppercase.
    pub fn method(s: &str) -> Result<String, &'static str> {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if s.is_empty() || s.len() > 32 || !s.bytes().all(token) {
            return Err("must be an HTTP method token such as GET or POST");
        }
        Ok(s.to_ascii_uppercase())
    }

    /// An HTTP status code.
    pub fn status_code(n: i64) -> Result<u16, &'static str> {
        u16::try_from(n)
            .ok()
            .filter(|n| (100..=599).contains(n))
            .ok_or("must be between 100 and 599")
    }

    /// A duration in milliseconds.
    pub fn duration_ms(n: i64) -> Result<i64, &'static str> {
        if (0..=i64::from(i32::MAX)).contains(&n) {
            Ok(n)
        } else {
            Err("must be between 0 and 2147483647")
        }
    }

    /// An IPv4 or IPv6 address.
    pub fn ip(s: &str) -> Result<IpAddr, &'static str> {
        s.parse().map_err(|_| "must be an IPv4 or IPv6 address")
    }

    /// A decimal price such as `16.74`; never negative.
    pub fn price(s: &str) -> Result<String, &'static str> {
        if s.starts_with('-') {
            return Err("must not be negative");
        }
        let (int, frac) = s.split_once('.').unwrap_or((s, "0"));
        let ok = !int.is_empty()
            && !frac.is_empty()
            && int.len() <= 18
            && frac.len() <= 18
            && int.bytes().all(|b| b.is_ascii_digit())
            && frac.bytes().all(|b| b.is_ascii_digit());
        if ok {
            Ok(s.to_owned())
        } else {
            Err("must be a decimal number such as 16.74")
        }
    }

    /// Cuts `body` to at most `cap` bytes on a character boundary; says whether it cut.
    pub fn cap_body(mut body: String, cap: usize) -> (String, bool) {
        if body.len() <= cap {
            return (body, false);
        }
        let mut end = cap;
        while !body.is_char_boundary(end) {
            end -= 1;
        }
        body.truncate(end);
        (body, true)
    }

    /// A billable count (`minutes`, `seconds`): a 32-bit integer that is not negative,
    /// since the official clients of the zoo dialect read them as 32-bit integers.
    pub fn count(n: i64) -> Result<i64, &'static str> {
        if (0..=i64::from(i32::MAX)).contains(&n) {
            Ok(n)
        } else {
            Err("must be between 0 and 2147483647")
        }
    }

    /// `completed_at - started_at`, when both are known and in order. A derived duration
    /// obeys the bound of an explicit `duration_ms`.
    pub fn derived_duration(
        started: Option<Timestamp>,
        completed: Option<Timestamp>,
    ) -> Result<Option<i64>, &'static str> {
        match (started, completed) {
            (Some(s), Some(c)) if c >= s => duration_ms(c.millis() - s.millis())
                .map(Some)
                .map_err(|_| "must be at most 2147483647 ms after started_at"),
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rules::*;

    #[test]
    fn methods_are_tokens_stored_uppercase() {
        assert_eq!(method("get"), Ok("GET".into()));
        assert_eq!(method("PROPFIND"), Ok("PROPFIND".into()));
        assert!(method("").is_err());
        assert!(method("GE T").is_err());
        assert!(method(&"A".repeat(33)).is_err());
    }

    #[test]
    fn status_codes_are_bounded() {
        assert_eq!(status_code(100), Ok(100));
        assert_eq!(status_code(599), Ok(599));
        assert!(status_code(99).is_err());
        assert!(status_code(600).is_err());
        assert!(status_code(-200).is_err());
        assert!(status_code(65_736).is_err());
    }

    #[test]
    fn prices_are_decimals() {
        assert!(price("16.74").is_ok());
        assert!(price("0.5").is_ok());
        assert!(price("3").is_ok());
        for bad in ["", ".5", "5.", "1e3", "abc", "1.2.3", "--1", "-0.5", "-0"] {
            assert!(price(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn counts_fit_32_bit_clients() {
        assert_eq!(count(0), Ok(0));
        assert_eq!(count(2_147_483_647), Ok(2_147_483_647));
        assert!(count(2_147_483_648).is_err());
        assert!(count(3_000_000_000).is_err());
        assert!(count(-1).is_err());
    }

    #[test]
    fn derived_durations_are_bounded_like_explicit_ones() {
        use crate::time::Timestamp;
        let at = |s: &str| Timestamp::parse(s).ok();
        assert_eq!(
            derived_duration(at("2024-01-01T00:00:00Z"), at("2024-01-01T00:00:00.250Z")),
            Ok(Some(250))
        );
        assert_eq!(
            derived_duration(at("2024-01-01T00:00:01Z"), at("2024-01-01T00:00:00Z")),
            Ok(None)
        );
        assert!(derived_duration(at("0001-01-01T00:00:00Z"), at("9999-01-01T00:00:00Z")).is_err());
        assert!(derived_duration(at("2024-01-01T00:00:00Z"), at("2024-02-01T00:00:00Z")).is_err());
    }

    #[test]
    fn bodies_are_cut_on_char_boundaries() {
        assert_eq!(cap_body("héllo".into(), 2), ("h".into(), true));
        assert_eq!(cap_body("hello".into(), 5), ("hello".into(), false));
        assert_eq!(cap_body("hello".into(), 3), ("hel".into(), true));
    }

    #[test]
    fn addresses_parse_v4_and_v6() {
        assert!(ip("192.0.2.1").is_ok());
        assert!(ip("2001:db8::1").is_ok());
        assert!(ip("example.com").is_err());
        assert!(ip("999.1.1.1").is_err());
    }
}
