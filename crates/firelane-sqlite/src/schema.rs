//! The schema, its versioned migrations, and the check that a database is Firelane's.
//!
//! Migrations are SQL kept in this file and numbered from 1. Each one that a database has
//! received is a row of `firelane_schema`; a database whose highest row is above
//! [`LATEST`] was written by a newer Firelane and is refused. The row `('application',
//! 'firelane')` of `firelane_meta` marks a database as Firelane's: a database with tables but
//! without that mark belongs to someone else and is refused too, so that Firelane never adds
//! its tables to another application's database by mistake.

use chrono::Utc;
use sqlx::{Connection, SqliteConnection};

use crate::codec::us;

/// The name of the marker row in `firelane_meta`.
const MARK_KEY: &str = "application";
/// Its value.
const MARK_VALUE: &str = "firelane";

/// One migration.
struct Migration {
    version: i64,
    description: &'static str,
    sql: &'static str,
}

/// Creates the bookkeeping tables; applied to a new database before the migrations.
const BOOTSTRAP: &str = "
CREATE TABLE firelane_meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE firelane_schema (
    version     INTEGER PRIMARY KEY NOT NULL,
    description TEXT NOT NULL,
    applied_at  INTEGER NOT NULL
);
";

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "jobs, queue, history and servers",
        sql: "
-- Every job, whatever its state. Times are microseconds since the Unix epoch (UTC), ids are
-- the 16 bytes of the UUID.
CREATE TABLE jobs (
    id           BLOB PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    queue        TEXT NOT NULL,
    priority     INTEGER NOT NULL,
    args         TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    retry_delays TEXT,              -- JSON array of milliseconds; NULL: Hangfire's back-off
    timeout_ms   INTEGER,
    created_at   INTEGER NOT NULL,
    state_at     INTEGER NOT NULL,
    due_at       INTEGER,           -- scheduled jobs
    parent_id    BLOB,              -- continuations
    continue_on  TEXT,
    lease_id     BLOB,              -- processing jobs
    lease_server TEXT,
    lease_until  INTEGER,
    reason       TEXT,
    last_error   TEXT,
    finished_at  INTEGER            -- succeeded, failed and deleted jobs
);
CREATE INDEX jobs_scheduled ON jobs (due_at, id) WHERE state = 'scheduled';
CREATE INDEX jobs_processing ON jobs (lease_until, id) WHERE state = 'processing';
CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_parent ON jobs (parent_id, state) WHERE parent_id IS NOT NULL;
CREATE INDEX jobs_state ON jobs (state, id);

-- The hot table: exactly the enqueued jobs, one row each. A job entering its queue gets a new
-- row (and so goes to the back); fetch reads and deletes rows here, so its index stays small
-- however many finished jobs pile up in `jobs`.
CREATE TABLE queue (
    seq      INTEGER PRIMARY KEY,
    queue    TEXT NOT NULL,
    priority INTEGER NOT NULL,
    name     TEXT NOT NULL,
    job_id   BLOB NOT NULL
);
CREATE INDEX queue_fetch ON queue (queue, priority DESC, seq);
CREATE UNIQUE INDEX queue_job ON queue (job_id);

-- One row for every state a job entered, written in the transaction that changed the state.
CREATE TABLE history (
    seq         INTEGER PRIMARY KEY,
    job_id      BLOB NOT NULL,
    state       TEXT NOT NULL,
    at          INTEGER NOT NULL,
    reason      TEXT,
    server      TEXT,
    attempt     INTEGER NOT NULL,
    duration_us INTEGER,
    error       TEXT
);
CREATE INDEX history_job ON history (job_id, seq);

