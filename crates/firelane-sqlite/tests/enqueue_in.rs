//! `SqliteStorage::enqueue_in`: jobs written in the application's own transaction, on the
//! application's own connection to the store's file. The jobs exist iff that transaction
//! commits; rows, history and counters are those of a normal enqueue; servers of this process
//! are woken at the commit and not before.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use firelane_core::chrono::Utc;
use firelane_core::{
    Completion, ContinueOn, Error, FetchRequest, Initial, JobQuery, JobState, NewJob, Outcome,
    ServerId, Signal, Stats, Storage,
};
use firelane_sqlite::SqliteStorage;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection};
use tokio::sync::broadcast;

/// A store on a new file, and the application's own pool on the same file with a `users`
/// table (made after the store, which refuses a file holding another application's tables).
async fn open(dir: &Path) -> (SqliteStorage, SqlitePool) {
    let path = dir.join("app.db");
    let storage = SqliteStorage::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(
            SqliteConnectOptions::new()
                .filename(&path)
                .busy_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    sqlx::query("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE)")
        .execute(&pool)
        .await
        .unwrap();
    (storage, pool)
}

fn job(name: &str, queue: &str) -> NewJob {
    let mut j = NewJob::new(name, r#"{"user_id":1}"#);
    j.queue = queue.to_owned();
    j
}

fn drain(rx: &mut broadcast::Receiver<Signal>) -> Vec<Signal> {
    let mut out = Vec::new();
    while let Ok(s) = rx.try_recv() {
        out.push(s);
    }
    out
}

fn enqueued(queue: &str) -> Signal {
    Signal::Enqueued {
        queue: queue.to_owned(),
    }
}

async fn users(pool: &SqlitePool) -> Vec<String> {
    sqlx::query_scalar("SELECT email FROM users ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The counters agree with the jobs the store holds (as the conformance suite's
/// `counters_agree` checks after every case).
async fn counters_agree(storage: &SqliteStorage) -> Stats {
    let stats = storage.stats().await.unwrap();
    let jobs = storage
        .list_jobs(JobQuery::new().page(0, 10_000))
        .await
        .unwrap();
    let mut states: BTreeMap<JobState, u64> = BTreeMap::new();
    let mut queues: BTreeMap<String, u64> = BTreeMap::new();
    for j in &jobs {
        *states.entry(j.state).or_default() += 1;
        if j.state == JobState::Enqueued {
            *queues.entry(j.queue.clone()).or_default() += 1;
        }
    }
    for state in JobState::ALL {
        assert_eq!(
            stats.count(state),
            states.get(&state).copied().unwrap_or(0),
            "{state} counted wrong: {stats:?}"
        );
    }
    let counted: BTreeMap<String, u64> = stats
        .queues
        .iter()
        .filter(|q| q.enqueued > 0)
        .map(|q| (q.name.clone(), q.enqueued))
        .collect();
    assert_eq!(counted, queues, "queues counted wrong: {stats:?}");
    stats
}

async fn fetch_all(storage: &SqliteStorage, server: &ServerId, queues: &[&str]) -> Vec<Leased> {
    storage
        .fetch(FetchRequest::new(
            server.clone(),
            queues.iter().map(|q| (*q).to_owned()).collect(),
            100,
            Utc::now(),
            Duration::from_secs(60),
        ))
        .await
        .unwrap()
        .into_iter()
        .map(|f| Leased {
            id: f.id,
            lease: f.lease,
        })
        .collect()
}

struct Leased {
    id: firelane_core::JobId,
    lease: firelane_core::LeaseId,
}

#[tokio::test]
async fn a_committed_transaction_creates_the_jobs_and_then_wakes_servers() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, pool) = open(dir.path()).await;
    let mut wakeups = storage.subscribe();

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('ada@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (a, b) = (job("welcome", "emails"), job("audit", "default"));
    let (a_id, b_id) = (a.id, b.id);
    let created = storage.enqueue_in(&mut tx, vec![a, b]).await.unwrap();
    assert_eq!(created.len(), 2);
    assert!(created.iter().all(|c| c.state == JobState::Enqueued));
    // Nobody else sees the jobs before the commit, and no server is woken.
    assert!(storage.job(a_id).await.unwrap().is_none());
    assert!(drain(&mut wakeups).is_empty());

    tx.commit().await.unwrap();
    // The commit hook sent the wake-ups during the commit: they are there when it returns.
    assert_eq!(
        drain(&mut wakeups),
        vec![enqueued("default"), enqueued("emails")]
    );

    let details = storage.job(a_id).await.unwrap().expect("committed");
    assert_eq!(details.job.state, JobState::Enqueued);
    assert_eq!(details.job.queue, "emails");
    assert_eq!(details.history.len(), 1);
    assert_eq!(details.history[0].state, JobState::Enqueued);
    assert_eq!(users(&pool).await, ["ada@example.com"]);
    let stats = counters_agree(&storage).await;
    assert_eq!(stats.count(JobState::Enqueued), 2);

    let server = ServerId::generate();
    let fetched = fetch_all(&storage, &server, &["emails", "default"]).await;
    assert_eq!(
        fetched.iter().map(|f| f.id).collect::<Vec<_>>(),
        [a_id, b_id]
    );
    counters_agree(&storage).await;
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_no_job_and_no_counter_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, pool) = open(dir.path()).await;
    storage
        .enqueue(vec![job("earlier", "default")], Utc::now())
        .await
        .unwrap();
    let before = counters_agree(&storage).await;
    let mut wakeups = storage.subscribe();

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('bob@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let doomed = job("welcome", "emails");
    let id = doomed.id;
    storage.enqueue_in(&mut tx, vec![doomed]).await.unwrap();
    tx.rollback().await.unwrap();

    assert!(storage.job(id).await.unwrap().is_none());
    assert!(users(&pool).await.is_empty());
    assert_eq!(counters_agree(&storage).await, before);
    assert!(drain(&mut wakeups).is_empty());

    // A transaction dropped without a commit (a handler that returned early) is rolled back
    // the same way, and the connection's next commit wakes nobody for it.
    {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        storage
            .enqueue_in(&mut tx, vec![job("welcome", "emails")])
            .await
            .unwrap();
    }
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('eve@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(counters_agree(&storage).await, before);
    assert!(drain(&mut wakeups).is_empty());
}

#[tokio::test]
async fn a_continuation_created_in_the_same_transaction_waits_for_its_parent() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, pool) = open(dir.path()).await;
    let mut wakeups = storage.subscribe();

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let parent = job("welcome", "emails");
    let mut child = job("record_welcome", "default");
    child.initial = Initial::Awaiting {
        parent: parent.id,
        on: ContinueOn::Succeeded,
    };
    let (parent_id, child_id) = (parent.id, child.id);
    // Two calls in one transaction: the second's parent is the first's job, and the
    // wake-ups of both go out at the commit.
    storage.enqueue_in(&mut tx, vec![parent]).await.unwrap();
    let created = storage.enqueue_in(&mut tx, vec![child]).await.unwrap();
    assert_eq!(created[0].state, JobState::Awaiting);
    tx.commit().await.unwrap();
    assert_eq!(drain(&mut wakeups), vec![enqueued("emails")]);
    counters_agree(&storage).await;

    let server = ServerId::generate();
    let fetched = fetch_all(&storage, &server, &["emails", "default"]).await;
    assert_eq!(fetched.len(), 1, "the continuation waits");
    assert_eq!(fetched[0].id, parent_id);
    storage
        .complete(vec![Completion::new(
            parent_id,
            fetched[0].lease,
            server.clone(),
            Outcome::Succeeded,
            Duration::from_millis(5),
            Utc::now(),
        )])
        .await
        .unwrap();
    let child = storage.job(child_id).await.unwrap().unwrap();
    assert_eq!(child.job.state, JobState::Enqueued);
    counters_agree(&storage).await;
}

#[tokio::test]
async fn a_job_the_store_refuses_leaves_the_callers_transaction_usable() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, pool) = open(dir.path()).await;
    let existing = job("existing", "default");
    let existing_id = existing.id;
    storage.enqueue(vec![existing], Utc::now()).await.unwrap();
    let before = counters_agree(&storage).await;

    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO users (email) VALUES ('ada@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();

    // Refused before anything is written.
    let bad_queue = job("welcome", "no spaces allowed");
    let err = storage.enqueue_in(&mut tx, vec![bad_queue]).await;
    assert!(matches!(err, Err(Error::InvalidQueue(_))), "{err:?}");
    let orphan = {
        let mut j = job("orphan", "default");
        j.initial = Initial::Awaiting {
            parent: firelane_core::JobId::new(),
            on: ContinueOn::Succeeded,
        };
        j
    };
    let err = storage.enqueue_in(&mut tx, vec![orphan]).await;
    assert!(matches!(err, Err(Error::JobNotFound(_))), "{err:?}");

    // Refused by the database half-way through its statements (a job id that exists): what
    // the call wrote is undone, the caller's own writes are not.
    let fine = job("fine", "default");
    let fine_id = fine.id;
    let mut clash = job("clash", "default");
    clash.id = existing_id;
    let err = storage.enqueue_in(&mut tx, vec![fine, clash]).await;
    assert!(matches!(err, Err(Error::Backend { .. })), "{err:?}");

    sqlx::query("INSERT INTO users (email) VALUES ('bob@example.com')")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    assert_eq!(users(&pool).await, ["ada@example.com", "bob@example.com"]);
    assert!(storage.job(fine_id).await.unwrap().is_none());
    assert_eq!(
        storage.job(existing_id).await.unwrap().unwrap().job.name,
        "existing"
    );
    assert_eq!(counters_agree(&storage).await, before);
}

#[tokio::test]
async fn without_a_transaction_the_call_commits_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, pool) = open(dir.path()).await;
    let mut wakeups = storage.subscribe();
    let mut conn = pool.acquire().await.unwrap();
    let j = job("welcome", "emails");
    let id = j.id;
    storage.enqueue_in(&mut conn, vec![j]).await.unwrap();
    assert_eq!(drain(&mut wakeups), vec![enqueued("emails")]);
    assert!(storage.job(id).await.unwrap().is_some());
    counters_agree(&storage).await;
}

#[tokio::test]
async fn a_connection_to_another_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, _pool) = open(dir.path()).await;
    // Another Firelane file: without the check, the job would land there.
    let other = dir.path().join("other.db");
    let _other_store = SqliteStorage::connect(&format!("sqlite://{}", other.display()))
        .await
        .unwrap();
    let mut conn = SqliteConnection::connect_with(&SqliteConnectOptions::new().filename(&other))
        .await
        .unwrap();
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await.unwrap();
    let err = storage
        .enqueue_in(&mut tx, vec![job("welcome", "emails")])
        .await;
    match err {
        Err(Error::Config(message)) => assert!(message.contains("other.db"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
    tx.commit().await.unwrap();
    let stats = storage.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Enqueued), 0);
}
