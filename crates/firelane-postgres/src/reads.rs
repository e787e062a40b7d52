//! The monitoring queries. Each whose answer is put together from more than one statement runs
//! in one read-only `REPEATABLE READ` transaction, so its answer is one consistent snapshot
//! (a list of enqueued jobs may run a second statement, but answers with one statement's rows).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use firelane_core::{
    Error, HistoryEntry, HourlyStats, JobDetails, JobId, JobQuery, JobRecord, JobState, QueueStats,
    RecurringRecord, ServerInfo, ServerRecord, Stats,
};
use sqlx::{AssertSqlSafe, PgConnection, Row};
use uuid::Uuid;

use crate::codec::{
    JOB_COLUMNS, OpResult, RECURRING_COLUMNS, count_u32, count_u64, duration_us, history_entry,
    int, job_record, recurring_record, state, t,
};
use crate::ops::Ctx;

/// [`firelane_core::Storage::job`]. The history is put together from the job's first entry
/// (kept in its row), one row per later state change, where a row that ends an attempt also
/// holds the attempt's start, the end of a successful last attempt (kept in the job's row:
/// `ended_by`, `ended_us`, with the row's state, time, reason and attempt) and the start of the
/// running attempt (in the job's row).
pub(crate) async fn job(
    conn: &mut PgConnection,
    ctx: &Ctx,
    id: JobId,
) -> OpResult<Option<JobDetails>> {
    let s = &ctx.sql.schema;
    let key = *id.as_uuid();
    let Some(row) = sqlx::query(AssertSqlSafe(format!(
        "SELECT {JOB_COLUMNS}, initial_state, initial_reason, started_at, started_by, ended_by,
                ended_us
         FROM {s}.jobs WHERE id = $1"
    )))
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let record = job_record(&row)?;
    let mut history = Vec::new();
    let mut first = HistoryEntry::new(
        state(&row.try_get::<String, _>("initial_state")?)?,
        record.created_at,
        0,
    );
    first.reason = row.try_get("initial_reason")?;
    history.push(first);
    let started = |at: Option<DateTime<Utc>>, by: Option<String>, attempt: Option<i32>| {
        at.map(|at| HistoryEntry::attempt_started(at, count_u32(attempt.unwrap_or(0)), by))
    };
    for h in sqlx::query(AssertSqlSafe(format!(
        "SELECT state, at, reason, server, attempt, duration_us, error, started_at, started_by,
                started_attempt
         FROM {s}.history WHERE job_id = $1 ORDER BY seq"
    )))
    .bind(key)
    .fetch_all(&mut *conn)
    .await?
    {
        history.extend(started(
            h.try_get("started_at")?,
            h.try_get("started_by")?,
            h.try_get("started_attempt")?,
        ));
        history.push(history_entry(&h)?);
    }
    if let Some(server) = row.try_get::<Option<String>, _>("ended_by")? {
        history.extend(started(
            row.try_get("started_at")?,
            row.try_get("started_by")?,
            Some(int(record.attempt)),
        ));
        let duration = row.try_get::<Option<i64>, _>("ended_us")?.map(duration_us);
        history.push(HistoryEntry::kept_in_row(&record, server, duration));
    }
    if record.state == JobState::Processing {
        history.extend(started(
            row.try_get("started_at")?,
            row.try_get("started_by")?,
            Some(int(record.attempt)),
        ));
    }
    let continuations: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT id FROM {s}.jobs WHERE parent_id = $1 ORDER BY id"
    )))
    .bind(key)
    .fetch_all(&mut *conn)
    .await?;
    Ok(Some(JobDetails::new(
        record,
        history,
        continuations.into_iter().map(JobId::from_uuid).collect(),
    )))
}

/// A value bound to a query built piece by piece.
enum Bind {
    Text(String),
    Int(i64),
    Time(DateTime<Utc>),
    Id(Uuid),
}

/// The values bound to a query built piece by piece, numbered in the order they are added.
#[derive(Default)]
struct Binds(Vec<Bind>);

impl Binds {
    /// Adds `value` and returns its placeholder (`$n`) for the text.
    fn add(&mut self, value: Bind) -> String {
        self.0.push(value);
        format!("${}", self.0.len())
    }

