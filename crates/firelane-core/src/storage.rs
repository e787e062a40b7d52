//! The storage seam: one coarse, batched operation per thing the job system does.
//!
//! Every method that changes a job is one atomic compare-and-set on the job's current state
//! (and, for a processing job, on its lease), carried out in one transaction together with its
//! side effects (continuations released, queue rows moved) and a history entry. Calling one
//! twice is safe: the second call finds the state already changed and changes nothing.
//!
//! Time is always passed in (`now`), never read by the store, so that the conformance suite can
//! move the clock and so that every store agrees on what "due" and "expired" mean.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{
    Enqueued, FetchedJob, Firing, JobDetails, JobId, JobRecord, JobState, LeaseId, NewJob,
    RecurringDef, RecurringRecord, Result, ServerId,
};

/// A fetch: up to `limit` enqueued jobs from `queues`, leased to `server`.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FetchRequest {
    /// The fetching server.
    pub server: ServerId,
    /// Queues in priority order: every job of the first queue is taken before any of the second.
    pub queues: Vec<String>,
    /// The job names this server can run; jobs of other names are left in the queue for a
    /// server that can. `None` takes any name.
    pub names: Option<Vec<String>>,
    /// How many jobs at most.
    pub limit: usize,
    /// The current time.
    pub now: DateTime<Utc>,
    /// When the leases lapse unless extended.
    pub lease_until: DateTime<Utc>,
}

impl FetchRequest {
    /// A fetch of up to `limit` jobs of any name.
    pub fn new(
        server: ServerId,
        queues: Vec<String>,
        limit: usize,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Self {
        Self {
            server,
            queues,
            names: None,
            limit,
            now,
            lease_until: now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX),
        }
    }

    /// Restricts the fetch to these job names.
    pub fn names(mut self, names: Vec<String>) -> Self {
        self.names = Some(names);
        self
    }
}

/// How an attempt ended, as a server reports it.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The job ran to completion.
    Succeeded,
    /// The attempt failed and the job is retried at `at` (enqueued at once if `at` is past).
    Retry {
        /// When the retry is due.
        at: DateTime<Utc>,
        /// What went wrong.
        error: String,
    },
    /// The attempt failed and the job fails for good.
    Failed {
        /// What went wrong.
        error: String,
    },
    /// The job asked to run again later; the attempt is not counted.
    Snoozed {
        /// When it is due again.
        until: DateTime<Utc>,
    },
    /// The job cancelled itself: it ends deleted.
    Cancelled {
        /// Why.
        reason: String,
    },
    /// The server gives the job back unfinished (shutting down): it is enqueued again and the
    /// attempt is not counted.
    HandedBack {
        /// Why.
        reason: String,
    },
}

/// The end of one attempt, to be recorded.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Completion {
    /// The job.
    pub id: JobId,
    /// The lease the attempt held; a completion whose lease is no longer the job's is stale.
    pub lease: LeaseId,
    /// The server that ran it.
    pub server: ServerId,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it ran.
    pub duration: Duration,
    /// When it ended.
    pub at: DateTime<Utc>,
}

impl Completion {
    /// Builds a completion.
    pub fn new(
        id: JobId,
        lease: LeaseId,
        server: ServerId,
        outcome: Outcome,
        duration: Duration,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            lease,
            server,
            outcome,
            duration,
            at,
        }
    }
}

/// What a store did with one completion.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CompletionStatus {
    /// Recorded: the job is now in this state.
    Applied(JobState),
    /// Ignored: the job no longer holds that lease (it was recovered, requeued or deleted).
    Stale,
}

/// What a store did with one job of a delete or requeue.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Change {
    /// Done; the job was in this state before.
    Changed {
        /// The state it left.
        from: JobState,
    },
    /// No such job.
    NotFound,
    /// The job's state does not allow it.
    Refused {
        /// The state it is in.
        state: JobState,
    },
}

/// A running server, as it describes itself in each heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerInfo {
    /// Its id.
    pub id: ServerId,
    /// The host it runs on.
    pub hostname: String,
    /// Its process id.
    pub pid: u32,
    /// The queues it serves, in priority order.
    pub queues: Vec<String>,
    /// How many jobs it runs at once.
    pub workers: u32,
    /// The job names it can run.
    pub job_names: Vec<String>,
    /// When it started.
    pub started_at: DateTime<Utc>,
}

