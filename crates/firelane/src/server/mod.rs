//! The [`Server`]: runs jobs from a store in the background.
//!
//! A server runs a few loops, each restarted if it panics: the fetcher (leases as many jobs as
//! there are free workers), the completer (writes outcomes in batches), the scheduler (enqueues
//! due jobs, sleeping until the earliest one), heartbeats (which also extend the leases of
//! running jobs), the watchdog (re-enqueues jobs of dead servers) and expiration.

mod handler;
mod loops;
mod observe;
mod runner;

pub use observe::HealthCheck;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::job::{Cancellation, Job, StateMap};
use crate::{
    Completion, Error, IntoStorage, JobId, LeaseId, Result, Retention, ServerId, ServerInfo,
    Storage, validate_queue,
};
use handler::{Handler, TypedHandler};

/// Builds a [`Server`]; every setting is checked by [`ServerBuilder::start`].
///
/// ```
/// # use firelane::{Job, JobContext, JobError};
/// # #[derive(Clone)] struct Mailer;
/// # struct SendEmail;
/// # impl Job for SendEmail {
/// #     const NAME: &'static str = "send_email";
/// #     type Args = i64;
/// #     async fn run(&self, _: JobContext, _: i64) -> Result<(), JobError> { Ok(()) }
/// # }
/// use std::time::Duration;
/// use firelane::Server;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), firelane::Error> {
/// let storage = firelane::sqlite(":memory:").await?;
/// let server = Server::builder(storage)
///     .register(SendEmail)
///     .state(Mailer)
///     .queues(["critical", "default"])
///     .workers(20)
///     .shutdown_timeout(Duration::from_secs(10))
///     .start()
///     .await?;
/// // ... later, when the application stops:
/// server.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a builder does nothing until `.start()` is awaited"]
pub struct ServerBuilder {
    storage: Arc<dyn Storage>,
    handlers: HashMap<String, Arc<dyn Handler>>,
    duplicate_names: Vec<String>,
    state: StateMap,
    config: Config,
    recurring: Vec<crate::Recurring>,
    remove_undeclared_recurring: bool,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<_> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("ServerBuilder")
            .field("jobs", &names)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) queues: Vec<String>,
    pub(crate) workers: usize,
    /// `None`: paced, up to [`Config::PREFETCH_PER_WORKER`] per worker.
    pub(crate) prefetch: Option<Prefetch>,
    pub(crate) lease: Duration,
    pub(crate) heartbeat: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) cancel_grace: Duration,
    pub(crate) dead_after: Option<Duration>,
    pub(crate) watchdog_interval: Option<Duration>,
    pub(crate) expiration_interval: Duration,
    pub(crate) retention: Retention,
    pub(crate) fetch_batch: usize,
    pub(crate) completion_batch: usize,
    pub(crate) misfire_grace: Duration,
    /// How often the queue gauges are sampled (feature `metrics`).
    pub(crate) metrics_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            queues: vec![crate::DEFAULT_QUEUE.to_owned()],
            workers: (cpus * 5).min(20),
            prefetch: None,
            lease: Duration::from_secs(30),
            heartbeat: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(10),
            dead_after: None,
            watchdog_interval: None,
            expiration_interval: Duration::from_secs(60),
            retention: Retention::default(),
            fetch_batch: 1000,
            completion_batch: 1000,
            misfire_grace: crate::Misfire::DEFAULT_GRACE,
            metrics_interval: Duration::from_secs(15),
        }
    }
}

impl Config {
    /// The default maximum of jobs leased ahead, per worker.
    const PREFETCH_PER_WORKER: usize = 16;
    /// The default maximum of jobs leased ahead, whatever the workers.
    const PREFETCH_DEFAULT_MAX: usize = 10_000;

    pub(crate) fn prefetch(&self) -> Prefetch {
        self.prefetch.unwrap_or(Prefetch::paced(
            self.workers
                .saturating_mul(Self::PREFETCH_PER_WORKER)
                .min(Self::PREFETCH_DEFAULT_MAX),
        ))
    }
}

impl ServerBuilder {
    /// Registers a job type: the server runs jobs of its name.
    pub fn register<J: Job>(mut self, job: J) -> Self {
        let handler: Arc<dyn Handler> = Arc::new(TypedHandler(Arc::new(job)));
        if self.handlers.insert(J::NAME.to_owned(), handler).is_some() {
            self.duplicate_names.push(J::NAME.to_owned());
        }
        self
    }

