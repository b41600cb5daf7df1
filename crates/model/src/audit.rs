//! Audit log entries: who created, changed or deleted which resource.

use uuid::Uuid;

use crate::time::Timestamp;

/// A stored audit entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// UUIDv7, or the id it was ingested with.
    pub id: Uuid,
    /// The acting user (a key's principal), `None` for the operator.
    pub user_id: Option<String>,
    /// `create`, `update`, `delete`, `revoke`, or any ingested verb.
    pub action: String,
    /// The resource's singular snake_case type, e.g. `api_key`.
    pub resource_type: String,
    /// The resource's id.
    pub resource_id: Option<String>,
    /// What changed, as JSON text; never a secret.
    pub details: Option<String>,
    /// The caller's address.
    pub ip_address: Option<String>,
    /// The request that made the change, linking the entry to its request log.
    pub request_id: Option<String>,
    /// When it happened.
    pub created_at: Timestamp,
}

/// An audit entry about to be written beside the change it records.
pub type NewAuditEntry = AuditEntry;

/// The audit dialect's filters: exact matches, all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Exact `resource_type`.
    pub resource_type: Option<String>,
    /// Exact `resource_id`.
    pub resource_id: Option<String>,
    /// Exact `action`.
    pub action: Option<String>,
    /// Each value must equal the entry's acting `user_id` (an AND of equalities, so two
    /// different values match nothing); set only by a viewer token's forced filter.
    pub user_ids: Vec<String>,
}

impl AuditFilter {
    /// The reference semantics of the filter, which every store must agree with.
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.resource_type
            .as_ref()
            .is_none_or(|t| *t == e.resource_type)
            && self
                .resource_id
                .as_ref()
                .is_none_or(|r| e.resource_id.as_ref() == Some(r))
            && self.action.as_ref().is_none_or(|a| *a == e.action)
            && self
                .user_ids
                .iter()
                .all(|u| e.user_id.as_deref() == Some(u.as_str()))
    }
}

/// Where an audit page starts: after the entry with this `created_at` and id (the seed's
/// `created_at|id` cursor), in newest-first order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditAfter {
    /// The last served entry's creation time.
    pub created_at: Timestamp,
    /// The last served entry's id.
    pub id: Uuid,
}
