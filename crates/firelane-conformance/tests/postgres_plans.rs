//! The PostgreSQL store's plans: a connection plans each statement once, on its first run,
//! and those plans must still find rows through the indexes when the tables have grown since.
//! A file of its own: run beside other tests, their schema changes can make PostgreSQL drop
//! its cached plans and plan again, which would hide what this checks.
#![allow(clippy::unwrap_used)]

mod postgres_support;

use std::time::Duration;

use firelane::{NewJob, Storage};
use firelane_postgres::PostgresStorage;
use postgres_support::{
    available, drop_schema, exec, fresh_schema, rows_read, single_connection_store,
};

/// A store keeps each statement's plan from its first run on a connection. A server usually
/// starts on an empty queue, so those plans are made for empty tables; when a burst of 20,000
/// jobs then arrives, fetching, extending and completing ten of them must still read about ten rows, not
/// the whole backlog (the bench saw a drain fall from 55,000 to 4,000 jobs/s that way), and a
/// page of enqueued jobs must look up its jobs, not walk them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_made_on_an_empty_store_serve_a_burst_through_the_indexes() {
    use firelane_core::{Completion, FetchRequest, Heartbeat, Outcome, ServerId, ServerInfo};
    if !available().await {
        return;
    }
    let schema = fresh_schema();
    let store = single_connection_store(&schema).await;
    let s = format!("\"{schema}\"");
    let server = ServerId::from_string("burst".to_owned());
    let request = |limit: usize, now| {
        FetchRequest::new(
            server.clone(),
            vec!["default".to_owned()],
            limit,
            now,
            Duration::from_secs(300),
        )
    };
    let info = ServerInfo::new(server.clone(), vec!["default".to_owned()], 10, vec![]);
    let beat = |jobs: &[firelane_core::FetchedJob], now: chrono::DateTime<chrono::Utc>| {
        Heartbeat::new(
            info.clone(),
            now,
            jobs.iter().map(|j| (j.id, j.lease)).collect(),
            now + chrono::Duration::seconds(300),
        )
    };
    let finish = |jobs: &[firelane_core::FetchedJob], now| {
        jobs.iter()
            .map(|j| {
                Completion::new(
                    j.id,
                    j.lease,
                    server.clone(),
                    Outcome::Succeeded,
                    Duration::from_millis(1),
                    now,
                )
            })
            .collect::<Vec<_>>()
    };

    // An idle store, as autovacuum leaves it: empty tables with their statistics. Autovacuum
    // is then kept away, so that no new statistics make PostgreSQL plan again mid-test.
    let mut conn = store.pool().acquire().await.unwrap();
    exec(&mut conn, &format!("VACUUM ANALYZE {s}.jobs, {s}.queue")).await;
    exec(
        &mut conn,
        &format!(
            "ALTER TABLE {s}.jobs SET (autovacuum_enabled = off);
             ALTER TABLE {s}.queue SET (autovacuum_enabled = off);"
        ),
    )
    .await;
    drop(conn);
    // One job through every hot statement: their plans are made now.
    let now = chrono::Utc::now();
    store
        .enqueue(vec![NewJob::new("noop", "null")], now)
        .await
        .unwrap();
    let one = store.fetch(request(10, now)).await.unwrap();
    assert_eq!(one.len(), 1);
    store.heartbeat(beat(&one, now)).await.unwrap();
    let (_, none) = store
        .complete_and_fetch(finish(&one, now), request(10, now))
        .await
        .unwrap();
    assert!(none.is_empty());
    let rare = firelane::JobQuery::new()
        .state(firelane::JobState::Enqueued)
        .name("rare");
    assert!(store.list_jobs(rare.clone()).await.unwrap().is_empty());
    let mut gone = NewJob::new("rare", "null");
    gone.queue = "later".to_owned();
    let gone_id = gone.id;
    store.enqueue(vec![gone], now).await.unwrap();
    passes(&store, gone_id, one[0].id, now).await;

    // The burst, behind one job of another name in a queue nothing fetches from.
    let mut other = NewJob::new("rare", "null");
    other.queue = "later".to_owned();
    store.enqueue(vec![other], now).await.unwrap();
    for _ in 0..20 {
        let jobs = (0..1000).map(|_| NewJob::new("noop", "null")).collect();
        store.enqueue(jobs, now).await.unwrap();
    }
    let before = (
        rows_read(&store, "queue").await,
        rows_read(&store, "jobs").await,
    );
    let ten = store.fetch(request(10, now)).await.unwrap();
    assert_eq!(ten.len(), 10);
    store.heartbeat(beat(&ten, now)).await.unwrap();
    let (_, next) = store
        .complete_and_fetch(finish(&ten, now), request(10, now))
        .await
        .unwrap();
    assert_eq!(next.len(), 10);
    store.complete(finish(&next, now)).await.unwrap();
    let queue = rows_read(&store, "queue").await - before.0;
    let jobs = rows_read(&store, "jobs").await - before.1;
    assert!(queue <= 100, "fetching 20 jobs read {queue} queue rows");
    assert!(
        jobs <= 100,
        "fetching, extending and completing 20 jobs read {jobs} job rows"
    );
    // Not among the newest 200 jobs: the page comes from the queue table.
    let before = rows_read(&store, "jobs").await;
    let found = store.list_jobs(rare).await.unwrap();
    assert_eq!(found.len(), 1);
    let jobs = rows_read(&store, "jobs").await - before;
    assert!(
        jobs <= 200 + 10,
        "a page of enqueued jobs read {jobs} job rows"
    );
    // The background passes, the figures, a job's page, a person's delete and requeue.
    let before = (
        rows_read(&store, "queue").await,
        rows_read(&store, "jobs").await,
    );
    passes(&store, found[0].id, ten[0].id, now).await;
    let queue = rows_read(&store, "queue").await - before.0;
    let jobs = rows_read(&store, "jobs").await - before.1;
    assert!(
        queue <= 100,
        "the passes, a delete and a requeue read {queue} queue rows"
    );
    assert!(
        jobs <= 100,
        "the passes, a delete and a requeue read {jobs} job rows"
    );

    store.close().await;
    drop_schema(&schema);
}

/// What servers and people do besides fetching and completing: the recovery, promotion and
/// expiry passes, the figures, a job's details, the delete of the enqueued job `id` and the
/// requeue of the succeeded job `done`.
async fn passes(
    store: &PostgresStorage,
    id: firelane::JobId,
    done: firelane::JobId,
    now: chrono::DateTime<chrono::Utc>,
) {
    store.recover(now, Duration::from_secs(60)).await.unwrap();
    store.promote_due(now, 100).await.unwrap();
    store
        .expire(now, firelane::Retention::default(), 100)
        .await
        .unwrap();
    store.stats().await.unwrap();
    assert!(store.job(id).await.unwrap().is_some());
    let changed = store.delete(&[id], "test", now).await.unwrap();
    assert_eq!(changed.len(), 1);
    let changed = store.requeue(&[done], "test", now).await.unwrap();
    assert_eq!(changed.len(), 1);
}
