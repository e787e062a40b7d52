//! The SQL of the write operations, in one place so that a test can check every query plan.
//!
//! Lists of values come as one JSON array bound to one parameter and read with `json_each`, or
//! with `jsonb_each` where fields of each element are read (it parses each element once);
//! ids travel in it as hex text, turned back into blobs with `unhex`. The background queries
//! name their partial index (`INDEXED BY`): without statistics SQLite may prefer the wider
//! `jobs_state` index, which would make them read every scheduled or processing job.

/// The columns `Head` reads.
macro_rules! head_columns {
    () => {
        "id, name, queue, priority, state, attempt, max_attempts, lease_id, lease_server, lease_until"
    };
}

/// Adds to counters: `?N` is a JSON object of keys and amounts (see the `counters` table).
macro_rules! add_counters {
    ($param:literal) => {
        concat!(
            "INSERT INTO firelane_counters (key, n) SELECT key, value FROM json_each(",
            $param,
            ") WHERE value <> 0 ON CONFLICT (key) DO UPDATE SET n = n + excluded.n"
        )
    };
}

/// Adds to hourly figures: `?N` is a JSON array of `[hour, succeeded, failed]`.
macro_rules! add_hours {
    ($param:literal) => {
        concat!(
            "INSERT INTO firelane_stats_hourly (hour, succeeded, failed)
                 SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each(",
            $param,
            ") WHERE true
             ON CONFLICT (hour) DO UPDATE SET succeeded = succeeded + excluded.succeeded,
                 failed = failed + excluded.failed"
        )
    };
}

/// The last place given in the queue table (`seq`): a job entering its queue gets this plus its
/// position in the batch (from 1), then the counter moves past the batch.
macro_rules! last_place {
    () => {
        "COALESCE((SELECT n FROM firelane_counters WHERE key = 'seq:queue'), 0)"
    };
}

/// Moves the counter of places past a batch of `$n` (an expression; NULL moves nothing).
macro_rules! take_places {
    ($n:literal) => {
        concat!(
            "INSERT INTO firelane_counters (key, n) SELECT 'seq:queue', ",
            $n,
            " WHERE ",
            $n,
            " > 0 ON CONFLICT (key) DO UPDATE SET n = n + excluded.n"
        )
    };
}

/// The heads of jobs by id (a JSON array of hex ids), and whether continuations await them (so
/// that finishing a job with none needs no [`CHILDREN`] query).
pub(crate) const HEADS: &str = concat!(
    "SELECT ",
    head_columns!(),
    ", EXISTS (SELECT 1 FROM firelane_jobs AS c INDEXED BY firelane_jobs_parent WHERE c.parent_id IS NOT NULL
              AND c.parent_id = firelane_jobs.id AND c.state = 'awaiting') AS awaited
     FROM firelane_jobs WHERE id IN (SELECT unhex(value) FROM json_each(?))"
);

