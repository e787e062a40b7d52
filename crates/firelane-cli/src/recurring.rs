//! `firelane recurring list | trigger | pause | resume | remove`.

use std::process::ExitCode;

use clap::Subcommand;
use firelane::Client;

use crate::output::{Output, Table, time};
use crate::{CliResult, store};

#[derive(Debug, Subcommand)]
pub(crate) enum RecurringCommand {
    /// Every recurring job with its schedule, next and last run, last job and last error.
    List,
    /// Enqueue one run now, without moving the schedule.
    Trigger {
        /// The recurring job's id.
        id: String,
    },
    /// Stop creating jobs until resumed.
    Pause {
        /// The recurring job's id.
        id: String,
    },
    /// Start again from the next occurrence (missed ones are not fired).
    Resume {
        /// The recurring job's id.
        id: String,
    },
    /// Remove it (the jobs it created stay).
    Remove {
        /// The recurring job's id.
        id: String,
    },
}

pub(crate) async fn run(url: &str, cmd: RecurringCommand, out: &Output) -> CliResult<ExitCode> {
    let client = Client::new(store::open(url).await?);
    let done = |what: &str, id: &str| -> CliResult<ExitCode> {
        if out.json {
            out.json(&serde_json::json!({ "id": id, "result": what }))?;
        } else {
            println!("{id}: {what}");
        }
        Ok(ExitCode::SUCCESS)
    };
    match cmd {
        RecurringCommand::List => {
            let all = client.recurring_jobs().await?;
            if out.json {
                out.json(&all)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new([
                "ID",
                "CRON",
                "TIME ZONE",
                "JOB",
                "NEXT RUN",
                "LAST RUN",
                "LAST JOB",
                "STATUS",
            ]);
            for v in &all {
                let r = &v.record;
                let status = match (&r.last_error, r.paused) {
                    (Some(e), _) => format!("error: {e}"),
                    (None, true) => "paused".to_owned(),
                    (None, false) => "active".to_owned(),
                };
                t.row(vec![
                    r.id.clone(),
                    r.cron.clone(),
                    r.time_zone.clone(),
                    r.job.name.clone(),
                    r.next_run.map(time).unwrap_or_else(|| "-".into()),
                    r.last_run.map(time).unwrap_or_else(|| "-".into()),
                    match (r.last_job, v.last_job_state) {
                        (Some(id), Some(s)) => format!("{id} ({s})"),
                        (Some(id), None) => format!("{id} (expired)"),
                        (None, _) => "-".into(),
                    },
                    status,
                ]);
            }
            t.print();
            if all.is_empty() {
                println!("(no recurring jobs)");
            }
            Ok(ExitCode::SUCCESS)
        }
        RecurringCommand::Trigger { id } => {
            let job = client.trigger(&id).await?;
            done(&format!("enqueued job {job}"), &id)
        }
        RecurringCommand::Pause { id } => {
            client.pause_recurring(&id).await?;
            done("paused", &id)
        }
        RecurringCommand::Resume { id } => {
            client.resume_recurring(&id).await?;
            done("resumed", &id)
        }
        RecurringCommand::Remove { id } => {
            client.remove_recurring(&id).await?;
            done("removed", &id)
        }
    }
}
