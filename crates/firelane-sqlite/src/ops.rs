//! The write operations, each run by the writer inside its own savepoint of a batch's
//! `BEGIN IMMEDIATE` transaction. They take the connection, so that they could also run inside
//! a caller's own transaction.

use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane_core::{
    Change, Completion, CompletionStatus, ContinuationDecision, Enqueued, Error, FetchRequest,
    FetchedJob, Heartbeat, HeartbeatReply, Initial, JobId, JobState, LeaseId, NewJob, Outcome,
    Promotion, Recovery, Retention, ServerId, Signal,
};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::codec::{
    OpResult, count_u32, job_id, lease_id, micros, minus, ms, retry_delays, retry_policy, state,
    time, us,
};
use crate::writer::Signals;

/// The columns [`Head`] reads.
macro_rules! head_columns {
    () => {
        "id, name, queue, priority, state, attempt, max_attempts, lease_id, lease_server, lease_until"
    };
}

/// What a transition needs to know about a job.
#[derive(Debug)]
struct Head {
    id: JobId,
    name: String,
    queue: String,
    priority: i32,
    state: JobState,
    attempt: u32,
    max_attempts: u32,
    lease: Option<LeaseId>,
    lease_server: Option<String>,
    lease_until: Option<DateTime<Utc>>,
}

impl Head {
    fn from_row(row: &SqliteRow) -> OpResult<Self> {
        Ok(Self {
            id: job_id(&row.try_get::<Vec<u8>, _>("id")?)?,
            name: row.try_get("name")?,
            queue: row.try_get("queue")?,
            priority: row.try_get("priority")?,
            state: state(&row.try_get::<String, _>("state")?)?,
            attempt: count_u32(row.try_get("attempt")?),
            max_attempts: count_u32(row.try_get("max_attempts")?),
            lease: row
                .try_get::<Option<Vec<u8>>, _>("lease_id")?
                .map(|b| lease_id(&b))
                .transpose()?,
            lease_server: row.try_get("lease_server")?,
            lease_until: row
                .try_get::<Option<i64>, _>("lease_until")?
                .map(time)
                .transpose()?,
        })
    }
}

async fn head(conn: &mut SqliteConnection, id: JobId) -> OpResult<Option<Head>> {
    let row = sqlx::query(concat!(
        "SELECT ",
        head_columns!(),
        " FROM jobs WHERE id = ?"
    ))
    .bind(id.as_bytes().as_slice())
    .fetch_optional(conn)
    .await?;
    row.as_ref().map(Head::from_row).transpose()
}

/// A state a job enters: the history entry, and what the job row keeps of it.
#[derive(Debug)]
struct Entry<'a> {
    state: JobState,
    at: DateTime<Utc>,
    attempt: u32,
    reason: Option<String>,
    server: Option<&'a str>,
    duration: Option<Duration>,
    error: Option<&'a str>,
    /// For `Scheduled`: when it is due.
    due: Option<DateTime<Utc>>,
}

impl<'a> Entry<'a> {
    fn new(state: JobState, at: DateTime<Utc>, attempt: u32) -> Self {
        Self {
            state,
            at,
            attempt,
            reason: None,
            server: None,
            duration: None,
            error: None,
            due: None,
        }
    }

    fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    fn server(mut self, server: Option<&'a str>) -> Self {
        self.server = server;
        self
    }

    fn ended(mut self, server: &'a str, duration: Duration) -> Self {
        self.server = Some(server);
        self.duration = Some(duration);
        self
    }

    fn error(mut self, error: &'a str) -> Self {
        self.error = Some(error);
        self
    }

    /// Enqueued at once if `due` is not after `now`, else scheduled for `due`.
    fn enqueued_or_scheduled(due: DateTime<Utc>, now: DateTime<Utc>, attempt: u32) -> Self {
        if due <= now {
            Entry::new(JobState::Enqueued, now, attempt)
        } else {
            let mut e = Entry::new(JobState::Scheduled, now, attempt);
            e.due = Some(due);
            e
        }
    }
}

