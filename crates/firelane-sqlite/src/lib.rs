//! SQLite storage for Firelane.
//!
//! [`SqliteStorage`] keeps jobs in one SQLite file (or in memory, for tests) and implements
//! [`firelane_core::Storage`]. Several processes may share one file: they serialize on SQLite's
//! write lock, and no job is ever fetched twice.
//!
//! ```
//! use firelane_core::{FetchRequest, NewJob, ServerId, Storage, chrono::Utc};
//! use firelane_sqlite::SqliteStorage;
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), firelane_core::Error> {
//! let storage = SqliteStorage::connect("sqlite::memory:").await?;
//! let now = Utc::now();
//! storage.enqueue(vec![NewJob::new("send_email", r#"{"user":42}"#)], now).await?;
//!
//! let request = FetchRequest::new(
//!     ServerId::generate(),
//!     vec!["default".to_owned()],
//!     10,
//!     now,
//!     Duration::from_secs(30),
//! );
//! let fetched = storage.fetch(request).await?;
//! assert_eq!(fetched.len(), 1);
//! assert_eq!(fetched[0].name, "send_email");
//! assert_eq!(fetched[0].attempt, 1);
//! # Ok(())
//! # }
//! ```
//!
//! # How it works
//!
//! - **WAL and one writer.** The database runs in WAL mode, so readers never block the writer
//!   nor the writer the readers. All writes of a store go through one connection owned by a
//!   writer task.
//! - **Group commit.** The writer task takes every write operation already waiting (up to
//!   [`SqliteConfig::max_batch`]) and runs them in one `BEGIN IMMEDIATE` transaction, each in
//!   its own savepoint: a failing operation is rolled back alone and fails only its caller, and
//!   callers are answered only after `COMMIT`. Many concurrent small writes then cost one
//!   transaction instead of one each. `BEGIN IMMEDIATE` takes the write lock at once, so two
//!   processes on one file wait for each other (up to the busy timeout, then an error) instead
//!   of failing to upgrade a read lock.
//! - **A read pool.** Monitoring queries (`job`, `list_jobs`, `stats`, `servers`) run on
//!   read-only connections, each in one read transaction. An in-memory database exists once
//!   per connection, so it has no read pool: reads share its writer connection.
//! - **A hot queue table.** Enqueued jobs have a row in a small `queue` table, indexed by
//!   queue, priority and arrival; fetch reads and deletes there, so finished jobs piling up in
//!   `jobs` do not slow it down.
//! - **Recurring jobs** live in a `recurring` table. Firing an occurrence is a compare-and-set
//!   on the occurrence the job waits for, in the same transaction as the enqueue of its jobs,
//!   so that each occurrence fires once across servers and processes.
//! - **Wake-ups in process only.** After a commit the store sends [`firelane_core::Signal`]s on
//!   a broadcast channel. Another process on the same file is not told; its servers poll.
//! - **Enqueue in the application's transaction.** [`SqliteStorage::enqueue_in`] runs the
//!   enqueue on the application's own connection to the same file, so the jobs commit or roll
//!   back with the application's writes; a commit hook wakes this process's servers.
//! - **Times** are stored as microseconds since the Unix epoch (UTC): finer parts of a
//!   `DateTime` are dropped. Ids are 16-byte blobs, states their lowercase names.

mod codec;
mod config;
mod ops;
mod reads;
mod schema;
mod sql;
mod tally;
mod tx;
mod writer;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane_core::{
    Change, Completion, CompletionStatus, Enqueued, Error, FetchRequest, FetchedJob, Firing,
    Heartbeat, HeartbeatReply, HourlyStats, JobDetails, JobId, JobQuery, JobRecord, NewJob,
    Promotion, Recovery, RecurringDef, RecurringRecord, Result, Retention, ServerId, ServerRecord,
    Signal, Stats, Storage, async_trait, validate_queue,
};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
use sqlx::{ConnectOptions, Connection, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::broadcast;

pub use config::{SqliteConfig, Synchronous};

use crate::codec::{OpResult, db_error};
use crate::config::Target;
use crate::schema::SchemaError;
use crate::writer::Writer;

/// How many signals a slow subscriber may fall behind before it misses some.
const SIGNAL_CAPACITY: usize = 1024;

/// A Firelane store in a SQLite database.
///
/// Cheap to clone: clones share the connections, the writer task and the signal channel. The
/// writer task stops when the last clone is dropped. It must be opened inside a tokio runtime,
/// which runs its writer task.
///
/// ```
/// use firelane_core::{JobState, NewJob, Storage, chrono::Utc};
/// use firelane_sqlite::{SqliteConfig, SqliteStorage};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), firelane_core::Error> {
/// // A file: `SqliteStorage::connect("sqlite://firelane.db")`. Here, a private database in
/// // memory, as tests use.
/// let storage = SqliteStorage::connect_with(SqliteConfig::memory()).await?;
/// let mut wakeups = storage.subscribe();
///
/// let job = NewJob::new("send_email", r#"{"user":42}"#);
/// let id = job.id;
/// let created = storage.enqueue(vec![job], Utc::now()).await?;
/// assert_eq!(created[0].state, JobState::Enqueued);
/// assert!(wakeups.try_recv().is_ok(), "servers are woken after the commit");
///
/// let details = storage.job(id).await?.expect("the job exists");
/// assert_eq!(details.job.name, "send_email");
/// assert_eq!(details.history.len(), 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    writer: Writer,
    /// The writer task's pool (one connection).
    write_pool: SqlitePool,
    /// Read-only connections; for an in-memory database, the write pool again.
    read_pool: SqlitePool,
    signals: broadcast::Sender<Signal>,
    /// What [`SqliteStorage::enqueue_in`] needs: the file, and signals waiting for commits.
    in_tx: tx::InTx,
    /// For an in-memory database: a connection that is never used, and keeps the database
    /// alive whatever the pool does with its connection.
    _keeper: Option<tokio::sync::Mutex<SqliteConnection>>,
}

impl fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

impl SqliteStorage {
    /// Opens the store at `url` with default settings: `sqlite://path/to/file.db`,
    /// `sqlite:file.db`, `sqlite::memory:` or `:memory:` (see [`SqliteConfig::from_url`]). A
    /// missing file is created, and a new or empty database gets Firelane's schema.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a URL that is not SQLite's, [`Error::Connect`] when the file
    /// cannot be opened, [`Error::NotFirelane`] when it is not a SQLite database or belongs to
    /// another application, [`Error::SchemaTooNew`] when a newer Firelane wrote it.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(SqliteConfig::from_url(url)?).await
    }

    /// Opens the store described by `config`.
    ///
    /// # Errors
    ///
    /// As [`SqliteStorage::connect`].
    pub async fn connect_with(config: SqliteConfig) -> Result<Self> {
        let url = config.url();
        let acquire_timeout = config.busy_timeout.max(Duration::from_secs(30));
        let base = match &config.target {
            Target::File(path) => SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(config.create_if_missing),
            Target::Memory => {
                // sqlx gives `:memory:` a unique shared-cache name, so that every connection
                // made from these options reaches the same database.
                ":memory:"
                    .parse::<SqliteConnectOptions>()
                    .map_err(|e| connect_error(&config, e))?
            }
        }
        .busy_timeout(config.busy_timeout)
        .synchronous(config.synchronous.to_sqlx())
        .foreign_keys(false)
        // After a burst, a checkpoint truncates the WAL file back to this size (64 MiB)
        // instead of leaving it as large as the burst made it.
        .pragma("journal_size_limit", "67108864")
        // Checkpoint every 10,000 WAL pages (about 40 MiB) instead of SQLite's 1,000: the hot
        // pages (queue, index tails) that every commit rewrites are copied to the database
        // once per checkpoint, and checkpoints (the only syncs under `synchronous = NORMAL`)
        // come ten times less often. Stays under the journal size limit above.
        .pragma("wal_autocheckpoint", "10000");

        let keeper = match config.target {
            Target::Memory => Some(tokio::sync::Mutex::new(
                base.connect()
                    .await
                    .map_err(|e| connect_error(&config, e))?,
            )),
            Target::File(_) => None,
        };

        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(acquire_timeout)
            .test_before_acquire(false)
            // The writer connection's scratch tables and their in-memory store (see
            // `sql::SCRATCH_TABLES`). An error here surfaces as the pool's acquire timeout;
            // a file SQLite cannot use has failed earlier, at the connect pragmas.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::raw_sql(sql::SCRATCH_TABLES).execute(conn).await?;
                    Ok(())
                })
            })
            .connect_with(base.clone())
            .await
            .map_err(|e| connect_error(&config, e))?;

        {
            let mut conn = write_pool
                .acquire()
                .await
                .map_err(|e| connect_error(&config, e))?;
            let applied = schema::migrate(&mut conn, config.shared)
                .await
                .map_err(|e| match e {
                    SchemaError::Db(e) => connect_error(&config, e),
                    SchemaError::NotFirelane(reason) => Error::NotFirelane(url.clone(), reason),
                    SchemaError::TooNew(found) => Error::SchemaTooNew {
                        found,
                        known: schema::LATEST,
                    },
                })?;
            if !applied.is_empty() {
                tracing::info!(%url, versions = ?applied, "applied Firelane schema migrations");
            }
            if let Target::File(_) = config.target {
                enable_wal(&mut conn, &config).await?;
            }
        }

        let read_pool = match config.target {
            Target::Memory => write_pool.clone(),
            Target::File(_) => SqlitePoolOptions::new()
                .max_connections(config.read_pool_size)
                .min_connections(0)
                .acquire_timeout(acquire_timeout)
                .test_before_acquire(false)
                .connect_lazy_with(base.clone().read_only(true).create_if_missing(false)),
        };

        let (signals, _) = broadcast::channel(SIGNAL_CAPACITY);
        let writer = Writer::spawn(write_pool.clone(), signals.clone(), config.max_batch);
        let in_tx = tx::InTx::new(config.path(), &signals);
        Ok(Self {
            inner: Arc::new(Inner {
                url,
                writer,
                write_pool,
                read_pool,
                signals,
                in_tx,
                _keeper: keeper,
            }),
        })
    }

    /// The writer's connection pool (one connection). Work done on it waits for the writer's
    /// batches and holds them up: keep transactions on it short.
    #[doc(hidden)]
    pub fn pool(&self) -> &SqlitePool {
        &self.inner.write_pool
    }

    /// How much group commit has been grouping: write transactions committed (or tried) and
    /// the operations they carried, since the store was opened.
    pub fn writer_stats(&self) -> WriterStats {
        let (batches, ops) = self.inner.writer.counters();
        WriterStats { batches, ops }
    }

    /// The store's address, for messages.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    /// Closes the connections. Operations still waiting, and any after, fail with
    /// [`Error::Shutdown`].
    pub async fn close(&self) {
        self.inner.read_pool.close().await;
        self.inner.write_pool.close().await;
    }

    /// Runs a write operation in the writer's next batch.
    async fn write<T, F>(&self, name: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(
                &'c mut SqliteConnection,
                &'c mut writer::Signals,
            ) -> writer::BoxFuture<'c, OpResult<T>>
            + Send
            + 'static,
    {
        self.inner.writer.submit(name, f).await
    }

    /// A read connection.
    async fn reader(&self, op: &'static str) -> Result<PoolConnection<Sqlite>> {
        self.inner
            .read_pool
            .acquire()
            .await
            .map_err(|e| db_error(op, e))
    }
}

