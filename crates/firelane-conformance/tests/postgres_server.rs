//! The server cases against the PostgreSQL store, each in a fresh schema (see
//! `postgres_storage.rs`).
#![allow(clippy::unwrap_used)]

mod postgres_support;

firelane_conformance::server_suite!(postgres_support::store);
