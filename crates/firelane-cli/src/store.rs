//! Opening a store from a URL.

use std::sync::Arc;

use firelane::Storage;
use firelane_postgres::{PostgresConfig, PostgresStorage};

use crate::{CliError, CliResult};

/// Opens the store a URL names, or says which URLs work.
pub(crate) async fn open(url: &str) -> CliResult<Arc<dyn Storage>> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" | "" => {
            let store = firelane::sqlite(url).await?;
            Ok(Arc::new(store))
        }
        "postgres" | "postgresql" => {
            let store = PostgresStorage::connect(url).await?;
            Ok(Arc::new(store))
        }
        "redis" | "rediss" => Err(CliError::new(format!(
            "{url}: this build of firelane has no Redis store yet; use sqlite://path/to/file.db or postgres://user@host/database"
        ))),
        _ => Err(CliError::new(format!(
            "{url:?} is not a store URL: use sqlite://path/to/file.db (or sqlite::memory:) or postgres://user@host/database[?schema=name], with --store or FIRELANE_STORE"
        ))),
    }
}

/// A PostgreSQL store in a fresh schema of the database `url` names, for `firelane bench`;
/// the schema is dropped when the returned guard is.
#[allow(dead_code)] // Until `bench.rs` makes its PostgreSQL scratch store with it.
pub(crate) async fn scratch_postgres(url: &str) -> CliResult<(Arc<dyn Storage>, DropSchema)> {
    let random = format!("{:016x}", rand_u64());
    let config = PostgresConfig::from_url(url)?.schema(format!("firelane_bench_{random}"));
    let schema = config.schema_name().to_owned();
    let store = PostgresStorage::connect_with(config).await?;
    let guard = DropSchema {
        store: store.clone(),
        schema,
    };
    Ok((Arc::new(store), guard))
}

/// A few random bits without a dependency: the clock's nanoseconds and the process id.
fn rand_u64() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    (nanos as u64) ^ (u64::from(std::process::id()) << 32)
}

/// Drops a scratch schema: call [`DropSchema::drop_now`] (dropping the guard without it leaves
/// the schema behind, with a warning).
#[derive(Debug)]
pub(crate) struct DropSchema {
    store: PostgresStorage,
    schema: String,
}

#[allow(dead_code)]
impl DropSchema {
    /// Drops the schema and everything in it.
    pub(crate) async fn drop_now(self) -> CliResult {
        let sql = format!(
            "DROP SCHEMA \"{}\" CASCADE",
            self.schema.replace('"', "\"\"")
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(self.store.pool())
            .await
            .map_err(|e| {
                CliError::new(format!(
                    "cannot drop the scratch schema {}: {e}",
                    self.schema
                ))
            })?;
        self.store.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch schema is made fresh and dropped (skipped without a PostgreSQL server).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_postgres_scratch_store_is_dropped() {
        let url = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let Ok((storage, guard)) = scratch_postgres(&url).await else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL is not reachable at {url}"
            );
            eprintln!("skipping: no PostgreSQL server at {url} (set DATABASE_URL)");
            return;
        };
        assert_eq!(storage.backend(), "postgres");
        let schema = guard.schema.clone();
        let pool = guard.store.pool().clone();
        guard.drop_now().await.map_err(|e| e.0).expect("dropped");
        drop(storage);
        let left: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(&schema)
                .fetch_one(&sqlx::PgPool::connect(&url).await.expect("connect"))
                .await
                .expect("query");
        drop(pool);
        assert!(!left, "the scratch schema {schema} is gone");
    }
}