    /// The conditions of `query`'s queue and name filters (columns of both `jobs` and `queue`),
    /// each starting with ` AND`.
    fn queue_and_name(&mut self, query: &JobQuery) -> String {
        let mut out = String::new();
        if let Some(queue) = &query.queue {
            let p = self.add(Bind::Text(queue.clone()));
            out.push_str(&format!(" AND queue = {p}"));
        }
        if let Some(name) = &query.name {
            let p = self.add(Bind::Text(name.clone()));
            out.push_str(&format!(" AND name = {p}"));
        }
        out
    }

    /// The conditions of `query`'s creation time filter (a column of `jobs` only), each
    /// starting with ` AND`.
    fn created(&mut self, query: &JobQuery) -> String {
        let mut out = String::new();
        if let Some(from) = query.created_from {
            let p = self.add(Bind::Time(t(from)));
            out.push_str(&format!(" AND created_at >= {p}"));
        }
        if let Some(to) = query.created_to {
            let p = self.add(Bind::Time(t(to)));
            out.push_str(&format!(" AND created_at < {p}"));
        }
        out
    }
}

/// [`firelane_core::Storage::list_jobs`].
pub(crate) async fn list_jobs(
    conn: &mut PgConnection,
    ctx: &Ctx,
    query: JobQuery,
) -> OpResult<Vec<JobRecord>> {
    let s = &ctx.sql.schema;
    let limit = i64::from(query.effective_limit());
    let offset = i64::try_from(query.offset).unwrap_or(i64::MAX);
    // Retries are scheduled jobs attempted before, whatever state the query names (as in the
    // SQLite store).
    let mut query = query;
    if query.retries {
        query.state = Some(JobState::Scheduled);
    }

    // The enqueued jobs of one queue, in the order a fetch takes them: from the queue table's
    // fetch index, then each job by id.
    let only_queue_order = query.state == Some(JobState::Enqueued)
        && query.queue.is_some()
        && query.name.is_none()
        && query.search.is_none()
        && query.created_from.is_none()
        && query.created_to.is_none();
    if only_queue_order {
        return queue_page(conn, s, &query, true, limit, offset).await;
    }

    // The newest enqueued jobs. They are usually among the newest jobs of all (fetches take
    // the oldest first), so the newest jobs are read first: 200, or four times the offset
    // plus the limit if more; a full page there is exact, since every enqueued job further
    // back is older. Otherwise (old jobs waiting behind many newer finished ones: a paused
    // queue, a retry) the page comes from the queue table instead of every job newer than
    // them. Each page is one statement's answer, so one snapshot's.
    if query.state == Some(JobState::Enqueued) && query.search.is_none() {
        let window = RECENT_WINDOW.max(offset.saturating_add(limit).saturating_mul(4));
        let rows = filtered(conn, s, &query, Some(window), limit, offset).await?;
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) >= limit {
            return Ok(rows);
        }
        return queue_page(conn, s, &query, false, limit, offset).await;
    }
    filtered(conn, s, &query, None, limit, offset).await
}

/// A page of enqueued jobs from the queue table, which holds exactly them: one queue's in the
/// order a fetch takes them (`fetch_order`, through the fetch index), or newest first (the
/// queue table read whole, or one queue's part of its index, narrow rows). The jobs are then
/// looked up by id from an array, never joined: a plan made while `jobs` was small could join
/// by walking all of it later (see `sql.rs`). Filters by queue and name in the queue table;
/// with a creation time filter, every queued job passing those is looked up and filtered
/// before the page is cut.
async fn queue_page(
    conn: &mut PgConnection,
    s: &str,
    query: &JobQuery,
    fetch_order: bool,
    limit: i64,
    offset: i64,
) -> OpResult<Vec<JobRecord>> {
    let mut binds = Binds::default();
    let picked = format!("true{}", binds.queue_and_name(query));
    let created = binds.created(query);
    let pl = binds.add(Bind::Int(limit));
    let po = binds.add(Bind::Int(offset));
    // The page is cut in the queue table, unless the creation time (only in `jobs`) filters.
    let (inner, outer) = if created.is_empty() {
        let key = if fetch_order {
            "priority DESC, seq"
        } else {
            "job_id DESC"
        };
        (
            format!(" ORDER BY {key} LIMIT {pl} OFFSET {po}"),
            String::new(),
        )
    } else {
        (String::new(), format!(" LIMIT {pl} OFFSET {po}"))
    };
    // A job's row keeps its priority and its queue row's `seq` (`queue_seq`).
    let order = if fetch_order {
        "j.priority DESC, j.queue_seq"
    } else {
        "j.id DESC"
    };
    let sql = format!(
        "SELECT {JOB_COLUMNS} FROM {s}.jobs j
         WHERE j.id = ANY (ARRAY(SELECT job_id FROM {s}.queue WHERE {picked}{inner}))
           AND j.state = 'enqueued'{created}
         ORDER BY {order}{outer}"
    );
    run(sql, binds, conn).await
}

