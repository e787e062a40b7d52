//! The conformance suite: every promise of the [`Storage`] trait and of the server, written
//! once and run against every Firelane store.
//!
//! A backend's test file calls the two macros with an async function that returns a fresh,
//! empty store for each test:
//!
//! ```ignore
//! async fn store() -> std::sync::Arc<dyn firelane::Storage> { /* a new empty store */ }
//! firelane_conformance::storage_suite!(store);
//! firelane_conformance::server_suite!(store);
//! ```
//!
//! A backend is done when it passes all of it.

pub mod server_cases;
pub mod storage_cases;
pub mod support;

pub use firelane::Storage;
