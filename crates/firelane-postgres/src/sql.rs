//! The SQL of the store, in one place.
//!
//! Every operation on many jobs is one statement whatever the number of jobs: the per-job values
//! travel as arrays (one parameter per column) read with `unnest`, and data-modifying common
//! table expressions do the rest (the job rows, the queue table, the history, the counters,
//! the wake-up) in that one statement, which PostgreSQL runs atomically: one round trip and one
//! commit. `__S__` stands for the quoted schema name; `$Mn` and `$Fn` are the parameters of the
//! move and fetch fragments, numbered when the statements are built (see [`Sql::new`]).

use std::sync::Arc;

use crate::schema::quote_ident;

/// Creates jobs: `$1`..`$14` are the columns (arrays), `$15` the time, `$16`/`$17` the counter
/// deltas (keys and amounts), `$18` the channel and `$19` the wake-up payloads. A job's first
/// history entry is kept in its row (`initial_state`, `initial_reason`).
const ENQUEUE: &str = "
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int4[], $5::text[], $6::text[],
                         $7::int4[], $8::text[], $9::int8[], $10::timestamptz[], $11::uuid[],
                         $12::text[], $13::text[], $14::text[])
        WITH ORDINALITY AS t(id, name, queue, priority, args, state, max_attempts, retry_delays,
                             timeout_ms, due_at, parent_id, continue_on, reason, trace_context,
                             ord)
),
seqs AS MATERIALIZED (
    SELECT input.*, CASE WHEN state = 'enqueued' THEN nextval('__S__.queue_seq') END AS queue_seq
    FROM input ORDER BY ord
),
ins AS (
    INSERT INTO __S__.jobs (id, name, queue, priority, args, state, attempt, max_attempts,
                            retry_delays, timeout_ms, created_at, state_at, due_at, parent_id,
                            continue_on, reason, finished_at, initial_state, initial_reason,
                            queue_seq, trace_context)
    SELECT id, name, queue, priority, args, state, 0, max_attempts, retry_delays, timeout_ms,
           $15, $15, due_at, parent_id, continue_on, reason,
           CASE WHEN state IN ('succeeded', 'failed', 'deleted') THEN $15::timestamptz END,
           state, reason, queue_seq, trace_context
    FROM seqs
    RETURNING 1
),
q AS (
    INSERT INTO __S__.queue (seq, queue, priority, name, job_id, enqueued_at)
    SELECT queue_seq, queue, priority, name, id, $15 FROM seqs WHERE state = 'enqueued'
),
c AS (
    INSERT INTO __S__.counter_deltas (key, n) SELECT * FROM unnest($16::text[], $17::int8[])
),
n AS (SELECT pg_notify($18, p) FROM unnest($19::text[]) AS p)
SELECT (SELECT count(*) FROM ins) AS created, (SELECT count(*) FROM n) AS notified";

/// The states of jobs by id, locked against changes until the transaction ends (a parent
/// whose continuation is being created).
const PARENT_STATES: &str =
    "SELECT id, state FROM __S__.jobs WHERE id = ANY($1::uuid[]) ORDER BY id FOR SHARE";

