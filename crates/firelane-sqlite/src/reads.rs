//! The monitoring queries, run on a read connection inside one read transaction each, so that
//! every answer is one consistent snapshot.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use firelane_core::{
    Error, HistoryEntry, HourlyStats, JobDetails, JobId, JobQuery, JobRecord, JobState, QueueStats,
    RecurringRecord, ServerInfo, ServerRecord, Stats,
};
use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use crate::codec::{
    JOB_COLUMNS, OpResult, RECURRING_COLUMNS, count_u32, count_u64, duration_us, history_entry,
    job_id, job_record, recurring_record, state, time, us,
};

/// [`firelane_core::Storage::job`]. The history is put together from the job's first entry
/// (kept in its row), one row per later state change, where a row that ends an attempt also
/// holds the attempt's start, the end of a successful last attempt (kept in the job's row
/// since schema version 7: `ended_by`, `ended_us`, with the row's state, time, reason and
/// attempt) and the start of the running attempt (in the job's row). Rows written before
/// schema version 6 hold every entry themselves (their job has no `initial_state` and their
/// attempts no start).
pub(crate) async fn job(conn: &mut SqliteConnection, id: JobId) -> OpResult<Option<JobDetails>> {
    let key = id.as_bytes().as_slice();
    let sql = format!(
        "SELECT {JOB_COLUMNS}, initial_state, initial_reason, started_at, started_by,
                ended_by, ended_us
         FROM firelane_jobs WHERE id = ?"
    );
    let Some(row) = sqlx::query(AssertSqlSafe(sql))
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let record = job_record(&row)?;
    let mut history = Vec::new();
    if let Some(first) = row.try_get::<Option<String>, _>("initial_state")? {
        let mut entry = HistoryEntry::new(state(&first)?, record.created_at, 0);
        entry.reason = row.try_get("initial_reason")?;
        history.push(entry);
    }
    let started = |at: Option<i64>, by: Option<String>, attempt: Option<i64>| -> OpResult<_> {
        at.map(|at| {
            Ok(HistoryEntry::attempt_started(
                time(at)?,
                count_u32(attempt.unwrap_or(0)),
                by,
            ))
        })
        .transpose()
    };
    for h in sqlx::query(
        "SELECT state, at, reason, server, attempt, duration_us, error, started_at, started_by,
                started_attempt
         FROM firelane_history WHERE job_id = ? ORDER BY seq",
    )
    .bind(key)
    .fetch_all(&mut *conn)
    .await?
    {
        history.extend(started(
            h.try_get("started_at")?,
            h.try_get("started_by")?,
            h.try_get("started_attempt")?,
        )?);
        history.push(history_entry(&h)?);
    }
    if let Some(server) = row.try_get::<Option<String>, _>("ended_by")? {
        history.extend(started(
            row.try_get("started_at")?,
            row.try_get("started_by")?,
            Some(i64::from(record.attempt)),
        )?);
        let duration = row.try_get::<Option<i64>, _>("ended_us")?.map(duration_us);
        history.push(HistoryEntry::kept_in_row(&record, server, duration));
    }
    if record.state == JobState::Processing {
        history.extend(started(
            row.try_get("started_at")?,
            row.try_get("started_by")?,
            Some(i64::from(record.attempt)),
        )?);
    }
    let continuations = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT id FROM firelane_jobs WHERE parent_id = ? ORDER BY id",
    )
    .bind(key)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(|b| job_id(b))
    .collect::<Result<Vec<_>, Error>>()?;
    Ok(Some(JobDetails::new(record, history, continuations)))
}

