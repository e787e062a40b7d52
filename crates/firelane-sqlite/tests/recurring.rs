//! Recurring jobs on SQLite: firings from two stores on one file, and the migration that adds
//! them to a database made before they existed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use firelane_core::chrono::{DateTime, Duration as ChronoDuration, Utc};
use firelane_core::{
    CronSchedule, FetchRequest, JobQuery, JobState, JobTemplate, Misfire, NewJob, RecurringDef,
    ServerId, Storage, plan_firing,
};
use firelane_sqlite::SqliteStorage;

fn url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

fn daily() -> RecurringDef {
    RecurringDef::new(
        "nightly",
        CronSchedule::parse("0 3 * * *", "UTC").unwrap(),
        JobTemplate::from_job(&NewJob::new("report", "{}")),
    )
    .unwrap()
}

fn whole_seconds(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(t.timestamp(), 0).unwrap()
}

/// Two stores (as two processes would have) on one file, each with several servers firing
/// the same occurrence at once: exactly one firing applies and one job is created, round
/// after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_fire_each_occurrence_once() {
    const PER_STORE: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let a = SqliteStorage::connect(&url(&path)).await.unwrap();
    let b = SqliteStorage::connect(&url(&path)).await.unwrap();
    let now = whole_seconds(Utc::now());
    let schedule = CronSchedule::parse("0 3 * * *", "UTC").unwrap();
    let first = schedule.next_after(now).unwrap();
    a.upsert_recurring(daily(), Some(first), now).await.unwrap();

    for round in 0..5_i64 {
        let due = first + ChronoDuration::days(round);
        // Each store reads the record itself (b through its read pool, from the WAL).
        let mut tasks = Vec::new();
        let barrier = Arc::new(tokio::sync::Barrier::new(2 * PER_STORE));
        for store in [&a, &b] {
            let record = store.recurring("nightly").await.unwrap().unwrap();
            assert_eq!(record.next_run, Some(due));
            for s in 0..PER_STORE {
                let store = store.clone();
                let barrier = Arc::clone(&barrier);
                let at = due + ChronoDuration::seconds(i64::try_from(s).unwrap());
                let firing = plan_firing(&record, at, Misfire::DEFAULT_GRACE)
                    .unwrap()
                    .unwrap();
                tasks.push(tokio::spawn(async move {
                    let job = firing.jobs[0].id;
                    barrier.wait().await;
                    (store.fire_recurring(firing).await.unwrap(), job)
                }));
            }
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (applied, job) = t.await.unwrap();
            if applied {
                winners.push(job);
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let jobs = a.list_jobs(JobQuery::new().page(0, 100)).await.unwrap();
        assert_eq!(jobs.len(), usize::try_from(round).unwrap() + 1);
        let record = b.recurring("nightly").await.unwrap().unwrap();
        assert_eq!(record.last_job, Some(winners[0]));
        assert_eq!(record.next_run, Some(due + ChronoDuration::days(1)));
    }
    a.close().await;
    b.close().await;
}

/// A database at schema version 1 (made before recurring jobs) opens: it gets the
/// `recurring` table, and its jobs are still there.
#[tokio::test]
async fn a_version_1_database_gets_the_recurring_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    let now = whole_seconds(Utc::now());

    // Made by this build, then taken back to what version 1 left: none of the later tables and
    // no rows for the later versions.
    let store = SqliteStorage::connect(&url(&path)).await.unwrap();
    let job = NewJob::new("report", "{}");
    let id = job.id;
    store.enqueue(vec![job], now).await.unwrap();
    sqlx::raw_sql(
        "DROP TABLE firelane_recurring; DROP TABLE firelane_counters; DROP TABLE firelane_stats_hourly;
         DROP TABLE firelane_paused_queues; DROP INDEX firelane_jobs_retries;
         DROP INDEX firelane_jobs_scheduled; DROP INDEX firelane_jobs_processing;
         DROP INDEX firelane_jobs_finished; DROP INDEX firelane_jobs_parent;
         DROP INDEX firelane_jobs_state; DROP INDEX firelane_history_job;
         CREATE TABLE queue (seq INTEGER PRIMARY KEY, queue TEXT NOT NULL,
             priority INTEGER NOT NULL, name TEXT NOT NULL, job_id BLOB NOT NULL);
         INSERT INTO queue SELECT seq, queue, priority, name, job_id FROM firelane_queue;
         DROP TABLE firelane_queue;
         ALTER TABLE firelane_jobs DROP COLUMN queue_seq;
         ALTER TABLE firelane_jobs DROP COLUMN started_by;
         ALTER TABLE firelane_jobs DROP COLUMN started_at;
         ALTER TABLE firelane_jobs DROP COLUMN initial_reason;
         ALTER TABLE firelane_jobs DROP COLUMN initial_state;
         ALTER TABLE firelane_jobs DROP COLUMN trace_context;
         ALTER TABLE firelane_history DROP COLUMN started_attempt;
         ALTER TABLE firelane_history DROP COLUMN started_by;
         ALTER TABLE firelane_history DROP COLUMN started_at;
         ALTER TABLE firelane_jobs RENAME TO jobs;
         ALTER TABLE firelane_history RENAME TO history;
         ALTER TABLE firelane_servers RENAME TO servers;
         CREATE INDEX jobs_scheduled ON jobs (due_at, id) WHERE state = 'scheduled';
         CREATE INDEX jobs_processing ON jobs (lease_until, id) WHERE state = 'processing';
         CREATE INDEX jobs_finished ON jobs (state, finished_at) WHERE finished_at IS NOT NULL;
         CREATE INDEX jobs_parent ON jobs (parent_id, state) WHERE parent_id IS NOT NULL;
         CREATE INDEX jobs_state ON jobs (state, id);
         CREATE INDEX queue_fetch ON queue (queue, priority DESC, seq);
         CREATE UNIQUE INDEX queue_job ON queue (job_id);
         CREATE INDEX history_job ON history (job_id, seq);
         DELETE FROM firelane_schema WHERE version >= 2;",
    )
    .execute(store.pool())
    .await
    .unwrap();
    store.close().await;
    drop(store);

    let store = SqliteStorage::connect(&url(&path)).await.unwrap();
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM firelane_schema ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3, 4, 5, 6, 7]);
    // Version 3's counters start from the rows the database has.
    assert_eq!(
        store.stats().await.unwrap().count(JobState::Enqueued),
        1,
        "counters initialised from the existing jobs"
    );
    assert_eq!(
        store.job(id).await.unwrap().unwrap().job.state,
        JobState::Enqueued
    );
    // Version 6 moved the queue rows into its new table: a fetch finds the job.
    let fetched = store
        .fetch(FetchRequest::new(
            ServerId::from_string("s".into()),
            vec!["default".into()],
            10,
            now,
            std::time::Duration::from_secs(60),
        ))
        .await
        .unwrap();
    assert_eq!(fetched.iter().map(|f| f.id).collect::<Vec<_>>(), [id]);
    assert!(store.list_recurring().await.unwrap().is_empty());
    let next = CronSchedule::parse("0 3 * * *", "UTC")
        .unwrap()
        .next_after(now)
        .unwrap();
    store
        .upsert_recurring(daily(), Some(next), now)
        .await
        .unwrap();
    let record = store.recurring("nightly").await.unwrap().unwrap();
    assert_eq!(record.next_run, Some(next));
    store.close().await;
}
