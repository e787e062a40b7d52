//! `firelane dashboard`, and the dashboard the demo serves: the web dashboard on its own port.

use std::future::Future;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;
use firelane::Client;
use firelane_dashboard::Dashboard;
use tokio::task::JoinHandle;

use crate::{CliError, CliResult, store};

/// The address the dashboard listens on unless told otherwise.
pub(crate) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// The address to listen on. The dashboard answers requests from this machine only, so a
    /// non-loopback address serves nobody else; put it behind your application (the
    /// `firelane-dashboard` crate, with an authorization hook) to open it to others.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Hide and refuse every action (requeue, delete, pause, ...).
    #[arg(long)]
    read_only: bool,
    /// The name shown in the page header.
    #[arg(long, default_value = "Firelane")]
    title: String,
}

/// A dashboard being served.
pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// The overview's address.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Waits for the server to finish its open requests after the shutdown signal.
    pub(crate) async fn finished(self) -> CliResult {
        match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CliError::new(format!("the dashboard stopped with: {e}"))),
            Err(e) => Err(CliError::new(format!("the dashboard's task failed: {e}"))),
        }
    }
}

/// Binds `listen` and serves `dashboard` there until `shutdown` resolves.
pub(crate) async fn serve(
    dashboard: Dashboard,
    listen: &str,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> CliResult<Served> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| {
            CliError::new(format!(
                "cannot listen on {listen}: {e}; pass another address with --listen (such as 127.0.0.1:0 for any free port)"
            ))
        })?;
    let addr = listener
        .local_addr()
        .map_err(|e| CliError::new(format!("cannot read the listening address: {e}")))?;
    let app = dashboard
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await
    });
    Ok(Served { addr, task })
}

/// Resolves on Ctrl-C (SIGINT) or, on Unix, SIGTERM.
pub(crate) async fn stop_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c.await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await;
}

/// `firelane dashboard`: serves the dashboard over the store until Ctrl-C.
pub(crate) async fn run(url: &str, args: DashboardArgs) -> CliResult<ExitCode> {
    let storage = store::open(url).await?;
    let client = Client::new(Arc::clone(&storage));
    let dashboard = Dashboard::new(client)
        .read_only(args.read_only)
        .title(args.title);
    let served = serve(dashboard, &args.listen, stop_signal()).await?;
    eprintln!(
        "firelane dashboard: {} over {url}{} (local requests only). Ctrl-C stops it.",
        served.url(),
        if args.read_only { ", read-only" } else { "" }
    );
    served.finished().await?;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}
