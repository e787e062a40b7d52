//! Turning Firelane values into PostgreSQL values and back, and the error type of the
//! operations.

use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use firelane_core::{
    ContinueOn, Error, HistoryEntry, JobId, JobRecord, JobState, JobTemplate, NewJob,
    RecurringRecord, RetryPolicy, ServerId,
};
use sqlx::Row;
use sqlx::postgres::PgRow;

/// What an operation can fail with: the driver, or a Firelane error it decided on itself.
#[derive(Debug)]
pub(crate) enum OpError {
    Db(sqlx::Error),
    Core(Error),
}

impl From<sqlx::Error> for OpError {
    fn from(e: sqlx::Error) -> Self {
        OpError::Db(e)
    }
}

impl From<Error> for OpError {
    fn from(e: Error) -> Self {
        OpError::Core(e)
    }
}

impl OpError {
    /// The Firelane error, naming the operation for driver errors.
    pub(crate) fn into_error(self, op: &'static str) -> Error {
        match self {
            OpError::Db(e) => db_error(op, e),
            OpError::Core(e) => e,
        }
    }
}

/// `Result` of the operations.
pub(crate) type OpResult<T> = Result<T, OpError>;

/// Maps a driver error met during `op`.
pub(crate) fn db_error(op: &'static str, e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::PoolClosed => Error::Shutdown("the PostgreSQL store"),
        sqlx::Error::PoolTimedOut => Error::backend(
            op,
            "no connection to PostgreSQL became available within the acquire timeout (is the server down or overloaded?)",
        ),
        e => Error::backend(op, e),
    }
}

/// The earliest time PostgreSQL's `timestamptz` holds (4713 BC); earlier times are stored as
/// this.
fn pg_min() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(-4712, 1, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(DateTime::<Utc>::MIN_UTC, |d| d.and_utc())
}

/// A time as PostgreSQL can store it: times before 4713 BC become 4713 BC (chrono's latest
/// time is within PostgreSQL's range).
pub(crate) fn t(at: DateTime<Utc>) -> DateTime<Utc> {
    at.max(pg_min())
}

/// `at - d`, or the earliest time when that is out of range.
pub(crate) fn minus(at: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| at.checked_sub_signed(d))
        .map_or_else(pg_min, t)
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A duration in whole microseconds, saturating.
pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A duration back from whole milliseconds (negative ones as zero).
pub(crate) fn duration_ms(v: i64) -> Duration {
    Duration::from_millis(u64::try_from(v).unwrap_or(0))
}

pub(crate) fn duration_us(v: i64) -> Duration {
    Duration::from_micros(u64::try_from(v).unwrap_or(0))
}

/// A count stored as `integer` back as `u32`.
pub(crate) fn count_u32(v: i32) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(0)
}

