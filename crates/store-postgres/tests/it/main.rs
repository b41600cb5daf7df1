//! Tests of the PostgreSQL store on a private server: the conformance suite, partitions, reconnects
//! and the backend's own behaviour.
//!
//! One test binary for the crate: each former `tests/*.rs` file is a module here, so the
//! application is linked once instead of once per file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;
mod partitions;
mod postgres;
mod reconnect;