    /// Gives jobs a value of application state, taken with [`crate::JobContext::state`] (or a
    /// `State<T>` parameter of a `#[job]` function). One value per type.
    pub fn state<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.state.insert(value);
        self
    }

    /// The queues to serve, most important first: a job of a later queue runs only when every
    /// earlier queue is empty (default: `["default"]`).
    pub fn queues<I, S>(mut self, queues: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.queues = queues.into_iter().map(Into::into).collect();
        self
    }

    /// How many jobs run at once (default: five per core, at most 20).
    pub fn workers(mut self, workers: usize) -> Self {
        self.config.workers = workers;
        self
    }

    /// How many jobs this server leases beyond its free workers, to start as soon as a
    /// worker is free (default: [`Prefetch::paced`], up to sixteen per worker).
    ///
    /// With short jobs, workers then do not wait for the store between jobs, and the store
    /// writes and fetches in larger batches. The jobs taken ahead are Processing in the store
    /// while they wait, and start in the order they were fetched; their leases are extended
    /// like running jobs', a revocation (a delete, a requeue) drops them, and a shutdown
    /// hands them back at once, attempt not counted. A job enqueued later, even of higher
    /// priority, starts after those already leased ahead. At most 100,000.
    ///
    /// ```
    /// # async fn demo(storage: std::sync::Arc<dyn firelane::Storage>) {
    /// use firelane::{Prefetch, Server};
    /// // Long jobs shared by many servers: lease only what a worker can start now.
    /// let builder = Server::builder(storage).workers(8).prefetch(Prefetch::off());
    /// # }
    /// ```
    pub fn prefetch(mut self, prefetch: Prefetch) -> Self {
        self.config.prefetch = Some(prefetch);
        self
    }

    /// How long a fetched job's lease lasts without a heartbeat (default 30 s). A server that
    /// dies loses its jobs to other servers this long after its last heartbeat.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How often the server reports that it is alive and extends its leases (default 5 s; at
    /// most half the lease).
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat = interval;
        self
    }

    /// How often the server looks for work when no wake-up arrives (default 1 s). In-process
    /// and PostgreSQL wake-ups make pickup immediate; this is the fallback.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.config.poll_interval = interval;
        self
    }

    /// How long shutdown waits for running jobs before handing them back (default 30 s).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// How long a job that was deleted or requeued while running may ignore its cancellation
    /// before it is stopped (default 10 s).
    pub fn cancel_grace(mut self, grace: Duration) -> Self {
        self.config.cancel_grace = grace;
        self
    }

    /// How long a server may stay silent before others consider it dead (default: the lease).
    pub fn dead_after(mut self, silence: Duration) -> Self {
        self.config.dead_after = Some(silence);
        self
    }

    /// How often the watchdog looks for lapsed leases and dead servers (default: the
    /// heartbeat interval).
    pub fn watchdog_interval(mut self, interval: Duration) -> Self {
        self.config.watchdog_interval = Some(interval);
        self
    }

    /// How often finished jobs past their retention are removed (default 1 minute).
    pub fn expiration_interval(mut self, interval: Duration) -> Self {
        self.config.expiration_interval = interval;
        self
    }

    /// How long finished jobs are kept (default: 1 day for succeeded and deleted, failed kept).
    pub fn retention(mut self, retention: Retention) -> Self {
        self.config.retention = retention;
        self
    }

    /// Declares a recurring job: added or updated when the server starts, so that each deploy
    /// brings its schedule up to date (as Hangfire's `AddOrUpdate` at start-up).
    pub fn recurring(mut self, recurring: crate::Recurring) -> Self {
        self.recurring.push(recurring);
        self
    }

    /// Removes, at start, every stored recurring job this server does not declare. Off by
    /// default: turn it on only where one server (or every server alike) declares them all.
    pub fn remove_undeclared_recurring(mut self, remove: bool) -> Self {
        self.remove_undeclared_recurring = remove;
        self
    }

    /// How late an occurrence of a recurring job may fire and still count as on time rather
    /// than missed (default 1 minute); see [`crate::Misfire`].
    pub fn misfire_grace(mut self, grace: Duration) -> Self {
        self.config.misfire_grace = grace;
        self
    }

    /// How often the server reads the store's figures into the queue and server gauges
    /// (default 15 s); see [`crate::metrics`]. Every server samples them: they describe the
    /// whole store, not this server.
    #[cfg(feature = "metrics")]
    pub fn metrics_interval(mut self, interval: Duration) -> Self {
        self.config.metrics_interval = interval;
        self
    }

    /// Checks the settings, registers the server with the store and starts its loops.
    pub async fn start(self) -> Result<Server> {
        self.validate()?;
        let ServerBuilder {
            storage,
            handlers,
            state,
            config,
            recurring,
            remove_undeclared_recurring,
            ..
        } = self;
        declare_recurring(&storage, recurring, remove_undeclared_recurring).await?;
        let mut names: Vec<String> = handlers.keys().cloned().collect();
        names.sort();
        let workers = u32::try_from(config.workers).unwrap_or(u32::MAX);
        let info = ServerInfo::new(
            ServerId::generate(),
            config.queues.clone(),
            workers,
            names.clone(),
        );
        // Register before fetching, so that the first job's lease has a live owner.
        storage
            .heartbeat(crate::Heartbeat::new(
                info.clone(),
                Utc::now(),
                Vec::new(),
                Utc::now(),
            ))
            .await?;

        let (completion_tx, completion_rx) = mpsc::channel(config.workers * 4 + 1024);
        let (waiting_tx, waiting_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            storage,
            handlers,
            state: Arc::new(state),
            names,
            info,
            lease_slots: Arc::new(Semaphore::new(config.workers + config.prefetch().max)),
            run_slots: Arc::new(Semaphore::new(config.workers)),
            pace: Mutex::new(Pace::new()),
            waiting_tx,
            waiting: AtomicUsize::new(0),
            running: Mutex::new(HashMap::new()),
            unwritten: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            completer_close: CancellationToken::new(),
            heartbeat_stop: CancellationToken::new(),
            fetch_wakeup: Notify::new(),
            schedule_wakeup: Notify::new(),
            recurring_wakeup: Notify::new(),
            heartbeat_wakeup: Notify::new(),
            next_wake_micros: AtomicI64::new(i64::MAX),
            completion_tx,
            counters: Counters::default(),
            job_metrics: crate::telemetry::JobMetricsCache::new(),
            loop_handles: OnceLock::new(),
            config,
        });
        #[cfg(feature = "metrics")]
        crate::metrics::describe();
        let server = Server::spawn(shared, completion_rx, waiting_rx);
        tracing::info!(server = %server.id(), "firelane server started");
        Ok(server)
    }

    fn validate(&self) -> Result<()> {
        let c = &self.config;
        let bad = |msg: String| Err(Error::Config(msg));
        if c.workers == 0 {
            return bad("a server needs at least 1 worker (`.workers(n)`)".into());
        }
        if c.workers > 10_000 {
            return bad(format!(
                "{} workers is more than the 10,000 allowed",
                c.workers
            ));
        }
        if c.prefetch().max > 100_000 {
            return bad(format!(
                "a prefetch of {} jobs is more than the 100,000 allowed",
                c.prefetch().max
            ));
        }
        if c.queues.is_empty() {
            return bad("a server needs at least one queue (`.queues([\"default\"])`)".into());
        }
        let mut seen = HashSet::new();
        for q in &c.queues {
            validate_queue(q)?;
            if !seen.insert(q) {
                return bad(format!("queue {q:?} is listed twice"));
            }
        }
        if self.handlers.is_empty() {
            return bad(
                "no job is registered: add `.register(MyJob)` for each job the server runs".into(),
            );
        }
        if let Some(name) = self.duplicate_names.first() {
            return bad(format!(
                "two job types are registered under the name {name:?}; job names must be unique"
            ));
        }
        for h in self.handlers.values() {
            for ty in h.required_state() {
                if !self.state.contains(&ty) {
                    return bad(format!(
                        "a registered job needs application state of type `{}`: add `.state(value)` to the server builder",
                        ty.name
                    ));
                }
            }
        }
        if c.lease < Duration::from_millis(100) {
            return bad(format!(
                "lease {:?} is shorter than the minimum of 100 ms",
                c.lease
            ));
        }
        if c.heartbeat.is_zero() || c.heartbeat * 2 > c.lease {
            return bad(format!(
                "heartbeat interval {:?} must be above zero and at most half the lease ({:?})",
                c.heartbeat, c.lease
            ));
        }
        for (name, d) in [
            ("poll interval", c.poll_interval),
            ("expiration interval", c.expiration_interval),
            ("metrics interval", c.metrics_interval),
        ] {
            if d.is_zero() {
                return bad(format!("the {name} must be above zero"));
            }
        }
        if let Some(w) = c.watchdog_interval
            && w.is_zero()
        {
            return bad("the watchdog interval must be above zero".into());
        }
        const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);
        for (name, d) in [
            ("lease", Some(c.lease)),
            ("heartbeat interval", Some(c.heartbeat)),
            ("poll interval", Some(c.poll_interval)),
            ("shutdown timeout", Some(c.shutdown_timeout)),
            ("cancel grace", Some(c.cancel_grace)),
            ("dead-after silence", c.dead_after),
            ("watchdog interval", c.watchdog_interval),
            ("expiration interval", Some(c.expiration_interval)),
            ("misfire grace", Some(c.misfire_grace)),
            ("metrics interval", Some(c.metrics_interval)),
        ] {
            if let Some(d) = d
                && d > YEAR
            {
                return bad(format!(
                    "the {name} of {d:?} is over the maximum of one year"
                ));
            }
        }
        Ok(())
    }
}

