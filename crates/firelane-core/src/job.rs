//! The job model: what a store keeps about a job.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{ContinueOn, Error, JobId, JobState, LeaseId, RetryPolicy, ServerId};

/// The queue jobs go to when nothing else is said.
pub const DEFAULT_QUEUE: &str = "default";

/// The longest queue name accepted.
pub const MAX_QUEUE_NAME: usize = 64;

/// Checks a queue name: 1 to 64 characters of lowercase ASCII letters, digits, `_` and `-`.
///
/// ```
/// assert!(firelane_core::validate_queue("critical").is_ok());
/// assert!(firelane_core::validate_queue("Critical Jobs").is_err());
/// ```
pub fn validate_queue(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= MAX_QUEUE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidQueue(name.to_owned()))
    }
}

/// Where a new job starts.
#[derive(Clone, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub enum Initial {
    /// Straight into its queue.
    Enqueued,
    /// Scheduled for a time; a time already past enqueues at once.
    Scheduled {
        /// When it becomes due.
        at: DateTime<Utc>,
    },
    /// A continuation of another job.
    Awaiting {
        /// The job it follows.
        parent: JobId,
        /// Which of the parent's outcomes releases it.
        on: ContinueOn,
    },
}

/// A job to be created: what a client hands a store.
///
/// Built with [`NewJob::new`]; the fields are public so that a client can set options, and the
/// struct is `#[non_exhaustive]` so that fields can be added without breaking stores.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewJob {
    /// The job's id, made by the client so that it is known before the store answers.
    pub id: JobId,
    /// The stable name of the job type, which servers use to find its handler.
    pub name: String,
    /// The queue it goes to.
    pub queue: String,
    /// Higher runs sooner within a queue; equal priorities run in the order enqueued.
    pub priority: i32,
    /// The arguments as JSON text.
    pub args: String,
    /// How failures are retried.
    pub retry: RetryPolicy,
    /// How long one attempt may run before it is cancelled and counted as failed.
    pub timeout: Option<Duration>,
    /// Where it starts.
    pub initial: Initial,
    /// Propagation data of the trace that enqueued it (for instance W3C `traceparent` and
    /// `tracestate` as a JSON object), kept with the job and handed back to the server that
    /// runs it, so that the job's span can be linked to the request that caused it. Opaque to
    /// stores; at most [`MAX_TRACE_CONTEXT`] bytes.
    pub trace_context: Option<String>,
}

/// The longest [`NewJob::trace_context`] accepted, in bytes.
pub const MAX_TRACE_CONTEXT: usize = 4096;

impl NewJob {
    /// A job with default options: queue `default`, priority 0, Hangfire's retry policy, no
    /// timeout, enqueued at once.
    pub fn new(name: impl Into<String>, args: impl Into<String>) -> Self {
        Self {
            id: JobId::new(),
            name: name.into(),
            queue: DEFAULT_QUEUE.to_owned(),
            priority: 0,
            args: args.into(),
            retry: RetryPolicy::default(),
            timeout: None,
            initial: Initial::Enqueued,
            trace_context: None,
        }
    }

    /// Checks what a store cannot check for itself: the queue name, the job name and the size
    /// of the arguments.
    pub fn validate(&self, max_payload: usize) -> Result<(), Error> {
        validate_queue(&self.queue)?;
        if self.name.trim().is_empty() || self.name.len() > 255 {
            return Err(Error::InvalidJobName(self.name.clone()));
        }
        if self.args.len() > max_payload {
            return Err(Error::PayloadTooLarge {
                name: self.name.clone(),
                size: self.args.len(),
                limit: max_payload,
            });
        }
        if let Some(trace) = &self.trace_context
            && trace.len() > MAX_TRACE_CONTEXT
        {
            return Err(Error::PayloadTooLarge {
                name: format!("{} (trace context)", self.name),
                size: trace.len(),
                limit: MAX_TRACE_CONTEXT,
            });
        }
        Ok(())
    }
}

/// What a store answers for each job it created.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[non_exhaustive]
pub struct Enqueued {
    /// The job's id.
    pub id: JobId,
    /// The state it was created in (a continuation of an already finished parent may start
    /// enqueued or deleted).
    pub state: JobState,
}

impl Enqueued {
    /// Builds the answer (for stores).
    pub const fn new(id: JobId, state: JobState) -> Self {
        Self { id, state }
    }
}

