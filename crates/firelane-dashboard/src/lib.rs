//! Firelane's web dashboard: see and steer every job from the browser.
//!
//! [`Dashboard`] builds an axum [`Router`] that an application nests into its own web server
//! under any path: HTML pages (an overview with live graphs, jobs by state, a job's page with
//! its history, recurring jobs, servers, queues), the actions a person takes on jobs (requeue,
//! delete, cancel, enqueue now, trigger, pause and resume), and a JSON API for everything the
//! pages show. Its assets (htmx, uPlot, its own CSS and JavaScript) are compiled in: it needs
//! no network.
//!
//! ```no_run
//! use std::net::SocketAddr;
//! use firelane::Client;
//! use firelane_dashboard::Dashboard;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::new(firelane::sqlite("sqlite://jobs.db").await?);
//! let dashboard = Dashboard::new(client)
//!     .read_only(false)
//!     .authorize(|parts: &axum::http::request::Parts| {
//!         // Your own check: a session cookie, a header set by your proxy, ...
//!         parts.headers.get("x-admin").is_some_and(|v| v == "yes")
//!     })
//!     .title("My jobs");
//! let app = axum::Router::new().nest("/admin/jobs", dashboard.router());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Access
//!
//! - **With no [`Dashboard::authorize`] hook**, only requests from the local machine are
//!   answered: the peer address (axum's `ConnectInfo<SocketAddr>`) must be a loopback address.
//!   Serve the app with `into_make_service_with_connect_info::<SocketAddr>()` for that; without
//!   it every request is refused with a page that says so. Every page says that it is in this
//!   mode.
//! - **With a hook**, the hook alone decides: it sees each request's head (method, URI,
//!   headers, extensions) and returns whether to answer it. A request it refuses gets 403.
//! - **Read-only** ([`Dashboard::read_only`]): the action buttons are hidden and every action
//!   is refused with 403.
//!
//! Every action is a `POST` that carries the dashboard's anti-forgery token (the form field
//! `csrf`, or the header `X-Firelane-Csrf`) and, when the browser sends them, `Origin` and
//! `Sec-Fetch-Site` headers that say the request comes from the dashboard's own origin. The
//! token is random, made when the [`Dashboard`] is built, and only ever shown inside the
//! dashboard's own pages, which other sites cannot read.
//!
//! # Routes
//!
//! Paths are relative to where the router is mounted.
//!
//! | path | what |
//! | --- | --- |
//! | `GET /` | overview: counts per state, live graph of jobs per second, history graph |
//! | `GET /jobs/{state}` | jobs in a state (`enqueued`, `scheduled`, `processing`, `succeeded`, `failed`, `deleted`, `awaiting`), or `/jobs/retries`; query `queue`, `name`, `q`, `from`, `to`, `page` |
//! | `GET /search?q=` | jobs in any state whose id, queue or name is the text, or whose name or arguments contain it |
//! | `GET /job/{id}` | a job: arguments, options, parent, continuations, history |
//! | `GET /recurring`, `/servers`, `/queues` | recurring jobs, live servers, queues |
//! | `POST /job/{id}/requeue`, `/delete`, `/cancel` | act on one job |
//! | `POST /jobs/bulk` | `action` = `requeue`, `delete` or `enqueue`, with repeated `id` |
//! | `POST /recurring/{id}/trigger`, `/pause`, `/resume` | act on a recurring job |
//! | `POST /queues/{name}/pause`, `/resume` | pause or resume a queue |
//! | `GET /api/...` | the JSON API, below |
//! | `GET /assets/...` | compiled-in assets, cached for a year |
//!
//! # JSON API
//!
//! Behind the same access rules as the pages. Errors are `{"error": "..."}` with a 4xx or 5xx
//! status.
//!
//! | path | answer |
//! | --- | --- |
//! | `GET /api/stats` | `{"states": {"enqueued": 3, ..}, "queues": [{"name", "enqueued", "processing", "paused"}], "servers": 1, "succeeded_total": 10, "failed_total": 2}` |
//! | `GET /api/history?range=24h` (or `7d`) | `[{"hour": "2026-01-01T10:00:00Z", "succeeded": 5, "failed": 0}, ..]`, one entry per hour, oldest first, hours without jobs as zeros |
//! | `GET /api/jobs?state=&queue=&name=&q=&from=&to=&page=` | `{"jobs": [job, ..], "page": 1, "per_page": 20, "total": 42 or null, "has_next": true}`; `state` may also be `retries` |
//! | `GET /api/job/{id}` | `{"job": job, "history": [..], "continuations": [ids]}` |
//! | `GET /api/recurring` | recurring jobs, with `last_job_state` |
//! | `GET /api/servers` | live servers, with `last_heartbeat` |
//! | `GET /api/queues` | queues, as in `stats` |
//!
//! The shapes are those of [`firelane::Stats`], [`firelane::JobRecord`],
//! [`firelane::JobDetails`], [`firelane::RecurringView`] and [`firelane::ServerRecord`]
//! serialized with serde. `docs/dashboard.md` in the repository has examples.