async fn record(conn: &mut SqliteConnection, id: JobId, e: &Entry<'_>) -> OpResult<()> {
    sqlx::query(
        "INSERT INTO history (job_id, state, at, reason, server, attempt, duration_us, error)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(id.as_bytes().as_slice())
    .bind(e.state.as_str())
    .bind(us(e.at))
    .bind(e.reason.as_deref())
    .bind(e.server)
    .bind(i64::from(e.attempt))
    .bind(e.duration.map(micros))
    .bind(e.error)
    .execute(conn)
    .await?;
    Ok(())
}

async fn push_queue(conn: &mut SqliteConnection, job: &Head) -> OpResult<()> {
    sqlx::query("INSERT INTO queue (queue, priority, name, job_id) VALUES (?, ?, ?, ?)")
        .bind(&job.queue)
        .bind(job.priority)
        .bind(&job.name)
        .bind(job.id.as_bytes().as_slice())
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves a job to `e.state`, other than `Processing`: the row, the queue table, the history and
/// the signal. Does not release continuations (see [`set_state`]).
async fn apply(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    job: &Head,
    e: &Entry<'_>,
) -> OpResult<()> {
    if job.state == JobState::Enqueued {
        sqlx::query("DELETE FROM queue WHERE job_id = ?")
            .bind(job.id.as_bytes().as_slice())
            .execute(&mut *conn)
            .await?;
    }
    let due = if e.state == JobState::Scheduled {
        e.due
    } else {
        None
    };
    let finished = e.state.is_finished().then_some(us(e.at));
    sqlx::query(
        "UPDATE jobs SET state = ?, attempt = ?, state_at = ?, due_at = ?, lease_id = NULL,
             lease_server = NULL, lease_until = NULL, finished_at = ?, reason = ?,
             last_error = COALESCE(?, last_error)
         WHERE id = ?",
    )
    .bind(e.state.as_str())
    .bind(i64::from(e.attempt))
    .bind(us(e.at))
    .bind(due.map(us))
    .bind(finished)
    .bind(e.reason.as_deref())
    .bind(e.error)
    .bind(job.id.as_bytes().as_slice())
    .execute(&mut *conn)
    .await?;
    match (e.state, due) {
        (JobState::Enqueued, _) => {
            push_queue(conn, job).await?;
            signals.push(Signal::Enqueued {
                queue: job.queue.clone(),
            });
        }
        (JobState::Scheduled, Some(at)) => signals.push(Signal::Scheduled { at }),
        _ => {}
    }
    record(conn, job.id, e).await
}

/// [`apply`], then, for a job that finished, releases its continuations.
async fn set_state(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    job: &Head,
    e: &Entry<'_>,
) -> OpResult<()> {
    apply(conn, signals, job, e).await?;
    if e.state.is_finished() {
        release(conn, signals, job.id, e.state, e.at).await?;
    }
    Ok(())
}

/// Decides the awaiting continuations of a job that just finished in `state`, and those of
/// continuations deleted on the way.
async fn release(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    parent: JobId,
    state: JobState,
    at: DateTime<Utc>,
) -> OpResult<()> {
    let mut work = vec![(parent, state)];
    while let Some((parent, parent_state)) = work.pop() {
        let rows = sqlx::query(concat!(
            "SELECT ",
            head_columns!(),
            ", continue_on FROM jobs WHERE parent_id = ? AND state = 'awaiting' ORDER BY id"
        ))
        .bind(parent.as_bytes().as_slice())
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let child = Head::from_row(&row)?;
            let on = row
                .try_get::<Option<String>, _>("continue_on")?
                .map(|s| s.parse())
                .transpose()
                .map_err(|_| Error::Corrupt("unknown continuation condition".to_owned()))?
                .unwrap_or_default();
            let reason = format!("parent {parent} {parent_state}");
            match firelane_core::ContinueOn::decide(on, parent_state) {
                ContinuationDecision::Wait => {}
                ContinuationDecision::Enqueue => {
                    let e = Entry::new(JobState::Enqueued, at, child.attempt).reason(reason);
                    apply(conn, signals, &child, &e).await?;
                }
                ContinuationDecision::Delete => {
                    let e = Entry::new(JobState::Deleted, at, child.attempt).reason(reason);
                    apply(conn, signals, &child, &e).await?;
                    work.push((child.id, JobState::Deleted));
                }
            }
        }
    }
    Ok(())
}

/// [`firelane_core::Storage::enqueue`].
pub(crate) async fn enqueue(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    jobs: Vec<NewJob>,
    now: DateTime<Utc>,
) -> OpResult<Vec<Enqueued>> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut parent = None;
        let mut reason = None;
        let mut due = None;
        let state = match &job.initial {
            Initial::Scheduled { at } if *at > now => {
                due = Some(*at);
                JobState::Scheduled
            }
            Initial::Awaiting { parent: p, on } => {
                parent = Some((*p, *on));
                let parent_state: Option<String> =
                    sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?")
                        .bind(p.as_bytes().as_slice())
                        .fetch_optional(&mut *conn)
                        .await?;
                let parent_state = match parent_state {
                    Some(s) => state(&s)?,
                    None => return Err(Error::JobNotFound(*p).into()),
                };
                match on.decide(parent_state) {
                    ContinuationDecision::Wait => {
                        reason = Some(format!("continues job {p} when it ends {on}"));
                        JobState::Awaiting
                    }
                    ContinuationDecision::Enqueue => {
                        reason = Some(format!("parent {p} {parent_state}"));
                        JobState::Enqueued
                    }
                    ContinuationDecision::Delete => {
                        reason = Some(format!("parent {p} {parent_state}"));
                        JobState::Deleted
                    }
                }
            }
            _ => JobState::Enqueued,
        };
        sqlx::query(
            "INSERT INTO jobs (id, name, queue, priority, args, state, attempt, max_attempts,
                 retry_delays, timeout_ms, created_at, state_at, due_at, parent_id, continue_on,
                 reason, finished_at)
             VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(job.id.as_bytes().as_slice())
        .bind(&job.name)
        .bind(&job.queue)
        .bind(job.priority)
        .bind(&job.args)
        .bind(state.as_str())
        .bind(i64::from(job.retry.max_attempts()))
        .bind(retry_delays(&job.retry))
        .bind(job.timeout.map(ms))
        .bind(us(now))
        .bind(us(now))
        .bind(due.map(us))
        .bind(parent.map(|(p, _)| p.as_bytes().to_vec()))
        .bind(parent.map(|(_, on)| on.as_str()))
        .bind(reason.as_deref())
        .bind(state.is_finished().then_some(us(now)))
        .execute(&mut *conn)
        .await?;
        match state {
            JobState::Enqueued => {
                sqlx::query(
                    "INSERT INTO queue (queue, priority, name, job_id) VALUES (?, ?, ?, ?)",
                )
                .bind(&job.queue)
                .bind(job.priority)
                .bind(&job.name)
                .bind(job.id.as_bytes().as_slice())
                .execute(&mut *conn)
                .await?;
                signals.push(Signal::Enqueued {
                    queue: job.queue.clone(),
                });
            }
            JobState::Scheduled => {
                if let Some(at) = due {
                    signals.push(Signal::Scheduled { at });
                }
            }
            _ => {}
        }
        let mut entry = Entry::new(state, now, 0);
        entry.reason = reason;
        record(conn, job.id, &entry).await?;
        out.push(Enqueued::new(job.id, state));
    }
    Ok(out)
}

