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
//!
//! # How a job's life goes
//!
//! A job is `Enqueued` (or `Scheduled` for later, or `Awaiting` a parent), then `Processing` on
//! one server under a lease, then `Succeeded`, or after its retries `Failed`; a person or the
//! job itself can delete it (`Deleted`). Every change is recorded in the job's history
//! ([`Client::job`]). Delivery is at least once: write jobs so that running one twice is
//! harmless.

mod client;
mod job;
mod server;

pub use client::{Batch, Client, DEFAULT_MAX_PAYLOAD};
pub use job::{
    CancelReason, Cancellation, Job, JobContext, JobError, JobOptions, JobRequest, StateType,
};
pub use server::{Server, ServerBuilder, ShutdownReport};

pub use firelane_core::{
    BoxError, Change, ContinueOn, Error, HistoryEntry, Initial, IntoStorage, JobDetails, JobId,
    JobQuery, JobRecord, JobState, NewJob, QueueStats, Result, Retention, RetryPolicy, ServerId,
    ServerRecord, Stats, Storage, validate_queue,
};

/// What a backend implements, for those writing or testing one.
pub mod storage {
    pub use firelane_core::{
        Completion, CompletionStatus, Enqueued, FetchRequest, FetchedJob, Heartbeat,
        HeartbeatReply, LeaseId, Outcome, Promotion, Recovery, ServerInfo, Signal, Storage,
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

/// The names most programs need: `use firelane::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Client, ContinueOn, Job, JobContext, JobError, JobId, JobOptions, JobState, Server,
    };
}

/// The README's code, compiled as a doctest so that it stays true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
