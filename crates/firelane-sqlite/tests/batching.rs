//! The store's shortcuts for speed (several statements sent in one round trip, group commit of
//! concurrent operations, skipping the continuation lookup of jobs nothing awaits) never lose
//! nor double a job.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::time::Duration;

use firelane_core::chrono::Utc;
use firelane_core::{
    Completion, CompletionStatus, ContinueOn, FetchRequest, FetchedJob, Initial, JobId, JobQuery,
    JobState, NewJob, Outcome, ServerId, Storage,
};
use firelane_sqlite::{SqliteConfig, SqliteStorage};

async fn file_store(dir: &tempfile::TempDir) -> SqliteStorage {
    SqliteStorage::connect_with(SqliteConfig::file(dir.path().join("t.db")))
        .await
        .unwrap()
}

/// Concurrent enqueues, fetches and completions (grouped into shared transactions by the
/// writer): every job is fetched exactly once and ends succeeded with exactly three history
/// rows; the queue is empty at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_fetch_and_complete_take_each_job_once() {
    let dir = tempfile::tempdir().unwrap();
    let storage = file_store(&dir).await;
    let now = Utc::now();
    const PRODUCERS: usize = 4;
    const PER_PRODUCER: usize = 1500;
    const TOTAL: usize = PRODUCERS * PER_PRODUCER;

    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let s = storage.clone();
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for chunk in 0..(PER_PRODUCER / 300) {
                    let jobs: Vec<NewJob> = (0..300)
                        .map(|i| NewJob::new("n", format!("[{p},{chunk},{i}]")))
                        .collect();
                    ids.extend(jobs.iter().map(|j| j.id));
                    s.enqueue(jobs, now).await.unwrap();
                }
                ids
            })
        })
        .collect();
    let consumers: Vec<_> = (0..5)
        .map(|_| {
            let s = storage.clone();
            tokio::spawn(async move {
                let server = ServerId::generate();
                let mut seen: Vec<JobId> = Vec::new();
                let mut idle = 0;
                while idle < 50 {
                    let request = FetchRequest::new(
                        server.clone(),
                        vec!["default".into()],
                        37,
                        now,
                        Duration::from_secs(600),
                    );
                    let fetched = s.fetch(request).await.unwrap();
                    if fetched.is_empty() {
                        idle += 1;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    }
                    idle = 0;
                    assert!(fetched.iter().all(|f| f.attempt == 1));
                    seen.extend(fetched.iter().map(|f| f.id));
                    let done = fetched
                        .iter()
                        .map(|f| {
                            Completion::new(
                                f.id,
                                f.lease,
                                server.clone(),
                                Outcome::Succeeded,
                                Duration::ZERO,
                                now,
                            )
                        })
                        .collect();
                    let statuses = s.complete(done).await.unwrap();
                    assert!(
                        statuses.iter().all(|st| *st
                            == firelane_core::CompletionStatus::Applied(JobState::Succeeded)),
                        "{statuses:?}"
                    );
                }
                seen
            })
        })
        .collect();

    let mut created = Vec::new();
    for p in producers {
        created.extend(p.await.unwrap());
    }
    let mut times: HashMap<JobId, usize> = HashMap::new();
    for c in consumers {
        for id in c.await.unwrap() {
            *times.entry(id).or_default() += 1;
        }
    }
    assert_eq!(created.len(), TOTAL);
    assert_eq!(times.len(), TOTAL, "every job fetched");
    assert!(times.values().all(|&n| n == 1), "no job fetched twice");
    assert!(created.iter().all(|id| times.contains_key(id)));

    let stats = storage.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Succeeded), TOTAL as u64);
    assert_eq!(stats.count(JobState::Enqueued), 0);
    assert_eq!(stats.count(JobState::Processing), 0);
    for id in created.iter().step_by(97) {
        let details = storage.job(*id).await.unwrap().unwrap();
        let states: Vec<JobState> = details.history.iter().map(|h| h.state).collect();
        assert_eq!(
            states,
            [
                JobState::Enqueued,
                JobState::Processing,
                JobState::Succeeded
            ]
        );
    }
    let batches = storage.writer_stats();
    assert!(batches.ops >= batches.batches);
}