/// The columns of a fetch's candidates: the queue row and what the job needs.
macro_rules! fetch_select {
    ($filter:literal) => {
        concat!(
            "SELECT q.seq, q.job_id, j.state, j.name, j.queue, j.priority, j.args, j.attempt,
                    j.max_attempts, j.retry_delays, j.timeout_ms, j.created_at, j.state_at
             FROM queue q LEFT JOIN jobs j ON j.id = q.job_id
             WHERE q.queue = ? ",
            $filter,
            " ORDER BY q.priority DESC, q.seq LIMIT ?"
        )
    };
}

/// [`firelane_core::Storage::fetch`].
pub(crate) async fn fetch(
    conn: &mut SqliteConnection,
    request: FetchRequest,
) -> OpResult<Vec<FetchedJob>> {
    let mut out = Vec::new();
    if request.limit == 0 {
        return Ok(out);
    }
    let names = request
        .names
        .as_ref()
        .map(|n| serde_json::Value::from(n.clone()).to_string());
    let server = request.server.as_str();
    for queue in &request.queues {
        let remaining = request.limit.saturating_sub(out.len());
        if remaining == 0 {
            break;
        }
        let remaining = i64::try_from(remaining).unwrap_or(i64::MAX);
        let rows = match &names {
            None => {
                sqlx::query(fetch_select!(""))
                    .bind(queue)
                    .bind(remaining)
                    .fetch_all(&mut *conn)
                    .await?
            }
            Some(names) => {
                sqlx::query(fetch_select!(
                    "AND q.name IN (SELECT value FROM json_each(?))"
                ))
                .bind(queue)
                .bind(names)
                .bind(remaining)
                .fetch_all(&mut *conn)
                .await?
            }
        };
        if rows.is_empty() {
            continue;
        }
        let seqs: Vec<i64> = rows
            .iter()
            .map(|r| r.try_get("seq"))
            .collect::<Result<_, _>>()?;
        sqlx::query("DELETE FROM queue WHERE seq IN (SELECT value FROM json_each(?))")
            .bind(serde_json::Value::from(seqs).to_string())
            .execute(&mut *conn)
            .await?;
        for row in rows {
            let raw_id: Vec<u8> = row.try_get("job_id")?;
            let state: Option<String> = row.try_get("state")?;
            if state.as_deref() != Some(JobState::Enqueued.as_str()) {
                tracing::warn!(job = ?JobId::from_slice(&raw_id), ?state, "dropped the queue row of a job that is not enqueued");
                continue;
            }
            let id = job_id(&raw_id)?;
            let attempt = count_u32(row.try_get("attempt")?).saturating_add(1);
            let lease = LeaseId::new();
            sqlx::query(
                "UPDATE jobs SET state = 'processing', attempt = ?, state_at = ?, lease_id = ?,
                     lease_server = ?, lease_until = ?, due_at = NULL, reason = NULL
                 WHERE id = ?",
            )
            .bind(i64::from(attempt))
            .bind(us(request.now))
            .bind(lease.as_bytes().as_slice())
            .bind(server)
            .bind(us(request.lease_until))
            .bind(&raw_id)
            .execute(&mut *conn)
            .await?;
            let entry = Entry::new(JobState::Processing, request.now, attempt).server(Some(server));
            record(conn, id, &entry).await?;
            out.push(FetchedJob::new(
                id,
                row.try_get("name")?,
                row.try_get("queue")?,
                row.try_get("priority")?,
                row.try_get("args")?,
                attempt,
                retry_policy(
                    row.try_get("max_attempts")?,
                    row.try_get::<Option<String>, _>("retry_delays")?.as_deref(),
                )?,
                row.try_get::<Option<i64>, _>("timeout_ms")?
                    .map(|v| Duration::from_millis(u64::try_from(v).unwrap_or(0))),
                lease,
                time(row.try_get("created_at")?)?,
                time(row.try_get("state_at")?)?,
            ));
        }
    }
    Ok(out)
}

