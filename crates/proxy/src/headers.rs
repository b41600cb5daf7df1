//! What the proxy reads from and removes in headers: hop-by-hop fields, the attribution
//! headers, and the credential a request presents.

use apitrail_model::request_log::rules::MAX_TEXT;
use axum::http::header::{AUTHORIZATION, CONNECTION, COOKIE, HeaderName, TE, UPGRADE};
use axum::http::{HeaderMap, HeaderValue};

/// Fields that concern one connection only (RFC 9110 §7.6.1, plus the historical ones every
/// proxy drops); the fields a `Connection` header names are dropped too.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Removes the hop-by-hop fields.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether a request's `TE` accepts trailers.
pub fn te_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            t.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
}

/// The protocol a request asks to switch to (`Connection: upgrade` and `Upgrade: P`).
pub fn upgrade_asked(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    asked.then(|| headers.get(UPGRADE).cloned()).flatten()
}

/// The attribution headers: who a request was made by, as a gateway in front (request) or
/// the upstream itself (response) says.
pub const ORG: &str = "apitrail-org";
/// The acting user.
pub const USER_ID: &str = "apitrail-user-id";
/// The acting principal.
pub const PRINCIPAL_ID: &str = "apitrail-principal-id";
/// The API key id (never the secret).
pub const API_KEY_ID: &str = "apitrail-api-key-id";
/// The acting user's email.
pub const EMAIL: &str = "apitrail-email";
/// The acting service account.
pub const SERVICE_ACCOUNT_ID: &str = "apitrail-service-account-id";

/// Attribution read from one side of an exchange.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attribution {
    /// `apitrail-org`, as sent (checked when the record is made).
    pub org: Option<String>,
    /// `apitrail-user-id`.
    pub user_id: Option<String>,
    /// `apitrail-principal-id`.
    pub principal_id: Option<String>,
    /// `apitrail-api-key-id`.
    pub api_key_id: Option<String>,
    /// `apitrail-email`.
    pub email: Option<String>,
    /// `apitrail-service-account-id`.
    pub service_account_id: Option<String>,
}

impl Attribution {
    /// Reads the attribution headers and removes them, so neither the upstream nor the
    /// client sees them. A value that is empty, not text or over 1024 bytes counts as absent
    /// (a cut identifier would name someone else).
    pub fn take(headers: &mut HeaderMap) -> Self {
        // Most exchanges carry none: one pass over the names spares six lookups.
        if !has_attribution(headers) {
            return Self::default();
        }
        let mut take = |name: &str| {
            let value = headers.get(name).and_then(text);
            headers.remove(name);
            value
        };
        Self {
            org: take(ORG),
            user_id: take(USER_ID),
            principal_id: take(PRINCIPAL_ID),
            api_key_id: take(API_KEY_ID),
            email: take(EMAIL),
            service_account_id: take(SERVICE_ACCOUNT_ID),
        }
    }

    /// `self` (the request's) overridden field by field by `response`'s: the upstream knows
    /// best who made the call.
    pub fn merged_with(self, response: Self) -> Self {
        Self {
            org: response.org.or(self.org),
            user_id: response.user_id.or(self.user_id),
            principal_id: response.principal_id.or(self.principal_id),
            api_key_id: response.api_key_id.or(self.api_key_id),
            email: response.email.or(self.email),
            service_account_id: response.service_account_id.or(self.service_account_id),
        }
    }
}

/// Whether any attribution header is present (one pass over the names).
pub fn has_attribution(headers: &HeaderMap) -> bool {
    headers.keys().any(|k| k.as_str().starts_with("apitrail-"))
}

fn text(value: &HeaderValue) -> Option<String> {
    let s = value.to_str().ok()?.trim();
    (!s.is_empty() && s.len() <= MAX_TEXT).then(|| s.to_owned())
}

