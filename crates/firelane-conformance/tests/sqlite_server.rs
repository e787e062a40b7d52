//! The server cases against the SQLite store: in memory, and in a file.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use firelane::Storage;
use firelane_sqlite::SqliteStorage;

mod memory {
    use super::*;

    async fn store() -> Arc<dyn Storage> {
        Arc::new(SqliteStorage::connect(":memory:").await.unwrap())
    }

    firelane_conformance::server_suite!(store);
}

mod file {
    use super::*;

    async fn store() -> Arc<dyn Storage> {
        // Each test gets its own file under cargo's scratch directory for tests (in target/).
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep();
        let url = format!("sqlite://{}", dir.join("firelane.db").display());
        Arc::new(SqliteStorage::connect(&url).await.unwrap())
    }

    firelane_conformance::server_suite!(store);
}
