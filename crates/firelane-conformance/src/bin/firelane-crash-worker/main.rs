//! Helper of the crash test (`tests/crash.rs`): runs a Firelane server with the `crash_job`
//! job over the SQLite store named on the command line, until it is killed.
//!
//! ```text
//! firelane-crash-worker sqlite:///tmp/jobs.db
//! ```

mod job;

use std::process::ExitCode;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: firelane-crash-worker <sqlite-url>");
        return ExitCode::from(2);
    };
    let storage = match firelane::sqlite(&url).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("firelane-crash-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match job::configure(firelane::Server::builder(storage))
        .start()
        .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("firelane-crash-worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("running as {}", server.id());
    // Runs until killed; the test sends SIGKILL, so nothing after this line ever runs.
    std::future::pending::<()>().await;
    drop(server);
    ExitCode::SUCCESS
}