/// The fetch fragment: up to `$F2` jobs of queue `$F1` (none while it is paused), of the names
/// `$F3` (NULL: any), leased at `$F4` to server `$F5` until `$F6`. The queue rows are locked
/// with SKIP LOCKED (concurrent fetches take different jobs) and deleted; the jobs get a fresh
/// lease and their attempt counted (the attempt's start is kept in the job's row, and written to
/// the history with its end); counters follow. Defines `fupd` (the jobs) and `dq` (their queue
/// rows), joined by [`FETCH_SELECT`].
///
/// The queue rows and the jobs are found by `= ANY (ARRAY(..))`, not by joining the CTEs: a
/// generic plan knows no `LIMIT $F2`, estimates a tenth of the queue, and joined that many rows
/// by hashing the whole `jobs` and `queue` tables (120 ms for a fetch of 25 beside 100,000
/// jobs, against 0.7 ms); an array is looked up through the indexes (a TID scan, the primary
/// key) whatever the estimate.
const FETCH_CTES: &str = "
cand AS MATERIALIZED (
    SELECT q.ctid AS qctid FROM __S__.queue q
    WHERE q.queue = $F1 AND ($F3::text[] IS NULL OR q.name = ANY($F3::text[]))
      AND NOT EXISTS (SELECT 1 FROM __S__.paused_queues p WHERE p.queue = $F1)
    ORDER BY q.priority DESC, q.seq
    LIMIT $F2
    FOR UPDATE OF q SKIP LOCKED
),
dq AS (
    DELETE FROM __S__.queue q WHERE q.ctid = ANY (ARRAY(SELECT qctid FROM cand))
    RETURNING q.job_id, q.priority AS qp, q.seq, q.enqueued_at
),
fupd AS (
    UPDATE __S__.jobs j SET state = 'processing', attempt = j.attempt + 1, state_at = $F4,
        lease_id = gen_random_uuid(), lease_server = $F5, lease_until = $F6, due_at = NULL,
        reason = NULL, started_at = $F4, started_by = $F5
    WHERE j.id = ANY (ARRAY(SELECT job_id FROM dq)) AND j.state = 'enqueued'
    RETURNING j.id, j.name, j.queue, j.priority, j.args, j.attempt, j.max_attempts,
              j.retry_delays, j.timeout_ms, j.lease_id, j.created_at, j.trace_context
),
fc AS (
    INSERT INTO __S__.counter_deltas (key, n)
    SELECT k, sum(v) FROM fupd
        CROSS JOIN LATERAL (VALUES ('state:enqueued', -1), ('state:processing', 1),
                                   ('queue:' || fupd.queue, -1), ('proc:' || fupd.queue, 1)) AS x(k, v)
    GROUP BY k
)";

/// The jobs a fetch leased, with their queue rows' position and arrival.
const FETCH_SELECT: &str =
    "SELECT f.id, f.name, f.queue, f.priority, f.args, f.attempt, f.max_attempts,
       f.retry_delays, f.timeout_ms, f.lease_id, f.created_at, dq.enqueued_at, dq.qp, dq.seq,
       f.trace_context
FROM fupd f JOIN dq ON dq.job_id = f.id";