/// Moves jobs to new states (`?1`, a JSON array of moves), in one round trip: takes the jobs
/// that leave their queue (`"deq": 1`) out of the queue table (found by the place their row
/// keeps), writes the end of a success kept in a job's row (`ended_by`, `ended_us`, see
/// [`COMPLETE_SUCCEEDED`]) to the history before the job leaves `succeeded`, writes a history
/// row for each move, in order (a move out of `processing` ends an attempt: its row carries the
/// attempt's start, read from the job's row before the update), updates the rows, adds queue
/// rows at the next places for the moves into `enqueued`, and adds the counters `?2` and
/// hourly figures `?3`.
pub(crate) const MOVE: &str = concat!(
    "DELETE FROM firelane_queue WHERE (queue, priority, seq) IN (
                 SELECT j.queue, j.priority, j.queue_seq
                 FROM jsonb_each(?1) AS x JOIN firelane_jobs AS j ON j.id = unhex(x.value ->> 'id')
                 WHERE x.value ->> 'deq' = 1);
         INSERT INTO firelane_history (job_id, state, at, reason, server, attempt, duration_us,
                 started_at, started_by, started_attempt)
             SELECT j.id, j.state, j.state_at, j.reason, j.ended_by, j.attempt, j.ended_us,
                    j.started_at, j.started_by,
                    CASE WHEN j.started_at IS NOT NULL THEN j.attempt END
             FROM jsonb_each(?1) AS x JOIN firelane_jobs AS j ON j.id = unhex(x.value ->> 'id')
             WHERE j.ended_by IS NOT NULL
             ORDER BY x.key;
         INSERT INTO firelane_history (job_id, state, at, reason, server, attempt, duration_us,
                 error, started_at, started_by, started_attempt)
             SELECT j.id, x.value ->> 'state', x.value ->> 'at',
                    x.value ->> 'reason', x.value ->> 'server', x.value ->> 'attempt',
                    x.value ->> 'dur', x.value ->> 'error',
                    CASE WHEN j.state = 'processing' THEN j.started_at END,
                    CASE WHEN j.state = 'processing' THEN j.started_by END,
                    CASE WHEN j.state = 'processing' AND j.started_at IS NOT NULL THEN j.attempt END
             FROM jsonb_each(?1) AS x JOIN firelane_jobs AS j ON j.id = unhex(x.value ->> 'id')
             ORDER BY x.key;
         UPDATE firelane_jobs SET state = x.value ->> 'state', attempt = x.value ->> 'attempt',
             state_at = x.value ->> 'at', due_at = x.value ->> 'due', lease_id = NULL,
             lease_server = NULL, lease_until = NULL, finished_at = x.value ->> 'fin',
             reason = x.value ->> 'reason',
             last_error = COALESCE(x.value ->> 'error', firelane_jobs.last_error),
             ended_by = NULL, ended_us = NULL,
             queue_seq = CASE WHEN x.value ->> 'state' = 'enqueued' THEN ",
    last_place!(),
    " + x.key + 1 END
         FROM jsonb_each(?1) AS x
         WHERE firelane_jobs.id = unhex(x.value ->> 'id');
         INSERT INTO firelane_queue (queue, priority, seq, name, job_id)
             SELECT x.value ->> 'q', x.value ->> 'p', ",
    last_place!(),
    " + x.key + 1, x.value ->> 'n', unhex(x.value ->> 'id')
             FROM jsonb_each(?1) AS x WHERE x.value ->> 'state' = 'enqueued';
         ",
    take_places!("json_array_length(?1)"),
    ";
         ",
    add_counters!("?2"),
    ";
         ",
    add_hours!("?3")
);

/// The awaiting continuations of jobs (a JSON array of hex ids).
pub(crate) const CHILDREN: &str = concat!(
    "SELECT ",
    head_columns!(),
    ", parent_id, continue_on FROM firelane_jobs INDEXED BY firelane_jobs_parent WHERE parent_id IS NOT NULL AND state = 'awaiting' AND parent_id IN (SELECT unhex(value) FROM json_each(?)) ORDER BY id"
);

/// The states of jobs by id (a JSON array of hex ids).
pub(crate) const PARENT_STATES: &str =
    "SELECT id, state FROM firelane_jobs WHERE id IN (SELECT unhex(value) FROM json_each(?))";

