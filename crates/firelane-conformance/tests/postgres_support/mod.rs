//! Shared by the PostgreSQL test files: the database URL, the skip-or-fail rule when no server
//! runs, and scratch stores, each in a fresh schema that is dropped when the store is.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane_core::{
    Change, Completion, CompletionStatus, Enqueued, FetchRequest, FetchedJob, Firing, Heartbeat,
    HeartbeatReply, HourlyStats, JobDetails, JobId, JobQuery, JobRecord, NewJob, Promotion,
    Recovery, RecurringDef, RecurringRecord, Retention, ServerId, ServerRecord, Signal, Stats,
    Storage,
};
use firelane_postgres::{PostgresConfig, PostgresStorage};
use tokio::sync::broadcast;

/// A job's whole history as SQL, for tests that count entries (`S.` stands for the schema):
/// the rows of `history` and, last, the successes whose end the store keeps in the job's row
/// (`ended_by`, see migration 3) until the job leaves `succeeded`.
pub(crate) const HISTORY: &str = "(SELECT job_id, seq, state, at, server, reason, started_at
        FROM S.history
      UNION ALL
    SELECT id, 9223372036854775807, 'succeeded', state_at, ended_by, reason, started_at
        FROM S.jobs WHERE ended_by IS NOT NULL) AS history";

/// The completion of a fetched job's attempt, as a server reports it (it ran 3 ms).
pub(crate) fn done(
    job: &FetchedJob,
    server: &ServerId,
    outcome: firelane_core::Outcome,
    at: DateTime<Utc>,
) -> Completion {
    Completion::new(
        job.id,
        job.lease,
        server.clone(),
        outcome,
        Duration::from_millis(3),
        at,
    )
}

/// The database the tests use: `DATABASE_URL`, or the development machine's.
pub(crate) fn url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Whether a PostgreSQL server answers at [`url`]: checked once per process. When none does,
/// CI (`CI=true`) fails; elsewhere the tests are skipped with one line saying so.
pub(crate) async fn available() -> bool {
    static UP: OnceLock<bool> = OnceLock::new();
    if let Some(up) = UP.get() {
        return *up;
    }
    let url = url();
    let up = match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&url))
        .await
    {
        Ok(Ok(c)) => {
            let _ = sqlx::Connection::close(c).await;
            Ok(())
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".to_owned()),
    };
    let up = match up {
        Ok(()) => true,
        Err(e) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "PostgreSQL is not reachable at {url} ({e}); CI needs it (set DATABASE_URL)"
                );
            }
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                // Straight to the process's stderr: the test harness captures `eprintln!`.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping PostgreSQL tests: no server at {url} (set DATABASE_URL)"
                );
            });
            false
        }
    };
    *UP.get_or_init(|| up)
}

use sqlx::Connection;

/// A fresh schema name: `firelane_t_<pid>_<n>_<random>`.
pub(crate) fn fresh_schema() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("firelane_t_{}_{n}_{}", std::process::id(), &random[..8])
}

/// Drops a schema and everything in it (from any thread, with a runtime of its own).
pub(crate) fn drop_schema(schema: &str) {
    let schema = schema.to_owned();
    let url = url();
    let done = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut c)
                    .await
                {
                    eprintln!("could not drop test schema {schema}: {e}");
                }
                let _ = c.close().await;
            }
        });
    });
    let _ = done.join();
}

/// Opens a store in `schema` of the test database.
pub(crate) async fn open(schema: &str) -> PostgresStorage {
    open_with(schema, 8).await
}

/// Opens a store in `schema` of the test database with at most `connections` connections.
pub(crate) async fn open_with(schema: &str, connections: u32) -> PostgresStorage {
    PostgresStorage::connect_with(
        PostgresConfig::from_url(&url())
            .unwrap()
            .schema(schema)
            .max_connections(connections),
    )
    .await
    .unwrap()
}

/// A store in a fresh schema, or `None` (skip) when no server runs.
pub(crate) async fn scratch() -> Option<Scratch> {
    if !available().await {
        return None;
    }
    let schema = fresh_schema();
    let store = open(&schema).await;
    Some(Scratch {
        inner: store,
        schema,
    })
}

/// The conformance factory: a scratch store as a `dyn Storage`.
pub(crate) async fn store() -> Option<Arc<dyn Storage>> {
    scratch().await.map(|s| Arc::new(s) as Arc<dyn Storage>)
}

/// A store whose schema is dropped with it.
#[derive(Debug)]
pub(crate) struct Scratch {
    pub(crate) inner: PostgresStorage,
    pub(crate) schema: String,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        drop_schema(&self.schema);
    }
}

