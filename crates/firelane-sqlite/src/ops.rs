//! The write operations, each run by the writer inside its own savepoint of a batch's
//! `BEGIN IMMEDIATE` transaction. They take the connection, so that they could also run inside
//! a caller's own transaction.
//!
//! Operations on many jobs use a constant number of statements, whatever the number of jobs:
//! the per-job values go to SQLite as one JSON array, which the statements read with
//! `json_each` or `jsonb_each` (ids as hex text, turned back into blobs with `unhex`). A
//! statement costs far more than a row, so a fetch of 100 jobs runs a few statements, not
//! hundreds, and statements that read the same array go in one text (one round trip).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane_core::{
    Change, Completion, CompletionStatus, ContinuationDecision, ContinueOn, Enqueued, Error,
    FetchRequest, FetchedJob, Firing, HOURLY_STATS_KEPT, Heartbeat, HeartbeatReply, Initial, JobId,
    JobState, LeaseId, NewJob, Outcome, Promotion, Recovery, RecurringDef, Retention, ServerId,
    Signal,
};
use serde_json::{Value, json};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, SqliteConnection};

use crate::codec::{
    OpResult, count_u32, job_id, job_template, lease_id, micros, minus, ms, retry_delays,
    retry_policy, state, time, us,
};
use crate::sql;
use crate::tally::Tally;
use crate::writer::Signals;

/// An id as the hex text that `unhex` turns back into its 16 bytes.
fn hex(id: JobId) -> String {
    id.as_uuid().simple().to_string()
}

/// A JSON array of ids, for `SELECT unhex(value) FROM json_each(?)`.
fn hex_array(ids: impl IntoIterator<Item = JobId>) -> String {
    Value::Array(ids.into_iter().map(|id| Value::String(hex(id))).collect()).to_string()
}

/// A query of several statements, its arguments padded with NULLs.
///
/// sqlx binds each statement of a text on its own: a parameter number that the statement does
/// not use (say `?1` to `?5` in a statement that reads only `?6`) takes the next argument in
/// turn, and when those run out it stops binding the statement, leaving its later parameters
/// NULL. Padding gives the unused slots something to take, so every used parameter is bound.
fn padded(
    mut q: sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
) -> sqlx::query::Query<'_, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
    for _ in 0..32 {
        q = q.bind(None::<i64>);
    }
    q
}

fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
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
    /// Whether awaiting continuations wait for the job; `None`: not looked up.
    awaited: Option<bool>,
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
            awaited: None,
        })
    }
}

/// The heads of the jobs with these ids that exist, by id.
async fn heads(
    conn: &mut SqliteConnection,
    ids: impl IntoIterator<Item = JobId>,
) -> OpResult<HashMap<JobId, Head>> {
    let rows = sqlx::query(sql::HEADS)
        .bind(hex_array(ids))
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            let mut h = Head::from_row(row)?;
            h.awaited = Some(row.try_get("awaited")?);
            Ok((h.id, h))
        })
        .collect()
}

/// A state a job enters: its history entry, and what the job row keeps of it.
#[derive(Debug)]
struct Entry {
    state: JobState,
    at: DateTime<Utc>,
    attempt: u32,
    reason: Option<String>,
    server: Option<String>,
    duration: Option<Duration>,
    error: Option<String>,
    /// For `Scheduled`: when it is due.
    due: Option<DateTime<Utc>>,
}

impl Entry {
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

    fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    fn server(mut self, server: Option<&str>) -> Self {
        self.server = server.map(str::to_owned);
        self
    }

    fn ended(mut self, server: &ServerId, duration: Duration) -> Self {
        self.server = Some(server.as_str().to_owned());
        self.duration = Some(duration);
        self
    }

    fn error(mut self, error: impl Into<String>) -> Self {
        self.error = Some(error.into());
        self
    }

    fn due(&self) -> Option<DateTime<Utc>> {
        if self.state == JobState::Scheduled {
            self.due
        } else {
            None
        }
    }
}

