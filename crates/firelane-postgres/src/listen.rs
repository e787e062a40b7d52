//! Wake-ups through `LISTEN/NOTIFY`.
//!
//! Every statement that enqueues or schedules a job, revokes a lease or changes a recurring
//! job sends a notification on the store's channel in its own transaction (PostgreSQL delivers
//! it when that transaction commits, and not at all if it rolls back). One task per store
//! listens on a connection of its own and turns notifications into [`Signal`]s on a broadcast
//! channel. Payloads: `e:<queue>` (enqueued), `s:<µs since the epoch>` (scheduled), `r`
//! (a recurring job changed), `v:<job id>:<state>` (a processing job lost its lease).
//!
//! When the listening connection drops (a restart, `pg_terminate_backend`, a network cut),
//! notifications sent meanwhile are lost: the task connects again, with back-off, and then
//! sends a wake-up for everything that might have been missed: `Enqueued` for every queue
//! that has jobs, `Scheduled` for the earliest due job, and `RecurringChanged`. Servers also
//! poll, so even a wake-up lost for good only delays a job by the poll interval.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane_core::{JobId, JobState, Signal};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{AssertSqlSafe, PgPool};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::cache::Cache;
use crate::sql::Sql;

/// Splits a payload into the sending store's origin (`<id>/`, empty for notifications sent in
/// an application's own transaction) and the signal.
pub(crate) fn split_origin(payload: &str) -> (&str, &str) {
    match payload.find('/') {
        Some(i) => payload.split_at(i + 1),
        None => ("", payload),
    }
}

/// Parses a notification's payload (without its origin).
pub(crate) fn parse(payload: &str) -> Option<Signal> {
    let (kind, rest) = payload.split_once(':').unwrap_or((payload, ""));
    match kind {
        "e" if !rest.is_empty() => Some(Signal::Enqueued {
            queue: rest.to_owned(),
        }),
        "s" => {
            let us: i64 = rest.parse().ok()?;
            Some(Signal::Scheduled {
                at: DateTime::from_timestamp_micros(us)?,
            })
        }
        "r" => Some(Signal::RecurringChanged),
        "v" => {
            let (id, st) = rest.rsplit_once(':')?;
            Some(Signal::Revoked {
                id: id.parse::<JobId>().ok()?,
                state: st.parse::<JobState>().ok()?,
            })
        }
        _ => None,
    }
}

/// Opens a listening connection on `channel`.
async fn listen(options: &PgConnectOptions, channel: &str) -> Result<PgListener, sqlx::Error> {
    // A pool of one, only to own the connection; made anew for each connection so that a
    // broken one is never handed back.
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(Duration::from_secs(10))
        .idle_timeout(None)
        .max_lifetime(None)
        .test_before_acquire(false)
        .connect_lazy_with(options.clone());
    let mut listener = PgListener::connect_with(&pool).await?;
    listener.eager_reconnect(false);
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    Ok(listener)
}

/// Starts listening: returns once the first `LISTEN` is in place (so that no notification sent
/// after the store opened is missed), with the task that forwards notifications.
pub(crate) async fn start(
    options: PgConnectOptions,
    channel: String,
    origin: String,
    pool: PgPool,
    sql: Arc<SqlHandle>,
    signals: broadcast::Sender<Signal>,
    cache: Arc<Cache>,
) -> Result<JoinHandle<()>, sqlx::Error> {
    let first = listen(&options, &channel).await?;
    Ok(tokio::spawn(run(
        first,
        Listening {
            options,
            channel,
            origin,
            pool,
            sql,
            signals,
            cache,
        },
    )))
}

/// The statements the listener needs after a reconnection.
#[derive(Debug)]
pub(crate) struct SqlHandle {
    pub(crate) queues_with_jobs: Arc<str>,
    pub(crate) next_due: Arc<str>,
}

impl SqlHandle {
    pub(crate) fn of(sql: &Sql) -> Self {
        Self {
            queues_with_jobs: Arc::clone(&sql.queues_with_jobs),
            next_due: Arc::clone(&sql.next_due),
        }
    }
}

/// What the listening task works with.
struct Listening {
    options: PgConnectOptions,
    channel: String,
    origin: String,
    pool: PgPool,
    sql: Arc<SqlHandle>,
    signals: broadcast::Sender<Signal>,
    cache: Arc<Cache>,
}

async fn run(mut listener: PgListener, l: Listening) {
    let Listening {
        options,
        channel,
        origin,
        pool,
        sql,
        signals,
        cache,
    } = l;
    loop {
        match listener.try_recv().await {
            Ok(Some(n)) => {
                tracing::trace!(%channel, payload = n.payload(), "notification");
                let (from, payload) = split_origin(n.payload());
                if from == origin {
                    // Sent by this store, which delivered it in process already.
                    continue;
                }
                if let Some(signal) = parse(payload) {
                    cache.observe(&signal);
                    // No receiver is not an error: no server is listening in this process.
                    let _ = signals.send(signal);
                } else {
                    tracing::debug!(payload = n.payload(), "ignored an unknown notification");
                }
                continue;
            }
            Ok(None) => {
                tracing::warn!(%channel, "the PostgreSQL listen connection was lost; reconnecting");
            }
            Err(e) => {
                tracing::warn!(%channel, error = %e, "the PostgreSQL listen connection failed; reconnecting");
            }
        }
        // Notifications may be lost from now on: nothing the store kept counts.
        cache.link_lost();
        drop(listener);
        let mut wait = Duration::from_millis(100);
        listener = loop {
            match listen(&options, &channel).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::warn!(%channel, error = %e, retry_in = ?wait, "cannot listen for wake-ups yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        };
        cache.link_back();
        tracing::info!(%channel, "listening for wake-ups again; waking every queue");
        wake_all(&pool, &sql, &signals).await;
    }
}

/// Wake-ups for whatever may have been missed while not listening.
async fn wake_all(pool: &PgPool, sql: &SqlHandle, signals: &broadcast::Sender<Signal>) {
    tracing::trace!(receivers = signals.receiver_count(), "waking everything");
    let _ = signals.send(Signal::RecurringChanged);
    match sqlx::query_scalar::<_, Option<DateTime<Utc>>>(AssertSqlSafe(Arc::clone(&sql.next_due)))
        .fetch_one(pool)
        .await
    {
        Ok(Some(at)) => {
            let _ = signals.send(Signal::Scheduled { at });
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the next due time after reconnecting"),
    }
    match sqlx::query_scalar::<_, String>(AssertSqlSafe(Arc::clone(&sql.queues_with_jobs)))
        .fetch_all(pool)
        .await
    {
        Ok(queues) => {
            tracing::trace!(?queues, "waking queues");
            for queue in queues {
                let _ = signals.send(Signal::Enqueued { queue });
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot list the queues with jobs after reconnecting"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        assert_eq!(
            parse("e:emails"),
            Some(Signal::Enqueued {
                queue: "emails".into()
            })
        );
        assert_eq!(parse("r"), Some(Signal::RecurringChanged));
        assert_eq!(
            parse("s:1700000000123456"),
            DateTime::from_timestamp_micros(1_700_000_000_123_456)
                .map(|at| Signal::Scheduled { at })
        );
        let id = JobId::new();
        assert_eq!(
            parse(&format!("v:{id}:deleted")),
            Some(Signal::Revoked {
                id,
                state: JobState::Deleted
            })
        );
        assert_eq!(parse("x"), None);
        assert_eq!(split_origin("ab12/e:q"), ("ab12/", "e:q"));
        assert_eq!(split_origin("e:q"), ("", "e:q"));
        assert_eq!(parse("s:nope"), None);
    }
}
