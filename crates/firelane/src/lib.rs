//! Persistent background jobs for Rust services, in the spirit of Hangfire.
//!
//! Define a job, enqueue it from anywhere with a [`Client`], and run it in the background on a
//! [`Server`]: fire-and-forget, delayed, or as a continuation of another job, with retries.
//! Jobs live in a store shared by every server (embedded SQLite by default), so nothing is lost
//! when a process stops or crashes: a job held by a dead server returns to its queue when its
//! lease lapses.
//!
//! ```
//! use std::time::Duration;
//! use firelane::{Client, Job, JobContext, JobError, Server};
//!
//! struct SendWelcomeEmail;
//!
//! impl Job for SendWelcomeEmail {
//!     const NAME: &'static str = "send_welcome_email";
//!     type Args = i64;
//!
//!     async fn run(&self, ctx: JobContext, user_id: i64) -> Result<(), JobError> {
//!         println!("sending welcome email to user {user_id} (attempt {})", ctx.attempt());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), firelane::Error> {
//! let storage = firelane::sqlite(":memory:").await?;
//! let server = Server::builder(storage.clone()).register(SendWelcomeEmail).start().await?;
//!
//! let client = Client::new(storage);
//! let id = client.enqueue(SendWelcomeEmail::with_args(42)).await?;
//!
//! # let mut state = client.job(id).await?.job.state;
//! # while state != firelane::JobState::Succeeded {
//! #     tokio::time::sleep(Duration::from_millis(5)).await;
//! #     state = client.job(id).await?.job.state;
//! # }
//! server.shutdown().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! | feature  | default | what it adds |
//! |----------|---------|--------------|
//! | `sqlite` | yes     | the embedded SQLite store, [`sqlite`] |
//! | `postgres` | no    | the PostgreSQL store, `postgres` |
//! | `macros` | yes     | the [`job`] attribute: `#[firelane::job] async fn ..` |
//! | `opentelemetry` | no | a job's `firelane.job` span joins the trace of the span that enqueued it (W3C trace context stored with the job) |
//! | `metrics` | no     | job, queue and server metrics through the `metrics` facade: `metrics` |
//! | `prometheus` | no  | `metrics` plus a Prometheus endpoint to mount: `metrics::PrometheusEndpoint` |
//!
//! Every job runs in a `tracing` span `firelane.job`; [`Server::health`] and [`Client::health`]
//! answer readiness checks. `docs/observability.md` describes the spans, metrics and health
//! report.
//!
//! # How a job's life goes
//!
//! A job is `Enqueued` (or `Scheduled` for later, or `Awaiting` a parent), then `Processing` on
//! one server under a lease, then `Succeeded`, or after its retries `Failed`; a person or the
//! job itself can delete it (`Deleted`). Every change is recorded in the job's history
//! ([`Client::job`]). Delivery is at least once: write jobs so that running one twice is
//! harmless.

mod client;
mod extract;
pub mod health;
mod job;
#[cfg(feature = "metrics")]
pub mod metrics;
mod server;
mod telemetry;

pub use client::{Batch, Client, DEFAULT_MAX_PAYLOAD, Recurring, RecurringBuilder, RecurringView};
pub use extract::{FromContext, IntoJobError, IntoJobResult, JobArgument, State};
pub use health::Health;
pub use job::{
    CancelReason, Cancellation, Job, JobContext, JobError, JobOptions, JobRequest, StateType,
};
pub use server::{HealthCheck, Prefetch, Server, ServerBuilder, ShutdownReport};

pub use firelane_core::{
    BoxError, Change, ContinueOn, CronSchedule, Error, HistoryEntry, HourlyStats, Initial,
    IntoStorage, JobDetails, JobId, JobQuery, JobRecord, JobState, Misfire, NewJob, QueueStats,
    RecurringRecord, Result, Retention, RetryPolicy, ServerId, ServerRecord, Stats, Storage,
    hour_of, validate_queue,
};

/// What a backend implements, for those writing or testing one.
pub mod storage {
    pub use firelane_core::{
        Completion, CompletionStatus, Enqueued, FetchRequest, FetchedJob, Firing, Heartbeat,
        HeartbeatReply, JobTemplate, LeaseId, Outcome, Promotion, Recovery, RecurringDef,
        ServerInfo, Signal, Storage, plan_firing,
    };
}

use firelane_core::{
    Completion, CompletionStatus, DEFAULT_QUEUE, FetchRequest, FetchedJob, Heartbeat, LeaseId,
    Outcome, ServerInfo, Signal,
};

#[cfg(feature = "sqlite")]
pub use firelane_sqlite::SqliteStorage;

/// Opens (or creates) a SQLite store: `sqlite://path/to/file.db`, or `:memory:` for a store
/// that lives as long as the process.
#[cfg(feature = "sqlite")]
pub async fn sqlite(url: &str) -> Result<SqliteStorage> {
    SqliteStorage::connect(url).await
}

#[cfg(feature = "postgres")]
pub use firelane_postgres::{PostgresConfig, PostgresStorage};