mod access;
mod actions;
mod api;
mod assets;
mod context;
mod error;
mod pages;
mod views;

use std::fmt;
use std::sync::Arc;

use axum::Router;
use axum::http::request::Parts;
use axum::routing::{get, post};

use crate::context::Inner;

/// The authorization hook: sees a request's head, says whether to answer it.
type AuthorizeFn = dyn Fn(&Parts) -> bool + Send + Sync + 'static;

/// The dashboard: configure it, then mount [`Dashboard::router`] into an axum app.
///
/// See the [crate documentation](crate) for the access rules and the routes.
#[derive(Clone)]
pub struct Dashboard {
    client: firelane::Client,
    read_only: bool,
    authorize: Option<Arc<AuthorizeFn>>,
    title: String,
    csrf: String,
}

impl fmt::Debug for Dashboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Dashboard")
            .field("client", &self.client)
            .field("read_only", &self.read_only)
            .field("authorize", &self.authorize.as_ref().map(|_| "hook"))
            .field("title", &self.title)
            .finish_non_exhaustive()
    }
}

impl Dashboard {
    /// A dashboard over the store `client` talks to: read-write, answering local requests
    /// only, titled "Firelane".
    pub fn new(client: firelane::Client) -> Self {
        Self {
            client,
            read_only: false,
            authorize: None,
            title: "Firelane".to_owned(),
            csrf: context::new_token(),
        }
    }

    /// Hides every action and refuses every `POST` with 403 when `true`.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Lets `hook` decide which requests are answered, instead of answering only local ones.
    /// The hook sees the request's method, URI, headers and extensions (a session your own
    /// middleware put there, say); a request it refuses gets 403.
    pub fn authorize<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Parts) -> bool + Send + Sync + 'static,
    {
        self.authorize = Some(Arc::new(hook));
        self
    }

    /// The name shown in the header and the browser's title bar (default "Firelane").
    pub fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    /// The router, to [`Router::nest`] under a path of the application (`/jobs`,
    /// `/admin/jobs`) or to serve on its own. Every link it writes carries that path.
    pub fn router(&self) -> Router {
        let inner = Arc::new(Inner {
            client: self.client.clone(),
            read_only: self.read_only,
            authorize: self.authorize.clone(),
            title: self.title.clone(),
            csrf: self.csrf.clone(),
        });
        Router::new()
            .route("/", get(pages::overview))
            .route("/jobs/{state}", get(pages::jobs))
            .route("/jobs/bulk", post(actions::bulk))
            .route("/search", get(pages::search))
            .route("/job/{id}", get(pages::job))
            .route("/job/{id}/requeue", post(actions::requeue))
            .route("/job/{id}/delete", post(actions::delete))
            .route("/job/{id}/cancel", post(actions::cancel))
            .route("/recurring", get(pages::recurring))
            .route("/recurring/{id}/trigger", post(actions::trigger))
            .route("/recurring/{id}/pause", post(actions::pause_recurring))
            .route("/recurring/{id}/resume", post(actions::resume_recurring))
            .route("/servers", get(pages::servers))
            .route("/queues", get(pages::queues))
            .route("/queues/{name}/pause", post(actions::pause_queue))
            .route("/queues/{name}/resume", post(actions::resume_queue))
            .route("/api/stats", get(api::stats))
            .route("/api/history", get(api::history))
            .route("/api/jobs", get(api::jobs))
            .route("/api/job/{id}", get(api::job))
            .route("/api/recurring", get(api::recurring))
            .route("/api/servers", get(api::servers))
            .route("/api/queues", get(api::queues))
            .route("/assets/{file}", get(assets::serve))
            .fallback(pages::not_found)
            .layer(axum::middleware::from_fn_with_state(
                Arc::clone(&inner),
                access::guard,
            ))
            .with_state(inner)
    }
}
