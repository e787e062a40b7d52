//! Turning Firelane values into SQLite values and back, and the error type of the operations.

use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane_core::{
    ContinueOn, Error, HistoryEntry, JobId, JobRecord, JobState, JobTemplate, LeaseId, NewJob,
    RecurringRecord, RetryPolicy, ServerId,
};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

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

/// Maps a driver error: a closed pool means the store was closed.
pub(crate) fn db_error(op: &'static str, e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::PoolClosed => Error::Shutdown("the SQLite store"),
        e => Error::backend(op, e),
    }
}

/// `Result` of the operations.
pub(crate) type OpResult<T> = Result<T, OpError>;

/// A time as microseconds since the Unix epoch.
pub(crate) fn us(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A time back from microseconds since the Unix epoch.
pub(crate) fn time(us: i64) -> Result<DateTime<Utc>, Error> {
    DateTime::from_timestamp_micros(us)
        .ok_or_else(|| Error::Corrupt(format!("time out of range: {us} µs")))
}

fn opt_time(us: Option<i64>) -> Result<Option<DateTime<Utc>>, Error> {
    us.map(time).transpose()
}

/// `t - d`, or the earliest time when that is out of range.
pub(crate) fn minus(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
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

/// A count stored as INTEGER back as `u32`.
pub(crate) fn count_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// A count stored as INTEGER back as `u64`.
pub(crate) fn count_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A job id from its 16 bytes.
pub(crate) fn job_id(bytes: &[u8]) -> Result<JobId, Error> {
    JobId::from_slice(bytes).ok_or_else(|| Error::Corrupt(format!("bad job id {bytes:02x?}")))
}

/// A lease id from its 16 bytes.
pub(crate) fn lease_id(bytes: &[u8]) -> Result<LeaseId, Error> {
    LeaseId::from_slice(bytes).ok_or_else(|| Error::Corrupt(format!("bad lease id {bytes:02x?}")))
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
pub(crate) fn retry_policy(max_attempts: i64, delays: Option<&str>) -> Result<RetryPolicy, Error> {
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
pub(crate) fn job_record(row: &SqliteRow) -> OpResult<JobRecord> {
    let id = job_id(&row.try_get::<Vec<u8>, _>("id")?)?;
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
        time(row.try_get("created_at")?)?,
        time(row.try_get("state_at")?)?,
    );
    job.timeout = row
        .try_get::<Option<i64>, _>("timeout_ms")?
        .map(duration_ms);
    job.due_at = opt_time(row.try_get("due_at")?)?;
    let parent: Option<Vec<u8>> = row.try_get("parent_id")?;
    let on: Option<String> = row.try_get("continue_on")?;
    job.parent = match (parent, on) {
        (Some(p), Some(on)) => Some((job_id(&p)?, continue_on(&on)?)),
        (Some(p), None) => Some((job_id(&p)?, ContinueOn::default())),
        _ => None,
    };
    job.lease_server = row
        .try_get::<Option<String>, _>("lease_server")?
        .map(ServerId::from_string);
    job.lease_until = opt_time(row.try_get("lease_until")?)?;
    job.reason = row.try_get("reason")?;
    job.last_error = row.try_get("last_error")?;
    job.trace_context = row.try_get("trace_context")?;
    Ok(job)
}

/// The columns of `recurring` that [`recurring_record`] reads.
pub(crate) const RECURRING_COLUMNS: &str = "id, cron, time_zone, misfire, name, queue, priority, args, max_attempts, retry_delays, timeout_ms, paused, next_run, last_run, last_job, last_error, created_at, updated_at";

/// A recurring job's template from a row with the job columns of [`RECURRING_COLUMNS`].
pub(crate) fn job_template(row: &SqliteRow) -> OpResult<JobTemplate> {
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

/// A value as JSON, for [`recurring_record`].
fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, Error> {
    serde_json::to_value(v).map_err(|e| Error::Corrupt(format!("cannot write as JSON: {e}")))
}

/// A recurring job from a row of [`RECURRING_COLUMNS`].
///
/// The record is built through serde (it can only be made from a parsed definition otherwise),
/// so that reading never parses the cron expression again: a schedule that a newer time zone
/// database no longer accepts is still listed.
pub(crate) fn recurring_record(row: &SqliteRow) -> OpResult<RecurringRecord> {
    let id: String = row.try_get("id")?;
    let misfire: String = row.try_get("misfire")?;
    let misfire: serde_json::Value = serde_json::from_str(&misfire)
        .map_err(|e| Error::Corrupt(format!("bad misfire policy {misfire:?} of {id:?}: {e}")))?;
    let last_job = row
        .try_get::<Option<Vec<u8>>, _>("last_job")?
        .map(|b| job_id(&b))
        .transpose()?;
    let value = serde_json::json!({
        "id": id,
        "cron": row.try_get::<String, _>("cron")?,
        "time_zone": row.try_get::<String, _>("time_zone")?,
        "misfire": misfire,
        "job": to_json(&job_template(row)?)?,
        "paused": row.try_get::<bool, _>("paused")?,
        "next_run": to_json(&opt_time(row.try_get("next_run")?)?)?,
        "last_run": to_json(&opt_time(row.try_get("last_run")?)?)?,
        "last_job": to_json(&last_job)?,
        "last_error": row.try_get::<Option<String>, _>("last_error")?,
        "created_at": to_json(&time(row.try_get("created_at")?)?)?,
        "updated_at": to_json(&time(row.try_get("updated_at")?)?)?,
    });
    serde_json::from_value(value)
        .map_err(|e| Error::Corrupt(format!("bad recurring job {id:?}: {e}")).into())
}

/// A history entry from a row of `history`.
pub(crate) fn history_entry(row: &SqliteRow) -> OpResult<HistoryEntry> {
    let mut entry = HistoryEntry::new(
        state(&row.try_get::<String, _>("state")?)?,
        time(row.try_get("at")?)?,
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
    fn times_round_trip_to_the_microsecond() {
        let t = DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap_or_default();
        assert_eq!(time(us(t)).ok(), Some(t));
        assert_eq!(minus(t, Duration::MAX), DateTime::<Utc>::MIN_UTC);
    }

    #[test]
    fn retry_policies_round_trip() {
        for policy in [
            RetryPolicy::default(),
            RetryPolicy::none(),
            RetryPolicy::Delays(vec![Duration::from_secs(1), Duration::from_millis(1500)]),
            RetryPolicy::Delays(vec![]),
        ] {
            let stored = retry_delays(&policy);
            let back = retry_policy(i64::from(policy.max_attempts()), stored.as_deref()).ok();
            assert_eq!(back, Some(policy));
        }
    }
}
