//! `firelane demo`: a server with jobs of every kind, for a first look; `--smoke` checks that
//! each ends the way it should.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use firelane::{
    Client, ContinueOn, Job, JobContext, JobError, JobId, JobOptions, JobState, Recurring, Server,
    Storage,
};
use serde::{Deserialize, Serialize};

use crate::output::{Output, Table};
use crate::{CliError, CliResult, store};

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Seed a fixed set of jobs, wait until each reaches the state it should, print a table and
    /// exit: 0 if all did, 1 naming those that did not.
    #[arg(long)]
    smoke: bool,
    /// With --smoke: how long to wait for the jobs, in seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Worker slots.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Where the web dashboard listens (not with --smoke).
    #[arg(long, default_value = crate::web::DEFAULT_LISTEN)]
    listen: String,
    /// Do not serve the web dashboard.
    #[arg(long)]
    no_dashboard: bool,
}

/// Sends a welcome email (pretends to).
struct WelcomeEmail;

#[derive(Serialize, Deserialize)]
struct User {
    user_id: i64,
}

impl Job for WelcomeEmail {
    const NAME: &'static str = "demo_welcome_email";
    type Args = User;
    fn options() -> JobOptions {
        JobOptions::new().queue("emails")
    }
    async fn run(&self, _: JobContext, user: User) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(20 + (user.user_id as u64 % 7) * 15)).await;
        Ok(())
    }
}

/// Records an event; used as a continuation.
struct Audit;

impl Job for Audit {
    const NAME: &'static str = "demo_audit";
    type Args = String;
    async fn run(&self, _: JobContext, _event: String) -> Result<(), JobError> {
        Ok(())
    }
}

/// Charges a card through a flaky gateway: the first two attempts fail.
struct FlakyPayment;

impl Job for FlakyPayment {
    const NAME: &'static str = "demo_flaky_payment";
    type Args = u64;
    fn options() -> JobOptions {
        JobOptions::new().queue("critical").retry_delays([
            Duration::from_millis(300),
            Duration::from_millis(600),
            Duration::from_secs(1),
        ])
    }
    async fn run(&self, ctx: JobContext, order: u64) -> Result<(), JobError> {
        if ctx.attempt() < 3 {
            return Err(std::io::Error::other(format!(
                "payment gateway timed out for order {order} (attempt {})",
                ctx.attempt()
            ))
            .into());
        }
        Ok(())
    }
}

/// Has a bug: panics every time, and ends failed after one retry.
struct Panicky;

impl Job for Panicky {
    const NAME: &'static str = "demo_panicky";
    type Args = ();
    fn options() -> JobOptions {
        JobOptions::new().retry_delays([Duration::from_millis(200)])
    }
    async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> {
        // The bug: the stock list can be empty.
        let stock: Vec<u32> = Vec::new();
        let reserved = stock[0];
        tracing::info!(reserved, "reserved stock");
        Ok(())
    }
}

/// Refuses a card for good: fails at once, no retries.
struct DeclinedCard;

impl Job for DeclinedCard {
    const NAME: &'static str = "demo_declined_card";
    type Args = u64;
    async fn run(&self, _: JobContext, order: u64) -> Result<(), JobError> {
        Err(JobError::fail(format!("card declined for order {order}")))
    }
}

/// Builds a report slowly, stopping early when cancelled.
struct SlowReport;

impl Job for SlowReport {
    const NAME: &'static str = "demo_slow_report";
    type Args = u64;
    async fn run(&self, ctx: JobContext, millis: u64) -> Result<(), JobError> {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(millis)) => Ok(()),
            () = ctx.cancellation().cancelled() => Err(JobError::retry("report interrupted")),
        }
    }
}

/// Finds nothing to clean and cancels itself (it ends deleted).
struct Cleanup;

impl Job for Cleanup {
    const NAME: &'static str = "demo_cleanup";
    type Args = ();
    async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> {
        Err(JobError::cancel("nothing to clean up"))
    }
}

/// The demo's recurring job.
const RECURRING_ID: &str = "demo-every-two-seconds";

/// One seeded job and how it should end.
struct Expect {
    id: JobId,
    what: &'static str,
    state: JobState,
    check: fn(&firelane::JobDetails) -> Result<(), String>,
}

fn no_check(_: &firelane::JobDetails) -> Result<(), String> {
    Ok(())
}