/// Runs a statement built piece by piece with its bound values; its rows are jobs.
async fn run(sql: String, binds: Binds, conn: &mut PgConnection) -> OpResult<Vec<JobRecord>> {
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for b in binds.0 {
        q = match b {
            Bind::Text(v) => q.bind(v),
            Bind::Int(v) => q.bind(v),
            Bind::Time(v) => q.bind(v),
            Bind::Id(v) => q.bind(v),
        };
    }
    q.fetch_all(conn).await?.iter().map(job_record).collect()
}

/// How many of the newest jobs a list of enqueued jobs reads first, at least.
const RECENT_WINDOW: i64 = 200;

/// A page of the jobs that pass `query`'s filters, newest first; with `window`, among the
/// newest `window` jobs only.
///
/// The state goes into the text as a literal (one of [`JobState::as_str`]'s fixed names), not
/// as a parameter: the partial indexes of the states off the hot path serve only statements
/// whose text names the state, and PostgreSQL's generic plan for a prepared statement with the
/// state bound walks the primary key past every finished job. Every other value is bound.
async fn filtered(
    conn: &mut PgConnection,
    s: &str,
    query: &JobQuery,
    window: Option<i64>,
    limit: i64,
    offset: i64,
) -> OpResult<Vec<JobRecord>> {
    let mut binds = Binds::default();
    let from = match window {
        Some(w) => {
            let p = binds.add(Bind::Int(w));
            format!("(SELECT * FROM {s}.jobs ORDER BY id DESC LIMIT {p}) AS jobs")
        }
        None => format!("{s}.jobs"),
    };
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM {from} WHERE true");
    if let Some(st) = query.state {
        sql.push_str(&format!(" AND state = '{}'", st.as_str()));
        if st == JobState::Enqueued {
            // An empty queue table answers at once.
            sql.push_str(&format!(" AND EXISTS (SELECT 1 FROM {s}.queue)"));
        }
    }
    if query.retries {
        sql.push_str(" AND attempt > 0");
    }
    sql.push_str(&binds.queue_and_name(query));
    sql.push_str(&binds.created(query));
    if let Some(text) = &query.search {
        let text = text.trim();
        if let Ok(id) = text.parse::<JobId>() {
            let p = binds.add(Bind::Id(*id.as_uuid()));
            sql.push_str(&format!(" AND id = {p}"));
        } else {
            // Among the newest `SEARCH_WINDOW` jobs that pass the other filters only, so that a
            // search that matches little still answers in bounded time.
            let w = binds.add(Bind::Int(i64::from(JobQuery::SEARCH_WINDOW)));
            let p = binds.add(Bind::Text(text.to_owned()));
            sql = format!(
                "SELECT * FROM ({sql} ORDER BY id DESC LIMIT {w}) AS w
                 WHERE (queue = {p} OR strpos(name, {p}) > 0 OR strpos(args, {p}) > 0)"
            );
        }
    }
    let pl = binds.add(Bind::Int(limit));
    let po = binds.add(Bind::Int(offset));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT {pl} OFFSET {po}"));
    run(sql, binds, conn).await
}