/// The credential a request presents and how: `Authorization` first (`bearer`, `basic`, or
/// the scheme's name in lowercase), then `X-API-Key` (`api_key`), then `Cookie` (`cookie`);
/// `none` without any. The secret is the token after the scheme, the key, or the whole
/// cookie header.
pub fn credential(headers: &HeaderMap) -> (String, Option<Vec<u8>>) {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let bytes = value.as_bytes();
        let (scheme, rest) = match bytes.iter().position(|b| *b == b' ') {
            Some(i) => (&bytes[..i], bytes[i + 1..].trim_ascii()),
            None => (bytes, &[][..]),
        };
        let kind = match scheme.to_ascii_lowercase().as_slice() {
            b"bearer" => "bearer".to_owned(),
            b"basic" => "basic".to_owned(),
            // Another scheme (Digest, Token, AWS4-HMAC-SHA256…): named as sent, when it is
            // a plausible token, so it can be filtered on.
            other
                if !other.is_empty()
                    && other.len() <= 32
                    && other
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b)) =>
            {
                String::from_utf8_lossy(other).into_owned()
            }
            _ => "other".to_owned(),
        };
        let secret = if rest.is_empty() { bytes } else { rest };
        return (kind, Some(secret.to_vec()));
    }
    if let Some(value) = headers.get("x-api-key") {
        return ("api_key".to_owned(), Some(value.as_bytes().to_vec()));
    }
    let mut cookies = headers.get_all(COOKIE).iter().peekable();
    if cookies.peek().is_some() {
        let mut all = Vec::new();
        for (i, v) in cookies.enumerate() {
            if i > 0 {
                all.extend_from_slice(b"; ");
            }
            all.extend_from_slice(v.as_bytes());
        }
        return ("cookie".to_owned(), Some(all));
    }
    ("none".to_owned(), None)
}

/// A keyed fingerprint of a credential: the first 16 bytes of HMAC-SHA256(key, secret) in
/// hex. The same secret always gives the same fingerprint under one key, and nothing about
/// the secret can be learned from it without the key.
pub fn fingerprint(key: &[u8], secret: &[u8]) -> String {
    let mac = apitrail_model::webhook::hmac_sha256(key, secret);
    let mut out = String::with_capacity(32);
    for b in &mac[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_go() {
        let mut h = map(&[
            ("connection", "close, x-private"),
            ("x-private", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("te", "trailers"),
            ("proxy-authorization", "Basic x"),
            ("content-type", "text/plain"),
            ("authorization", "Bearer t"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, ["authorization", "content-type"]);
    }

    #[test]
    fn attribution_is_taken_out_and_the_response_wins() {
        let mut req = map(&[
            ("apitrail-org", "acme"),
            ("apitrail-user-id", "usr_req"),
            ("apitrail-email", "  "),
            ("x-other", "1"),
        ]);
        assert!(has_attribution(&req));
        let a = Attribution::take(&mut req);
        assert_eq!(a.org.as_deref(), Some("acme"));
        assert_eq!(a.email, None);
        assert!(!has_attribution(&req));
        assert!(req.contains_key("x-other"));
        let mut resp = map(&[
            ("apitrail-user-id", "usr_resp"),
            ("apitrail-api-key-id", "key_1"),
        ]);
        let merged = a.merged_with(Attribution::take(&mut resp));
        assert_eq!(merged.org.as_deref(), Some("acme"));
        assert_eq!(merged.user_id.as_deref(), Some("usr_resp"));
        assert_eq!(merged.api_key_id.as_deref(), Some("key_1"));
        let mut long = map(&[("apitrail-user-id", &"u".repeat(1025))]);
        assert_eq!(Attribution::take(&mut long).user_id, None);
    }

    #[test]
    fn credentials_are_classified() {
        let kind = |pairs: &[(&str, &str)]| {
            let (k, secret) = credential(&map(pairs));
            (k, secret.map(|s| String::from_utf8(s).unwrap()))
        };
        assert_eq!(
            kind(&[("authorization", "Bearer  tok_1 ")]),
            ("bearer".into(), Some("tok_1".into()))
        );
        assert_eq!(
            kind(&[("authorization", "basic dXNlcjpwYXNz")]),
            ("basic".into(), Some("dXNlcjpwYXNz".into()))
        );
        assert_eq!(
            kind(&[("authorization", "Digest username=x")]),
            ("digest".into(), Some("username=x".into()))
        );
        assert_eq!(
            kind(&[("authorization", "opaque")]),
            ("opaque".into(), Some("opaque".into()))
        );
        assert_eq!(
            kind(&[("x-api-key", "k1"), ("cookie", "s=1")]),
            ("api_key".into(), Some("k1".into()))
        );
        assert_eq!(
            kind(&[("cookie", "a=1"), ("cookie", "b=2")]),
            ("cookie".into(), Some("a=1; b=2".into()))
        );
        assert_eq!(kind(&[]), ("none".into(), None));
    }

    #[test]
    fn fingerprints_are_keyed() {
        let a = fingerprint(b"key one", b"secret");
        assert_eq!(a.len(), 32);
        assert_eq!(a, fingerprint(b"key one", b"secret"));
        assert_ne!(a, fingerprint(b"key two", b"secret"));
        assert_ne!(a, fingerprint(b"key one", b"secret2"));
        assert!(!a.contains("secret"));
    }
}
