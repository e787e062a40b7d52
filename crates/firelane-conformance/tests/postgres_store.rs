//! What is particular to the PostgreSQL store: enqueueing in the application's own
//! transaction, migrations, clear errors for bad input at start, and the wake-ups surviving a
//! dropped listen connection.
#![allow(clippy::unwrap_used)]

mod postgres_support;

use std::time::Duration;

use firelane::{Error, JobState, NewJob, Storage};
use firelane_core::Signal;
use firelane_postgres::{PostgresConfig, PostgresStorage};
use postgres_support::{
    available, drop_schema, exec, fresh_schema, open, rows_read, single_connection_store, url,
};
use sqlx::Connection;
use tokio::sync::broadcast;

/// The URL of the test database with `user` as its role.
fn url_as(user: &str) -> String {
    let u = url();
    let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    format!("postgres://{user}@{host}")
}

async fn admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&url()).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// enqueue_in
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_a_committed_transaction_creates_the_job() {
    let Some(s) = postgres_support::scratch().await else {
        return;
    };
    let store = &s.inner;
    let mut rx = store.subscribe();
    let mut tx = store.pool().begin().await.unwrap();
    let job = NewJob::new("welcome", "{}");
    let id = job.id;
    let created = store.enqueue_in(&mut tx, vec![job]).await.unwrap();
    assert_eq!(created[0].state, JobState::Enqueued);
    // Not visible outside the transaction before it commits, and no wake-up yet.
    assert!(store.job(id).await.unwrap().is_none());
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "woken before the commit");
    tx.commit().await.unwrap();
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.job.state, JobState::Enqueued);
    assert_eq!(store.stats().await.unwrap().count(JobState::Enqueued), 1);
    // The wake-up comes with the commit (through NOTIFY).
    let woke = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await;
    assert!(
        matches!(woke, Ok(Ok(Signal::Enqueued { ref queue })) if queue == "default"),
        "{woke:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_in_a_rolled_back_transaction_creates_nothing() {
    let Some(s) = postgres_support::scratch().await else {
        return;
    };
    let store = &s.inner;
    let mut rx = store.subscribe();
    let mut tx = store.pool().begin().await.unwrap();
    let job = NewJob::new("welcome", "{}");
    let id = job.id;
    store.enqueue_in(&mut tx, vec![job]).await.unwrap();
    tx.rollback().await.unwrap();
    assert!(store.job(id).await.unwrap().is_none());
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.states.values().sum::<u64>(), 0, "{stats:?}");
    assert!(
        store
            .list_jobs(Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rx.try_recv().is_err(),
        "woken for a job that does not exist"
    );
    // A job dropped with a transaction that was never committed is gone too.
    {
        let mut tx = store.pool().begin().await.unwrap();
        store
            .enqueue_in(&mut tx, vec![NewJob::new("welcome", "{}")])
            .await
            .unwrap();
    }
    assert!(
        store
            .list_jobs(Default::default())
            .await
            .unwrap()
            .is_empty()
    );
    // Bad jobs are refused before anything is sent.
    let mut conn = store.pool().acquire().await.unwrap();
    let mut bad = NewJob::new("welcome", "{}");
    bad.queue = "Not A Queue".into();
    assert!(matches!(
        store.enqueue_in(&mut conn, vec![bad]).await,
        Err(Error::InvalidQueue(_))
    ));
}

// ---------------------------------------------------------------------------------------------
// migrations
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_starting_together_migrate_once() {
    if !available().await {
        return;
    }
    let schema = fresh_schema();
    let opens = (0..6).map(|_| {
        let schema = schema.clone();
        tokio::spawn(async move {
            PostgresStorage::connect_with(
                PostgresConfig::from_url(&url())
                    .unwrap()
                    .schema(schema)
                    .max_connections(2),
            )
            .await
        })
    });
    for o in futures_join(opens).await {
        o.unwrap();
    }
    let mut c = admin().await;
    let versions: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".firelane_schema ORDER BY version"
    )))
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        versions,
        (1..=firelane_postgres::SCHEMA_VERSION).collect::<Vec<_>>()
    );
    drop_schema(&schema);
}

