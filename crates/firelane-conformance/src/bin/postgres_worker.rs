//! Helper of the PostgreSQL multi-process tests (`tests/postgres_distributed.rs`): runs a
//! Firelane server over the PostgreSQL store named on the command line until it is killed, or
//! until SIGTERM, on which it shuts down gracefully and exits 0.
//!
//! ```text
//! postgres_worker 'postgres://postgres@127.0.0.1/test?schema=firelane_t_1'
//! ```

use std::process::ExitCode;
use std::time::Duration;

use firelane::{Job, JobContext, JobError};

/// Sleeps about a millisecond, then succeeds.
struct DistJob;

impl Job for DistJob {
    const NAME: &'static str = "pg_dist_job";
    type Args = u32;

    async fn run(&self, _ctx: JobContext, n: u32) -> Result<(), JobError> {
        if n.is_multiple_of(4) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(())
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: postgres_worker <postgres-url>");
        return ExitCode::from(2);
    };
    let storage = match firelane::postgres(&url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postgres_worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match firelane::Server::builder(storage)
        .register(DistJob)
        .workers(16)
        .lease(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(300))
        .watchdog_interval(Duration::from_millis(250))
        .poll_interval(Duration::from_millis(200))
        .shutdown_timeout(Duration::from_secs(5))
        .start()
        .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("postgres_worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("running as {}", server.id());
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("postgres_worker: cannot watch SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    term.recv().await;
    match server.shutdown().await {
        Ok(report) => {
            eprintln!("postgres_worker: stopped: {report:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("postgres_worker: shutdown failed: {e}");
            ExitCode::FAILURE
        }
    }
}