/// Counts of the writer's work, from [`SqliteStorage::writer_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriterStats {
    /// Write transactions run.
    pub batches: u64,
    /// Write operations run in them (`ops / batches` is the average batch size).
    pub ops: u64,
}

/// Runs `$body` (an expression using `$tx: &mut SqliteConnection`) in a read transaction on
/// a read connection, and maps its errors for `$op`.
macro_rules! read {
    ($self:ident, $op:literal, |$tx:ident| $body:expr) => {{
        let mut conn = $self.reader($op).await?;
        let mut guard = conn.begin().await.map_err(|e| db_error($op, e))?;
        let $tx: &mut SqliteConnection = &mut guard;
        let out: OpResult<_> = $body.await;
        let out = out.map_err(|e| e.into_error($op))?;
        guard.commit().await.map_err(|e| db_error($op, e))?;
        Ok(out)
    }};
}

#[async_trait]
impl Storage for SqliteStorage {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn enqueue(&self, jobs: Vec<NewJob>, now: DateTime<Utc>) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        self.write("enqueue", move |conn, signals| {
            Box::pin(ops::enqueue(conn, signals, jobs, now))
        })
        .await
    }

    async fn fetch(&self, request: FetchRequest) -> Result<Vec<FetchedJob>> {
        if request.limit == 0 || request.queues.is_empty() {
            return Ok(Vec::new());
        }
        self.write("fetch", move |conn, _| Box::pin(ops::fetch(conn, request)))
            .await
    }

    async fn complete(&self, completions: Vec<Completion>) -> Result<Vec<CompletionStatus>> {
        if completions.is_empty() {
            return Ok(Vec::new());
        }
        self.write("complete", move |conn, signals| {
            Box::pin(ops::complete(conn, signals, completions))
        })
        .await
    }

    async fn complete_and_fetch(
        &self,
        completions: Vec<Completion>,
        fetch: FetchRequest,
    ) -> Result<(Vec<CompletionStatus>, Vec<FetchedJob>)> {
        if fetch.limit == 0 || fetch.queues.is_empty() {
            return Ok((self.complete(completions).await?, Vec::new()));
        }
        // One operation, so one transaction with no savepoint between the two halves.
        self.write("complete_and_fetch", move |conn, signals| {
            Box::pin(async move {
                let statuses = ops::complete(&mut *conn, signals, completions).await?;
                let jobs = ops::fetch(conn, fetch).await?;
                Ok((statuses, jobs))
            })
        })
        .await
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<HeartbeatReply> {
        self.write("heartbeat", move |conn, _| {
            Box::pin(ops::heartbeat(conn, heartbeat))
        })
        .await
    }

    async fn remove_server(&self, server: &ServerId) -> Result<()> {
        let server = server.clone();
        self.write("remove_server", move |conn, _| {
            Box::pin(ops::remove_server(conn, server))
        })
        .await
    }

    async fn promote_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Promotion> {
        self.write("promote_due", move |conn, signals| {
            Box::pin(ops::promote_due(conn, signals, now, limit))
        })
        .await
    }

    async fn recover(&self, now: DateTime<Utc>, dead_after: Duration) -> Result<Recovery> {
        self.write("recover", move |conn, signals| {
            Box::pin(ops::recover(conn, signals, now, dead_after))
        })
        .await
    }

    async fn expire(&self, now: DateTime<Utc>, retention: Retention, limit: usize) -> Result<u64> {
        if limit == 0 {
            return Ok(0);
        }
        self.write("expire", move |conn, _| {
            Box::pin(ops::expire(conn, now, retention, limit))
        })
        .await
    }

    async fn delete(&self, ids: &[JobId], reason: &str, now: DateTime<Utc>) -> Result<Vec<Change>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, reason) = (ids.to_vec(), reason.to_owned());
        self.write("delete", move |conn, signals| {
            Box::pin(ops::delete(conn, signals, ids, reason, now))
        })
        .await
    }

    async fn requeue(
        &self,
        ids: &[JobId],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (ids, reason) = (ids.to_vec(), reason.to_owned());
        self.write("requeue", move |conn, signals| {
            Box::pin(ops::requeue(conn, signals, ids, reason, now))
        })
        .await
    }

    async fn job(&self, id: JobId) -> Result<Option<JobDetails>> {
        read!(self, "job", |tx| reads::job(tx, id))
    }

    async fn list_jobs(&self, query: JobQuery) -> Result<Vec<JobRecord>> {
        read!(self, "list_jobs", |tx| reads::list_jobs(tx, query))
    }

    async fn stats(&self) -> Result<Stats> {
        read!(self, "stats", |tx| reads::stats(tx))
    }

    async fn servers(&self) -> Result<Vec<ServerRecord>> {
        read!(self, "servers", |tx| reads::servers(tx))
    }

    async fn stats_history(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<HourlyStats>> {
        read!(self, "stats_history", |tx| reads::stats_history(
            tx, from, to
        ))
    }

    async fn set_queue_paused(&self, queue: &str, paused: bool, now: DateTime<Utc>) -> Result<()> {
        validate_queue(queue)?;
        let queue = queue.to_owned();
        self.write("set_queue_paused", move |conn, signals| {
            Box::pin(ops::set_queue_paused(conn, signals, queue, paused, now))
        })
        .await
    }

    async fn upsert_recurring(
        &self,
        def: RecurringDef,
        next_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.write("upsert_recurring", move |conn, signals| {
            Box::pin(ops::upsert_recurring(conn, signals, def, next_run, now))
        })
        .await
    }

    async fn remove_recurring(&self, id: &str) -> Result<bool> {
        let id = id.to_owned();
        self.write("remove_recurring", move |conn, signals| {
            Box::pin(ops::remove_recurring(conn, signals, id))
        })
        .await
    }

    async fn recurring(&self, id: &str) -> Result<Option<RecurringRecord>> {
        let id = id.to_owned();
        read!(self, "recurring", |tx| reads::recurring(tx, id))
    }

    async fn list_recurring(&self) -> Result<Vec<RecurringRecord>> {
        read!(self, "list_recurring", |tx| reads::list_recurring(tx))
    }

    async fn set_recurring_paused(
        &self,
        id: &str,
        paused: bool,
        next_run: Option<DateTime<Utc>>,
        _now: DateTime<Utc>,
    ) -> Result<bool> {
        let id = id.to_owned();
        self.write("set_recurring_paused", move |conn, signals| {
            Box::pin(ops::set_recurring_paused(
                conn, signals, id, paused, next_run,
            ))
        })
        .await
    }

    async fn fire_recurring(&self, firing: Firing) -> Result<bool> {
        self.write("fire_recurring", move |conn, signals| {
            Box::pin(ops::fire_recurring(conn, signals, firing))
        })
        .await
    }

    async fn trigger_recurring(&self, id: &str, now: DateTime<Utc>) -> Result<JobId> {
        let id = id.to_owned();
        self.write("trigger_recurring", move |conn, signals| {
            Box::pin(ops::trigger_recurring(conn, signals, id, now))
        })
        .await
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.signals.subscribe()
    }
}