/// New jobs, created at `?2`, in one round trip: `?1` is a JSON array of arrays of the columns
/// every job has (id as hex, name, queue, priority, args, state, max attempts) and `?4` one of
/// the other columns, only for the jobs that have any (position in `?1` from 1, retry delays,
/// timeout, due, parent as hex, continuation condition, reason, finished at, trace context).
/// They are read once into the scratch table `temp.firelane_incoming`, from which come the
/// rows (with their first history entry) and the queue rows of the enqueued ones, at the next
/// places in order; then the counters `?3`. (Arrays rather than objects, and two short arrays
/// rather than one long one: SQLite finds an element by walking the ones before it, for each
/// column of each job.)
pub(crate) const ENQUEUE: &str = concat!(
    "CREATE TEMP TABLE IF NOT EXISTS firelane_incoming (
             ord INTEGER PRIMARY KEY, id BLOB NOT NULL, name TEXT NOT NULL, queue TEXT NOT NULL,
             priority INTEGER NOT NULL, args TEXT NOT NULL, state TEXT NOT NULL,
             max INTEGER NOT NULL, delays TEXT, timeout INTEGER, due INTEGER, parent BLOB,
             cont TEXT, reason TEXT, fin INTEGER, trace TEXT);
         DELETE FROM temp.firelane_incoming;
         INSERT INTO temp.firelane_incoming (ord, id, name, queue, priority, args, state, max)
             SELECT x.key + 1, unhex(x.value ->> 0), x.value ->> 1, x.value ->> 2,
                    x.value ->> 3, x.value ->> 4, x.value ->> 5, x.value ->> 6
             FROM jsonb_each(?1) AS x;
         UPDATE temp.firelane_incoming SET delays = e.value ->> 1, timeout = e.value ->> 2,
                 due = e.value ->> 3, parent = unhex(e.value ->> 4), cont = e.value ->> 5,
                 reason = e.value ->> 6, fin = e.value ->> 7, trace = e.value ->> 8
             FROM jsonb_each(?4) AS e WHERE firelane_incoming.ord = e.value ->> 0;
         INSERT INTO firelane_jobs (id, name, queue, priority, args, state, attempt,
                 max_attempts, retry_delays, timeout_ms, created_at, state_at, due_at, parent_id,
                 continue_on, reason, finished_at, trace_context, initial_state, initial_reason,
                 queue_seq)
             SELECT id, name, queue, priority, args, state, 0, max, delays, timeout, ?2, ?2,
                    due, parent, cont, reason, fin, trace, state, reason,
                    CASE WHEN state = 'enqueued' THEN ",
    last_place!(),
    " + ord END
             FROM temp.firelane_incoming ORDER BY ord;
         INSERT INTO firelane_queue (queue, priority, seq, name, job_id)
             SELECT queue, priority, ",
    last_place!(),
    " + ord, name, id FROM temp.firelane_incoming
             WHERE state = 'enqueued';
         ",
    take_places!("(SELECT MAX(ord) FROM temp.firelane_incoming)"),
    ";
         ",
    add_counters!("?3")
);

/// The writer connection's scratch tables, created once when the connection opens (see
/// `SqliteStorage::connect_with`) rather than by each text: a statement more in a text is a
/// message more between threads. The fetch and completion texts empty them when they start, so
/// the last batch's rows (a few dozen) stay until the next. `temp_store = MEMORY` (first:
/// changing it drops the temporary tables) keeps them in memory rather than in a temporary file
/// with a page cache and journal of its own (8 % less CPU per drained job, benches/README.md,
/// session 5). It applies to this connection alone, so also to its sorts without an index
/// (held in memory, without the page cache's limit: only a migration's index builds sort much
/// on the writer) and its statement journals; the read connections keep SQLite's default.
pub(crate) const SCRATCH_TABLES: &str = "PRAGMA temp_store = MEMORY;
     CREATE TEMP TABLE IF NOT EXISTS firelane_fetched (
         ord INTEGER PRIMARY KEY, priority INTEGER NOT NULL, seq INTEGER NOT NULL,
         job_id BLOB NOT NULL UNIQUE, lease BLOB NOT NULL, ok INTEGER NOT NULL,
         name TEXT, queue TEXT, args TEXT, attempt INTEGER, max INTEGER, delays TEXT,
         timeout INTEGER, created INTEGER, enqueued INTEGER, trace TEXT);
     CREATE TEMP TABLE IF NOT EXISTS firelane_done (
         ord INTEGER PRIMARY KEY, id BLOB NOT NULL, lease BLOB NOT NULL, server TEXT,
         at INTEGER NOT NULL, dur INTEGER, ok INTEGER NOT NULL)";