/// A completion batch mixing jobs that continuations await with jobs nothing awaits releases
/// exactly the awaiting continuations (the lookup is skipped only for jobs with none).
#[tokio::test]
async fn completing_a_mixed_batch_releases_exactly_the_awaiting_continuations() {
    let dir = tempfile::tempdir().unwrap();
    let storage = file_store(&dir).await;
    let now = Utc::now();
    let parents: Vec<NewJob> = (0..20).map(|i| NewJob::new("p", format!("{i}"))).collect();
    let mut children = Vec::new();
    for (i, p) in parents.iter().enumerate().filter(|(i, _)| i % 3 == 0) {
        let mut child = NewJob::new("c", format!("{i}"));
        child.initial = Initial::Awaiting {
            parent: p.id,
            on: ContinueOn::Succeeded,
        };
        children.push(child);
    }
    let child_ids: Vec<JobId> = children.iter().map(|c| c.id).collect();
    storage.enqueue(parents, now).await.unwrap();
    storage.enqueue(children, now).await.unwrap();

    let server = ServerId::generate();
    let request = FetchRequest::new(
        server.clone(),
        vec!["default".into()],
        100,
        now,
        Duration::from_secs(60),
    )
    .names(vec!["p".into()]);
    let fetched = storage.fetch(request).await.unwrap();
    assert_eq!(fetched.len(), 20);
    let done = fetched
        .iter()
        .map(|f| {
            Completion::new(
                f.id,
                f.lease,
                server.clone(),
                Outcome::Succeeded,
                Duration::ZERO,
                now,
            )
        })
        .collect();
    storage.complete(done).await.unwrap();

    let enqueued = storage
        .list_jobs(JobQuery::new().state(JobState::Enqueued).page(0, 1000))
        .await
        .unwrap();
    let mut enqueued: Vec<JobId> = enqueued.iter().map(|j| j.id).collect();
    enqueued.sort();
    let mut expected = child_ids.clone();
    expected.sort();
    assert_eq!(enqueued, expected);
    let stats = storage.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Awaiting), 0);
    assert_eq!(stats.count(JobState::Succeeded), 20);
    // Each released child is in the queue once: a fetch takes them all, and only once.
    let request = FetchRequest::new(
        server.clone(),
        vec!["default".into()],
        100,
        now,
        Duration::from_secs(60),
    );
    assert_eq!(storage.fetch(request).await.unwrap().len(), child_ids.len());
    let request = FetchRequest::new(server, vec!["default".into()], 100, now, Duration::ZERO);
    assert!(storage.fetch(request).await.unwrap().is_empty());
}

/// A fetch reads each job's columns while it takes the queue rows, and trusts the queue only
/// as far as the job's own state: a queue row left over for a job that is not enqueued (which
/// the store never writes, but a hand-edited or damaged file may hold) is dropped without
/// leasing the job, and a job with two queue rows gets one lease, the one stored, not two (its
/// second row is dropped by a later fetch). The state counters follow what was leased. (The
/// fetch reads whether a job is enqueued before it leases it, and answers from what it read:
/// this guards that the two agree.)
#[tokio::test]
async fn stray_queue_rows_never_lease_a_job_twice() {
    let dir = tempfile::tempdir().unwrap();
    let storage = file_store(&dir).await;
    let now = Utc::now();
    let first = NewJob::new("n", "[1]");
    let second = NewJob::new("n", "[2]");
    let (finished_id, enqueued_id) = (first.id, second.id);
    storage.enqueue(vec![first, second], now).await.unwrap();
    let server = ServerId::generate();
    let request = |limit| {
        FetchRequest::new(
            server.clone(),
            vec!["default".into()],
            limit,
            Utc::now(),
            Duration::from_secs(60),
        )
    };
    let succeed = |job: &FetchedJob| {
        storage.complete(vec![Completion::new(
            job.id,
            job.lease,
            server.clone(),
            Outcome::Succeeded,
            Duration::from_millis(1),
            Utc::now(),
        )])
    };
    let leased = storage.fetch(request(1)).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert_eq!(leased[0].id, finished_id, "jobs come in enqueue order");
    succeed(&leased[0]).await.unwrap();
    // The first job is succeeded now and the second still enqueued (its queue row has place
    // 2): give the first a queue row again and the second a second one, behind its first.
    for (id, seq) in [(finished_id, 100), (enqueued_id, 101)] {
        sqlx::query(
            "INSERT INTO firelane_queue (queue, priority, seq, name, job_id)
             VALUES ('default', 0, ?, 'n', ?)",
        )
        .bind(seq)
        .bind(id.as_uuid().as_bytes().as_slice())
        .execute(storage.pool())
        .await
        .unwrap();
    }
    let queue_rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM firelane_queue")
            .fetch_one(storage.pool())
            .await
            .unwrap()
    };
    let jobs = storage.fetch(request(10)).await.unwrap();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    assert_eq!(
        ids,
        vec![enqueued_id],
        "one lease, and none for the finished job"
    );
    assert_eq!(jobs[0].attempt, 1);
    assert_eq!(
        queue_rows().await,
        1,
        "the second row of the leased job is left"
    );
    assert!(storage.fetch(request(10)).await.unwrap().is_empty());
    assert_eq!(queue_rows().await, 0, "and dropped by the next fetch");
    assert_eq!(
        succeed(&jobs[0]).await.unwrap(),
        vec![CompletionStatus::Applied(JobState::Succeeded)],
        "the lease answered is the one stored"
    );
    let stats = storage.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Processing), 0);
    assert_eq!(stats.count(JobState::Succeeded), 2);
    assert_eq!(
        stats.states.get(&JobState::Enqueued).copied().unwrap_or(0),
        0
    );
}
