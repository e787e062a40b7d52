//! The schema, its versioned migrations, and the checks that a schema is Firelane's and that
//! the role may use it.
//!
//! Firelane keeps its tables in a schema of its own (`firelane` unless configured). Migrations
//! are SQL kept in this file, numbered from 1; each applied one is a row of
//! `firelane_schema`. They run in one transaction under a transaction-scoped advisory lock
//! (`pg_advisory_xact_lock`) keyed by the schema's name, so servers starting together wait for
//! each other instead of racing to create the same tables. The row `('application',
//! 'firelane')` of `firelane_meta` marks the schema as Firelane's: a schema with tables but
//! without that mark belongs to someone else and is refused.
//!
//! In the SQL below, `__S__` stands for the quoted schema name.

use chrono::Utc;
use sqlx::{Connection, PgConnection};

/// The marker row's key in `firelane_meta`.
const MARK_KEY: &str = "application";
/// Its value.
const MARK_VALUE: &str = "firelane";

/// One migration.
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    pub(crate) sql: &'static str,
}

/// Creates the bookkeeping tables of a new schema.
const BOOTSTRAP: &str = "
CREATE TABLE __S__.firelane_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE __S__.firelane_schema (
    version     bigint PRIMARY KEY,
    description text NOT NULL,
    applied_at  timestamptz NOT NULL
);
";

/// The migrations, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "jobs, queue, history, servers, recurring jobs, counters and paused queues",
        sql: "
-- Every job, whatever its state.
CREATE TABLE __S__.jobs (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    queue        text NOT NULL,
    priority     integer NOT NULL,
    args         text NOT NULL,
    state        text NOT NULL,
    attempt      integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL,
    retry_delays text,                -- JSON array of milliseconds; NULL: Hangfire's back-off
    timeout_ms   bigint,
    created_at   timestamptz NOT NULL,
    state_at     timestamptz NOT NULL,
    due_at       timestamptz,         -- scheduled jobs
    parent_id    uuid,                -- continuations
    continue_on  text,
    lease_id     uuid,                -- processing jobs
    lease_server text,
    lease_until  timestamptz,
    reason       text,
    last_error   text,
    finished_at  timestamptz,         -- succeeded, failed and deleted jobs
    initial_state  text NOT NULL,     -- the first history entry: the state it was created in
    initial_reason text,              -- and why
    started_at   timestamptz,         -- the last attempt: when it was leased
    started_by   text,                -- and by which server
    queue_seq    bigint               -- an enqueued job's place: its queue row's `seq`
);
-- Each background pass reads only the jobs it concerns, through a partial index. No index
-- covers the states of the hot path (enqueued, processing, succeeded) but the partial ones that
-- a pass needs: a job moving along it updates only the indexes it must.
CREATE INDEX jobs_state ON __S__.jobs (state, id)
    WHERE state IN ('scheduled', 'failed', 'deleted', 'awaiting');
CREATE INDEX jobs_scheduled ON __S__.jobs (due_at) WHERE state = 'scheduled';
CREATE INDEX jobs_processing ON __S__.jobs (lease_until) WHERE state = 'processing';
CREATE INDEX jobs_finished ON __S__.jobs (state, finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX jobs_parent ON __S__.jobs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX jobs_awaiting ON __S__.jobs (id) WHERE state = 'awaiting';

-- The hot table: exactly the enqueued jobs, one row each. A job entering its queue gets a new
-- row (and so goes to the back); fetch locks rows here with SKIP LOCKED and deletes them, so
-- what it scans stays small however many finished jobs pile up in `jobs`.
CREATE SEQUENCE __S__.queue_seq;
CREATE TABLE __S__.queue (
    seq         bigint NOT NULL,      -- from queue_seq, also kept in the job's row
    queue       text NOT NULL,
    priority    integer NOT NULL,
    name        text NOT NULL,
    job_id      uuid NOT NULL,
    enqueued_at timestamptz NOT NULL
);
-- The only index: a job's row finds its queue row through it too (queue, priority, seq).
CREATE INDEX queue_fetch ON __S__.queue (queue, priority DESC, seq);
ALTER TABLE __S__.queue SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000,
    autovacuum_vacuum_cost_delay = 0);

