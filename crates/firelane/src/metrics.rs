//! Job, queue and server metrics, recorded through the [`metrics`](https://docs.rs/metrics)
//! facade (feature `metrics`), and a Prometheus endpoint for them (feature `prometheus`).
//!
//! Firelane records into whatever recorder the application installed; with none installed,
//! recording costs next to nothing. Install the recorder **before** building the [`Client`]
//! and [`Server`]: each keeps the handles it made for a (job, queue) for its whole life.
//!
//! | name | type | labels | what |
//! | --- | --- | --- | --- |
//! | `firelane_jobs_enqueued_total` | counter | `job`, `queue` | jobs a [`Client`] created (enqueued, scheduled or continuations), counted once the store accepted them |
//! | `firelane_jobs_started_total` | counter | `job`, `queue` | attempts this server started |
//! | `firelane_jobs_succeeded_total` | counter | `job`, `queue` | attempts that succeeded |
//! | `firelane_jobs_retried_total` | counter | `job`, `queue` | attempts that failed and will be retried |
//! | `firelane_jobs_failed_total` | counter | `job`, `queue` | attempts that failed for good (no retries left, `JobError::Fail`, bad arguments) |
//! | `firelane_jobs_snoozed_total` | counter | `job`, `queue` | attempts that asked to run later (`JobError::Snooze`) |
//! | `firelane_jobs_cancelled_total` | counter | `job`, `queue` | attempts that cancelled their job (`JobError::Cancel`) |
//! | `firelane_jobs_handed_back_total` | counter | `job`, `queue` | attempts handed back unfinished at shutdown |
//! | `firelane_job_duration_seconds` | histogram | `job`, `queue`, `outcome` | how long attempts ran; `outcome` is `succeeded`, `retried`, `failed`, `snoozed`, `cancelled` or `handed_back` |
//! | `firelane_job_pickup_latency_seconds` | histogram | `job`, `queue` | from the moment a job entered its queue to the start of the attempt |
//! | `firelane_queue_depth` | gauge | `queue` | jobs waiting in the queue |
//! | `firelane_queue_processing` | gauge | `queue` | jobs of the queue processing now (running, or leased ahead and waiting for a worker) |
//! | `firelane_queue_oldest_job_age_seconds` | gauge | `queue` | age of the job next in line (0 when the queue is empty) |
//! | `firelane_queue_paused` | gauge | `queue` | 1 while the queue is paused, else 0 |
//! | `firelane_jobs` | gauge | `state` | jobs per state (`enqueued`, `scheduled`, `processing`, `succeeded`, `failed`, `deleted`, `awaiting`) |
//! | `firelane_servers_alive` | gauge | | servers heartbeating |
//!
//! The counters and histograms are recorded by the process that does the work: the client
//! for enqueues, the server for attempts (counted when the server decides the outcome). The
//! gauges are **store-wide** figures, read from `Storage::stats()` by every server every
//! [`ServerBuilder::metrics_interval`] (default 15 s): each server reports the same values, so
//! aggregate them with `max` (or pick one instance), never `sum`. A server always reports its
//! own queues (at zero when empty) and every other queue the store lists (those with jobs
//! waiting or running, or paused).
//!
//! [`Client`]: crate::Client
//! [`Server`]: crate::Server
//! [`ServerBuilder::metrics_interval`]: crate::ServerBuilder::metrics_interval

