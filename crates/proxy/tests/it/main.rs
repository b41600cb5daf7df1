//! Integration tests of the capture proxy: a real upstream on port 0, the real proxy in
//! front of it, a real client, and the real apitrail server reading the records back.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod failures;
mod forwarding;
mod protocols;
