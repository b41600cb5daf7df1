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
