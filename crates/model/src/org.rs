//! Orgs (tenants) and the handle through which every query is scoped to one.

use crate::id::{InvalidOrgId, OrgId};
use crate::time::Timestamp;
use crate::validate::{FieldError, required_text};

/// An organization: the unit of tenancy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Org {
    /// The operator-chosen or generated id.
    pub id: OrgId,
    /// A display name.
    pub name: String,
    /// When the org was created.
    pub created_at: Timestamp,
}

/// A validated request to create an org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrg {
    /// The requested id, or a generated UUIDv7 when none was given.
    pub id: OrgId,
    /// Required, 1–200 characters.
    pub name: String,
}

impl NewOrg {
    /// Validates the parts of an org creation request; an absent or empty id is generated.
    pub fn parse(id: Option<String>, name: Option<String>) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        // An empty string is an invalid id, not an absent one (SPEC §11).
        let id = match id {
            None => None,
            Some(s) => match OrgId::parse(&s) {
                Ok(id) => Some(id),
                Err(InvalidOrgId) => {
                    errors.push(FieldError::new("id", InvalidOrgId.to_string()));
                    None
                }
            },
        };
        let name = required_text(&mut errors, "name", name, 200);
        match name {
            Some(name) if errors.is_empty() => Ok(Self {
                id: id.unwrap_or_else(OrgId::generate),
                name,
            }),
            _ => Err(errors),
        }
    }
}

/// Proof that a caller acts within one org, and the store's internal key for it.
///
/// Every store method that reads or writes org data takes a `&Tenant`, so a query without an
/// org cannot be written by accident. Only a store creates tenants (after looking the org up),
/// and only authentication hands them to request handlers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Tenant {
    key: i64,
    id: OrgId,
}

impl Tenant {
    /// For store implementations: the handle of an org that exists, with its internal key.
    pub fn from_store(key: i64, id: OrgId) -> Self {
        Self { key, id }
    }

    /// The store's internal key of the org.
    pub fn key(&self) -> i64 {
        self.key
    }

    /// The org's public id.
    pub fn org_id(&self) -> &OrgId {
        &self.id
    }
}
