//! The error type shared by every Firelane crate.

use crate::JobId;

/// A boxed error from a backend's driver.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with Firelane's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong talking to Firelane.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No job has this id.
    #[error("no job with id {0}")]
    JobNotFound(JobId),
    /// The job's state does not allow what was asked.
    #[error("cannot {action} job {id}: it is {state}")]
    Refused {
        /// The job.
        id: JobId,
        /// Its state.
        state: crate::JobState,
        /// What was asked (`delete`, `requeue`).
        action: &'static str,
    },
    /// A text that should be a job id is not one.
    #[error("{0:?} is not a job id (expected a UUID such as 0193a5a0-7c3e-7b52-8f6c-1d2e3f4a5b6c)")]
    InvalidJobId(String),
    /// A text that should name a job state does not.
    #[error(
        "{0:?} is not a job state (expected scheduled, enqueued, processing, succeeded, failed, deleted or awaiting)"
    )]
    InvalidState(String),
    /// A queue name breaks the rules.
    #[error(
        "invalid queue name {0:?}: use 1 to 64 lowercase letters, digits, '_' or '-' (such as \"default\" or \"emails\")"
    )]
    InvalidQueue(String),
    /// A job name is empty or too long.
    #[error("invalid job name {0:?}: a job name is 1 to 255 characters")]
    InvalidJobName(String),
    /// A job's arguments are larger than the client accepts.
    #[error(
        "arguments of job `{name}` are {size} bytes, over the limit of {limit} bytes: pass a reference to the data (an id, a path) instead of the data, or raise the client's payload limit"
    )]
    PayloadTooLarge {
        /// The job's name.
        name: String,
        /// The size of the serialized arguments.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A job's arguments could not be turned into JSON.
    #[error("cannot serialize the arguments of job `{name}`: {source}")]
    Serialize {
        /// The job's name.
        name: String,
        /// What serde said.
        #[source]
        source: serde_json::Error,
    },
    /// A cron expression that cannot be parsed, or never fires.
    #[error("invalid cron expression {expr:?}: {reason}")]
    InvalidCron {
        /// The expression.
        expr: String,
        /// Which field is wrong, and why.
        reason: String,
    },
    /// A time zone name that is not an IANA time zone.
    #[error("invalid time zone {tz:?}: {reason}")]
    InvalidTimeZone {
        /// The name given.
        tz: String,
        /// What to write instead.
        reason: String,
    },
    /// A recurring job id that breaks the rules.
    #[error(
        "invalid recurring job id {0:?}: use 1 to 200 printable characters without surrounding spaces"
    )]
    InvalidRecurringId(String),
    /// No recurring job has this id.
    #[error("no recurring job with id {0:?}")]
    RecurringNotFound(String),
    /// A setting is out of range or missing.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The store cannot be opened or reached.
    #[error("cannot open the store {url}: {reason}")]
    Connect {
        /// The store's address (without a password).
        url: String,
        /// What went wrong, and what to do about it.
        reason: String,
    },
    /// The store exists but is not Firelane's.
    #[error("{0} is not a Firelane store: {1}")]
    NotFirelane(String, String),
    /// The store was written by a newer Firelane.
    #[error(
        "the store's schema is at version {found}, newer than this build of Firelane knows ({known}); upgrade Firelane"
    )]
    SchemaTooNew {
        /// The store's version.
        found: i64,
        /// The newest version this build knows.
        known: i64,
    },
    /// A store's data could not be read back (corrupt or written by something else).
    #[error("corrupt data in the store: {0}")]
    Corrupt(String),
    /// The backend failed.
    #[error("store error during {op}: {source}")]
    Backend {
        /// The operation that failed.
        op: &'static str,
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The server or store is shutting down or has stopped.
    #[error("{0} has shut down")]
    Shutdown(&'static str),
}

impl Error {
    /// Wraps a driver error that happened during `op`.
    pub fn backend(op: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            op,
            source: source.into(),
        }
    }
}