/// The move fragment: applies moves given as arrays, each a compare-and-set on the job's state
/// (`$M2`) and, where given, its lease (`$M3`) and lease end (`$M15`, recovery only applies to a
/// lease that lapsed before it). A move that ends an attempt writes one history row for the
/// whole attempt (its start, from the job's row, and its end), except a success: its end stays
/// in the job's row (`ended_by`, `ended_us`; one history row and index entry less per job)
/// until a later move takes the job out of `succeeded`, which writes that entry first (`prev`,
/// read before the update: only a person's delete or requeue moves a succeeded job, and it has
/// locked the row before this statement began). A move into a finished state releases the
/// job's awaiting continuations (and theirs, recursively, when one is deleted) in the same
/// statement. Queue
/// rows, history rows, counters, hourly figures and wake-ups (`pg_notify` on channel `$M16`)
/// follow from what moved (payloads prefixed with `$M17`, the sender's origin). Defines
/// `moved` (the moves applied, continuations included) and `nt` (the wake-ups).
const MOVE_CTES: &str = "
m AS (
    SELECT * FROM unnest($M1::uuid[], $M2::text[], $M3::uuid[], $M4::text[], $M5::int4[],
                         $M6::int4[], $M7::timestamptz[], $M8::timestamptz[], $M9::text[],
                         $M10::bool[], $M11::text[], $M12::text[], $M13::int8[], $M14::bool[],
                         $M15::timestamptz[])
        AS m(id, old_state, lease, new_state, attempt_set, attempt_delta, at, due, reason,
             reason_retry, error, server, duration_us, revoke, lapsed_before)
),
prev AS MATERIALIZED (
    SELECT j.id, j.state_at, j.reason, j.ended_by, j.attempt, j.ended_us, j.started_at,
           j.started_by
    FROM __S__.jobs j
    WHERE j.id = ANY (ARRAY(SELECT id FROM m WHERE old_state = 'succeeded'))
      AND j.state = 'succeeded' AND j.ended_by IS NOT NULL
),
upd AS (
    UPDATE __S__.jobs j SET state = m.new_state,
        attempt = COALESCE(m.attempt_set, GREATEST(j.attempt + m.attempt_delta, 0)),
        state_at = m.at,
        due_at = CASE WHEN m.new_state = 'scheduled' THEN m.due END,
        lease_id = NULL, lease_server = NULL, lease_until = NULL,
        finished_at = CASE WHEN m.new_state IN ('succeeded', 'failed', 'deleted') THEN m.at END,
        reason = CASE WHEN m.reason_retry
                      THEN format('attempt %s of %s failed; retrying', j.attempt, j.max_attempts)
                      ELSE m.reason END,
        last_error = COALESCE(m.error, j.last_error),
        queue_seq = CASE WHEN m.new_state = 'enqueued' THEN nextval('__S__.queue_seq')
                         ELSE j.queue_seq END,
        ended_by = CASE WHEN m.old_state = 'processing' AND m.new_state = 'succeeded'
                             AND m.error IS NULL THEN m.server END,
        ended_us = CASE WHEN m.old_state = 'processing' AND m.new_state = 'succeeded'
                             AND m.error IS NULL AND m.server IS NOT NULL THEN m.duration_us END
    -- In id order: rows are locked in the order they are updated, and two statements that
    -- lock the same jobs (a heartbeat, a completion) in one order cannot deadlock.
    FROM (SELECT * FROM m ORDER BY id) AS m
    WHERE j.id = ANY ($M1::uuid[]) AND j.id = m.id AND j.state = m.old_state
      AND (m.lease IS NULL OR j.lease_id = m.lease)
      AND (m.lapsed_before IS NULL OR j.lease_until < m.lapsed_before)
    RETURNING j.id, j.name, j.queue, j.priority, m.old_state, j.state AS new_state, j.attempt,
              j.state_at AS at, j.due_at, j.reason, m.error, m.server, m.duration_us, m.revoke,
              m.lease AS mlease, j.queue_seq,
              CASE WHEN m.old_state = 'processing' THEN j.started_at END AS started_at,
              CASE WHEN m.old_state = 'processing' THEN j.started_by END AS started_by,
              CASE WHEN m.old_state = 'processing' THEN j.attempt - m.attempt_delta END
                  AS started_attempt,
              j.ended_by IS NOT NULL AS in_row
),
tree (id, new_state, at, reason) AS (
    SELECT c.id, d.decision, p.at, format('parent %s %s', p.id, p.new_state)
    FROM upd p
    JOIN __S__.jobs c ON c.parent_id = p.id AND c.state = 'awaiting'
    CROSS JOIN LATERAL (SELECT CASE
        WHEN (p.new_state = 'succeeded' AND COALESCE(c.continue_on, 'succeeded') IN ('succeeded', 'any_finished'))
          OR (p.new_state = 'failed' AND c.continue_on IN ('failed', 'any_finished'))
          OR (p.new_state = 'deleted' AND c.continue_on IN ('deleted', 'any_finished'))
        THEN 'enqueued'
        WHEN p.new_state IN ('succeeded', 'deleted') THEN 'deleted' END AS decision) d
    WHERE p.new_state IN ('succeeded', 'failed', 'deleted') AND d.decision IS NOT NULL
  UNION ALL
    SELECT c.id, CASE WHEN c.continue_on IN ('deleted', 'any_finished') THEN 'enqueued' ELSE 'deleted' END,
           p.at, format('parent %s deleted', p.id)
    FROM tree p JOIN __S__.jobs c ON c.parent_id = p.id AND c.state = 'awaiting'
    WHERE p.new_state = 'deleted'
),
rel AS (
    UPDATE __S__.jobs j SET state = t.new_state, state_at = t.at, reason = t.reason,
        finished_at = CASE WHEN t.new_state = 'deleted' THEN t.at END,
        queue_seq = CASE WHEN t.new_state = 'enqueued' THEN nextval('__S__.queue_seq') END
    FROM tree t WHERE j.id = t.id AND j.state = 'awaiting'
    RETURNING j.id, j.name, j.queue, j.priority, 'awaiting'::text AS old_state,
              j.state AS new_state, j.attempt, j.state_at AS at, NULL::timestamptz AS due_at,
              j.reason, NULL::text AS error, NULL::text AS server, NULL::int8 AS duration_us,
              false AS revoke, NULL::uuid AS mlease, j.queue_seq, NULL::timestamptz AS started_at,
              NULL::text AS started_by, NULL::int4 AS started_attempt, false AS in_row
),
moved AS (SELECT * FROM upd UNION ALL SELECT * FROM rel),
dq_m AS (
    DELETE FROM __S__.queue q USING moved m
    WHERE m.old_state = 'enqueued' AND q.queue = m.queue AND q.priority = m.priority
      AND q.seq = m.queue_seq
),
iq_m AS (
    INSERT INTO __S__.queue (seq, queue, priority, name, job_id, enqueued_at)
    SELECT queue_seq, queue, priority, name, id, at FROM moved WHERE new_state = 'enqueued'
),
h_m AS (
    INSERT INTO __S__.history (job_id, state, at, reason, server, attempt, duration_us, error,
                               started_at, started_by, started_attempt)
    SELECT id, state, at, reason, server, attempt, duration_us, error, started_at, started_by,
           started_attempt
    FROM (
        -- The success kept in the row of a job this statement takes out of it, first.
        SELECT 0 AS k, p.id, 'succeeded' AS state, p.state_at AS at, p.reason,
               p.ended_by AS server, p.attempt, p.ended_us AS duration_us, NULL::text AS error,
               p.started_at, p.started_by, p.attempt AS started_attempt
        FROM prev p WHERE p.id = ANY (ARRAY(SELECT id FROM upd WHERE old_state = 'succeeded'))
      UNION ALL
        SELECT 1, id, new_state, at, reason, server, attempt, duration_us, error, started_at,
               started_by, started_attempt
        FROM moved WHERE NOT in_row
    ) AS e ORDER BY k
),
c_m AS (
    INSERT INTO __S__.counter_deltas (key, n)
    SELECT k, sum(v) FROM moved CROSS JOIN LATERAL (VALUES
        ('state:' || old_state, -1), ('state:' || new_state, 1),
        (CASE old_state WHEN 'enqueued' THEN 'queue:' || queue
                        WHEN 'processing' THEN 'proc:' || queue END, -1),
        (CASE WHEN new_state = 'enqueued' THEN 'queue:' || queue END, 1),
        (CASE WHEN new_state IN ('succeeded', 'failed') THEN 'total:' || new_state END, 1)
    ) AS x(k, v)
    WHERE k IS NOT NULL GROUP BY k HAVING sum(v) <> 0
),
hr_m AS (
    INSERT INTO __S__.hourly_deltas (hour, succeeded, failed)
    SELECT date_bin('1 hour', at, TIMESTAMPTZ '2000-01-01 00:00:00+00'),
           count(*) FILTER (WHERE new_state = 'succeeded'),
           count(*) FILTER (WHERE new_state = 'failed')
    FROM moved WHERE new_state IN ('succeeded', 'failed') GROUP BY 1
),
nt AS (
    SELECT pg_notify($M16, $M17 || p) FROM (
        SELECT DISTINCT 'e:' || queue FROM moved WHERE new_state = 'enqueued'
      UNION ALL
        SELECT 's:' || (extract(epoch FROM min(due_at)) * 1000000)::int8
        FROM moved WHERE new_state = 'scheduled' HAVING count(*) > 0
      UNION ALL
        SELECT 'v:' || id || ':' || new_state FROM moved WHERE revoke
    ) AS x(p)
)";

