//! The server's health check and, with feature `metrics`, the loop that samples the store's
//! queue figures into gauges.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;

use super::Shared;
use crate::health::{self, Health, ServerHealth};
use crate::{ServerId, Storage};

/// A server's readiness check, detached from the [`Server`](super::Server) so that a web
/// handler can hold it (it is cheap to clone) while `main` keeps the server to shut it down.
/// It does not keep the server alive: once the server is shut down or dropped, checks report
/// it as not running.
///
/// ```
/// # use firelane::{Job, JobContext, JobError, Server};
/// # struct Noop;
/// # impl Job for Noop {
/// #     const NAME: &'static str = "noop";
/// #     type Args = ();
/// #     async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> { Ok(()) }
/// # }
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), firelane::Error> {
/// let server = Server::builder(firelane::sqlite(":memory:").await?).register(Noop).start().await?;
/// let check = server.health_check();
///
/// // In the application's readiness route: 200 with the JSON when ready, else 503.
/// let health = check.check().await;
/// assert!(health.is_ready(), "{:?}", health.problems);
/// let json = serde_json::to_string(&health).expect("a health report serializes");
/// # let _ = json;
///
/// server.shutdown().await?;
/// assert!(!check.check().await.is_ready());
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct HealthCheck {
    shared: Weak<Shared>,
    storage: Arc<dyn Storage>,
    id: ServerId,
    workers: usize,
    max_heartbeat_age: Duration,
    timeout: Duration,
}

impl std::fmt::Debug for HealthCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthCheck")
            .field("server", &self.id)
            .field("max_heartbeat_age", &self.max_heartbeat_age)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl HealthCheck {
    pub(super) fn new(shared: &Arc<Shared>) -> Self {
        let c = &shared.config;
        Self {
            shared: Arc::downgrade(shared),
            storage: Arc::clone(&shared.storage),
            id: shared.info.id.clone(),
            workers: c.workers,
            max_heartbeat_age: (c.heartbeat * 3).min(shared.dead_after()),
            timeout: health::DEFAULT_HEALTH_TIMEOUT,
        }
    }

    /// How long to wait for the store (default [`DEFAULT_HEALTH_TIMEOUT`](crate::health::DEFAULT_HEALTH_TIMEOUT), 2 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs the checks: the store answers a cheap read within the timeout, the server is
    /// running with every loop alive, and the store holds a heartbeat from it younger than
    /// three heartbeat intervals (at most the dead-after silence).
    pub async fn check(&self) -> Health {
        let (store, servers) = health::probe_store(&self.storage, self.timeout).await;
        let (running, stopped_loops, running_jobs, loop_restarts) = match self.shared.upgrade() {
            Some(shared) => {
                let stopped = shared.stopped_loops();
                (
                    !shared.stop.is_cancelled() && stopped.is_empty(),
                    stopped,
                    shared.running_jobs(),
                    shared
                        .counters
                        .loop_restarts
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
            }
            None => (false, Vec::new(), 0, 0),
        };
        let last_heartbeat = servers
            .as_ref()
            .and_then(|s| s.iter().find(|r| r.info.id == self.id))
            .map(|r| r.last_heartbeat);
        let age = last_heartbeat.map(|at| (Utc::now() - at).to_std().unwrap_or(Duration::ZERO));
        let server = ServerHealth {
            id: self.id.clone(),
            running,
            stopped_loops,
            last_heartbeat,
            heartbeat_age_ms: age.map(health::millis),
            heartbeat_max_age_ms: health::millis(self.max_heartbeat_age),
            heartbeat_fresh: age.is_some_and(|a| a <= self.max_heartbeat_age),
            running_jobs,
            workers: self.workers,
            loop_restarts,
        };
        health::report(store, Some(server))
    }
}

/// Samples the store's figures into the queue and server gauges every metrics interval;
/// survives store errors like the other loops.
#[cfg(feature = "metrics")]
pub(super) async fn sample_gauges(shared: Arc<Shared>) {
    use crate::metrics::names;
    use std::collections::HashSet;

    // Queues in the last figures.
    let mut seen: HashSet<String> = HashSet::new();
    let mut failing = false;
    loop {
        match shared.storage.stats().await {
            Ok(stats) => {
                failing = false;
                let now = Utc::now();
                let mut present = HashSet::new();
                for q in &stats.queues {
                    let age = q
                        .head_enqueued_at
                        .filter(|_| q.enqueued > 0)
                        .map_or(0.0, |at| {
                            (now - at).to_std().unwrap_or(Duration::ZERO).as_secs_f64()
                        });
                    set_queue(
                        &q.name,
                        q.enqueued as f64,
                        q.processing as f64,
                        age,
                        q.paused,
                    );
                    present.insert(q.name.clone());
                }
                // This server's own queues always have their series, at zero when empty; a
                // queue reported before that left the figures (emptied) goes to zero too.
                for idle in shared.config.queues.iter().chain(seen.iter()) {
                    if !present.contains(idle) {
                        set_queue(idle, 0.0, 0.0, 0.0, false);
                    }
                }
                seen = present;
                for state in crate::JobState::ALL {
                    metrics::gauge!(names::JOBS, "state" => state.as_str())
                        .set(stats.count(state) as f64);
                }
                metrics::gauge!(names::SERVERS_ALIVE).set(stats.servers as f64);
            }
            Err(e) => {
                // Once per outage, not at every sample.
                if !failing {
                    tracing::warn!(error = %e, "reading the store's figures for metrics failed; the gauges keep their last values");
                }
                failing = true;
            }
        }
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(shared.config.metrics_interval) => {}
        }
    }
}

#[cfg(feature = "metrics")]
fn set_queue(queue: &str, depth: f64, processing: f64, oldest_age: f64, paused: bool) {
    use crate::metrics::names;

    let label = || ("queue", queue.to_owned());
    metrics::gauge!(names::QUEUE_DEPTH, &[label()]).set(depth);
    metrics::gauge!(names::QUEUE_PROCESSING, &[label()]).set(processing);
    metrics::gauge!(names::QUEUE_OLDEST_JOB_AGE, &[label()]).set(oldest_age);
    metrics::gauge!(names::QUEUE_PAUSED, &[label()]).set(if paused { 1.0 } else { 0.0 });
}
