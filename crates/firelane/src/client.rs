//! The [`Client`]: creates jobs and acts on them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::job::{Job, JobOptions, JobRequest};
use crate::{
    Change, ContinueOn, CronSchedule, Error, Initial, IntoStorage, JobDetails, JobId, JobQuery,
    JobRecord, JobState, Misfire, NewJob, RecurringRecord, Result, ServerRecord, Stats, Storage,
    validate_queue,
};
use firelane_core::HourlyStats;
use firelane_core::{JobTemplate, RecurringDef};

/// The largest job arguments a client accepts by default: 1 MiB of JSON.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Creates jobs and acts on them. Cheap to clone; share one per application.
///
/// ```
/// # use firelane::{Job, JobContext, JobError};
/// # struct Report;
/// # impl Job for Report {
/// #     const NAME: &'static str = "report";
/// #     type Args = String;
/// #     async fn run(&self, _: JobContext, _: String) -> Result<(), JobError> { Ok(()) }
/// # }
/// use std::time::Duration;
/// use firelane::{Client, ContinueOn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), firelane::Error> {
/// let client = Client::new(firelane::sqlite(":memory:").await?);
///
/// let id = client.enqueue(Report::with_args("daily".into())).await?;
/// client.schedule(Report::with_args("weekly".into()), Duration::from_secs(3600)).await?;
/// client.continue_with(id, Report::with_args("audit".into()), ContinueOn::Succeeded).await?;
///
/// let job = client.job(id).await?;
/// assert_eq!(job.job.name, "report");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    storage: Arc<dyn Storage>,
    max_payload: usize,
    metrics: crate::telemetry::ClientMetrics,
}

impl Client {
    /// A client over a store.
    pub fn new(storage: impl IntoStorage) -> Self {
        Self {
            storage: storage.into_storage(),
            max_payload: DEFAULT_MAX_PAYLOAD,
            metrics: crate::telemetry::ClientMetrics::new(),
        }
    }

    /// Sets the largest serialized arguments accepted (default [`DEFAULT_MAX_PAYLOAD`]).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// The store this client writes to.
    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    /// Enqueues a job to run as soon as a server is free.
    pub async fn enqueue<J: Job>(&self, request: JobRequest<J>) -> Result<JobId> {
        let job = self.new_job(request, Initial::Enqueued)?;
        self.submit_one(job).await
    }

    /// Enqueues many jobs of one kind in one transaction: all are created, or none.
    pub async fn enqueue_many<J: Job>(
        &self,
        requests: impl IntoIterator<Item = JobRequest<J>>,
    ) -> Result<Vec<JobId>> {
        let jobs = requests
            .into_iter()
            .map(|r| self.new_job(r, Initial::Enqueued))
            .collect::<Result<Vec<_>>>()?;
        let ids = jobs.iter().map(|j| j.id).collect();
        let counted = self.metrics.prepare(&jobs);
        self.storage.enqueue(jobs, Utc::now()).await?;
        counted.accepted();
        Ok(ids)
    }

    /// Runs a job after `delay`.
    pub async fn schedule<J: Job>(&self, request: JobRequest<J>, delay: Duration) -> Result<JobId> {
        let at = due_after(delay)?;
        self.schedule_at(request, at).await
    }

    /// Runs a job at `at` (at once, if `at` is past).
    pub async fn schedule_at<J: Job>(
        &self,
        request: JobRequest<J>,
        at: DateTime<Utc>,
    ) -> Result<JobId> {
        let job = self.new_job(request, Initial::Scheduled { at })?;
        self.submit_one(job).await
    }

    /// Runs a job after `parent` ends as `on` says. If the parent has already ended that way,
    /// the job is enqueued at once.
    pub async fn continue_with<J: Job>(
        &self,
        parent: JobId,
        request: JobRequest<J>,
        on: ContinueOn,
    ) -> Result<JobId> {
        let job = self.new_job(request, Initial::Awaiting { parent, on })?;
        self.submit_one(job).await
    }

