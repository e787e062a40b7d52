//! Defining jobs: the [`Job`] trait, what a running job receives ([`JobContext`]) and how it
//! reports failure ([`JobError`]).

use std::any::{Any, TypeId, type_name};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::{JobId, RetryPolicy};

/// A kind of background job: a stable name, a typed argument, options, and the code that runs.
///
/// The `#[firelane::job]` attribute writes this for an `async fn`; by hand it looks like this:
///
/// ```
/// use firelane::{Job, JobContext, JobError, JobOptions};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct Welcome {
///     user_id: i64,
/// }
///
/// struct SendWelcomeEmail;
///
/// impl Job for SendWelcomeEmail {
///     // Stored with every job: keep it when the code moves or the type is renamed.
///     const NAME: &'static str = "send_welcome_email";
///     type Args = Welcome;
///
///     fn options() -> JobOptions {
///         JobOptions::new().queue("emails").retries(5)
///     }
///
///     async fn run(&self, ctx: JobContext, args: Welcome) -> Result<(), JobError> {
///         println!("welcome, user {} (attempt {})", args.user_id, ctx.attempt());
///         Ok(())
///     }
/// }
/// ```
pub trait Job: Send + Sync + 'static {
    /// The job's stable name, stored with each job and used by servers to find this code.
    const NAME: &'static str;

    /// The arguments, stored as JSON.
    type Args: Serialize + DeserializeOwned + Send + 'static;

    /// Options for every job of this kind; each enqueue can override them.
    fn options() -> JobOptions {
        JobOptions::new()
    }

    /// The application state this job takes from the server ([`JobContext::state`]); a server
    /// that lacks one refuses to start.
    fn required_state() -> Vec<StateType> {
        Vec::new()
    }

    /// Runs one attempt.
    fn run(
        &self,
        ctx: JobContext,
        args: Self::Args,
    ) -> impl Future<Output = Result<(), JobError>> + Send;

    /// A request to run this job with `args`, to hand to a [`crate::Client`].
    fn with_args(args: Self::Args) -> JobRequest<Self>
    where
        Self: Sized,
    {
        JobRequest::new(args)
    }
}

/// A type of application state a job needs, as named by [`Job::required_state`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct StateType {
    pub(crate) id: TypeId,
    pub(crate) name: &'static str,
}

impl StateType {
    /// The state of type `T`.
    pub fn of<T: Any>() -> Self {
        Self {
            id: TypeId::of::<T>(),
            name: type_name::<T>(),
        }
    }
}

/// Options of a job: queue, priority, retries, timeout.
///
/// ```
/// use std::time::Duration;
/// use firelane::JobOptions;
///
/// let options = JobOptions::new()
///     .queue("reports")
///     .priority(10)
///     .retry_delays([Duration::from_secs(5), Duration::from_secs(60)])
///     .timeout(Duration::from_secs(300));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobOptions {
    pub(crate) queue: Option<String>,
    pub(crate) priority: Option<i32>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) timeout: Option<Duration>,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self::new()
    }
}

impl JobOptions {
    /// No options set: queue `default`, priority 0, Hangfire's retries, no timeout.
    pub const fn new() -> Self {
        Self {
            queue: None,
            priority: None,
            retry: None,
            timeout: None,
        }
    }

    /// The queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// The priority within the queue: higher runs sooner (default 0).
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = Some(priority);
        self
    }

    /// Retry this many times with Hangfire's back-off (default 10; 0 never retries).
    pub fn retries(mut self, retries: u32) -> Self {
        self.retry = Some(RetryPolicy::Count(retries));
        self
    }

    /// Retry once per delay, waiting that long before each retry.
    pub fn retry_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.retry = Some(RetryPolicy::Delays(delays.into_iter().collect()));
        self
    }

    /// The retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// How long one attempt may run before it is cancelled and counted as failed.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// These options, with every option set in `other` taking precedence.
    pub(crate) fn merged(&self, other: &JobOptions) -> JobOptions {
        JobOptions {
            queue: other.queue.clone().or_else(|| self.queue.clone()),
            priority: other.priority.or(self.priority),
            retry: other.retry.clone().or_else(|| self.retry.clone()),
            timeout: other.timeout.or(self.timeout),
        }
    }
}

/// A job of type `J` with its arguments and per-enqueue options, ready for a
/// [`crate::Client`].
pub struct JobRequest<J: Job> {
    pub(crate) args: J::Args,
    pub(crate) options: JobOptions,
    _job: PhantomData<fn() -> J>,
}

impl<J: Job> JobRequest<J> {
    /// A request with the job's default options.
    pub fn new(args: J::Args) -> Self {
        Self {
            args,
            options: JobOptions::new(),
            _job: PhantomData,
        }
    }

