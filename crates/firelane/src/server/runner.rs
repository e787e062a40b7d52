//! Runs one fetched job: decodes its arguments, runs it in its own task so that a panic is only
//! a failed attempt, enforces its timeout, and turns the result into an [`Outcome`].

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::Instrument;

use super::{RunningJob, Shared};
use crate::job::{CancelReason, Cancellation, JobContext, JobError, error_chain};
use crate::telemetry::AttemptOutcome;
use crate::{Completion, FetchedJob, Outcome};

/// What the job's task ended with, before it becomes an outcome.
enum Ended {
    Returned(Result<(), JobError>),
    Panicked(String),
    TimedOut(Duration),
    /// Aborted at the end of the shutdown timeout.
    Aborted,
    /// Aborted after ignoring a revocation, or revoked before a worker took it: its lease is
    /// gone, so nothing is recorded.
    Abandoned,
    /// Leased ahead, and the server shut down before a worker took it.
    NotStarted,
    BadArgs(String),
}

/// Runs a fetched job, which holds one of the server's lease slots (`lease`): at once if a
/// worker is free, else when one is (a job leased ahead, see `ServerBuilder::prefetch`).
pub(crate) fn spawn(shared: Arc<Shared>, job: FetchedJob, lease: OwnedSemaphorePermit) {
    // The `otel.*` fields are read by tracing-opentelemetry; without the feature they would
    // only repeat the job's name in every log line.
    #[cfg(feature = "opentelemetry")]
    let span = tracing::info_span!(
        "firelane.job",
        otel.name = %format_args!("firelane.job {}", job.name),
        otel.kind = "consumer",
        job.id = %job.id,
        job.name = %job.name,
        job.queue = %job.queue,
        job.attempt = job.attempt,
        job.outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    #[cfg(not(feature = "opentelemetry"))]
    let span = tracing::info_span!(
        "firelane.job",
        job.id = %job.id,
        job.name = %job.name,
        job.queue = %job.queue,
        job.attempt = job.attempt,
        job.outcome = tracing::field::Empty,
    );
    // Before the span is first entered: the OpenTelemetry span is built then.
    crate::telemetry::link_parent(&span, job.trace_context.as_deref());
    // Registered before the task exists, so that a shutdown, a revocation or a heartbeat
    // right after the fetch already knows the job, also while it waits for a worker.
    let cancellation = Cancellation::new();
    register(&shared, &job, &cancellation, Instant::now());
    if shared.stop.is_cancelled() {
        // Fetched as the server began to stop (a fetch or refill in flight): handed back
        // without starting.
        start(
            shared,
            job,
            lease,
            cancellation,
            span,
            Err(Some(CancelReason::Shutdown)),
        );
        return;
    }
    // In fetch order: straight to a free worker while no job waits before this one, else
    // behind the others (see `dispatcher`).
    if shared.waiting.load(Ordering::SeqCst) == 0
        && let Ok(worker) = Arc::clone(&shared.run_slots).try_acquire_owned()
    {
        start(shared, job, lease, cancellation, span, Ok(worker));
        return;
    }
    shared.waiting.fetch_add(1, Ordering::SeqCst);
    let waiting = Waiting {
        job,
        lease,
        cancellation,
        span,
    };
    if shared.waiting_tx.send(waiting).is_err() {
        // The server was dropped: the job keeps its lease until it lapses, and is recovered.
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A fetched job waiting for a worker: leased ahead ([`crate::Prefetch`]).
pub(crate) struct Waiting {
    job: FetchedJob,
    lease: OwnedSemaphorePermit,
    cancellation: Cancellation,
    span: tracing::Span,
}

/// Gives free workers to the jobs waiting for one, one at a time in the order they were
/// fetched (so in priority order within a fetch). A job cancelled while it waits (the server
/// stops, its lease is revoked) is passed on without a worker, as soon as it is first in line.
pub(super) async fn dispatcher(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Waiting>) {
    while let Some(w) = rx.recv().await {
        let worker = take_worker(&shared, &w.cancellation).await;
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        start(
            Arc::clone(&shared),
            w.job,
            w.lease,
            w.cancellation,
            w.span,
            worker,
        );
    }
}

/// Runs the job's task: with a worker, or without one to record that it never started.
fn start(
    shared: Arc<Shared>,
    job: FetchedJob,
    lease: OwnedSemaphorePermit,
    cancellation: Cancellation,
    span: tracing::Span,
    worker: Result<OwnedSemaphorePermit, Option<CancelReason>>,
) {
    tokio::spawn(
        async move {
            let _lease = lease;
            run(shared, job, cancellation, worker).await;
        }
        .instrument(span),
    );
}

/// Waits for a free worker; `Err` with the reason if the job is cancelled or the server
/// stops first, so that it never starts.
async fn take_worker(
    shared: &Shared,
    cancellation: &Cancellation,
) -> Result<OwnedSemaphorePermit, Option<CancelReason>> {
    let reason = cancellation.reason();
    if reason.is_some_and(|r| r != CancelReason::Shutdown) {
        return Err(reason);
    }
    if shared.stop.is_cancelled() {
        return Err(Some(CancelReason::Shutdown));
    }
    tokio::select! {
        biased;
        () = cancellation.cancelled() => Err(cancellation.reason()),
        // Shutdown fires the tokens only once the fetcher has stopped; a job not started by
        // then is handed back at once, without waiting for a worker.
        () = shared.stop.cancelled() => Err(Some(CancelReason::Shutdown)),
        p = Arc::clone(&shared.run_slots).acquire_owned() => p.map_err(|_| None),
    }
}

/// Tracks a run. One entry per job: a newer run of the same job (requeued, or recovered after
/// this server's lease lapsed) means the older run's lease is gone, so it is told to stop.
fn register(shared: &Shared, job: &FetchedJob, cancellation: &Cancellation, started: Instant) {
    let displaced = shared.running().insert(
        job.id,
        RunningJob {
            lease: job.lease,
            cancellation: cancellation.clone(),
            name: Arc::from(job.name.as_str()),
            started,
        },
    );
    if let Some(old) = displaced
        && old.lease != job.lease
    {
        tracing::warn!(
            running_for = ?old.started.elapsed(),
            "an older run of this job lost its lease to a new fetch; cancelling it"
        );
        old.cancellation.cancel(CancelReason::LeaseLost);
    }
    {
        let mut unwritten = shared.unwritten();
        if unwritten.get(&job.id).is_some_and(|l| *l != job.lease) {
            unwritten.remove(&job.id);
        }
    }
    if shared.stop.is_cancelled() {
        cancellation.cancel(CancelReason::Shutdown);
    }
}

/// Stops tracking a run, if the entry is still this run's.
fn unregister(shared: &Shared, job: &FetchedJob) -> bool {
    let mut running = shared.running();
    let ours = running.get(&job.id).is_some_and(|r| r.lease == job.lease);
    if ours {
        running.remove(&job.id);
    }
    ours
}

async fn run(
    shared: Arc<Shared>,
    job: FetchedJob,
    cancellation: Cancellation,
    worker: Result<OwnedSemaphorePermit, Option<CancelReason>>,
) {
    let (ended, metrics, duration) = match worker {
        Ok(worker) => {
            let started = Instant::now();
            shared.counters.started.fetch_add(1, Ordering::Relaxed);
            let metrics = shared.job_metrics.start(&job);
            tracing::debug!("job started");
            let ctx = JobContext {
                id: job.id,
                name: Arc::from(job.name.as_str()),
                queue: Arc::from(job.queue.as_str()),
                attempt: job.attempt,
                max_attempts: job.retry.max_attempts(),
                cancellation: cancellation.clone(),
                state: Arc::clone(&shared.state),
            };
            let ended = execute(&shared, &job, ctx, &cancellation).await;
            drop(worker);
            (ended, Some(metrics), started.elapsed())
        }
        Err(Some(CancelReason::Shutdown)) => (Ended::NotStarted, None, Duration::ZERO),
        Err(_) => (Ended::Abandoned, None, Duration::ZERO),
    };

    let now = Utc::now();
    let outcome = match ended {
        Ended::Abandoned => {
            unregister(&shared, &job);
            return;
        }
        Ended::Returned(Ok(())) => Outcome::Succeeded,
        Ended::Aborted => Outcome::HandedBack {
            reason: "the server shut down before the job finished".into(),
        },
        Ended::NotStarted => Outcome::HandedBack {
            reason: "the server shut down before a worker took the job".into(),
        },
        Ended::Returned(Err(_)) if cancellation.reason() == Some(CancelReason::Shutdown) => {
            Outcome::HandedBack {
                reason: "the job stopped because the server shut down".into(),
            }
        }
        Ended::Returned(Err(JobError::Retry(e))) => failure(&job, error_chain(e.as_ref()), now),
        Ended::Returned(Err(JobError::Fail(e))) => Outcome::Failed {
            error: error_chain(e.as_ref()),
        },
        Ended::Returned(Err(JobError::Snooze(d))) => Outcome::Snoozed {
            until: crate::later(now, d),
        },
        Ended::Returned(Err(JobError::Cancel(reason))) => Outcome::Cancelled { reason },
        Ended::Panicked(msg) => failure(&job, format!("panicked: {msg}"), now),
        Ended::TimedOut(t) => failure(&job, format!("timed out after {t:?}"), now),
        Ended::BadArgs(error) => Outcome::Failed { error },
    };
    // The lease stays extended until the outcome is written: the job enters `unwritten`
    // before it leaves `running`, so no heartbeat misses it. A run whose entry was taken by a
    // newer run holds a lost lease; its outcome will be stale and needs no extension.
    let current = shared
        .running()
        .get(&job.id)
        .is_some_and(|r| r.lease == job.lease);
    if current {
        shared.unwritten().insert(job.id, job.lease);
    }
    unregister(&shared, &job);
    if let (Some(metrics), Some(ended)) = (metrics, AttemptOutcome::of(&outcome)) {
        metrics.finish(ended, duration);
        let span = tracing::Span::current();
        span.record("job.outcome", ended.as_str());
        if matches!(ended, AttemptOutcome::Retried | AttemptOutcome::Failed) {
            span.record("otel.status_code", "error");
        }
    }
    match &outcome {
        Outcome::Succeeded => {
            shared.counters.succeeded.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(?duration, "job succeeded");
        }
        Outcome::HandedBack { .. } => {
            shared.counters.handed_back.fetch_add(1, Ordering::Relaxed);
            tracing::info!("job handed back");
        }
        Outcome::Retry { error, at } => {
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%error, retry_at = %at, "job attempt failed, will retry");
        }
        Outcome::Failed { error } => {
            shared.counters.failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "job failed");
        }
        _ => tracing::debug!(?outcome, "job ended"),
    }
    shared.counters.ended.fetch_add(1, Ordering::Relaxed);
    let completion = Completion::new(
        job.id,
        job.lease,
        shared.info.id.clone(),
        outcome,
        duration,
        now,
    );
    // The completer only closes after every runner has finished, so this cannot fail in a
    // graceful shutdown; after an abrupt drop the lease lapses and the job is recovered.
    let _ = shared.completion_tx.send(completion).await;
}

/// A failed attempt: retried per the job's policy, or failed for good.
fn failure(job: &FetchedJob, error: String, now: chrono::DateTime<Utc>) -> Outcome {
    match job.retry.delay_before(job.attempt) {
        Some(delay) => Outcome::Retry {
            at: crate::later(now, delay),
            error,
        },
        None => Outcome::Failed { error },
    }
}

async fn execute(
    shared: &Shared,
    job: &FetchedJob,
    ctx: JobContext,
    cancellation: &Cancellation,
) -> Ended {
    let Some(handler) = shared.handlers.get(&job.name) else {
        // The fetch asks only for registered names; this is a store that ignored that.
        return Ended::BadArgs(format!(
            "no job named `{}` is registered on this server",
            job.name
        ));
    };
    let future = match handler.start(ctx, &job.args) {
        Ok(f) => f,
        Err(message) => return Ended::BadArgs(message),
    };
    let mut task = tokio::spawn(future.in_current_span());
    let timeout = async {
        match job.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let ignored_revocation = async {
        loop {
            cancellation.cancelled().await;
            if cancellation.reason() != Some(CancelReason::Shutdown) {
                tokio::time::sleep(shared.config.cancel_grace).await;
                return;
            }
            // Shutdown has its own deadline (hard_stop).
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        joined = &mut task => match joined {
            Ok(result) => Ended::Returned(result),
            Err(e) if e.is_panic() => Ended::Panicked(panic_message(e.into_panic())),
            Err(_) => Ended::Aborted,
        },
        () = timeout => {
            cancellation.cancel(CancelReason::Timeout);
            task.abort();
            Ended::TimedOut(job.timeout.unwrap_or_default())
        }
        () = shared.hard_stop.cancelled() => {
            task.abort();
            Ended::Aborted
        }
        () = ignored_revocation => {
            tracing::warn!(
                reason = ?cancellation.reason(),
                grace = ?shared.config.cancel_grace,
                "job ignored its cancellation; stopping it"
            );
            task.abort();
            Ended::Abandoned
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a payload that is not text".to_owned()
    }
}