/// Extends the leases a server still holds (`$4` ids, `$5` leases) until `$6`, and records its
/// heartbeat (`$1` id, `$2` info, `$3` time). Returns each job asked about, whether its lease
/// was extended, and the state of those whose lease was lost. The job rows are found by their
/// ids as an array (`= ANY`), never only through a join: planned while `jobs` was small, a
/// join read the whole table later (see [`FETCH_CTES`]).
const HEARTBEAT: &str = "
WITH s AS (
    INSERT INTO __S__.servers (id, info, last_heartbeat) VALUES ($1, $2, $3)
    ON CONFLICT (id) DO UPDATE SET info = excluded.info, last_heartbeat = excluded.last_heartbeat
),
r AS (SELECT * FROM unnest($4::uuid[], $5::uuid[]) AS r(id, lease)),
ext AS (
    UPDATE __S__.jobs j SET lease_until = $6 FROM (SELECT * FROM r ORDER BY id) AS r
    WHERE j.id = ANY ($4::uuid[]) AND j.id = r.id AND j.state = 'processing'
      AND j.lease_id = r.lease
    RETURNING j.id
),
lost AS MATERIALIZED (
    SELECT j.id, j.state FROM __S__.jobs j
    WHERE j.id = ANY (ARRAY(SELECT r.id FROM r WHERE r.id NOT IN (SELECT id FROM ext)))
)
SELECT r.id, ext.id IS NOT NULL AS held, lost.state
FROM r LEFT JOIN ext ON ext.id = r.id LEFT JOIN lost ON lost.id = r.id";

