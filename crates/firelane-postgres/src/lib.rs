//! PostgreSQL storage for Firelane.
//!
//! [`PostgresStorage`] keeps jobs in a schema of its own (`firelane` unless configured) of a
//! PostgreSQL database and implements [`firelane_core::Storage`]. Any number of servers on any
//! number of machines share one database; no two of them ever get the same job.
//!
//! ```no_run
//! use firelane_core::{NewJob, Storage, chrono::Utc};
//! use firelane_postgres::PostgresStorage;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), firelane_core::Error> {
//! let storage = PostgresStorage::connect("postgres://app@localhost/app").await?;
//! storage.enqueue(vec![NewJob::new("send_email", r#"{"user":42}"#)], Utc::now()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! - **One statement per operation.** Each operation on many jobs (enqueue, fetch, complete,
//!   heartbeat, promote, recover) is one SQL statement whatever the number of jobs: per-job
//!   values travel as arrays read with `unnest`, and data-modifying common table expressions
//!   write the job rows, the queue table, the history, the counters and the wake-up in that
//!   statement, which PostgreSQL runs atomically: one round trip, one commit.
//!   [`Storage::complete_and_fetch`] records a batch of outcomes and leases new jobs with two
//!   such statements run at once on two connections.
//! - **A hot queue table.** Enqueued jobs, and only they, have a row in a small `queue` table
//!   indexed by queue, priority and arrival. Fetch locks the first rows with
//!   `FOR UPDATE SKIP LOCKED` (concurrent fetches take different jobs without waiting for each
//!   other) and deletes them; finished jobs never enter it, so fetch costs the same with a
//!   million finished jobs as with none.
//! - **Compare-and-set moves.** Every state change applies only if the job is still in the
//!   state (and, for a running job, holds the lease) it was decided for, in the statement that
//!   writes its history row and releases its continuations.
//! - **Counters without a hot row.** The statements that move jobs append counter deltas
//!   (`counter_deltas`) instead of updating one row that every transaction would queue on;
//!   [`Storage::recover`] and [`Storage::expire`] fold them into totals. [`Storage::stats`]
//!   reads the totals plus the deltas not yet folded: it never counts jobs.
//! - **Wake-ups** through `LISTEN/NOTIFY` (see the `listen` module's documentation), with the
//!   servers' polling as the fallback.
//! - **Your transaction.** [`PostgresStorage::enqueue_in`] enqueues inside a transaction of
//!   the application's: the job exists if and only if that transaction commits.
//! - **Migrations** are versioned SQL in this crate, applied when a store opens, under an
//!   advisory lock.

mod cache;
mod codec;
mod config;
mod listen;
mod ops;
mod reads;
mod schema;
mod sql;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane_core::{
    Change, Completion, CompletionStatus, Enqueued, Error, FetchRequest, FetchedJob, Firing,
    Heartbeat, HeartbeatReply, HourlyStats, JobDetails, JobId, JobQuery, JobRecord, NewJob,
    Promotion, Recovery, RecurringDef, RecurringRecord, Result, Retention, ServerId, ServerRecord,
    Signal, Stats, Storage, async_trait, validate_queue,
};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub use config::{DEFAULT_SCHEMA, PostgresConfig};

use crate::codec::{OpResult, db_error};
use crate::ops::{Ctx, Signals};
use crate::schema::SchemaError;

/// How many signals a slow subscriber may fall behind before it misses some.
const SIGNAL_CAPACITY: usize = 1024;

/// The newest schema version this build of the store knows.
pub const SCHEMA_VERSION: i64 = schema::LATEST;

