//! A small sign-up service showing Firelane inside a web application, the way Hangfire lives
//! inside an ASP.NET application.
//!
//! - `POST /signup` creates a user row in the application's own `users` table and, **in the
//!   same database transaction**, enqueues a welcome email and a continuation that records it
//!   was sent (`SqliteStorage::enqueue_in`, `PostgresStorage::enqueue_in`): the user and both
//!   jobs exist together, or not at all.
//! - A nightly recurring job removes sign-ups never confirmed.
//! - A Firelane server runs in the same process (`--mode all`, the default) and stops with the
//!   web server on SIGINT/SIGTERM; or the two halves run as separate processes (`--mode web`:
//!   HTTP and enqueueing only; `--mode worker`: the Firelane server, and HTTP for its health
//!   and metrics only).
//! - The dashboard is mounted under `/admin/jobs`, behind the application's own login;
//!   `/healthz` answers readiness checks and `/metrics` Prometheus scrapes.
//!
//! SQLite by default (`web-app.db`); PostgreSQL when `DATABASE_URL` is a `postgres://` URL.
//! See `docs/web-app.md`.

mod db;
mod jobs;
mod web;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use firelane::{Client, Recurring, Server};
use tracing_subscriber::EnvFilter;

use crate::db::Db;
use crate::jobs::Mailer;

/// Command line and environment.
#[derive(Debug, Parser)]
#[command(
    name = "web-app",
    about = "A sign-up service with Firelane background jobs"
)]
struct Args {
    /// What this process runs.
    #[arg(long, value_enum, default_value_t = Mode::All)]
    mode: Mode,
    /// Where jobs and users live: `sqlite://file.db` or `postgres://user@host/db` (Firelane's
    /// tables go to the schema `firelane`, or `?schema=name`).
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://web-app.db")]
    database_url: String,
    /// Where the web server listens (port 0: any free port; the address is printed).
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The address users reach the app at, for the links in emails.
    #[arg(long, env = "PUBLIC_URL", default_value = "http://localhost:3000")]
    public_url: String,
    /// The administrator's password for the dashboard; without it nobody can log in.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// The time zone the nightly cleanup's cron expression reads in.
    #[arg(long, env = "CLEANUP_TIME_ZONE", default_value = "Europe/Istanbul")]
    cleanup_time_zone: String,
    /// Sign-ups not confirmed after this many days are removed by the nightly cleanup.
    #[arg(long, env = "UNCONFIRMED_DAYS", default_value_t = 7)]
    unconfirmed_days: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// The web server and a Firelane server in one process.
    All,
    /// The web server only: enqueues through a `Client`, runs no jobs.
    Web,
    /// A Firelane server only: runs the jobs; serves `/healthz` and `/metrics`, no pages.
    Worker,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(args: Args) -> Result<(), BoxError> {
    // Firelane's metrics go to the process's recorder: install it before the client and the
    // server are built (they keep the handles they make). Served at `/metrics`.
    let metrics = firelane::metrics::PrometheusEndpoint::install()?;
    let db = Db::open(&args.database_url).await?;
    tracing::info!(store = %db.describe(), mode = ?args.mode, "opened the database");

    // A Firelane server: the jobs it knows, the state they are given, the recurring jobs it
    // declares (upserted at start; a restart keeps the next occurrence), the queues it serves.
    let server = if args.mode == Mode::Web {
        None
    } else {
        let cleanup = Recurring::new(
            jobs::CLEANUP_ID,
            "0 3 * * *", // every night at 03:00 ...
            jobs::remove_unconfirmed_signups::args(args.unconfirmed_days),
        )
        .tz(&args.cleanup_time_zone); // ... in this time zone, daylight saving included
        let server = Server::builder(db.storage())
            .register(jobs::send_welcome_email)
            .register(jobs::record_welcome_sent)
            .register(jobs::remove_unconfirmed_signups)
            .state(Mailer::new(&args.public_url))
            .state(db.clone())
            .recurring(cleanup)
            .queues(["emails", "default"])
            .workers(8)
            .shutdown_timeout(Duration::from_secs(10))
            .start()
            .await?;
        // Tests and operators read this line to tell which server ran a job.
        println!("firelane server {} started", server.id());
        Some(server)
    };

    // The dashboard and the web pages need only a client: no server in `--mode web`.
    let client = Client::new(db.storage());
    // Readiness: with a server, the server's own check (store reachable, loops alive,
    // heartbeat fresh); without one, the client's (store reachable).
    let readiness = match &server {
        Some(server) => web::Readiness::Server(server.health_check()),
        None => web::Readiness::Client(client.clone()),
    };
    let ops = web::ops_router(db.clone(), readiness, &metrics);
    let app = if args.mode == Mode::Worker {
        // A worker serves no pages: only its health and metrics, for probes and scrapers.
        ops
    } else {
        let state = web::AppState::new(db.clone(), client, args.admin_password.clone());
        web::router(state).merge(ops)
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    // Stops accepting on SIGINT/SIGTERM and waits for the requests in flight...
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown_signal())
    .await?;

    // ... then the Firelane server stops fetching, tells running jobs to stop, waits for them
    // (up to the shutdown timeout) and hands back to the queue what did not finish.
    if let Some(server) = server {
        let report = server.shutdown().await?;
        tracing::info!(?report, "firelane server stopped");
    }
    db.close().await;
    Ok(())
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for Ctrl-C: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