-- The job's history after its creation (the first entry is in `jobs.initial_*`): one row per
-- state change, written in the statement that made it. An attempt is one row, written when it
-- ends: its end (state, time, server, duration, error) and its start (`started_*`: when the job
-- was leased, by which server, as which attempt). A running attempt's start is in `jobs`.
CREATE TABLE __S__.history (
    seq         bigint GENERATED ALWAYS AS IDENTITY,
    job_id      uuid NOT NULL,
    state       text NOT NULL,
    at          timestamptz NOT NULL,
    reason      text,
    server      text,
    attempt     integer NOT NULL,
    duration_us bigint,
    error       text,
    started_at      timestamptz,
    started_by      text,
    started_attempt integer
);
CREATE INDEX history_job ON __S__.history (job_id, seq);

CREATE TABLE __S__.servers (
    id             text PRIMARY KEY,
    info           text NOT NULL,     -- ServerInfo as JSON
    last_heartbeat timestamptz NOT NULL
);

-- Recurring jobs: a cron schedule and the job it creates at each occurrence.
CREATE TABLE __S__.recurring (
    id           text PRIMARY KEY,
    cron         text NOT NULL,
    time_zone    text NOT NULL,
    misfire      text NOT NULL,       -- Misfire as JSON
    name         text NOT NULL,
    queue        text NOT NULL,
    priority     integer NOT NULL,
    args         text NOT NULL,
    max_attempts integer NOT NULL,
    retry_delays text,
    timeout_ms   bigint,
    paused       boolean NOT NULL DEFAULT false,
    next_run     timestamptz,         -- NULL: disabled
    last_run     timestamptz,
    last_job     uuid,
    last_error   text,
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL
);

-- Counts for monitoring, without a row that every transaction updates: the statements that
-- move jobs append rows to `counter_deltas` (keys 'state:<state>', 'queue:<queue>' for
-- enqueued jobs, 'proc:<queue>' for processing jobs, 'total:succeeded', 'total:failed');
-- `expire` and `recover` fold them into `counters`. A count is the folded value plus the
-- deltas not folded yet.
CREATE TABLE __S__.counters (
    key text PRIMARY KEY,
    n   bigint NOT NULL
);
CREATE TABLE __S__.counter_deltas (
    key text NOT NULL,
    n   bigint NOT NULL
);
-- Jobs that succeeded and failed per hour, folded from `hourly_deltas` the same way.
CREATE TABLE __S__.stats_hourly (
    hour      timestamptz PRIMARY KEY,
    succeeded bigint NOT NULL DEFAULT 0,
    failed    bigint NOT NULL DEFAULT 0
);
CREATE TABLE __S__.hourly_deltas (
    hour      timestamptz NOT NULL,
    succeeded bigint NOT NULL,
    failed    bigint NOT NULL
);

-- Queues that no fetch takes jobs from.
CREATE TABLE __S__.paused_queues (
    queue     text PRIMARY KEY,
    paused_at timestamptz NOT NULL
);
",
    },
    Migration {
        version: 2,
        description: "jobs carry the trace context they were enqueued with",
        sql: "
-- Propagation data of the trace that enqueued a job (NewJob::trace_context), opaque here.
-- Nullable without a default: adding it rewrites nothing.
ALTER TABLE __S__.jobs ADD COLUMN trace_context text;
",
    },
    Migration {
        version: 3,
        description: "a job's last attempt, when it succeeded, ends in the job's row",
        sql: "
-- The end of an attempt that succeeded is kept in the job's row instead of a history row: the
-- server that ended it and how long it ran (its state, time, reason, attempt and start are the
-- row's). Set only while the job is succeeded; the move that takes it out of that state writes
-- the entry to `history` first. Nullable without defaults: adding them rewrites nothing.
ALTER TABLE __S__.jobs ADD COLUMN ended_by text, ADD COLUMN ended_us bigint;
",
    },
];

/// The newest schema version this build knows.
pub(crate) const LATEST: i64 = 3;

/// The tables of the latest schema, for the privilege check.
pub(crate) const TABLES: &[&str] = &[
    "firelane_meta",
    "firelane_schema",
    "jobs",
    "queue",
    "history",
    "servers",
    "recurring",
    "counters",
    "counter_deltas",
    "stats_hourly",
    "hourly_deltas",
    "paused_queues",
];

/// The sequences of the latest schema that Firelane's statements call `nextval` on.
pub(crate) const SEQUENCES: &[&str] = &["queue_seq"];