/// A count as `integer`, saturating.
pub(crate) fn int(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

/// A count stored as `bigint` back as `u64`.
pub(crate) fn count_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A limit as `bigint`.
pub(crate) fn limit_i64(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

/// A state from its stored name.
pub(crate) fn state(name: &str) -> Result<JobState, Error> {
    name.parse()
        .map_err(|_| Error::Corrupt(format!("unknown job state {name:?}")))
}

fn continue_on(name: &str) -> Result<ContinueOn, Error> {
    name.parse()
        .map_err(|_| Error::Corrupt(format!("unknown continuation condition {name:?}")))
}

/// The explicit retry delays as a JSON array of milliseconds (`None` for Hangfire's back-off).
pub(crate) fn retry_delays(policy: &RetryPolicy) -> Option<String> {
    policy.explicit_delays().map(|d| {
        let ms: Vec<i64> = d.iter().map(|d| ms(*d)).collect();
        serde_json::Value::from(ms).to_string()
    })
}

/// The retry policy back from the stored attempt limit and delays.
pub(crate) fn retry_policy(max_attempts: i32, delays: Option<&str>) -> Result<RetryPolicy, Error> {
    let delays = match delays {
        None => None,
        Some(text) => {
            let ms: Vec<u64> = serde_json::from_str(text)
                .map_err(|e| Error::Corrupt(format!("bad retry delays {text:?}: {e}")))?;
            Some(ms.into_iter().map(Duration::from_millis).collect())
        }
    };
    Ok(RetryPolicy::from_stored(count_u32(max_attempts), delays))
}

/// The columns of `jobs` that [`job_record`] reads, in a form to paste into a SELECT.
pub(crate) const JOB_COLUMNS: &str = "id, name, queue, priority, args, state, attempt, max_attempts, retry_delays, timeout_ms, created_at, state_at, due_at, parent_id, continue_on, lease_server, lease_until, reason, last_error, trace_context";

/// A job record from a row of [`JOB_COLUMNS`].
pub(crate) fn job_record(row: &PgRow) -> OpResult<JobRecord> {
    let id = JobId::from_uuid(row.try_get("id")?);
    let retry = retry_policy(
        row.try_get("max_attempts")?,
        row.try_get::<Option<String>, _>("retry_delays")?.as_deref(),
    )?;
    let mut job = JobRecord::new(
        id,
        row.try_get("name")?,
        row.try_get("queue")?,
        row.try_get("priority")?,
        row.try_get("args")?,
        state(&row.try_get::<String, _>("state")?)?,
        count_u32(row.try_get("attempt")?),
        retry,
        row.try_get("created_at")?,
        row.try_get("state_at")?,
    );
    job.timeout = row
        .try_get::<Option<i64>, _>("timeout_ms")?
        .map(duration_ms);
    job.due_at = row.try_get("due_at")?;
    let parent: Option<uuid::Uuid> = row.try_get("parent_id")?;
    let on: Option<String> = row.try_get("continue_on")?;
    job.parent = match (parent, on) {
        (Some(p), Some(on)) => Some((JobId::from_uuid(p), continue_on(&on)?)),
        (Some(p), None) => Some((JobId::from_uuid(p), ContinueOn::default())),
        _ => None,
    };
    job.lease_server = row
        .try_get::<Option<String>, _>("lease_server")?
        .map(ServerId::from_string);
    job.lease_until = row.try_get("lease_until")?;
    job.reason = row.try_get("reason")?;
    job.last_error = row.try_get("last_error")?;
    job.trace_context = row.try_get("trace_context")?;
    Ok(job)
}

/// The columns of `recurring` that [`recurring_record`] reads.
pub(crate) const RECURRING_COLUMNS: &str = "id, cron, time_zone, misfire, name, queue, priority, args, max_attempts, retry_delays, timeout_ms, paused, next_run, last_run, last_job, last_error, created_at, updated_at";

/// A recurring job's template from a row with the job columns of [`RECURRING_COLUMNS`].
pub(crate) fn job_template(row: &PgRow) -> OpResult<JobTemplate> {
    let mut job = NewJob::new(
        row.try_get::<String, _>("name")?,
        row.try_get::<String, _>("args")?,
    );
    job.queue = row.try_get("queue")?;
    job.priority = row.try_get("priority")?;
    job.retry = retry_policy(
        row.try_get("max_attempts")?,
        row.try_get::<Option<String>, _>("retry_delays")?.as_deref(),
    )?;
    job.timeout = row
        .try_get::<Option<i64>, _>("timeout_ms")?
        .map(duration_ms);
    Ok(JobTemplate::from_job(&job))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Corrupt(format!("cannot write as JSON: {e}")))
}

/// A recurring job from a row of [`RECURRING_COLUMNS`], built through serde so that reading
/// never parses the cron expression again.
pub(crate) fn recurring_record(row: &PgRow) -> OpResult<RecurringRecord> {
    let id: String = row.try_get("id")?;
    let misfire: String = row.try_get("misfire")?;
    let misfire: serde_json::Value = serde_json::from_str(&misfire)
        .map_err(|e| Error::Corrupt(format!("bad misfire policy {misfire:?} of {id:?}: {e}")))?;
    let last_job = row
        .try_get::<Option<uuid::Uuid>, _>("last_job")?
        .map(JobId::from_uuid);
    let value = serde_json::json!({
        "id": id,
        "cron": row.try_get::<String, _>("cron")?,
        "time_zone": row.try_get::<String, _>("time_zone")?,
        "misfire": misfire,
        "job": to_json(&job_template(row)?)?,
        "paused": row.try_get::<bool, _>("paused")?,
        "next_run": to_json(&row.try_get::<Option<DateTime<Utc>>, _>("next_run")?)?,
        "last_run": to_json(&row.try_get::<Option<DateTime<Utc>>, _>("last_run")?)?,
        "last_job": to_json(&last_job)?,
        "last_error": row.try_get::<Option<String>, _>("last_error")?,
        "created_at": to_json(&row.try_get::<DateTime<Utc>, _>("created_at")?)?,
        "updated_at": to_json(&row.try_get::<DateTime<Utc>, _>("updated_at")?)?,
    });
    serde_json::from_value(value)
        .map_err(|e| Error::Corrupt(format!("bad recurring job {id:?}: {e}")).into())
}

/// A history entry from a row of `history`.
pub(crate) fn history_entry(row: &PgRow) -> OpResult<HistoryEntry> {
    let mut entry = HistoryEntry::new(
        state(&row.try_get::<String, _>("state")?)?,
        row.try_get("at")?,
        count_u32(row.try_get("attempt")?),
    );
    entry.reason = row.try_get("reason")?;
    entry.server = row
        .try_get::<Option<String>, _>("server")?
        .map(ServerId::from_string);
    entry.duration = row
        .try_get::<Option<i64>, _>("duration_us")?
        .map(duration_us);
    entry.error = row.try_get("error")?;
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_clamped_to_postgres_range() {
        assert_eq!(t(DateTime::<Utc>::MIN_UTC), pg_min());
        assert_eq!(minus(Utc::now(), Duration::MAX), pg_min());
        let now = Utc::now();
        assert_eq!(t(now), now);
    }

    #[test]
    fn retry_policies_round_trip() {
        for policy in [
            RetryPolicy::default(),
            RetryPolicy::none(),
            RetryPolicy::Delays(vec![Duration::from_secs(1), Duration::from_millis(1500)]),
        ] {
            let stored = retry_delays(&policy);
            let back = retry_policy(int(policy.max_attempts()), stored.as_deref()).ok();
            assert_eq!(back, Some(policy));
        }
    }
}
