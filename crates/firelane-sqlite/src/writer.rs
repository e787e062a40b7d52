//! The writer task: group commit of write operations on the one writer connection.
//!
//! Callers send operations through a channel. The task takes the first waiting operation and
//! whatever else is already queued (up to `max_batch`), runs them all in one `BEGIN IMMEDIATE`
//! transaction, each inside its own savepoint so that a failing operation is rolled back alone
//! and reported to its caller alone, and answers the callers only once `COMMIT` succeeded. If
//! the transaction as a whole fails (the write lock could not be had within the busy timeout,
//! the commit failed), every operation of the batch gets the error. Wake-up signals go out
//! after the commit, deduplicated per batch.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use firelane_core::{Error, Result, Signal};
use sqlx::pool::PoolConnection;
use sqlx::{Connection, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::codec::OpResult;

/// A boxed, sendable future borrowing for `'a`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The signals an operation wants sent if its transaction commits.
pub(crate) type Signals = Vec<Signal>;

/// The name the writer uses in [`Error::Shutdown`].
const WRITER: &str = "the SQLite store's writer";

/// A write operation on its way to the writer, its result type erased.
trait Op: Send {
    /// Runs the operation on the connection, inside the batch's transaction.
    fn run<'c>(
        self: Box<Self>,
        conn: &'c mut SqliteConnection,
        signals: &'c mut Signals,
    ) -> BoxFuture<'c, Box<dyn Done>>;

    /// Answers the caller with an error, without running.
    fn fail(self: Box<Self>, error: &BatchError);
}

/// An operation that ran, waiting for its batch's commit to answer its caller.
trait Done: Send {
    /// Whether the operation succeeded (and so its savepoint is kept).
    fn ok(&self) -> bool;
    /// Answers the caller: the operation's result if the batch committed (`None`), else the
    /// batch's error.
    fn finish(self: Box<Self>, commit_error: Option<&BatchError>);
}

struct TypedOp<T, F> {
    name: &'static str,
    f: F,
    reply: oneshot::Sender<Result<T>>,
}

struct TypedDone<T> {
    name: &'static str,
    result: Result<T>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Op for TypedOp<T, F>
where
    T: Send + 'static,
    F: for<'c> FnOnce(&'c mut SqliteConnection, &'c mut Signals) -> BoxFuture<'c, OpResult<T>>
        + Send
        + 'static,
{
    fn run<'c>(
        self: Box<Self>,
        conn: &'c mut SqliteConnection,
        signals: &'c mut Signals,
    ) -> BoxFuture<'c, Box<dyn Done>> {
        let this = *self;
        Box::pin(async move {
            let result = (this.f)(conn, signals)
                .await
                .map_err(|e| e.into_error(this.name));
            Box::new(TypedDone {
                name: this.name,
                result,
                reply: this.reply,
            }) as Box<dyn Done>
        })
    }

    fn fail(self: Box<Self>, error: &BatchError) {
        let _ = self.reply.send(Err(error.to_error(self.name)));
    }
}

impl<T: Send + 'static> Done for TypedDone<T> {
    fn ok(&self) -> bool {
        self.result.is_ok()
    }

    fn finish(self: Box<Self>, commit_error: Option<&BatchError>) {
        let result = match (commit_error, self.result) {
            (Some(e), Ok(_)) => Err(e.to_error(self.name)),
            (_, result) => result,
        };
        // The caller may have gone away; the operation stands all the same.
        let _ = self.reply.send(result);
    }
}

/// Why a whole batch failed; shared by its operations.
#[derive(Clone, Debug)]
pub(crate) struct BatchError {
    stage: &'static str,
    source: Arc<sqlx::Error>,
}

impl BatchError {
    fn new(stage: &'static str, source: sqlx::Error) -> Self {
        Self {
            stage,
            source: Arc::new(source),
        }
    }

    fn to_error(&self, op: &'static str) -> Error {
        if matches!(*self.source, sqlx::Error::PoolClosed) {
            return Error::Shutdown("the SQLite store");
        }
        Error::backend(op, self.clone())
    }
}

impl fmt::Display for BatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "write transaction failed at {}: {}",
            self.stage, self.source
        )
    }
}

impl std::error::Error for BatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The handle callers use to send operations to the writer task.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Box<dyn Op>>,
    counters: Arc<Counters>,
}

/// What the writer has done so far.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) batches: AtomicU64,
    pub(crate) ops: AtomicU64,
}