/// One fetch from one queue in one round trip. (`LIMIT (SELECT ?2)`, not `LIMIT ?2`: SQLite
/// plans with a bare limit parameter's value, so each new binding of it made the statement be
/// prepared again, on every fetch: 6 % of the writer's time.) `?1` queue, `?2` limit, `?3`
/// now, `?4` server, `?5` lease end, `?6` a JSON array of job names or NULL for any.
///
/// The queue rows taken go through the scratch table `temp.firelane_fetched` in fetch order,
/// each with its job's columns, read in the same step (each job row is looked up once to read
/// and once to update: no later statement joins `jobs` again). `ok` says whether the job is
/// enqueued, as it must be; a queue row whose job is not (which should not exist) is dropped
/// from the queue and answered as not leased. A second queue row of the same job (which
/// should not exist either) is left alone by the unique `job_id` (for a later fetch to drop),
/// so that `ok` stays exactly what the update leases. The priority answered is the queue
/// row's, which is the job's by construction. Each leased job gets a random lease, its
/// attempt goes up by one, its row keeps the attempt's start (no history row: the attempt's
/// row is written when it ends); counters are written; the last statement returns the rows
/// as one row, a JSON array of arrays (rows cost a hop between threads each).
macro_rules! fetch_one_queue {
    ($filter:literal) => {
        concat!(
            "DELETE FROM temp.firelane_fetched;
             INSERT OR IGNORE INTO temp.firelane_fetched (priority, seq, job_id, lease, ok, name,
                     queue, args, attempt, max, delays, timeout, created, enqueued, trace)
                 SELECT q.priority, q.seq, q.job_id, randomblob(16), j.state IS 'enqueued',
                        j.name, j.queue, j.args, j.attempt + 1, j.max_attempts, j.retry_delays,
                        j.timeout_ms, j.created_at, j.state_at, j.trace_context
                 FROM firelane_queue AS q LEFT JOIN firelane_jobs AS j ON j.id = q.job_id
                 WHERE q.queue = ?1 AND NOT EXISTS (SELECT 1 FROM firelane_paused_queues WHERE queue = ?1) ",
            $filter,
            " ORDER BY q.priority DESC, q.seq LIMIT (SELECT ?2);
             DELETE FROM firelane_queue WHERE queue = ?1
                 AND (priority, seq) IN (SELECT priority, seq FROM temp.firelane_fetched);
             UPDATE firelane_jobs SET state = 'processing',
                     attempt = firelane_jobs.attempt + 1, state_at = ?3, lease_id = f.lease,
                     lease_server = ?4, lease_until = ?5, due_at = NULL, reason = NULL,
                     started_at = ?3, started_by = ?4, queue_seq = NULL
                 FROM temp.firelane_fetched AS f
                 WHERE f.ok AND firelane_jobs.id = f.job_id AND +firelane_jobs.state = 'enqueued';
             INSERT INTO firelane_counters (key, n)
                 SELECT key, n FROM (
                     SELECT 'state:processing' AS key, SUM(ok) AS n FROM temp.firelane_fetched
                     UNION ALL
                     SELECT 'state:enqueued', -SUM(ok) FROM temp.firelane_fetched
                     UNION ALL
                     SELECT 'queue:' || ?1, -COUNT(*) FROM temp.firelane_fetched)
                 WHERE n <> 0
                 ON CONFLICT (key) DO UPDATE SET n = n + excluded.n;
             SELECT json_group_array(json_array(ord, hex(job_id), hex(lease),
                        json(CASE WHEN ok THEN 'true' ELSE 'false' END), name, queue, priority,
                        args, attempt, max, delays, timeout, created, enqueued, trace)) AS jobs
                 FROM temp.firelane_fetched"
        )
    };
}

/// [`fetch_one_queue!`] for any job name.
pub(crate) const FETCH_QUEUE_ANY: &str = fetch_one_queue!("");