/// [`firelane_core::Storage::complete`].
pub(crate) async fn complete(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    completions: Vec<Completion>,
) -> OpResult<Vec<CompletionStatus>> {
    let mut out = Vec::with_capacity(completions.len());
    for c in completions {
        let Some(job) = head(conn, c.id).await? else {
            out.push(CompletionStatus::Stale);
            continue;
        };
        if job.state != JobState::Processing || job.lease != Some(c.lease) {
            out.push(CompletionStatus::Stale);
            continue;
        }
        let server = c.server.as_str();
        let attempt = job.attempt;
        let e = match &c.outcome {
            Outcome::Succeeded => Entry::new(JobState::Succeeded, c.at, attempt),
            Outcome::Failed { error } => {
                Entry::new(JobState::Failed, c.at, attempt).error(error.as_str())
            }
            Outcome::Cancelled { reason } => {
                Entry::new(JobState::Deleted, c.at, attempt).reason(reason.as_str())
            }
            Outcome::Retry { at, error } => Entry::enqueued_or_scheduled(*at, c.at, attempt)
                .reason(format!(
                    "attempt {attempt} of {} failed; retrying",
                    job.max_attempts
                ))
                .error(error.as_str()),
            Outcome::Snoozed { until } => {
                Entry::enqueued_or_scheduled(*until, c.at, attempt.saturating_sub(1))
                    .reason(format!("snoozed until {until}"))
            }
            Outcome::HandedBack { reason } => {
                Entry::new(JobState::Enqueued, c.at, attempt.saturating_sub(1))
                    .reason(reason.as_str())
            }
            other => {
                return Err(Error::Config(format!("unsupported outcome {other:?}")).into());
            }
        }
        .ended(server, c.duration);
        set_state(conn, signals, &job, &e).await?;
        out.push(CompletionStatus::Applied(e.state));
    }
    Ok(out)
}