#[firelane_core::async_trait]
impl Storage for Scratch {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn enqueue(
        &self,
        jobs: Vec<NewJob>,
        now: DateTime<Utc>,
    ) -> firelane::Result<Vec<Enqueued>> {
        self.inner.enqueue(jobs, now).await
    }
    async fn fetch(&self, r: FetchRequest) -> firelane::Result<Vec<FetchedJob>> {
        self.inner.fetch(r).await
    }
    async fn complete(&self, c: Vec<Completion>) -> firelane::Result<Vec<CompletionStatus>> {
        self.inner.complete(c).await
    }
    async fn complete_and_fetch(
        &self,
        c: Vec<Completion>,
        r: FetchRequest,
    ) -> firelane::Result<(Vec<CompletionStatus>, Vec<FetchedJob>)> {
        self.inner.complete_and_fetch(c, r).await
    }
    async fn heartbeat(&self, h: Heartbeat) -> firelane::Result<HeartbeatReply> {
        self.inner.heartbeat(h).await
    }
    async fn remove_server(&self, s: &ServerId) -> firelane::Result<()> {
        self.inner.remove_server(s).await
    }
    async fn promote_due(&self, now: DateTime<Utc>, limit: usize) -> firelane::Result<Promotion> {
        self.inner.promote_due(now, limit).await
    }
    async fn recover(
        &self,
        now: DateTime<Utc>,
        dead_after: Duration,
    ) -> firelane::Result<Recovery> {
        self.inner.recover(now, dead_after).await
    }
    async fn expire(
        &self,
        now: DateTime<Utc>,
        r: Retention,
        limit: usize,
    ) -> firelane::Result<u64> {
        self.inner.expire(now, r, limit).await
    }
    async fn delete(
        &self,
        ids: &[JobId],
        reason: &str,
        now: DateTime<Utc>,
    ) -> firelane::Result<Vec<Change>> {
        self.inner.delete(ids, reason, now).await
    }
    async fn requeue(
        &self,
        ids: &[JobId],
        reason: &str,
        now: DateTime<Utc>,
    ) -> firelane::Result<Vec<Change>> {
        self.inner.requeue(ids, reason, now).await
    }
    async fn job(&self, id: JobId) -> firelane::Result<Option<JobDetails>> {
        self.inner.job(id).await
    }
    async fn list_jobs(&self, q: JobQuery) -> firelane::Result<Vec<JobRecord>> {
        self.inner.list_jobs(q).await
    }
    async fn stats(&self) -> firelane::Result<Stats> {
        self.inner.stats().await
    }
    async fn stats_history(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> firelane::Result<Vec<HourlyStats>> {
        self.inner.stats_history(from, to).await
    }
    async fn set_queue_paused(
        &self,
        queue: &str,
        paused: bool,
        now: DateTime<Utc>,
    ) -> firelane::Result<()> {
        self.inner.set_queue_paused(queue, paused, now).await
    }
    async fn servers(&self) -> firelane::Result<Vec<ServerRecord>> {
        self.inner.servers().await
    }
    async fn upsert_recurring(
        &self,
        def: RecurringDef,
        next_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> firelane::Result<()> {
        self.inner.upsert_recurring(def, next_run, now).await
    }
    async fn remove_recurring(&self, id: &str) -> firelane::Result<bool> {
        self.inner.remove_recurring(id).await
    }
    async fn recurring(&self, id: &str) -> firelane::Result<Option<RecurringRecord>> {
        self.inner.recurring(id).await
    }
    async fn list_recurring(&self) -> firelane::Result<Vec<RecurringRecord>> {
        self.inner.list_recurring().await
    }
    async fn set_recurring_paused(
        &self,
        id: &str,
        paused: bool,
        next_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> firelane::Result<bool> {
        self.inner
            .set_recurring_paused(id, paused, next_run, now)
            .await
    }
    async fn fire_recurring(&self, firing: Firing) -> firelane::Result<bool> {
        self.inner.fire_recurring(firing).await
    }
    async fn trigger_recurring(&self, id: &str, now: DateTime<Utc>) -> firelane::Result<JobId> {
        self.inner.trigger_recurring(id, now).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.subscribe()
    }
}

/// A store in `schema` with a single connection, so that PostgreSQL's counts of what that
/// connection read are the store's.
pub(crate) async fn single_connection_store(schema: &str) -> PostgresStorage {
    open_with(schema, 1).await
}

/// The rows of `table` that the store's only connection has read so far, by PostgreSQL's own
/// count (sequential plus index fetches), after making it publish its pending counts.
pub(crate) async fn rows_read(store: &PostgresStorage, table: &str) -> i64 {
    let mut conn = store.pool().acquire().await.unwrap();
    // The counts are published when the connection goes idle after this statement.
    exec(&mut conn, "SELECT pg_stat_force_next_flush()").await;
    sqlx::query_scalar(
        "SELECT (COALESCE(seq_tup_read, 0) + COALESCE(idx_tup_fetch, 0))::int8
         FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = $2",
    )
    .bind(store.schema())
    .bind(table)
    .fetch_one(&mut *conn)
    .await
    .unwrap()
}

/// Runs SQL (one statement or several) on `conn`.
pub(crate) async fn exec(conn: &mut sqlx::PgConnection, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(conn)
        .await
        .unwrap();
}