/// Why a schema cannot be used.
#[derive(Debug)]
pub(crate) enum SchemaError {
    Db(sqlx::Error),
    NotFirelane(String),
    TooNew(i64),
    /// The role lacks a privilege; the text says which and how to grant it.
    Privilege(String),
    /// Migrations are needed but were not allowed.
    NotMigrated(String),
}

impl From<sqlx::Error> for SchemaError {
    fn from(e: sqlx::Error) -> Self {
        SchemaError::Db(e)
    }
}

/// A schema name as a quoted SQL identifier.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The advisory lock key of a schema's migrations: a 64-bit FNV-1a hash of its name, so that
/// two schemas in one database migrate independently.
pub(crate) fn lock_key(schema: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in "firelane-migrate:".bytes().chain(schema.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    i64::from_ne_bytes(h.to_ne_bytes())
}

fn with_schema(sql: &str, schema: &str) -> String {
    sql.replace("__S__", &quote_ident(schema))
}

/// Checks that `schema` is Firelane's (or absent, or empty) and brings it up to [`LATEST`],
/// in one transaction holding the schema's advisory lock. Returns the versions applied.
pub(crate) async fn migrate(
    conn: &mut PgConnection,
    schema: &str,
    apply: bool,
) -> Result<Vec<i64>, SchemaError> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(lock_key(schema))
        .execute(&mut *tx)
        .await?;
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut *tx)
        .await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *tx)
            .await?;
    let tables: Vec<String> = if exists {
        sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1",
        )
        .bind(schema)
        .fetch_all(&mut *tx)
        .await?
    } else {
        Vec::new()
    };

    let current = if tables.iter().any(|t| t == "firelane_meta") {
        check_privileges(&mut tx, schema, &user, &tables).await?;
        let mark: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(with_schema(
            "SELECT value FROM __S__.firelane_meta WHERE key = $1",
            schema,
        )))
        .bind(MARK_KEY)
        .fetch_optional(&mut *tx)
        .await?;
        if mark.as_deref() != Some(MARK_VALUE) {
            return Err(SchemaError::NotFirelane(format!(
                "schema {schema:?} has a firelane_meta table without Firelane's mark"
            )));
        }
        let version: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(with_schema(
            "SELECT MAX(version) FROM __S__.firelane_schema",
            schema,
        )))
        .fetch_one(&mut *tx)
        .await?;
        version.unwrap_or(0)
    } else if tables.is_empty() {
        if !apply {
            return Err(SchemaError::NotMigrated(format!(
                "the schema {schema:?} has no Firelane tables and migrations are off: run `firelane migrate` (or open the store with migrations on)"
            )));
        }
        if exists {
            require_create(&mut tx, schema, &user).await?;
        } else {
            let can: bool =
                sqlx::query_scalar("SELECT has_database_privilege(current_database(), 'CREATE')")
                    .fetch_one(&mut *tx)
                    .await?;
            if !can {
                let db: String = sqlx::query_scalar("SELECT current_database()::text")
                    .fetch_one(&mut *tx)
                    .await?;
                return Err(SchemaError::Privilege(format!(
                    "the schema {schema:?} does not exist and role {user:?} lacks the CREATE privilege on database {db:?} to create it: run `CREATE SCHEMA {} AUTHORIZATION {}` as an administrator (or `GRANT CREATE ON DATABASE {} TO {}`)",
                    quote_ident(schema),
                    quote_ident(&user),
                    quote_ident(&db),
                    quote_ident(&user)
                )));
            }
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA {}",
                quote_ident(schema)
            )))
            .execute(&mut *tx)
            .await?;
        }
        sqlx::raw_sql(sqlx::AssertSqlSafe(with_schema(BOOTSTRAP, schema)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(with_schema(
            "INSERT INTO __S__.firelane_meta (key, value) VALUES ($1, $2)",
            schema,
        )))
        .bind(MARK_KEY)
        .bind(MARK_VALUE)
        .execute(&mut *tx)
        .await?;
        0
    } else {
        let mut names = tables;
        names.truncate(5);
        return Err(SchemaError::NotFirelane(format!(
            "schema {schema:?} belongs to another application (it has tables such as {}); give Firelane a schema of its own (PostgresConfig::schema, or ?schema= in the URL)",
            names.join(", ")
        )));
    };

    if current > LATEST {
        return Err(SchemaError::TooNew(current));
    }
    let pending: Vec<&Migration> = MIGRATIONS.iter().filter(|m| m.version > current).collect();
    if !pending.is_empty() && !apply {
        return Err(SchemaError::NotMigrated(format!(
            "the schema {schema:?} is at version {current}, this build needs {LATEST} and migrations are off: run `firelane migrate` (or open the store with migrations on)"
        )));
    }
    if !pending.is_empty() && current > 0 {
        require_create(&mut tx, schema, &user).await?;
    }
    let mut applied = Vec::new();
    for m in pending {
        sqlx::raw_sql(sqlx::AssertSqlSafe(with_schema(m.sql, schema)))
            .execute(&mut *tx)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(with_schema(
            "INSERT INTO __S__.firelane_schema (version, description, applied_at) VALUES ($1, $2, $3)",
            schema,
        )))
        .bind(m.version)
        .bind(m.description)
        .bind(Utc::now())
        .execute(&mut *tx)
        .await?;
        applied.push(m.version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// Fails unless the role may create tables in the schema.
async fn require_create(
    conn: &mut PgConnection,
    schema: &str,
    user: &str,
) -> Result<(), SchemaError> {
    let can: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, 'CREATE')")
        .bind(schema)
        .fetch_one(&mut *conn)
        .await?;
    if can {
        Ok(())
    } else {
        Err(SchemaError::Privilege(format!(
            "role {user:?} lacks the CREATE privilege on schema {schema:?}, which Firelane needs to create or upgrade its tables: `GRANT CREATE ON SCHEMA {} TO {}` (or run the migrations once as the schema's owner, e.g. `firelane migrate`)",
            quote_ident(schema),
            quote_ident(user)
        )))
    }
}