async fn futures_join<T>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_a_newer_firelane_is_refused() {
    if !available().await {
        return;
    }
    let schema = fresh_schema();
    drop(open(&schema).await);
    let mut c = admin().await;
    exec(
        &mut c,
        &format!(
            "INSERT INTO \"{schema}\".firelane_schema (version, description, applied_at) VALUES (999, 'future', now())"
        ),
    )
    .await;
    let err =
        PostgresStorage::connect_with(PostgresConfig::from_url(&url()).unwrap().schema(&schema))
            .await
            .unwrap_err();
    assert!(
        matches!(err, Error::SchemaTooNew { found: 999, .. }),
        "{err}"
    );
    eprintln!("{err}");
    drop_schema(&schema);
}

/// Takes a schema back to version 1 (as the first release left it), undoing the later
/// migrations by hand.
async fn back_to_version_1(c: &mut sqlx::PgConnection, schema: &str) {
    exec(
        c,
        &format!(
            "ALTER TABLE \"{schema}\".jobs DROP COLUMN trace_context, DROP COLUMN ended_by,
                 DROP COLUMN ended_us;
             DELETE FROM \"{schema}\".firelane_schema WHERE version > 1"
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_at_version_1_is_upgraded_and_keeps_its_jobs() {
    if !available().await {
        return;
    }
    let schema = fresh_schema();
    let store = open(&schema).await;
    let mut c = admin().await;
    back_to_version_1(&mut c, &schema).await;
    // A job written by the old code: no trace context column at all.
    exec(
        &mut c,
        &format!(
            "INSERT INTO \"{schema}\".jobs (id, name, queue, priority, args, state, max_attempts,
                 created_at, state_at, initial_state)
             VALUES ('00000000-0000-0000-0000-000000000001', 'old', 'default', 0, '{{}}',
                 'scheduled', 1, now(), now(), 'scheduled')"
        ),
    )
    .await;
    store.close().await;

    let store = open(&schema).await;
    let versions: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT version FROM \"{schema}\".firelane_schema ORDER BY version"
    )))
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        versions,
        (1..=firelane_postgres::SCHEMA_VERSION).collect::<Vec<_>>()
    );
    let old: firelane::JobId = "00000000-0000-0000-0000-000000000001".parse().unwrap();
    let record = store.job(old).await.unwrap().unwrap();
    assert_eq!(record.job.trace_context, None);
    let mut traced = NewJob::new("traced", "{}");
    traced.trace_context = Some("{\"traceparent\":\"00-ab-cd-01\"}".to_owned());
    let id = traced.id;
    store
        .enqueue(vec![traced], chrono::Utc::now())
        .await
        .unwrap();
    let record = store.job(id).await.unwrap().unwrap();
    assert_eq!(
        record.job.trace_context.as_deref(),
        Some("{\"traceparent\":\"00-ab-cd-01\"}")
    );
    store.close().await;
    drop_schema(&schema);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_of_another_application_is_refused_and_left_alone() {
    if !available().await {
        return;
    }
    let schema = fresh_schema();
    let mut c = admin().await;
    exec(
        &mut c,
        &format!("CREATE SCHEMA \"{schema}\"; CREATE TABLE \"{schema}\".users (id int)"),
    )
    .await;
    let err =
        PostgresStorage::connect_with(PostgresConfig::from_url(&url()).unwrap().schema(&schema))
            .await
            .unwrap_err();
    assert!(matches!(err, Error::NotFirelane(..)), "{err}");
    assert!(err.to_string().contains("users"), "{err}");
    eprintln!("{err}");
    let tables: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_tables WHERE schemaname = $1")
        .bind(&schema)
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(
        tables, 1,
        "nothing was added to the other application's schema"
    );
    drop_schema(&schema);
}

// ---------------------------------------------------------------------------------------------
// bad input at start
// ---------------------------------------------------------------------------------------------

