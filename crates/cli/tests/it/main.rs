//! Integration tests of the apitrail binary: the real executable on SQLite and PostgreSQL.
//!
//! One test binary for the crate: each former `tests/*.rs` file is a module here, so the
//! application is linked once instead of once per file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod actions;
mod cli;
mod durability;
mod export;
mod postgres;
mod proxy;
mod tail;
