//! Authentication and authorization.
//!
//! Every endpoint accepts an org API key in any of four carriers (`Authorization: Bearer`,
//! `X-API-Key`, `x-arklow-auth`, cookie `better-auth.session_token`). The operator token is a
//! separate credential that opens only the operator API and ingest; it is never an org key.
//! Keys are looked up by the SHA-256 of the presented secret, so the secret itself is never
//! stored, compared or logged.
//!
//! A viewer token (`atv_...`, SPEC §10) travels in the same carriers and authenticates as an
//! org caller with a read-only identity; which routes it may call is decided here, once, by
//! [`viewer_allows`] (a default-deny list of route templates), for every extractor of an org
//! caller, so that no handler can forget it.

use std::marker::PhantomData;

use apitrail_model::{Scope, Secret, Timestamp, ViewerKind};
use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, Method};

use crate::caller::{AuthType, CallSlot, Caller, OrgCaller};
use crate::error::{ApiError, Envelope, ErrorKind, Failure, Native};
use crate::state::AppState;

/// Which carrier a credential came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Carrier {
    /// `Authorization: Bearer`: the only carrier of the operator token.
    Bearer,
    /// `X-API-Key` or `x-arklow-auth`.
    Header,
    /// The `better-auth.session_token` cookie.
    Cookie,
}

impl Carrier {
    fn auth_type(self) -> AuthType {
        match self {
            Carrier::Cookie => AuthType::Session,
            Carrier::Bearer | Carrier::Header => AuthType::ApiKey,
        }
    }
}

/// Finds the presented credential: the value of the first carrier in carrier order.
/// Every carrier (and every repetition of one) is read: two different values make the request
/// ambiguous, since which one would win is a guess the client cannot see (400). The same
/// value in several carriers is one credential.
fn presented(headers: &HeaderMap) -> Result<Option<(String, Carrier)>, ApiError> {
    let mut found: Vec<(String, Carrier)> = Vec::new();
    let values = |name: HeaderName| {
        headers
            .get_all(name)
            .into_iter()
            .filter_map(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    for v in values(AUTHORIZATION) {
        let (scheme, token) = v.split_once(' ').unwrap_or((v, ""));
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            found.push((token.trim().to_owned(), Carrier::Bearer));
        }
    }
    for name in ["x-api-key", "x-arklow-auth"] {
        found
            .extend(values(HeaderName::from_static(name)).map(|v| (v.to_owned(), Carrier::Header)));
    }
    found.extend(
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .filter(|(name, value)| *name == "better-auth.session_token" && !value.is_empty())
            .map(|(_, value)| (value.trim_matches('"').to_owned(), Carrier::Cookie)),
    );
    let Some(first) = found.first() else {
        return Ok(None);
    };
    if found.iter().any(|(token, _)| *token != first.0) {
        return Err(ApiError::new(
            ErrorKind::AmbiguousCredentials,
            "the request carries two different credentials (Authorization, X-API-Key, \
             x-arklow-auth or the better-auth.session_token cookie); send one",
        ));
    }
    Ok(Some(first.clone()))
}

const MISSING: &str = "missing credentials: send an API key as Authorization: Bearer <key>, \
     X-API-Key, x-arklow-auth, or the better-auth.session_token cookie";

impl AppState {
    /// Authenticates an org key from any carrier.
    pub async fn authenticate_org(&self, headers: &HeaderMap) -> Result<OrgCaller, ApiError> {
        let Some((token, carrier)) = presented(headers)? else {
            return Err(ApiError::new(ErrorKind::Unauthorized, MISSING));
        };
        let auth_type = carrier.auth_type();
        if carrier == Carrier::Bearer && self.is_operator_token(&token) {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                "the operator token opens only the operator API and ingest; use an org API key",
            ));
        }
        let secret = Secret::from_presented(&token);
        if secret.is_viewer_token() {
            return match self.store().authenticate_viewer(&secret.hash()).await? {
                Some((tenant, viewer)) if viewer.is_live(Timestamp::now()) => {
                    Ok(OrgCaller::viewer(tenant, viewer))
                }
                Some(_) => Err(ApiError::new(
                    ErrorKind::Unauthorized,
                    "this viewer token has expired",
                )),
                None => Err(ApiError::new(
                    ErrorKind::Unauthorized,
                    "invalid or revoked viewer token",
                )),
            };
        }
        if !secret.is_well_formed() {
            return Err(ApiError::new(ErrorKind::Unauthorized, "invalid API key"));
        }
        match self.store().authenticate(&secret.hash()).await? {
            Some((tenant, key)) => {
                self.recorder().touch(&key);
                Ok(OrgCaller {
                    tenant,
                    key,
                    auth_type,
                    viewer: None,
                })
            }
            None => Err(ApiError::new(
                ErrorKind::Unauthorized,
                "invalid or revoked API key",
            )),
        }
    }

    /// Authenticates the operator token.
    pub fn authenticate_operator(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let Some(admin) = &self.config().admin_token else {
            return Err(ApiError::new(
                ErrorKind::Forbidden,
                "the operator API is disabled: start the server with --admin-token or APITRAIL_ADMIN_TOKEN",
            ));
        };
        // The operator token travels only as `Authorization: Bearer` (SPEC §11).
        match presented(headers)? {
            Some((token, Carrier::Bearer)) if admin.matches(&token) => Ok(()),
            Some((_, Carrier::Bearer)) => Err(ApiError::new(
                ErrorKind::Unauthorized,
                "invalid operator token",
            )),
            _ => Err(ApiError::new(
                ErrorKind::Unauthorized,
                "missing credentials: send the operator token as Authorization: Bearer <token>",
            )),
        }
    }

    /// Authenticates either credential (ingest).
    pub async fn authenticate_any(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        match presented(headers)? {
            Some((token, Carrier::Bearer)) if self.is_operator_token(&token) => {
                Ok(Caller::Operator)
            }
            _ => self
                .authenticate_org(headers)
                .await
                .map(|c| Caller::Org(Box::new(c))),
        }
    }

    fn is_operator_token(&self, token: &str) -> bool {
        self.config()
            .admin_token
            .as_ref()
            .is_some_and(|t| t.matches(token))
    }
}