    /// Starts a batch: jobs of any kind, continuations among them, created in one transaction.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            client: self,
            jobs: Vec::new(),
        }
    }

    /// Enqueues an already built job, for tools that know a job only by name (the CLI). A
    /// job without a trace context gets the current span's, as [`Client::enqueue`] does
    /// (feature `opentelemetry`).
    pub async fn enqueue_raw(&self, mut job: NewJob) -> Result<JobId> {
        if job.trace_context.is_none() {
            job.trace_context = crate::telemetry::capture();
        }
        job.validate(self.max_payload)?;
        self.submit_one(job).await
    }

    /// Deletes a job. A processing job is told through its cancellation token.
    pub async fn delete(&self, id: JobId) -> Result<()> {
        single_change(id, self.delete_many(&[id]).await?, "delete")
    }

    /// Deletes many jobs; says for each what happened.
    pub async fn delete_many(&self, ids: &[JobId]) -> Result<Vec<Change>> {
        self.storage
            .delete(ids, "deleted by a person", Utc::now())
            .await
    }

    /// Enqueues a job again: a scheduled one now, a finished one with fresh retries.
    pub async fn requeue(&self, id: JobId) -> Result<()> {
        single_change(id, self.requeue_many(&[id]).await?, "requeue")
    }

    /// Requeues many jobs; says for each what happened.
    pub async fn requeue_many(&self, ids: &[JobId]) -> Result<Vec<Change>> {
        self.storage
            .requeue(ids, "requeued by a person", Utc::now())
            .await
    }

    /// A job with its whole history.
    pub async fn job(&self, id: JobId) -> Result<JobDetails> {
        self.storage.job(id).await?.ok_or(Error::JobNotFound(id))
    }

    /// Whether a live server can run jobs named `name`. An enqueued job that no server knows
    /// waits in its queue until one that does starts.
    pub async fn has_server_for(&self, name: &str) -> Result<bool> {
        let servers = self.storage.servers().await?;
        Ok(servers
            .iter()
            .any(|s| s.info.job_names.iter().any(|n| n == name)))
    }

    /// Starts adding or updating a recurring job:
    /// `client.recurring("nightly").cron("0 3 * * *").tz("Europe/Istanbul").upsert(report::args())`.
    pub fn recurring(&self, id: impl Into<String>) -> RecurringBuilder<'_> {
        RecurringBuilder {
            client: self,
            id: id.into(),
            cron: None,
            tz: "UTC".to_owned(),
            misfire: Misfire::default(),
        }
    }

    /// Adds or updates a recurring job. Its next run is the first occurrence after now, unless
    /// its schedule is unchanged (then the next run it waited for stays).
    pub async fn upsert_recurring(&self, recurring: Recurring) -> Result<()> {
        let def = recurring.into_def(self.max_payload)?;
        let now = Utc::now();
        let next = def.schedule.next_after(now);
        self.storage.upsert_recurring(def, next, now).await
    }

    /// Removes a recurring job; the jobs it already created stay.
    pub async fn remove_recurring(&self, id: &str) -> Result<()> {
        if self.storage.remove_recurring(id).await? {
            Ok(())
        } else {
            Err(Error::RecurringNotFound(id.to_owned()))
        }
    }

    /// Enqueues one run of a recurring job now, without moving its schedule.
    pub async fn trigger(&self, id: &str) -> Result<JobId> {
        self.storage.trigger_recurring(id, Utc::now()).await
    }

    /// Pauses a recurring job: it creates no job until resumed.
    pub async fn pause_recurring(&self, id: &str) -> Result<()> {
        let record = self.recurring_record(id).await?;
        self.set_paused(id, true, record.next_run).await
    }

    /// Resumes a paused (or disabled) recurring job from its next occurrence; occurrences while
    /// it was paused are not fired.
    pub async fn resume_recurring(&self, id: &str) -> Result<()> {
        let record = self.recurring_record(id).await?;
        let next = record.schedule()?.next_after(Utc::now());
        self.set_paused(id, false, next).await
    }

    /// A recurring job, with the state of the last job it created.
    pub async fn recurring_job(&self, id: &str) -> Result<RecurringView> {
        let record = self.recurring_record(id).await?;
        self.view(record).await
    }

    /// Every recurring job, by id, with the state of the last job each created.
    pub async fn recurring_jobs(&self) -> Result<Vec<RecurringView>> {
        let mut out = Vec::new();
        for record in self.storage.list_recurring().await? {
            out.push(self.view(record).await?);
        }
        Ok(out)
    }

    async fn recurring_record(&self, id: &str) -> Result<RecurringRecord> {
        self.storage
            .recurring(id)
            .await?
            .ok_or_else(|| Error::RecurringNotFound(id.to_owned()))
    }

    async fn set_paused(&self, id: &str, paused: bool, next: Option<DateTime<Utc>>) -> Result<()> {
        if self
            .storage
            .set_recurring_paused(id, paused, next, Utc::now())
            .await?
        {
            Ok(())
        } else {
            Err(Error::RecurringNotFound(id.to_owned()))
        }
    }

    async fn view(&self, record: RecurringRecord) -> Result<RecurringView> {
        let last_job_state = match record.last_job {
            Some(id) => self.storage.job(id).await?.map(|d| d.job.state),
            None => None,
        };
        Ok(RecurringView {
            record,
            last_job_state,
        })
    }

    /// A page of jobs.
    pub async fn list(&self, query: JobQuery) -> Result<Vec<JobRecord>> {
        self.storage.list_jobs(query).await
    }

    /// Counts per state and queue, and the running totals of succeeded and failed jobs.
    pub async fn stats(&self) -> Result<Stats> {
        self.storage.stats().await
    }

    /// Jobs succeeded and failed per hour, for the hours starting in `[from, to)`.
    pub async fn stats_history(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<HourlyStats>> {
        self.storage.stats_history(from, to).await
    }

    /// Pauses a queue: servers stop taking its jobs, which stay enqueued (and can still be
    /// added) until [`Client::resume_queue`].
    pub async fn pause_queue(&self, queue: &str) -> Result<()> {
        validate_queue(queue)?;
        self.storage.set_queue_paused(queue, true, Utc::now()).await
    }

    /// Resumes a paused queue; servers are woken at once.
    pub async fn resume_queue(&self, queue: &str) -> Result<()> {
        validate_queue(queue)?;
        self.storage
            .set_queue_paused(queue, false, Utc::now())
            .await
    }

    /// Cancels a processing job: it loses its lease and ends deleted with `reason`, and the
    /// server running it is told to stop (the job's [`crate::Cancellation`] fires). A job that is
    /// not processing is refused with [`Error::Refused`]. (A job that finishes between the check
    /// and the cancel is deleted all the same; its history keeps both.)
    pub async fn cancel(&self, id: JobId, reason: &str) -> Result<()> {
        let state = self.job(id).await?.job.state;
        if state != JobState::Processing {
            return Err(Error::Refused {
                id,
                state,
                action: "cancel",
            });
        }
        single_change(
            id,
            self.storage.delete(&[id], reason, Utc::now()).await?,
            "cancel",
        )
    }

    /// The servers that are alive.
    pub async fn servers(&self) -> Result<Vec<ServerRecord>> {
        self.storage.servers().await
    }

    /// Whether the store answers, for the readiness endpoint of a process that enqueues
    /// without running a server: a cheap read (the list of live servers) within 2 s. A process
    /// that runs a server checks with [`crate::Server::health`] instead.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), firelane::Error> {
    /// let client = firelane::Client::new(firelane::sqlite(":memory:").await?);
    /// let health = client.health().await;
    /// assert!(health.is_ready());
    /// assert_eq!(health.store.servers_alive, Some(0));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn health(&self) -> crate::Health {
        let (store, _) =
            crate::health::probe_store(&self.storage, crate::health::DEFAULT_HEALTH_TIMEOUT).await;
        crate::health::report(store, None)
    }

    fn new_job<J: Job>(&self, request: JobRequest<J>, initial: Initial) -> Result<NewJob> {
        build_job(request, initial, self.max_payload)
    }

    async fn submit_one(&self, job: NewJob) -> Result<JobId> {
        let id = job.id;
        let jobs = vec![job];
        let counted = self.metrics.prepare(&jobs);
        self.storage.enqueue(jobs, Utc::now()).await?;
        counted.accepted();
        Ok(id)
    }
}

