//! The read dialects of the seeds: each module serves one public API's routes exactly as its
//! seed documents them (paths, parameters, JSON field names, error envelope), over the same
//! store.
//!
//! - [`logs`]: `GET /v1/logs` (seed 003), in the native envelope.
//! - [`keys`]: `GET /v1/api-keys/requests` (seed 001).
//! - [`zoo`]: `GET /org/api-calls` and its siblings (seed 000).
//! - [`audit`]: `GET /audit-log`, `GET /v1/audit-log` (seed 004) and the chain check.
//! - [`actions`]: `GET /v1/orgs/{org_id}/actions/records` (seed 002).

pub mod actions;
pub mod audit;
pub mod keys;
pub mod logs;
pub mod zoo;