/// Moves jobs to new states other than `Processing`: the rows, the queue table, the history
/// and the signals, in a constant number of statements. Each job appears at most once.
/// Does not release continuations (see [`release`]).
async fn apply_many(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    moves: &[(Head, Entry)],
) -> OpResult<()> {
    if moves.is_empty() {
        return Ok(());
    }
    let mut tally = Tally::default();
    for (h, e) in moves {
        tally.moved(h.state, e.state, &h.queue, e.at);
    }
    let rows: Vec<Value> = moves
        .iter()
        .map(|(h, e)| {
            json!({
                "id": hex(h.id),
                "deq": h.state == JobState::Enqueued,
                "state": e.state.as_str(),
                "attempt": e.attempt,
                "at": us(e.at),
                "due": e.due().map(us),
                "fin": e.state.is_finished().then_some(us(e.at)),
                "reason": e.reason,
                "error": e.error,
                "server": e.server,
                "dur": e.duration.map(micros),
                "q": h.queue,
                "p": h.priority,
                "n": h.name,
            })
        })
        .collect();
    padded(
        sqlx::query(sql::MOVE)
            .bind(Value::Array(rows).to_string())
            .bind(tally.counters_json())
            .bind(tally.hours_json()),
    )
    .execute(&mut *conn)
    .await?;
    for (h, e) in moves {
        match e.state {
            JobState::Enqueued => signals.push(Signal::Enqueued {
                queue: h.queue.clone(),
            }),
            JobState::Scheduled => {
                if let Some(at) = e.due() {
                    signals.push(Signal::Scheduled { at });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Decides the awaiting continuations of jobs that just finished (`(id, state, when)`), and
/// those of continuations deleted on the way, one generation at a time.
async fn release(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    finished: Vec<(JobId, JobState, DateTime<Utc>)>,
) -> OpResult<()> {
    let mut generation = finished;
    while !generation.is_empty() {
        let parents: HashMap<JobId, (JobState, DateTime<Utc>)> = generation
            .iter()
            .map(|(id, s, at)| (*id, (*s, *at)))
            .collect();
        let rows = sqlx::query(sql::CHILDREN)
            .bind(hex_array(parents.keys().copied()))
            .fetch_all(&mut *conn)
            .await?;
        let mut moves = Vec::new();
        let mut next = Vec::new();
        for row in rows {
            let child = Head::from_row(&row)?;
            let parent = job_id(&row.try_get::<Vec<u8>, _>("parent_id")?)?;
            let on: ContinueOn = match row.try_get::<Option<String>, _>("continue_on")? {
                Some(s) => s
                    .parse()
                    .map_err(|_| Error::Corrupt(format!("unknown continuation condition {s:?}")))?,
                None => ContinueOn::default(),
            };
            let Some(&(parent_state, at)) = parents.get(&parent) else {
                continue;
            };
            let reason = format!("parent {parent} {parent_state}");
            match on.decide(parent_state) {
                ContinuationDecision::Wait => {}
                ContinuationDecision::Enqueue => {
                    let e = Entry::new(JobState::Enqueued, at, child.attempt).reason(reason);
                    moves.push((child, e));
                }
                ContinuationDecision::Delete => {
                    next.push((child.id, JobState::Deleted, at));
                    let e = Entry::new(JobState::Deleted, at, child.attempt).reason(reason);
                    moves.push((child, e));
                }
            }
        }
        apply_many(conn, signals, &moves).await?;
        generation = next;
    }
    Ok(())
}

/// [`apply_many`], then releases the continuations of the jobs that finished.
async fn apply_and_release(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    moves: &[(Head, Entry)],
) -> OpResult<()> {
    apply_many(conn, signals, moves).await?;
    let finished: Vec<_> = moves
        .iter()
        // A job that no continuation awaits releases none: no need to look.
        .filter(|(h, e)| e.state.is_finished() && h.awaited != Some(false))
        .map(|(h, e)| (h.id, e.state, e.at))
        .collect();
    release(conn, signals, finished).await
}

/// One new job as [`sql::ENQUEUE`] reads it: a JSON array of the columns every job has (id as
/// hex, name, queue, priority, args, state, max attempts). SQLite finds an array's element by
/// walking the ones before it, for each column of each job: short arrays are cheap.
#[derive(serde::Serialize)]
struct IncomingRow<'a>(String, &'a str, &'a str, i32, &'a str, &'static str, u32);

/// The columns of a new job that most jobs leave empty, for the jobs that have any: its
/// position in the batch (from 1), retry delays, timeout, due, parent as hex, continuation
/// condition, reason, finished at, trace context.
#[derive(serde::Serialize)]
struct IncomingExtra<'a>(
    usize,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<&'static str>,
    Option<String>,
    Option<i64>,
    Option<&'a str>,
);

impl IncomingExtra<'_> {
    /// Whether the job leaves every one of these columns empty (and so needs no element).
    fn is_empty(&self) -> bool {
        let IncomingExtra(_, delays, timeout, due, parent, cont, reason, fin, trace) = self;
        delays.is_none()
            && timeout.is_none()
            && due.is_none()
            && parent.is_none()
            && cont.is_none()
            && reason.is_none()
            && fin.is_none()
            && trace.is_none()
    }
}

/// [`firelane_core::Storage::enqueue`].
pub(crate) async fn enqueue(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    jobs: Vec<NewJob>,
    now: DateTime<Utc>,
) -> OpResult<Vec<Enqueued>> {
    // The states of the parents already in the store, in one query.
    let parents: Vec<JobId> = jobs
        .iter()
        .filter_map(|j| match &j.initial {
            Initial::Awaiting { parent, .. } => Some(*parent),
            _ => None,
        })
        .collect();
    let mut known: HashMap<JobId, JobState> = HashMap::new();
    if !parents.is_empty() {
        let rows = sqlx::query(sql::PARENT_STATES)
            .bind(hex_array(parents))
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            known.insert(
                job_id(&row.try_get::<Vec<u8>, _>("id")?)?,
                state(&row.try_get::<String, _>("state")?)?,
            );
        }
    }

    let mut out = Vec::with_capacity(jobs.len());
    let mut rows = Vec::with_capacity(jobs.len());
    let mut extras = Vec::new();
    let mut tally = Tally::default();
    for job in &jobs {
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
                // A parent made earlier in this batch is in `known` too (inserted below).
                let Some(&parent_state) = known.get(p) else {
                    return Err(Error::JobNotFound(*p).into());
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
        known.insert(job.id, state);
        tally.enter(state, &job.queue, now);
        match state {
            JobState::Enqueued => signals.push(Signal::Enqueued {
                queue: job.queue.clone(),
            }),
            JobState::Scheduled => {
                if let Some(at) = due {
                    signals.push(Signal::Scheduled { at });
                }
            }
            _ => {}
        }
        rows.push(IncomingRow(
            hex(job.id),
            &job.name,
            &job.queue,
            job.priority,
            &job.args,
            state.as_str(),
            job.retry.max_attempts(),
        ));
        let extra = IncomingExtra(
            rows.len(),
            retry_delays(&job.retry),
            job.timeout.map(ms),
            due.map(us),
            parent.map(|(p, _)| hex(p)),
            parent.map(|(_, on)| on.as_str()),
            reason,
            state.is_finished().then_some(us(now)),
            job.trace_context.as_deref(),
        );
        if !extra.is_empty() {
            extras.push(extra);
        }
        out.push(Enqueued::new(job.id, state));
    }
    let encode =
        |e: serde_json::Error| Error::Config(format!("cannot encode jobs for the store: {e}"));
    let rows = serde_json::to_string(&rows).map_err(encode)?;
    let extras = serde_json::to_string(&extras).map_err(encode)?;
    padded(
        sqlx::query(sql::ENQUEUE)
            .bind(rows)
            .bind(us(now))
            .bind(tally.counters_json())
            .bind(extras),
    )
    .execute(&mut *conn)
    .await?;
    Ok(out)
}

/// One element of a fetch's answer (see [`sql::FETCH_QUEUE_ANY`]): position, job id and lease
/// as hex, whether the job was leased, then the job's columns.
type FetchedRow = (
    i64,
    String,
    String,
    bool,
    Option<String>,
    Option<String>,
    Option<i32>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<String>,
);

/// A job id or lease from its hex text; `what` names it in the error.
fn hex_uuid(text: &str, what: &str) -> Result<uuid::Uuid, Error> {
    uuid::Uuid::try_parse(text).map_err(|e| Error::Corrupt(format!("bad {what} {text:?}: {e}")))
}

/// [`firelane_core::Storage::fetch`]: one round trip per queue (see
/// [`sql::FETCH_QUEUE_ANY`]), queues in the order given until the limit is reached.
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
        .map(|n| Value::from(n.clone()).to_string());
    let text = if names.is_some() {
        sql::FETCH_QUEUE_NAMED
    } else {
        sql::FETCH_QUEUE_ANY
    };
    for queue in &request.queues {
        let remaining = request.limit.saturating_sub(out.len());
        if remaining == 0 {
            break;
        }
        let answer: String = padded(
            sqlx::query(text)
                .bind(queue)
                .bind(limit_i64(remaining))
                .bind(us(request.now))
                .bind(request.server.as_str())
                .bind(us(request.lease_until))
                .bind(names.as_deref()),
        )
        .fetch_one(&mut *conn)
        .await?
        .try_get("jobs")?;
        let mut rows: Vec<FetchedRow> = serde_json::from_str(&answer)
            .map_err(|e| Error::Corrupt(format!("a fetch answered {answer:?}: {e}")))?;
        rows.sort_by_key(|r| r.0);
        for (
            _,
            raw_id,
            lease,
            leased,
            name,
            queue,
            priority,
            args,
            attempt,
            max,
            delays,
            timeout,
            created,
            enqueued,
            trace,
        ) in rows
        {
            let id = JobId::from_uuid(hex_uuid(&raw_id, "job id")?);
            if !leased {
                tracing::warn!(job = %id, "dropped the queue row of a job that is not enqueued");
                continue;
            }
            let field = |v: Option<String>, what: &str| {
                v.ok_or_else(|| Error::Corrupt(format!("job {id} has no {what}")))
            };
            out.push(
                FetchedJob::new(
                    id,
                    field(name, "name")?,
                    field(queue, "queue")?,
                    priority.unwrap_or(0),
                    field(args, "arguments")?,
                    count_u32(attempt.unwrap_or(0)),
                    retry_policy(max.unwrap_or(1), delays.as_deref())?,
                    timeout.map(|v| Duration::from_millis(u64::try_from(v).unwrap_or(0))),
                    LeaseId::from_uuid(hex_uuid(&lease, "lease")?),
                    time(created.unwrap_or(0))?,
                    time(enqueued.unwrap_or(0))?,
                )
                .with_trace_context(trace),
            );
        }
    }
    Ok(out)
}

/// Records a batch of successes in one round trip ([`sql::COMPLETE_SUCCEEDED`]), then
/// releases the continuations of those that have some. `None` when the batch does not qualify
/// (an outcome other than success, or a job twice), for the general path.
async fn complete_succeeded(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    completions: &[Completion],
) -> OpResult<Option<Vec<CompletionStatus>>> {
    let mut seen = std::collections::HashSet::with_capacity(completions.len());
    let qualifies = completions
        .iter()
        .all(|c| c.outcome == Outcome::Succeeded && seen.insert(c.id));
    if !qualifies {
        return Ok(None);
    }
    let rows: Vec<(String, String, &str, i64, i64)> = completions
        .iter()
        .map(|c| {
            (
                hex(c.id),
                c.lease.as_uuid().simple().to_string(),
                c.server.as_str(),
                us(c.at),
                micros(c.duration),
            )
        })
        .collect();
    let rows = serde_json::to_string(&rows)
        .map_err(|e| Error::Config(format!("cannot encode completions for the store: {e}")))?;
    let exceptions = padded(sqlx::query(sql::COMPLETE_SUCCEEDED).bind(rows))
        .fetch_all(&mut *conn)
        .await?;
    let mut out = vec![CompletionStatus::Applied(JobState::Succeeded); completions.len()];
    let mut finished = Vec::new();
    for row in &exceptions {
        let ord: i64 = row.try_get("ord")?;
        let Some((c, status)) = usize::try_from(ord)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| completions.get(i).zip(out.get_mut(i)))
        else {
            return Err(Error::Corrupt(format!("no completion at position {ord}")).into());
        };
        if row.try_get::<bool, _>("ok")? {
            finished.push((c.id, JobState::Succeeded, c.at));
        } else {
            *status = CompletionStatus::Stale;
        }
    }
    release(conn, signals, finished).await?;
    Ok(Some(out))
}

/// [`firelane_core::Storage::complete`].
pub(crate) async fn complete(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    completions: Vec<Completion>,
) -> OpResult<Vec<CompletionStatus>> {
    if let Some(out) = complete_succeeded(&mut *conn, signals, &completions).await? {
        return Ok(out);
    }
    let mut jobs = heads(&mut *conn, completions.iter().map(|c| c.id)).await?;
    let mut out = Vec::with_capacity(completions.len());
    let mut moves = Vec::with_capacity(completions.len());
    for c in &completions {
        // A job is taken out of `jobs` by its first valid completion: a second one is stale.
        let holds_lease = jobs
            .get(&c.id)
            .is_some_and(|j| j.state == JobState::Processing && j.lease == Some(c.lease));
        let job = if holds_lease {
            jobs.remove(&c.id)
        } else {
            None
        };
        let Some(job) = job else {
            out.push(CompletionStatus::Stale);
            continue;
        };
        let attempt = job.attempt;
        let e = match &c.outcome {
            Outcome::Succeeded => Entry::new(JobState::Succeeded, c.at, attempt),
            Outcome::Failed { error } => Entry::new(JobState::Failed, c.at, attempt).error(error),
            Outcome::Cancelled { reason } => {
                Entry::new(JobState::Deleted, c.at, attempt).reason(reason)
            }
            Outcome::Retry { at, error } => Entry::enqueued_or_scheduled(*at, c.at, attempt)
                .reason(format!(
                    "attempt {attempt} of {} failed; retrying",
                    job.max_attempts
                ))
                .error(error),
            Outcome::Snoozed { until } => {
                Entry::enqueued_or_scheduled(*until, c.at, attempt.saturating_sub(1))
                    .reason(format!("snoozed until {until}"))
            }
            Outcome::HandedBack { reason } => {
                Entry::new(JobState::Enqueued, c.at, attempt.saturating_sub(1)).reason(reason)
            }
            other => {
                return Err(Error::Config(format!("unsupported outcome {other:?}")).into());
            }
        }
        .ended(&c.server, c.duration);
        out.push(CompletionStatus::Applied(e.state));
        moves.push((job, e));
    }
    apply_and_release(conn, signals, &moves).await?;
    Ok(out)
}

/// [`firelane_core::Storage::heartbeat`].
pub(crate) async fn heartbeat(
    conn: &mut SqliteConnection,
    heartbeat: Heartbeat,
) -> OpResult<HeartbeatReply> {
    let info = serde_json::to_string(&heartbeat.server)
        .map_err(|e| Error::Corrupt(format!("cannot write server info as JSON: {e}")))?;
    sqlx::query(sql::SERVER_UPSERT)
        .bind(heartbeat.server.id.as_str())
        .bind(info)
        .bind(us(heartbeat.now))
        .execute(&mut *conn)
        .await?;
    let mut reply = HeartbeatReply::default();
    if heartbeat.running.is_empty() {
        return Ok(reply);
    }
    let running: Vec<Value> = heartbeat
        .running
        .iter()
        .map(|(id, lease)| json!({"id": hex(*id), "lease": lease.as_uuid().simple().to_string()}))
        .collect();
    let extended: Vec<Vec<u8>> = sqlx::query_scalar(sql::HEARTBEAT_EXTEND)
        .bind(Value::Array(running).to_string())
        .bind(us(heartbeat.lease_until))
        .fetch_all(&mut *conn)
        .await?;
    let extended: std::collections::HashSet<Vec<u8>> = extended.into_iter().collect();
    let lost: Vec<JobId> = heartbeat
        .running
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !extended.contains(id.as_bytes().as_slice()))
        .collect();
    if lost.is_empty() {
        return Ok(reply);
    }
    let now = heads(&mut *conn, lost.iter().copied()).await?;
    reply.lost = lost
        .into_iter()
        .map(|id| (id, now.get(&id).map_or(JobState::Deleted, |h| h.state)))
        .collect();
    Ok(reply)
}

