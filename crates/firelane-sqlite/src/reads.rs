//! The monitoring queries, run on a read connection inside one read transaction each, so that
//! every answer is one consistent snapshot.

use std::collections::BTreeMap;

use firelane_core::{
    Error, JobDetails, JobId, JobQuery, JobRecord, JobState, QueueStats, RecurringRecord,
    ServerInfo, ServerRecord, Stats,
};
use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use crate::codec::{
    JOB_COLUMNS, OpResult, RECURRING_COLUMNS, count_u64, history_entry, job_id, job_record,
    recurring_record, state, time,
};

/// [`firelane_core::Storage::job`].
pub(crate) async fn job(conn: &mut SqliteConnection, id: JobId) -> OpResult<Option<JobDetails>> {
    let key = id.as_bytes().as_slice();
    let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
    let Some(row) = sqlx::query(AssertSqlSafe(sql))
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?
    else {
        return Ok(None);
    };
    let record = job_record(&row)?;
    let history = sqlx::query(
        "SELECT state, at, reason, server, attempt, duration_us, error
         FROM history WHERE job_id = ? ORDER BY seq",
    )
    .bind(key)
    .fetch_all(&mut *conn)
    .await?
    .iter()
    .map(history_entry)
    .collect::<OpResult<Vec<_>>>()?;
    let continuations =
        sqlx::query_scalar::<_, Vec<u8>>("SELECT id FROM jobs WHERE parent_id = ? ORDER BY id")
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
    // Only fixed fragments go into the text; every value is bound.
    let mut sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE 1 = 1");
    if query.state.is_some() {
        sql.push_str(" AND state = ?");
    }
    if query.queue.is_some() {
        sql.push_str(" AND queue = ?");
    }
    if query.name.is_some() {
        sql.push_str(" AND name = ?");
    }
    sql.push_str(" ORDER BY id DESC LIMIT ? OFFSET ?");
    let mut q = sqlx::query(AssertSqlSafe(sql));
    if let Some(s) = query.state {
        q = q.bind(s.as_str());
    }
    if let Some(queue) = &query.queue {
        q = q.bind(queue.as_str());
    }
    if let Some(name) = &query.name {
        q = q.bind(name.as_str());
    }
    q = q
        .bind(i64::from(query.effective_limit()))
        .bind(i64::try_from(query.offset).unwrap_or(i64::MAX));
    q.fetch_all(conn).await?.iter().map(job_record).collect()
}

/// [`firelane_core::Storage::stats`].
pub(crate) async fn stats(conn: &mut SqliteConnection) -> OpResult<Stats> {
    let mut states = BTreeMap::new();
    for row in sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
        .fetch_all(&mut *conn)
        .await?
    {
        let s: JobState = state(&row.try_get::<String, _>("state")?)?;
        states.insert(s, count_u64(row.try_get("n")?));
    }
    let mut queues: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for row in sqlx::query("SELECT queue, COUNT(*) AS n FROM queue GROUP BY queue")
        .fetch_all(&mut *conn)
        .await?
    {
        queues.entry(row.try_get("queue")?).or_default().0 = count_u64(row.try_get("n")?);
    }
    for row in sqlx::query(
        "SELECT queue, COUNT(*) AS n FROM jobs WHERE state = 'processing' GROUP BY queue",
    )
    .fetch_all(&mut *conn)
    .await?
    {
        queues.entry(row.try_get("queue")?).or_default().1 = count_u64(row.try_get("n")?);
    }
    let servers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM servers")
        .fetch_one(&mut *conn)
        .await?;
    let queues = queues
        .into_iter()
        .map(|(name, (enqueued, processing))| QueueStats::new(name, enqueued, processing))
        .collect();
    Ok(Stats::new(states, queues, count_u64(servers)))
}

/// [`firelane_core::Storage::servers`].
pub(crate) async fn servers(conn: &mut SqliteConnection) -> OpResult<Vec<ServerRecord>> {
    let rows = sqlx::query("SELECT info, last_heartbeat FROM servers ORDER BY id")
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
    let sql = format!("SELECT {RECURRING_COLUMNS} FROM recurring WHERE id = ?");
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
    let sql = format!("SELECT {RECURRING_COLUMNS} FROM recurring ORDER BY id");
    sqlx::query(AssertSqlSafe(sql))
        .fetch_all(conn)
        .await?
        .iter()
        .map(recurring_record)
        .collect()
}