async fn seed(client: &Client) -> CliResult<Vec<Expect>> {
    let mut b = client.batch();
    let welcome = b.enqueue(WelcomeEmail::with_args(User { user_id: 1 }))?;
    let audit = b.continue_with(
        welcome,
        Audit::with_args("welcome email sent to user 1".into()),
        ContinueOn::Succeeded,
    )?;
    let delayed = b.schedule(
        Audit::with_args("reminder two seconds later".into()),
        Duration::from_secs(2),
    )?;
    let flaky = b.enqueue(FlakyPayment::with_args(1001))?;
    let panicky = b.enqueue(Panicky::with_args(()))?;
    let declined = b.enqueue(DeclinedCard::with_args(1002))?;
    let on_failure = b.continue_with(
        declined,
        Audit::with_args("order 1002 needs a new card".into()),
        ContinueOn::Failed,
    )?;
    // Waits for the welcome email to fail, which it does not: it ends deleted.
    let skipped = b.continue_with(
        welcome,
        Audit::with_args("welcome email to user 1 bounced".into()),
        ContinueOn::Failed,
    )?;
    let slow = b.enqueue(SlowReport::with_args(1500))?;
    let cleanup = b.enqueue(Cleanup::with_args(()))?;
    b.submit().await?;
    Ok(vec![
        Expect {
            id: welcome,
            what: "fire-and-forget",
            state: JobState::Succeeded,
            check: no_check,
        },
        Expect {
            id: audit,
            what: "continuation on success",
            state: JobState::Succeeded,
            check: no_check,
        },
        Expect {
            id: delayed,
            what: "delayed 2 s",
            state: JobState::Succeeded,
            check: |d| {
                let scheduled = d.history.iter().any(|h| h.state == JobState::Scheduled);
                if scheduled {
                    Ok(())
                } else {
                    Err("it never waited as scheduled".into())
                }
            },
        },
        Expect {
            id: flaky,
            what: "fails twice, retries",
            state: JobState::Succeeded,
            check: |d| {
                if d.job.attempt == 3 {
                    Ok(())
                } else {
                    Err(format!(
                        "succeeded on attempt {}, expected 3",
                        d.job.attempt
                    ))
                }
            },
        },
        Expect {
            id: panicky,
            what: "panics, retried once",
            state: JobState::Failed,
            check: |d| match &d.job.last_error {
                Some(e) if e.contains("panicked") && d.job.attempt == 2 => Ok(()),
                other => Err(format!("attempt {} with error {other:?}", d.job.attempt)),
            },
        },
        Expect {
            id: declined,
            what: "fails at once",
            state: JobState::Failed,
            check: no_check,
        },
        Expect {
            id: on_failure,
            what: "continuation on failure",
            state: JobState::Succeeded,
            check: no_check,
        },
        Expect {
            id: skipped,
            what: "continuation not taken",
            state: JobState::Deleted,
            check: no_check,
        },
        Expect {
            id: slow,
            what: "slow (1.5 s)",
            state: JobState::Succeeded,
            check: no_check,
        },
        Expect {
            id: cleanup,
            what: "cancels itself",
            state: JobState::Deleted,
            check: no_check,
        },
    ])
}

async fn start_server(storage: &Arc<dyn Storage>, workers: usize) -> CliResult<Server> {
    Ok(Server::builder(Arc::clone(storage))
        .register(WelcomeEmail)
        .register(Audit)
        .register(FlakyPayment)
        .register(Panicky)
        .register(DeclinedCard)
        .register(SlowReport)
        .register(Cleanup)
        .recurring(Recurring::new(
            RECURRING_ID,
            "*/2 * * * * *",
            Audit::with_args("recurring tick every two seconds".into()),
        ))
        .queues(["critical", "emails", "default"])
        .workers(workers)
        .start()
        .await?)
}

pub(crate) async fn run(url: &str, args: DemoArgs, out: &Output) -> CliResult<ExitCode> {
    let storage = store::open(url).await?;
    let client = Client::new(Arc::clone(&storage));
    let server = start_server(&storage, args.workers).await?;
    if args.smoke {
        let result = smoke(&client, &args, out).await;
        server.shutdown().await?;
        return result;
    }
    let (stop_dashboard, stopped) = tokio::sync::oneshot::channel::<()>();
    let dashboard = if args.no_dashboard {
        None
    } else {
        let dashboard = firelane_dashboard::Dashboard::new(client.clone()).title("Firelane demo");
        let shutdown = async {
            let _ = stopped.await;
        };
        Some(crate::web::serve(dashboard, &args.listen, shutdown).await?)
    };
    let result = live(
        &client,
        url,
        dashboard.as_ref().map(crate::web::Served::url),
    )
    .await;
    let _ = stop_dashboard.send(());
    if let Some(dashboard) = dashboard {
        dashboard.finished().await?;
    }
    result?;
    let report = server.shutdown().await?;
    eprintln!(
        "stopped: {} running jobs finished, {} handed back to their queue",
        report.finished, report.handed_back
    );
    Ok(ExitCode::SUCCESS)
}