/// The metric names, as recorded.
pub mod names {
    /// Counter: jobs created by a client.
    pub const JOBS_ENQUEUED: &str = "firelane_jobs_enqueued_total";
    /// Counter: attempts started.
    pub const JOBS_STARTED: &str = "firelane_jobs_started_total";
    /// Counter: attempts that succeeded.
    pub const JOBS_SUCCEEDED: &str = "firelane_jobs_succeeded_total";
    /// Counter: attempts that failed and will be retried.
    pub const JOBS_RETRIED: &str = "firelane_jobs_retried_total";
    /// Counter: attempts that failed for good.
    pub const JOBS_FAILED: &str = "firelane_jobs_failed_total";
    /// Counter: attempts that snoozed.
    pub const JOBS_SNOOZED: &str = "firelane_jobs_snoozed_total";
    /// Counter: attempts that cancelled their job.
    pub const JOBS_CANCELLED: &str = "firelane_jobs_cancelled_total";
    /// Counter: attempts handed back at shutdown.
    pub const JOBS_HANDED_BACK: &str = "firelane_jobs_handed_back_total";
    /// Histogram (seconds): attempt durations, labelled with the outcome.
    pub const JOB_DURATION: &str = "firelane_job_duration_seconds";
    /// Histogram (seconds): from entering the queue to starting.
    pub const JOB_PICKUP_LATENCY: &str = "firelane_job_pickup_latency_seconds";
    /// Gauge: jobs waiting per queue.
    pub const QUEUE_DEPTH: &str = "firelane_queue_depth";
    /// Gauge: jobs running per queue.
    pub const QUEUE_PROCESSING: &str = "firelane_queue_processing";
    /// Gauge (seconds): age of the job next in line per queue.
    pub const QUEUE_OLDEST_JOB_AGE: &str = "firelane_queue_oldest_job_age_seconds";
    /// Gauge: 1 for a paused queue.
    pub const QUEUE_PAUSED: &str = "firelane_queue_paused";
    /// Gauge: jobs per state.
    pub const JOBS: &str = "firelane_jobs";
    /// Gauge: servers heartbeating.
    pub const SERVERS_ALIVE: &str = "firelane_servers_alive";
}

/// Gives the installed recorder a description and unit for each metric (the `# HELP` lines of
/// Prometheus). Servers call it when they start and [`PrometheusEndpoint::install`] calls it;
/// call it yourself after installing another recorder if you want the descriptions before then.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    use names::*;

    describe_counter!(
        JOBS_ENQUEUED,
        Unit::Count,
        "Jobs created by a client (enqueued, scheduled or continuations), once the store accepted them."
    );
    describe_counter!(JOBS_STARTED, Unit::Count, "Job attempts started.");
    describe_counter!(JOBS_SUCCEEDED, Unit::Count, "Job attempts that succeeded.");
    describe_counter!(
        JOBS_RETRIED,
        Unit::Count,
        "Job attempts that failed and will be retried."
    );
    describe_counter!(
        JOBS_FAILED,
        Unit::Count,
        "Job attempts that failed for good (no retries left, a permanent error, bad arguments)."
    );
    describe_counter!(
        JOBS_SNOOZED,
        Unit::Count,
        "Job attempts that asked to run again later."
    );
    describe_counter!(
        JOBS_CANCELLED,
        Unit::Count,
        "Job attempts that cancelled their job."
    );
    describe_counter!(
        JOBS_HANDED_BACK,
        Unit::Count,
        "Job attempts handed back unfinished when their server shut down."
    );
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "How long job attempts ran, by outcome."
    );
    describe_histogram!(
        JOB_PICKUP_LATENCY,
        Unit::Seconds,
        "Time from a job entering its queue to the start of its attempt."
    );
    describe_gauge!(
        QUEUE_DEPTH,
        Unit::Count,
        "Jobs waiting in the queue (store-wide; every server reports it)."
    );
    describe_gauge!(
        QUEUE_PROCESSING,
        Unit::Count,
        "Jobs of the queue running now (store-wide; every server reports it)."
    );
    describe_gauge!(
        QUEUE_OLDEST_JOB_AGE,
        Unit::Seconds,
        "Age of the job next in line in the queue, 0 when empty (store-wide; every server reports it)."
    );
    describe_gauge!(
        QUEUE_PAUSED,
        "1 while the queue is paused, else 0 (store-wide; every server reports it)."
    );
    describe_gauge!(
        JOBS,
        Unit::Count,
        "Jobs per state (store-wide; every server reports it)."
    );
    describe_gauge!(
        SERVERS_ALIVE,
        Unit::Count,
        "Servers heartbeating (store-wide; every server reports it)."
    );
}