CREATE TABLE servers (
    id             TEXT PRIMARY KEY NOT NULL,
    info           TEXT NOT NULL,   -- ServerInfo as JSON
    last_heartbeat INTEGER NOT NULL
);
",
    },
    Migration {
        version: 2,
        description: "recurring jobs",
        sql: "
-- Recurring jobs: a cron schedule and the job it creates at each occurrence. The job template
-- is kept as `jobs` keeps a job; times are microseconds since the Unix epoch (UTC).
CREATE TABLE recurring (
    id           TEXT PRIMARY KEY NOT NULL,
    cron         TEXT NOT NULL,
    time_zone    TEXT NOT NULL,
    misfire      TEXT NOT NULL,     -- Misfire as JSON
    name         TEXT NOT NULL,
    queue        TEXT NOT NULL,
    priority     INTEGER NOT NULL,
    args         TEXT NOT NULL,
    max_attempts INTEGER NOT NULL,
    retry_delays TEXT,              -- JSON array of milliseconds; NULL: Hangfire's back-off
    timeout_ms   INTEGER,
    paused       INTEGER NOT NULL DEFAULT 0,
    next_run     INTEGER,           -- NULL: disabled (the schedule never fires again)
    last_run     INTEGER,
    last_job     BLOB,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX recurring_due ON recurring (next_run) WHERE paused = 0 AND next_run IS NOT NULL;
",
    },
    Migration {
        version: 3,
        description: "counters, hourly figures and paused queues",
        sql: "
-- Counts kept by the transactions that change jobs, so that monitoring never counts rows:
-- 'state:<state>' (jobs in a state), 'queue:<name>' (rows of `queue` for a queue), and
-- 'total:succeeded' / 'total:failed' (running totals, not lowered when jobs expire).
CREATE TABLE counters (
    key TEXT PRIMARY KEY NOT NULL,
    n   INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO counters (key, n) SELECT 'state:' || state, COUNT(*) FROM jobs GROUP BY state;
INSERT INTO counters (key, n) SELECT 'queue:' || queue, COUNT(*) FROM queue GROUP BY queue;
INSERT INTO counters (key, n)
    SELECT 'total:' || state, COUNT(*) FROM jobs WHERE state IN ('succeeded', 'failed')
    GROUP BY state;

-- Jobs that succeeded and failed per hour (`hour`: the hour's start, microseconds since the
-- epoch), for history graphs; hours older than eight days are removed by `expire`.
CREATE TABLE stats_hourly (
    hour      INTEGER PRIMARY KEY,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0
);

-- Scheduled jobs waiting for a retry, newest first, for the retries list.
CREATE INDEX jobs_retries ON jobs (id) WHERE state = 'scheduled' AND attempt > 0;

-- Queues that no fetch takes jobs from.
CREATE TABLE paused_queues (
    queue     TEXT PRIMARY KEY NOT NULL,
    paused_at INTEGER NOT NULL
) WITHOUT ROWID;
",
    },
    Migration {
        version: 4,
        description: "firelane_ prefix on every table and index; trace context of jobs",
        sql: "
-- Every name Firelane uses starts with firelane_, so that its tables can share a database file
-- with an application's own (which enqueueing inside the application's transactions needs).
ALTER TABLE jobs RENAME TO firelane_jobs;
ALTER TABLE queue RENAME TO firelane_queue;
ALTER TABLE history RENAME TO firelane_history;
ALTER TABLE servers RENAME TO firelane_servers;
ALTER TABLE recurring RENAME TO firelane_recurring;
ALTER TABLE counters RENAME TO firelane_counters;
ALTER TABLE stats_hourly RENAME TO firelane_stats_hourly;
ALTER TABLE paused_queues RENAME TO firelane_paused_queues;
-- Indexes cannot be renamed: they are made again under their new names.
DROP INDEX jobs_scheduled;
DROP INDEX jobs_processing;
DROP INDEX jobs_finished;
DROP INDEX jobs_parent;
DROP INDEX jobs_state;
DROP INDEX jobs_retries;
DROP INDEX queue_fetch;
DROP INDEX queue_job;
DROP INDEX history_job;
DROP INDEX recurring_due;
CREATE INDEX firelane_jobs_scheduled ON firelane_jobs (due_at, id) WHERE state = 'scheduled';
CREATE INDEX firelane_jobs_processing ON firelane_jobs (lease_until, id)
    WHERE state = 'processing';
CREATE INDEX firelane_jobs_finished ON firelane_jobs (state, finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX firelane_jobs_parent ON firelane_jobs (parent_id, state)
    WHERE parent_id IS NOT NULL;
CREATE INDEX firelane_jobs_state ON firelane_jobs (state, id);
CREATE INDEX firelane_jobs_retries ON firelane_jobs (id) WHERE state = 'scheduled' AND attempt > 0;
CREATE INDEX firelane_queue_fetch ON firelane_queue (queue, priority DESC, seq);
CREATE UNIQUE INDEX firelane_queue_job ON firelane_queue (job_id);
CREATE INDEX firelane_history_job ON firelane_history (job_id, seq);
CREATE INDEX firelane_recurring_due ON firelane_recurring (next_run)
    WHERE paused = 0 AND next_run IS NOT NULL;

-- Propagation data of the trace that enqueued a job (NewJob::trace_context), opaque here.
ALTER TABLE firelane_jobs ADD COLUMN trace_context TEXT;
",
    },
    Migration {
        version: 5,
        description: "the state index leaves processing jobs out",
        sql: "
-- Processing jobs are listed through firelane_jobs_processing; keeping them out of the state
-- index saves two index writes per attempt (in at the fetch, out at the completion).
DROP INDEX firelane_jobs_state;
CREATE INDEX firelane_jobs_state ON firelane_jobs (state, id) WHERE state <> 'processing';
",
    },
    Migration {
        version: 6,
        description: "history per attempt; the queue table keyed by fetch order alone",
        sql: "
-- The first history entry lives in the job's row, and an attempt is one history row written
-- when it ends, with its start (kept in the job's row while it runs): one history row per
-- attempt instead of one per state. Rows written before keep their entries as they were.
-- The jobs table becomes WITHOUT ROWID, keyed by id (ids are UUIDv7: new rows go to the end):
-- one B-tree per row instead of a table and its key index. The state index keeps only the
-- states no other index or table lists (the hot path's enqueued, processing and succeeded jobs
-- are left out of it: fewer index writes per job).
CREATE TABLE firelane_jobs_v6 (
    id           BLOB PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    queue        TEXT NOT NULL,
    priority     INTEGER NOT NULL,
    args         TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    retry_delays TEXT,
    timeout_ms   INTEGER,
    created_at   INTEGER NOT NULL,
    state_at     INTEGER NOT NULL,
    due_at       INTEGER,
    parent_id    BLOB,
    continue_on  TEXT,
    lease_id     BLOB,
    lease_server TEXT,
    lease_until  INTEGER,
    reason       TEXT,
    last_error   TEXT,
    finished_at  INTEGER,
    trace_context TEXT,
    initial_state TEXT,
    initial_reason TEXT,
    started_at   INTEGER,
    started_by   TEXT,
    queue_seq    INTEGER
) WITHOUT ROWID;
INSERT INTO firelane_jobs_v6 (id, name, queue, priority, args, state, attempt, max_attempts,
        retry_delays, timeout_ms, created_at, state_at, due_at, parent_id, continue_on,
        lease_id, lease_server, lease_until, reason, last_error, finished_at, trace_context,
        queue_seq)
    SELECT j.id, j.name, j.queue, j.priority, j.args, j.state, j.attempt, j.max_attempts,
        j.retry_delays, j.timeout_ms, j.created_at, j.state_at, j.due_at, j.parent_id,
        j.continue_on, j.lease_id, j.lease_server, j.lease_until, j.reason, j.last_error,
        j.finished_at, j.trace_context, q.seq
    FROM firelane_jobs AS j LEFT JOIN firelane_queue AS q ON q.job_id = j.id;
DROP TABLE firelane_jobs;
ALTER TABLE firelane_jobs_v6 RENAME TO firelane_jobs;
CREATE INDEX firelane_jobs_scheduled ON firelane_jobs (due_at, id) WHERE state = 'scheduled';
CREATE INDEX firelane_jobs_processing ON firelane_jobs (lease_until, id)
    WHERE state = 'processing';
CREATE INDEX firelane_jobs_finished ON firelane_jobs (state, finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX firelane_jobs_parent ON firelane_jobs (parent_id, state)
    WHERE parent_id IS NOT NULL;
CREATE INDEX firelane_jobs_state ON firelane_jobs (state, id)
    WHERE state IN ('scheduled', 'awaiting', 'failed', 'deleted');
CREATE INDEX firelane_jobs_retries ON firelane_jobs (id) WHERE state = 'scheduled' AND attempt > 0;
ALTER TABLE firelane_history ADD COLUMN started_at INTEGER;
ALTER TABLE firelane_history ADD COLUMN started_by TEXT;
ALTER TABLE firelane_history ADD COLUMN started_attempt INTEGER;
-- The queue table becomes its fetch index (WITHOUT ROWID, keyed by fetch order); an enqueued
-- job's row keeps its place (queue_seq), so no index on job_id is needed. Places come from
-- the counter 'seq:queue' (the last one given).
CREATE TABLE firelane_queue_v6 (
    queue    TEXT NOT NULL,
    priority INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    name     TEXT NOT NULL,
    job_id   BLOB NOT NULL,
    PRIMARY KEY (queue, priority DESC, seq)
) WITHOUT ROWID;
INSERT INTO firelane_queue_v6 (queue, priority, seq, name, job_id)
    SELECT queue, priority, seq, name, job_id FROM firelane_queue;
INSERT INTO firelane_counters (key, n) SELECT 'seq:queue', COALESCE(MAX(seq), 0) FROM firelane_queue;
DROP TABLE firelane_queue;
ALTER TABLE firelane_queue_v6 RENAME TO firelane_queue;
",
    },
    Migration {
        version: 7,
        description: "a success's end stays in the job's row",
        sql: "
-- The end of an attempt that succeeded (server, duration; state, time and attempt are the
-- row's own) is kept in the job's row instead of a history row, until a person's requeue or
-- delete takes the job out of succeeded and writes it to the history first.
ALTER TABLE firelane_jobs ADD COLUMN ended_by TEXT;
ALTER TABLE firelane_jobs ADD COLUMN ended_us INTEGER;
",
    },
];

/// The whole schema at [`LATEST`], applied to a new database instead of replaying the
/// migrations (whose older versions used names without the `firelane_` prefix, which could
/// clash with an application's tables in a shared database). A test checks that it equals
/// what the migrations make of a version 1 database.
const FRESH: &str = "
-- Every job, whatever its state. Times are microseconds since the Unix epoch (UTC), ids are
-- the 16 bytes of the UUID.
CREATE TABLE firelane_jobs (
    id           BLOB PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    queue        TEXT NOT NULL,
    priority     INTEGER NOT NULL,
    args         TEXT NOT NULL,
    state        TEXT NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    retry_delays TEXT,              -- JSON array of milliseconds; NULL: Hangfire's back-off
    timeout_ms   INTEGER,
    created_at   INTEGER NOT NULL,
    state_at     INTEGER NOT NULL,
    due_at       INTEGER,           -- scheduled jobs
    parent_id    BLOB,              -- continuations
    continue_on  TEXT,
    lease_id     BLOB,              -- processing jobs
    lease_server TEXT,
    lease_until  INTEGER,
    reason       TEXT,
    last_error   TEXT,
    -- finished_at: succeeded, failed and deleted jobs; trace_context: NewJob::trace_context,
    -- opaque here; initial_*: the first history entry (the state the job was created in, and
    -- why); started_*: the running attempt's start (when it was leased, by which server);
    -- queue_seq: an enqueued job's place in its queue (its queue row's seq); ended_*: the end
    -- of a successful last attempt (server, duration), kept here instead of a history row.
    -- (No comment between or after the last columns: SQLite's DROP COLUMN edits this text.)
    finished_at  INTEGER,
    trace_context TEXT,
    initial_state TEXT,
    initial_reason TEXT,
    started_at   INTEGER,
    started_by   TEXT,
    queue_seq    INTEGER,
    ended_by     TEXT,
    ended_us     INTEGER
) WITHOUT ROWID;
CREATE INDEX firelane_jobs_scheduled ON firelane_jobs (due_at, id) WHERE state = 'scheduled';
CREATE INDEX firelane_jobs_processing ON firelane_jobs (lease_until, id)
    WHERE state = 'processing';
CREATE INDEX firelane_jobs_finished ON firelane_jobs (state, finished_at)
    WHERE finished_at IS NOT NULL;
CREATE INDEX firelane_jobs_parent ON firelane_jobs (parent_id, state)
    WHERE parent_id IS NOT NULL;
-- For the monitoring lists of the states no other index lists: processing jobs are listed
-- through firelane_jobs_processing, and enqueued and succeeded ones, the hot path's, through
-- the key (newest first, the order of the lists), so that no job on the hot path writes here.
CREATE INDEX firelane_jobs_state ON firelane_jobs (state, id)
    WHERE state IN ('scheduled', 'awaiting', 'failed', 'deleted');
-- Scheduled jobs waiting for a retry, newest first, for the retries list.
CREATE INDEX firelane_jobs_retries ON firelane_jobs (id) WHERE state = 'scheduled' AND attempt > 0;

-- The hot table: exactly the enqueued jobs, one row each, keyed in fetch order (one B-tree,
-- no other index). A job entering its queue gets a new row with the next place (from the
-- counter 'seq:queue'; the job's row keeps it in queue_seq), and so goes to the back; fetch
-- reads and deletes rows here, so it stays small however many finished jobs pile up in
-- `firelane_jobs`.
CREATE TABLE firelane_queue (
    queue    TEXT NOT NULL,
    priority INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    name     TEXT NOT NULL,
    job_id   BLOB NOT NULL,
    PRIMARY KEY (queue, priority DESC, seq)
) WITHOUT ROWID;

-- A job's history after its first entry (kept in its row): one row per state change, written
-- in the transaction that made it. An attempt is one row, written when it ends, with its
-- start (started_*: when the job was leased, by which server, as which attempt).
CREATE TABLE firelane_history (
    seq         INTEGER PRIMARY KEY,
    job_id      BLOB NOT NULL,
    state       TEXT NOT NULL,
    at          INTEGER NOT NULL,
    reason      TEXT,
    server      TEXT,
    attempt     INTEGER NOT NULL,
    duration_us INTEGER,
    error       TEXT,
    started_at      INTEGER,
    started_by      TEXT,
    started_attempt INTEGER
);
CREATE INDEX firelane_history_job ON firelane_history (job_id, seq);

CREATE TABLE firelane_servers (
    id             TEXT PRIMARY KEY NOT NULL,
    info           TEXT NOT NULL,   -- ServerInfo as JSON
    last_heartbeat INTEGER NOT NULL
);

-- Recurring jobs: a cron schedule and the job it creates at each occurrence, the template in
-- the columns `firelane_jobs` uses.
CREATE TABLE firelane_recurring (
    id           TEXT PRIMARY KEY NOT NULL,
    cron         TEXT NOT NULL,
    time_zone    TEXT NOT NULL,
    misfire      TEXT NOT NULL,     -- Misfire as JSON
    name         TEXT NOT NULL,
    queue        TEXT NOT NULL,
    priority     INTEGER NOT NULL,
    args         TEXT NOT NULL,
    max_attempts INTEGER NOT NULL,
    retry_delays TEXT,              -- JSON array of milliseconds; NULL: Hangfire's back-off
    timeout_ms   INTEGER,
    paused       INTEGER NOT NULL DEFAULT 0,
    next_run     INTEGER,           -- NULL: disabled (the schedule never fires again)
    last_run     INTEGER,
    last_job     BLOB,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
CREATE INDEX firelane_recurring_due ON firelane_recurring (next_run)
    WHERE paused = 0 AND next_run IS NOT NULL;

-- Counts kept by the transactions that change jobs, so that monitoring never counts rows:
-- 'state:<state>', 'queue:<name>', and 'total:succeeded' / 'total:failed' (running totals).
CREATE TABLE firelane_counters (
    key TEXT PRIMARY KEY NOT NULL,
    n   INTEGER NOT NULL
) WITHOUT ROWID;

-- Jobs that succeeded and failed per hour, kept eight days.
CREATE TABLE firelane_stats_hourly (
    hour      INTEGER PRIMARY KEY,
    succeeded INTEGER NOT NULL DEFAULT 0,
    failed    INTEGER NOT NULL DEFAULT 0
);

-- Queues that no fetch takes jobs from.
CREATE TABLE firelane_paused_queues (
    queue     TEXT PRIMARY KEY NOT NULL,
    paused_at INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The newest schema version this build knows.
pub(crate) const LATEST: i64 = 7;

/// Why a database cannot be used.
#[derive(Debug)]
pub(crate) enum SchemaError {
    Db(sqlx::Error),
    NotFirelane(String),
    TooNew(i64),
}

impl From<sqlx::Error> for SchemaError {
    fn from(e: sqlx::Error) -> Self {
        SchemaError::Db(e)
    }
}

/// Checks that the database is Firelane's (or empty), and brings its schema up to [`LATEST`],
/// all in one `BEGIN IMMEDIATE` transaction so that two processes opening one new file at once
/// do not both create it. `shared`: the application's own tables may be there too (Firelane's
/// are added beside them). Returns the versions applied.
pub(crate) async fn migrate(
    conn: &mut SqliteConnection,
    shared: bool,
) -> Result<Vec<i64>, SchemaError> {
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'",
    )
    .fetch_all(&mut *tx)
    .await?;

    let current = if tables.iter().any(|t| t == "firelane_meta") {
        let mark: Option<String> =
            sqlx::query_scalar("SELECT value FROM firelane_meta WHERE key = ?")
                .bind(MARK_KEY)
                .fetch_optional(&mut *tx)
                .await?;
        if mark.as_deref() != Some(MARK_VALUE) {
            return Err(SchemaError::NotFirelane(
                "it has a firelane_meta table without Firelane's mark".to_owned(),
            ));
        }
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM firelane_schema")
            .fetch_one(&mut *tx)
            .await?;
        version.unwrap_or(0)
    } else if tables.is_empty() || shared {
        sqlx::raw_sql(BOOTSTRAP).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO firelane_meta (key, value) VALUES (?, ?)")
            .bind(MARK_KEY)
            .bind(MARK_VALUE)
            .execute(&mut *tx)
            .await?;
        0
    } else {
        let mut names = tables;
        names.sort();
        names.truncate(5);
        return Err(SchemaError::NotFirelane(format!(
            "it is a SQLite database of another application (it has tables such as {}); give Firelane a database file of its own, or open it with shared_database(true) (URL parameter shared=true) to add Firelane's tables beside them",
            names.join(", ")
        )));
    };

    if current > LATEST {
        return Err(SchemaError::TooNew(current));
    }

    let mut applied = Vec::new();
    if current == 0 {
        sqlx::raw_sql(FRESH).execute(&mut *tx).await?;
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        if current > 0 {
            sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO firelane_schema (version, description, applied_at) VALUES (?, ?, ?)",
        )
        .bind(m.version)
        .bind(m.description)
        .bind(us(Utc::now()))
        .execute(&mut *tx)
        .await?;
        applied.push(m.version);
    }
    tx.commit().await?;
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::ConnectOptions;
    use sqlx::sqlite::SqliteConnectOptions;

    async fn version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
        let v: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM firelane_schema")
            .fetch_one(conn)
            .await?;
        Ok(v.unwrap_or(0))
    }

    async fn applied_count(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT COUNT(*) FROM firelane_schema")
            .fetch_one(conn)
            .await
    }

    #[tokio::test]
    async fn migrations_apply_once() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = SqliteConnectOptions::new()
            .in_memory(true)
            .connect()
            .await?;
        let first = migrate(&mut conn, false)
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert_eq!(first, vec![1, 2, 3, 4, 5, 6, 7]);
        let second = migrate(&mut conn, false)
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert!(second.is_empty());
        assert_eq!(version(&mut conn).await?, LATEST);
        assert_eq!(applied_count(&mut conn).await?, LATEST);
        Ok(())
    }

    /// A database that received only version 1 (as Firelane 0.1 made them) gets the later
    /// versions, its rows stay, and its counters start from the rows it has.
    #[tokio::test]
    async fn a_version_1_database_is_migrated() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = SqliteConnectOptions::new()
            .in_memory(true)
            .connect()
            .await?;
        sqlx::raw_sql(BOOTSTRAP).execute(&mut conn).await?;
        sqlx::query("INSERT INTO firelane_meta (key, value) VALUES (?, ?)")
            .bind(MARK_KEY)
            .bind(MARK_VALUE)
            .execute(&mut conn)
            .await?;
        let v1 = &MIGRATIONS[0];
        assert_eq!(v1.version, 1);
        sqlx::raw_sql(v1.sql).execute(&mut conn).await?;
        sqlx::query(
            "INSERT INTO firelane_schema (version, description, applied_at) VALUES (1, ?, 0)",
        )
        .bind(v1.description)
        .execute(&mut conn)
        .await?;
        sqlx::query("INSERT INTO servers (id, info, last_heartbeat) VALUES ('s', '{}', 0)")
            .execute(&mut conn)
            .await?;
        for (id, state) in [(1, "succeeded"), (2, "succeeded"), (3, "enqueued")] {
            sqlx::query(
                "INSERT INTO jobs (id, name, queue, priority, args, state, max_attempts,
                     created_at, state_at) VALUES (?, 'n', 'mail', 0, '{}', ?, 1, 0, 0)",
            )
            .bind(vec![id as u8; 16])
            .bind(state)
            .execute(&mut conn)
            .await?;
        }
        sqlx::query("INSERT INTO queue (queue, priority, name, job_id) VALUES ('mail', 0, 'n', ?)")
            .bind(vec![3u8; 16])
            .execute(&mut conn)
            .await?;
        // Before version 6 every state a job entered was a history row, its first one too.
        sqlx::query(
            "INSERT INTO history (job_id, state, at, attempt) VALUES (?, 'enqueued', 0, 0)",
        )
        .bind(vec![3u8; 16])
        .execute(&mut conn)
        .await?;

        let applied = migrate(&mut conn, false)
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert_eq!(applied, vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(version(&mut conn).await?, LATEST);
        let counters: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, n FROM firelane_counters ORDER BY key")
                .fetch_all(&mut conn)
                .await?;
        let expected = [
            ("queue:mail", 1),
            ("seq:queue", 1),
            ("state:enqueued", 1),
            ("state:succeeded", 2),
            ("total:succeeded", 2),
        ]
        .map(|(k, n)| (k.to_owned(), n));
        assert_eq!(counters, expected);
        // The enqueued job keeps its place (version 6), and its history reads as it was.
        let place: Option<i64> =
            sqlx::query_scalar("SELECT queue_seq FROM firelane_jobs WHERE id = ?")
                .bind(vec![3u8; 16])
                .fetch_one(&mut conn)
                .await?;
        assert_eq!(place, Some(1));
        let id = firelane_core::JobId::from_uuid(uuid::Uuid::from_bytes([3; 16]));
        let details = crate::reads::job(&mut conn, id)
            .await
            .map_err(|e| format!("{e:?}"))?
            .ok_or("job 3 is gone")?;
        let states: Vec<_> = details.history.iter().map(|h| h.state).collect();
        assert_eq!(states, [firelane_core::JobState::Enqueued]);
        let recurring: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM firelane_recurring")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(recurring, 0);
        let servers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM firelane_servers")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(servers, 1);
        Ok(())
    }

    /// Tables, columns and indexes (with their conditions) of a database, comparable across
    /// databases whose `CREATE` texts differ in layout.
    async fn shape(conn: &mut SqliteConnection) -> Result<Vec<String>, sqlx::Error> {
        let mut out = Vec::new();
        let objects: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT type, name, tbl_name, sql FROM sqlite_master
             WHERE name LIKE 'firelane%' ORDER BY type, name",
        )
        .fetch_all(&mut *conn)
        .await?;
        for (kind, name, table, sql) in objects {
            if kind == "table" {
                let cols: Vec<(String, String, i64, Option<String>, i64)> = sqlx::query_as(
                    "SELECT name, type, \"notnull\", dflt_value, pk FROM pragma_table_info(?)",
                )
                .bind(&name)
                .fetch_all(&mut *conn)
                .await?;
                out.push(format!("table {name} {cols:?}"));
            } else {
                let cols: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT name, \"desc\" FROM pragma_index_xinfo(?) WHERE key = 1",
                )
                .bind(&name)
                .fetch_all(&mut *conn)
                .await?;
                let squeezed: String = sql.unwrap_or_default().split_whitespace().collect();
                let condition = squeezed.split_once("WHERE").map(|(_, c)| c.to_owned());
                let unique = squeezed.starts_with("CREATEUNIQUE");
                out.push(format!(
                    "{kind} {name} on {table} {cols:?} unique={unique} where={condition:?}"
                ));
            }
        }
        Ok(out)
    }

    /// A new database gets [`FRESH`]; one made by older versions gets the migrations: both end
    /// with the same tables, columns and indexes.
    #[tokio::test]
    async fn the_fresh_schema_equals_the_migrated_one() -> Result<(), Box<dyn std::error::Error>> {
        let mut fresh = SqliteConnectOptions::new()
            .in_memory(true)
            .connect()
            .await?;
        migrate(&mut fresh, false)
            .await
            .map_err(|e| format!("{e:?}"))?;

        let mut old = SqliteConnectOptions::new()
            .in_memory(true)
            .connect()
            .await?;
        sqlx::raw_sql(BOOTSTRAP).execute(&mut old).await?;
        sqlx::query("INSERT INTO firelane_meta (key, value) VALUES (?, ?)")
            .bind(MARK_KEY)
            .bind(MARK_VALUE)
            .execute(&mut old)
            .await?;
        sqlx::raw_sql(MIGRATIONS[0].sql).execute(&mut old).await?;
        sqlx::query(
            "INSERT INTO firelane_schema (version, description, applied_at) VALUES (1, '', 0)",
        )
        .execute(&mut old)
        .await?;
        migrate(&mut old, false)
            .await
            .map_err(|e| format!("{e:?}"))?;

        let (a, b) = (shape(&mut fresh).await?, shape(&mut old).await?);
        assert_eq!(a.len(), 18, "{a:#?}");
        assert_eq!(a, b);
        Ok(())
    }

    /// A shared database keeps the application's tables, even one named like an old Firelane
    /// table, and gets Firelane's beside them; unshared, it is refused.
    #[tokio::test]
    async fn a_shared_database_gets_firelane_tables_beside_its_own()
    -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = SqliteConnectOptions::new()
            .in_memory(true)
            .connect()
            .await?;
        sqlx::raw_sql("CREATE TABLE jobs (title TEXT); INSERT INTO jobs VALUES ('mine');")
            .execute(&mut conn)
            .await?;
        assert!(matches!(
            migrate(&mut conn, false).await,
            Err(SchemaError::NotFirelane(_))
        ));
        let applied = migrate(&mut conn, true)
            .await
            .map_err(|e| format!("{e:?}"))?;
        assert_eq!(applied, (1..=LATEST).collect::<Vec<_>>());
        let mine: String = sqlx::query_scalar("SELECT title FROM jobs")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(mine, "mine");
        // Reopened without the flag, it is Firelane's (marked) and opens.
        assert!(
            migrate(&mut conn, false)
                .await
                .map_err(|e| format!("{e:?}"))?
                .is_empty()
        );
        Ok(())
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i64> = (1..=LATEST).collect();
        assert_eq!(versions, expected);
    }
}
