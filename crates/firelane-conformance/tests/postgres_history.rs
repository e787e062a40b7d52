//! A job's history on PostgreSQL reads the same as on SQLite, step by step, although the store
//! keeps the end of a successful attempt in the job's row instead of a history row (migration
//! 3). In a file of its own: run beside `postgres_complete_fetch`, its extra connections
//! changed the timing that test's `complete_and_fetch` case depends on.
#![allow(clippy::unwrap_used)]

mod postgres_support;

use postgres_support::done;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use firelane::{JobState, NewJob, Storage};
use firelane_core::{FetchRequest, Outcome, ServerId};

fn request(server: &ServerId, at: chrono::DateTime<Utc>) -> FetchRequest {
    FetchRequest::new(
        server.clone(),
        vec!["default".to_owned()],
        1,
        at,
        Duration::from_secs(300),
    )
}

/// Runs one job through successes, a retry, a requeue and a delete, and returns its history
/// after each step.
async fn life(store: &Arc<dyn Storage>, job: NewJob) -> Vec<Vec<firelane_core::HistoryEntry>> {
    use chrono::TimeZone;
    let t = |s: i64| {
        Utc.timestamp_opt(1_700_000_000 + s, 0).single().unwrap()
            + chrono::Duration::microseconds(123)
    };
    let (a, b) = (
        ServerId::from_string("a".to_owned()),
        ServerId::from_string("b".to_owned()),
    );
    let id = job.id;
    let mut out = Vec::new();
    let mut seen = |d: Option<firelane::JobDetails>| out.push(d.unwrap().history);
    store.enqueue(vec![job], t(0)).await.unwrap();
    let run = |server: ServerId, outcome: Outcome, at: i64| {
        let store = Arc::clone(store);
        async move {
            let f = store.fetch(request(&server, t(at))).await.unwrap();
            assert_eq!(f.len(), 1);
            let c = done(&f[0], &server, outcome, t(at + 1));
            store.complete(vec![c]).await.unwrap();
        }
    };
    // A first attempt that fails and is retried at once, a second that succeeds.
    run(
        a.clone(),
        Outcome::Retry {
            at: t(1),
            error: "boom".into(),
        },
        1,
    )
    .await;
    run(b.clone(), Outcome::Succeeded, 3).await;
    seen(store.job(id).await.unwrap());
    // Requeued by hand, run again, succeeded again.
    store.requeue(&[id], "again", t(10)).await.unwrap();
    seen(store.job(id).await.unwrap());
    run(a.clone(), Outcome::Succeeded, 11).await;
    seen(store.job(id).await.unwrap());
    // Deleted by hand.
    store.delete(&[id], "gone", t(20)).await.unwrap();
    seen(store.job(id).await.unwrap());
    out
}

/// The end of a successful attempt is kept in the job's row, not in a history row (in both
/// stores, each in its own way); the history reads the same as SQLite's at every step,
/// including after the job leaves `succeeded` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_kept_in_the_row_reads_as_the_same_history() {
    let Some(s) = postgres_support::scratch().await else {
        return;
    };
    let pg: Arc<dyn Storage> = Arc::new(s.inner.clone());
    let sqlite: Arc<dyn Storage> = Arc::new(
        firelane_sqlite::SqliteStorage::connect(":memory:")
            .await
            .unwrap(),
    );
    let mut job = NewJob::new("work", "{}");
    job.retry = firelane::RetryPolicy::Count(3);
    let expected = life(&sqlite, job.clone()).await;
    let got = life(&pg, job.clone()).await;
    assert_eq!(got, expected);
    let last = expected.last().unwrap();
    assert_eq!(
        last.iter().map(|h| h.state).collect::<Vec<_>>(),
        vec![
            JobState::Enqueued,
            JobState::Processing,
            JobState::Enqueued,
            JobState::Processing,
            JobState::Succeeded,
            JobState::Enqueued,
            JobState::Processing,
            JobState::Succeeded,
            JobState::Deleted,
        ]
    );
    // Two of the successes' ends were written to `history` when the job left `succeeded`;
    // while it was succeeded, its row held the end.
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{}\".history WHERE job_id = $1 AND state = 'succeeded'",
        s.schema
    )))
    .bind(*job.id.as_uuid())
    .fetch_one(s.inner.pool())
    .await
    .unwrap();
    assert_eq!(rows, 2);
}