/// Scheduled jobs due at `$1` (at most `$2`, oldest due first), and when the earliest of the
/// others is due.
const PROMOTE_DUE: &str = "
WITH due AS (
    SELECT id, attempt, due_at FROM __S__.jobs
    WHERE state = 'scheduled' AND due_at <= $1 ORDER BY due_at, id LIMIT $2
)
SELECT ARRAY(SELECT id FROM due ORDER BY due_at, id) AS ids,
       ARRAY(SELECT attempt FROM due ORDER BY due_at, id) AS attempts,
       (SELECT min(due_at) FROM __S__.jobs
        WHERE state = 'scheduled' AND id <> ALL (ARRAY(SELECT id FROM due))) AS next_due";

/// Folds the counter and hourly deltas into their totals, if no one else is folding (`$1` is
/// the advisory lock key). Keys are taken in order, so two folds never deadlock.
const FOLD: &str = "
WITH go AS (SELECT pg_try_advisory_xact_lock($1) AS ok),
d AS (DELETE FROM __S__.counter_deltas WHERE (SELECT ok FROM go) RETURNING key, n),
c AS (
    INSERT INTO __S__.counters (key, n)
    SELECT key, sum(n) FROM d GROUP BY key ORDER BY key
    ON CONFLICT (key) DO UPDATE SET n = counters.n + excluded.n
),
hd AS (DELETE FROM __S__.hourly_deltas WHERE (SELECT ok FROM go) RETURNING hour, succeeded, failed),
hc AS (
    INSERT INTO __S__.stats_hourly (hour, succeeded, failed)
    SELECT hour, sum(succeeded), sum(failed) FROM hd GROUP BY hour ORDER BY hour
    ON CONFLICT (hour) DO UPDATE SET succeeded = stats_hourly.succeeded + excluded.succeeded,
        failed = stats_hourly.failed + excluded.failed
)
SELECT (SELECT ok FROM go) AS folded";

/// A recovery pass's reading, in one statement: folds the counter deltas (as [`FOLD`], lock
/// key `$1`), removes servers silent since before `$2` (rows `d`), and lists the processing
/// jobs whose lease lapsed before `$3` (rows `l`) and the awaiting continuations whose parent
/// has finished (rows `o`: normally released by the parent's move; found here when the
/// continuation was created while its parent was finishing).
const RECOVER_SCAN: &str = "
WITH go AS (SELECT pg_try_advisory_xact_lock($1) AS ok),
d AS (DELETE FROM __S__.counter_deltas WHERE (SELECT ok FROM go) RETURNING key, n),
c AS (
    INSERT INTO __S__.counters (key, n)
    SELECT key, sum(n) FROM d GROUP BY key ORDER BY key
    ON CONFLICT (key) DO UPDATE SET n = counters.n + excluded.n
),
hd AS (DELETE FROM __S__.hourly_deltas WHERE (SELECT ok FROM go) RETURNING hour, succeeded, failed),
hc AS (
    INSERT INTO __S__.stats_hourly (hour, succeeded, failed)
    SELECT hour, sum(succeeded), sum(failed) FROM hd GROUP BY hour ORDER BY hour
    ON CONFLICT (hour) DO UPDATE SET succeeded = stats_hourly.succeeded + excluded.succeeded,
        failed = stats_hourly.failed + excluded.failed
),
dead AS (DELETE FROM __S__.servers WHERE last_heartbeat < $2 RETURNING id)
SELECT 'd' AS kind, id AS server, NULL::uuid AS id, NULL::int4 AS attempt,
       NULL::int4 AS max_attempts, NULL::uuid AS lease_id, NULL::timestamptz AS lease_until,
       NULL::uuid AS parent, NULL::text AS parent_state, NULL::timestamptz AS parent_at,
       NULL::text AS continue_on
FROM dead
UNION ALL
SELECT 'l', lease_server, id, attempt, max_attempts, lease_id, lease_until, NULL, NULL, NULL, NULL
FROM __S__.jobs WHERE state = 'processing' AND lease_until < $3
UNION ALL
SELECT 'o', NULL, c.id, NULL, NULL, NULL, NULL, p.id, p.state, p.state_at, c.continue_on
FROM __S__.jobs c JOIN __S__.jobs p ON p.id = c.parent_id
WHERE c.state = 'awaiting' AND p.state IN ('succeeded', 'failed', 'deleted')";

