//! The write operations. Each takes a connection, so that it runs on a pooled connection, in a
//! transaction of the store's, or (for enqueue) in the caller's own transaction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane_core::{
    Change, Completion, CompletionStatus, ContinuationDecision, ContinueOn, Enqueued, Error,
    FetchRequest, FetchedJob, Firing, HOURLY_STATS_KEPT, Heartbeat, HeartbeatReply, Initial, JobId,
    JobState, LeaseId, NewJob, Outcome, Promotion, Recovery, RecurringDef, Retention, ServerId,
    Signal,
};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row};
use uuid::Uuid;

use crate::codec::{
    OpResult, count_u32, duration_ms, int, job_template, limit_i64, micros, minus, ms,
    retry_delays, retry_policy, state, t,
};
use crate::sql::Sql;

/// What the operations need besides a connection: the statements and the wake-up channel.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) sql: Sql,
    pub(crate) channel: String,
    /// The advisory lock key that one folder of counters holds at a time.
    pub(crate) fold_key: i64,
    /// This store's mark on the notifications it sends (`<id>/`): its own listener skips
    /// them, since the store already delivered them in process.
    pub(crate) origin: String,
    /// What the store knows without asking.
    pub(crate) cache: std::sync::Arc<crate::cache::Cache>,
    /// Queue rows this store has taken since it last had the queue table vacuumed.
    pub(crate) taken: std::sync::atomic::AtomicU64,
    /// The pool, for the vacuum run in the background.
    pub(crate) pool: sqlx::PgPool,
}

/// How many queue rows a store takes before it has the queue table vacuumed: a fetch scans the
/// fetch index from its start, past the entries of rows deleted since the last vacuum (a
/// quarter of a millisecond per fetch at 50,000 of them), and autovacuum looks at a table
/// once a minute at most.
const VACUUM_EVERY: u64 = 20_000;

/// Counts taken queue rows, and every [`VACUUM_EVERY`] has the queue table vacuumed in the
/// background (skipped if another vacuum holds it; a role that does not own the table gets a
/// debug line, and autovacuum does the work).
fn taken(ctx: &Ctx, n: usize) {
    use std::sync::atomic::Ordering;
    let n = n as u64;
    let before = ctx.taken.fetch_add(n, Ordering::Relaxed);
    if before / VACUUM_EVERY == (before + n) / VACUUM_EVERY {
        return;
    }
    let pool = ctx.pool.clone();
    let sql = format!("VACUUM (SKIP_LOCKED) {}.queue", ctx.sql.schema);
    tokio::spawn(async move {
        if let Err(e) = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&pool).await {
            tracing::debug!(error = %e, "vacuuming the queue table failed");
        }
    });
}

/// Signals to deliver in process once the operation's transaction has committed.
pub(crate) type Signals = Vec<Signal>;

type PgQuery = Query<'static, Postgres, PgArguments>;

fn query(sql: &std::sync::Arc<str>) -> PgQuery {
    sqlx::query(AssertSqlSafe(std::sync::Arc::clone(sql)))
}

// ---------------------------------------------------------------------------------------------
// Moves
// ---------------------------------------------------------------------------------------------

/// How a move changes the attempt count.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Attempt {
    /// Set it.
    Set(u32),
    /// Add to it (not below zero).
    Add(i32),
}

/// One job leaving a state for another, applied only if it is still in `old` (and holds
/// `lease`, when given).
#[derive(Debug)]
pub(crate) struct Move {
    pub(crate) id: JobId,
    pub(crate) old: JobState,
    pub(crate) lease: Option<LeaseId>,
    pub(crate) new: JobState,
    pub(crate) attempt: Attempt,
    pub(crate) at: DateTime<Utc>,
    pub(crate) due: Option<DateTime<Utc>>,
    pub(crate) reason: Option<String>,
    /// The reason is "attempt N of M failed; retrying", filled in from the row.
    pub(crate) reason_retry: bool,
    pub(crate) error: Option<String>,
    pub(crate) server: Option<String>,
    pub(crate) duration: Option<Duration>,
    /// Tell the job's server that it lost its lease.
    pub(crate) revoke: bool,
    /// Apply only if the lease lapsed before this time (recovery).
    pub(crate) lapsed_before: Option<DateTime<Utc>>,
}

impl Move {
    pub(crate) fn new(id: JobId, old: JobState, new: JobState, at: DateTime<Utc>) -> Self {
        Self {
            id,
            old,
            lease: None,
            new,
            attempt: Attempt::Add(0),
            at,
            due: None,
            reason: None,
            reason_retry: false,
            error: None,
            server: None,
            duration: None,
            revoke: false,
            lapsed_before: None,
        }
    }

    fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// Enqueued at once if `due` is not after `now`, else scheduled for `due`.
    fn enqueue_or_schedule(mut self, due: DateTime<Utc>) -> Self {
        if due <= self.at {
            self.new = JobState::Enqueued;
        } else {
            self.new = JobState::Scheduled;
            self.due = Some(due);
        }
        self
    }
}

/// Moves as the columns the move statement reads.
#[derive(Default)]
struct Columns {
    id: Vec<Uuid>,
    old: Vec<&'static str>,
    lease: Vec<Option<Uuid>>,
    new: Vec<&'static str>,
    attempt_set: Vec<Option<i32>>,
    attempt_add: Vec<i32>,
    at: Vec<DateTime<Utc>>,
    due: Vec<Option<DateTime<Utc>>>,
    reason: Vec<Option<String>>,
    reason_retry: Vec<bool>,
    error: Vec<Option<String>>,
    server: Vec<Option<String>>,
    duration: Vec<Option<i64>>,
    revoke: Vec<bool>,
    lapsed_before: Vec<Option<DateTime<Utc>>>,
}

impl Columns {
    fn of(moves: Vec<Move>) -> Self {
        let mut c = Columns::default();
        for m in moves {
            c.id.push(*m.id.as_uuid());
            c.old.push(m.old.as_str());
            c.lease.push(m.lease.map(|l| *l.as_uuid()));
            c.new.push(m.new.as_str());
            let (set, add) = match m.attempt {
                Attempt::Set(n) => (Some(int(n)), 0),
                Attempt::Add(n) => (None, n),
            };
            c.attempt_set.push(set);
            c.attempt_add.push(add);
            c.at.push(t(m.at));
            c.due.push(m.due.map(t));
            c.reason.push(m.reason);
            c.reason_retry.push(m.reason_retry);
            c.error.push(m.error);
            c.server.push(m.server);
            c.duration.push(m.duration.map(micros));
            c.revoke.push(m.revoke);
            c.lapsed_before.push(m.lapsed_before.map(t));
        }
        c
    }

    /// Binds the 17 parameters of the move fragment.
    fn bind(self, q: PgQuery, ctx: &Ctx) -> PgQuery {
        q.bind(self.id)
            .bind(self.old)
            .bind(self.lease)
            .bind(self.new)
            .bind(self.attempt_set)
            .bind(self.attempt_add)
            .bind(self.at)
            .bind(self.due)
            .bind(self.reason)
            .bind(self.reason_retry)
            .bind(self.error)
            .bind(self.server)
            .bind(self.duration)
            .bind(self.revoke)
            .bind(self.lapsed_before)
            .bind(ctx.channel.clone())
            .bind(ctx.origin.clone())
    }
}

/// The moves that applied: the job's new state, by job and lease (`None` for moves without a
/// lease).
type Applied = HashMap<MoveKey, JobState>;

/// A move's job and lease.
type MoveKey = (Uuid, Option<Uuid>);

/// Records a moved row: what applied, and the signals it calls for.
fn applied_row(row: &PgRow, out: &mut Applied, sig: &mut Signals) -> OpResult<()> {
    let id: Uuid = row.try_get("id")?;
    let lease: Option<Uuid> = row.try_get("mlease")?;
    let new = state(&row.try_get::<String, _>("new_state")?)?;
    out.insert((id, lease), new);
    match new {
        JobState::Enqueued => sig.push(Signal::Enqueued {
            queue: row.try_get("queue")?,
        }),
        JobState::Scheduled => {
            if let Some(at) = row.try_get::<Option<DateTime<Utc>>, _>("due_at")? {
                sig.push(Signal::Scheduled { at });
            }
        }
        _ => {}
    }
    if row.try_get::<Option<bool>, _>("revoke")?.unwrap_or(false) {
        sig.push(Signal::Revoked {
            id: JobId::from_uuid(id),
            state: new,
        });
    }
    Ok(())
}