/// [`firelane_core::Storage::list_jobs`].
pub(crate) async fn list_jobs(
    conn: &mut SqliteConnection,
    query: JobQuery,
) -> OpResult<Vec<JobRecord>> {
    let limit = i64::from(query.effective_limit());
    let offset = i64::try_from(query.offset).unwrap_or(i64::MAX);

    // The enqueued jobs of one queue, in the order a fetch takes them: read from the queue
    // table's fetch index, then each job by id.
    let only_queue_order = query.state == Some(JobState::Enqueued)
        && query.queue.is_some()
        && query.name.is_none()
        && query.search.is_none()
        && query.created_from.is_none()
        && query.created_to.is_none();
    if only_queue_order {
        let sql = format!(
            "WITH page AS (SELECT job_id, priority AS qp, seq AS qs FROM firelane_queue
                 WHERE queue = ?1 ORDER BY priority DESC, seq LIMIT ?2 OFFSET ?3)
             SELECT {JOB_COLUMNS} FROM page JOIN firelane_jobs ON firelane_jobs.id = page.job_id
             ORDER BY page.qp DESC, page.qs"
        );
        return sqlx::query(AssertSqlSafe(sql))
            .bind(query.queue.as_deref())
            .bind(limit)
            .bind(offset)
            .fetch_all(conn)
            .await?
            .iter()
            .map(job_record)
            .collect();
    }

    // Only fixed fragments go into the text; every value is bound, except the constants of
    // the retries filter, which must be literal for SQLite to use their partial index.
    let mut binds: Vec<Bind> = Vec::new();
    // Each state filter names its index: without statistics SQLite prefers
    // `firelane_jobs_state (state, id)` for the retries, which reads every scheduled job newer
    // than the oldest retry; and the state index holds only some states, so those add the
    // literal term of its condition that lets SQLite use it. Enqueued and succeeded jobs (the
    // hot path's, left out of every state index) are read newest first through the key.
    let (source, mut filters) = if query.retries {
        (
            "firelane_jobs INDEXED BY firelane_jobs_retries",
            " AND state = 'scheduled' AND attempt > 0".to_owned(),
        )
    } else if query.state == Some(JobState::Processing) {
        (
            "firelane_jobs INDEXED BY firelane_jobs_processing",
            " AND state = 'processing'".to_owned(),
        )
    } else if let Some(s) = query.state {
        binds.push(Bind::Text(s.as_str().to_owned()));
        if matches!(s, JobState::Enqueued | JobState::Succeeded) {
            ("firelane_jobs", " AND state = ?".to_owned())
        } else {
            (
                "firelane_jobs INDEXED BY firelane_jobs_state",
                " AND state = ? AND state IN ('scheduled', 'awaiting', 'failed', 'deleted')"
                    .to_owned(),
            )
        }
    } else {
        ("firelane_jobs", String::new())
    };
    if let Some(queue) = &query.queue {
        filters.push_str(" AND queue = ?");
        binds.push(Bind::Text(queue.clone()));
    }
    if let Some(name) = &query.name {
        filters.push_str(" AND name = ?");
        binds.push(Bind::Text(name.clone()));
    }
    if let Some(from) = query.created_from {
        filters.push_str(" AND created_at >= ?");
        binds.push(Bind::Int(us(from)));
    }
    if let Some(to) = query.created_to {
        filters.push_str(" AND created_at < ?");
        binds.push(Bind::Int(us(to)));
    }
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM {source} WHERE 1 = 1{filters}");
    if let Some(text) = &query.search {
        let text = text.trim();
        if let Ok(id) = text.parse::<JobId>() {
            sql.push_str(" AND id = ?");
            binds.push(Bind::Blob(id.as_bytes().to_vec()));
        } else {
            // Within the newest jobs that pass the other filters (a window, so that a search
            // that matches little does not read the whole table).
            sql.push_str(&format!(
                " AND id IN (SELECT id FROM {source} WHERE 1 = 1{filters} ORDER BY id DESC LIMIT ?)"
            ));
            binds.extend(binds.clone());
            binds.push(Bind::Int(i64::from(JobQuery::SEARCH_WINDOW)));
            sql.push_str(" AND (queue = ? OR instr(name, ?) > 0 OR instr(args, ?) > 0)");
            for _ in 0..3 {
                binds.push(Bind::Text(text.to_owned()));
            }
        }
    }
    sql.push_str(" ORDER BY id DESC LIMIT ? OFFSET ?");
    binds.push(Bind::Int(limit));
    binds.push(Bind::Int(offset));
    let mut q = sqlx::query(AssertSqlSafe(sql));
    for b in binds {
        q = match b {
            Bind::Text(t) => q.bind(t),
            Bind::Int(i) => q.bind(i),
            Bind::Blob(b) => q.bind(b),
        };
    }
    q.fetch_all(conn).await?.iter().map(job_record).collect()
}

/// A value bound to a query built piece by piece.
#[derive(Clone)]
enum Bind {
    Text(String),
    Int(i64),
    Blob(Vec<u8>),
}