fn connect_reason(err: &Error) -> String {
    match err {
        Error::Connect { reason, .. } => reason.clone(),
        other => panic!("expected Error::Connect, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_error() {
    // Port 1 on the loopback: nothing listens there.
    let err = PostgresStorage::connect("postgres://postgres@127.0.0.1:1/test")
        .await
        .unwrap_err();
    let reason = connect_reason(&err);
    assert!(
        reason.contains("connection refused") && reason.contains("127.0.0.1:1"),
        "{err}"
    );
    eprintln!("{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_url_is_a_clear_error() {
    for bad in [
        "postgres://postgres@127.0.0.1:notaport/test",
        "postgres://[::1/test",
    ] {
        let err = PostgresStorage::connect(bad).await.unwrap_err();
        assert!(
            connect_reason(&err).contains("not a PostgreSQL URL"),
            "{err}"
        );
        eprintln!("{err}");
    }
    let err = PostgresStorage::connect("postgres://postgres@127.0.0.1/test?schema=")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_or_role_is_a_clear_error() {
    if !available().await {
        return;
    }
    let u = url();
    let base = u.split('?').next().unwrap_or(&u);
    let (server, _) = base.rsplit_once('/').unwrap();
    let err = PostgresStorage::connect(&format!("{server}/firelane_no_such_db"))
        .await
        .unwrap_err();
    assert!(connect_reason(&err).contains("does not exist"), "{err}");
    eprintln!("{err}");
    let err = PostgresStorage::connect(&url_as("firelane_no_such_role"))
        .await
        .unwrap_err();
    assert!(
        connect_reason(&err).contains("firelane_no_such_role"),
        "{err}"
    );
    eprintln!("{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_privileges_are_named() {
    if !available().await {
        return;
    }
    let role = format!("fl_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let mut c = admin().await;
    exec(&mut c, &format!("CREATE ROLE {role} LOGIN")).await;
    let sep = if url().contains('?') { '&' } else { '?' };
    let role_url = |schema: &str| format!("{}{sep}schema={schema}", url_as(&role));

    // A schema that does not exist, and the role may not create one.
    let missing = fresh_schema();
    let err = PostgresStorage::connect(&role_url(&missing))
        .await
        .unwrap_err();
    let reason = connect_reason(&err);
    assert!(reason.contains("CREATE privilege on database"), "{err}");
    eprintln!("{err}");

    // A Firelane schema the role may not use.
    let schema = fresh_schema();
    drop(open(&schema).await);
    let err = PostgresStorage::connect(&role_url(&schema))
        .await
        .unwrap_err();
    assert!(
        connect_reason(&err).contains("USAGE privilege on schema"),
        "{err}"
    );
    eprintln!("{err}");

    // Usage but no rights on the tables: every missing privilege is named.
    exec(&mut c, &format!("GRANT USAGE ON SCHEMA \"{schema}\" TO {role}; GRANT SELECT ON ALL TABLES IN SCHEMA \"{schema}\" TO {role}")).await;
    let err = PostgresStorage::connect(&role_url(&schema))
        .await
        .unwrap_err();
    let reason = connect_reason(&err);
    assert!(
        reason.contains("INSERT, UPDATE, DELETE on") && reason.contains(".jobs"),
        "{err}"
    );
    eprintln!("{err}");

    // The tables but not the sequence that numbers queue rows: named too.
    exec(
        &mut c,
        &format!(
            "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{schema}\" TO {role}"
        ),
    )
    .await;
    let err = PostgresStorage::connect(&role_url(&schema))
        .await
        .unwrap_err();
    assert!(
        connect_reason(&err).contains("USAGE on sequence")
            && connect_reason(&err).contains("queue_seq"),
        "{err}"
    );
    eprintln!("{err}");

    // With them all, it opens.
    exec(
        &mut c,
        &format!("GRANT USAGE ON ALL SEQUENCES IN SCHEMA \"{schema}\" TO {role}"),
    )
    .await;
    let store = PostgresStorage::connect(&role_url(&schema)).await.unwrap();
    store
        .enqueue(vec![NewJob::new("x", "{}")], chrono::Utc::now())
        .await
        .unwrap();
    store.close().await;

    drop_schema(&schema);
    exec(&mut c, &format!("DROP OWNED BY {role}; DROP ROLE {role}")).await;
}

// ---------------------------------------------------------------------------------------------
// wake-ups
// ---------------------------------------------------------------------------------------------

async fn next_signal(
    rx: &mut broadcast::Receiver<Signal>,
    want: impl Fn(&Signal) -> bool,
) -> Signal {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Ok(s)) if want(&s) => return s,
            Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
            other => panic!("no such signal: {other:?}"),
        }
    }
}

/// Another process's enqueue wakes this one through NOTIFY; when the listening connection is
/// terminated, the store listens again and wakes every queue that has jobs, so a wake-up sent
/// while it was not listening is not lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_listen_connection_is_reopened_and_loses_no_wake_up() {
    firelane_conformance::support::init_tracing();
    let Some(s) = postgres_support::scratch().await else {
        return;
    };
    let app = format!(
        "fl_listen_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let sep = if url().contains('?') { '&' } else { '?' };
    let a = PostgresStorage::connect(&format!(
        "{}{sep}schema={}&application_name={app}",
        url(),
        s.schema
    ))
    .await
    .unwrap();
    let b = &s.inner; // another store (another process, as far as `a` can tell)
    let mut rx = a.subscribe();

    b.enqueue(vec![NewJob::new("x", "{}")], chrono::Utc::now())
        .await
        .unwrap();
    next_signal(&mut rx, |s| {
        *s == Signal::Enqueued {
            queue: "default".into(),
        }
    })
    .await;

    // Terminate the listening connection: its last statement was the LISTEN.
    let mut c = admin().await;
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = $1 AND query LIKE 'LISTEN%'",
    )
    .bind(&app)
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(
        killed,
        vec![true],
        "the listening connection was found and terminated"
    );

    // After reconnecting, every queue with jobs is woken (the job enqueued above waits in
    // "default"), and the recurring scheduler too, in any order; later notifications arrive
    // again.
    let mut want = vec![
        Signal::Enqueued {
            queue: "default".into(),
        },
        Signal::RecurringChanged,
    ];
    while !want.is_empty() {
        let got = next_signal(&mut rx, |s| want.contains(s)).await;
        want.retain(|w| *w != got);
    }
    let mut job = NewJob::new("x", "{}");
    job.queue = "after".into();
    b.enqueue(vec![job], chrono::Utc::now()).await.unwrap();
    next_signal(&mut rx, |s| {
        *s == Signal::Enqueued {
            queue: "after".into(),
        }
    })
    .await;
    a.close().await;
}

// ---------------------------------------------------------------------------------------------
// Reads beside many finished jobs
// ---------------------------------------------------------------------------------------------

/// A page of jobs in one state reads the jobs of that state, not the finished jobs the store
/// keeps until they expire: a dashboard's list of processing or failed jobs stays as quick
/// beside 20,000 succeeded jobs as beside none. Counted by PostgreSQL on the store's only
/// connection, made to run the generic plans of its prepared statements (planned without the
/// values bound, as PostgreSQL settles on after five runs when their costs look alike: the bench
/// saw one walk the whole primary key for a page of processing jobs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listing_by_state_reads_only_that_state() {
    if !available().await {
        return;
    }
    let schema = fresh_schema();
    let store = single_connection_store(&schema).await;
    let s = format!("\"{schema}\"");
    let mut conn = store.pool().acquire().await.unwrap();
    // One job in each state but succeeded, and two more enqueued (each enqueued one with its
    // queue row), created a minute apart; then 20,000 succeeded jobs, newer (ids are
    // time-ordered, as `JobId`s are): the newest-first pages of the other states lie past them.
    exec(
        &mut conn,
        &format!(
            "INSERT INTO {s}.jobs (id, name, queue, priority, args, state, attempt, max_attempts,
                 created_at, state_at, finished_at, initial_state, queue_seq)
             SELECT ('00000000-0001-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'noop',
                 'default', 0, 'null', 'succeeded', 1, 1, now(), now(), now(), 'enqueued', g
             FROM generate_series(1, 20000) g;
             INSERT INTO {s}.jobs (id, name, queue, priority, args, state, attempt, max_attempts,
                 created_at, state_at, due_at, lease_until, initial_state, queue_seq)
             SELECT ('00000000-0000-7000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, 'noop',
                 'default', 0, 'null', st, CASE WHEN st = 'scheduled' THEN 1 ELSE 0 END, 2,
                 TIMESTAMPTZ '2026-01-01 00:00:00+00' + n * interval '1 minute', now(),
                 CASE WHEN st = 'scheduled' THEN now() + interval '1 day' END,
                 CASE WHEN st = 'processing' THEN now() + interval '1 day' END, st, 20000 + n
             FROM unnest(ARRAY['scheduled', 'enqueued', 'processing', 'failed', 'deleted',
                               'awaiting', 'enqueued', 'enqueued']) WITH ORDINALITY AS x(st, n);
             INSERT INTO {s}.queue (seq, queue, priority, name, job_id, enqueued_at)
             SELECT queue_seq, queue, priority, name, id, now() FROM {s}.jobs
             WHERE state = 'enqueued';
             ANALYZE {s}.jobs;"
        ),
    )
    .await;
    drop(conn);

    for state in [
        JobState::Scheduled,
        JobState::Enqueued,
        JobState::Processing,
        JobState::Failed,
        JobState::Deleted,
        JobState::Awaiting,
        JobState::Succeeded,
    ] {
        let query = firelane::JobQuery::new().state(state).page(0, 1);
        let before = rows_read(&store, "jobs").await;
        for _ in 0..4 {
            assert_eq!(store.list_jobs(query.clone()).await.unwrap().len(), 1);
        }
        let read = rows_read(&store, "jobs").await - before;
        // A list of enqueued jobs reads the newest 200 jobs first (where they usually are).
        let allowed = if state == JobState::Enqueued {
            4 * 210
        } else {
            4 * 10
        };
        assert!(
            read <= allowed,
            "4 pages of one {state:?} job read {read} rows"
        );
    }

    // The enqueued jobs found behind them come newest first, page by page, and keep to the
    // filters.
    let minute = |m: i64| {
        "2026-01-01T00:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
            + chrono::Duration::minutes(m)
    };
    let created = |jobs: Vec<firelane::JobRecord>| {
        jobs.iter()
            .map(|j| (j.created_at - minute(0)).num_minutes())
            .collect::<Vec<_>>()
    };
    let enqueued = firelane::JobQuery::new().state(JobState::Enqueued);
    let page = |offset, limit| enqueued.clone().page(offset, limit);
    assert_eq!(created(store.list_jobs(page(0, 2)).await.unwrap()), [8, 7]);
    assert_eq!(created(store.list_jobs(page(2, 2)).await.unwrap()), [2]);
    assert_eq!(created(store.list_jobs(page(1, 50)).await.unwrap()), [7, 2]);
    let between = enqueued.clone().created(Some(minute(3)), Some(minute(8)));
    let before = rows_read(&store, "jobs").await;
    assert_eq!(created(store.list_jobs(between).await.unwrap()), [7]);
    let read = rows_read(&store, "jobs").await - before;
    assert!(
        read <= 210 + 3,
        "a page of enqueued jobs by creation time read {read} rows"
    );
    // Retries are scheduled jobs attempted before (the scheduled one here), whatever state the
    // query names, as in the SQLite store; read through the index of those states.
    let mut retries = enqueued.clone();
    retries.retries = true;
    let before = rows_read(&store, "jobs").await;
    let found = store.list_jobs(retries).await.unwrap();
    let read = rows_read(&store, "jobs").await - before;
    assert_eq!(
        found.iter().map(|j| j.state).collect::<Vec<_>>(),
        [JobState::Scheduled]
    );
    assert!(read <= 10, "a page of retries read {read} rows");
    for (name, queue, found) in [
        ("noop", "default", 3),
        ("other", "default", 0),
        ("noop", "other", 0),
    ] {
        let query = firelane::JobQuery::new()
            .state(JobState::Enqueued)
            .name(name)
            .queue(queue);
        let jobs = store.list_jobs(query).await.unwrap();
        assert_eq!(jobs.len(), found, "{name} in {queue}");
        assert!(jobs.iter().all(|j| j.state == JobState::Enqueued));
    }

    // An empty queue is seen without walking the finished jobs.
    let mut conn = store.pool().acquire().await.unwrap();
    exec(
        &mut conn,
        &format!(
            "DELETE FROM {s}.queue; UPDATE {s}.jobs SET state = 'deleted' WHERE state = 'enqueued'"
        ),
    )
    .await;
    drop(conn);
    let query = firelane::JobQuery::new()
        .state(JobState::Enqueued)
        .page(0, 1);
    let before = rows_read(&store, "jobs").await;
    for _ in 0..4 {
        assert!(store.list_jobs(query.clone()).await.unwrap().is_empty());
    }
    let read = rows_read(&store, "jobs").await - before;
    assert!(read <= 4 * 10, "4 pages of an empty queue read {read} rows");

    store.close().await;
    drop_schema(&schema);
}
