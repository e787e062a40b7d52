//! Helpers shared by the cases.

use std::future::Future;
use std::sync::Arc;

use firelane_core::Storage;

/// What a suite's factory may return: a store, or `None` to skip the case (a backend whose
/// server is not running on a developer's machine; the factory says so once, and on CI it
/// fails instead of returning `None`).
pub trait MaybeStore {
    /// The store, or `None` to skip.
    fn into_store(self) -> Option<Arc<dyn Storage>>;
}

impl MaybeStore for Arc<dyn Storage> {
    fn into_store(self) -> Option<Arc<dyn Storage>> {
        Some(self)
    }
}

impl MaybeStore for Option<Arc<dyn Storage>> {
    fn into_store(self) -> Option<Arc<dyn Storage>> {
        self
    }
}
use std::time::{Duration, Instant};

/// Waits until `check` returns `Some`, polling every few milliseconds; panics with `what` after
/// `limit`. Used instead of fixed sleeps so that tests are as fast as the machine allows and
/// still pass on a slow one.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Installs a tracing subscriber that prints to the test output (once per process), honouring
/// `RUST_LOG`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}