    /// Sends this job to another queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.options.queue = Some(queue.into());
        self
    }

    /// Overrides the priority.
    pub fn priority(mut self, priority: i32) -> Self {
        self.options.priority = Some(priority);
        self
    }

    /// Overrides the number of retries.
    pub fn retries(mut self, retries: u32) -> Self {
        self.options.retry = Some(RetryPolicy::Count(retries));
        self
    }

    /// Overrides the retries with explicit delays.
    pub fn retry_delays(mut self, delays: impl IntoIterator<Item = Duration>) -> Self {
        self.options.retry = Some(RetryPolicy::Delays(delays.into_iter().collect()));
        self
    }

    /// Overrides the timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.options.timeout = Some(timeout);
        self
    }

    /// The arguments.
    pub fn args(&self) -> &J::Args {
        &self.args
    }

    /// Serializes this request into the job a store keeps, enqueued at once, with the job
    /// type's options under the request's: for APIs that take a [`NewJob`](crate::NewJob),
    /// such as enqueueing inside an application's own database transaction. Set
    /// [`NewJob::initial`](crate::NewJob::initial) to schedule it or make it a continuation.
    ///
    /// ```
    /// # use firelane::{Job, JobContext, JobError};
    /// # struct Welcome;
    /// # impl Job for Welcome {
    /// #     const NAME: &'static str = "welcome";
    /// #     type Args = String;
    /// #     async fn run(&self, _: JobContext, _: String) -> Result<(), JobError> { Ok(()) }
    /// # }
    /// let job = Welcome::with_args("ada@example.com".to_owned()).queue("mail").into_new_job()?;
    /// assert_eq!(job.name, "welcome");
    /// assert_eq!(job.queue, "mail");
    /// assert_eq!(job.args, r#""ada@example.com""#);
    /// # Ok::<(), firelane::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) when the arguments do not serialize, and
    /// the errors of [`NewJob::validate`](crate::NewJob::validate) with
    /// [`DEFAULT_MAX_PAYLOAD`](crate::DEFAULT_MAX_PAYLOAD).
    pub fn into_new_job(self) -> crate::Result<crate::NewJob> {
        crate::client::build_job(self, crate::Initial::Enqueued, crate::DEFAULT_MAX_PAYLOAD)
    }
}

impl<J: Job> fmt::Debug for JobRequest<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JobRequest")
            .field("job", &J::NAME)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Why a job's cancellation token fired.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum CancelReason {
    /// The server is shutting down; an unfinished job is handed back and runs again.
    Shutdown,
    /// The attempt ran past its timeout.
    Timeout,
    /// A person deleted the job.
    Deleted,
    /// A person requeued the job while it ran.
    Requeued,
    /// The server lost the job's lease (it was presumed dead); another server may run it.
    LeaseLost,
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CancelReason::Shutdown => "the server is shutting down",
            CancelReason::Timeout => "the attempt timed out",
            CancelReason::Deleted => "the job was deleted",
            CancelReason::Requeued => "the job was requeued",
            CancelReason::LeaseLost => "the server lost the job's lease",
        })
    }
}

/// A running job's cancellation: fires when the job should stop, and says why.
///
/// Long jobs should check it between steps or `select!` on [`Cancellation::cancelled`].
#[derive(Clone, Debug, Default)]
pub struct Cancellation {
    token: CancellationToken,
    reason: Arc<OnceLock<CancelReason>>,
}

impl Cancellation {
    /// A token that has not fired.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fires the token with a reason; the first reason given is kept.
    pub fn cancel(&self, reason: CancelReason) {
        let _ = self.reason.set(reason);
        self.token.cancel();
    }

    /// Whether it fired.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Why it fired, once it has.
    pub fn reason(&self) -> Option<CancelReason> {
        self.reason.get().copied()
    }

    /// Waits until it fires.
    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// The underlying tokio token, to pass to libraries that take one.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }
}

/// Application state given to a server, looked up by type.
#[derive(Clone, Default)]
pub(crate) struct StateMap {
    values: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
}

impl StateMap {
    pub(crate) fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) {
        self.values.insert(TypeId::of::<T>(), Arc::new(value));
    }

    pub(crate) fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        self.values
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .cloned()
    }

    pub(crate) fn contains(&self, ty: &StateType) -> bool {
        self.values.contains_key(&ty.id)
    }
}

impl fmt::Debug for StateMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StateMap({} values)", self.values.len())
    }
}

/// What a running job receives: who it is, which attempt this is, its cancellation, and the
/// application state the server was given.
#[derive(Clone, Debug)]
pub struct JobContext {
    pub(crate) id: JobId,
    pub(crate) name: Arc<str>,
    pub(crate) queue: Arc<str>,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    pub(crate) cancellation: Cancellation,
    pub(crate) state: Arc<StateMap>,
}