/// Serializes a request into a job, with the job type's options under the request's, and
/// checks it. With feature `opentelemetry`, the job carries the current span's trace context,
/// so that its run joins the trace.
pub(crate) fn build_job<J: Job>(
    request: JobRequest<J>,
    initial: Initial,
    max_payload: usize,
) -> Result<NewJob> {
    let args = serde_json::to_string(&request.args).map_err(|source| Error::Serialize {
        name: J::NAME.to_owned(),
        source,
    })?;
    let options: JobOptions = J::options().merged(&request.options);
    let mut job = NewJob::new(J::NAME, args);
    if let Some(queue) = options.queue {
        job.queue = queue;
    }
    job.priority = options.priority.unwrap_or(0);
    if let Some(retry) = options.retry {
        job.retry = retry;
    }
    job.timeout = options.timeout;
    job.initial = initial;
    job.trace_context = crate::telemetry::capture();
    job.validate(max_payload)?;
    Ok(job)
}

fn single_change(id: JobId, change: Vec<Change>, action: &'static str) -> Result<()> {
    match change.first() {
        Some(Change::Changed { .. }) => Ok(()),
        Some(Change::Refused { state }) => Err(Error::Refused {
            id,
            state: *state,
            action,
        }),
        Some(Change::NotFound) | None => Err(Error::JobNotFound(id)),
    }
}

