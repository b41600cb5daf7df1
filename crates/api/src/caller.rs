//! Who is calling: the callers the auth extractors produce and the tracking middleware
//! records, and the operator token credentials are checked against. A leaf of the module
//! graph, so that `auth`, `selflog` and `state` share these types without importing one
//! another in a circle.

use std::fmt;
use std::sync::{Arc, OnceLock};

use apitrail_model::{ApiKey, Scope, Secret, SecretHash, Tenant};
use axum::http::request::Parts;

use crate::error::{ApiError, ErrorKind};

/// How a credential was presented, as recorded in self-logs (`auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// A header carrier.
    ApiKey,
    /// The session cookie.
    Session,
}

impl AuthType {
    /// The recorded name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::ApiKey => "api_key",
            AuthType::Session => "session",
        }
    }
}

/// The operator token, kept only as its SHA-256.
#[derive(Clone)]
pub struct AdminToken(SecretHash);

impl AdminToken {
    /// Wraps a configured token; refuses tokens too short to be safe.
    pub fn new(token: &str) -> Result<Self, &'static str> {
        if token.len() < 16 {
            return Err("the operator token must be at least 16 characters");
        }
        Ok(Self(Secret::from_presented(token).hash()))
    }

    /// Whether `presented` is the token (compared by hash, in constant time).
    pub(crate) fn matches(&self, presented: &str) -> bool {
        self.0.ct_eq(&Secret::from_presented(presented).hash())
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken([redacted])")
    }
}

/// An authenticated org caller.
#[derive(Debug, Clone)]
pub struct OrgCaller {
    /// The caller's org.
    pub tenant: Tenant,
    /// The key used.
    pub key: ApiKey,
    /// How it was presented.
    pub auth_type: AuthType,
}

impl OrgCaller {
    /// Fails with 403 unless the key has `scope`.
    pub fn require(&self, scope: Scope) -> Result<(), ApiError> {
        if self.key.scopes.contains(scope) {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorKind::Forbidden,
                format!("this API key lacks the {} scope", scope.as_str()),
            ))
        }
    }
}

/// Who is calling an endpoint open to both kinds of credential (ingest).
#[derive(Debug, Clone)]
pub enum Caller {
    /// The operator token.
    Operator,
    /// An org key.
    Org(Box<OrgCaller>),
}

/// Where the auth extractors leave the request's org caller for the tracking middleware
/// (`selflog::track`), which reads it once the response is known.
#[derive(Debug, Clone, Default)]
pub(crate) struct CallSlot(Arc<OnceLock<OrgCaller>>);

impl CallSlot {
    /// Notes `caller` in the slot the middleware put in the request's extensions.
    pub(crate) fn note(parts: &Parts, caller: &OrgCaller) {
        if let Some(slot) = parts.extensions.get::<CallSlot>() {
            let _ = slot.0.set(caller.clone());
        }
    }

    /// The request's org caller, if one authenticated.
    pub(crate) fn caller(&self) -> Option<&OrgCaller> {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_tokens_are_compared_by_hash_and_never_printed() {
        let t = AdminToken::new("a-long-operator-token").unwrap();
        assert!(t.matches("a-long-operator-token"));
        assert!(!t.matches("a-long-operator-tokeN"));
        assert!(!format!("{t:?}").contains("operator-token"));
        assert!(AdminToken::new("short").is_err());
    }
}
