//! The storage conformance suite against SQLite: once in memory, once on a file (WAL and the
//! read pool).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use firelane_conformance::Storage;
use firelane_sqlite::SqliteStorage;

/// A fresh in-memory store.
async fn store() -> Arc<dyn Storage> {
    Arc::new(SqliteStorage::connect(":memory:").await.unwrap())
}

firelane_conformance::storage_suite!(store);

/// The same cases on a database file, so that reads go through the read pool and writes
/// through WAL.
mod file {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, OnceLock};

    use firelane_conformance::Storage;
    use firelane_sqlite::SqliteStorage;
    use tempfile::TempDir;

    /// One directory for every test of this process, each test with its own file in it. A
    /// static is never dropped, so the directory outlives every test (and stays in the
    /// system's temp dir afterwards).
    static DIR: OnceLock<TempDir> = OnceLock::new();
    static NEXT: AtomicUsize = AtomicUsize::new(0);

    /// A fresh store on a new file.
    async fn store() -> Arc<dyn Storage> {
        let dir = DIR.get_or_init(|| {
            tempfile::Builder::new()
                .prefix("firelane-conformance-")
                .tempdir()
                .unwrap()
        });
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = dir.path().join(format!("store-{n}.db"));
        let url = format!("sqlite://{}", path.display());
        Arc::new(SqliteStorage::connect(&url).await.unwrap())
    }

    firelane_conformance::storage_suite!(store);
}
