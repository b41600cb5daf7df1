//! API keys: who may call apitrail on behalf of which org, and with which scopes.

use std::fmt;

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::id::{OrgId, fill_random};
use crate::time::Timestamp;
use crate::validate::{FieldError, optional_text, required_text};

/// What a key may do. Scopes are independent: `admin` does not imply `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// List records through the dialects.
    Read,
    /// Ingest records.
    Write,
    /// Manage the org's keys (and, later, destinations and definitions).
    Admin,
}

impl Scope {
    /// All scopes, in their canonical order.
    pub const ALL: [Scope; 3] = [Scope::Read, Scope::Write, Scope::Admin];

    /// The scope's wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|x| x.as_str() == s)
    }

    fn bit(self) -> u8 {
        match self {
            Scope::Read => 1,
            Scope::Write => 2,
            Scope::Admin => 4,
        }
    }
}

/// A set of scopes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Scopes(u8);

impl Scopes {
    /// The set as stored: one bit per scope.
    pub fn bits(self) -> u8 {
        self.0
    }

    /// Rebuilds a set from stored bits; unknown bits are dropped.
    pub fn from_bits(bits: u8) -> Self {
        Self(bits & 7)
    }

    /// Whether `scope` is in the set.
    pub fn contains(self, scope: Scope) -> bool {
        self.0 & scope.bit() != 0
    }

    /// The scopes in canonical order.
    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }
}

impl FromIterator<Scope> for Scopes {
    fn from_iter<I: IntoIterator<Item = Scope>>(iter: I) -> Self {
        Self(iter.into_iter().fold(0, |acc, s| acc | s.bit()))
    }
}

/// Who a key acts for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalType {
    /// A person.
    User,
    /// A machine identity.
    ServiceAccount,
}

impl PrincipalType {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalType::User => "user",
            PrincipalType::ServiceAccount => "service_account",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "user" => Some(Self::User),
            "service_account" => Some(Self::ServiceAccount),
            _ => None,
        }
    }
}

/// A stored API key. The secret itself is never kept, only its [`SecretHash`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// UUIDv7.
    pub id: Uuid,
    /// The org the key belongs to.
    pub org_id: OrgId,
    /// A label chosen at creation.
    pub name: String,
    /// What the key may do.
    pub scopes: Scopes,
    /// The kind of principal.
    pub principal_type: PrincipalType,
    /// The principal's id.
    pub principal_id: String,
    /// The user the key acts for, if any.
    pub user_id: Option<String>,
    /// The principal's email, if any.
    pub email: Option<String>,
    /// The service account the key acts for, if any.
    pub service_account_id: Option<String>,
    /// When the key was created.
    pub created_at: Timestamp,
    /// When the key last authenticated a call (updated at most once a minute).
    pub last_used_at: Option<Timestamp>,
    /// When the key was revoked; a revoked key authenticates nothing.
    pub revoked_at: Option<Timestamp>,
}

impl ApiKey {
    /// The user a zoo-dialect caller is: the key's `user_id`, else its principal.
    pub fn acting_user(&self) -> &str {
        self.user_id.as_deref().unwrap_or(&self.principal_id)
    }
}

/// A validated request to create a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    /// See [`ApiKey::name`].
    pub name: String,
    /// See [`ApiKey::scopes`].
    pub scopes: Scopes,
    /// See [`ApiKey::principal_type`].
    pub principal_type: PrincipalType,
    /// See [`ApiKey::principal_id`].
    pub principal_id: String,
    /// See [`ApiKey::user_id`].
    pub user_id: Option<String>,
    /// See [`ApiKey::email`].
    pub email: Option<String>,
    /// See [`ApiKey::service_account_id`].
    pub service_account_id: Option<String>,
}

/// The unchecked parts of a key creation request, as they come from a client or the CLI.
#[derive(Debug, Clone, Default)]
pub struct NewApiKeyInput {
    /// Required, 1–200 characters.
    pub name: Option<String>,
    /// Required, non-empty, each one of `read`, `write`, `admin`.
    pub scopes: Option<Vec<String>>,
    /// Required: `user` or `service_account`.
    pub principal_type: Option<String>,
    /// Required, 1–256 characters.
    pub principal_id: Option<String>,
    /// Optional, up to 256 characters.
    pub user_id: Option<String>,
    /// Optional, up to 320 characters, must contain `@`.
    pub email: Option<String>,
    /// Optional, up to 256 characters.
    pub service_account_id: Option<String>,
}

impl TryFrom<NewApiKeyInput> for NewApiKey {
    type Error = Vec<FieldError>;