impl ServerInfo {
    /// Builds a description of a server starting now on this host.
    pub fn new(id: ServerId, queues: Vec<String>, workers: u32, job_names: Vec<String>) -> Self {
        Self {
            id,
            hostname: crate::id::hostname(),
            pid: std::process::id(),
            queues,
            workers,
            job_names,
            started_at: Utc::now(),
        }
    }
}

/// A server as the store last heard from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ServerRecord {
    /// What it said about itself.
    pub info: ServerInfo,
    /// When its last heartbeat arrived.
    pub last_heartbeat: DateTime<Utc>,
}

impl ServerRecord {
    /// Builds a record (for stores).
    pub fn new(info: ServerInfo, last_heartbeat: DateTime<Utc>) -> Self {
        Self {
            info,
            last_heartbeat,
        }
    }
}

/// A heartbeat: the server is alive, and extends the leases of the jobs it is running.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Heartbeat {
    /// The server.
    pub server: ServerInfo,
    /// The current time.
    pub now: DateTime<Utc>,
    /// The jobs it runs, with the leases it holds on them.
    pub running: Vec<(JobId, LeaseId)>,
    /// The new end of those leases.
    pub lease_until: DateTime<Utc>,
}

impl Heartbeat {
    /// Builds a heartbeat.
    pub fn new(
        server: ServerInfo,
        now: DateTime<Utc>,
        running: Vec<(JobId, LeaseId)>,
        lease_until: DateTime<Utc>,
    ) -> Self {
        Self {
            server,
            now,
            running,
            lease_until,
        }
    }
}

/// What a heartbeat found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HeartbeatReply {
    /// Running jobs whose lease the server no longer holds, with the state they are in now
    /// (deleted or requeued by a person, or recovered after the lease lapsed). The server
    /// cancels them.
    pub lost: Vec<(JobId, JobState)>,
}

/// What a promotion of due scheduled jobs did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Promotion {
    /// How many jobs were enqueued.
    pub promoted: u64,
    /// When the earliest job still scheduled is due.
    pub next_due: Option<DateTime<Utc>>,
}

/// What a recovery pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recovery {
    /// Servers removed because their heartbeat stopped.
    pub dead_servers: Vec<ServerId>,
    /// Jobs whose lease lapsed, enqueued again.
    pub requeued: Vec<JobId>,
    /// Jobs whose lease lapsed on their last allowed attempt, failed.
    pub failed: Vec<JobId>,
}

/// How long finished jobs are kept; `None` keeps them until deleted by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// Succeeded jobs (default: one day).
    pub succeeded: Option<Duration>,
    /// Deleted jobs (default: one day).
    pub deleted: Option<Duration>,
    /// Failed jobs (default: kept).
    pub failed: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        const DAY: Duration = Duration::from_secs(24 * 3600);
        Self {
            succeeded: Some(DAY),
            deleted: Some(DAY),
            failed: None,
        }
    }
}

impl Retention {
    /// Builds a retention policy.
    pub const fn new(
        succeeded: Option<Duration>,
        deleted: Option<Duration>,
        failed: Option<Duration>,
    ) -> Self {
        Self {
            succeeded,
            deleted,
            failed,
        }
    }

    /// The retention for a finished state.
    pub const fn for_state(&self, state: JobState) -> Option<Duration> {
        match state {
            JobState::Succeeded => self.succeeded,
            JobState::Deleted => self.deleted,
            JobState::Failed => self.failed,
            _ => None,
        }
    }
}

/// A page of jobs to list.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs in this queue.
    pub queue: Option<String>,
    /// Only jobs of this name.
    pub name: Option<String>,
    /// Only jobs whose id, name or queue is this text, or whose name or arguments contain it.
    pub search: Option<String>,
    /// Only jobs created at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Only jobs created before this time.
    pub created_to: Option<DateTime<Utc>>,
    /// Only scheduled jobs waiting for a retry (attempted at least once).
    pub retries: bool,
    /// Jobs to skip.
    pub offset: u64,
    /// Jobs at most (0 means 50).
    pub limit: u32,
}

impl JobQuery {
    /// How many jobs, newest first, a text search reads at most.
    pub const SEARCH_WINDOW: u32 = 50_000;

