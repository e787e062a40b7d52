//! Opening a store from a URL.

use std::sync::Arc;

use firelane::Storage;

use crate::{CliError, CliResult};

/// Opens the store a URL names, or says which URLs work.
pub(crate) async fn open(url: &str) -> CliResult<Arc<dyn Storage>> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" | "" => {
            let store = firelane::sqlite(url).await?;
            Ok(Arc::new(store))
        }
        "postgres" | "postgresql" => Err(CliError::new(format!(
            "{url}: this build of firelane has no PostgreSQL store yet; use sqlite://path/to/file.db"
        ))),
        "redis" | "rediss" => Err(CliError::new(format!(
            "{url}: this build of firelane has no Redis store yet; use sqlite://path/to/file.db"
        ))),
        _ => Err(CliError::new(format!(
            "{url:?} is not a store URL: use sqlite://path/to/file.db (or sqlite::memory:), with --store or FIRELANE_STORE"
        ))),
    }
}
