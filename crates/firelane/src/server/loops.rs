//! The server's loops. Each runs until the server stops and is restarted if it panics.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc};
use tokio::task::JoinHandle;

use super::{Shared, runner};
use crate::job::CancelReason;
use crate::{
    Completion, CompletionStatus, FetchRequest, Heartbeat, JobId, JobState, LeaseId, Signal,
};
use firelane_core::FetchedJob;

/// Runs `body` in its own task and starts it again after a panic, until the server stops.
pub(super) fn supervise<F, Fut>(name: &'static str, shared: &Arc<Shared>, body: F) -> JoinHandle<()>
where
    F: Fn(Arc<Shared>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let shared = Arc::clone(shared);
    tokio::spawn(async move {
        loop {
            match tokio::spawn(body(Arc::clone(&shared))).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    shared
                        .counters
                        .loop_restarts
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::error!(server = %shared.info.id, loop_name = name, "server loop panicked; restarting it in 1 s");
                    tokio::select! {
                        () = shared.heartbeat_stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
                Err(_) => return,
            }
        }
    })
}

/// Exponential back-off for a store that fails: 100 ms doubling up to 5 s.
struct Backoff(Duration);

impl Backoff {
    const START: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new() -> Self {
        Backoff(Self::START)
    }

    fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }

    fn reset(&mut self) {
        self.0 = Self::START;
    }
}