/// Opens a PostgreSQL store: `postgres://user:password@host:port/database`, optionally
/// `?schema=name` (default `firelane`); the schema is created or upgraded. See
/// [`PostgresStorage`] for enqueueing inside your own transaction.
#[cfg(feature = "postgres")]
pub async fn postgres(url: &str) -> Result<PostgresStorage> {
    PostgresStorage::connect(url).await
}

/// Turns an `async fn` into a job: a unit struct of the function's name to
/// [`register`](ServerBuilder::register), `name::args(..)` to build a typed request, and a
/// [`Job`] impl whose arguments are stored as a JSON object of the function's parameters.
///
/// ```
/// use std::time::Duration;
/// use firelane::prelude::*;
///
/// #[derive(Clone)]
/// struct Mailer {
///     from: &'static str,
/// }
///
/// /// Welcomes a new user.
/// #[firelane::job(queue = "emails", retries = ["1s", "30s", "5m"], timeout = "2m")]
/// async fn send_welcome_email(
///     user_id: i64,                 // stored with the job
///     name: String,                 // stored with the job
///     State(mailer): State<Mailer>, // given to the server with `.state(..)`
///     ctx: JobContext,              // this run: id, attempt, cancellation
/// ) -> Result<(), JobError> {
///     println!("{}: welcome, {name} (user {user_id}, attempt {})", mailer.from, ctx.attempt());
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), firelane::Error> {
/// let storage = firelane::sqlite(":memory:").await?;
/// let server = Server::builder(storage.clone())
///     .register(send_welcome_email)
///     .state(Mailer { from: "hello@example.com" })
///     .queues(["emails"])
///     .start()
///     .await?;
///
/// let client = Client::new(storage);
/// let id = client.enqueue(send_welcome_email::args(42, "Ada".into())).await?;
///
/// let job = client.job(id).await?.job;
/// assert_eq!(job.name, "send_welcome_email");
/// assert_eq!(job.queue, "emails");
/// assert_eq!(job.args, r#"{"user_id":42,"name":"Ada"}"#);
/// # let mut state = job.state;
/// # while state != JobState::Succeeded {
/// #     tokio::time::sleep(Duration::from_millis(5)).await;
/// #     state = client.job(id).await?.job.state;
/// # }
/// server.shutdown().await?;
/// # Ok(())
/// # }
/// ```
///
/// # Parameters
///
/// A parameter whose type is [`State<T>`], [`JobContext`] or [`Cancellation`] (recognised by
/// the last segment of its path), or that is marked `#[inject]` (a type of yours implementing
/// [`FromContext`]), is **injected** when the job runs; it may be a pattern
/// (`State(mailer): State<Mailer>`).
///
/// Every other parameter is **stored**: it needs a plain name, which becomes the field's name
/// in the stored JSON, and an owned type that serde can write and read back ([`JobArgument`]).
/// A value that should not be stored (a connection, a client) is better passed as an id and
/// loaded inside the job, or given to the server as state. `#[serde(..)]` on a stored
/// parameter applies to its field: `#[serde(default)] locale: String` lets jobs enqueued before
/// the parameter existed still run.
///
/// The function returns `()` or `Result<(), E>` where `E` converts into a [`JobError`]
/// ([`IntoJobResult`]); `JobError`'s variants say whether to retry, snooze, fail or cancel.
///
/// # Options
///
/// | option | form | default |
/// | --- | --- | --- |
/// | `name` | `name = "welcome_email"`: the name stored with each job; keep it when the function is renamed or moved | the function's name |
/// | `queue` | `queue = "emails"`: 1 to 64 lowercase letters, digits, `_` and `-` | `"default"` |
/// | `priority` | `priority = 10`: an `i32`, higher runs sooner | 0 |
/// | `retries` | `retries = 5` (with the default back-off), or `retries = ["1s", "30s", "5m"]` (one delay per retry) | 10, with Hangfire's back-off |
/// | `timeout` | `timeout = "30s"`: a whole number with a unit `ms`, `s`, `m`, `h` or `d`, or an integer of seconds | none |
///
/// Options are checked when the code compiles. Each request can still override them:
/// `send_welcome_email::args(42, "Ada".into()).queue("urgent")`.
#[cfg(feature = "macros")]
pub use firelane_macros::job;

/// What the `#[job]` attribute's expansion names; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::extract::StoredArgument;
    pub use serde;
}

/// `t + d`, or the latest time chrono can hold when that overflows (a snooze or retry delay of
/// `Duration::MAX` means "far in the future", not a panic).
pub(crate) fn later(
    t: chrono::DateTime<chrono::Utc>,
    d: std::time::Duration,
) -> chrono::DateTime<chrono::Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
}

/// The names most programs need: `use firelane::prelude::*;`.
pub mod prelude {
    #[cfg(feature = "macros")]
    pub use crate::job;
    pub use crate::{
        Cancellation, Client, ContinueOn, Job, JobContext, JobError, JobId, JobOptions, JobState,
        Server, State,
    };
}

/// The README's code, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