/// Adds or updates the declared recurring jobs, all checked before any is stored, and removes
/// undeclared ones when asked.
async fn declare_recurring(
    storage: &Arc<dyn Storage>,
    declared: Vec<crate::Recurring>,
    remove_undeclared: bool,
) -> Result<()> {
    let mut defs = Vec::with_capacity(declared.len());
    let mut ids = HashSet::new();
    for r in declared {
        let id = r.id().to_owned();
        let def = r
            .into_def(crate::DEFAULT_MAX_PAYLOAD)
            .map_err(|e| Error::Config(format!("recurring job {id:?}: {e}")))?;
        if !ids.insert(id.clone()) {
            return Err(Error::Config(format!(
                "recurring job {id:?} is declared twice"
            )));
        }
        defs.push(def);
    }
    let now = Utc::now();
    for def in defs {
        let next = def.schedule.next_after(now);
        storage.upsert_recurring(def, next, now).await?;
    }
    if remove_undeclared {
        for r in storage.list_recurring().await? {
            if !ids.contains(&r.id) {
                tracing::info!(recurring = %r.id, "removing a recurring job no longer declared");
                storage.remove_recurring(&r.id).await?;
            }
        }
    }
    Ok(())
}

/// How many jobs a server leases beyond its free workers; see [`ServerBuilder::prefetch`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefetch {
    max: usize,
    paced: bool,
}

