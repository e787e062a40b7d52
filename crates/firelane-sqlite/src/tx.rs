//! Enqueueing inside the application's own transaction: [`SqliteStorage::enqueue_in`].
//!
//! The jobs are written by the same operation a normal enqueue runs ([`ops::enqueue`]), on the
//! caller's connection instead of the writer's, inside a savepoint of the caller's
//! transaction: rows, queue rows, history and counters are those of any enqueue, and they
//! commit or roll back with the caller's own writes. Nothing in it depends on how the store
//! sets up its own connections: its statement text creates the scratch table it fills
//! (`temp.firelane_incoming`) on whatever connection runs it, and Firelane's tables have no foreign keys
//! or triggers for the caller's `foreign_keys` setting to change. A WAL database stays in WAL
//! mode for every connection; the caller's busy timeout and synchronous setting apply to its
//! own transaction.
//!
//! Waking servers: the writer sends its signals after its own commits, but it does not see
//! the caller's. So the caller's connection gets a commit hook and a rollback hook (SQLite's
//! `sqlite3_commit_hook` and `sqlite3_rollback_hook`, through sqlx): the signals of an
//! `enqueue_in` wait in [`InTx`] under that connection, go out when its transaction commits
//! and are dropped when it rolls back. The commit hook runs while SQLite is committing, just
//! before the write lock is released; a server woken by it fetches through the store's
//! writer, whose `BEGIN IMMEDIATE` waits for that lock (the busy timeout), so it finds the
//! jobs. Should the commit still fail after the hook, the wake-up was only a wasted fetch.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use chrono::Utc;
use firelane_core::{Enqueued, Error, NewJob, Result, Signal};
use sqlx::SqliteConnection;
use tokio::sync::broadcast;

use crate::codec::db_error;
use crate::writer::{Signals, dedup};
use crate::{SqliteStorage, ops};

/// The operation's name in errors.
const OP: &str = "enqueue_in";

/// Opens the savepoint that makes an `enqueue_in` all-or-nothing inside the caller's
/// transaction (or a transaction of its own when the connection has none), and reads which
/// file the connection's main database is, in one round trip.
const BEGIN: &str = "SAVEPOINT firelane_enqueue_in;
     SELECT file FROM pragma_database_list WHERE name = 'main'";
/// Keeps what the `enqueue_in` wrote (commits it, when the savepoint began the transaction).
const RELEASE: &str = "RELEASE firelane_enqueue_in";
/// Undoes what the `enqueue_in` wrote, leaving the caller's transaction as it was.
const UNDO: &str = "ROLLBACK TO firelane_enqueue_in; RELEASE firelane_enqueue_in";

/// Signals waiting for commits of connections that ran [`SqliteStorage::enqueue_in`], by
/// connection (the address of its `sqlite3` handle, stable while it is open).
type Pending = Arc<Mutex<HashMap<usize, Vec<Signal>>>>;

/// What a store keeps for [`SqliteStorage::enqueue_in`].
pub(crate) struct InTx {
    /// The store's database file, canonical; `None` for an in-memory store.
    file: Option<PathBuf>,
    pending: Pending,
    /// Weak: a hook left on an application's connection must not keep the channel open.
    signals: broadcast::WeakSender<Signal>,
}

impl InTx {
    /// For a store on `file` (`None`: in memory) that sends its wake-ups on `signals`.
    pub(crate) fn new(file: Option<&Path>, signals: &broadcast::Sender<Signal>) -> Self {
        Self {
            file: file.map(|f| std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf())),
            pending: Pending::default(),
            signals: signals.downgrade(),
        }
    }

    /// Sets this store's commit and rollback hooks on `conn` (replacing any others), and
    /// returns the connection's key in `pending`.
    async fn hook(&self, conn: &mut SqliteConnection) -> Result<usize> {
        let mut handle = conn.lock_handle().await.map_err(|e| db_error(OP, e))?;
        let key = handle.as_raw_handle().as_ptr().addr();
        let (pending, signals) = (self.pending.clone(), self.signals.clone());
        handle.set_commit_hook(move || {
            let waiting = take(&pending, key);
            if let Some(sender) = signals.upgrade() {
                for signal in dedup(waiting) {
                    // No receiver is not an error: servers may not be listening.
                    let _ = sender.send(signal);
                }
            }
            true // never veto the commit
        });
        let pending = self.pending.clone();
        handle.set_rollback_hook(move || {
            take(&pending, key);
        });
        Ok(key)
    }

    /// Adds signals to send when `key`'s transaction commits; returns how many waited before,
    /// for [`InTx::forget`].
    fn add(&self, key: usize, mut signals: Signals) -> usize {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        let waiting = pending.entry(key).or_default();
        let before = waiting.len();
        waiting.append(&mut signals);
        before
    }

    /// Drops the signals added after the first `keep`.
    fn forget(&self, key: usize, keep: usize) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(waiting) = pending.get_mut(&key) {
            waiting.truncate(keep);
        }
    }

    /// Checks that the connection's main database (`file`, as SQLite names it) is the store's.
    fn check_file(&self, file: Option<&str>) -> Result<()> {
        let Some(store) = &self.file else {
            // An in-memory store: a connection that reaches it is on it.
            return Ok(());
        };
        let conn = file.filter(|f| !f.is_empty()).map(|f| {
            let f = Path::new(f);
            std::fs::canonicalize(f).unwrap_or_else(|_| f.to_path_buf())
        });
        if conn.as_deref() == Some(store.as_path()) {
            return Ok(());
        }
        let conn = conn.map_or_else(
            || "an in-memory or temporary database".to_owned(),
            |f| f.display().to_string(),
        );
        Err(Error::Config(format!(
            "enqueue_in: the connection's database is {conn}, but the store is {}; open the application's pool on the store's file (a transaction is atomic within one database file only)",
            store.display()
        )))
    }
}

