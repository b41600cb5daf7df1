//! The domain of apitrail: what a request log, an org or an API key *is*, independent of how
//! it is stored (see `apitrail-store`) or spoken on the wire (see `apitrail-api`).
//!
//! Everything here is pure: no I/O, no HTTP, no SQL. Values that come from outside are parsed
//! into these types once, at the boundary, so code further in never sees unchecked input.

pub mod action;
pub mod audit;
pub mod chain;
pub mod cursor;
pub mod id;
pub mod key;
pub mod org;
pub mod query;
pub mod request_log;
pub mod time;
pub mod transition;
pub mod validate;
pub mod viewer;
pub mod webhook;

pub use action::{
    ActionDefinition, ActionEvent, ActionFilter, ActionRecord, ActionSearch, ActionState,
    ActionStatus, Credential, DefinitionDestination, Destination, RetrySchedule, Tags,
    WebhookConfig,
};
pub use audit::{AuditAfter, AuditEntry, AuditFilter, NewAuditEntry};
pub use chain::{ChainHash, ChainHead, ChainLink, ChainReport, ChainVerifier};
pub use cursor::{Cursor, CursorError, CursorKind};
pub use id::{OrgId, RequestId, is_minted_record_id, new_record_id};
pub use key::{ApiKey, NewApiKey, PrincipalType, Scope, Scopes, Secret, SecretHash};
pub use org::{NewOrg, Org, Tenant};
pub use query::{LogFilter, PageRequest, PageStart, Position, Sort, SortDir, SortKey};
pub use request_log::RequestLog;
pub use time::Timestamp;
pub use transition::{ActionChange, EventKind, Occurrence, Refusal, Signal};
pub use validate::FieldError;
pub use viewer::{
    NewViewerToken, NewViewerTokenInput, ViewerFilter, ViewerKind, ViewerKinds, ViewerToken,
};
pub use webhook::WebhookSecret;
