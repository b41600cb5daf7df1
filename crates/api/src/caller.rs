//! Who is calling: the callers the auth extractors produce and the tracking middleware
//! records, and the operator token credentials are checked against. A leaf of the module
//! graph, so that `auth`, `selflog` and `state` share these types without importing one
//! another in a circle.

use std::fmt;
use std::sync::{Arc, OnceLock};

use apitrail_model::{
    ApiKey, AuditFilter, LogFilter, PrincipalType, Scope, Scopes, Secret, SecretHash, Tenant,
    ViewerKind, ViewerToken,
};
use axum::http::request::Parts;

use crate::error::{ApiError, ErrorKind};

/// How a credential was presented, as recorded in self-logs (`auth_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// A header carrier.
    ApiKey,
    /// The session cookie.
    Session,
    /// A viewer token, in any carrier.
    ViewerToken,
}

impl AuthType {
    /// The recorded name.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::ApiKey => "api_key",
            AuthType::Session => "session",
            AuthType::ViewerToken => "viewer_token",
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
    /// The key used; for a viewer token, a read-only identity made from it
    /// ([`OrgCaller::viewer`]), so that the scope checks of handlers need no second path.
    pub key: ApiKey,
    /// How it was presented.
    pub auth_type: AuthType,
    /// The viewer token used, if the caller is one: the kinds it reads and the filter
    /// forced on its queries. `None` for an API key.
    pub viewer: Option<ViewerToken>,
}

impl OrgCaller {
    /// The caller of a viewer token: an identity with the `read` scope alone, under the
    /// token's id, that names no principal.
    pub fn viewer(tenant: Tenant, token: ViewerToken) -> Self {
        let key = ApiKey {
            id: token.id,
            org_id: token.org_id.clone(),
            name: "viewer token".into(),
            scopes: [Scope::Read].into_iter().collect::<Scopes>(),
            principal_type: PrincipalType::ServiceAccount,
            principal_id: format!("viewer_token:{}", token.id),
            user_id: None,
            email: None,
            service_account_id: None,
            created_at: token.created_at,
            last_used_at: None,
            revoked_at: None,
        };
        Self {
            tenant,
            key,
            auth_type: AuthType::ViewerToken,
            viewer: Some(token),
        }
    }

    /// Whether the caller may read records of `kind` (an API key: always; its scopes are
    /// checked apart).
    pub fn reads(&self, kind: ViewerKind) -> bool {
        self.viewer.as_ref().is_none_or(|v| v.kinds.contains(kind))
    }

    /// A request-log filter narrowed by the viewer token's forced filter (unchanged for an
    /// API key). Every route that reads request logs passes its filter through here.
    pub fn narrow_logs(&self, filter: LogFilter) -> LogFilter {
        match &self.viewer {
            Some(v) => v.filter.narrow_logs(filter),
            None => filter,
        }
    }

    /// An audit filter narrowed by the viewer token's forced filter (unchanged for an API
    /// key). Every route that reads audit entries passes its filter through here.
    pub fn narrow_audit(&self, filter: AuditFilter) -> AuditFilter {
        match &self.viewer {
            Some(v) => v.filter.narrow_audit(filter),
            None => filter,
        }
    }

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