    /// Every job, newest first, 50 at a time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Only jobs in `state`.
    pub fn state(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only jobs in `queue`.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only jobs named `name`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Only jobs whose id, name or queue is `text`, or whose name or arguments contain it.
    /// An empty text matches every job.
    ///
    /// A search by id is exact. A text search reads at most the newest
    /// [`JobQuery::SEARCH_WINDOW`] jobs that pass the other filters, so that it answers in
    /// bounded time however many jobs the store holds; narrow it by state, name or time to
    /// reach older jobs.
    pub fn search(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        self.search = if text.is_empty() { None } else { Some(text) };
        self
    }

    /// Only jobs created in `[from, to)`; either end may be open.
    pub fn created(mut self, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Self {
        self.created_from = from;
        self.created_to = to;
        self
    }

    /// Only scheduled jobs that wait for a retry: what Hangfire's "Retries" page shows.
    pub fn retries(mut self) -> Self {
        self.state = Some(JobState::Scheduled);
        self.retries = true;
        self
    }

    /// Skips `offset` jobs and returns at most `limit`.
    pub fn page(mut self, offset: u64, limit: u32) -> Self {
        self.offset = offset;
        self.limit = limit;
        self
    }

    /// The limit with the default applied.
    pub fn effective_limit(&self) -> u32 {
        if self.limit == 0 { 50 } else { self.limit }
    }
}

/// One queue's figures.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue.
    pub name: String,
    /// Jobs waiting in it.
    pub enqueued: u64,
    /// Jobs from it running now.
    pub processing: u64,
    /// Whether it is paused: no server fetches from it until it is resumed.
    pub paused: bool,
    /// When the job next in line (the one a fetch would take first) entered the queue; `None`
    /// for an empty queue. Its age tells how far behind the servers are.
    pub head_enqueued_at: Option<DateTime<Utc>>,
}

impl QueueStats {
    /// Builds queue figures (for stores).
    pub fn new(name: String, enqueued: u64, processing: u64, paused: bool) -> Self {
        Self {
            name,
            enqueued,
            processing,
            paused,
            head_enqueued_at: None,
        }
    }

    /// Sets when the job next in line entered the queue (for stores).
    pub fn with_head_enqueued_at(mut self, at: Option<DateTime<Utc>>) -> Self {
        self.head_enqueued_at = at;
        self
    }
}

/// Counts for monitoring.
///
/// Stores keep these as counters updated in the transactions that change jobs, so reading them
/// costs the same with a million jobs as with ten: no store counts jobs to answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Jobs per state (states with no jobs may be missing).
    pub states: BTreeMap<JobState, u64>,
    /// Queues that have jobs waiting or running, or are paused, by name.
    pub queues: Vec<QueueStats>,
    /// Servers that are heartbeating.
    pub servers: u64,
    /// Attempts that succeeded since the store was created (not lowered when jobs expire): a
    /// dashboard draws jobs per second from the difference between two readings.
    pub succeeded_total: u64,
    /// Jobs that failed for good since the store was created.
    pub failed_total: u64,
}

impl Stats {
    /// Builds stats (for stores).
    pub fn new(states: BTreeMap<JobState, u64>, queues: Vec<QueueStats>, servers: u64) -> Self {
        Self {
            states,
            queues,
            servers,
            succeeded_total: 0,
            failed_total: 0,
        }
    }

    /// Sets the running totals (for stores).
    pub fn totals(mut self, succeeded: u64, failed: u64) -> Self {
        self.succeeded_total = succeeded;
        self.failed_total = failed;
        self
    }

    /// The number of jobs in `state`.
    pub fn count(&self, state: JobState) -> u64 {
        self.states.get(&state).copied().unwrap_or(0)
    }
}

/// Jobs that succeeded and failed in one hour, for history graphs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HourlyStats {
    /// The start of the hour (UTC).
    pub hour: DateTime<Utc>,
    /// Jobs that succeeded in it.
    pub succeeded: u64,
    /// Jobs that failed for good in it.
    pub failed: u64,
}

impl HourlyStats {
    /// Builds an hour's figures (for stores).
    pub const fn new(hour: DateTime<Utc>, succeeded: u64, failed: u64) -> Self {
        Self {
            hour,
            succeeded,
            failed,
        }
    }
}

