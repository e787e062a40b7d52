//! Firelane in one file: define jobs, start a server on an embedded SQLite file, enqueue jobs of
//! every kind, and watch them run.
//!
//! ```text
//! cargo run -p firelane-examples --example quickstart
//! ```

use std::time::Duration;

use firelane::prelude::*;

/// A mail service the application already has; jobs get it as state.
#[derive(Clone)]
struct Mailer {
    from: &'static str,
}

/// Sends a welcome email. Fire-and-forget.
#[firelane::job(queue = "emails", retries = 5)]
async fn send_welcome_email(
    user_id: i64,
    State(mailer): State<Mailer>,
    ctx: JobContext,
) -> Result<(), JobError> {
    println!(
        "  [{}] welcome mail from {} to user {user_id}",
        ctx.id(),
        mailer.from
    );
    Ok(())
}

/// Records that something happened. Used as a continuation and as a delayed job.
#[firelane::job]
async fn audit(what: String) -> Result<(), JobError> {
    println!("  audit: {what}");
    Ok(())
}

/// Calls a flaky service: fails twice, then succeeds on the third attempt. Short retry delays
/// so that the example finishes quickly; the default is Hangfire's back-off.
#[firelane::job(retries = ["200ms", "400ms"])]
async fn flaky_call(ctx: JobContext) -> Result<(), JobError> {
    if ctx.attempt() < 3 {
        let error =
            std::io::Error::other(format!("service unavailable (attempt {})", ctx.attempt()));
        return Err(error.into());
    }
    println!("  flaky call went through on attempt {}", ctx.attempt());
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), firelane::Error> {
    tracing_subscriber::fmt()
        .with_env_filter("firelane=info")
        .init();

    // The store: a SQLite file, created on first use. `firelane::sqlite(":memory:")` works too.
    let storage = firelane::sqlite("sqlite://firelane-quickstart.db").await?;

    // A server runs jobs in the background; start it once, in your application's start-up.
    let server = Server::builder(storage.clone())
        .register(send_welcome_email)
        .register(audit)
        .register(flaky_call)
        .state(Mailer {
            from: "hello@example.com",
        })
        .queues(["emails", "default"])
        .workers(8)
        .start()
        .await?;

    // A client enqueues from anywhere: request handlers, scripts, other jobs.
    let client = Client::new(storage);
    let welcome = client.enqueue(send_welcome_email::args(42)).await?;
    let audited = client
        .continue_with(
            welcome,
            audit::args("welcome mail sent to user 42".into()),
            ContinueOn::Succeeded,
        )
        .await?;
    let later = client
        .schedule(
            audit::args("one second later".into()),
            Duration::from_secs(1),
        )
        .await?;
    let flaky = client.enqueue(flaky_call::args()).await?;

    for id in [welcome, audited, later, flaky] {
        while !client.job(id).await?.job.state.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    println!("\nhistory of the flaky job:");
    for entry in client.job(flaky).await?.history {
        println!(
            "  {:<10} attempt {} {}",
            entry.state.to_string(),
            entry.attempt,
            entry.error.unwrap_or_default()
        );
    }

    server.shutdown().await?;
    Ok(())
}