/// Removes up to `$3` jobs of state `$1` finished at or before `$2`, with their history. The
/// rows are found by `= ANY (ARRAY(..))` through the indexes (see [`FETCH_CTES`]: a join would
/// be planned for a tenth of the finished jobs and hash all of `jobs` and `history`).
const EXPIRE_JOBS: &str = "
WITH cand AS MATERIALIZED (
    SELECT id FROM __S__.jobs WHERE state = $1 AND finished_at <= $2
    ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED
),
gone AS (
    DELETE FROM __S__.jobs j WHERE j.id = ANY (ARRAY(SELECT id FROM cand)) AND j.state = $1
    RETURNING j.id
),
h AS (DELETE FROM __S__.history WHERE job_id = ANY (ARRAY(SELECT id FROM gone))),
c AS (
    INSERT INTO __S__.counter_deltas (key, n)
    SELECT 'state:' || $1, -count(*) FROM gone HAVING count(*) > 0
)
SELECT count(*) FROM gone";

/// Removes hourly figures of hours before `$1`.
const EXPIRE_HOURS: &str = "DELETE FROM __S__.stats_hourly WHERE hour < $1";

/// Removes a server.
const SERVER_DELETE: &str = "DELETE FROM __S__.servers WHERE id = $1";

/// Locks the queue row of a job, if it has one (before the job row, as fetch does), found from
/// the job's queue, priority and `queue_seq` through the fetch index.
const LOCK_QUEUE_ROW: &str = "SELECT 1 FROM __S__.queue q
    JOIN __S__.jobs j ON q.queue = j.queue AND q.priority = j.priority AND q.seq = j.queue_seq
    WHERE j.id = $1 AND j.state = 'enqueued' FOR UPDATE OF q";

/// A job's state, attempt and lease, locked.
const HEAD_FOR_UPDATE: &str =
    "SELECT state, attempt, lease_id FROM __S__.jobs WHERE id = $1 FOR UPDATE";

/// Pauses queue `$1` at `$2`.
const QUEUE_PAUSE: &str = "INSERT INTO __S__.paused_queues (queue, paused_at) VALUES ($1, $2)
    ON CONFLICT (queue) DO NOTHING";

/// Resumes queue `$1`, waking servers (channel `$2`, payload prefix `$3`) if it was paused.
const QUEUE_RESUME: &str = "
WITH r AS (DELETE FROM __S__.paused_queues WHERE queue = $1 RETURNING queue)
SELECT pg_notify($2, $3 || 'e:' || queue) FROM r";

/// Sends a wake-up: `$1` the channel, `$2` the payload.
const NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// Adds or updates a recurring job (see `Storage::upsert_recurring`).
const RECURRING_UPSERT: &str = "
INSERT INTO __S__.recurring AS r (id, cron, time_zone, misfire, name, queue, priority, args,
        max_attempts, retry_delays, timeout_ms, paused, next_run, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, false, $12, $13, $13)
ON CONFLICT (id) DO UPDATE SET
    next_run = CASE WHEN r.cron = excluded.cron AND r.time_zone = excluded.time_zone
                         AND r.next_run IS NOT NULL
                    THEN r.next_run ELSE excluded.next_run END,
    updated_at = CASE WHEN r.cron = excluded.cron AND r.time_zone = excluded.time_zone
                           AND r.misfire = excluded.misfire AND r.name = excluded.name
                           AND r.queue = excluded.queue AND r.priority = excluded.priority
                           AND r.args = excluded.args AND r.max_attempts = excluded.max_attempts
                           AND r.retry_delays IS NOT DISTINCT FROM excluded.retry_delays
                           AND r.timeout_ms IS NOT DISTINCT FROM excluded.timeout_ms
                      THEN r.updated_at ELSE excluded.updated_at END,
    cron = excluded.cron, time_zone = excluded.time_zone, misfire = excluded.misfire,
    name = excluded.name, queue = excluded.queue, priority = excluded.priority,
    args = excluded.args, max_attempts = excluded.max_attempts,
    retry_delays = excluded.retry_delays, timeout_ms = excluded.timeout_ms, last_error = NULL";

/// Removes a recurring job.
const RECURRING_DELETE: &str = "DELETE FROM __S__.recurring WHERE id = $1 RETURNING id";