/// How long stores keep hourly figures: eight days, so that a week's graph is always whole.
pub const HOURLY_STATS_KEPT: Duration = Duration::from_secs(8 * 24 * 3600);

/// The start of the hour `at` falls in.
pub fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    let secs = at.timestamp();
    DateTime::from_timestamp(secs - secs.rem_euclid(3600), 0).unwrap_or(at)
}

/// A wake-up a store sends to the servers listening to it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Signal {
    /// Jobs were enqueued in this queue.
    Enqueued {
        /// The queue.
        queue: String,
    },
    /// A job was scheduled for this time.
    Scheduled {
        /// When it is due.
        at: DateTime<Utc>,
    },
    /// A recurring job was added, changed, resumed or removed: its next run may be earlier
    /// than the recurring scheduler planned for.
    RecurringChanged,
    /// A processing job lost its lease to a person (deleted or requeued): its server should
    /// cancel it.
    Revoked {
        /// The job.
        id: JobId,
        /// Its state now.
        state: JobState,
    },
}

/// The operations a Firelane store provides.
///
/// A backend implements each with the best tool its engine has; the conformance suite in
/// `firelane-conformance` checks that it keeps every promise written here.
#[async_trait]
pub trait Storage: Send + Sync + Debug + 'static {
    /// A short name of the backend: `sqlite`, `postgres`, `redis`.
    fn backend(&self) -> &'static str;

    /// Creates jobs, all or none. A scheduled job whose time is not after `now` starts
    /// enqueued; a continuation whose parent has already finished is enqueued or deleted at
    /// once by [`crate::ContinueOn::decide`]; a continuation of an unknown parent fails the
    /// whole batch with [`crate::Error::JobNotFound`].
    async fn enqueue(&self, jobs: Vec<NewJob>, now: DateTime<Utc>) -> Result<Vec<Enqueued>>;

    /// Leases up to `limit` enqueued jobs to a server: queues in the given order, then higher
    /// priority first, then first in first out. Each fetched job's attempt count goes up by one.
    /// No two fetches ever get the same job.
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<FetchedJob>>;

    /// Records the ends of attempts. Each applies only while the job is processing under the
    /// same lease; otherwise it is [`CompletionStatus::Stale`] and changes nothing. A finished
    /// job releases its continuations.
    async fn complete(&self, completions: Vec<Completion>) -> Result<Vec<CompletionStatus>>;

    /// Records the ends of attempts, then leases jobs, as one step where the backend can: a
    /// server whose jobs just finished asks for new ones in the same round trip (and, for
    /// stores with one writer, the same transaction). The completions are applied as by
    /// [`Storage::complete`] and the fetch sees their effects (a retry enqueued at once can
    /// be fetched again).
    ///
    /// An error means no completion was recorded. The default completes, then fetches; if only
    /// the fetch fails, it returns the completions' statuses and no job, since the next fetch
    /// will ask again.
    async fn complete_and_fetch(
        &self,
        completions: Vec<Completion>,
        fetch: FetchRequest,
    ) -> Result<(Vec<CompletionStatus>, Vec<FetchedJob>)> {
        let statuses = self.complete(completions).await?;
        let jobs = self.fetch(fetch).await.unwrap_or_default();
        Ok((statuses, jobs))
    }

    /// Records that a server is alive and extends the leases it still holds.
    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<HeartbeatReply>;

    /// Removes a server that stopped (its jobs must have been handed back or completed).
    async fn remove_server(&self, server: &ServerId) -> Result<()>;

    /// Enqueues up to `limit` scheduled jobs that are due at `now`.
    async fn promote_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Promotion>;

    /// Removes servers silent for longer than `dead_after`, and re-enqueues processing jobs
    /// whose lease lapsed before `now` (or fails them, when that was their last attempt).
    async fn recover(&self, now: DateTime<Utc>, dead_after: Duration) -> Result<Recovery>;

    /// Removes up to `limit` finished jobs, with their history, that have been finished longer
    /// than `retention` keeps them. Returns how many were removed.
    async fn expire(&self, now: DateTime<Utc>, retention: Retention, limit: usize) -> Result<u64>;

    /// Deletes jobs. A processing job loses its lease (its server is told through a
    /// [`Signal::Revoked`] and its next heartbeat); continuations waiting on deletion are
    /// released.
    async fn delete(&self, ids: &[JobId], reason: &str, now: DateTime<Utc>) -> Result<Vec<Change>>;

    /// Enqueues jobs again: scheduled ones now; failed, succeeded and deleted ones with their
    /// attempt count reset; processing ones lose their lease, as with delete.
    async fn requeue(&self, ids: &[JobId], reason: &str, now: DateTime<Utc>)
    -> Result<Vec<Change>>;

    /// A job with its history and continuations.
    async fn job(&self, id: JobId) -> Result<Option<JobDetails>>;

    /// A page of jobs (see [`JobQuery`]). Filters combine with "and". Newest first, except the
    /// enqueued jobs of one queue, which come in the order they will be fetched.
    async fn list_jobs(&self, query: JobQuery) -> Result<Vec<JobRecord>>;

    /// Counts per state and per queue, and the running totals, from counters kept in the same
    /// transactions that change jobs (see [`Stats`]); paused queues are listed even when empty.
    async fn stats(&self) -> Result<Stats>;

    /// Jobs that succeeded and failed per hour, for the hours starting in `[from, to)`, oldest
    /// first; hours with neither may be missing. Hours older than [`HOURLY_STATS_KEPT`] may
    /// have been removed by [`Storage::expire`].
    async fn stats_history(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<HourlyStats>>;

    /// Pauses a queue (no fetch takes its jobs; they stay enqueued and can still be added) or
    /// resumes it (servers are woken with [`Signal::Enqueued`]). Pausing a paused queue, or
    /// resuming one that is not, changes nothing.
    async fn set_queue_paused(&self, queue: &str, paused: bool, now: DateTime<Utc>) -> Result<()>;

    /// Servers that are heartbeating.
    async fn servers(&self) -> Result<Vec<ServerRecord>>;

    /// Adds a recurring job, or updates its definition. An update keeps `paused`, `last_run`
    /// and `last_job`, clears `last_error`, and keeps `next_run` when the schedule (cron
    /// expression and time zone) is unchanged and the job was not disabled; otherwise it takes
    /// `next_run`. So a deploy that declares the same schedule again misses no occurrence.
    async fn upsert_recurring(
        &self,
        def: RecurringDef,
        next_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()>;

    /// Removes a recurring job; the jobs it created stay. Returns whether it existed.
    async fn remove_recurring(&self, id: &str) -> Result<bool>;

    /// A recurring job.
    async fn recurring(&self, id: &str) -> Result<Option<RecurringRecord>>;

    /// Every recurring job, by id.
    async fn list_recurring(&self) -> Result<Vec<RecurringRecord>>;

    /// Pauses a recurring job (`next_run` is kept for display but not fired), or resumes it to
    /// wait for `next_run` (occurrences while paused are not fired). Returns whether it existed.
    async fn set_recurring_paused(
        &self,
        id: &str,
        paused: bool,
        next_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool>;

    /// Applies a firing, all or nothing, only if the recurring job is not paused and still waits
    /// for `firing.expected_next_run`: creates `firing.jobs`, records the last of them as
    /// `last_job` and `firing.now` as `last_run` (when there are jobs), sets `last_error` to
    /// `firing.error` and `next_run` to `firing.next_run`. Returns whether it applied; two
    /// servers firing the same occurrence get `true` once.
    async fn fire_recurring(&self, firing: Firing) -> Result<bool>;

    /// Enqueues one job from a recurring job's template now, without moving its schedule, and
    /// records it as the last job. Fails with [`crate::Error::RecurringNotFound`].
    async fn trigger_recurring(&self, id: &str, now: DateTime<Utc>) -> Result<JobId>;

    /// Wake-ups from this store. In-process stores deliver them at once; stores shared between
    /// machines deliver them through their engine, and servers also poll as a fallback.
    fn subscribe(&self) -> broadcast::Receiver<Signal>;
}

/// Anything that can be used as a store: a backend value, or an already shared one.
pub trait IntoStorage {
    /// The store, shared.
    fn into_storage(self) -> Arc<dyn Storage>;
}

impl<S: Storage> IntoStorage for S {
    fn into_storage(self) -> Arc<dyn Storage> {
        Arc::new(self)
    }
}

impl IntoStorage for Arc<dyn Storage> {
    fn into_storage(self) -> Arc<dyn Storage> {
        self
    }
}