impl Prefetch {
    /// None: each fetch asks for as many jobs as there are free workers.
    pub const fn off() -> Self {
        Prefetch {
            max: 0,
            paced: false,
        }
    }

    /// As many as the server's workers finish in about 25 ms at their recent pace, up to
    /// `max`: about workers × 25 ms ÷ the jobs' duration, rounded down. So a job leased ahead
    /// expects a worker within about 25 ms, not while another server sits idle: 20 workers
    /// running one-second jobs lease none ahead, 50 workers on 10 ms jobs lease about 125. A
    /// server just started, or with no outcome for a second, leases none ahead until jobs
    /// finish again; within that second after a burst of short jobs, longer ones that follow
    /// may still be leased ahead at the burst's pace.
    pub const fn paced(max: usize) -> Self {
        Prefetch { max, paced: true }
    }

    /// Always `jobs` ahead, whatever the pace: for jobs known to be short. A job leased
    /// ahead waits for as many jobs to finish before it starts, even while another server
    /// is idle.
    pub const fn fixed(jobs: usize) -> Self {
        Prefetch {
            max: jobs,
            paced: false,
        }
    }
}

/// How fast a server finishes jobs: a smoothed rate, updated as outcomes are written.
#[derive(Debug)]
pub(crate) struct Pace {
    since: Instant,
    jobs: usize,
    per_s: f64,
}

