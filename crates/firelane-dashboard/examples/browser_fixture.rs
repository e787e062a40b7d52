//! The browser tests' fixture: a Firelane server and the dashboard on a fresh SQLite file,
//! seeded with one job in every interesting state, served under the prefix `/admin/jobs` (and a
//! read-only copy under `/readonly/jobs`) on 127.0.0.1.
//!
//! ```text
//! cargo run -p firelane-dashboard --example browser_fixture -- [PORT] [DB_FILE]
//! ```
//!
//! `PORT` 0 (the default) takes a free port. `DB_FILE` must not exist yet (default: a new
//! temporary directory, removed at the end). Prints `listening on http://127.0.0.1:PORT/admin/jobs`
//! once every seeded job has settled, and shuts down cleanly when its standard input closes or
//! it gets SIGTERM or Ctrl-C.
//!
//! What the store holds when the line is printed (the browser tests rely on each of these):
//!
//! | job | queue | state |
//! | --- | --- | --- |
//! | `monthly_report { month: "2026-10" }` | default | failed, for good, on its first run (its error text holds HTML); succeeds on every later run, so a requeue succeeds |
//! | `echo { text }` × 5 (`hello 1`..`hello 4`, `invoice-4711 for ACME`) | default | succeeded |
//! | `echo { text: "<script>alert(1)</script>" }` | default | succeeded |
//! | `echo { text: "in an hour" }` | default | scheduled an hour ahead |
//! | `echo { text: "after the scheduled one" }` | default | awaiting the scheduled job |
//! | `sync_crm { account: "acme" }` | default | scheduled for its retry in an hour, after failing once |
//! | `long_export { rows }` | default | processing until cancelled or the fixture stops |
//! | `send_newsletter { user_id }` × 3 | emails | enqueued: no server serves `emails` |
//! | `echo { text: "deleted by hand" }` | default | deleted |
//!
//! and the recurring job `nightly-cleanup` (every hour at minute 0, UTC) whose job, `cleanup`,
//! succeeds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use firelane::prelude::*;
use firelane_dashboard::Dashboard;

/// Set once the monthly report has failed: every later run succeeds.
#[derive(Clone, Default)]
struct ReportFailedOnce(Arc<AtomicBool>);

/// Fails for good on its first run (no retries), succeeds on every later run.
#[firelane::job(retries = 0)]
async fn monthly_report(
    month: String,
    State(failed): State<ReportFailedOnce>,
) -> Result<(), JobError> {
    if failed.0.swap(true, Ordering::SeqCst) {
        Ok(())
    } else {
        Err(JobError::fail(format!(
            "report generator crashed for {month}: <img src=x onerror=alert(2)>"
        )))
    }
}

/// Always succeeds.
#[firelane::job]
async fn echo(text: String) -> Result<(), JobError> {
    let _ = text;
    Ok(())
}

/// Fails every time, retried after an hour: after its first run it waits in the retries list.
#[firelane::job(retries = ["1h"])]
async fn sync_crm(account: String) -> Result<(), JobError> {
    Err(JobError::retry(format!(
        "CRM answered 503 for account {account}"
    )))
}

/// Runs until it is cancelled (or the server stops).
#[firelane::job]
async fn long_export(rows: i64, ctx: JobContext) -> Result<(), JobError> {
    let _ = rows;
    ctx.cancellation().cancelled().await;
    Err(JobError::cancel("export stopped"))
}

/// In the `emails` queue, which the fixture's server does not serve.
#[firelane::job(queue = "emails")]
async fn send_newsletter(user_id: i64) -> Result<(), JobError> {
    let _ = user_id;
    Ok(())
}

/// The recurring job's work; always succeeds.
#[firelane::job]
async fn cleanup() -> Result<(), JobError> {
    Ok(())
}

/// Where the store lives, and whether the fixture made (and so removes) its directory.
struct StoreFile {
    path: PathBuf,
    temp_dir: Option<PathBuf>,
}

impl StoreFile {
    fn from_arg(arg: Option<String>) -> Result<Self, String> {
        match arg {
            Some(path) => {
                let path = PathBuf::from(path);
                if path.exists() {
                    return Err(format!(
                        "{} already exists: the fixture seeds a fresh store, give it a new file",
                        path.display()
                    ));
                }
                Ok(Self {
                    path,
                    temp_dir: None,
                })
            }
            None => {
                let dir = std::env::temp_dir().join(format!(
                    "firelane-browser-fixture-{}-{}",
                    std::process::id(),
                    nanos_now()
                ));
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                Ok(Self {
                    path: dir.join("firelane.db"),
                    temp_dir: Some(dir),
                })
            }
        }
    }

    fn url(&self) -> Result<String, String> {
        let path = self
            .path
            .to_str()
            .ok_or_else(|| format!("{} is not valid UTF-8", self.path.display()))?;
        if path.contains('?') {
            return Err(format!("{path:?}: a store path may not hold `?`"));
        }
        Ok(format!("sqlite://{path}"))
    }
}

