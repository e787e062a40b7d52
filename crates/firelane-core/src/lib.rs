//! The core of Firelane: the job model, job states, the [`Storage`] trait every backend
//! implements, the retry policy and the error type.
//!
//! Applications use the `firelane` crate, which re-exports what they need from here. Backend
//! crates (`firelane-sqlite`, `firelane-postgres`, `firelane-redis`) depend on this crate only.

mod cron;
mod error;
mod id;
mod job;
mod recurring;
mod retry;
mod state;
mod storage;

pub use cron::{CronSchedule, parse_time_zone};
pub use error::{BoxError, Error, Result};
pub use id::{JobId, LeaseId, ServerId, hostname};
pub use job::{
    DEFAULT_QUEUE, Enqueued, FetchedJob, HistoryEntry, Initial, JobDetails, JobRecord,
    MAX_QUEUE_NAME, MAX_TRACE_CONTEXT, NewJob, validate_queue,
};
pub use recurring::{
    Firing, JobTemplate, MAX_RECURRING_ID, Misfire, RecurringDef, RecurringRecord, plan_firing,
    validate_recurring_id,
};
pub use retry::{RetryPolicy, hangfire_delay};
pub use state::{ContinuationDecision, ContinueOn, JobState};
pub use storage::{
    Change, Completion, CompletionStatus, FetchRequest, HOURLY_STATS_KEPT, Heartbeat,
    HeartbeatReply, HourlyStats, IntoStorage, JobQuery, Outcome, Promotion, QueueStats, Recovery,
    Retention, ServerInfo, ServerRecord, Signal, Stats, Storage, hour_of,
};

/// Re-exported so that backends name the same versions.
pub use async_trait::async_trait;
pub use chrono;