/// Fails unless the role may use the schema and read and write every Firelane table in it.
async fn check_privileges(
    conn: &mut PgConnection,
    schema: &str,
    user: &str,
    present: &[String],
) -> Result<(), SchemaError> {
    let usage: bool = sqlx::query_scalar("SELECT has_schema_privilege($1, 'USAGE')")
        .bind(schema)
        .fetch_one(&mut *conn)
        .await?;
    if !usage {
        return Err(SchemaError::Privilege(format!(
            "role {user:?} lacks the USAGE privilege on schema {schema:?}: `GRANT USAGE ON SCHEMA {} TO {}`",
            quote_ident(schema),
            quote_ident(user)
        )));
    }
    let rows: Vec<(String, bool, bool, bool, bool)> = sqlx::query_as(
        "SELECT c.relname::text, has_table_privilege(c.oid, 'SELECT'),
                has_table_privilege(c.oid, 'INSERT'), has_table_privilege(c.oid, 'UPDATE'),
                has_table_privilege(c.oid, 'DELETE')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY 1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await?;
    let mut missing = Vec::new();
    for (table, select, insert, update, delete) in rows {
        if !TABLES.contains(&table.as_str()) || !present.contains(&table) {
            continue;
        }
        let lacks: Vec<&str> = [
            ("SELECT", select),
            ("INSERT", insert),
            ("UPDATE", update),
            ("DELETE", delete),
        ]
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(p, _)| p)
        .collect();
        if !lacks.is_empty() {
            missing.push(format!("{} on {schema}.{table}", lacks.join(", ")));
        }
    }
    let sequences: Vec<(String, bool)> = sqlx::query_as(
        "SELECT c.relname::text, has_sequence_privilege(c.oid, 'USAGE')
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relkind = 'S' AND c.relname = ANY($2) ORDER BY 1",
    )
    .bind(schema)
    .bind(SEQUENCES)
    .fetch_all(&mut *conn)
    .await?;
    for (sequence, usage) in sequences {
        if !usage {
            missing.push(format!("USAGE on sequence {schema}.{sequence}"));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(SchemaError::Privilege(format!(
        "role {user:?} lacks privileges Firelane needs: {}; grant them with `GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {s} TO {u}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA {s} TO {u}`",
        missing.join("; "),
        s = quote_ident(schema),
        u = quote_ident(user)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i64> = (1..=LATEST).collect();
        assert_eq!(versions, expected);
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("firelane"), "\"firelane\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_ne!(lock_key("a"), lock_key("b"));
    }
}
