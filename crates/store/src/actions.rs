//! The storage of actions (credentials, destinations, definitions, records and events), a
//! part of every [`Store`](crate::Store).

use apitrail_model::{
    ActionChange, ActionDefinition, ActionEvent, ActionFilter, ActionRecord, ActionState,
    ActionStatus, AuditEntry, Credential, Destination, Tenant, Timestamp,
};
use async_trait::async_trait;
use uuid::Uuid;

use crate::{Page, StoreError};

/// The state a transition expects a record to be in (compare-and-set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    /// The status it must have.
    pub status: ActionStatus,
    /// The attempt it must be at.
    pub attempt: u32,
    /// The lease it must still be under (`None`: any or none).
    pub lease_owner: Option<String>,
}

impl Expected {
    /// What `change` (made by the model's state machine) expects of the record, under
    /// `lease_owner`'s lease (a delivery's outcome) or under any.
    pub fn of(change: &ActionChange, lease_owner: Option<String>) -> Self {
        Self {
            status: change.from,
            attempt: change.attempt,
            lease_owner,
        }
    }
}

/// A record leased for delivery, with the org it belongs to.
#[derive(Debug, Clone)]
pub struct Leased {
    /// The record's org.
    pub tenant: Tenant,
    /// The record, its `attempt` already counting this delivery.
    pub record: ActionRecord,
}

/// One compare-and-set transition of a batch ([`ActionStore::transition_actions`]): what
/// [`ActionStore::transition_action`] takes, with the record's org.
#[derive(Debug, Clone)]
pub struct Transition {
    /// The record's org.
    pub tenant: Tenant,
    /// The record.
    pub id: Uuid,
    /// The state it must still be in.
    pub expected: Expected,
    /// The state it moves to.
    pub state: ActionState,
    /// The event recording the move.
    pub event: ActionEvent,
}

impl Transition {
    /// `change` of record `id` (made by the model's state machine), with its event, expecting
    /// the record under `lease_owner`'s lease or any ([`Expected::of`]).
    pub fn new(
        tenant: Tenant,
        id: Uuid,
        change: &ActionChange,
        lease_owner: Option<String>,
    ) -> Self {
        Self {
            tenant,
            id,
            expected: Expected::of(change, lease_owner),
            state: change.state.clone(),
            event: change.event(id),
        }
    }

    /// Whether this transition is recorded under a lease (a delivery's outcome), which need
    /// not wait for the flush to disk: losing it only means the record is delivered again.
    pub fn under_lease(&self) -> bool {
        self.expected.lease_owner.is_some()
    }
}