/// [`firelane_core::Storage::stats`]: the counters (folded totals plus the deltas not folded
/// yet), the paused queues, the number of servers and when each queue's head job was
/// enqueued, in one statement.
pub(crate) async fn stats(conn: &mut PgConnection, ctx: &Ctx) -> OpResult<Stats> {
    let mut states = BTreeMap::new();
    let mut queues: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
    let mut heads: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
    let (mut succeeded_total, mut failed_total, mut servers) = (0, 0, 0);
    let rows = sqlx::query(AssertSqlSafe(std::sync::Arc::clone(&ctx.sql.stats)))
        .fetch_all(conn)
        .await?;
    for row in rows {
        let key: String = row.try_get("key")?;
        let n = count_u64(row.try_get::<Option<i64>, _>("n")?.unwrap_or(0));
        if let Some(s) = key.strip_prefix("state:") {
            if n > 0 {
                states.insert(state(s)?, n);
            }
        } else if let Some(q) = key.strip_prefix("queue:") {
            if n > 0 {
                queues.entry(q.to_owned()).or_default().0 = n;
            }
        } else if let Some(q) = key.strip_prefix("proc:") {
            if n > 0 {
                queues.entry(q.to_owned()).or_default().1 = n;
            }
        } else if let Some(q) = key.strip_prefix("head:") {
            if let Some(at) = row.try_get::<Option<DateTime<Utc>>, _>("at")? {
                heads.insert(q.to_owned(), at);
            }
        } else if let Some(q) = key.strip_prefix("paused:") {
            queues.entry(q.to_owned()).or_default().2 = true;
        } else if key == "total:succeeded" {
            succeeded_total = n;
        } else if key == "total:failed" {
            failed_total = n;
        } else if key == "servers" {
            servers = n;
        }
    }
    let queues = queues
        .into_iter()
        .map(|(name, (enqueued, processing, paused))| {
            let head = heads.get(&name).copied();
            QueueStats::new(name, enqueued, processing, paused).with_head_enqueued_at(head)
        })
        .collect();
    Ok(Stats::new(states, queues, servers).totals(succeeded_total, failed_total))
}

/// [`firelane_core::Storage::stats_history`].
pub(crate) async fn stats_history(
    conn: &mut PgConnection,
    ctx: &Ctx,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> OpResult<Vec<HourlyStats>> {
    sqlx::query(AssertSqlSafe(std::sync::Arc::clone(&ctx.sql.stats_history)))
        .bind(t(from))
        .bind(t(to))
        .fetch_all(conn)
        .await?
        .iter()
        .map(|row| {
            Ok(HourlyStats::new(
                row.try_get("hour")?,
                count_u64(row.try_get("succeeded")?),
                count_u64(row.try_get("failed")?),
            ))
        })
        .collect()
}

/// [`firelane_core::Storage::servers`].
pub(crate) async fn servers(conn: &mut PgConnection, ctx: &Ctx) -> OpResult<Vec<ServerRecord>> {
    let s = &ctx.sql.schema;
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT info, last_heartbeat FROM {s}.servers ORDER BY id COLLATE \"C\""
    )))
    .fetch_all(conn)
    .await?;
    rows.iter()
        .map(|row| {
            let info: String = row.try_get("info")?;
            let info: ServerInfo = serde_json::from_str(&info)
                .map_err(|e| Error::Corrupt(format!("bad server info {info:?}: {e}")))?;
            Ok(ServerRecord::new(info, row.try_get("last_heartbeat")?))
        })
        .collect()
}

/// [`firelane_core::Storage::recurring`].
pub(crate) async fn recurring(
    conn: &mut PgConnection,
    ctx: &Ctx,
    id: &str,
) -> OpResult<Option<RecurringRecord>> {
    let s = &ctx.sql.schema;
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {RECURRING_COLUMNS} FROM {s}.recurring WHERE id = $1"
    )))
    .bind(id.to_owned())
    .fetch_optional(conn)
    .await?
    .as_ref()
    .map(recurring_record)
    .transpose()
}

/// [`firelane_core::Storage::list_recurring`].
pub(crate) async fn list_recurring(
    conn: &mut PgConnection,
    ctx: &Ctx,
) -> OpResult<Vec<RecurringRecord>> {
    let s = &ctx.sql.schema;
    sqlx::query(AssertSqlSafe(format!(
        "SELECT {RECURRING_COLUMNS} FROM {s}.recurring ORDER BY id COLLATE \"C\""
    )))
    .fetch_all(conn)
    .await?
    .iter()
    .map(recurring_record)
    .collect()
}