impl Writer {
    /// Starts the writer task on the current tokio runtime.
    pub(crate) fn spawn(
        pool: SqlitePool,
        signals: broadcast::Sender<Signal>,
        max_batch: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_batch.saturating_mul(4).max(16));
        let counters = Arc::new(Counters::default());
        tokio::spawn(run(pool, rx, signals, max_batch, counters.clone()));
        Self { tx, counters }
    }

    /// Batches and operations run so far.
    pub(crate) fn counters(&self) -> (u64, u64) {
        (
            self.counters.batches.load(Ordering::Relaxed),
            self.counters.ops.load(Ordering::Relaxed),
        )
    }

    /// Runs `f` in the next batch and waits for the batch to commit.
    pub(crate) async fn submit<T, F>(&self, name: &'static str, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection, &'c mut Signals) -> BoxFuture<'c, OpResult<T>>
            + Send
            + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let op: Box<dyn Op> = Box::new(TypedOp { name, f, reply });
        self.tx
            .send(op)
            .await
            .map_err(|_| Error::Shutdown(WRITER))?;
        answer.await.map_err(|_| Error::Shutdown(WRITER))?
    }
}

/// How long the writer keeps the connection while work keeps coming, before it hands it back to
/// the pool once so that someone waiting on [`crate::SqliteStorage::pool`] gets a turn.
const HOLD_AT_MOST: Duration = Duration::from_millis(20);

async fn run(
    pool: SqlitePool,
    mut rx: mpsc::Receiver<Box<dyn Op>>,
    signals: broadcast::Sender<Signal>,
    max_batch: usize,
    counters: Arc<Counters>,
) {
    // Taking the connection from the pool costs more than a small batch (the pool returns a
    // connection through a task of its own), so the writer keeps it while operations keep
    // coming, and gives it back when the channel is empty or it has held it for a while.
    let mut held: Option<(PoolConnection<Sqlite>, Instant)> = None;
    let mut batch: Vec<Box<dyn Op>> = Vec::with_capacity(max_batch);
    loop {
        if held
            .as_ref()
            .is_some_and(|(_, since)| rx.is_empty() || since.elapsed() >= HOLD_AT_MOST)
        {
            held = None;
        }
        if rx.recv_many(&mut batch, max_batch).await == 0 {
            break;
        }
        let ops = std::mem::take(&mut batch);
        let size = ops.len();
        counters.batches.fetch_add(1, Ordering::Relaxed);
        counters.ops.fetch_add(size as u64, Ordering::Relaxed);
        let conn = match &mut held {
            Some((conn, _)) => conn,
            None => match pool.acquire().await {
                Ok(conn) => &mut held.insert((conn, Instant::now())).0,
                Err(e) => {
                    let error = BatchError::new("acquiring the writer connection", e);
                    tracing::warn!(%error, "sqlite batch failed");
                    ops.into_iter().for_each(|op| op.fail(&error));
                    continue;
                }
            },
        };
        // A panic in a batch (a bug) fails only its callers (their answers are dropped: they
        // get `Error::Shutdown`); the connection, in an unknown state, is closed, and the
        // writer goes on with the next batch.
        match CatchUnwind(Box::pin(run_batch(conn, ops, &signals))).await {
            Ok(Health::Good) => {}
            Ok(Health::Broken) => held = None,
            Err(()) => {
                tracing::error!(
                    ops = size,
                    "sqlite write batch panicked; closing its connection"
                );
                if let Some((mut conn, _)) = held.take() {
                    conn.close_on_drop();
                }
            }
        }
    }
    tracing::debug!("sqlite writer stopped: every handle was dropped");
}

/// Whether the writer connection can be used for the next batch.
enum Health {
    Good,
    /// It failed to roll back and is marked to be closed.
    Broken,
}

/// A future that turns a panic while polling its inner future into `Err(())`.
struct CatchUnwind<F>(Pin<Box<F>>);

impl<F: Future> Future for CatchUnwind<F> {
    type Output = std::result::Result<F::Output, ()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(out)) => Poll::Ready(Ok(out)),
            Err(_) => Poll::Ready(Err(())),
        }
    }
}