/// [`fetch_one_queue!`] among the job names in `?6`.
pub(crate) const FETCH_QUEUE_NAMED: &str =
    fetch_one_queue!("AND q.name IN (SELECT value FROM json_each(?6))");

/// Records successful attempts in one round trip, for a batch in which every completion is a
/// success and no job appears twice. `?1` is a JSON array of `[id, lease, server, at, dur]`
/// (ids as hex), read once (`MATERIALIZED`: otherwise SQLite reads the JSON again for the
/// join) into the scratch table `temp.firelane_done`. The attempt's end stays in the job's
/// row (`ended_by`, `ended_us`; its state, time and attempt are the row's own) instead of a
/// history row: no history row or index entry per job, and two B-tree pages fewer for each
/// commit to write. A later move out of `succeeded` writes it to the history ([`MOVE`]).
/// A completion applies only while its job is processing under its lease. The last statement
/// answers only the exceptions, by position (`ord`, from 1): a stale completion (`ok` 0), or
/// an applied one whose job continuations await (`ok` 1; they are released by the general
/// code). Every row sent back costs a hop between threads, so the usual answer is no row.
pub(crate) const COMPLETE_SUCCEEDED: &str = "DELETE FROM temp.firelane_done;
         INSERT INTO temp.firelane_done (ord, id, lease, server, at, dur, ok)
             WITH given AS MATERIALIZED (
                 SELECT x.key AS k, unhex(x.value ->> 0) AS id, unhex(x.value ->> 1) AS lease,
                        x.value ->> 2 AS server, x.value ->> 3 AS at, x.value ->> 4 AS dur
                 FROM jsonb_each(?1) AS x)
             SELECT g.k + 1, g.id, g.lease, g.server, g.at, g.dur, j.id IS NOT NULL
             FROM given AS g
             LEFT JOIN firelane_jobs AS j
                 ON j.id = g.id AND +j.state = 'processing' AND j.lease_id = g.lease;
         UPDATE firelane_jobs SET state = 'succeeded', state_at = d.at, lease_id = NULL,
                 lease_server = NULL, lease_until = NULL, finished_at = d.at, reason = NULL,
                 ended_by = d.server, ended_us = d.dur
             FROM temp.firelane_done AS d
             WHERE d.ok AND firelane_jobs.id = d.id;
         INSERT INTO firelane_counters (key, n)
             SELECT key, n FROM (
                 SELECT 'state:succeeded' AS key, COUNT(*) AS n FROM temp.firelane_done WHERE ok = 1
                 UNION ALL SELECT 'total:succeeded', COUNT(*) FROM temp.firelane_done WHERE ok = 1
                 UNION ALL SELECT 'state:processing', -COUNT(*) FROM temp.firelane_done WHERE ok = 1)
             WHERE n <> 0
             ON CONFLICT (key) DO UPDATE SET n = n + excluded.n;
         INSERT INTO firelane_stats_hourly (hour, succeeded, failed)
             SELECT at / 3600000000 * 3600000000 AS h, COUNT(*), 0 FROM temp.firelane_done
             WHERE ok = 1 GROUP BY h
             ON CONFLICT (hour) DO UPDATE SET succeeded = succeeded + excluded.succeeded;
         SELECT ord, ok FROM (
             SELECT d.ord AS ord, d.ok AS ok, d.ok = 1 AND EXISTS (
                    SELECT 1 FROM firelane_jobs AS c INDEXED BY firelane_jobs_parent
                    WHERE c.parent_id IS NOT NULL AND c.parent_id = d.id
                      AND c.state = 'awaiting') AS awaited
             FROM temp.firelane_done AS d)
         WHERE ok = 0 OR awaited ORDER BY ord";

/// Records a heartbeat.
pub(crate) const SERVER_UPSERT: &str =
    "INSERT INTO firelane_servers (id, info, last_heartbeat) VALUES (?, ?, ?)
         ON CONFLICT (id) DO UPDATE SET info = excluded.info,
             last_heartbeat = excluded.last_heartbeat";