/// What a viewer token may call: `GET` (and `HEAD`) of these route templates, each for the
/// token's kinds (`None`: any viewer token). Everything else is refused (403): writes,
/// ingest, keys, actions configuration, viewer tokens themselves, the user-scoped zoo
/// routes, and any route added later until it is listed here.
const VIEWER_ROUTES: &[(&str, Option<ViewerKind>)] = &[
    ("/v1/logs", Some(ViewerKind::RequestLogs)),
    ("/v1/logs/stats", Some(ViewerKind::RequestLogs)),
    ("/v1/logs/tail", Some(ViewerKind::RequestLogs)),
    ("/v1/logs/export", Some(ViewerKind::RequestLogs)),
    ("/org/api-calls", Some(ViewerKind::RequestLogs)),
    ("/org/api-calls/{id}", Some(ViewerKind::RequestLogs)),
    ("/v1/api-keys/requests", Some(ViewerKind::RequestLogs)),
    ("/v1/audit-log", Some(ViewerKind::AuditLog)),
    ("/audit-log", Some(ViewerKind::AuditLog)),
    ("/v1/audit-log/tail", Some(ViewerKind::AuditLog)),
    ("/v1/audit-log/export", Some(ViewerKind::AuditLog)),
    ("/v1/audit-log/verify", Some(ViewerKind::AuditLog)),
    (
        "/v1/orgs/{org_id}/actions/records",
        Some(ViewerKind::ActionRecords),
    ),
    // The timeline's parts of kinds the token lacks come back empty.
    ("/v1/requests/{request_id}/timeline", None),
    ("/v1/me", None),
];

/// Whether `caller` may call the route `template` with `method`: always for an API key
/// (its scopes are checked by the handler), and for a viewer token only what
/// [`VIEWER_ROUTES`] lists for its kinds.
pub fn viewer_allows(caller: &OrgCaller, method: &Method, template: Option<&str>) -> bool {
    let Some(viewer) = &caller.viewer else {
        return true;
    };
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    let Some(template) = template else {
        return false;
    };
    VIEWER_ROUTES.iter().any(|(route, kind)| {
        // A kind its filter cannot narrow is never read (creation refuses such a token; this
        // holds even for one stored otherwise).
        *route == template
            && kind.is_none_or(|k| viewer.kinds.contains(k) && viewer.filter.applies_to(k))
    })
}

