//! Group commit, several stores on one file, locks held by others, and a store that stops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use firelane_core::chrono::{DateTime, Utc};
use firelane_core::{
    Completion, CompletionStatus, ContinueOn, Error, FetchRequest, Initial, JobId, JobState,
    NewJob, Outcome, ServerId, Storage,
};
use firelane_sqlite::{SqliteConfig, SqliteStorage};
use sqlx::{ConnectOptions, Connection};

fn job(queue: &str) -> NewJob {
    let mut j = NewJob::new("work", "{}");
    j.queue = queue.to_owned();
    j
}

fn orphan() -> NewJob {
    let mut j = NewJob::new("orphan", "{}");
    j.initial = Initial::Awaiting {
        parent: JobId::new(),
        on: ContinueOn::Succeeded,
    };
    j
}

fn fetch_request(server: &ServerId, limit: usize, now: DateTime<Utc>) -> FetchRequest {
    FetchRequest::new(
        server.clone(),
        vec!["default".to_owned()],
        limit,
        now,
        Duration::from_secs(300),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_share_batches_and_a_failing_op_fails_alone() {
    let storage = SqliteStorage::connect(":memory:").await.unwrap();
    let now = Utc::now();
    let before = storage.writer_stats();

    // Hold the writer's connection so that every operation below queues up and lands in
    // the same batch (or few batches), good and bad ones mixed.
    let held = storage.pool().acquire().await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = storage.clone();
        tasks.push(tokio::spawn(async move {
            let jobs = if i % 10 == 7 {
                vec![job("default"), orphan()]
            } else {
                vec![job("default"), job("other")]
            };
            (i, s.enqueue(jobs, now).await)
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(held);

    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        let (i, result) = t.await.unwrap();
        if i % 10 == 7 {
            assert!(matches!(result, Err(Error::JobNotFound(_))), "{result:?}");
            refused += 1;
        } else {
            let created = result.unwrap();
            assert_eq!(created.len(), 2);
            assert!(created.iter().all(|e| e.state == JobState::Enqueued));
            ok += 1;
        }
    }
    assert_eq!((ok, refused), (180, 20));
    let after = storage.writer_stats();
    let (batches, ops) = (after.batches - before.batches, after.ops - before.ops);
    assert_eq!(ops, 200);
    assert!(
        batches <= 10,
        "200 waiting operations ran in {batches} transactions"
    );
    let stats = storage.stats().await.unwrap();
    // The failing batches were all or none: their first job is not there either.
    assert_eq!(stats.count(JobState::Enqueued), 360);
    assert_eq!(stats.count(JobState::Awaiting), 0);

    // The writer goes on after the failures.
    storage.enqueue(vec![job("default")], now).await.unwrap();
    assert_eq!(
        storage.stats().await.unwrap().count(JobState::Enqueued),
        361
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_file_never_fetch_the_same_job() {
    const JOBS: usize = 3000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = SqliteStorage::connect_with(SqliteConfig::file(&path))
        .await
        .unwrap();
    let b = SqliteStorage::connect_with(SqliteConfig::file(&path))
        .await
        .unwrap();
    let now = Utc::now();
    for chunk in 0..(JOBS / 500) {
        let jobs: Vec<NewJob> = (0..500).map(|_| job("default")).collect();
        let store = if chunk % 2 == 0 { &a } else { &b };
        store.enqueue(jobs, now).await.unwrap();
    }

    // Every worker starts at once, and each pauses a moment between rounds. SQLite's lock is
    // not fair: one store's writer can drain the queue alone while the other's busy handler
    // sleeps (it did, once the store got faster). So no worker fetches a second time before
    // every worker made its first fetch (at most 51 jobs of the 3,000 in all): both stores
    // take part, whatever the scheduler does.
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(6));
    let first_round = std::sync::Arc::new(tokio::sync::Barrier::new(6));
    let mut workers = Vec::new();
    for (n, store) in [
        a.clone(),
        b.clone(),
        a.clone(),
        b.clone(),
        a.clone(),
        b.clone(),
    ]
    .into_iter()
    .enumerate()
    {
        let start = std::sync::Arc::clone(&start);
        let first_round = std::sync::Arc::clone(&first_round);
        workers.push(tokio::spawn(async move {
            let server = ServerId::from_string(format!("server-{n}"));
            let mut mine = Vec::new();
            let mut first = true;
            start.wait().await;
            loop {
                let fetched = store
                    .fetch(fetch_request(&server, 1 + n * 3, now))
                    .await
                    .unwrap();
                if std::mem::take(&mut first) {
                    first_round.wait().await;
                }
                if fetched.is_empty() {
                    break;
                }
                let completions = fetched
                    .iter()
                    .map(|f| {
                        Completion::new(
                            f.id,
                            f.lease,
                            server.clone(),
                            Outcome::Succeeded,
                            Duration::from_millis(1),
                            now,
                        )
                    })
                    .collect();
                let done = store.complete(completions).await.unwrap();
                assert!(
                    done.iter()
                        .all(|d| *d == CompletionStatus::Applied(JobState::Succeeded))
                );
                mine.extend(fetched.into_iter().map(|f| f.id));
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            mine
        }));
    }
    // Workers alternate between the stores (even: a, odd: b). Which worker gets how many is
    // up to the scheduler; both stores taking part is what this test is about.
    let mut all = Vec::new();
    let mut per_store = [0usize; 2];
    for (n, w) in workers.into_iter().enumerate() {
        let mine = w.await.unwrap();
        per_store[n % 2] += mine.len();
        all.extend(mine);
    }
    assert!(
        per_store.iter().all(|&n| n > 0),
        "both stores got some jobs: {per_store:?}"
    );
    let unique: HashSet<JobId> = all.iter().copied().collect();
    assert_eq!(all.len(), JOBS, "no job fetched twice");
    assert_eq!(unique.len(), JOBS, "no job lost");
    let stats = a.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Succeeded), JOBS as u64);
    assert_eq!(stats.count(JobState::Enqueued), 0);
    assert_eq!(b.stats().await.unwrap(), stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_past_the_busy_timeout_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("busy.db");
    let storage = SqliteStorage::connect_with(
        SqliteConfig::file(&path).busy_timeout(Duration::from_millis(300)),
    )
    .await
    .unwrap();

    // Another "process" takes the write lock and keeps it.
    let mut other = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    let tx = other.begin_with("BEGIN IMMEDIATE").await.unwrap();

    let started = Instant::now();
    let err = storage
        .enqueue(vec![job("default")], Utc::now())
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, Error::Backend { .. }), "{err:?}");
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // Reads are not blocked by the writer (WAL).
    assert_eq!(storage.stats().await.unwrap().count(JobState::Enqueued), 0);

    tx.rollback().await.unwrap();
    storage
        .enqueue(vec![job("default")], Utc::now())
        .await
        .unwrap();
    assert_eq!(storage.stats().await.unwrap().count(JobState::Enqueued), 1);
}

#[tokio::test]
async fn a_closed_store_answers_shutdown() {
    let storage = SqliteStorage::connect(":memory:").await.unwrap();
    storage.close().await;
    let err = storage
        .enqueue(vec![job("default")], Utc::now())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Shutdown(_)), "{err:?}");
    let err = storage.stats().await.unwrap_err();
    assert!(matches!(err, Error::Shutdown(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_concurrent_fetchers_on_memory_get_distinct_jobs() {
    let storage = Arc::new(SqliteStorage::connect(":memory:").await.unwrap());
    let now = Utc::now();
    let jobs: Vec<NewJob> = (0..1000).map(|_| job("default")).collect();
    storage.enqueue(jobs, now).await.unwrap();
    let mut tasks = Vec::new();
    for n in 0..20 {
        let s = storage.clone();
        tasks.push(tokio::spawn(async move {
            let server = ServerId::from_string(format!("s{n}"));
            let mut got = Vec::new();
            loop {
                let f = s.fetch(fetch_request(&server, 7, now)).await.unwrap();
                if f.is_empty() {
                    return got;
                }
                got.extend(f.into_iter().map(|f| f.id));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let unique: HashSet<JobId> = all.iter().copied().collect();
    assert_eq!((all.len(), unique.len()), (1000, 1000));
}

#[tokio::test]
async fn a_failing_operation_alone_in_its_batch_is_rolled_back() {
    let storage = SqliteStorage::connect(":memory:").await.unwrap();
    let now = Utc::now();
    let err = storage
        .enqueue(vec![job("default"), orphan()], now)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::JobNotFound(_)), "{err:?}");
    assert_eq!(storage.stats().await.unwrap().count(JobState::Enqueued), 0);
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM firelane_jobs")
        .fetch_one(storage.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
    storage.enqueue(vec![job("default")], now).await.unwrap();
    assert_eq!(storage.stats().await.unwrap().count(JobState::Enqueued), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stores_opening_one_new_file_at_once_create_the_schema_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("new.db").display());
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { SqliteStorage::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opening {
        stores.push(o.await.unwrap().unwrap());
    }
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM firelane_schema")
        .fetch_one(stores[0].pool())
        .await
        .unwrap();
    assert_eq!(applied, 7, "one row per migration, each applied once");
    stores[1]
        .enqueue(vec![job("default")], Utc::now())
        .await
        .unwrap();
    assert_eq!(
        stores[3].stats().await.unwrap().count(JobState::Enqueued),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_pool_gets_free_turns_under_constant_writes() {
    let storage = SqliteStorage::connect(":memory:").await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..20)
        .map(|_| {
            let (s, stop) = (storage.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    s.enqueue(vec![job("default")], Utc::now()).await.unwrap();
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        let started = Instant::now();
        let mut conn = storage.pool().acquire().await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM firelane_jobs")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert!(n > 0);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
}