/// A job as a store keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobRecord {
    /// Its id.
    pub id: JobId,
    /// The job type's name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// Its priority within the queue.
    pub priority: i32,
    /// Arguments, as JSON text.
    pub args: String,
    /// Current state.
    pub state: JobState,
    /// Attempts counted so far (the running one included).
    pub attempt: u32,
    /// The retry policy.
    pub retry: RetryPolicy,
    /// The per-attempt timeout.
    pub timeout: Option<Duration>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it entered its current state.
    pub state_at: DateTime<Utc>,
    /// When a scheduled job is due.
    pub due_at: Option<DateTime<Utc>>,
    /// The job a continuation follows, and on which outcome.
    pub parent: Option<(JobId, ContinueOn)>,
    /// The server holding a processing job.
    pub lease_server: Option<ServerId>,
    /// When a processing job's lease lapses unless extended.
    pub lease_until: Option<DateTime<Utc>>,
    /// The reason given for the current state.
    pub reason: Option<String>,
    /// The error of the last failed attempt.
    pub last_error: Option<String>,
    /// The trace context it was enqueued with ([`NewJob::trace_context`]).
    pub trace_context: Option<String>,
}

impl JobRecord {
    /// Builds a record (for stores reading one back).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: JobId,
        name: String,
        queue: String,
        priority: i32,
        args: String,
        state: JobState,
        attempt: u32,
        retry: RetryPolicy,
        created_at: DateTime<Utc>,
        state_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            name,
            queue,
            priority,
            args,
            state,
            attempt,
            retry,
            timeout: None,
            created_at,
            state_at,
            due_at: None,
            parent: None,
            lease_server: None,
            lease_until: None,
            reason: None,
            last_error: None,
            trace_context: None,
        }
    }
}

/// One line of a job's history: a state it entered, when, why, and for an attempt's end, on
/// which server, how long it ran and what error it gave.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HistoryEntry {
    /// The state entered.
    pub state: JobState,
    /// When.
    pub at: DateTime<Utc>,
    /// Why, in words.
    pub reason: Option<String>,
    /// The server involved, if any.
    pub server: Option<ServerId>,
    /// The attempt number at that time.
    pub attempt: u32,
    /// How long the attempt ran, for entries that end one.
    pub duration: Option<Duration>,
    /// The attempt's error (message and cause chain, or panic message).
    pub error: Option<String>,
}

impl HistoryEntry {
    /// A history entry with just a state and a time (for stores).
    pub fn new(state: JobState, at: DateTime<Utc>, attempt: u32) -> Self {
        Self {
            state,
            at,
            reason: None,
            server: None,
            attempt,
            duration: None,
            error: None,
        }
    }

    /// The start of an attempt (a `Processing` entry), for stores that keep it beside the
    /// attempt's end rather than as an entry of its own.
    pub fn attempt_started(at: DateTime<Utc>, attempt: u32, server: Option<String>) -> Self {
        let mut entry = Self::new(JobState::Processing, at, attempt);
        entry.server = server.map(ServerId::from_string);
        entry
    }

    /// The end of a job's last attempt, for stores that keep it in the job's row (`server`
    /// and `duration`; its state, time, reason and attempt are the job's own).
    pub fn kept_in_row(job: &JobRecord, server: String, duration: Option<Duration>) -> Self {
        let mut entry = Self::new(job.state, job.state_at, job.attempt);
        entry.reason = job.reason.clone();
        entry.server = Some(ServerId::from_string(server));
        entry.duration = duration;
        entry
    }
}

/// A job with its whole history and its continuations.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobDetails {
    /// The job.
    pub job: JobRecord,
    /// Every state it entered, oldest first.
    pub history: Vec<HistoryEntry>,
    /// Jobs that continue it.
    pub continuations: Vec<JobId>,
}

impl JobDetails {
    /// Builds the details (for stores).
    pub fn new(job: JobRecord, history: Vec<HistoryEntry>, continuations: Vec<JobId>) -> Self {
        Self {
            job,
            history,
            continuations,
        }
    }
}

/// A job handed to a server by a fetch: everything the server needs to run it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct FetchedJob {
    /// Its id.
    pub id: JobId,
    /// The job type's name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// Its priority.
    pub priority: i32,
    /// Arguments, as JSON text.
    pub args: String,
    /// This attempt's number, counted from 1.
    pub attempt: u32,
    /// The retry policy.
    pub retry: RetryPolicy,
    /// The per-attempt timeout.
    pub timeout: Option<Duration>,
    /// The lease this attempt holds.
    pub lease: LeaseId,
    /// When the job was created.
    pub created_at: DateTime<Utc>,
    /// When it last entered its queue.
    pub enqueued_at: DateTime<Utc>,
    /// The trace context it was enqueued with ([`NewJob::trace_context`]).
    pub trace_context: Option<String>,
}

impl FetchedJob {
    /// Builds a fetched job (for stores).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: JobId,
        name: String,
        queue: String,
        priority: i32,
        args: String,
        attempt: u32,
        retry: RetryPolicy,
        timeout: Option<Duration>,
        lease: LeaseId,
        created_at: DateTime<Utc>,
        enqueued_at: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            name,
            queue,
            priority,
            args,
            attempt,
            retry,
            timeout,
            lease,
            created_at,
            enqueued_at,
            trace_context: None,
        }
    }

    /// Sets the trace context (for stores).
    pub fn with_trace_context(mut self, trace_context: Option<String>) -> Self {
        self.trace_context = trace_context;
        self
    }
}