/// A Firelane store in a PostgreSQL database.
///
/// Cheap to clone: clones share the connection pool, the listening task and the signal
/// channel. Open it inside a tokio runtime; the listening task stops when the last clone is
/// dropped.
#[derive(Clone)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    schema: String,
    pool: PgPool,
    ctx: Ctx,
    signals: broadcast::Sender<Signal>,
    listener: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStorage")
            .field("url", &self.inner.url)
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl PostgresStorage {
    /// Opens the store at `url` (`postgres://user:password@host:port/database`, optionally
    /// `?schema=name`) with default settings, creating or upgrading its schema.
    ///
    /// # Errors
    ///
    /// [`Error::Connect`] when the server cannot be reached, the database does not exist, the
    /// login is refused or the role lacks a privilege Firelane needs (the message names it and
    /// the `GRANT` that gives it); [`Error::NotFirelane`] when the schema belongs to another
    /// application; [`Error::SchemaTooNew`] when a newer Firelane wrote it.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(PostgresConfig::from_url(url)?).await
    }

    /// Opens the store described by `config`.
    ///
    /// # Errors
    ///
    /// As [`PostgresStorage::connect`].
    pub async fn connect_with(config: PostgresConfig) -> Result<Self> {
        config.check()?;
        let url = config.redacted_url();
        let options: PgConnectOptions = config.url.parse().map_err(|e| Error::Connect {
            url: url.clone(),
            reason: format!(
                "not a PostgreSQL URL ({e}); expected postgres://user[:password]@host[:port]/database"
            ),
        })?;
        let options = if config.url.contains("application_name=") {
            options
        } else {
            options.application_name("firelane")
        };
        // Every statement is written for a generic plan (values come as arrays), so planning
        // it again for each execution, as PostgreSQL does for the first five, is waste. But a
        // connection keeps the plan it made on a statement's first run, from the statistics of
        // that moment: a server usually starts on an empty queue, and plans costed for empty
        // tables read them whole (a sequential or bitmap scan and a sort) once a burst fills
        // them. The bench saw a drain fall from 55,000 to 4,000 jobs/s that way. Every
        // statement here finds its rows through an index, so scans that read whole tables are
        // ruled out where an index serves (tables without one, such as the counter deltas,
        // are still read whole, as they must be), and JIT compilation, which the resulting
        // costs would trigger, is off: these are short statements.
        let options = options
            .options([
                ("plan_cache_mode", "force_generic_plan"),
                ("enable_seqscan", "off"),
                ("enable_bitmapscan", "off"),
                ("jit", "off"),
            ])
            .log_statements(tracing::log::LevelFilter::Trace);

        let mut first = match tokio::time::timeout(config.acquire_timeout, options.connect()).await
        {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(connect_error(&url, &options, e)),
            Err(_) => {
                return Err(Error::Connect {
                    url,
                    reason: format!(
                        "no answer from {}:{} within {:?}: check the host and port, and that no firewall drops the connection",
                        options.get_host(),
                        options.get_port(),
                        config.acquire_timeout
                    ),
                });
            }
        };
        let applied = schema::migrate(&mut first, &config.schema, config.migrate)
            .await
            .map_err(|e| match e {
                SchemaError::Db(e) => connect_error(&url, &options, e),
                SchemaError::NotFirelane(reason) => Error::NotFirelane(url.clone(), reason),
                SchemaError::TooNew(found) => Error::SchemaTooNew {
                    found,
                    known: schema::LATEST,
                },
                SchemaError::Privilege(reason) | SchemaError::NotMigrated(reason) => {
                    Error::Connect {
                        url: url.clone(),
                        reason,
                    }
                }
            })?;
        if !applied.is_empty() {
            tracing::info!(%url, schema = %config.schema, versions = ?applied, "applied Firelane schema migrations");
        }
        let _ = first.close().await;

        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .min_connections(0)
            .acquire_timeout(config.acquire_timeout)
            .test_before_acquire(false)
            .connect_lazy_with(options.clone());
        let sql = sql::Sql::new(&config.schema);
        let channel = channel_name(&config.schema);
        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        let handle = Arc::new(listen::SqlHandle::of(&sql));
        let cache = Arc::new(cache::Cache::connected());
        let origin = format!("{}/", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let listener = tokio::time::timeout(
            config.acquire_timeout,
            listen::start(
                options.clone(),
                channel.clone(),
                origin.clone(),
                pool.clone(),
                handle,
                signals.clone(),
                Arc::clone(&cache),
            ),
        )
        .await
        .map_err(|_| Error::Connect {
            url: url.clone(),
            reason: "the connection for wake-ups (LISTEN) did not open in time".to_owned(),
        })?
        .map_err(|e| connect_error(&url, &options, e))?;
        let vacuum_pool = pool.clone();
        Ok(Self {
            inner: Arc::new(Inner {
                url,
                schema: config.schema.clone(),
                pool,
                ctx: Ctx {
                    sql,
                    channel,
                    fold_key: schema::lock_key(&format!("fold:{}", config.schema)),
                    origin,
                    cache,
                    taken: std::sync::atomic::AtomicU64::new(0),
                    pool: vacuum_pool,
                },
                signals,
                listener,
            }),
        })
    }

    /// Enqueues jobs inside the caller's own transaction (or on the caller's connection): the
    /// jobs exist if and only if that transaction commits, and servers are woken when it does.
    /// Jobs are checked as a store checks them (queue and job names); the caller's transaction
    /// sees them at once.
    ///
    /// ```no_run
    /// use firelane_core::NewJob;
    /// use firelane_postgres::PostgresStorage;
    ///
    /// # async fn signup(storage: &PostgresStorage, pool: &sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
    /// let mut tx = pool.begin().await?;
    /// let user_id: i64 = sqlx::query_scalar("INSERT INTO users (email) VALUES ($1) RETURNING id")
    ///     .bind("ada@example.com")
    ///     .fetch_one(&mut *tx)
    ///     .await?;
    /// let welcome = NewJob::new("send_welcome_email", format!(r#"{{"user_id":{user_id}}}"#));
    /// storage.enqueue_in(&mut tx, vec![welcome]).await?;
    /// tx.commit().await?; // the user and the job, or neither
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQueue`] or [`Error::InvalidJobName`] for a job a store refuses,
    /// [`Error::JobNotFound`] for a continuation of an unknown job, [`Error::Backend`] when
    /// the statement fails (the caller's transaction is then aborted, as after any failed
    /// statement).
    pub async fn enqueue_in(
        &self,
        conn: &mut PgConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        for job in &jobs {
            job.validate(usize::MAX)?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        ops::enqueue(conn, &self.inner.ctx, None, jobs, Utc::now())
            .await
            .map_err(|e| e.into_error("enqueue"))
    }

    /// The connection pool: for the application's own transactions (see
    /// [`PostgresStorage::enqueue_in`]) and for tests.
    ///
    /// Its connections are set up for the store's statements: generic plans only
    /// (`plan_cache_mode = force_generic_plan`), no sequential or bitmap scans where an index
    /// serves (`enable_seqscan = off`, `enable_bitmapscan = off`) and no JIT. Queries of the
    /// application's own that need other plans belong on a pool of its own;
    /// [`PostgresStorage::enqueue_in`] takes a connection from any pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The schema Firelane's tables are in.
    pub fn schema(&self) -> &str {
        &self.inner.schema
    }

    /// The store's address (password hidden), for messages.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Stops listening and closes the connections. Operations after this fail with
    /// [`Error::Shutdown`].
    pub async fn close(&self) {
        self.inner.listener.abort();
        self.inner.pool.close().await;
    }

    /// Runs an operation (one statement, or several that may each commit on their own) on a
    /// pooled connection, then delivers its signals in process.
    async fn run<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(
            &'c mut PgConnection,
            &'c Ctx,
            &'c mut Signals,
        ) -> BoxFuture<'c, OpResult<T>>,
    {
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(|e| db_error(op, e))?;
        let mut signals = Signals::new();
        let out = f(&mut conn, &self.inner.ctx, &mut signals).await;
        // Statements that committed before a later one failed still wake servers.
        self.deliver(signals);
        out.map_err(|e| e.into_error(op))
    }

    /// Runs an operation in a transaction of its own, then delivers its signals in process.
    async fn tx<T, F>(&self, op: &'static str, f: F) -> Result<T>
    where
        F: for<'c> FnOnce(
            &'c mut PgConnection,
            &'c Ctx,
            &'c mut Signals,
        ) -> BoxFuture<'c, OpResult<T>>,
    {
        let mut tx = self.inner.pool.begin().await.map_err(|e| db_error(op, e))?;
        let mut signals = Signals::new();
        let out = f(&mut tx, &self.inner.ctx, &mut signals)
            .await
            .map_err(|e| e.into_error(op))?;
        tx.commit().await.map_err(|e| db_error(op, e))?;
        self.deliver(signals);
        Ok(out)
    }

    /// Sends signals to this process's subscribers (other processes get them through
    /// `NOTIFY`; this store's listener skips its own).
    fn deliver(&self, signals: Signals) {
        for signal in &signals {
            self.inner.ctx.cache.observe(signal);
        }
        let mut earliest: Option<DateTime<Utc>> = None;
        let mut queues: Vec<String> = Vec::new();
        for signal in signals {
            match signal {
                Signal::Scheduled { at } => earliest = Some(earliest.map_or(at, |e| e.min(at))),
                Signal::Enqueued { queue } => {
                    if !queues.contains(&queue) {
                        queues.push(queue);
                    }
                }
                other => {
                    let _ = self.inner.signals.send(other);
                }
            }
        }
        for queue in queues {
            let _ = self.inner.signals.send(Signal::Enqueued { queue });
        }
        if let Some(at) = earliest {
            let _ = self.inner.signals.send(Signal::Scheduled { at });
        }
    }
}

/// The notification channel of a schema.
fn channel_name(schema: &str) -> String {
    let name = format!("firelane.{schema}");
    if name.len() <= 63 {
        name
    } else {
        format!("firelane.{:016x}", schema::lock_key(schema))
    }
}

/// Turns an error met while opening a store into one the person starting it can act on.
fn connect_error(url: &str, options: &PgConnectOptions, e: sqlx::Error) -> Error {
    let at = format!("{}:{}", options.get_host(), options.get_port());
    let user = options.get_username().to_owned();
    let db = options.get_database().unwrap_or(&user).to_owned();
    let reason = match &e {
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "nothing accepts connections at {at} (connection refused): is PostgreSQL running there? Check the host and port of the URL"
        ),
        sqlx::Error::Io(io) => format!("cannot reach {at}: {io}"),
        sqlx::Error::Tls(tls) => format!("TLS with {at} failed: {tls}"),
        sqlx::Error::Configuration(c) => format!(
            "not a PostgreSQL URL ({c}); expected postgres://user[:password]@host[:port]/database"
        ),
        sqlx::Error::Database(d) => {
            let msg = d.message();
            match d.code().as_deref() {
                Some("3D000") => format!(
                    "the database {db:?} does not exist at {at}: create it (`createdb {db}`) or fix the database name in the URL"
                ),
                Some("28P01") => format!(
                    "password authentication failed for role {user:?}: check the password in the URL"
                ),
                Some("28000") => format!(
                    "the server refuses role {user:?}: {msg} (check the role name and the server's pg_hba.conf)"
                ),
                Some("42501") => format!(
                    "role {user:?} lacks a privilege: {msg}{}",
                    if msg.contains("database") {
                        format!(" (`GRANT CONNECT ON DATABASE {db} TO {user}`)")
                    } else {
                        String::new()
                    }
                ),
                Some("53300") => format!("the server at {at} has no free connection slot: {msg}"),
                Some("57P03") => {
                    format!("the server at {at} is not accepting connections yet: {msg}")
                }
                _ => format!("{msg} (SQLSTATE {})", d.code().unwrap_or_default()),
            }
        }
        sqlx::Error::PoolTimedOut => format!("no connection to {at} within the acquire timeout"),
        other => other.to_string(),
    };
    Error::Connect {
        url: url.to_owned(),
        reason,
    }
}

#[async_trait]
impl Storage for PostgresStorage {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn enqueue(&self, jobs: Vec<NewJob>, now: DateTime<Utc>) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        if ops::has_continuations(&jobs) {
            // The parents are read with a share lock: in a transaction with the insert.
            self.tx("enqueue", move |c, ctx, sig| {
                Box::pin(ops::enqueue(c, ctx, Some(sig), jobs, now))
            })
            .await
        } else {
            self.run("enqueue", move |c, ctx, sig| {
                Box::pin(ops::enqueue(c, ctx, Some(sig), jobs, now))
            })
            .await
        }
    }

    async fn fetch(&self, request: FetchRequest) -> Result<Vec<FetchedJob>> {
        if request.limit == 0 || request.queues.is_empty() {
            return Ok(Vec::new());
        }
        self.run("fetch", move |c, ctx, _| {
            Box::pin(ops::fetch(c, ctx, request))
        })
        .await
    }

    async fn complete(&self, completions: Vec<Completion>) -> Result<Vec<CompletionStatus>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        self.run("complete", move |c, ctx, sig| {
            Box::pin(ops::complete(c, ctx, sig, completions))
        })
        .await
    }

    async fn complete_and_fetch(
        &self,
        completions: Vec<Completion>,
        fetch: FetchRequest,
    ) -> Result<(Vec<CompletionStatus>, Vec<FetchedJob>)> {
        if completions.is_empty() {
            let jobs = self.fetch(fetch).await.unwrap_or_default();
            return Ok((Vec::new(), jobs));
        }
        // Two statements on two connections at once, each its own transaction: PostgreSQL runs
        // them side by side (measured: 1.5 times the drain rate of one statement doing both,
        // whose fetch could not see the completions' effects anyway; with the server's two
        // batches in flight, still 7-15 % faster than one statement each, at the same CPU
        // per job). The fetch does not see
        // jobs the completions put back in their queue; their wake-up brings the next fetch.
        let server = fetch.server.clone();
        let (done, got) = tokio::join!(self.complete(completions), self.fetch(fetch));
        match (done, got) {
            (Ok(statuses), Ok(jobs)) => Ok((statuses, jobs)),
            (Ok(statuses), Err(e)) => {
                tracing::warn!(error = %e, "fetching after completing failed");
                Ok((statuses, Vec::new()))
            }
            (Err(e), Ok(jobs)) => {
                // The caller gets an error and no job: give the jobs back at once rather
                // than leave them leased until their leases lapse.
                let now = Utc::now();
                let back = jobs
                    .iter()
                    .map(|j| {
                        Completion::new(
                            j.id,
                            j.lease,
                            server.clone(),
                            firelane_core::Outcome::HandedBack {
                                reason: "the completions fetched with it could not be recorded"
                                    .to_owned(),
                            },
                            Duration::ZERO,
                            now,
                        )
                    })
                    .collect();
                if let Err(e2) = self.complete(back).await {
                    tracing::warn!(error = %e2, jobs = jobs.len(), "could not give back jobs fetched with completions that failed; they return when their leases lapse");
                }
                Err(e)
            }
            (Err(e), Err(_)) => Err(e),
        }
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<HeartbeatReply> {
        self.run("heartbeat", move |c, ctx, _| {
            Box::pin(ops::heartbeat(c, ctx, heartbeat))
        })
        .await
    }

    async fn remove_server(&self, server: &ServerId) -> Result<()> {
        let server = server.clone();
        self.run("remove_server", move |c, ctx, _| {
            Box::pin(async move { ops::remove_server(c, ctx, &server).await })
        })
        .await
    }

    async fn promote_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Promotion> {
        self.run("promote_due", move |c, ctx, sig| {
            Box::pin(ops::promote_due(c, ctx, sig, now, limit))
        })
        .await
    }

    async fn recover(&self, now: DateTime<Utc>, dead_after: Duration) -> Result<Recovery> {
        self.run("recover", move |c, ctx, sig| {
            Box::pin(ops::recover(c, ctx, sig, now, dead_after))
        })
        .await
    }

    async fn expire(&self, now: DateTime<Utc>, retention: Retention, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        self.run("expire", move |c, ctx, _| {
            Box::pin(ops::expire(c, ctx, now, retention, limit))
        })
        .await
    }

    async fn delete(&self, ids: &[JobId], reason: &str, now: DateTime<Utc>) -> Result<Vec<Change>> {
        // One transaction per job, in order: a job listed after its parent sees what deleting
        // the parent did to it.
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let reason = reason.to_owned();
            out.push(
                self.tx("delete", move |c, ctx, sig| {
                    Box::pin(async move { ops::delete_one(c, ctx, sig, id, &reason, now).await })
                })
                .await?,
            );
        }
        Ok(out)
    }

    async fn requeue(
        &self,
        ids: &[JobId],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        let mut out = Vec::with_capacity(ids.len());
        for &id in ids {
            let reason = reason.to_owned();
            out.push(
                self.tx("requeue", move |c, ctx, sig| {
                    Box::pin(async move { ops::requeue_one(c, ctx, sig, id, &reason, now).await })
                })
                .await?,
            );
        }
        Ok(out)
    }

    async fn job(&self, id: JobId) -> Result<Option<JobDetails>> {
        let op = "job";
        let mut conn = self
            .inner
            .pool
            .acquire()
            .await
            .map_err(|e| db_error(op, e))?;
        let mut tx = conn
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|e| db_error(op, e))?;
        let out = reads::job(&mut tx, &self.inner.ctx, id)
            .await
            .map_err(|e| e.into_error(op))?;
        tx.commit().await.map_err(|e| db_error(op, e))?;
        Ok(out)
    }

    async fn list_jobs(&self, query: JobQuery) -> Result<Vec<JobRecord>> {
        self.run("list_jobs", move |c, ctx, _| {
            Box::pin(reads::list_jobs(c, ctx, query))
        })
        .await
    }

    async fn stats(&self) -> Result<Stats> {
        self.run("stats", |c, ctx, _| Box::pin(reads::stats(c, ctx)))
            .await
    }

    async fn stats_history(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<HourlyStats>> {
        self.run("stats_history", move |c, ctx, _| {
            Box::pin(reads::stats_history(c, ctx, from, to))
        })
        .await
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool, now: DateTime<Utc>) -> Result<()> {
        validate_queue(queue)?;
        let queue = queue.to_owned();
        self.run("set_queue_paused", move |c, ctx, sig| {
            Box::pin(async move { ops::set_queue_paused(c, ctx, sig, &queue, paused, now).await })
        })
        .await
    }

    async fn servers(&self) -> Result<Vec<ServerRecord>> {
        self.run("servers", |c, ctx, _| Box::pin(reads::servers(c, ctx)))
            .await
    }

    async fn upsert_recurring(
        &self,
        def: RecurringDef,
        next_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.tx("upsert_recurring", move |c, ctx, sig| {
            Box::pin(ops::upsert_recurring(c, ctx, sig, def, next_run, now))
        })
        .await
    }

    async fn remove_recurring(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.tx("remove_recurring", move |c, ctx, sig| {
            Box::pin(async move { ops::remove_recurring(c, ctx, sig, &id).await })
        })
        .await
    }

    async fn recurring(&self, id: &str) -> Result<Option<RecurringRecord>> {
        let id = id.to_owned();
        self.run("recurring", move |c, ctx, _| {
            Box::pin(async move { reads::recurring(c, ctx, &id).await })
        })
        .await
    }

    async fn list_recurring(&self) -> Result<Vec<RecurringRecord>> {
        // Servers list recurring jobs at every poll: answered from the copy kept since the
        // last change any store announced (see the `cache` module).
        let (known, token) = self.inner.ctx.cache.recurring();
        if let Some(list) = known {
            return Ok(list);
        }
        let list = self
            .run("list_recurring", |c, ctx, _| {
                Box::pin(reads::list_recurring(c, ctx))
            })
            .await?;
        self.inner.ctx.cache.set_recurring(list.clone(), token);
        Ok(list)
    }

    async fn set_recurring_paused(
        &self,
        id: &str,
        paused: bool,
        next_run: Option<DateTime<Utc>>,
        _now: DateTime<Utc>,
    ) -> Result<bool> {
        let id = id.to_owned();
        self.tx("set_recurring_paused", move |c, ctx, sig| {
            Box::pin(
                async move { ops::set_recurring_paused(c, ctx, sig, &id, paused, next_run).await },
            )
        })
        .await
    }

    async fn fire_recurring(&self, firing: Firing) -> Result<bool> {
        self.tx("fire_recurring", move |c, ctx, sig| {
            Box::pin(ops::fire_recurring(c, ctx, sig, firing))
        })
        .await
    }

    async fn trigger_recurring(&self, id: &str, now: DateTime<Utc>) -> Result<JobId> {
        let id = id.to_owned();
        self.tx("trigger_recurring", move |c, ctx, sig| {
            Box::pin(async move { ops::trigger_recurring(c, ctx, sig, &id, now).await })
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.signals.subscribe()
    }
}
