//! HTTP tests of apitrail's API against the real router on a random port: every dialect, ingest,
//! the operator API, auth and isolation, connections, the OpenAPI document, the official kittycad
//! client.
//!
//! One test binary for the crate: each former `tests/*.rs` file is a module here, so the
//! application is linked once instead of once per file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod http_support;
mod reference;

mod actions_dialect;
mod actions_routes;
mod admin;
mod audit_dialect;
mod auth;
mod backends;
mod connections;
mod console;
mod export;
mod ingest;
mod ingest_bodies;
mod ingest_props;
mod isolation;
mod keys_dialect;
mod kittycad_client;
mod logs;
mod openapi;
mod ops;
mod smoke;
mod stats;
mod tail;
mod timeline;
mod viewer_tokens;
mod zoo_dialect;