/// Takes the signals waiting for `key`.
fn take(pending: &Pending, key: usize) -> Vec<Signal> {
    pending
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&key)
        .unwrap_or_default()
}

/// Undoes the savepoint after a failure. When this fails too, SQLite has already rolled back
/// the caller's whole transaction (a full disk, an I/O error): nothing of it remains, and its
/// commit fails.
async fn undo(conn: &mut SqliteConnection) {
    if let Err(e) = sqlx::raw_sql(UNDO).execute(conn).await {
        tracing::debug!(error = %e, "enqueue_in: the savepoint was already gone");
    }
}

impl SqliteStorage {
    /// Enqueues jobs inside the caller's own transaction (or on the caller's connection): the
    /// jobs exist if and only if that transaction commits, and this process's servers on this
    /// store are woken when it does. Jobs are checked as a store checks them (queue and job
    /// names); the caller's transaction sees them at once. Rows, history and counters are
    /// those of [`Storage::enqueue`](firelane_core::Storage::enqueue).
    ///
    /// The connection must be to the store's own database file (open the application's pool on
    /// it): SQLite makes a transaction atomic within one file only, so an attached file is not
    /// enough. Firelane's tables all start with `firelane_`; open the store with
    /// [`SqliteConfig::shared_database`](crate::SqliteConfig::shared_database) (`?shared=true`)
    /// so that it adds them beside the application's.
    ///
    /// Begin the transaction with `BEGIN IMMEDIATE` (`pool.begin_with("BEGIN IMMEDIATE")`): a
    /// deferred transaction that has read before it writes fails at once with "database is
    /// locked" when another connection committed in between, instead of waiting. Keep it short:
    /// from its first write to its commit, the store's own writes (servers' fetches,
    /// completions, heartbeats) wait for it, up to their busy timeout.
    ///
    /// ```
    /// use firelane_core::{NewJob, Storage};
    /// use firelane_sqlite::SqliteStorage;
    /// use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = tempfile::tempdir()?;
    /// # let path = dir.path().join("app.db");
    /// let storage = SqliteStorage::connect(&format!("sqlite://{}?shared=true", path.display())).await?;
    /// // The application's pool, on the store's file.
    /// let pool = SqlitePoolOptions::new()
    ///     .connect_with(SqliteConnectOptions::new().filename(&path))
    ///     .await?;
    /// sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL)")
    ///     .execute(&pool)
    ///     .await?;
    ///
    /// let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    /// let user_id: i64 = sqlx::query_scalar("INSERT INTO users (email) VALUES (?) RETURNING id")
    ///     .bind("ada@example.com")
    ///     .fetch_one(&mut *tx)
    ///     .await?;
    /// let welcome = NewJob::new("send_welcome_email", format!(r#"{{"user_id":{user_id}}}"#));
    /// let id = welcome.id;
    /// storage.enqueue_in(&mut tx, vec![welcome]).await?;
    /// tx.commit().await?; // the user and the job, or neither
    ///
    /// assert!(storage.job(id).await?.is_some());
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Wake-ups
    ///
    /// Servers of this process on this store are woken when the transaction commits, as after
    /// [`Storage::enqueue`](firelane_core::Storage::enqueue): the call sets a commit hook and a
    /// rollback hook on the connection (replacing any the application set there). Servers in
    /// other processes find the jobs at their next poll, as for any enqueue by another process.
    /// A rollback to a savepoint of the caller's that undoes the jobs but not the transaction
    /// still wakes servers at the commit; they find nothing.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidQueue`] or [`Error::InvalidJobName`] for a job a store refuses (before
    /// anything is written), [`Error::JobNotFound`] for a continuation of an unknown job,
    /// [`Error::Config`] for a connection to another database, [`Error::Backend`] when a
    /// statement fails. After an error nothing of this call remains and the caller's
    /// transaction is as it was before, usable; unless SQLite rolled back the whole transaction
    /// itself (a full disk, an I/O error), in which case its commit fails.
    pub async fn enqueue_in(
        &self,
        conn: &mut SqliteConnection,
        jobs: Vec<NewJob>,
    ) -> Result<Vec<Enqueued>> {
        for job in &jobs {
            job.validate(usize::MAX)?;
        }
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let in_tx = &self.inner.in_tx;
        let key = in_tx.hook(conn).await?;

        let file: Option<String> = sqlx::query_scalar(BEGIN)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| db_error(OP, e))?;
        if let Err(e) = in_tx.check_file(file.as_deref()) {
            undo(conn).await;
            return Err(e);
        }

        let mut signals = Signals::new();
        let created = match ops::enqueue(&mut *conn, &mut signals, jobs, Utc::now()).await {
            Ok(created) => created,
            Err(e) => {
                undo(conn).await;
                return Err(e.into_error(OP));
            }
        };
        // Before the release: when the savepoint began the transaction, the release commits it
        // and the commit hook runs.
        let keep = in_tx.add(key, signals);
        if let Err(e) = sqlx::raw_sql(RELEASE).execute(&mut *conn).await {
            in_tx.forget(key, keep);
            undo(conn).await;
            return Err(db_error(OP, e));
        }
        Ok(created)
    }
}