fn until(at: DateTime<Utc>) -> Duration {
    (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
}

/// Cancels the run that held `lease` on a job, saying why; a newer run of the same job (with
/// another lease) is left alone.
fn revoke(shared: &Shared, id: JobId, lease: LeaseId, state: JobState) {
    if let Some(job) = shared.running().get(&id).filter(|j| j.lease == lease) {
        let reason = match state {
            JobState::Deleted => CancelReason::Deleted,
            JobState::Enqueued | JobState::Scheduled => CancelReason::Requeued,
            _ => CancelReason::LeaseLost,
        };
        tracing::info!(
            job.id = %id,
            job.name = %job.name,
            running_for = ?job.started.elapsed(),
            ?reason,
            "running job lost its lease; cancelling it"
        );
        job.cancellation.cancel(reason);
    }
    let mut unwritten = shared.unwritten();
    if unwritten.get(&id) == Some(&lease) {
        // Its outcome will be stale: stop extending the lease.
        unwritten.remove(&id);
    }
}

/// Turns the store's wake-ups into work for the other loops.
pub(super) async fn signals(shared: Arc<Shared>) {
    let mut rx = shared.storage.subscribe();
    loop {
        let signal = tokio::select! {
            () = shared.stop.cancelled() => return,
            s = rx.recv() => s,
        };
        match signal {
            Ok(Signal::Enqueued { queue }) => {
                if shared.config.queues.contains(&queue) {
                    shared.fetch_wakeup.notify_one();
                }
            }
            Ok(Signal::Scheduled { at }) => {
                if at.timestamp_micros() < shared.next_wake_micros.load(Ordering::Relaxed) {
                    shared.schedule_wakeup.notify_one();
                }
            }
            // Which run lost its lease is for the heartbeat to say: it asks about the exact
            // leases this server holds. Ask now.
            Ok(Signal::Revoked { id, .. }) => {
                if shared.running().contains_key(&id) {
                    shared.heartbeat_wakeup.notify_one();
                }
            }
            Ok(Signal::RecurringChanged) => shared.recurring_wakeup.notify_one(),
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {
                shared.fetch_wakeup.notify_one();
                shared.schedule_wakeup.notify_one();
                shared.recurring_wakeup.notify_one();
                shared.heartbeat_wakeup.notify_one();
            }
            Err(broadcast::error::RecvError::Closed) => {
                shared.stop.cancelled().await;
                return;
            }
        }
    }
}

/// Leases as many jobs as there are free workers, and starts them: at start, on each wake-up
/// (jobs enqueued, a queue resumed) and each poll interval.
///
/// While jobs keep finishing, the completer refills the freed workers in the same store call
/// that records the outcomes (see [`completer`]), so this loop does not wait on free workers
/// itself: if it did, it would take every worker as soon as it is freed and split the work
/// into two streams of smaller batches, each a transaction of its own.
pub(super) async fn fetcher(shared: Arc<Shared>) {
    let mut backoff = Backoff::new();
    // Whether work is known to wait: at start, after a wake-up, after a failed fetch.
    let mut woken = true;
    loop {
        let mut permits = Vec::new();
        if woken {
            // Work is waiting: wait for a slot this fetch may take rather than drop the
            // wake-up. (The completer may hold every slot for its refill, and that refill may
            // have read the queue just before the job that woke us was committed.) Not any
            // free lease slot: those beyond the workers are for the prefetch to give (see
            // `Shared::takeable_slots`), and a wake-up alone is no reason to lease a job ahead
            // of a paced server's busy workers. A worker set free, or a poll interval passed,
            // is a reason to look again.
            while shared.takeable_slots() == 0 {
                tokio::select! {
                    biased;
                    () = shared.stop.cancelled() => return,
                    p = Arc::clone(&shared.run_slots).acquire_owned() => match p {
                        Ok(p) => {
                            drop(p);
                            break;
                        }
                        Err(_) => return,
                    },
                    () = tokio::time::sleep(shared.config.poll_interval) => {}
                }
            }
        }
        take_free_slots(&shared, &mut permits);
        let wanted = permits.len();
        if wanted == 0 && woken {
            // A worker was free, but its job still holds its lease slot while it hands over
            // its outcome (or the completer's refill took the slot): look again shortly.
            tokio::select! {
                () = shared.stop.cancelled() => return,
                () = tokio::time::sleep(backoff.next()) => {}
            }
            continue;
        }
        let full = if wanted == 0 {
            false
        } else {
            match shared.storage.fetch(fetch_request(&shared, wanted)).await {
                Ok(jobs) => {
                    backoff.reset();
                    let got = jobs.len();
                    start_jobs(&shared, jobs, permits);
                    got == wanted
                }
                Err(e) => {
                    drop(permits);
                    let wait = backoff.next();
                    tracing::warn!(error = %e, retry_in = ?wait, "fetching jobs failed");
                    tokio::select! {
                        () = shared.stop.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                    woken = true;
                    continue;
                }
            }
        };
        // A full fetch may have left jobs behind for workers that are still free; with none
        // free, the completer refills the workers as they finish.
        if full && shared.takeable_slots() > 0 {
            woken = false;
            continue;
        }
        woken = tokio::select! {
            () = shared.stop.cancelled() => return,
            () = shared.fetch_wakeup.notified() => true,
            () = tokio::time::sleep(shared.config.poll_interval) => false,
        };
    }
}

/// A fetch of up to `limit` jobs for this server.
fn fetch_request(shared: &Shared, limit: usize) -> FetchRequest {
    FetchRequest::new(
        shared.info.id.clone(),
        shared.config.queues.clone(),
        limit,
        Utc::now(),
        shared.config.lease,
    )
    .names(shared.names.clone())
}

/// Adds free lease slots to `permits`, as many as [`Shared::takeable_slots`] allows up to a
/// fetch batch, without waiting.
fn take_free_slots(shared: &Arc<Shared>, permits: &mut Vec<OwnedSemaphorePermit>) {
    let limit = (permits.len() + shared.takeable_slots()).min(shared.config.fetch_batch);
    while permits.len() < limit {
        match Arc::clone(&shared.lease_slots).try_acquire_owned() {
            Ok(p) => permits.push(p),
            Err(_) => break,
        }
    }
}

/// Starts fetched jobs, one worker slot each; the slots left over are freed.
fn start_jobs(shared: &Arc<Shared>, jobs: Vec<FetchedJob>, mut permits: Vec<OwnedSemaphorePermit>) {
    for job in jobs {
        let Some(permit) = permits.pop() else {
            // A store returned more than asked; it keeps its lease and is recovered when the
            // lease lapses.
            tracing::error!(job.id = %job.id, "store returned more jobs than asked for");
            break;
        };
        runner::spawn(Arc::clone(shared), job, permit);
    }
}

/// How many batches of outcomes the completer has in the store at once. Two: while one
/// batch's store call runs, the jobs it refilled last time finish, and their outcomes (with
/// the refill of their slots) go in a second call instead of waiting for the first. With one,
/// the workers split into two halves, one running while the other waits on the store, and
/// the drain was bound by the store's round trips (PostgreSQL: two thirds of one core busy).
const FLUSHES_IN_FLIGHT: usize = 2;

/// How long a batch waits for the outcomes of jobs that are finishing while another batch is
/// in the store (never when no other batch is): one store call for them all instead of one
/// for the first and one for the rest.
const LINGER: Duration = Duration::from_millis(1);

/// Writes outcomes in batches; keeps retrying while the store is down.
///
/// While the server runs, each batch also asks for as many new jobs as there are free worker
/// slots, in the same store call ([`Storage::complete_and_fetch`]): under load, the slots the
/// finished jobs freed are refilled without a fetch of their own. Up to
/// [`FLUSHES_IN_FLIGHT`] batches are written at once; each outcome is in exactly one batch,
/// and a job's next outcome can only come from a run fetched after its previous outcome was
/// written, so no job's outcomes are reordered.
pub(super) async fn completer(shared: Arc<Shared>, mut rx: mpsc::Receiver<Completion>) {
    let limit = shared.config.completion_batch;
    let mut batch: Vec<Completion> = Vec::new();
    // When shutdown began to wait on a failing store: one deadline for the whole shutdown.
    let closing_since = Arc::new(std::sync::Mutex::new(None));
    // Dropping this (the completer aborted) aborts the batches in flight, as before.
    let mut flights: tokio::task::JoinSet<()> = tokio::task::JoinSet::new();
    loop {
        if batch.is_empty() {
            tokio::select! {
                biased;
                c = rx.recv() => match c {
                    Some(c) => batch.push(c),
                    None => break,
                },
                () = shared.completer_close.cancelled() => {
                    while let Ok(c) = rx.try_recv() {
                        batch.push(c);
                    }
                    if batch.is_empty() {
                        break;
                    }
                }
                Some(_) = flights.join_next(), if !flights.is_empty() => continue,
            }
        }
        while batch.len() < limit {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        if flights.len() >= FLUSHES_IN_FLIGHT {
            // Both in the store: collect until one returns.
            tokio::select! {
                biased;
                _ = flights.join_next() => {}
                c = rx.recv(), if batch.len() < limit => match c {
                    Some(c) => batch.push(c),
                    None => {
                        flights.join_next().await;
                    }
                },
            }
            continue;
        }
        if !flights.is_empty() && batch.len() < limit && !shared.completer_close.is_cancelled() {
            // Another batch is in the store: give the jobs finishing now a moment to join.
            // Jobs leased ahead count: short ones start and finish within the linger.
            let target = (batch.len() + shared.running().len()).min(limit);
            let linger = tokio::time::sleep(LINGER);
            tokio::pin!(linger);
            while batch.len() < target {
                tokio::select! {
                    biased;
                    c = rx.recv() => match c {
                        Some(c) => batch.push(c),
                        None => break,
                    },
                    () = &mut linger => break,
                    _ = flights.join_next() => break,
                }
            }
        }
        let shared2 = Arc::clone(&shared);
        let closing = Arc::clone(&closing_since);
        let mut out = std::mem::take(&mut batch);
        flights.spawn(async move { flush(&shared2, &mut out, &closing).await });
    }
    while flights.join_next().await.is_some() {}
}

async fn flush(
    shared: &Arc<Shared>,
    batch: &mut Vec<Completion>,
    closing_since: &std::sync::Mutex<Option<std::time::Instant>>,
) {
    // After this many failures in a row a batch is written one completion at a time, so that
    // one completion the store refuses (a corrupt row) cannot hold back the others.
    const SPLIT_AFTER: u32 = 5;
    let mut backoff = Backoff::new();
    let mut failures = 0;
    loop {
        // Free slots to refill, only on a first try while the server is running.
        let mut permits = Vec::new();
        if failures == 0 && !shared.stop.is_cancelled() {
            take_free_slots(shared, &mut permits);
        }
        let written = if permits.is_empty() {
            shared
                .storage
                .complete(batch.clone())
                .await
                .map(|s| (s, Vec::new()))
        } else {
            let request = fetch_request(shared, permits.len());
            shared
                .storage
                .complete_and_fetch(batch.clone(), request)
                .await
        };
        match written {
            Ok((statuses, jobs)) => {
                shared.finished(batch.len());
                start_jobs(shared, jobs, permits);
                forget_unwritten(shared, batch);
                for (c, s) in batch.iter().zip(statuses) {
                    if s == CompletionStatus::Stale {
                        tracing::info!(job.id = %c.id, "outcome ignored: the job's lease had passed to someone else");
                    }
                }
                batch.clear();
                return;
            }
            Err(e) => {
                failures += 1;
                if shared.completer_close.is_cancelled() {
                    let since = *closing_since
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > shared.config.lease {
                        tracing::error!(error = %e, jobs = batch.len(), "giving up writing outcomes at shutdown; the jobs return to their queues when their leases lapse");
                        forget_unwritten(shared, batch);
                        batch.clear();
                        return;
                    }
                }
                if failures >= SPLIT_AFTER && batch.len() > 1 {
                    tracing::warn!(error = %e, jobs = batch.len(), "writing job outcomes keeps failing; writing them one at a time");
                    for c in std::mem::take(batch) {
                        write_alone(shared, c).await;
                    }
                    return;
                }
                let wait = backoff.next();
                tracing::warn!(error = %e, jobs = batch.len(), retry_in = ?wait, "writing job outcomes failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Writes one completion, a few times at most; one the store keeps refusing is dropped (its
/// lease then lapses and the job is recovered like a crashed one).
async fn write_alone(shared: &Shared, completion: Completion) {
    let mut backoff = Backoff::new();
    for attempt in 1..=5 {
        match shared.storage.complete(vec![completion.clone()]).await {
            Ok(_) => {
                shared.finished(1);
                break;
            }
            Err(e) if attempt == 5 => {
                tracing::error!(job.id = %completion.id, error = %e, "the store refuses this job's outcome; it will be recovered when its lease lapses");
            }
            Err(_) => tokio::time::sleep(backoff.next()).await,
        }
    }
    forget_unwritten(shared, std::slice::from_ref(&completion));
}

fn forget_unwritten(shared: &Shared, batch: &[Completion]) {
    let mut unwritten = shared.unwritten();
    for c in batch {
        if unwritten.get(&c.id) == Some(&c.lease) {
            unwritten.remove(&c.id);
        }
    }
}

/// Enqueues due scheduled jobs, sleeping until the next one is due.
pub(super) async fn scheduler(shared: Arc<Shared>) {
    const LIMIT: usize = 1000;
    let mut backoff = Backoff::new();
    loop {
        let now = Utc::now();
        let fallback = crate::later(now, shared.config.poll_interval);
        let wake = match shared.storage.promote_due(now, LIMIT).await {
            Ok(p) if p.promoted >= LIMIT as u64 => continue,
            Ok(p) => {
                backoff.reset();
                p.next_due.map_or(fallback, |due| due.min(fallback))
            }
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, "enqueueing due jobs failed");
                crate::later(now, wait)
            }
        };
        shared
            .next_wake_micros
            .store(wake.timestamp_micros(), Ordering::Relaxed);
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(until(wake)) => {}
            () = shared.schedule_wakeup.notified() => {}
        }
    }
}

/// Tells the store this server is alive and extends the leases of its running jobs.
pub(super) async fn heartbeat(shared: Arc<Shared>) {
    loop {
        // One lease per job: the newest run's, or the unwritten outcome's.
        let mut held: std::collections::HashMap<JobId, LeaseId> = shared
            .running()
            .iter()
            .map(|(id, job)| (*id, job.lease))
            .collect();
        for (id, lease) in shared.unwritten().iter() {
            held.entry(*id).or_insert(*lease);
        }
        let now = Utc::now();
        let beat = Heartbeat::new(
            shared.info.clone(),
            now,
            held.iter().map(|(id, lease)| (*id, *lease)).collect(),
            crate::later(now, shared.config.lease),
        );
        match shared.storage.heartbeat(beat).await {
            Ok(reply) => {
                for (id, state) in reply.lost {
                    if let Some(lease) = held.get(&id) {
                        revoke(&shared, id, *lease, state);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
        tokio::select! {
            () = shared.heartbeat_stop.cancelled() => return,
            () = tokio::time::sleep(shared.config.heartbeat) => {}
            () = shared.heartbeat_wakeup.notified() => {}
        }
    }
}

/// Re-enqueues jobs whose lease lapsed (their server died) and forgets dead servers.
pub(super) async fn watchdog(shared: Arc<Shared>) {
    loop {
        match shared
            .storage
            .recover(Utc::now(), shared.dead_after())
            .await
        {
            Ok(r) => {
                if !r.dead_servers.is_empty() || !r.requeued.is_empty() || !r.failed.is_empty() {
                    tracing::warn!(
                        dead_servers = ?r.dead_servers,
                        requeued = r.requeued.len(),
                        failed = r.failed.len(),
                        "recovered jobs whose lease lapsed"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "recovering lapsed jobs failed"),
        }
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(shared.watchdog_interval()) => {}
        }
    }
}

/// Removes finished jobs past their retention.
pub(super) async fn expiration(shared: Arc<Shared>) {
    const LIMIT: usize = 1000;
    loop {
        loop {
            match shared
                .storage
                .expire(Utc::now(), shared.config.retention, LIMIT)
                .await
            {
                Ok(n) if n >= LIMIT as u64 && !shared.stop.is_cancelled() => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "expiring finished jobs failed");
                    break;
                }
            }
        }
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(shared.config.expiration_interval) => {}
        }
    }
}

/// Fires due recurring jobs, sleeping until the next occurrence of any of them. Every server
/// runs this; the store's compare-and-set on the awaited occurrence makes each fire once.
pub(super) async fn recurring(shared: Arc<Shared>) {
    let mut backoff = Backoff::new();
    loop {
        let fallback = crate::later(Utc::now(), shared.config.poll_interval);
        let wake = match fire_due_recurring(&shared, Utc::now()).await {
            Ok(next) => {
                backoff.reset();
                next.map_or(fallback, |n| n.min(fallback))
            }
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(error = %e, retry_in = ?wait, "firing recurring jobs failed");
                crate::later(Utc::now(), wait)
            }
        };
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(until(wake)) => {}
            () = shared.recurring_wakeup.notified() => {}
        }
    }
}

/// Fires every recurring job due at `now`; returns the earliest next occurrence. A recurring
/// job whose firing fails is logged and skipped: the others still fire.
pub(super) async fn fire_due_recurring(
    shared: &Shared,
    now: DateTime<Utc>,
) -> crate::Result<Option<DateTime<Utc>>> {
    let records = shared.storage.list_recurring().await?;
    let mut live_names: Option<std::collections::HashSet<String>> = None;
    let mut earliest: Option<DateTime<Utc>> = None;
    for record in records {
        if record.paused {
            continue;
        }
        let Some(due) = record.next_run else { continue };
        if due > now {
            earliest = Some(earliest.map_or(due, |e| e.min(due)));
            continue;
        }
        match fire_one(shared, &record, due, now, &mut live_names).await {
            Ok(Some(next)) => earliest = Some(earliest.map_or(next, |e| e.min(next))),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(recurring = %record.id, error = %e, "firing a recurring job failed; retrying at the next poll");
            }
        }
    }
    Ok(earliest)
}

/// Fires one due recurring job; returns the next occurrence to wake for, if any.
async fn fire_one(
    shared: &Shared,
    record: &crate::RecurringRecord,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    live_names: &mut Option<std::collections::HashSet<String>>,
) -> crate::Result<Option<DateTime<Utc>>> {
    let firing = match crate::storage::plan_firing(record, now, shared.config.misfire_grace) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(e) => disabled(
            record,
            due,
            now,
            format!("its schedule no longer parses: {e}"),
        ),
    };
    let firing = match shared.handlers.get(&record.job.name) {
        Some(handler) => match handler.check_args(&record.job.args) {
            Ok(()) => firing,
            Err(e) => disabled(record, due, now, e),
        },
        None => {
            if live_names.is_none() {
                let servers = shared.storage.servers().await?;
                *live_names = Some(servers.into_iter().flat_map(|s| s.info.job_names).collect());
            }
            let known = live_names
                .as_ref()
                .is_some_and(|names| names.contains(&record.job.name));
            if known {
                firing
            } else {
                let error = format!(
                    "no running server registers job `{}`: its job type was removed from the code, or no server that has it is running; resume the recurring job (or declare it again) once one is",
                    record.job.name
                );
                // A server that has it may just be restarting (a deploy): wait as long as a
                // silent server is given before it counts as dead, then disable.
                let waited = (now - due).to_std().unwrap_or_default();
                if waited <= shared.dead_after() {
                    if record.last_error.as_deref() != Some(error.as_str()) {
                        let mut waiting = crate::storage::Firing::new(
                            record.id.clone(),
                            due,
                            Some(due),
                            Vec::new(),
                            now,
                        );
                        waiting.error = Some(error);
                        shared.storage.fire_recurring(waiting).await?;
                    }
                    // Looked at again at the next poll, not in a tight loop.
                    return Ok(None);
                }
                disabled(record, due, now, error)
            }
        }
    };
    let next = firing.next_run;
    let error = firing.error.clone();
    let jobs = firing.jobs.len();
    if shared.storage.fire_recurring(firing).await? {
        match error {
            Some(error) => {
                tracing::error!(recurring = %record.id, %error, "recurring job disabled");
            }
            None => {
                tracing::info!(recurring = %record.id, jobs, occurrence = %due, "recurring job fired");
            }
        }
    }
    Ok(next)
}

/// A firing that creates nothing, records why, and stops the schedule until a person resumes
/// the recurring job or a deploy declares it again.
fn disabled(
    record: &crate::RecurringRecord,
    due: DateTime<Utc>,
    now: DateTime<Utc>,
    error: String,
) -> crate::storage::Firing {
    let mut f = crate::storage::Firing::new(record.id.clone(), due, None, Vec::new(), now);
    f.error = Some(error);
    f
}
