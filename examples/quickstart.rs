//! Firelane in one file: define jobs, start a server on an embedded SQLite file, enqueue jobs of
//! every kind, and watch them run.
//!
//! ```text
//! cargo run -p firelane-examples --example quickstart
//! ```

use std::time::Duration;

use firelane::prelude::*;
use serde::{Deserialize, Serialize};

/// A mail service the application already has; jobs get it as state.
#[derive(Clone)]
struct Mailer {
    from: &'static str,
}

#[derive(Serialize, Deserialize)]
struct Welcome {
    user_id: i64,
}

/// Sends a welcome email. Fire-and-forget.
struct SendWelcomeEmail;

impl Job for SendWelcomeEmail {
    const NAME: &'static str = "send_welcome_email";
    type Args = Welcome;

    fn options() -> JobOptions {
        JobOptions::new().queue("emails").retries(5)
    }

    async fn run(&self, ctx: JobContext, args: Welcome) -> Result<(), JobError> {
        let mailer: Mailer = ctx.state()?;
        println!(
            "  [{}] welcome mail from {} to user {}",
            ctx.id(),
            mailer.from,
            args.user_id
        );
        Ok(())
    }
}

/// Records that something happened. Used as a continuation.
struct Audit;

impl Job for Audit {
    const NAME: &'static str = "audit";
    type Args = String;

    async fn run(&self, _ctx: JobContext, what: String) -> Result<(), JobError> {
        println!("  audit: {what}");
        Ok(())
    }
}

/// Calls a flaky service: fails twice, then succeeds on the third attempt.
struct FlakyCall;

impl Job for FlakyCall {
    const NAME: &'static str = "flaky_call";
    type Args = ();

    fn options() -> JobOptions {
        // Short delays so that the example finishes quickly; the default is Hangfire's back-off.
        JobOptions::new().retry_delays([Duration::from_millis(200), Duration::from_millis(400)])
    }

    async fn run(&self, ctx: JobContext, _: ()) -> Result<(), JobError> {
        if ctx.attempt() < 3 {
            return Err(std::io::Error::other(format!(
                "service unavailable (attempt {})",
                ctx.attempt()
            ))
            .into());
        }
        println!("  flaky call went through on attempt {}", ctx.attempt());
        Ok(())
    }
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
        .register(SendWelcomeEmail)
        .register(Audit)
        .register(FlakyCall)
        .state(Mailer {
            from: "hello@example.com",
        })
        .queues(["emails", "default"])
        .workers(8)
        .start()
        .await?;

    // A client enqueues from anywhere: request handlers, scripts, other jobs.
    let client = Client::new(storage);
    let welcome = client
        .enqueue(SendWelcomeEmail::with_args(Welcome { user_id: 42 }))
        .await?;
    let audit = client
        .continue_with(
            welcome,
            Audit::with_args("welcome mail sent to user 42".into()),
            ContinueOn::Succeeded,
        )
        .await?;
    let later = client
        .schedule(
            Audit::with_args("one second later".into()),
            Duration::from_secs(1),
        )
        .await?;
    let flaky = client.enqueue(FlakyCall::with_args(())).await?;

    for id in [welcome, audit, later, flaky] {
        loop {
            let job = client.job(id).await?;
            if job.job.state.is_finished() {
                break;
            }
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