/// [`firelane_core::Storage::heartbeat`].
pub(crate) async fn heartbeat(
    conn: &mut SqliteConnection,
    heartbeat: Heartbeat,
) -> OpResult<HeartbeatReply> {
    let info = serde_json::to_string(&heartbeat.server)
        .map_err(|e| Error::Corrupt(format!("cannot write server info as JSON: {e}")))?;
    sqlx::query(
        "INSERT INTO servers (id, info, last_heartbeat) VALUES (?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET info = excluded.info,
             last_heartbeat = excluded.last_heartbeat",
    )
    .bind(heartbeat.server.id.as_str())
    .bind(info)
    .bind(us(heartbeat.now))
    .execute(&mut *conn)
    .await?;
    let mut reply = HeartbeatReply::default();
    for (id, lease) in heartbeat.running {
        let extended = sqlx::query(
            "UPDATE jobs SET lease_until = ?
             WHERE id = ? AND state = 'processing' AND lease_id = ?",
        )
        .bind(us(heartbeat.lease_until))
        .bind(id.as_bytes().as_slice())
        .bind(lease.as_bytes().as_slice())
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if extended == 0 {
            let now: Option<String> = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?")
                .bind(id.as_bytes().as_slice())
                .fetch_optional(&mut *conn)
                .await?;
            let now = match now {
                Some(s) => state(&s)?,
                None => JobState::Deleted,
            };
            reply.lost.push((id, now));
        }
    }
    Ok(reply)
}

/// [`firelane_core::Storage::remove_server`].
pub(crate) async fn remove_server(conn: &mut SqliteConnection, server: ServerId) -> OpResult<()> {
    sqlx::query("DELETE FROM servers WHERE id = ?")
        .bind(server.as_str())
        .execute(conn)
        .await?;
    Ok(())
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// [`firelane_core::Storage::promote_due`].
pub(crate) async fn promote_due(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    now: DateTime<Utc>,
    limit: usize,
) -> OpResult<Promotion> {
    let mut promotion = Promotion::default();
    if limit > 0 {
        let rows = sqlx::query(concat!(
            "SELECT ",
            head_columns!(),
            " FROM jobs WHERE state = 'scheduled' AND due_at <= ? ORDER BY due_at, id LIMIT ?"
        ))
        .bind(us(now))
        .bind(limit_i64(limit))
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            let job = Head::from_row(&row)?;
            let e = Entry::new(JobState::Enqueued, now, job.attempt).reason("due");
            apply(conn, signals, &job, &e).await?;
            promotion.promoted += 1;
        }
    }
    let next: Option<i64> =
        sqlx::query_scalar("SELECT MIN(due_at) FROM jobs WHERE state = 'scheduled'")
            .fetch_one(&mut *conn)
            .await?;
    promotion.next_due = next.map(time).transpose()?;
    Ok(promotion)
}