/// Applies moves in one statement (with their continuations, queue rows, history, counters
/// and wake-ups). Each job appears at most once per lease.
pub(crate) async fn apply(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    moves: Vec<Move>,
) -> OpResult<Applied> {
    let mut out = Applied::new();
    if moves.is_empty() {
        return Ok(out);
    }
    let rows = Columns::of(moves)
        .bind(query(&ctx.sql.moves), ctx)
        .fetch_all(&mut *conn)
        .await?;
    for row in &rows {
        applied_row(row, &mut out, sig)?;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Enqueue
// ---------------------------------------------------------------------------------------------

/// Whether any of these jobs continues another.
pub(crate) fn has_continuations(jobs: &[NewJob]) -> bool {
    jobs.iter()
        .any(|j| matches!(j.initial, Initial::Awaiting { .. }))
}

/// [`firelane_core::Storage::enqueue`], on a connection. Jobs that continue another look up
/// their parents' states with a share lock, so this should run in a transaction when there are
/// any (the store's `enqueue` opens one; `enqueue_in` runs in the caller's). With `sig`, the
/// wake-ups are also delivered in process (after the commit) and the notifications carry this
/// store's origin; without (`enqueue_in`), only the notifications wake anyone.
pub(crate) async fn enqueue(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: Option<&mut Signals>,
    jobs: Vec<NewJob>,
    now: DateTime<Utc>,
) -> OpResult<Vec<Enqueued>> {
    let now = t(now);
    let parents: Vec<Uuid> = jobs
        .iter()
        .filter_map(|j| match &j.initial {
            Initial::Awaiting { parent, .. } => Some(*parent.as_uuid()),
            _ => None,
        })
        .collect();
    let mut known: HashMap<JobId, JobState> = HashMap::new();
    if !parents.is_empty() {
        let rows = query(&ctx.sql.parent_states)
            .bind(parents)
            .fetch_all(&mut *conn)
            .await?;
        for row in rows {
            known.insert(
                JobId::from_uuid(row.try_get("id")?),
                state(&row.try_get::<String, _>("state")?)?,
            );
        }
    }

    let n = jobs.len();
    let mut out = Vec::with_capacity(n);
    let mut ids = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    let mut states = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut delays = Vec::with_capacity(n);
    let mut timeouts = Vec::with_capacity(n);
    let mut dues = Vec::with_capacity(n);
    let mut parent_ids = Vec::with_capacity(n);
    let mut ons = Vec::with_capacity(n);
    let mut reasons = Vec::with_capacity(n);
    let mut traces = Vec::with_capacity(n);
    let mut counters: BTreeMap<String, i64> = BTreeMap::new();
    let mut enqueued_queues: HashSet<&str> = HashSet::new();
    let mut earliest: Option<DateTime<Utc>> = None;
    for job in &jobs {
        let mut parent = None;
        let mut reason = None;
        let mut due = None;
        let st = match &job.initial {
            Initial::Scheduled { at } if *at > now => {
                due = Some(t(*at));
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
        known.insert(job.id, st);
        *counters.entry(format!("state:{st}")).or_default() += 1;
        match st {
            JobState::Enqueued => {
                *counters.entry(format!("queue:{}", job.queue)).or_default() += 1;
                enqueued_queues.insert(job.queue.as_str());
            }
            JobState::Scheduled => {
                earliest = earliest.min(due).or(due);
            }
            _ => {}
        }
        ids.push(*job.id.as_uuid());
        names.push(job.name.as_str());
        queues.push(job.queue.as_str());
        priorities.push(job.priority);
        args.push(job.args.as_str());
        states.push(st.as_str());
        max_attempts.push(int(job.retry.max_attempts()));
        delays.push(retry_delays(&job.retry));
        timeouts.push(job.timeout.map(ms));
        dues.push(due);
        parent_ids.push(parent.map(|(p, _)| *p.as_uuid()));
        ons.push(parent.map(|(_, on): (JobId, ContinueOn)| on.as_str()));
        reasons.push(reason);
        traces.push(job.trace_context.as_deref());
        out.push(Enqueued::new(job.id, st));
    }
    let origin = if sig.is_some() {
        ctx.origin.as_str()
    } else {
        ""
    };
    let mut payloads: Vec<String> = enqueued_queues
        .iter()
        .map(|q| format!("{origin}e:{q}"))
        .collect();
    if let Some(at) = earliest {
        payloads.push(format!("{origin}s:{}", at.timestamp_micros()));
    }
    if let Some(sig) = sig {
        sig.extend(enqueued_queues.iter().map(|q| Signal::Enqueued {
            queue: (*q).to_owned(),
        }));
        sig.extend(earliest.map(|at| Signal::Scheduled { at }));
    }
    let (keys, amounts): (Vec<String>, Vec<i64>) = counters.into_iter().unzip();
    sqlx::query(AssertSqlSafe(std::sync::Arc::clone(&ctx.sql.enqueue)))
        .bind(ids)
        .bind(names)
        .bind(queues)
        .bind(priorities)
        .bind(args)
        .bind(states)
        .bind(max_attempts)
        .bind(delays)
        .bind(timeouts)
        .bind(dues)
        .bind(parent_ids)
        .bind(ons)
        .bind(reasons)
        .bind(traces)
        .bind(now)
        .bind(keys)
        .bind(amounts)
        .bind(ctx.channel.as_str())
        .bind(payloads)
        .execute(&mut *conn)
        .await?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Fetch and complete
// ---------------------------------------------------------------------------------------------

/// The parameters of the fetch fragment for one queue.
fn bind_fetch(q: PgQuery, request: &FetchRequest, queue: &str, limit: usize) -> PgQuery {
    q.bind(queue.to_owned())
        .bind(limit_i64(limit))
        .bind(request.names.clone())
        .bind(t(request.now))
        .bind(request.server.as_str().to_owned())
        .bind(t(request.lease_until))
}

/// A fetched job from a row of the fetch's columns, with its queue position.
fn fetched(row: &PgRow) -> OpResult<(i32, i64, FetchedJob)> {
    let job = FetchedJob::new(
        JobId::from_uuid(row.try_get("id")?),
        row.try_get("name")?,
        row.try_get("queue")?,
        row.try_get("priority")?,
        row.try_get("args")?,
        count_u32(row.try_get("attempt")?),
        retry_policy(
            row.try_get("max_attempts")?,
            row.try_get::<Option<String>, _>("retry_delays")?.as_deref(),
        )?,
        row.try_get::<Option<i64>, _>("timeout_ms")?
            .map(duration_ms),
        LeaseId::from_uuid(row.try_get("lease_id")?),
        row.try_get("created_at")?,
        row.try_get("enqueued_at")?,
    )
    .with_trace_context(row.try_get("trace_context")?);
    Ok((row.try_get("qp")?, row.try_get("seq")?, job))
}

/// Puts fetched jobs in queue order: higher priority first, then first in.
fn in_order(mut jobs: Vec<(i32, i64, FetchedJob)>) -> Vec<FetchedJob> {
    jobs.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    jobs.into_iter().map(|(_, _, j)| j).collect()
}

/// Fetches from the queues of `request` from index `from` on, until the limit is reached;
/// `got` jobs were already taken.
async fn fetch_from(
    conn: &mut PgConnection,
    ctx: &Ctx,
    request: &FetchRequest,
    from: usize,
    out: &mut Vec<FetchedJob>,
) -> OpResult<()> {
    for queue in request.queues.iter().skip(from) {
        let remaining = request.limit.saturating_sub(out.len());
        if remaining == 0 {
            break;
        }
        let (empty, token) = ctx.cache.queue(queue, &request.names);
        if empty {
            continue;
        }
        let rows = bind_fetch(query(&ctx.sql.fetch), request, queue, remaining)
            .fetch_all(&mut *conn)
            .await?;
        if rows.len() < remaining {
            ctx.cache.set_empty(queue, &request.names, token);
        }
        if !rows.is_empty() {
            taken(ctx, rows.len());
        }
        let jobs = rows.iter().map(fetched).collect::<OpResult<Vec<_>>>()?;
        out.extend(in_order(jobs));
    }
    Ok(())
}

/// [`firelane_core::Storage::fetch`]: one statement per queue.
pub(crate) async fn fetch(
    conn: &mut PgConnection,
    ctx: &Ctx,
    request: FetchRequest,
) -> OpResult<Vec<FetchedJob>> {
    let mut out = Vec::new();
    fetch_from(conn, ctx, &request, 0, &mut out).await?;
    Ok(out)
}

/// The moves of completions, and for each completion the key of its move (`None`: stale at
/// once, a duplicate of an earlier completion in the batch).
fn completion_moves(completions: &[Completion]) -> OpResult<(Vec<Move>, Vec<Option<MoveKey>>)> {
    let mut seen = HashSet::new();
    let mut moves = Vec::with_capacity(completions.len());
    let mut keys = Vec::with_capacity(completions.len());
    for c in completions {
        let key = (*c.id.as_uuid(), Some(*c.lease.as_uuid()));
        if !seen.insert(key) {
            keys.push(None);
            continue;
        }
        let mut m = Move::new(c.id, JobState::Processing, JobState::Succeeded, c.at);
        m.lease = Some(c.lease);
        m.server = Some(c.server.as_str().to_owned());
        m.duration = Some(c.duration);
        let m = match &c.outcome {
            Outcome::Succeeded => m,
            Outcome::Failed { error } => {
                m.new = JobState::Failed;
                m.error = Some(error.clone());
                m
            }
            Outcome::Cancelled { reason } => {
                m.new = JobState::Deleted;
                m.reason(reason.clone())
            }
            Outcome::Retry { at, error } => {
                m.reason_retry = true;
                m.error = Some(error.clone());
                m.enqueue_or_schedule(*at)
            }
            Outcome::Snoozed { until } => {
                m.attempt = Attempt::Add(-1);
                m.reason(format!("snoozed until {until}"))
                    .enqueue_or_schedule(*until)
            }
            Outcome::HandedBack { reason } => {
                m.new = JobState::Enqueued;
                m.attempt = Attempt::Add(-1);
                m.reason(reason.clone())
            }
            other => {
                return Err(Error::Config(format!("unsupported outcome {other:?}")).into());
            }
        };
        moves.push(m);
        keys.push(Some(key));
    }
    Ok((moves, keys))
}

fn statuses(keys: Vec<Option<MoveKey>>, applied: &Applied) -> Vec<CompletionStatus> {
    keys.into_iter()
        .map(|k| match k.and_then(|k| applied.get(&k)) {
            Some(s) => CompletionStatus::Applied(*s),
            None => CompletionStatus::Stale,
        })
        .collect()
}

/// [`firelane_core::Storage::complete`]: one statement.
pub(crate) async fn complete(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    completions: Vec<Completion>,
) -> OpResult<Vec<CompletionStatus>> {
    let (moves, keys) = completion_moves(&completions)?;
    let applied = apply(conn, ctx, sig, moves).await?;
    Ok(statuses(keys, &applied))
}

// ---------------------------------------------------------------------------------------------
// Servers, leases, background passes
// ---------------------------------------------------------------------------------------------

/// [`firelane_core::Storage::heartbeat`]: one statement.
pub(crate) async fn heartbeat(
    conn: &mut PgConnection,
    ctx: &Ctx,
    heartbeat: Heartbeat,
) -> OpResult<HeartbeatReply> {
    let info = serde_json::to_string(&heartbeat.server)
        .map_err(|e| Error::Corrupt(format!("cannot write server info as JSON: {e}")))?;
    let ids: Vec<Uuid> = heartbeat
        .running
        .iter()
        .map(|(id, _)| *id.as_uuid())
        .collect();
    let leases: Vec<Uuid> = heartbeat
        .running
        .iter()
        .map(|(_, l)| *l.as_uuid())
        .collect();
    let rows = query(&ctx.sql.heartbeat)
        .bind(heartbeat.server.id.as_str().to_owned())
        .bind(info)
        .bind(t(heartbeat.now))
        .bind(ids)
        .bind(leases)
        .bind(t(heartbeat.lease_until))
        .fetch_all(&mut *conn)
        .await?;
    let mut reply = HeartbeatReply::default();
    for row in rows {
        if row.try_get::<bool, _>("held")? {
            continue;
        }
        let id = JobId::from_uuid(row.try_get("id")?);
        let now = match row.try_get::<Option<String>, _>("state")? {
            Some(s) => state(&s)?,
            None => JobState::Deleted,
        };
        reply.lost.push((id, now));
    }
    Ok(reply)
}

/// [`firelane_core::Storage::remove_server`].
pub(crate) async fn remove_server(
    conn: &mut PgConnection,
    ctx: &Ctx,
    server: &ServerId,
) -> OpResult<()> {
    query(&ctx.sql.server_delete)
        .bind(server.as_str().to_owned())
        .execute(conn)
        .await?;
    Ok(())
}

/// [`firelane_core::Storage::promote_due`]: one statement to find the due jobs (and the next
/// due time), one to move them.
pub(crate) async fn promote_due(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    now: DateTime<Utc>,
    limit: usize,
) -> OpResult<Promotion> {
    let now = t(now);
    let (known, token) = ctx.cache.next_due();
    if let Some(next_due) = known
        && next_due.is_none_or(|due| now < due)
    {
        let mut promotion = Promotion::default();
        promotion.next_due = next_due;
        return Ok(promotion);
    }
    let row = query(&ctx.sql.promote_due)
        .bind(now)
        .bind(limit_i64(limit))
        .fetch_one(&mut *conn)
        .await?;
    let ids: Vec<Uuid> = row.try_get("ids")?;
    let mut promotion = Promotion::default();
    promotion.next_due = row.try_get("next_due")?;
    let moves: Vec<Move> = ids
        .into_iter()
        .map(|id| {
            Move::new(
                JobId::from_uuid(id),
                JobState::Scheduled,
                JobState::Enqueued,
                now,
            )
            .reason("due")
        })
        .collect();
    let taken = moves.len();
    let applied = apply(conn, ctx, sig, moves).await?;
    promotion.promoted = applied.len() as u64;
    if taken < limit {
        // Every due job was taken: nothing is due before `next_due` until a job is scheduled.
        ctx.cache.set_next_due(promotion.next_due, token);
    }
    Ok(promotion)
}

/// Folds the counter deltas into the totals (unless another store is folding right now).
pub(crate) async fn fold(conn: &mut PgConnection, ctx: &Ctx) -> OpResult<()> {
    query(&ctx.sql.fold)
        .bind(ctx.fold_key)
        .execute(conn)
        .await?;
    Ok(())
}

/// [`firelane_core::Storage::recover`]: one statement reads everything to do (and folds the
/// counters); the moves, if any, are one more.
pub(crate) async fn recover(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    now: DateTime<Utc>,
    dead_after: Duration,
) -> OpResult<Recovery> {
    let now = t(now);
    let rows = query(&ctx.sql.recover_scan)
        .bind(ctx.fold_key)
        .bind(minus(now, dead_after))
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
    let mut recovery = Recovery::default();
    let mut moves = Vec::new();
    let mut last = HashSet::new();
    let mut lapsed_rows: Vec<&PgRow> = Vec::new();
    for row in &rows {
        match row.try_get::<String, _>("kind")?.as_str() {
            "d" => recovery
                .dead_servers
                .push(ServerId::from_string(row.try_get("server")?)),
            "l" => lapsed_rows.push(row),
            _ => {
                let id = JobId::from_uuid(row.try_get("id")?);
                let parent = JobId::from_uuid(row.try_get("parent")?);
                let parent_state = state(&row.try_get::<String, _>("parent_state")?)?;
                let at: DateTime<Utc> = row.try_get("parent_at")?;
                let on: ContinueOn = match row.try_get::<Option<String>, _>("continue_on")? {
                    Some(s) => s.parse().map_err(|_| {
                        Error::Corrupt(format!("unknown continuation condition {s:?}"))
                    })?,
                    None => ContinueOn::default(),
                };
                let new = match on.decide(parent_state) {
                    ContinuationDecision::Wait => continue,
                    ContinuationDecision::Enqueue => JobState::Enqueued,
                    ContinuationDecision::Delete => JobState::Deleted,
                };
                moves.push(
                    Move::new(id, JobState::Awaiting, new, at)
                        .reason(format!("parent {parent} {parent_state}")),
                );
            }
        }
    }
    recovery.dead_servers.sort();
    // Oldest lapsed lease first.
    lapsed_rows.sort_by_key(|r| {
        (
            r.try_get::<Option<DateTime<Utc>>, _>("lease_until")
                .ok()
                .flatten(),
            r.try_get::<Option<Uuid>, _>("id").ok().flatten(),
        )
    });
    for row in lapsed_rows {
        let id = JobId::from_uuid(row.try_get("id")?);
        let attempt = count_u32(row.try_get::<Option<i32>, _>("attempt")?.unwrap_or(0));
        let max = count_u32(row.try_get::<Option<i32>, _>("max_attempts")?.unwrap_or(0));
        let server: Option<String> = row.try_get("server")?;
        let until: Option<DateTime<Utc>> = row.try_get("lease_until")?;
        let lapsed = format!(
            "the lease of server {} lapsed at {}",
            server.as_deref().unwrap_or("(unknown)"),
            until.map_or_else(|| "an unknown time".to_owned(), |t| t.to_rfc3339())
        );
        let mut m = Move::new(id, JobState::Processing, JobState::Enqueued, now);
        m.lease = row
            .try_get::<Option<Uuid>, _>("lease_id")?
            .map(LeaseId::from_uuid);
        m.lapsed_before = Some(now);
        m.server = server;
        if attempt < max {
            m.reason = Some(lapsed);
        } else {
            let lapsed = format!("{lapsed} on the last allowed attempt");
            m.new = JobState::Failed;
            m.error = Some(lapsed.clone());
            m.reason = Some(lapsed);
            last.insert(id);
        }
        moves.push(m);
    }
    let keys: Vec<(JobId, MoveKey)> = moves
        .iter()
        .filter(|m| m.old == JobState::Processing)
        .map(|m| (m.id, (*m.id.as_uuid(), m.lease.map(|l| *l.as_uuid()))))
        .collect();
    let applied = apply(&mut *conn, ctx, sig, moves).await?;
    for (id, key) in keys {
        if applied.contains_key(&key) {
            if last.contains(&id) {
                recovery.failed.push(id);
            } else {
                recovery.requeued.push(id);
            }
        }
    }
    recovery.requeued.sort();
    recovery.failed.sort();
    Ok(recovery)
}

/// [`firelane_core::Storage::expire`].
pub(crate) async fn expire(
    conn: &mut PgConnection,
    ctx: &Ctx,
    now: DateTime<Utc>,
    retention: Retention,
    limit: usize,
) -> OpResult<u64> {
    fold(&mut *conn, ctx).await?;
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
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(std::sync::Arc::clone(&ctx.sql.expire_jobs)))
            .bind(s.as_str())
            .bind(minus(now, keep))
            .bind(i64::try_from(remaining).unwrap_or(i64::MAX))
            .fetch_one(&mut *conn)
            .await?;
        removed += u64::try_from(n).unwrap_or(0);
    }
    query(&ctx.sql.expire_hours)
        .bind(minus(now, HOURLY_STATS_KEPT))
        .execute(&mut *conn)
        .await?;
    Ok(removed)
}

// ---------------------------------------------------------------------------------------------
// A person's actions
// ---------------------------------------------------------------------------------------------

/// Locks a job (its queue row first, as fetch does) and reads its state, attempt and lease.
async fn lock_head(
    conn: &mut PgConnection,
    ctx: &Ctx,
    id: JobId,
) -> OpResult<Option<(JobState, u32, Option<LeaseId>)>> {
    query(&ctx.sql.lock_queue_row)
        .bind(*id.as_uuid())
        .fetch_optional(&mut *conn)
        .await?;
    let Some(row) = query(&ctx.sql.head_for_update)
        .bind(*id.as_uuid())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((
        state(&row.try_get::<String, _>("state")?)?,
        count_u32(row.try_get("attempt")?),
        row.try_get::<Option<Uuid>, _>("lease_id")?
            .map(LeaseId::from_uuid),
    )))
}

/// [`firelane_core::Storage::delete`] of one job, in the caller's transaction.
pub(crate) async fn delete_one(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    id: JobId,
    reason: &str,
    now: DateTime<Utc>,
) -> OpResult<Change> {
    let Some((from, _, _)) = lock_head(&mut *conn, ctx, id).await? else {
        return Ok(Change::NotFound);
    };
    if !from.can_delete() {
        return Ok(Change::Refused { state: from });
    }
    let mut m = Move::new(id, from, JobState::Deleted, t(now)).reason(reason);
    m.revoke = from == JobState::Processing;
    apply(conn, ctx, sig, vec![m]).await?;
    Ok(Change::Changed { from })
}

/// [`firelane_core::Storage::requeue`] of one job, in the caller's transaction.
pub(crate) async fn requeue_one(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    id: JobId,
    reason: &str,
    now: DateTime<Utc>,
) -> OpResult<Change> {
    let Some((from, _, _)) = lock_head(&mut *conn, ctx, id).await? else {
        return Ok(Change::NotFound);
    };
    if !from.can_requeue() {
        return Ok(Change::Refused { state: from });
    }
    let mut m = Move::new(id, from, JobState::Enqueued, t(now)).reason(reason);
    if from.is_finished() {
        m.attempt = Attempt::Set(0);
    }
    m.revoke = from == JobState::Processing;
    apply(conn, ctx, sig, vec![m]).await?;
    Ok(Change::Changed { from })
}

/// [`firelane_core::Storage::set_queue_paused`].
pub(crate) async fn set_queue_paused(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    queue: &str,
    paused: bool,
    now: DateTime<Utc>,
) -> OpResult<()> {
    if paused {
        query(&ctx.sql.queue_pause)
            .bind(queue.to_owned())
            .bind(t(now))
            .execute(conn)
            .await?;
    } else {
        let resumed = query(&ctx.sql.queue_resume)
            .bind(queue.to_owned())
            .bind(ctx.channel.clone())
            .bind(ctx.origin.clone())
            .fetch_optional(conn)
            .await?;
        if resumed.is_some() {
            sig.push(Signal::Enqueued {
                queue: queue.to_owned(),
            });
        }
    }
    Ok(())
}

/// Sends `RecurringChanged` in the caller's transaction (delivered when it commits).
async fn recurring_changed(conn: &mut PgConnection, ctx: &Ctx, sig: &mut Signals) -> OpResult<()> {
    query(&ctx.sql.notify)
        .bind(ctx.channel.clone())
        .bind(format!("{}r", ctx.origin))
        .execute(conn)
        .await?;
    sig.push(Signal::RecurringChanged);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Recurring jobs
// ---------------------------------------------------------------------------------------------

/// [`firelane_core::Storage::upsert_recurring`], in the caller's transaction.
pub(crate) async fn upsert_recurring(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    def: RecurringDef,
    next_run: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> OpResult<()> {
    let misfire = serde_json::to_string(&def.misfire)
        .map_err(|e| Error::Corrupt(format!("cannot write a misfire policy as JSON: {e}")))?;
    let job = &def.job;
    query(&ctx.sql.recurring_upsert)
        .bind(def.id.clone())
        .bind(def.schedule.expr().to_owned())
        .bind(def.schedule.time_zone().to_owned())
        .bind(misfire)
        .bind(job.name.clone())
        .bind(job.queue.clone())
        .bind(job.priority)
        .bind(job.args.clone())
        .bind(int(job.retry.max_attempts()))
        .bind(retry_delays(&job.retry))
        .bind(job.timeout.map(ms))
        .bind(next_run.map(t))
        .bind(t(now))
        .execute(&mut *conn)
        .await?;
    recurring_changed(conn, ctx, sig).await
}

/// [`firelane_core::Storage::remove_recurring`], in the caller's transaction.
pub(crate) async fn remove_recurring(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    id: &str,
) -> OpResult<bool> {
    let removed = query(&ctx.sql.recurring_delete)
        .bind(id.to_owned())
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if removed {
        recurring_changed(conn, ctx, sig).await?;
    }
    Ok(removed)
}

/// [`firelane_core::Storage::set_recurring_paused`], in the caller's transaction.
pub(crate) async fn set_recurring_paused(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    id: &str,
    paused: bool,
    next_run: Option<DateTime<Utc>>,
) -> OpResult<bool> {
    let found = if paused {
        query(&ctx.sql.recurring_pause)
            .bind(id.to_owned())
            .fetch_optional(&mut *conn)
            .await?
    } else {
        query(&ctx.sql.recurring_resume)
            .bind(id.to_owned())
            .bind(next_run.map(t))
            .fetch_optional(&mut *conn)
            .await?
    }
    .is_some();
    if found {
        // A pause too: other stores keep a copy of the list of recurring jobs.
        recurring_changed(conn, ctx, sig).await?;
    }
    Ok(found)
}

/// [`firelane_core::Storage::fire_recurring`], in the caller's transaction: the
/// compare-and-set on the awaited occurrence, then the jobs.
pub(crate) async fn fire_recurring(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    firing: Firing,
) -> OpResult<bool> {
    let last_job = firing.jobs.last().map(|j| *j.id.as_uuid());
    let applied = query(&ctx.sql.recurring_fire)
        .bind(firing.id.clone())
        .bind(t(firing.expected_next_run))
        .bind(firing.next_run.map(t))
        .bind(firing.error.clone())
        .bind(last_job)
        .bind(t(firing.now))
        .fetch_optional(&mut *conn)
        .await?
        .is_some();
    if applied {
        if !firing.jobs.is_empty() {
            enqueue(&mut *conn, ctx, Some(sig), firing.jobs, firing.now).await?;
        }
        // Its next run moved: other stores keep a copy of the list of recurring jobs.
        recurring_changed(conn, ctx, sig).await?;
    }
    Ok(applied)
}

/// [`firelane_core::Storage::trigger_recurring`], in the caller's transaction.
pub(crate) async fn trigger_recurring(
    conn: &mut PgConnection,
    ctx: &Ctx,
    sig: &mut Signals,
    id: &str,
    now: DateTime<Utc>,
) -> OpResult<JobId> {
    let Some(row) = query(&ctx.sql.recurring_template)
        .bind(id.to_owned())
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Err(Error::RecurringNotFound(id.to_owned()).into());
    };
    let job = job_template(&row)?.instantiate();
    let created = job.id;
    enqueue(&mut *conn, ctx, Some(sig), vec![job], now).await?;
    query(&ctx.sql.recurring_triggered)
        .bind(id.to_owned())
        .bind(*created.as_uuid())
        .bind(t(now))
        .execute(&mut *conn)
        .await?;
    recurring_changed(conn, ctx, sig).await?;
    Ok(created)
}