/// Extends the leases still held (a JSON array of ids and leases). `+jobs.state` keeps SQLite
/// from reading every processing job through `jobs_state` instead of looking each id up.
pub(crate) const HEARTBEAT_EXTEND: &str = "UPDATE firelane_jobs SET lease_until = ?2
         FROM jsonb_each(?1) AS x
         WHERE firelane_jobs.id = unhex(x.value ->> 'id') AND +firelane_jobs.state = 'processing'
           AND firelane_jobs.lease_id = unhex(x.value ->> 'lease')
         RETURNING firelane_jobs.id";

/// Removes a server.
pub(crate) const SERVER_DELETE: &str = "DELETE FROM firelane_servers WHERE id = ?";

/// Scheduled jobs due at `?`, oldest due first.
pub(crate) const PROMOTE_DUE: &str = concat!(
    "SELECT ",
    head_columns!(),
    " FROM firelane_jobs INDEXED BY firelane_jobs_scheduled WHERE state = 'scheduled' AND due_at <= ? ORDER BY due_at, id LIMIT ?"
);

/// When the next scheduled job is due.
pub(crate) const NEXT_DUE: &str = "SELECT MIN(due_at) FROM firelane_jobs INDEXED BY firelane_jobs_scheduled WHERE state = 'scheduled'";

/// Removes servers silent since before `?`.
pub(crate) const DEAD_SERVERS: &str =
    "DELETE FROM firelane_servers WHERE last_heartbeat < ? RETURNING id";

/// Processing jobs whose lease lapsed before `?`.
pub(crate) const LAPSED: &str = concat!(
    "SELECT ",
    head_columns!(),
    " FROM firelane_jobs INDEXED BY firelane_jobs_processing WHERE state = 'processing' AND lease_until < ? ORDER BY lease_until, id"
);

/// Removes finished jobs of a state finished before `?`.
pub(crate) const EXPIRE_JOBS: &str = "DELETE FROM firelane_jobs WHERE id IN (
                 SELECT id FROM firelane_jobs INDEXED BY firelane_jobs_finished
                 WHERE state = ? AND finished_at IS NOT NULL AND finished_at <= ?
                 ORDER BY finished_at LIMIT ?)
             RETURNING id";

/// Adds to counters (`?`, a JSON object of keys and amounts).
pub(crate) const ADD_COUNTERS: &str = add_counters!("?1");

/// Removes hourly figures of hours that started before `?`.
pub(crate) const EXPIRE_HOURS: &str = "DELETE FROM firelane_stats_hourly WHERE hour < ?";

/// Pauses queue `?1` at `?2`.
pub(crate) const QUEUE_PAUSE: &str = "INSERT INTO firelane_paused_queues (queue, paused_at) VALUES (?1, ?2) ON CONFLICT (queue) DO NOTHING";

/// Resumes a queue; returns it if it was paused.
pub(crate) const QUEUE_RESUME: &str =
    "DELETE FROM firelane_paused_queues WHERE queue = ? RETURNING queue";

/// Removes the history of removed jobs (a JSON array of hex ids).
pub(crate) const EXPIRE_HISTORY: &str =
    "DELETE FROM firelane_history WHERE job_id IN (SELECT unhex(value) FROM json_each(?))";