/// `now + delay`, refused when it is past the last time a store can keep.
fn due_after(delay: Duration) -> Result<DateTime<Utc>> {
    chrono::Duration::from_std(delay)
        .ok()
        .and_then(|d| Utc::now().checked_add_signed(d))
        .ok_or_else(|| Error::Config(format!("a delay of {delay:?} is too long")))
}

/// Jobs created together in one transaction. Continuations may follow jobs of the same batch.
///
/// ```
/// # use firelane::{Job, JobContext, JobError};
/// # struct Step;
/// # impl Job for Step {
/// #     const NAME: &'static str = "step";
/// #     type Args = u32;
/// #     async fn run(&self, _: JobContext, _: u32) -> Result<(), JobError> { Ok(()) }
/// # }
/// use firelane::{Client, ContinueOn};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), firelane::Error> {
/// let client = Client::new(firelane::sqlite(":memory:").await?);
/// let mut batch = client.batch();
/// let first = batch.enqueue(Step::with_args(1))?;
/// let second = batch.continue_with(first, Step::with_args(2), ContinueOn::Succeeded)?;
/// batch.continue_with(second, Step::with_args(3), ContinueOn::Succeeded)?;
/// batch.submit().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Batch<'c> {
    client: &'c Client,
    jobs: Vec<NewJob>,
}

impl Batch<'_> {
    /// Adds a job to enqueue.
    pub fn enqueue<J: Job>(&mut self, request: JobRequest<J>) -> Result<JobId> {
        self.push(request, Initial::Enqueued)
    }

    /// Adds a job to run after `delay`.
    pub fn schedule<J: Job>(&mut self, request: JobRequest<J>, delay: Duration) -> Result<JobId> {
        let at = due_after(delay)?;
        self.push(request, Initial::Scheduled { at })
    }

    /// Adds a continuation of `parent` (a job in this batch or already stored).
    pub fn continue_with<J: Job>(
        &mut self,
        parent: JobId,
        request: JobRequest<J>,
        on: ContinueOn,
    ) -> Result<JobId> {
        self.push(request, Initial::Awaiting { parent, on })
    }

    /// How many jobs the batch holds.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Whether the batch holds no job.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Creates every job of the batch, or none.
    pub async fn submit(self) -> Result<Vec<JobId>> {
        let ids = self.jobs.iter().map(|j| j.id).collect();
        if !self.jobs.is_empty() {
            let counted = self.client.metrics.prepare(&self.jobs);
            self.client.storage.enqueue(self.jobs, Utc::now()).await?;
            counted.accepted();
        }
        Ok(ids)
    }

    fn push<J: Job>(&mut self, request: JobRequest<J>, initial: Initial) -> Result<JobId> {
        let job = self.client.new_job(request, initial)?;
        let id = job.id;
        self.jobs.push(job);
        Ok(id)
    }
}

