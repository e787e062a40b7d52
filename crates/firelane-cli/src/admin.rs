//! `migrate`, `stats`, `jobs ...` and `enqueue`.

use std::process::ExitCode;

use chrono::Utc;
use clap::{Args, Subcommand};
use firelane::{Change, Client, Initial, JobId, JobQuery, JobState, NewJob, RetryPolicy};
use serde::Serialize;

use crate::output::{Output, Table, parse_duration, parse_time, time};
use crate::{CliError, CliResult, store};

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// List jobs, newest first.
    List {
        /// Only jobs in this state (enqueued, scheduled, processing, succeeded, failed, deleted, awaiting).
        #[arg(long)]
        state: Option<String>,
        /// Only jobs in this queue.
        #[arg(long)]
        queue: Option<String>,
        /// Only jobs with this name.
        #[arg(long)]
        name: Option<String>,
        /// How many jobs at most.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// How many jobs to skip.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Show a job with its arguments and its whole history.
    Show {
        /// The job's id.
        id: String,
    },
    /// Enqueue jobs again (scheduled now; finished ones with fresh retries).
    Requeue {
        /// The jobs' ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Delete jobs (a running one is told through its cancellation token).
    Delete {
        /// The jobs' ids.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub(crate) struct EnqueueArgs {
    /// The job's name, as registered on a server.
    name: String,
    /// The job's arguments as JSON, such as '{"user_id": 42}'.
    #[arg(value_name = "JSON")]
    arguments: String,
    /// The queue.
    #[arg(long, default_value = firelane_default_queue())]
    queue: String,
    /// Higher runs sooner within the queue.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Retries after a failure (default: 10, Hangfire's back-off).
    #[arg(long)]
    retries: Option<u32>,
    /// Run after this long, such as 10m.
    #[arg(long = "in", conflicts_with = "at", value_name = "DURATION")]
    delay: Option<String>,
    /// Run at this time (RFC 3339, such as 2026-12-01T09:00:00Z).
    #[arg(long)]
    at: Option<String>,
}

const fn firelane_default_queue() -> &'static str {
    "default"
}

pub(crate) async fn migrate(url: &str, out: &Output) -> CliResult<ExitCode> {
    let storage = store::open(url).await?;
    if out.json {
        out.json(
            &serde_json::json!({ "store": url, "backend": storage.backend(), "migrated": true }),
        )?;
    } else {
        println!("{url}: the schema is up to date");
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) async fn stats(url: &str, out: &Output) -> CliResult<ExitCode> {
    let client = Client::new(store::open(url).await?);
    let stats = client.stats().await?;
    let servers = client.servers().await?;
    if out.json {
        out.json(&serde_json::json!({ "stats": stats, "servers": servers }))?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(["STATE", "JOBS"]);
    for s in JobState::ALL {
        t.row(vec![s.to_string(), stats.count(s).to_string()]);
    }
    t.print();
    if !stats.queues.is_empty() {
        println!();
        let mut q = Table::new(["QUEUE", "ENQUEUED", "PROCESSING"]);
        for queue in &stats.queues {
            q.row(vec![
                queue.name.clone(),
                queue.enqueued.to_string(),
                queue.processing.to_string(),
            ]);
        }
        q.print();
    }
    println!();
    let mut sv = Table::new(["SERVER", "QUEUES", "WORKERS", "LAST HEARTBEAT"]);
    for s in &servers {
        sv.row(vec![
            s.info.id.to_string(),
            s.info.queues.join(","),
            s.info.workers.to_string(),
            time(s.last_heartbeat),
        ]);
    }
    if servers.is_empty() {
        println!("no server is running");
    } else {
        sv.print();
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_ids(ids: &[String]) -> CliResult<Vec<JobId>> {
    ids.iter()
        .map(|s| s.parse::<JobId>().map_err(CliError::from))
        .collect()
}

pub(crate) async fn jobs(url: &str, cmd: JobsCommand, out: &Output) -> CliResult<ExitCode> {
    // Arguments are checked before the store is opened: a typo writes nothing.
    match cmd {
        JobsCommand::List {
            state,
            queue,
            name,
            limit,
            offset,
        } => {
            let mut query = JobQuery::new().page(offset, limit);
            if let Some(s) = state {
                query = query.state(s.parse::<JobState>()?);
            }
            if let Some(q) = queue {
                query = query.queue(q);
            }
            if let Some(n) = name {
                query = query.name(n);
            }
            let client = Client::new(store::open(url).await?);
            let jobs = client.list(query).await?;
            if out.json {
                out.json(&jobs)?;
            } else {
                let mut t = Table::new(["ID", "NAME", "QUEUE", "STATE", "ATTEMPT", "SINCE"]);
                for j in &jobs {
                    t.row(vec![
                        j.id.to_string(),
                        j.name.clone(),
                        j.queue.clone(),
                        j.state.to_string(),
                        j.attempt.to_string(),
                        time(j.state_at),
                    ]);
                }
                t.print();
                if jobs.is_empty() {
                    println!("(no jobs)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Show { id } => {
            let id: JobId = id.parse()?;
            let client = Client::new(store::open(url).await?);
            let details = client.job(id).await?;
            let no_server = details.job.state == JobState::Enqueued
                && !client.has_server_for(&details.job.name).await?;
            if out.json {
                #[derive(Serialize)]
                struct Shown<'a> {
                    #[serde(flatten)]
                    details: &'a firelane::JobDetails,
                    waiting_for_a_server_that_knows_it: bool,
                }
                out.json(&Shown {
                    details: &details,
                    waiting_for_a_server_that_knows_it: no_server,
                })?;
                return Ok(ExitCode::SUCCESS);
            }
            let j = &details.job;
            println!("job        {}", j.id);
            println!("name       {}", j.name);
            println!("queue      {} (priority {})", j.queue, j.priority);
            println!("state      {} since {}", j.state, time(j.state_at));
            println!("attempts   {} of {}", j.attempt, j.retry.max_attempts());
            println!("arguments  {}", j.args);
            if let Some(due) = j.due_at {
                println!("due        {}", time(due));
            }
            if let Some((parent, on)) = j.parent {
                println!("continues  {parent} (on {on})");
            }
            if let Some(e) = &j.last_error {
                println!("last error {e}");
            }
            if no_server {
                println!(
                    "note       no running server knows jobs named `{}`; it waits until one that registers it starts",
                    j.name
                );
            }
            for c in &details.continuations {
                println!("followed by {c}");
            }
            println!();
            let mut t = Table::new([
                "AT",
                "STATE",
                "ATTEMPT",
                "SERVER",
                "DURATION",
                "REASON / ERROR",
            ]);
            for h in &details.history {
                let note = match (&h.error, &h.reason) {
                    (Some(e), _) => e.clone(),
                    (None, Some(r)) => r.clone(),
                    (None, None) => String::new(),
                };
                t.row(vec![
                    time(h.at),
                    h.state.to_string(),
                    h.attempt.to_string(),
                    h.server
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    h.duration.map(|d| format!("{d:.1?}")).unwrap_or_default(),
                    note,
                ]);
            }
            t.print();
            Ok(ExitCode::SUCCESS)
        }
        JobsCommand::Requeue { ids } => act(url, &parse_ids(&ids)?, out, Action::Requeue).await,
        JobsCommand::Delete { ids } => act(url, &parse_ids(&ids)?, out, Action::Delete).await,
    }
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Requeue,
    Delete,
}

async fn act(url: &str, ids: &[JobId], out: &Output, action: Action) -> CliResult<ExitCode> {
    let client = Client::new(store::open(url).await?);
    // Every id must name a job before anything changes.
    for id in ids {
        client.job(*id).await?;
    }
    let changes = match action {
        Action::Requeue => client.requeue_many(ids).await?,
        Action::Delete => client.delete_many(ids).await?,
    };
    let verb = match action {
        Action::Requeue => "requeued",
        Action::Delete => "deleted",
    };
    let mut failed = false;
    let mut rows = Vec::new();
    for (id, change) in ids.iter().zip(changes) {
        let result = match change {
            Change::Changed { from } => format!("{verb} (was {from})"),
            Change::Refused { state } => {
                failed = true;
                format!("refused: the job is {state}")
            }
            Change::NotFound => {
                failed = true;
                "not found".to_owned()
            }
        };
        rows.push((id.to_string(), result));
    }
    if out.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(id, r)| serde_json::json!({ "id": id, "result": r }))
            .collect();
        out.json(&v)?;
    } else {
        let mut t = Table::new(["ID", "RESULT"]);
        for (id, r) in rows {
            t.row(vec![id, r]);
        }
        t.print();
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

pub(crate) async fn enqueue(url: &str, args: EnqueueArgs, out: &Output) -> CliResult<ExitCode> {
    let value: serde_json::Value = serde_json::from_str(&args.arguments).map_err(|e| {
        CliError::new(format!(
            "the arguments are not valid JSON ({e}); quote them for the shell, such as '{{\"user_id\": 42}}'"
        ))
    })?;
    firelane::validate_queue(&args.queue)?;
    let initial = match (&args.delay, &args.at) {
        (Some(d), _) => Initial::Scheduled {
            at: Utc::now()
                + chrono::Duration::from_std(parse_duration(d)?)
                    .map_err(|_| CliError::new(format!("{d} is too long")))?,
        },
        (None, Some(t)) => Initial::Scheduled { at: parse_time(t)? },
        (None, None) => Initial::Enqueued,
    };
    let mut job = NewJob::new(args.name, value.to_string());
    job.queue = args.queue;
    job.priority = args.priority;
    if let Some(r) = args.retries {
        job.retry = RetryPolicy::Count(r);
    }
    job.initial = initial;
    let client = Client::new(store::open(url).await?);
    let id = client.enqueue_raw(job).await?;
    if out.json {
        out.json(&serde_json::json!({ "id": id }))?;
    } else {
        println!("{id}");
    }
    Ok(ExitCode::SUCCESS)
}