/// Adds a recurring job, or updates its definition: `paused`, `last_run` and `last_job` are
/// kept, `last_error` is cleared, `next_run` is kept when the cron expression and time zone are
/// unchanged and it was not NULL (disabled), and `updated_at` moves only when the definition
/// changed. On the right of `SET`, bare columns are the row's old values.
pub(crate) const RECURRING_UPSERT: &str =
    "INSERT INTO firelane_recurring (id, cron, time_zone, misfire, name, queue, priority, args,
             max_attempts, retry_delays, timeout_ms, paused, next_run, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 0, ?12, ?13, ?13)
         ON CONFLICT (id) DO UPDATE SET
             next_run = CASE WHEN cron = excluded.cron AND time_zone = excluded.time_zone
                                  AND next_run IS NOT NULL
                             THEN next_run ELSE excluded.next_run END,
             updated_at = CASE WHEN cron = excluded.cron AND time_zone = excluded.time_zone
                                    AND misfire = excluded.misfire AND name = excluded.name
                                    AND queue = excluded.queue AND priority = excluded.priority
                                    AND args = excluded.args
                                    AND max_attempts = excluded.max_attempts
                                    AND retry_delays IS excluded.retry_delays
                                    AND timeout_ms IS excluded.timeout_ms
                               THEN updated_at ELSE excluded.updated_at END,
             cron = excluded.cron, time_zone = excluded.time_zone, misfire = excluded.misfire,
             name = excluded.name, queue = excluded.queue, priority = excluded.priority,
             args = excluded.args, max_attempts = excluded.max_attempts,
             retry_delays = excluded.retry_delays, timeout_ms = excluded.timeout_ms,
             last_error = NULL";

/// Removes a recurring job.
pub(crate) const RECURRING_DELETE: &str =
    "DELETE FROM firelane_recurring WHERE id = ? RETURNING id";

/// Pauses a recurring job; its `next_run` stays.
pub(crate) const RECURRING_PAUSE: &str =
    "UPDATE firelane_recurring SET paused = 1 WHERE id = ? RETURNING id";

/// Resumes a recurring job to wait for `?2`. A paused or disabled (`next_run` NULL) job takes
/// it; a job that runs on schedule keeps its `next_run`, so that resuming it cannot skip an
/// occurrence that is due.
pub(crate) const RECURRING_RESUME: &str = "UPDATE firelane_recurring
         SET next_run = CASE WHEN paused OR next_run IS NULL THEN ?2 ELSE next_run END, paused = 0
         WHERE id = ?1 RETURNING id";

/// A firing's compare-and-set: applies only while the job is not paused and waits for `?2`.
/// `?3` is the next run, `?4` the error, `?5` the last job created (NULL for none) and `?6`
/// the firing's time, recorded as the last run when there is a last job.
pub(crate) const RECURRING_FIRE: &str =
    "UPDATE firelane_recurring SET next_run = ?3, last_error = ?4,
             last_job = COALESCE(?5, last_job),
             last_run = CASE WHEN ?5 IS NULL THEN last_run ELSE ?6 END
         WHERE id = ?1 AND paused = 0 AND next_run = ?2 RETURNING id";

/// The template of a recurring job, to trigger it.
pub(crate) const RECURRING_TEMPLATE: &str =
    "SELECT name, queue, priority, args, max_attempts, retry_delays, timeout_ms
         FROM firelane_recurring WHERE id = ?";

/// Records a job made from a recurring job's template by hand.
pub(crate) const RECURRING_TRIGGERED: &str =
    "UPDATE firelane_recurring SET last_job = ?2, last_run = ?3 WHERE id = ?1";

#[cfg(test)]
mod tests {
    use sqlx::{ConnectOptions, Row};