/// [`firelane_core::Storage::recover`].
pub(crate) async fn recover(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    now: DateTime<Utc>,
    dead_after: Duration,
) -> OpResult<Recovery> {
    let mut recovery = Recovery::default();
    let dead: Vec<String> =
        sqlx::query_scalar("DELETE FROM servers WHERE last_heartbeat < ? RETURNING id")
            .bind(us(minus(now, dead_after)))
            .fetch_all(&mut *conn)
            .await?;
    recovery.dead_servers = dead.into_iter().map(ServerId::from_string).collect();
    recovery.dead_servers.sort();

    let rows = sqlx::query(concat!(
        "SELECT ",
        head_columns!(),
        " FROM jobs WHERE state = 'processing' AND lease_until < ? ORDER BY lease_until, id"
    ))
    .bind(us(now))
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let job = Head::from_row(&row)?;
        let server = job.lease_server.as_deref();
        let lapsed = format!(
            "the lease of server {} lapsed at {}",
            server.unwrap_or("(unknown)"),
            job.lease_until
                .map_or_else(|| "an unknown time".to_owned(), |t| t.to_rfc3339())
        );
        if job.attempt < job.max_attempts {
            let e = Entry::new(JobState::Enqueued, now, job.attempt)
                .reason(lapsed)
                .server(server);
            set_state(conn, signals, &job, &e).await?;
            recovery.requeued.push(job.id);
        } else {
            let reason = format!("{lapsed} on the last allowed attempt");
            let mut e = Entry::new(JobState::Failed, now, job.attempt).server(server);
            e.error = Some(&reason);
            let e = e.reason(reason.as_str());
            set_state(conn, signals, &job, &e).await?;
            recovery.failed.push(job.id);
        }
    }
    Ok(recovery)
}

/// [`firelane_core::Storage::expire`].
pub(crate) async fn expire(
    conn: &mut SqliteConnection,
    now: DateTime<Utc>,
    retention: Retention,
    limit: usize,
) -> OpResult<u64> {
    let mut removed = 0u64;
    for s in [JobState::Succeeded, JobState::Deleted, JobState::Failed] {
        let remaining = u64::try_from(limit)
            .unwrap_or(u64::MAX)
            .saturating_sub(removed);
        if remaining == 0 {
            break;
        }
        let Some(keep) = retention.for_state(s) else {
            continue;
        };
        let ids: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT id FROM jobs
             WHERE state = ? AND finished_at IS NOT NULL AND finished_at <= ?
             ORDER BY finished_at LIMIT ?",
        )
        .bind(s.as_str())
        .bind(us(minus(now, keep)))
        .bind(i64::try_from(remaining).unwrap_or(i64::MAX))
        .fetch_all(&mut *conn)
        .await?;
        for id in ids {
            sqlx::query("DELETE FROM history WHERE job_id = ?")
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            sqlx::query("DELETE FROM jobs WHERE id = ?")
                .bind(&id)
                .execute(&mut *conn)
                .await?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// [`firelane_core::Storage::delete`].
pub(crate) async fn delete(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    ids: Vec<JobId>,
    reason: String,
    now: DateTime<Utc>,
) -> OpResult<Vec<Change>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(job) = head(conn, id).await? else {
            out.push(Change::NotFound);
            continue;
        };
        if !job.state.can_delete() {
            out.push(Change::Refused { state: job.state });
            continue;
        }
        let e = Entry::new(JobState::Deleted, now, job.attempt).reason(reason.as_str());
        set_state(conn, signals, &job, &e).await?;
        if job.state == JobState::Processing {
            signals.push(Signal::Revoked {
                id,
                state: JobState::Deleted,
            });
        }
        out.push(Change::Changed { from: job.state });
    }
    Ok(out)
}

/// [`firelane_core::Storage::requeue`].
pub(crate) async fn requeue(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    ids: Vec<JobId>,
    reason: String,
    now: DateTime<Utc>,
) -> OpResult<Vec<Change>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(job) = head(conn, id).await? else {
            out.push(Change::NotFound);
            continue;
        };
        if !job.state.can_requeue() {
            out.push(Change::Refused { state: job.state });
            continue;
        }
        let attempt = if job.state.is_finished() {
            0
        } else {
            job.attempt
        };
        let e = Entry::new(JobState::Enqueued, now, attempt).reason(reason.as_str());
        set_state(conn, signals, &job, &e).await?;
        if job.state == JobState::Processing {
            signals.push(Signal::Revoked {
                id,
                state: JobState::Enqueued,
            });
        }
        out.push(Change::Changed { from: job.state });
    }
    Ok(out)
}