/// [`firelane_core::Storage::remove_server`].
pub(crate) async fn remove_server(conn: &mut SqliteConnection, server: ServerId) -> OpResult<()> {
    sqlx::query(sql::SERVER_DELETE)
        .bind(server.as_str())
        .execute(conn)
        .await?;
    Ok(())
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
        let rows = sqlx::query(sql::PROMOTE_DUE)
            .bind(us(now))
            .bind(limit_i64(limit))
            .fetch_all(&mut *conn)
            .await?;
        let moves = rows
            .iter()
            .map(|row| {
                let job = Head::from_row(row)?;
                let e = Entry::new(JobState::Enqueued, now, job.attempt).reason("due");
                Ok((job, e))
            })
            .collect::<OpResult<Vec<_>>>()?;
        apply_many(conn, signals, &moves).await?;
        promotion.promoted = moves.len() as u64;
    }
    let next: Option<i64> = sqlx::query_scalar(sql::NEXT_DUE)
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
    let dead: Vec<String> = sqlx::query_scalar(sql::DEAD_SERVERS)
        .bind(us(minus(now, dead_after)))
        .fetch_all(&mut *conn)
        .await?;
    recovery.dead_servers = dead.into_iter().map(ServerId::from_string).collect();
    recovery.dead_servers.sort();

    let rows = sqlx::query(sql::LAPSED)
        .bind(us(now))
        .fetch_all(&mut *conn)
        .await?;
    let mut moves = Vec::with_capacity(rows.len());
    for row in &rows {
        let job = Head::from_row(row)?;
        let server = job.lease_server.clone();
        let lapsed = format!(
            "the lease of server {} lapsed at {}",
            server.as_deref().unwrap_or("(unknown)"),
            job.lease_until
                .map_or_else(|| "an unknown time".to_owned(), |t| t.to_rfc3339())
        );
        let e = if job.attempt < job.max_attempts {
            recovery.requeued.push(job.id);
            Entry::new(JobState::Enqueued, now, job.attempt).reason(lapsed)
        } else {
            recovery.failed.push(job.id);
            let lapsed = format!("{lapsed} on the last allowed attempt");
            Entry::new(JobState::Failed, now, job.attempt)
                .error(lapsed.clone())
                .reason(lapsed)
        };
        moves.push((job, e.server(server.as_deref())));
    }
    apply_and_release(conn, signals, &moves).await?;
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
        let ids: Vec<Vec<u8>> = sqlx::query_scalar(sql::EXPIRE_JOBS)
            .bind(s.as_str())
            .bind(us(minus(now, keep)))
            .bind(i64::try_from(remaining).unwrap_or(i64::MAX))
            .fetch_all(&mut *conn)
            .await?;
        if ids.is_empty() {
            continue;
        }
        let ids = ids
            .iter()
            .map(|b| job_id(b))
            .collect::<Result<Vec<_>, Error>>()?;
        removed += ids.len() as u64;
        let mut tally = Tally::default();
        tally.removed(s, i64::try_from(ids.len()).unwrap_or(i64::MAX));
        sqlx::query(sql::EXPIRE_HISTORY)
            .bind(hex_array(ids))
            .execute(&mut *conn)
            .await?;
        sqlx::query(sql::ADD_COUNTERS)
            .bind(tally.counters_json())
            .execute(&mut *conn)
            .await?;
    }
    sqlx::query(sql::EXPIRE_HOURS)
        .bind(us(minus(now, HOURLY_STATS_KEPT)))
        .execute(&mut *conn)
        .await?;
    Ok(removed)
}

