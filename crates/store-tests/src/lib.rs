//! The conformance suite every apitrail store backend must pass.
//!
//! Each story is a public async function taking `&dyn Store`; it needs a fresh, empty store
//! (it lists every org) and checks behaviour only through the [`Store`] trait, so the same
//! stories run unchanged against SQLite, PostgreSQL or any later backend. Expected results
//! are computed from the reference model in `apitrail-model` ([`LogFilter::matches`],
//! [`Sort::before`], [`ActionFilter::matches`], [`request_id_matches`]) over the records a
//! story stored, never hard-coded.
//!
//! A backend runs the whole suite with one macro call in an integration test:
//!
//! ```ignore
//! apitrail_store_tests::store_conformance!(open_fresh_store());
//! ```
//!
//! where `open_fresh_store()` is an expression evaluated once per story, whose `.await` yields
//! a value that dereferences to the store (`Arc<dyn Store>`, `Box<dyn Store>`, or a guard
//! that also owns the store's temporary directory or database). Each story becomes a
//! `#[tokio::test]` of the calling crate (which therefore needs `tokio` as a dev-dependency);
//! the store is shut down after the story.
//!
//! [`Store`]: apitrail_store::Store
//! [`LogFilter::matches`]: apitrail_model::LogFilter::matches
//! [`Sort::before`]: apitrail_model::Sort::before
//! [`ActionFilter::matches`]: apitrail_model::ActionFilter::matches
//! [`request_id_matches`]: apitrail_model::query::request_id_matches

// Test code: a failed expectation is a panic with a message.
#![allow(clippy::unwrap_used)]

mod actions;
mod audit;
mod concurrency;
mod export;
mod ingest;
mod isolation;
mod keys;
mod lifecycle;
mod live;
mod orgs;
mod paging;
mod retention;
mod stats;
pub mod support;
mod tail;
mod timeline;
mod viewer;

pub use actions::{
    action_credentials_and_destinations_round_trip,
    action_definitions_are_versioned_with_unique_names,
    action_records_list_and_search_like_the_reference_model, action_tenants_never_see_each_other,
    action_transitions_apply_in_batches, action_transitions_compare_and_set,
    concurrent_leasing_hands_out_each_record_once, due_actions_are_leased_until_the_lease_expires,
    expired_acknowledgements_are_found_across_orgs,
};
pub use audit::{
    audit_chains_stay_linked_under_concurrent_writes, audit_entries_list_newest_first,
    audit_ingest_is_idempotent_and_chained, audit_pages_walk_with_filters,
};
pub use concurrency::{
    concurrent_batches_are_all_committed_once, racing_retries_store_each_record_once,
};
pub use export::audit_links_walk_oldest_first;
pub use ingest::{
    ingest_is_idempotent_per_org, request_logs_round_trip_every_field,
    retries_on_another_day_are_duplicates,
};
pub use isolation::tenants_never_see_each_other;
pub use keys::api_keys_authenticate_until_revoked;
pub use lifecycle::shutdown_refuses_new_writes;
pub use live::{
    walks_stay_exact_while_records_are_inserted, walks_stay_ordered_under_concurrent_inserts,
};
pub use orgs::orgs_are_created_listed_and_resolved;
pub use paging::{
    keyset_resumes_after_any_position, keyset_walks_match_the_reference_model,
    offset_pages_match_the_reference_model, unseen_filter_values_are_empty_until_logged,
};
pub use retention::{
    expire_removes_old_logs_of_every_org, purge_removes_only_expired_logs_of_one_org,
};
pub use stats::{assert_stats_agree, stats_rollups_agree_with_the_records};
pub use tail::tails_read_each_record_once_in_order_under_concurrent_writers;
pub use timeline::records_are_found_by_request_id;
pub use viewer::{viewer_filters_narrow_every_read, viewer_tokens_authenticate_until_revoked};

/// Expands to one `#[tokio::test]` per story of the suite, each running against a fresh store
/// made by `$factory` (an expression whose `.await` yields something that dereferences to a
/// [`Store`](apitrail_store::Store)).
#[macro_export]
macro_rules! store_conformance {
    ($factory:expr) => {
        $crate::store_conformance!(@stories $factory;
            orgs_are_created_listed_and_resolved,
            api_keys_authenticate_until_revoked,
            ingest_is_idempotent_per_org,
            request_logs_round_trip_every_field,
            keyset_walks_match_the_reference_model,
            offset_pages_match_the_reference_model,
            keyset_resumes_after_any_position,
            walks_stay_exact_while_records_are_inserted,
            walks_stay_ordered_under_concurrent_inserts,
            tenants_never_see_each_other,
            concurrent_batches_are_all_committed_once,
            racing_retries_store_each_record_once,
            audit_entries_list_newest_first,
            audit_pages_walk_with_filters,
            audit_ingest_is_idempotent_and_chained,
            audit_chains_stay_linked_under_concurrent_writes,
            shutdown_refuses_new_writes,
            purge_removes_only_expired_logs_of_one_org,
            action_credentials_and_destinations_round_trip,
            action_definitions_are_versioned_with_unique_names,
            action_records_list_and_search_like_the_reference_model,
            action_transitions_compare_and_set,
            action_transitions_apply_in_batches,
            due_actions_are_leased_until_the_lease_expires,
            concurrent_leasing_hands_out_each_record_once,
            expired_acknowledgements_are_found_across_orgs,
            action_tenants_never_see_each_other,
            expire_removes_old_logs_of_every_org,
            retries_on_another_day_are_duplicates,
            unseen_filter_values_are_empty_until_logged,
            tails_read_each_record_once_in_order_under_concurrent_writers,
            records_are_found_by_request_id,
            audit_links_walk_oldest_first,
            stats_rollups_agree_with_the_records,
            viewer_tokens_authenticate_until_revoked,
            viewer_filters_narrow_every_read,
        );
    };
    (@stories $factory:expr; $($story:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $story() {
                let handle = $factory.await;
                $crate::$story(&*handle).await;
                $crate::__shutdown(&*handle).await;
            }
        )+
    };
}

/// Shuts a store down after a story, so that a backend's shutdown path runs every time.
#[doc(hidden)]
pub async fn __shutdown(store: &dyn apitrail_store::Store) {
    store
        .shutdown()
        .await
        .unwrap_or_else(|e| panic!("shutdown after the story failed: {e:?}"));
}