/// Switches a file database to WAL. Changing the journal mode needs a lock that the busy
/// timeout does not wait for, so a busy database is retried for a while.
async fn enable_wal(conn: &mut SqliteConnection, config: &SqliteConfig) -> Result<()> {
    let deadline = tokio::time::Instant::now() + config.busy_timeout;
    loop {
        match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await
        {
            Ok(mode) => {
                if !mode.eq_ignore_ascii_case("wal") {
                    tracing::warn!(url = %config.url(), %mode, "SQLite refused WAL mode; writers will block readers");
                }
                return Ok(());
            }
            Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(connect_error(config, e)),
        }
    }
}

/// SQLite's primary result code of a driver error.
fn sqlite_code(e: &sqlx::Error) -> Option<i32> {
    match e {
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff),
        _ => None,
    }
}

fn is_busy(e: &sqlx::Error) -> bool {
    matches!(sqlite_code(e), Some(5 | 6))
}

/// Turns an error met while opening a store into the error the caller can act on.
fn connect_error(config: &SqliteConfig, e: sqlx::Error) -> Error {
    let url = config.url();
    const NOTADB: i32 = 26;
    const CANTOPEN: i32 = 14;
    const READONLY: i32 = 8;
    const PERM: i32 = 3;
    match sqlite_code(&e) {
        Some(NOTADB) => {
            return Error::NotFirelane(url, "the file is not a SQLite database".to_owned());
        }
        Some(CANTOPEN) | Some(PERM) | Some(READONLY) => {
            return Error::Connect {
                reason: cannot_open_reason(config, &e),
                url,
            };
        }
        _ => {}
    }
    if is_busy(&e) {
        return Error::Connect {
            url,
            reason: format!(
                "the database stayed locked by another connection for longer than the busy timeout ({:?}): {e}",
                config.busy_timeout
            ),
        };
    }
    match e {
        sqlx::Error::Io(io) => Error::Connect {
            url,
            reason: io.to_string(),
        },
        e @ (sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) => Error::Connect {
            url,
            reason: e.to_string(),
        },
        e => Error::backend("connect", e),
    }
}

/// Says why a file could not be opened, looking at the file system for the usual causes.
fn cannot_open_reason(config: &SqliteConfig, e: &sqlx::Error) -> String {
    let Some(path) = config.path() else {
        return e.to_string();
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    if !path.exists() && !config.create_if_missing {
        return format!(
            "the file {} does not exist (create_if_missing is off)",
            path.display()
        );
    }
    match std::fs::metadata(&dir) {
        Err(_) => format!(
            "the directory {} does not exist; create it first ({e})",
            dir.display()
        ),
        Ok(m) if !m.is_dir() => format!("{} is not a directory ({e})", dir.display()),
        Ok(m) if m.permissions().readonly() => format!(
            "the directory {} is read-only; SQLite needs to write the database and its -wal and -shm files there ({e})",
            dir.display()
        ),
        Ok(_) if path.is_dir() => format!("{} is a directory, not a file ({e})", path.display()),
        Ok(_) => format!(
            "check that this process may read and write {} and its directory ({e})",
            path.display()
        ),
    }
}
