//! Readiness reports for an application's health endpoint: [`crate::Server::health`] (store
//! reachable, server running, heartbeat fresh) and [`crate::Client::health`] (store reachable),
//! both [`Health`], which serializes to JSON.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{ServerId, ServerRecord, Storage};

/// How long a health check waits for the store by default.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// A readiness report. [`is_ready`](Health::is_ready) says whether to send traffic;
/// `problems` says why not, and the rest is there to look at.
///
/// Serialized (for a `/health/ready` route, say) it reads:
///
/// ```json
/// {"ready":true,"checked_at":"2026-05-01T10:00:00Z",
///  "store":{"reachable":true,"latency_ms":1,"error":null,"servers_alive":2},
///  "server":{"id":"…","running":true,"stopped_loops":[],"last_heartbeat":"2026-05-01T09:59:58Z",
///            "heartbeat_age_ms":2000,"heartbeat_max_age_ms":15000,"heartbeat_fresh":true,
///            "running_jobs":3,"workers":10,"loop_restarts":0},
///  "problems":[]}
/// ```
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct Health {
    /// Whether every check passed.
    pub ready: bool,
    /// When the checks ran.
    pub checked_at: DateTime<Utc>,
    /// The store check.
    pub store: StoreHealth,
    /// The server checks ([`crate::Server::health`] only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerHealth>,
    /// One line per failed check; empty when ready.
    pub problems: Vec<String>,
}

impl Health {
    /// Whether every check passed: the process can take traffic.
    pub fn is_ready(&self) -> bool {
        self.ready
    }
}

/// Whether the store answered a cheap read (the list of live servers) in time.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct StoreHealth {
    /// It answered in time, without an error.
    pub reachable: bool,
    /// How long the call took (or until it timed out), in milliseconds.
    pub latency_ms: u64,
    /// What went wrong, when it did.
    pub error: Option<String>,
    /// Servers heartbeating, as the store lists them (when it answered).
    pub servers_alive: Option<usize>,
}

/// A server's own state.
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct ServerHealth {
    /// The server's id.
    pub id: ServerId,
    /// Started, not shut down, and every loop alive.
    pub running: bool,
    /// Loops that ended although the server was not shut down (none on a healthy server).
    pub stopped_loops: Vec<&'static str>,
    /// The last heartbeat the store has from this server; `None` when the store did not answer
    /// or no longer lists the server (then others consider it dead).
    pub last_heartbeat: Option<DateTime<Utc>>,
    /// Its age, in milliseconds.
    pub heartbeat_age_ms: Option<u64>,
    /// The largest age that counts as fresh: three heartbeat intervals, at most the silence
    /// after which other servers consider this one dead.
    pub heartbeat_max_age_ms: u64,
    /// Whether the last heartbeat is younger than that.
    pub heartbeat_fresh: bool,
    /// Jobs running on this server now.
    pub running_jobs: usize,
    /// Its worker slots.
    pub workers: usize,
    /// How many times one of its loops panicked and was restarted.
    pub loop_restarts: u64,
}

/// Calls the store's cheapest read with a timeout.
pub(crate) async fn probe_store(
    storage: &Arc<dyn Storage>,
    timeout: Duration,
) -> (StoreHealth, Option<Vec<ServerRecord>>) {
    let started = Instant::now();
    let answer = tokio::time::timeout(timeout, storage.servers()).await;
    let latency_ms = millis(started.elapsed());
    match answer {
        Ok(Ok(servers)) => (
            StoreHealth {
                reachable: true,
                latency_ms,
                error: None,
                servers_alive: Some(servers.len()),
            },
            Some(servers),
        ),
        Ok(Err(e)) => (
            StoreHealth {
                reachable: false,
                latency_ms,
                error: Some(e.to_string()),
                servers_alive: None,
            },
            None,
        ),
        Err(_) => (
            StoreHealth {
                reachable: false,
                latency_ms,
                error: Some(format!("the store did not answer within {timeout:?}")),
                servers_alive: None,
            },
            None,
        ),
    }
}

/// A report from its checks.
pub(crate) fn report(store: StoreHealth, server: Option<ServerHealth>) -> Health {
    let mut problems = Vec::new();
    if let Some(e) = &store.error {
        problems.push(format!("store unreachable: {e}"));
    }
    if let Some(s) = &server {
        if !s.stopped_loops.is_empty() {
            problems.push(format!(
                "server loops stopped: {}",
                s.stopped_loops.join(", ")
            ));
        } else if !s.running {
            problems.push("the server has shut down".to_owned());
        }
        if store.reachable && !s.heartbeat_fresh {
            problems.push(match s.heartbeat_age_ms {
                Some(age) => format!(
                    "the server's last heartbeat is {age} ms old (fresh is under {} ms)",
                    s.heartbeat_max_age_ms
                ),
                None => "the store does not list this server (its heartbeats are not arriving, or it was declared dead)".to_owned(),
            });
        }
    }
    Health {
        ready: problems.is_empty(),
        checked_at: Utc::now(),
        store,
        server,
        problems,
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