impl Drop for StoreFile {
    fn drop(&mut self) {
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Nanoseconds since the epoch, to tell apart temporary directories of one process id.
fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("browser_fixture: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let port: u16 = match args.next() {
        Some(port) => port
            .parse()
            .map_err(|_| format!("{port:?} is not a port number (0 takes a free one)"))?,
        None => 0,
    };
    let store = StoreFile::from_arg(args.next())?;
    if let Some(extra) = args.next() {
        return Err(format!(
            "unexpected argument {extra:?}; usage: browser_fixture [PORT] [DB_FILE]"
        ));
    }

    let storage = firelane::sqlite(&store.url()?)
        .await
        .map_err(|e| format!("cannot open the store {}: {e}", store.path.display()))?;
    let server = Server::builder(storage.clone())
        .register(monthly_report)
        .register(echo)
        .register(sync_crm)
        .register(long_export)
        .register(send_newsletter)
        .register(cleanup)
        .state(ReportFailedOnce::default())
        .queues(["default"])
        .workers(4)
        .poll_interval(Duration::from_millis(200))
        .heartbeat_interval(Duration::from_secs(1))
        .shutdown_timeout(Duration::from_secs(5))
        .start()
        .await
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let client = Client::new(storage);

    let seeded = seed(&client).await;
    let result = match seeded {
        Ok(()) => serve(client, port).await,
        Err(e) => Err(e),
    };
    let shutdown = server
        .shutdown()
        .await
        .map_err(|e| format!("the server did not shut down cleanly: {e}"));
    drop(store);
    result.and(shutdown.map(|_| ()))
}

/// Fills the store and waits until every seeded job is where the table above says.
async fn seed(client: &Client) -> Result<(), String> {
    let e = |what: &str| {
        let what = what.to_owned();
        move |err: firelane::Error| format!("seeding: {what}: {err}")
    };

    let mut settled = Vec::new();
    for i in 1..=4 {
        let id = client
            .enqueue(echo::args(format!("hello {i}")))
            .await
            .map_err(e("echo"))?;
        settled.push((id, JobState::Succeeded));
    }
    let invoice = client
        .enqueue(echo::args("invoice-4711 for ACME".into()))
        .await
        .map_err(e("echo"))?;
    settled.push((invoice, JobState::Succeeded));
    let script = client
        .enqueue(echo::args("<script>alert(1)</script>".into()))
        .await
        .map_err(e("echo"))?;
    settled.push((script, JobState::Succeeded));

    let report = client
        .enqueue(monthly_report::args("2026-10".into()))
        .await
        .map_err(e("monthly_report"))?;
    settled.push((report, JobState::Failed));

    let later = client
        .schedule(echo::args("in an hour".into()), Duration::from_secs(3600))
        .await
        .map_err(e("scheduled echo"))?;
    settled.push((later, JobState::Scheduled));
    let awaiting = client
        .continue_with(
            later,
            echo::args("after the scheduled one".into()),
            ContinueOn::Succeeded,
        )
        .await
        .map_err(e("continuation"))?;
    settled.push((awaiting, JobState::Awaiting));

    let retrying = client
        .enqueue(sync_crm::args("acme".into()))
        .await
        .map_err(e("sync_crm"))?;

    let export = client
        .enqueue(long_export::args(250_000))
        .await
        .map_err(e("long_export"))?;
    settled.push((export, JobState::Processing));

    for user_id in [101, 102, 103] {
        let id = client
            .enqueue(send_newsletter::args(user_id))
            .await
            .map_err(e("send_newsletter"))?;
        settled.push((id, JobState::Enqueued));
    }

    let doomed = client
        .schedule(
            echo::args("deleted by hand".into()),
            Duration::from_secs(3600),
        )
        .await
        .map_err(e("echo to delete"))?;
    client.delete(doomed).await.map_err(e("delete"))?;
    settled.push((doomed, JobState::Deleted));

    client
        .recurring("nightly-cleanup")
        .cron("0 * * * *")
        .upsert(cleanup::args())
        .await
        .map_err(e("recurring nightly-cleanup"))?;

    let deadline = Instant::now() + Duration::from_secs(30);
    for (id, state) in settled {
        wait_for(client, id, deadline, |job| job.job.state == state)
            .await
            .map_err(|now| format!("seeding: job {id} is {now}, expected {state}"))?;
    }
    // The retry: failed once, now scheduled for its second attempt.
    wait_for(client, retrying, deadline, |job| {
        job.job.state == JobState::Scheduled && job.job.attempt >= 1
    })
    .await
    .map_err(|now| format!("seeding: job {retrying} is {now}, expected its retry scheduled"))?;
    Ok(())
}

/// Polls a job until `done` holds for it; on the deadline, gives back what it was.
async fn wait_for(
    client: &Client,
    id: JobId,
    deadline: Instant,
    done: impl Fn(&firelane::JobDetails) -> bool,
) -> Result<(), String> {
    loop {
        let details = client.job(id).await.map_err(|e| e.to_string())?;
        if done(&details) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} after {} attempt(s)",
                details.job.state, details.job.attempt
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Serves the dashboard until stdin closes or a stop signal comes.
async fn serve(client: Client, port: u16) -> Result<(), String> {
    let app = Router::new()
        .route(
            "/",
            axum::routing::get(|| async { "The dashboard is at /admin/jobs\n" }),
        )
        .nest(
            "/admin/jobs",
            Dashboard::new(client.clone())
                .title("Firelane browser fixture")
                .router(),
        )
        .nest(
            "/readonly/jobs",
            Dashboard::new(client)
                .title("Firelane browser fixture (read-only)")
                .read_only(true)
                .router(),
        );

    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .map_err(|e| format!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    println!("listening on http://{addr}/admin/jobs");

    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop_requested())
    .await
    .map_err(|e| format!("serving: {e}"))
}

/// Resolves when standard input closes (the test runner went away), or on SIGTERM or Ctrl-C.
async fn stop_requested() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    // A plain thread: reading stdin blocks, and it ends with the process.
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut sink);
        let _ = tx.send(());
    });
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    eprintln!("browser_fixture: cannot listen for SIGTERM: {e}");
                    let _ = rx.await;
                    return;
                }
            };
        tokio::select! {
            _ = rx => {}
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        tokio::select! {
            _ = rx => {}
            _ = ctrl_c => {}
        }
    }
}