impl JobContext {
    /// The job's id.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue it was fetched from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// This attempt's number, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The most attempts the job gets.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// Fires when the job should stop (shutdown, timeout, deleted, requeued, lease lost).
    pub fn cancellation(&self) -> &Cancellation {
        &self.cancellation
    }

    /// The application state of type `T` given to the server with `.state(..)`.
    ///
    /// A missing state fails the job at once: it is a configuration error, not a passing one.
    /// Declare it in [`Job::required_state`] to have the server check it at start instead.
    pub fn state<T: Clone + Send + Sync + 'static>(&self) -> Result<T, JobError> {
        self.state.get::<T>().ok_or_else(|| {
            JobError::fail(format!(
                "no application state of type `{}` was given to the server: add `.state(value)` to the server builder",
                type_name::<T>()
            ))
        })
    }

    /// A context for calling a job's `run` directly, in a unit test.
    pub fn for_test(id: JobId, attempt: u32) -> Self {
        Self {
            id,
            name: Arc::from("test"),
            queue: Arc::from(crate::DEFAULT_QUEUE),
            attempt,
            max_attempts: attempt,
            cancellation: Cancellation::new(),
            state: Arc::new(StateMap::default()),
        }
    }
}

/// How an attempt failed, and what should happen next.
///
/// Any error type converts into [`JobError::Retry`] with `?`, so the default for a failure is
/// to retry by the job's policy. The other variants say something else:
///
/// ```
/// use std::time::Duration;
/// use firelane::JobError;
///
/// fn check(balance: i64, rate_limited: bool) -> Result<(), JobError> {
///     if rate_limited {
///         return Err(JobError::snooze(Duration::from_secs(30))); // not counted as an attempt
///     }
///     if balance < 0 {
///         return Err(JobError::fail("account closed")); // no point retrying
///     }
///     Ok(())
/// }
/// ```
#[non_exhaustive]
pub enum JobError {
    /// A failed attempt, retried by the job's policy (then failed for good).
    Retry(crate::BoxError),
    /// Fail for good now, without retrying. The job is kept as failed for a person to look at.
    Fail(crate::BoxError),
    /// Run again after this long, without counting this attempt.
    Snooze(Duration),
    /// Stop and delete the job, with this reason.
    Cancel(String),
}

impl JobError {
    /// A failed attempt that retries.
    pub fn retry(error: impl Into<crate::BoxError>) -> Self {
        JobError::Retry(error.into())
    }

    /// A failure that does not retry.
    pub fn fail(error: impl Into<crate::BoxError>) -> Self {
        JobError::Fail(error.into())
    }

    /// Run again after `delay`, not counting this attempt.
    pub fn snooze(delay: Duration) -> Self {
        JobError::Snooze(delay)
    }

    /// Cancel the job: it ends deleted.
    pub fn cancel(reason: impl Into<String>) -> Self {
        JobError::Cancel(reason.into())
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for JobError {
    fn from(error: E) -> Self {
        JobError::Retry(Box::new(error))
    }
}

/// An error's message followed by its causes: `outer: inner: root`.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

impl fmt::Display for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retry(e) | JobError::Fail(e) => f.write_str(&error_chain(e.as_ref())),
            JobError::Snooze(d) => write!(f, "snoozed for {d:?}"),
            JobError::Cancel(reason) => write!(f, "cancelled: {reason}"),
        }
    }
}

impl fmt::Debug for JobError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JobError::Retry(e) => f.debug_tuple("Retry").field(e).finish(),
            JobError::Fail(e) => f.debug_tuple("Fail").field(e).finish(),
            JobError::Snooze(d) => f.debug_tuple("Snooze").field(d).finish(),
            JobError::Cancel(r) => f.debug_tuple("Cancel").field(r).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("sending mail")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn errors_convert_with_their_cause_chain() {
        let e: JobError = Outer(std::io::Error::other("connection refused")).into();
        assert!(matches!(e, JobError::Retry(_)));
        assert_eq!(e.to_string(), "sending mail: connection refused");
    }

    #[test]
    fn options_merge_per_enqueue_over_per_type() {
        let base = JobOptions::new().queue("emails").retries(5);
        let over = JobOptions::new().priority(3).retries(1);
        let m = base.merged(&over);
        assert_eq!(m.queue.as_deref(), Some("emails"));
        assert_eq!(m.priority, Some(3));
        assert_eq!(m.retry, Some(RetryPolicy::Count(1)));
    }

    #[test]
    fn cancellation_keeps_the_first_reason() {
        let c = Cancellation::new();
        assert!(!c.is_cancelled());
        c.cancel(CancelReason::Deleted);
        c.cancel(CancelReason::Shutdown);
        assert!(c.is_cancelled());
        assert_eq!(c.reason(), Some(CancelReason::Deleted));
    }
}
