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
];

/// The newest schema version this build knows.
pub(crate) const LATEST: i64 = 3;

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
/// do not both create it. Returns the versions applied.
pub(crate) async fn migrate(conn: &mut SqliteConnection) -> Result<Vec<i64>, SchemaError> {
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
    } else if tables.is_empty() {
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
            "it is a SQLite database of another application (it has tables such as {}); give Firelane a database file of its own",
            names.join(", ")
        )));
    };

    if current > LATEST {
        return Err(SchemaError::TooNew(current));
    }

    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        sqlx::raw_sql(m.sql).execute(&mut *tx).await?;
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
        let first = migrate(&mut conn).await.map_err(|e| format!("{e:?}"))?;
        assert_eq!(first, vec![1, 2, 3]);
        let second = migrate(&mut conn).await.map_err(|e| format!("{e:?}"))?;
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

        let applied = migrate(&mut conn).await.map_err(|e| format!("{e:?}"))?;
        assert_eq!(applied, vec![2, 3]);
        assert_eq!(version(&mut conn).await?, LATEST);
        let counters: Vec<(String, i64)> =
            sqlx::query_as("SELECT key, n FROM counters ORDER BY key")
                .fetch_all(&mut conn)
                .await?;
        let expected = [
            ("queue:mail", 1),
            ("state:enqueued", 1),
            ("state:succeeded", 2),
            ("total:succeeded", 2),
        ]
        .map(|(k, n)| (k.to_owned(), n));
        assert_eq!(counters, expected);
        let recurring: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM recurring")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(recurring, 0);
        let servers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM servers")
            .fetch_one(&mut conn)
            .await?;
        assert_eq!(servers, 1);
        Ok(())
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i64> = (1..=LATEST).collect();
        assert_eq!(versions, expected);
    }
}