/// A recurring job to add or update: an id, a cron schedule in a time zone, and the job it
/// creates at each occurrence. Give it to [`Client::upsert_recurring`], or declare it on a
/// server with [`crate::ServerBuilder::recurring`] so that each deploy updates it.
///
/// ```
/// # use firelane::{Job, JobContext, JobError};
/// # struct Report;
/// # impl Job for Report {
/// #     const NAME: &'static str = "report";
/// #     type Args = ();
/// #     async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> { Ok(()) }
/// # }
/// use firelane::{Misfire, Recurring};
///
/// let nightly = Recurring::new("nightly-report", "0 3 * * *", Report::with_args(()))
///     .tz("Europe/Istanbul")
///     .misfire(Misfire::Skip);
/// ```
#[derive(Debug)]
pub struct Recurring {
    id: String,
    cron: String,
    tz: String,
    misfire: Misfire,
    job: Result<NewJob>,
}

impl Recurring {
    /// A recurring job firing on `cron` (UTC unless [`Recurring::tz`] says otherwise).
    pub fn new<J: Job>(
        id: impl Into<String>,
        cron: impl Into<String>,
        request: JobRequest<J>,
    ) -> Self {
        Self {
            id: id.into(),
            cron: cron.into(),
            tz: "UTC".to_owned(),
            misfire: Misfire::default(),
            // A template fires long after this call: it carries no trace context.
            job: build_job(request, Initial::Enqueued, usize::MAX).map(|mut job| {
                job.trace_context = None;
                job
            }),
        }
    }

    /// The IANA time zone the cron expression reads in (default `UTC`).
    pub fn tz(mut self, tz: impl Into<String>) -> Self {
        self.tz = tz.into();
        self
    }

    /// What to do with occurrences missed while no server ran (default: fire once).
    pub fn misfire(mut self, misfire: Misfire) -> Self {
        self.misfire = misfire;
        self
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Checks everything and builds the stored definition.
    pub(crate) fn into_def(self, max_payload: usize) -> Result<RecurringDef> {
        let job = self.job?;
        job.validate(max_payload)?;
        let schedule = CronSchedule::parse(&self.cron, &self.tz)?;
        let mut def = RecurringDef::new(self.id, schedule, JobTemplate::from_job(&job))?;
        def.misfire = self.misfire;
        Ok(def)
    }
}

/// Builds a recurring job from a client: see [`Client::recurring`].
#[derive(Debug)]
#[must_use = "nothing is stored until `.upsert(..)` is awaited"]
pub struct RecurringBuilder<'c> {
    client: &'c Client,
    id: String,
    cron: Option<String>,
    tz: String,
    misfire: Misfire,
}

impl RecurringBuilder<'_> {
    /// The cron expression: 5 fields, or 6 with seconds first; `@daily` and the like.
    pub fn cron(mut self, cron: impl Into<String>) -> Self {
        self.cron = Some(cron.into());
        self
    }

    /// The IANA time zone (default `UTC`).
    pub fn tz(mut self, tz: impl Into<String>) -> Self {
        self.tz = tz.into();
        self
    }

    /// What to do with missed occurrences (default: fire once).
    pub fn misfire(mut self, misfire: Misfire) -> Self {
        self.misfire = misfire;
        self
    }

    /// Adds or updates the recurring job to create `request`'s job at each occurrence.
    pub async fn upsert<J: Job>(self, request: JobRequest<J>) -> Result<()> {
        let cron = self.cron.ok_or_else(|| {
            Error::Config(format!(
                "recurring job {:?} has no schedule: add `.cron(\"0 3 * * *\")`",
                self.id
            ))
        })?;
        let recurring = Recurring::new(self.id, cron, request)
            .tz(self.tz)
            .misfire(self.misfire);
        self.client.upsert_recurring(recurring).await
    }
}

/// A recurring job with the state of the last job it created.
#[derive(Clone, Debug, serde::Serialize)]
#[non_exhaustive]
pub struct RecurringView {
    /// The recurring job.
    #[serde(flatten)]
    pub record: RecurringRecord,
    /// The state of its last job, if that job still exists.
    pub last_job_state: Option<JobState>,
}
