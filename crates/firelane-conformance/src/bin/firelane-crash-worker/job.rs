//! The job of the crash test, shared by the worker binary and `tests/crash.rs`.

use std::time::Duration;

use firelane::{Job, JobContext, JobError};

/// Sleeps 1 to 3 ms, then succeeds.
pub(crate) struct CrashJob;

impl Job for CrashJob {
    const NAME: &'static str = "crash_job";
    type Args = u32;

    async fn run(&self, _ctx: JobContext, n: u32) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(1 + u64::from(n % 3))).await;
        Ok(())
    }
}

/// Lease, heartbeat and polling short enough for the crash test to finish in seconds.
pub(crate) fn configure(builder: firelane::ServerBuilder) -> firelane::ServerBuilder {
    builder
        .register(CrashJob)
        .workers(8)
        .lease(Duration::from_secs(1))
        .heartbeat_interval(Duration::from_millis(200))
        .watchdog_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
}