/// Pauses a recurring job.
const RECURRING_PAUSE: &str = "UPDATE __S__.recurring SET paused = true WHERE id = $1 RETURNING id";

/// Resumes a recurring job to wait for `$2` (a job running on schedule keeps its `next_run`).
const RECURRING_RESUME: &str = "UPDATE __S__.recurring
    SET next_run = CASE WHEN paused OR next_run IS NULL THEN $2 ELSE next_run END, paused = false
    WHERE id = $1 RETURNING id";

/// A firing's compare-and-set on the awaited occurrence `$2` (see `sqlite`'s twin).
const RECURRING_FIRE: &str = "UPDATE __S__.recurring SET next_run = $3, last_error = $4,
        last_job = COALESCE($5, last_job),
        last_run = CASE WHEN $5::uuid IS NULL THEN last_run ELSE $6 END
    WHERE id = $1 AND NOT paused AND next_run = $2 RETURNING id";

/// The template of a recurring job.
const RECURRING_TEMPLATE: &str = "SELECT name, queue, priority, args, max_attempts, retry_delays,
    timeout_ms FROM __S__.recurring WHERE id = $1";

/// Records a job made from a recurring job's template by hand.
const RECURRING_TRIGGERED: &str =
    "UPDATE __S__.recurring SET last_job = $2, last_run = $3 WHERE id = $1";

/// The counters (folded plus pending deltas), paused queues, the number of servers and, for
/// each queue with enqueued jobs, when its head job (the one a fetch takes next) entered it, in
/// one snapshot. The heads are read from the fetch index, one probe per queue (a loose index
/// scan in `(queue, priority DESC, seq)` order): the first entry of each queue is its head.
const STATS: &str = "
WITH RECURSIVE heads AS (
    (SELECT queue, enqueued_at FROM __S__.queue ORDER BY queue, priority DESC, seq LIMIT 1)
  UNION ALL
    SELECT h.queue, h.enqueued_at FROM heads p CROSS JOIN LATERAL (
        SELECT queue, enqueued_at FROM __S__.queue WHERE queue > p.queue
        ORDER BY queue, priority DESC, seq LIMIT 1
    ) AS h
)
SELECT key, sum(n)::int8 AS n, NULL::timestamptz AS at FROM (
    SELECT key, n FROM __S__.counters UNION ALL SELECT key, n FROM __S__.counter_deltas
) AS c GROUP BY key
UNION ALL SELECT 'paused:' || queue, 1, NULL FROM __S__.paused_queues
UNION ALL SELECT 'servers', count(*), NULL FROM __S__.servers
UNION ALL SELECT 'head:' || queue, 0, enqueued_at FROM heads";

/// Hourly figures in `[$1, $2)`, folded plus pending.
const STATS_HISTORY: &str = "
SELECT hour, sum(succeeded)::int8 AS succeeded, sum(failed)::int8 AS failed FROM (
    SELECT hour, succeeded, failed FROM __S__.stats_hourly WHERE hour >= $1 AND hour < $2
    UNION ALL
    SELECT hour, succeeded, failed FROM __S__.hourly_deltas WHERE hour >= $1 AND hour < $2
) AS h GROUP BY hour ORDER BY hour";

/// The queues that have enqueued jobs, read from the fetch index one queue at a time (a
/// loose index scan), for the wake-ups after a lost listen connection.
const QUEUES_WITH_JOBS: &str = "
WITH RECURSIVE qs AS (
    (SELECT queue FROM __S__.queue ORDER BY queue LIMIT 1)
  UNION ALL
    SELECT (SELECT queue FROM __S__.queue WHERE queue > qs.queue ORDER BY queue LIMIT 1)
    FROM qs WHERE qs.queue IS NOT NULL
)
SELECT queue FROM qs WHERE queue IS NOT NULL";

/// When the earliest scheduled job is due.
const NEXT_DUE: &str = "SELECT min(due_at) FROM __S__.jobs WHERE state = 'scheduled'";

/// Replaces the `$Pn` parameters of a fragment with `$(n + offset)`, highest first so that
/// `$P1` does not match the start of `$P10`.
fn number(fragment: &str, prefix: &str, count: usize, offset: usize) -> String {
    let mut out = fragment.to_owned();
    for n in (1..=count).rev() {
        out = out.replace(&format!("${prefix}{n}"), &format!("${}", n + offset));
    }
    out
}

