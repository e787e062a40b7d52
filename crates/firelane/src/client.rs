//! The [`Client`]: creates jobs and acts on them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::job::{Job, JobOptions, JobRequest};
use crate::{
    Change, ContinueOn, Error, Initial, IntoStorage, JobDetails, JobId, JobQuery, JobRecord,
    NewJob, Result, ServerRecord, Stats, Storage,
};

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
}

impl Client {
    /// A client over a store.
    pub fn new(storage: impl IntoStorage) -> Self {
        Self {
            storage: storage.into_storage(),
            max_payload: DEFAULT_MAX_PAYLOAD,
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
        self.storage.enqueue(jobs, Utc::now()).await?;
        Ok(ids)
    }

    /// Runs a job after `delay`.
    pub async fn schedule<J: Job>(&self, request: JobRequest<J>, delay: Duration) -> Result<JobId> {
        let at = Utc::now() + to_chrono(delay)?;
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

    /// Enqueues an already built job, for tools that know a job only by name (the CLI).
    pub async fn enqueue_raw(&self, job: NewJob) -> Result<JobId> {
        job.validate(self.max_payload)?;
        self.submit_one(job).await
    }

    /// Deletes a job. A processing job is told through its cancellation token.
    pub async fn delete(&self, id: JobId) -> Result<()> {
        let change = self
            .storage
            .delete(&[id], "deleted by a person", Utc::now())
            .await?;
        single_change(id, change, "delete")
    }

    /// Deletes many jobs; says for each what happened.
    pub async fn delete_many(&self, ids: &[JobId]) -> Result<Vec<Change>> {
        self.storage
            .delete(ids, "deleted by a person", Utc::now())
            .await
    }

    /// Enqueues a job again: a scheduled one now, a finished one with fresh retries.
    pub async fn requeue(&self, id: JobId) -> Result<()> {
        let change = self
            .storage
            .requeue(&[id], "requeued by a person", Utc::now())
            .await?;
        single_change(id, change, "requeue")
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

    /// A page of jobs.
    pub async fn list(&self, query: JobQuery) -> Result<Vec<JobRecord>> {
        self.storage.list_jobs(query).await
    }

    /// Counts per state and queue.
    pub async fn stats(&self) -> Result<Stats> {
        self.storage.stats().await
    }

    /// The servers that are alive.
    pub async fn servers(&self) -> Result<Vec<ServerRecord>> {
        self.storage.servers().await
    }

    fn new_job<J: Job>(&self, request: JobRequest<J>, initial: Initial) -> Result<NewJob> {
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
        job.validate(self.max_payload)?;
        Ok(job)
    }

    async fn submit_one(&self, job: NewJob) -> Result<JobId> {
        let id = job.id;
        self.storage.enqueue(vec![job], Utc::now()).await?;
        Ok(id)
    }
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

fn to_chrono(d: Duration) -> Result<chrono::Duration> {
    chrono::Duration::from_std(d).map_err(|_| Error::Config(format!("delay {d:?} is too long")))
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
        let at = Utc::now() + to_chrono(delay)?;
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
            self.client.storage.enqueue(self.jobs, Utc::now()).await?;
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