impl Pace {
    /// How long a job leased ahead may expect to wait for a worker, at the present pace.
    const AHEAD: Duration = Duration::from_millis(25);
    /// The shortest span a rate is measured over.
    const SPAN: Duration = Duration::from_millis(10);
    /// After this long without an update the last rate is stale, and the jobs counted since
    /// give the rate instead.
    const STALE: Duration = Duration::from_secs(1);

    pub(crate) fn new() -> Self {
        Pace {
            since: Instant::now(),
            jobs: 0,
            per_s: 0.0,
        }
    }

    fn record(&mut self, jobs: usize) {
        self.record_at(jobs, Instant::now());
    }

    fn record_at(&mut self, jobs: usize, now: Instant) {
        self.jobs += jobs;
        let span = now.duration_since(self.since);
        if span < Self::SPAN {
            return;
        }
        let rate = self.jobs as f64 / span.as_secs_f64();
        self.per_s = if span >= Self::STALE {
            rate
        } else {
            0.7 * self.per_s + 0.3 * rate
        };
        self.since = now;
        self.jobs = 0;
    }

    /// How many jobs to lease ahead, at most `max`.
    fn lease_ahead(&self, max: usize) -> usize {
        self.lease_ahead_at(max, Instant::now())
    }

    fn lease_ahead_at(&self, max: usize, now: Instant) -> usize {
        let span = now.duration_since(self.since);
        let per_s = if span >= Self::STALE {
            self.jobs as f64 / span.as_secs_f64()
        } else {
            self.per_s
        };
        // Rounded down: a job leased ahead should expect a worker within the time.
        let ahead = (per_s * Self::AHEAD.as_secs_f64()).floor();
        if ahead >= max as f64 {
            max
        } else {
            // Below `max`, so it fits; the cast drops nothing.
            ahead as usize
        }
    }
}

/// A running job, as the server tracks it.
#[derive(Debug)]
pub(crate) struct RunningJob {
    pub(crate) lease: LeaseId,
    pub(crate) cancellation: Cancellation,
    pub(crate) name: Arc<str>,
    pub(crate) started: Instant,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) started: AtomicU64,
    pub(crate) succeeded: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) handed_back: AtomicU64,
    /// Outcomes sent to the completer, of every kind.
    pub(crate) ended: AtomicU64,
    pub(crate) loop_restarts: AtomicU64,
}

