//! `firelane`: run the demo, look at jobs and act on them, from the command line.

mod admin;
mod bench;
mod demo;
mod output;
mod recurring;
mod store;
mod web;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Firelane: persistent background jobs for Rust services.
#[derive(Debug, Parser)]
#[command(name = "firelane", version, propagate_version = true)]
struct Cli {
    /// The store: sqlite://path/to/file.db, sqlite::memory: or
    /// postgres://user@host:port/database[?schema=name].
    #[arg(
        long,
        env = "FIRELANE_STORE",
        default_value = "sqlite://firelane.db",
        global = true
    )]
    store: String,

    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a server with demo jobs of every kind and show them run (Ctrl-C stops it).
    Demo(demo::DemoArgs),
    /// Create or upgrade the store's schema.
    Migrate,
    /// Jobs per state and queue, and live servers.
    Stats,
    /// List, inspect, requeue and delete jobs.
    #[command(subcommand)]
    Jobs(admin::JobsCommand),
    /// Enqueue a job by name with JSON arguments.
    Enqueue(admin::EnqueueArgs),
    /// List, trigger, pause, resume and remove recurring jobs.
    #[command(subcommand)]
    Recurring(recurring::RecurringCommand),
    /// Serve the web dashboard over the store (Ctrl-C stops it).
    Dashboard(web::DashboardArgs),
    /// Measure a store: enqueue and drain throughput, pickup latency; prints one JSON line.
    Bench(bench::BenchArgs),
}

/// The name of the runtime's threads, where jobs run.
const WORKER_THREAD: &str = "firelane-worker";

/// An error for the person at the terminal: what went wrong and what to do.
#[derive(Debug)]
pub(crate) struct CliError(String);

impl CliError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<firelane::Error> for CliError {
    fn from(e: firelane::Error) -> Self {
        Self(e.to_string())
    }
}

pub(crate) type CliResult<T = ()> = Result<T, CliError>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let quiet_logs = !matches!(cli.command, Command::Demo(_));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new(if quiet_logs {
                    "error"
                } else {
                    "firelane=warn"
                })
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    // A job's panic is recorded as its failed attempt (with the message) and logged by the
    // server; the default hook would also print it over the demo's display. Panics elsewhere
    // keep the default report.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let on_worker = std::thread::current().name() == Some(WORKER_THREAD);
        if on_worker {
            tracing::debug!(%info, "panic in a job (recorded as its failed attempt)");
        } else {
            default_hook(info);
        }
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .thread_name(WORKER_THREAD)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(CliError(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> CliResult<ExitCode> {
    let out = output::Output::new(cli.json);
    match cli.command {
        Command::Demo(args) => demo::run(&cli.store, args, &out).await,
        Command::Migrate => admin::migrate(&cli.store, &out).await,
        Command::Stats => admin::stats(&cli.store, &out).await,
        Command::Jobs(cmd) => admin::jobs(&cli.store, cmd, &out).await,
        Command::Enqueue(args) => admin::enqueue(&cli.store, args, &out).await,
        Command::Bench(args) => bench::run(&cli.store, args).await,
        Command::Dashboard(args) => web::run(&cli.store, args).await,
        Command::Recurring(cmd) => recurring::run(&cli.store, cmd, &out).await,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