#[cfg(feature = "prometheus")]
pub use prometheus::{InstallError, PrometheusEndpoint};

#[cfg(feature = "prometheus")]
mod prometheus {
    use std::time::Duration;

    use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

    /// Upper bounds of the duration histograms' buckets, in seconds: 1 ms to 1 hour.
    const DURATION_BUCKETS: &[f64] = &[
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        300.0, 900.0, 3600.0,
    ];

    /// How often the recorder's histogram buffers are folded when nobody scrapes.
    const UPKEEP_EVERY: Duration = Duration::from_secs(5);

    /// Why [`PrometheusEndpoint::install`] failed.
    #[derive(Debug, thiserror::Error)]
    #[non_exhaustive]
    pub enum InstallError {
        /// A process has one global metrics recorder, and one is installed already (another
        /// `install`, or another exporter). Keep the endpoint from the first install.
        #[error(
            "a metrics recorder is already installed in this process: install the Prometheus endpoint once and share it"
        )]
        AlreadyInstalled,
        /// The exporter refused its settings.
        #[error("cannot build the Prometheus exporter: {0}")]
        Build(String),
    }

    /// A Prometheus scrape endpoint for Firelane's metrics (and any other `metrics` the
    /// application records): the process's metrics recorder, installed once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let metrics = firelane::metrics::PrometheusEndpoint::install()?;
    /// // In the application's router, next to its own routes:
    /// let app: axum::Router = axum::Router::new().nest("/metrics", metrics.router());
    /// # let _ = app;
    /// // Or render the text yourself:
    /// let text: String = metrics.render();
    /// # let _ = text;
    /// // A second install is refused, not a panic.
    /// assert!(firelane::metrics::PrometheusEndpoint::install().is_err());
    /// # Ok(())
    /// # }
    /// ```
    #[derive(Clone, Debug)]
    pub struct PrometheusEndpoint {
        handle: PrometheusHandle,
    }

    impl PrometheusEndpoint {
        /// Installs a Prometheus recorder as the process's metrics recorder, with buckets for
        /// Firelane's duration histograms (1 ms to 1 h; other histograms are rendered as
        /// summaries), and describes Firelane's metrics. Call it once, at start-up, before
        /// building the client and server.
        ///
        /// # Errors
        ///
        /// [`InstallError::AlreadyInstalled`] when the process already has a recorder.
        pub fn install() -> Result<Self, InstallError> {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(super::names::JOB_DURATION.to_owned()),
                    DURATION_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(super::names::JOB_PICKUP_LATENCY.to_owned()),
                        DURATION_BUCKETS,
                    )
                })
                .map_err(|e| InstallError::Build(e.to_string()))?;
            let handle = builder.install_recorder().map_err(|e| match e {
                BuildError::FailedToSetGlobalRecorder(_) => InstallError::AlreadyInstalled,
                other => InstallError::Build(other.to_string()),
            })?;
            super::describe();
            // Histogram samples wait in buffers until upkeep folds them; a scrape does it too,
            // but a process nobody scrapes must not grow.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("firelane-metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "could not start the metrics upkeep thread; histograms are folded at each scrape only");
            }
            Ok(Self { handle })
        }

        /// The metrics in Prometheus's text exposition format (version 0.0.4).
        pub fn render(&self) -> String {
            self.handle.run_upkeep();
            self.handle.render()
        }

        /// An axum router answering `GET /` with [`render`](Self::render)'s text: nest it
        /// where the scraper looks, `app.nest("/metrics", endpoint.router())`. It has no
        /// access control of its own: put it behind the application's if the port is public.
        pub fn router(&self) -> axum::Router {
            let endpoint = self.clone();
            axum::Router::new().route(
                "/",
                axum::routing::get(move || {
                    let endpoint = endpoint.clone();
                    async move {
                        (
                            [(
                                axum::http::header::CONTENT_TYPE,
                                "text/plain; version=0.0.4; charset=utf-8",
                            )],
                            endpoint.render(),
                        )
                    }
                }),
            )
        }
    }
}