/// Storage of actions. Every mutation of a credential, destination or definition is written
/// with its audit entry in one transaction.
#[async_trait]
pub trait ActionStore: Send + Sync {
    /// Stores a new credential.
    async fn create_credential(
        &self,
        tenant: &Tenant,
        credential: &Credential,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// One credential (with its secret, for signing).
    async fn get_credential(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<Credential>, StoreError>;

    /// The org's credentials, oldest first.
    async fn list_credentials(&self, tenant: &Tenant) -> Result<Vec<Credential>, StoreError>;

    /// Creates (`create`) or replaces a destination (also to soft-delete it).
    async fn put_destination(
        &self,
        tenant: &Tenant,
        destination: &Destination,
        create: bool,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// One destination, deleted or not.
    async fn get_destination(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<Destination>, StoreError>;

    /// The org's destinations, oldest first; deleted ones only with `include_deleted`.
    async fn list_destinations(
        &self,
        tenant: &Tenant,
        include_deleted: bool,
    ) -> Result<Vec<Destination>, StoreError>;

    /// Writes a version of a definition: a new version (`new_version`) or a replacement of an
    /// existing one. The definition's names (variant and aliases) must not be another live
    /// definition's: `Conflict` otherwise. Deleting (with `deleted_at` set) frees the names
    /// and marks every version.
    async fn put_action_definition(
        &self,
        tenant: &Tenant,
        definition: &ActionDefinition,
        new_version: bool,
        audit: &AuditEntry,
    ) -> Result<(), StoreError>;

    /// A version of a definition (`None`: the latest).
    async fn get_action_definition(
        &self,
        tenant: &Tenant,
        id: Uuid,
        version: Option<u32>,
    ) -> Result<Option<ActionDefinition>, StoreError>;

    /// The latest version of the live definition with this variant or alias.
    async fn find_action_definition(
        &self,
        tenant: &Tenant,
        name: &str,
    ) -> Result<Option<ActionDefinition>, StoreError>;

    /// The latest version of every definition, oldest first; deleted ones only with
    /// `include_deleted`.
    async fn list_action_definitions(
        &self,
        tenant: &Tenant,
        include_deleted: bool,
    ) -> Result<Vec<ActionDefinition>, StoreError>;

    /// Stores a new record with its first event.
    async fn create_action_record(
        &self,
        tenant: &Tenant,
        record: &ActionRecord,
        event: &ActionEvent,
    ) -> Result<(), StoreError>;

    /// One record.
    async fn get_action_record(
        &self,
        tenant: &Tenant,
        id: Uuid,
    ) -> Result<Option<ActionRecord>, StoreError>;

    /// A page of the records matching `filter`, newest first (`created_at`, then id), and
    /// how many match in all.
    async fn list_action_records(
        &self,
        tenant: &Tenant,
        filter: &ActionFilter,
        skip: u64,
        take: u32,
    ) -> Result<(Vec<ActionRecord>, u64), StoreError>;

    /// The org's records triggered by request `request_id` (stored in either spelling, as
    /// [`apitrail_model::query::request_id_matches`] says), oldest first (`created_at`, then
    /// id), at most `limit` (plus whether more follow): the request timeline's actions part.
    /// Reads at most a bounded number of rows whatever the number of matches.
    async fn action_records_by_request(
        &self,
        tenant: &Tenant,
        request_id: &str,
        limit: u32,
    ) -> Result<Page<ActionRecord>, StoreError>;

    /// Only the number of records matching `filter`.
    async fn count_action_records(
        &self,
        tenant: &Tenant,
        filter: &ActionFilter,
    ) -> Result<u64, StoreError>;

    /// The events of these records, each record's in order of creation.
    async fn action_events(
        &self,
        tenant: &Tenant,
        records: &[Uuid],
    ) -> Result<Vec<ActionEvent>, StoreError>;

    /// Moves a record to `state` and appends `event`, if the record is still as `expected`;
    /// clears its lease. Returns whether it did.
    async fn transition_action(
        &self,
        tenant: &Tenant,
        id: Uuid,
        expected: &Expected,
        state: &ActionState,
        event: &ActionEvent,
    ) -> Result<bool, StoreError>;

    /// Applies each of `transitions` as [`ActionStore::transition_action`] would, in one
    /// statement or transaction, and returns whether each happened, in order. The dispatcher
    /// records the outcomes of the deliveries that finished meanwhile in one call, instead of
    /// one round trip and one commit each. A record appears at most once per call: a later
    /// transition of a record already in it does not happen (`false`). Atomic: on an error
    /// none happened. Waits for the flush to disk unless every transition is under a lease
    /// ([`Transition::under_lease`]), like `transition_action`.
    async fn transition_actions(&self, transitions: &[Transition])
    -> Result<Vec<bool>, StoreError>;

    /// Leases up to `limit` pending records due at `now` (of any org) that no live lease
    /// holds, for `owner` until `until`: each one's attempt is counted and its `started_at`
    /// set. No record is leased by two owners at once, across every process sharing the
    /// store.
    async fn lease_due_actions(
        &self,
        now: Timestamp,
        until: Timestamp,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<Leased>, StoreError>;

    /// Up to `limit` acknowledged records (of any org) whose `timeout_at` has passed.
    async fn expired_acknowledgements(
        &self,
        now: Timestamp,
        limit: u32,
    ) -> Result<Vec<Leased>, StoreError>;
}