    /// Every statement above, by name.
    const ALL: &[(&str, &str)] = &[
        ("HEADS", super::HEADS),
        ("MOVE", super::MOVE),
        ("CHILDREN", super::CHILDREN),
        ("PARENT_STATES", super::PARENT_STATES),
        ("ENQUEUE", super::ENQUEUE),
        ("FETCH_QUEUE_ANY", super::FETCH_QUEUE_ANY),
        ("FETCH_QUEUE_NAMED", super::FETCH_QUEUE_NAMED),
        ("COMPLETE_SUCCEEDED", super::COMPLETE_SUCCEEDED),
        ("SERVER_UPSERT", super::SERVER_UPSERT),
        ("HEARTBEAT_EXTEND", super::HEARTBEAT_EXTEND),
        ("SERVER_DELETE", super::SERVER_DELETE),
        ("PROMOTE_DUE", super::PROMOTE_DUE),
        ("NEXT_DUE", super::NEXT_DUE),
        ("DEAD_SERVERS", super::DEAD_SERVERS),
        ("LAPSED", super::LAPSED),
        ("EXPIRE_JOBS", super::EXPIRE_JOBS),
        ("EXPIRE_HISTORY", super::EXPIRE_HISTORY),
        ("ADD_COUNTERS", super::ADD_COUNTERS),
        ("EXPIRE_HOURS", super::EXPIRE_HOURS),
        ("QUEUE_PAUSE", super::QUEUE_PAUSE),
        ("QUEUE_RESUME", super::QUEUE_RESUME),
        ("RECURRING_UPSERT", super::RECURRING_UPSERT),
        ("RECURRING_DELETE", super::RECURRING_DELETE),
        ("RECURRING_PAUSE", super::RECURRING_PAUSE),
        ("RECURRING_RESUME", super::RECURRING_RESUME),
        ("RECURRING_FIRE", super::RECURRING_FIRE),
        ("RECURRING_TEMPLATE", super::RECURRING_TEMPLATE),
        ("RECURRING_TRIGGERED", super::RECURRING_TRIGGERED),
    ];

    /// No statement reads a whole job table: each finds its rows through an index (only the
    /// JSON arrays given to it are scanned), so none slows down as finished jobs pile up.
    #[tokio::test]
    async fn no_statement_scans_a_table() -> Result<(), Box<dyn std::error::Error>> {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .in_memory(true)
            .connect()
            .await?;
        crate::schema::migrate(&mut conn, false)
            .await
            .map_err(|e| format!("{e:?}"))?;
        // The writer connection's scratch tables, and the one the enqueue text creates for
        // itself in its first statement.
        sqlx::raw_sql(super::SCRATCH_TABLES)
            .execute(&mut conn)
            .await?;
        let incoming = super::ENQUEUE.split(';').next().unwrap_or_default();
        sqlx::raw_sql(sqlx::AssertSqlSafe(incoming))
            .execute(&mut conn)
            .await?;
        // A constant with several statements (run in one round trip) is checked statement by
        // statement: EXPLAIN covers only the first statement of a text.
        let statements = ALL
            .iter()
            .flat_map(|(name, sql)| sql.split(';').map(move |part| (name, part.trim())));
        for (name, sql) in statements {
            let plan = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .fetch_all(&mut conn)
                .await?;
            let lines = plan
                .iter()
                .map(|row| row.try_get::<String, _>("detail"))
                .collect::<Result<Vec<_>, _>>()?;
            for line in &lines {
                // `servers` has one row per live server, and the scratch tables (`fetched`
                // and `done`, aliased `f` and `d`) hold one operation's rows: reading them
                // whole is fine.
                let scratch = [
                    "SCAN firelane_servers",
                    "SCAN temp.firelane_fetched",
                    "SCAN f",
                    "SCAN temp.firelane_done",
                    "SCAN temp.firelane_incoming",
                    "SCAN d",
                    // COMPLETE_SUCCEEDED's JSON array, read once (`given AS g`).
                    "SCAN g",
                ];
                // A SELECT without FROM reads its one constant row.
                let allowed = line == "SCAN CONSTANT ROW"
                    || line.contains("VIRTUAL TABLE")
                    || line.starts_with("SCAN (subquery")
                    || scratch
                        .iter()
                        .any(|s| line == s || line.starts_with(&format!("{s} ")));
                // `jobs_state` serves the monitoring lists; a write that finds its jobs through
                // it reads every job in a state (all the enqueued ones, say).
                assert!(
                    !line.contains("INDEX firelane_jobs_state "),
                    "{name} reads jobs by state: {lines:#?}"
                );
                assert!(
                    !line.starts_with("SCAN") || allowed,
                    "{name} scans a table: {lines:#?}"
                );
            }
        }
        Ok(())
    }
}
