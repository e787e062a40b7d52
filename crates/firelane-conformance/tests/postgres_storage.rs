//! The storage conformance suite against PostgreSQL: each case in a fresh schema of the
//! database at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`), dropped
//! afterwards, so the cases run in parallel. Without a server the cases are skipped with one
//! line saying so; on CI (`CI=true`) they fail.
#![allow(clippy::unwrap_used)]

mod postgres_support;

firelane_conformance::storage_suite!(postgres_support::store);