/// [`firelane_core::Storage::delete`]. Jobs are taken one after the other, so that a job listed
/// after its parent sees what deleting the parent did to it.
pub(crate) async fn delete(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    ids: Vec<JobId>,
    reason: String,
    now: DateTime<Utc>,
) -> OpResult<Vec<Change>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(job) = heads(&mut *conn, [id]).await?.remove(&id) else {
            out.push(Change::NotFound);
            continue;
        };
        if !job.state.can_delete() {
            out.push(Change::Refused { state: job.state });
            continue;
        }
        let from = job.state;
        let e = Entry::new(JobState::Deleted, now, job.attempt).reason(reason.as_str());
        apply_and_release(conn, signals, &[(job, e)]).await?;
        if from == JobState::Processing {
            signals.push(Signal::Revoked {
                id,
                state: JobState::Deleted,
            });
        }
        out.push(Change::Changed { from });
    }
    Ok(out)
}

/// [`firelane_core::Storage::requeue`]. Jobs are taken one after the other, as for delete.
pub(crate) async fn requeue(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    ids: Vec<JobId>,
    reason: String,
    now: DateTime<Utc>,
) -> OpResult<Vec<Change>> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let Some(job) = heads(&mut *conn, [id]).await?.remove(&id) else {
            out.push(Change::NotFound);
            continue;
        };
        if !job.state.can_requeue() {
            out.push(Change::Refused { state: job.state });
            continue;
        }
        let from = job.state;
        let attempt = if from.is_finished() { 0 } else { job.attempt };
        let e = Entry::new(JobState::Enqueued, now, attempt).reason(reason.as_str());
        apply_many(conn, signals, &[(job, e)]).await?;
        if from == JobState::Processing {
            signals.push(Signal::Revoked {
                id,
                state: JobState::Enqueued,
            });
        }
        out.push(Change::Changed { from });
    }
    Ok(out)
}