/// Runs one batch and answers its callers. After a commit, the signals go out before the
/// answers, so that a caller that saw its write succeed knows the wake-ups are sent.
async fn run_batch(
    conn: &mut PoolConnection<Sqlite>,
    ops: Vec<Box<dyn Op>>,
    sender: &broadcast::Sender<Signal>,
) -> Health {
    let mut tx = match conn.begin_with("BEGIN IMMEDIATE").await {
        Ok(tx) => tx,
        Err(e) => {
            let error = BatchError::new("BEGIN IMMEDIATE", e);
            tracing::warn!(%error, "sqlite batch failed");
            ops.into_iter().for_each(|op| op.fail(&error));
            return Health::Good;
        }
    };

    // Savepoints cost a round trip to the connection's thread each, so they are merged: the
    // statement between two operations ends the previous savepoint and opens the next, and
    // COMMIT releases the last. A batch of one operation needs none: if it fails, the whole
    // transaction is rolled back.
    let single = ops.len() == 1;
    let mut done: Vec<Box<dyn Done>> = Vec::with_capacity(ops.len());
    let mut signals = Signals::new();
    let mut broken: Option<BatchError> = None;
    let mut last_ok = true;
    let mut ops = ops.into_iter();
    for (i, op) in ops.by_ref().enumerate() {
        if !single {
            let sql = match (i, last_ok) {
                (0, _) => "SAVEPOINT firelane_op",
                (_, true) => "RELEASE firelane_op; SAVEPOINT firelane_op",
                (_, false) => "ROLLBACK TO firelane_op; RELEASE firelane_op; SAVEPOINT firelane_op",
            };
            if let Err(e) = sqlx::raw_sql(sql).execute(&mut *tx).await {
                let error = BatchError::new("SAVEPOINT", e);
                op.fail(&error);
                broken = Some(error);
                break;
            }
        }
        let mut op_signals = Signals::new();
        let result = op.run(&mut tx, &mut op_signals).await;
        last_ok = result.ok();
        if last_ok {
            signals.append(&mut op_signals);
        }
        done.push(result);
    }
    if broken.is_none() && !last_ok {
        if single {
            // The operation's own error goes to its caller; nothing else is in the batch.
            let health = match tx.rollback().await {
                Ok(()) => Health::Good,
                Err(e) => {
                    tracing::warn!(error = %e, "rollback of a failed operation failed; closing the connection");
                    conn.close_on_drop();
                    Health::Broken
                }
            };
            done.into_iter().for_each(|d| d.finish(None));
            return health;
        }
        if let Err(e) = sqlx::query("ROLLBACK TO firelane_op")
            .execute(&mut *tx)
            .await
        {
            broken = Some(BatchError::new("ROLLBACK TO", e));
        }
    }

    if let Some(error) = broken {
        // The transaction is in an unknown state: roll it all back and fail everyone.
        tracing::warn!(%error, "sqlite batch failed");
        ops.for_each(|op| op.fail(&error));
        let health = match tx.rollback().await {
            Ok(()) => Health::Good,
            Err(e) => {
                tracing::warn!(error = %e, "rollback of a failed batch failed; closing the connection");
                conn.close_on_drop();
                Health::Broken
            }
        };
        done.into_iter().for_each(|d| d.finish(Some(&error)));
        return health;
    }

    match tx.commit().await {
        Ok(()) => {
            let signals = dedup(signals);
            tracing::trace!(
                ops = done.len(),
                signals = signals.len(),
                "sqlite batch committed"
            );
            for signal in signals {
                // No receiver is not an error: servers may not be listening.
                let _ = sender.send(signal);
            }
            done.into_iter().for_each(|d| d.finish(None));
            Health::Good
        }
        Err(e) => {
            let error = BatchError::new("COMMIT", e);
            tracing::warn!(%error, "sqlite batch failed");
            // The failed commit may leave the transaction open; make sure it is gone ("no
            // transaction is active" is the usual, harmless answer).
            let _ = sqlx::query("ROLLBACK").execute(&mut **conn).await;
            done.into_iter().for_each(|d| d.finish(Some(&error)));
            Health::Good
        }
    }
}

/// One `Enqueued` per queue, the earliest `Scheduled`, every `Revoked`, in that order.
pub(crate) fn dedup(signals: Signals) -> Vec<Signal> {
    let mut queues = BTreeSet::new();
    let mut earliest: Option<DateTime<Utc>> = None;
    let mut out = Vec::new();
    for s in signals {
        match s {
            Signal::Enqueued { queue } => {
                queues.insert(queue);
            }
            Signal::Scheduled { at } => {
                earliest = Some(earliest.map_or(at, |e| e.min(at)));
            }
            other => out.push(other),
        }
    }
    let mut first: Vec<Signal> = queues
        .into_iter()
        .map(|queue| Signal::Enqueued { queue })
        .collect();
    if let Some(at) = earliest {
        first.push(Signal::Scheduled { at });
    }
    first.append(&mut out);
    first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_deduplicated() {
        let t0 = DateTime::from_timestamp(1000, 0).unwrap_or_default();
        let t1 = DateTime::from_timestamp(2000, 0).unwrap_or_default();
        let id = firelane_core::JobId::new();
        let out = dedup(vec![
            Signal::Enqueued { queue: "b".into() },
            Signal::Scheduled { at: t1 },
            Signal::Enqueued { queue: "a".into() },
            Signal::Revoked {
                id,
                state: firelane_core::JobState::Deleted,
            },
            Signal::Enqueued { queue: "b".into() },
            Signal::Scheduled { at: t0 },
        ]);
        assert_eq!(
            out,
            vec![
                Signal::Enqueued { queue: "a".into() },
                Signal::Enqueued { queue: "b".into() },
                Signal::Scheduled { at: t0 },
                Signal::Revoked {
                    id,
                    state: firelane_core::JobState::Deleted
                },
            ]
        );
    }
}