/// What the server's loops share.
pub(crate) struct Shared {
    pub(crate) storage: Arc<dyn Storage>,
    pub(crate) handlers: HashMap<String, Arc<dyn Handler>>,
    pub(crate) state: Arc<StateMap>,
    pub(crate) names: Vec<String>,
    pub(crate) info: ServerInfo,
    pub(crate) config: Config,
    /// One per job this server holds a lease on and has not finished: the workers and the
    /// prefetch. The fetches ask for as many jobs as there are free ones.
    pub(crate) lease_slots: Arc<Semaphore>,
    /// One per worker: held while a job runs.
    pub(crate) run_slots: Arc<Semaphore>,
    /// How fast this server's jobs finish, for how many to lease ahead.
    pub(crate) pace: Mutex<Pace>,
    /// Jobs leased ahead, in fetch order, for the dispatcher to give workers to.
    pub(crate) waiting_tx: mpsc::UnboundedSender<runner::Waiting>,
    /// How many jobs are in `waiting_tx` and not yet given a worker.
    pub(crate) waiting: AtomicUsize,
    pub(crate) running: Mutex<HashMap<JobId, RunningJob>>,
    /// Finished jobs whose outcome is not written yet: their leases are still extended, so that
    /// a store outage longer than the lease does not hand them to another server.
    pub(crate) unwritten: Mutex<HashMap<JobId, LeaseId>>,
    /// Stops fetching and the periodic loops.
    pub(crate) stop: CancellationToken,
    /// Aborts jobs still running when the shutdown timeout ends.
    pub(crate) hard_stop: CancellationToken,
    pub(crate) completer_close: CancellationToken,
    pub(crate) heartbeat_stop: CancellationToken,
    pub(crate) fetch_wakeup: Notify,
    pub(crate) schedule_wakeup: Notify,
    pub(crate) recurring_wakeup: Notify,
    pub(crate) heartbeat_wakeup: Notify,
    /// When the scheduler plans to wake, in microseconds since the epoch.
    pub(crate) next_wake_micros: AtomicI64,
    pub(crate) completion_tx: mpsc::Sender<Completion>,
    pub(crate) counters: Counters,
    /// Metric handles per (job, queue); nothing without feature `metrics`.
    pub(crate) job_metrics: crate::telemetry::JobMetricsCache,
    /// The loops' tasks, by name, for the health check.
    pub(crate) loop_handles: OnceLock<Vec<(&'static str, AbortHandle)>>,
}

impl Shared {
    pub(crate) fn running(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, RunningJob>> {
        // A panic while holding this lock leaves the map itself intact: keep using it.
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn unwritten(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, LeaseId>> {
        self.unwritten
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many lease slots a fetch may take now: the free ones, less those the prefetch
    /// keeps back at the present pace (see [`ServerBuilder::prefetch`]).
    pub(crate) fn takeable_slots(&self) -> usize {
        let prefetch = self.config.prefetch();
        let ahead = if prefetch.paced {
            self.pace
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .lease_ahead(prefetch.max)
        } else {
            prefetch.max
        };
        let reserve = prefetch.max - ahead;
        self.lease_slots.available_permits().saturating_sub(reserve)
    }

    /// Counts jobs whose outcome was written, for the pace.
    pub(crate) fn finished(&self, jobs: usize) {
        self.pace
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .record(jobs);
    }

    /// Jobs running now: workers taken.
    pub(crate) fn running_jobs(&self) -> usize {
        self.config.workers - self.run_slots.available_permits()
    }

    pub(crate) fn dead_after(&self) -> Duration {
        self.config.dead_after.unwrap_or(self.config.lease)
    }

    /// Loops whose task ended although the server was not told to stop.
    pub(crate) fn stopped_loops(&self) -> Vec<&'static str> {
        if self.stop.is_cancelled() {
            return Vec::new();
        }
        self.loop_handles
            .get()
            .map(|handles| {
                handles
                    .iter()
                    .filter(|(_, h)| h.is_finished())
                    .map(|(name, _)| *name)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn watchdog_interval(&self) -> Duration {
        self.config
            .watchdog_interval
            .unwrap_or(self.config.heartbeat)
    }
}

/// A running server. Stop it with [`Server::shutdown`]; dropping it stops it abruptly (its jobs
/// return to their queues when their leases lapse).
pub struct Server {
    shared: Arc<Shared>,
    loops: Vec<JoinHandle<()>>,
    completer: Option<JoinHandle<()>>,
    heartbeat: Option<JoinHandle<()>>,
    dispatcher: AbortHandle,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("id", &self.shared.info.id)
            .field("queues", &self.shared.config.queues)
            .field("workers", &self.shared.config.workers)
            .finish_non_exhaustive()
    }
}

/// What a shutdown did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Jobs that finished during the shutdown timeout.
    pub finished: usize,
    /// Jobs handed back to their queues, attempt not counted: those that did not finish in
    /// time, and those leased ahead that had not started.
    pub handed_back: usize,
}

impl Server {
    /// Starts building a server over a store.
    pub fn builder(storage: impl IntoStorage) -> ServerBuilder {
        ServerBuilder {
            storage: storage.into_storage(),
            handlers: HashMap::new(),
            duplicate_names: Vec::new(),
            state: StateMap::default(),
            config: Config::default(),
            recurring: Vec::new(),
            remove_undeclared_recurring: false,
        }
    }

    /// This server's id, as the store and the dashboard show it.
    pub fn id(&self) -> &ServerId {
        &self.shared.info.id
    }

    /// How many jobs are running now (not counting jobs leased ahead, waiting for a worker).
    pub fn running_jobs(&self) -> usize {
        self.shared.running_jobs()
    }

    /// How many times a loop panicked and was restarted.
    pub fn loop_restarts(&self) -> u64 {
        self.shared.counters.loop_restarts.load(Ordering::Relaxed)
    }

    /// Whether this server is ready, for an application's readiness endpoint: the store
    /// answers a cheap read within 2 s, the server runs with every loop alive, and its last
    /// heartbeat in the store is fresh. See [`HealthCheck`] for a handle to keep in a web
    /// handler's state.
    pub async fn health(&self) -> crate::Health {
        self.health_check().check().await
    }

    /// A cloneable readiness check of this server, which stays usable (and reports "not
    /// running") after the server is shut down.
    pub fn health_check(&self) -> HealthCheck {
        HealthCheck::new(&self.shared)
    }

    fn spawn(
        shared: Arc<Shared>,
        completion_rx: mpsc::Receiver<Completion>,
        waiting_rx: mpsc::UnboundedReceiver<runner::Waiting>,
    ) -> Self {
        // The fetcher first: shutdown waits for it before telling running jobs.
        #[cfg_attr(not(feature = "metrics"), allow(unused_mut))]
        let mut named = vec![
            (
                "fetcher",
                loops::supervise("fetcher", &shared, loops::fetcher),
            ),
            (
                "signals",
                loops::supervise("signals", &shared, loops::signals),
            ),
            (
                "scheduler",
                loops::supervise("scheduler", &shared, loops::scheduler),
            ),
            (
                "watchdog",
                loops::supervise("watchdog", &shared, loops::watchdog),
            ),
            (
                "expiration",
                loops::supervise("expiration", &shared, loops::expiration),
            ),
            (
                "recurring",
                loops::supervise("recurring", &shared, loops::recurring),
            ),
        ];
        #[cfg(feature = "metrics")]
        named.push((
            "metrics",
            loops::supervise("metrics", &shared, observe::sample_gauges),
        ));
        let completer = tokio::spawn(loops::completer(Arc::clone(&shared), completion_rx));
        // Not restarted: it holds the waiting jobs' channel. It only moves jobs along.
        let dispatcher = tokio::spawn(runner::dispatcher(Arc::clone(&shared), waiting_rx));
        let heartbeat = loops::supervise("heartbeat", &shared, loops::heartbeat);
        let mut handles: Vec<(&'static str, AbortHandle)> = named
            .iter()
            .map(|(name, h)| (*name, h.abort_handle()))
            .collect();
        handles.push(("completer", completer.abort_handle()));
        handles.push(("dispatcher", dispatcher.abort_handle()));
        handles.push(("heartbeat", heartbeat.abort_handle()));
        let _ = shared.loop_handles.set(handles);
        let loops = named.into_iter().map(|(_, h)| h).collect();
        Server {
            shared,
            loops,
            completer: Some(completer),
            heartbeat: Some(heartbeat),
            dispatcher: dispatcher.abort_handle(),
        }
    }

    /// Stops gracefully: stops fetching, tells running jobs through their cancellation tokens,
    /// waits up to the shutdown timeout for them, hands back to their queues those that did not
    /// finish, writes every outcome and unregisters the server.
    pub async fn shutdown(mut self) -> Result<ShutdownReport> {
        let shared = Arc::clone(&self.shared);
        let running_at_start = shared.running().len();
        let ended_before = shared.counters.ended.load(Ordering::Relaxed);
        let handed_back_before = shared.counters.handed_back.load(Ordering::Relaxed);
        tracing::info!(server = %shared.info.id, running = running_at_start, "firelane server shutting down");
        shared.stop.cancel();
        // The fetcher registers what it fetched before it stops; wait for it, then tell every
        // running job. The other loops may be inside a store call: they get the shutdown
        // timeout, not more.
        let mut loops = self.loops.drain(..);
        if let Some(fetcher) = loops.next() {
            let _ = tokio::time::timeout(shared.config.shutdown_timeout, fetcher).await;
        }
        for job in shared.running().values() {
            job.cancellation.cancel(crate::CancelReason::Shutdown);
        }
        let rest: Vec<_> = loops.collect();
        let _ = tokio::time::timeout(shared.config.shutdown_timeout, async {
            for handle in rest {
                let _ = handle.await;
            }
        })
        .await;
        // Every lease slot back: each job ran, or was handed back.
        let slots = shared.config.workers + shared.config.prefetch().max;
        let slots = u32::try_from(slots).unwrap_or(u32::MAX);
        let all_idle = tokio::time::timeout(
            shared.config.shutdown_timeout,
            shared.lease_slots.acquire_many(slots),
        )
        .await;
        if all_idle.is_err() {
            shared.hard_stop.cancel();
            // Aborted runners hand their jobs back and release their slots at once.
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                shared.lease_slots.acquire_many(slots),
            )
            .await;
        }
        shared.completer_close.cancel();
        if let Some(c) = self.completer.take() {
            let _ = c.await;
        }
        shared.heartbeat_stop.cancel();
        if let Some(h) = self.heartbeat.take() {
            let _ = h.await;
        }
        self.dispatcher.abort();
        // Counted from the outcomes, which include jobs a fetch in flight brought in after
        // the shutdown began.
        let handed_back = shared.counters.handed_back.load(Ordering::Relaxed) - handed_back_before;
        let ended = shared.counters.ended.load(Ordering::Relaxed) - ended_before;
        let finished = usize::try_from(ended - handed_back).unwrap_or(usize::MAX);
        let handed_back = usize::try_from(handed_back).unwrap_or(usize::MAX);
        // Every outcome is written by now; a server record left behind is removed by the other
        // servers' watchdogs once it is silent for dead_after.
        if let Err(e) = shared.storage.remove_server(&shared.info.id).await {
            tracing::warn!(error = %e, "could not unregister the server; others will remove it once it is silent");
        }
        tracing::info!(server = %shared.info.id, handed_back, "firelane server stopped");
        Ok(ShutdownReport {
            finished,
            handed_back,
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Without a graceful shutdown, stop everything at once; leases lapse and other
        // servers recover the jobs.
        self.shared.stop.cancel();
        self.shared.hard_stop.cancel();
        self.shared.completer_close.cancel();
        self.shared.heartbeat_stop.cancel();
        self.dispatcher.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_default_prefetch_follows_the_workers_within_the_limits() {
        let with = |workers| Config {
            workers,
            ..Config::default()
        };
        assert_eq!(with(50).prefetch(), Prefetch::paced(800));
        // The most workers allowed still pass the check on the prefetch.
        assert_eq!(with(10_000).prefetch(), Prefetch::paced(10_000));
        let set = Config {
            prefetch: Some(Prefetch::off()),
            ..with(50)
        };
        assert_eq!(set.prefetch(), Prefetch::off());
    }

    #[test]
    fn a_fresh_pace_leases_nothing_ahead() {
        let pace = Pace::new();
        assert_eq!(pace.lease_ahead_at(200, pace.since), 0);
    }

    #[test]
    fn short_jobs_lease_up_to_the_maximum_and_long_ones_none() {
        let mut pace = Pace::new();
        let t0 = pace.since;
        // 4,000 jobs a second: 100 finish in 25 ms (the smoothing gets within 3 % of it).
        for i in 1..=10 {
            pace.record_at(40, t0 + 10 * MS * i);
        }
        let ahead = pace.lease_ahead_at(1_000, t0 + 100 * MS);
        assert!((97..=100).contains(&ahead), "{ahead}");
        assert_eq!(pace.lease_ahead_at(60, t0 + 100 * MS), 60, "capped");

        // Jobs of a second each on 20 workers: 20 a second, none ahead.
        let mut slow = Pace::new();
        let t0 = slow.since;
        for i in 1..=5 {
            slow.record_at(20, t0 + Duration::from_secs(i));
        }
        assert_eq!(slow.lease_ahead_at(1_000, t0 + Duration::from_secs(5)), 0);
    }

    #[test]
    fn spans_under_ten_ms_accumulate_and_a_change_is_smoothed() {
        let mut pace = Pace::new();
        let t0 = pace.since;
        pace.record_at(30, t0 + 4 * MS);
        assert_eq!(
            pace.lease_ahead_at(1_000, t0 + 4 * MS),
            0,
            "not measured yet"
        );
        pace.record_at(10, t0 + 10 * MS);
        // 40 jobs in 10 ms, smoothed from 0: 1,200 a second, 30 in 25 ms.
        assert_eq!(pace.lease_ahead_at(1_000, t0 + 10 * MS), 30);
    }

    #[test]
    fn an_idle_server_forgets_its_pace() {
        let mut pace = Pace::new();
        let t0 = pace.since;
        for i in 1..=10 {
            pace.record_at(40, t0 + 10 * MS * i);
        }
        let later = t0 + 100 * MS + Duration::from_secs(2);
        assert_eq!(pace.lease_ahead_at(1_000, later), 0, "no job in 2 s");
        // The first outcome after the pause measures the whole pause.
        pace.record_at(1, later);
        assert_eq!(pace.lease_ahead_at(1_000, later), 0);
    }
}