/// The number of parameters of [`MOVE_CTES`].
pub(crate) const MOVE_PARAMS: usize = 17;
/// The number of parameters of [`FETCH_CTES`].
pub(crate) const FETCH_PARAMS: usize = 6;

/// Every statement, with the schema filled in. Shared by the clones of a store; sqlx keeps a
/// prepared statement per text and connection.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) enqueue: Arc<str>,
    pub(crate) parent_states: Arc<str>,
    pub(crate) fetch: Arc<str>,
    pub(crate) moves: Arc<str>,
    pub(crate) heartbeat: Arc<str>,
    pub(crate) promote_due: Arc<str>,
    pub(crate) fold: Arc<str>,
    pub(crate) recover_scan: Arc<str>,
    pub(crate) expire_jobs: Arc<str>,
    pub(crate) expire_hours: Arc<str>,
    pub(crate) server_delete: Arc<str>,
    pub(crate) lock_queue_row: Arc<str>,
    pub(crate) head_for_update: Arc<str>,
    pub(crate) queue_pause: Arc<str>,
    pub(crate) queue_resume: Arc<str>,
    pub(crate) notify: Arc<str>,
    pub(crate) recurring_upsert: Arc<str>,
    pub(crate) recurring_delete: Arc<str>,
    pub(crate) recurring_pause: Arc<str>,
    pub(crate) recurring_resume: Arc<str>,
    pub(crate) recurring_fire: Arc<str>,
    pub(crate) recurring_template: Arc<str>,
    pub(crate) recurring_triggered: Arc<str>,
    pub(crate) stats: Arc<str>,
    pub(crate) stats_history: Arc<str>,
    pub(crate) queues_with_jobs: Arc<str>,
    pub(crate) next_due: Arc<str>,
    /// The schema, quoted, for the statements built per call (lists).
    pub(crate) schema: String,
}

impl Sql {
    /// The statements of the store in `schema`.
    pub(crate) fn new(schema: &str) -> Self {
        let q = quote_ident(schema);
        let s = |sql: &str| -> Arc<str> { Arc::from(sql.replace("__S__", &q)) };
        let moves = format!(
            "WITH RECURSIVE {}\nSELECT id, new_state, mlease, queue, due_at, revoke, (SELECT count(*) FROM nt) AS notified FROM moved",
            number(MOVE_CTES, "M", MOVE_PARAMS, 0)
        );
        let fetch = format!(
            "WITH {}\n{FETCH_SELECT} ORDER BY dq.qp DESC, dq.seq",
            number(FETCH_CTES, "F", FETCH_PARAMS, 0)
        );
        Self {
            enqueue: s(ENQUEUE),
            parent_states: s(PARENT_STATES),
            fetch: s(&fetch),
            moves: s(&moves),
            heartbeat: s(HEARTBEAT),
            promote_due: s(PROMOTE_DUE),
            fold: s(FOLD),
            recover_scan: s(RECOVER_SCAN),
            expire_jobs: s(EXPIRE_JOBS),
            expire_hours: s(EXPIRE_HOURS),
            server_delete: s(SERVER_DELETE),
            lock_queue_row: s(LOCK_QUEUE_ROW),
            head_for_update: s(HEAD_FOR_UPDATE),
            queue_pause: s(QUEUE_PAUSE),
            queue_resume: s(QUEUE_RESUME),
            notify: s(NOTIFY),
            recurring_upsert: s(RECURRING_UPSERT),
            recurring_delete: s(RECURRING_DELETE),
            recurring_pause: s(RECURRING_PAUSE),
            recurring_resume: s(RECURRING_RESUME),
            recurring_fire: s(RECURRING_FIRE),
            recurring_template: s(RECURRING_TEMPLATE),
            recurring_triggered: s(RECURRING_TRIGGERED),
            stats: s(STATS),
            stats_history: s(STATS_HISTORY),
            queues_with_jobs: s(QUEUES_WITH_JOBS),
            next_due: s(NEXT_DUE),
            schema: q,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_are_numbered() {
        let sql = Sql::new("firelane");
        for text in [&sql.moves, &sql.fetch] {
            assert!(!text.contains("$M") && !text.contains("$F"), "{text}");
            assert!(!text.contains("__S__"));
        }
        assert!(sql.moves.contains("$17") && !sql.moves.contains("$18"));
        assert!(sql.fetch.contains("$6") && !sql.fetch.contains("$7"));
    }
}
