//! Authentication and authorization.
//!
//! Every endpoint accepts an org API key in any of four carriers (`Authorization: Bearer`,
//! `X-API-Key`, `x-arklow-auth`, cookie `better-auth.session_token`). The operator token is a
//! separate credential that opens only the operator API and ingest; it is never an org key.
//! Keys are looked up by the SHA-256 of the presented secret, so the secret itself is never
//! stored, compared or logged.

use std::marker::PhantomData;

use apitrail_model::{Scope, Secret};
use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName};

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