/// [`firelane_core::Storage::upsert_recurring`].
pub(crate) async fn upsert_recurring(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    def: RecurringDef,
    next_run: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> OpResult<()> {
    let misfire = serde_json::to_string(&def.misfire)
        .map_err(|e| Error::Corrupt(format!("cannot write a misfire policy as JSON: {e}")))?;
    let job = &def.job;
    sqlx::query(sql::RECURRING_UPSERT)
        .bind(&def.id)
        .bind(def.schedule.expr())
        .bind(def.schedule.time_zone())
        .bind(misfire)
        .bind(&job.name)
        .bind(&job.queue)
        .bind(job.priority)
        .bind(&job.args)
        .bind(i64::from(job.retry.max_attempts()))
        .bind(retry_delays(&job.retry))
        .bind(job.timeout.map(ms))
        .bind(next_run.map(us))
        .bind(us(now))
        .execute(&mut *conn)
        .await?;
    signals.push(Signal::RecurringChanged);
    Ok(())
}

/// [`firelane_core::Storage::remove_recurring`].
pub(crate) async fn remove_recurring(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    id: String,
) -> OpResult<bool> {
    let removed = sqlx::query(sql::RECURRING_DELETE)
        .bind(id)
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if removed {
        signals.push(Signal::RecurringChanged);
    }
    Ok(removed)
}

/// [`firelane_core::Storage::set_recurring_paused`].
pub(crate) async fn set_recurring_paused(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    id: String,
    paused: bool,
    next_run: Option<DateTime<Utc>>,
) -> OpResult<bool> {
    let found = if paused {
        sqlx::query(sql::RECURRING_PAUSE)
            .bind(id)
            .fetch_optional(&mut *conn)
            .await?
    } else {
        sqlx::query(sql::RECURRING_RESUME)
            .bind(id)
            .bind(next_run.map(us))
            .fetch_optional(&mut *conn)
            .await?
    }
    .is_some();
    if found && !paused {
        signals.push(Signal::RecurringChanged);
    }
    Ok(found)
}

/// [`firelane_core::Storage::fire_recurring`]: the compare-and-set on the awaited occurrence,
/// then the jobs, in the operation's savepoint (a failing enqueue undoes the update).
pub(crate) async fn fire_recurring(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    firing: Firing,
) -> OpResult<bool> {
    let last_job = firing.jobs.last().map(|j| j.id.as_bytes().to_vec());
    let applied = sqlx::query(sql::RECURRING_FIRE)
        .bind(&firing.id)
        .bind(us(firing.expected_next_run))
        .bind(firing.next_run.map(us))
        .bind(&firing.error)
        .bind(last_job)
        .bind(us(firing.now))
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if applied && !firing.jobs.is_empty() {
        enqueue(conn, signals, firing.jobs, firing.now).await?;
    }
    Ok(applied)
}

/// [`firelane_core::Storage::trigger_recurring`].
pub(crate) async fn trigger_recurring(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    id: String,
    now: DateTime<Utc>,
) -> OpResult<JobId> {
    let Some(row) = sqlx::query(sql::RECURRING_TEMPLATE)
        .bind(&id)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Err(Error::RecurringNotFound(id).into());
    };
    let job = job_template(&row)?.instantiate();
    let created = job.id;
    enqueue(&mut *conn, signals, vec![job], now).await?;
    sqlx::query(sql::RECURRING_TRIGGERED)
        .bind(id)
        .bind(created.as_bytes().as_slice())
        .bind(us(now))
        .execute(&mut *conn)
        .await?;
    Ok(created)
}

/// [`firelane_core::Storage::set_queue_paused`].
pub(crate) async fn set_queue_paused(
    conn: &mut SqliteConnection,
    signals: &mut Signals,
    queue: String,
    paused: bool,
    now: DateTime<Utc>,
) -> OpResult<()> {
    if paused {
        sqlx::query(sql::QUEUE_PAUSE)
            .bind(&queue)
            .bind(us(now))
            .execute(&mut *conn)
            .await?;
    } else {
        let resumed: Option<String> = sqlx::query_scalar(sql::QUEUE_RESUME)
            .bind(&queue)
            .fetch_optional(&mut *conn)
            .await?;
        if resumed.is_some() {
            signals.push(Signal::Enqueued { queue });
        }
    }
    Ok(())
}