/// [`firelane_core::Storage::stats`]: the counters, the paused queues, and the processing jobs
/// per queue (read through the partial index of processing jobs, which holds only running
/// jobs).
pub(crate) async fn stats(conn: &mut SqliteConnection) -> OpResult<Stats> {
    let mut states = BTreeMap::new();
    let mut queues: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
    let (mut succeeded_total, mut failed_total) = (0, 0);
    for row in sqlx::query("SELECT key, n FROM firelane_counters")
        .fetch_all(&mut *conn)
        .await?
    {
        let key: String = row.try_get("key")?;
        let n = count_u64(row.try_get("n")?);
        if let Some(s) = key.strip_prefix("state:") {
            if n > 0 {
                states.insert(state(s)?, n);
            }
        } else if let Some(q) = key.strip_prefix("queue:") {
            if n > 0 {
                queues.entry(q.to_owned()).or_default().0 = n;
            }
        } else if key == "total:succeeded" {
            succeeded_total = n;
        } else if key == "total:failed" {
            failed_total = n;
        }
    }
    for row in sqlx::query(
        "SELECT queue, COUNT(*) AS n FROM firelane_jobs INDEXED BY firelane_jobs_processing
         WHERE state = 'processing' GROUP BY queue",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        queues.entry(row.try_get("queue")?).or_default().1 = count_u64(row.try_get("n")?);
    }
    for queue in sqlx::query_scalar::<_, String>("SELECT queue FROM firelane_paused_queues")
        .fetch_all(&mut *conn)
        .await?
    {
        queues.entry(queue).or_default().2 = true;
    }
    let servers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM firelane_servers")
        .fetch_one(&mut *conn)
        .await?;
    // When the job next in line entered each queue that has jobs: the head of the fetch index,
    // one row per queue.
    let waiting: Vec<&String> = queues
        .iter()
        .filter(|(_, (enqueued, _, _))| *enqueued > 0)
        .map(|(name, _)| name)
        .collect();
    let mut heads = BTreeMap::new();
    if !waiting.is_empty() {
        let names = serde_json::to_string(&waiting)
            .map_err(|e| Error::Config(format!("cannot encode queue names: {e}")))?;
        for row in sqlx::query(
            "SELECT n.value AS queue,
                    (SELECT j.state_at FROM firelane_queue AS q
                         JOIN firelane_jobs AS j ON j.id = q.job_id
                     WHERE q.queue = n.value ORDER BY q.priority DESC, q.seq LIMIT 1) AS head
             FROM json_each(?) AS n",
        )
        .bind(names)
        .fetch_all(&mut *conn)
        .await?
        {
            if let Some(at) = row.try_get::<Option<i64>, _>("head")? {
                heads.insert(row.try_get::<String, _>("queue")?, time(at)?);
            }
        }
    }
    let queues = queues
        .into_iter()
        .map(|(name, (enqueued, processing, paused))| {
            let head = heads.get(&name).copied();
            QueueStats::new(name, enqueued, processing, paused).with_head_enqueued_at(head)
        })
        .collect();
    Ok(Stats::new(states, queues, count_u64(servers)).totals(succeeded_total, failed_total))
}

/// [`firelane_core::Storage::stats_history`].
pub(crate) async fn stats_history(
    conn: &mut SqliteConnection,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> OpResult<Vec<HourlyStats>> {
    sqlx::query(
        "SELECT hour, succeeded, failed FROM firelane_stats_hourly
         WHERE hour >= ? AND hour < ? ORDER BY hour",
    )
    .bind(us(from))
    .bind(us(to))
    .fetch_all(conn)
    .await?
    .iter()
    .map(|row| {
        Ok(HourlyStats::new(
            time(row.try_get("hour")?)?,
            count_u64(row.try_get("succeeded")?),
            count_u64(row.try_get("failed")?),
        ))
    })
    .collect()
}

/// [`firelane_core::Storage::servers`].
pub(crate) async fn servers(conn: &mut SqliteConnection) -> OpResult<Vec<ServerRecord>> {
    let rows = sqlx::query("SELECT info, last_heartbeat FROM firelane_servers ORDER BY id")
        .fetch_all(conn)
        .await?;
    rows.iter()
        .map(|row| {
            let info: String = row.try_get("info")?;
            let info: ServerInfo = serde_json::from_str(&info)
                .map_err(|e| Error::Corrupt(format!("bad server info {info:?}: {e}")))?;
            Ok(ServerRecord::new(
                info,
                time(row.try_get("last_heartbeat")?)?,
            ))
        })
        .collect()
}

/// [`firelane_core::Storage::recurring`].
pub(crate) async fn recurring(
    conn: &mut SqliteConnection,
    id: String,
) -> OpResult<Option<RecurringRecord>> {
    let sql = format!("SELECT {RECURRING_COLUMNS} FROM firelane_recurring WHERE id = ?");
    sqlx::query(AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(recurring_record)
        .transpose()
}

/// [`firelane_core::Storage::list_recurring`].
pub(crate) async fn list_recurring(conn: &mut SqliteConnection) -> OpResult<Vec<RecurringRecord>> {
    let sql = format!("SELECT {RECURRING_COLUMNS} FROM firelane_recurring ORDER BY id");
    sqlx::query(AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?
        .iter()
        .map(recurring_record)
        .collect()
}