/// Refuses (403) a viewer token on a route it may not call.
fn authorize_viewer(parts: &Parts, caller: &OrgCaller) -> Result<(), ApiError> {
    let template = parts
        .extensions
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    if viewer_allows(caller, &parts.method, template) {
        return Ok(());
    }
    let kinds = caller
        .viewer
        .as_ref()
        .map(|v| {
            v.kinds
                .iter()
                .map(ViewerKind::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    Err(ApiError::new(
        ErrorKind::Forbidden,
        format!(
            "a viewer token can only read the list routes of its kinds ({kinds}), the request timeline and /v1/me; use an API key for anything else"
        ),
    ))
}

/// Extracts an authenticated org caller; failures are written in dialect `D`'s envelope.
/// Authentication comes before anything else about the request (401 before 400).
#[derive(Debug)]
pub struct Authed<D>(pub OrgCaller, pub PhantomData<fn() -> D>);

impl<D: Envelope> FromRequestParts<AppState> for Authed<D> {
    type Rejection = Failure<D>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = state.authenticate_org(&parts.headers).await?;
        CallSlot::note(parts, &caller);
        authorize_viewer(parts, &caller)?;
        Ok(Self(caller, PhantomData))
    }
}

/// Extracts the operator; failures are written in the native envelope.
#[derive(Debug)]
pub struct Operator;

impl FromRequestParts<AppState> for Operator {
    type Rejection = Failure<Native>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        state.authenticate_operator(&parts.headers)?;
        Ok(Self)
    }
}

/// Authenticates an ingest caller: the operator token or an org key with the `write` scope.
#[derive(Debug)]
pub struct IngestCaller(pub Caller);

impl FromRequestParts<AppState> for IngestCaller {
    type Rejection = Failure<Native>;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let caller = state.authenticate_any(&parts.headers).await?;
        if let Caller::Org(org) = &caller {
            CallSlot::note(parts, org);
            authorize_viewer(parts, org)?;
            org.require(Scope::Write)?;
        }
        Ok(Self(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn every_carrier_is_recognised() {
        let cases = [
            (("authorization", "Bearer k1"), ("k1", AuthType::ApiKey)),
            (("authorization", "bearer  k1 "), ("k1", AuthType::ApiKey)),
            (("x-api-key", "k2"), ("k2", AuthType::ApiKey)),
            (("x-arklow-auth", "k3"), ("k3", AuthType::ApiKey)),
            (
                ("cookie", "a=b; better-auth.session_token=k4; c=d"),
                ("k4", AuthType::Session),
            ),
        ];
        for ((name, value), (want, kind)) in cases {
            assert_eq!(
                presented(&headers(&[(name, value)]))
                    .unwrap()
                    .map(|(t, c)| (t, c.auth_type())),
                Some((want.to_owned(), kind)),
                "{name}: {value}"
            );
        }
        let none = |h: &HeaderMap| presented(h).unwrap();
        assert_eq!(none(&headers(&[("authorization", "Basic abc")])), None);
        assert_eq!(none(&headers(&[("cookie", "other=1")])), None);
        assert_eq!(none(&HeaderMap::new()), None);
    }

    #[test]
    fn one_credential_in_several_carriers_is_one_credential() {
        let h = headers(&[
            ("cookie", "better-auth.session_token=k1"),
            ("x-api-key", "k1"),
            ("authorization", "Bearer k1"),
            ("x-arklow-auth", "k1"),
        ]);
        assert_eq!(
            presented(&h).unwrap(),
            Some(("k1".to_owned(), Carrier::Bearer))
        );
        let h = headers(&[
            ("cookie", "better-auth.session_token=k1"),
            ("x-api-key", "k1"),
        ]);
        assert_eq!(
            presented(&h).unwrap(),
            Some(("k1".to_owned(), Carrier::Header))
        );
    }

    #[test]
    fn every_viewer_route_is_a_get_route_of_the_router() {
        // A route renamed without this list would silently close to viewers; one listed that
        // is not a GET route would be a mistake in the list.
        let doc: serde_json::Value =
            serde_json::from_str(&crate::openapi::document()).expect("the document is JSON");
        for (route, _) in VIEWER_ROUTES {
            assert!(
                doc["paths"][route]["get"].is_object(),
                "{route} is not a GET route"
            );
        }
    }

    #[test]
    fn two_different_credentials_are_ambiguous() {
        for pairs in [
            [("authorization", "Bearer k1"), ("x-api-key", "k2")],
            [
                ("x-api-key", "k1"),
                ("cookie", "better-auth.session_token=k2"),
            ],
            [("x-arklow-auth", "k1"), ("x-api-key", "k2")],
            [("x-api-key", "k1"), ("x-api-key", "k2")],
            [
                ("cookie", "better-auth.session_token=k1"),
                ("cookie", "better-auth.session_token=k2"),
            ],
        ] {
            let err = presented(&headers(&pairs)).unwrap_err();
            assert_eq!(err.kind, ErrorKind::AmbiguousCredentials, "{pairs:?}");
        }
    }
}