async fn smoke(client: &Client, args: &DemoArgs, out: &Output) -> CliResult<ExitCode> {
    let expects = seed(client).await?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let mut rows = Vec::new();
    loop {
        rows.clear();
        let mut done = 0;
        for e in &expects {
            let d = client.job(e.id).await?;
            let verdict = if d.job.state == e.state {
                (e.check)(&d)
                    .map(|()| "ok".to_owned())
                    .unwrap_or_else(|why| format!("WRONG: {why}"))
            } else if d.job.state.is_finished() {
                format!("WRONG: ended {}", d.job.state)
            } else {
                "waiting".to_owned()
            };
            if verdict != "waiting" {
                done += 1;
            }
            rows.push((e, d, verdict));
        }
        if done == expects.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The recurring job must have fired, and its job run.
    let recurring_verdict = loop {
        let view = client.recurring_job(RECURRING_ID).await?;
        if view.last_job_state == Some(JobState::Succeeded) {
            break "ok".to_owned();
        }
        if Instant::now() >= deadline {
            break format!(
                "WRONG: last job {:?} in state {:?}",
                view.record.last_job, view.last_job_state
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let failures: Vec<_> = rows.iter().filter(|(_, _, v)| v != "ok").collect();
    if out.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(e, d, verdict)| {
                serde_json::json!({
                    "id": e.id, "job": d.job.name, "kind": e.what,
                    "expected": e.state, "state": d.job.state,
                    "attempts": d.job.attempt, "verdict": verdict,
                })
            })
            .collect();
        out.json(&v)?;
    } else {
        let mut t = Table::new(["JOB", "KIND", "EXPECTED", "STATE", "ATTEMPTS", "VERDICT"]);
        for (e, d, verdict) in &rows {
            t.row(vec![
                d.job.name.clone(),
                e.what.to_owned(),
                e.state.to_string(),
                d.job.state.to_string(),
                d.job.attempt.to_string(),
                verdict.clone(),
            ]);
        }
        t.row(vec![
            RECURRING_ID.to_owned(),
            "recurring, every 2 s".to_owned(),
            "fired".to_owned(),
            String::new(),
            String::new(),
            recurring_verdict.clone(),
        ]);
        t.print();
    }
    if recurring_verdict != "ok" {
        return Err(CliError::new(format!(
            "smoke test failed: recurring job {RECURRING_ID}: {recurring_verdict}"
        )));
    }
    if failures.is_empty() {
        eprintln!("smoke test passed: {} jobs ended as expected", rows.len());
        Ok(ExitCode::SUCCESS)
    } else {
        let names: Vec<_> = failures
            .iter()
            .map(|(e, d, v)| format!("{} ({}, {}): {v}", d.job.name, e.what, e.id))
            .collect();
        Err(CliError::new(format!(
            "smoke test failed for {} of {} jobs: {}",
            failures.len(),
            rows.len(),
            names.join("; ")
        )))
    }
}

/// Seeds jobs, keeps adding some every few seconds, and shows the counts per state until
/// Ctrl-C.
async fn live(client: &Client, url: &str, dashboard: Option<String>) -> CliResult {
    seed(client).await?;
    eprintln!("firelane demo: a server on {url} with jobs of every kind. Ctrl-C stops it.");
    if let Some(dashboard) = dashboard {
        eprintln!("dashboard: {dashboard}");
    }
    eprintln!("look at jobs with: firelane --store {url} jobs list   (or stats, jobs show ID)");
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .map_err(|e| CliError::new(e.to_string()))?,
    );
    let mut ticks: u64 = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            r = &mut ctrl_c => {
                r.map_err(|e| CliError::new(format!("cannot listen for Ctrl-C: {e}")))?;
                break;
            }
            () = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        ticks += 1;
        if ticks.is_multiple_of(20) {
            // Every five seconds, a new wave of work.
            seed(client).await?;
        }
        let stats = client.stats().await?;
        let parts: Vec<String> = JobState::ALL
            .iter()
            .map(|s| format!("{s} {}", stats.count(*s)))
            .collect();
        bar.set_message(parts.join(" │ "));
        bar.tick();
    }
    bar.finish_and_clear();
    Ok(())
}