    fn try_from(input: NewApiKeyInput) -> Result<Self, Self::Error> {
        let mut errors = Vec::new();
        let name = required_text(&mut errors, "name", input.name, 200);
        let scopes = match input.scopes {
            None => {
                errors.push(FieldError::new("scopes", "is required"));
                Scopes::default()
            }
            Some(list) if list.is_empty() => {
                errors.push(FieldError::new(
                    "scopes",
                    "must name at least one of read, write, admin",
                ));
                Scopes::default()
            }
            Some(list) => {
                let mut set = Vec::new();
                for s in &list {
                    match Scope::parse(s) {
                        Some(scope) => set.push(scope),
                        None => errors.push(FieldError::new(
                            "scopes",
                            format!("unknown scope {s:?}; use read, write or admin"),
                        )),
                    }
                }
                set.into_iter().collect()
            }
        };
        let principal_type = match input.principal_type.as_deref() {
            None => {
                errors.push(FieldError::new("principal_type", "is required"));
                None
            }
            Some(s) => {
                let p = PrincipalType::parse(s);
                if p.is_none() {
                    errors.push(FieldError::new(
                        "principal_type",
                        "must be user or service_account",
                    ));
                }
                p
            }
        };
        let principal_id = required_text(&mut errors, "principal_id", input.principal_id, 256);
        let user_id = optional_text(&mut errors, "user_id", input.user_id, 256);
        let email = optional_text(&mut errors, "email", input.email, 320);
        if email.as_deref().is_some_and(|e| !e.contains('@')) {
            errors.push(FieldError::new("email", "must be an email address"));
        }
        let service_account_id = optional_text(
            &mut errors,
            "service_account_id",
            input.service_account_id,
            256,
        );
        match (errors.is_empty(), principal_type) {
            (true, Some(principal_type)) => Ok(NewApiKey {
                name: name.unwrap_or_default(),
                scopes,
                principal_type,
                principal_id: principal_id.unwrap_or_default(),
                user_id,
                email,
                service_account_id,
            }),
            _ => Err(errors),
        }
    }
}

/// A key's secret, shown once at creation. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SECRET_PREFIX: &str = "atk_";
const VIEWER_PREFIX: &str = "atv_";
const SECRET_BODY_LEN: usize = 40;

impl Secret {
    /// A fresh secret: `atk_` and 40 base62 characters from the OS CSPRNG.
    pub fn generate() -> Self {
        Self::generate_with(SECRET_PREFIX)
    }

    /// A fresh viewer token (SPEC §10): `atv_` and 40 base62 characters from the OS CSPRNG.
    pub fn generate_viewer() -> Self {
        Self::generate_with(VIEWER_PREFIX)
    }

    fn generate_with(prefix: &str) -> Self {
        let mut out = String::with_capacity(prefix.len() + SECRET_BODY_LEN);
        out.push_str(prefix);
        let mut buf = [0u8; 64];
        while out.len() < prefix.len() + SECRET_BODY_LEN {
            fill_random(&mut buf);
            // Rejection sampling keeps every character equally likely.
            for b in buf {
                if b < 248 && out.len() < prefix.len() + SECRET_BODY_LEN {
                    out.push(BASE62[(b % 62) as usize] as char);
                }
            }
        }
        Self(out)
    }

    /// Wraps a presented credential without checking it.
    pub fn from_presented(s: &str) -> Self {
        Self(s.to_owned())
    }

    /// The secret, for the single response that reveals it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the secret has the shape of an apitrail key (so lookups of junk are skipped).
    pub fn is_well_formed(&self) -> bool {
        self.has_shape(SECRET_PREFIX)
    }

    /// Whether the secret has the shape of a viewer token (`atv_` and 40 base62 characters).
    pub fn is_viewer_token(&self) -> bool {
        self.has_shape(VIEWER_PREFIX)
    }

    fn has_shape(&self, prefix: &str) -> bool {
        self.0.len() == prefix.len() + SECRET_BODY_LEN
            && self.0.starts_with(prefix)
            && self.0[prefix.len()..]
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
    }

    /// The SHA-256 of the secret: the only form in which it is stored.
    pub fn hash(&self) -> SecretHash {
        SecretHash(Sha256::digest(self.0.as_bytes()).into())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// The SHA-256 of a secret.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Compares in constant time, so timing does not reveal how much of a hash matched.
    pub fn ct_eq(&self, other: &SecretHash) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_documented_shape_and_hash_stably() {
        let s = Secret::generate();
        assert!(s.expose().starts_with("atk_"));
        assert_eq!(s.expose().len(), 44);
        assert!(s.is_well_formed());
        assert_ne!(s, Secret::generate());
        assert_eq!(s.hash(), Secret::from_presented(s.expose()).hash());
        assert!(!format!("{s:?}").contains(&s.expose()[4..]));
        assert!(!Secret::from_presented("atk_short").is_well_formed());
        let v = Secret::generate_viewer();
        assert!(v.expose().starts_with("atv_") && v.expose().len() == 44);
        assert!(v.is_viewer_token() && !v.is_well_formed() && !s.is_viewer_token());
        assert!(!Secret::from_presented(&format!("atk_{}", "-".repeat(40))).is_well_formed());
        // SHA-256("abc"), from FIPS 180-2.
        assert_eq!(
            Secret::from_presented("abc").hash().0[..4],
            [0xba, 0x78, 0x16, 0xbf]
        );
    }

    #[test]
    fn scopes_round_trip_through_bits() {
        let s: Scopes = [Scope::Read, Scope::Admin].into_iter().collect();
        assert!(s.contains(Scope::Read) && s.contains(Scope::Admin) && !s.contains(Scope::Write));
        assert_eq!(Scopes::from_bits(s.bits()), s);
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            vec![Scope::Read, Scope::Admin]
        );
    }

    #[test]
    fn key_input_is_validated_field_by_field() {
        let errs = NewApiKey::try_from(NewApiKeyInput {
            scopes: Some(vec!["read".into(), "root".into()]),
            principal_type: Some("robot".into()),
            email: Some("nope".into()),
            ..Default::default()
        })
        .unwrap_err();
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            ["name", "scopes", "principal_type", "principal_id", "email"]
        );
        let ok = NewApiKey::try_from(NewApiKeyInput {
            name: Some("ci".into()),
            scopes: Some(vec!["write".into()]),
            principal_type: Some("service_account".into()),
            principal_id: Some("sa_1".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ok.principal_type, PrincipalType::ServiceAccount);
        assert!(ok.scopes.contains(Scope::Write));
    }
}
