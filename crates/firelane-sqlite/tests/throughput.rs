//! A rough measure of the store's throughput, not run by default:
//!
//! ```text
//! cargo test --release -p firelane-sqlite --test throughput -- --ignored --nocapture
//! ```
//!
//! Set `FIRELANE_BENCH_MEMORY=1` for an in-memory database instead of a file.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use firelane_core::chrono::Utc;
use firelane_core::{Completion, FetchRequest, NewJob, Outcome, ServerId, Storage};
use firelane_sqlite::{SqliteConfig, SqliteStorage};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test: run with --ignored --nocapture"]
async fn throughput() {
    let dir = tempfile::tempdir().unwrap();
    let storage = if std::env::var_os("FIRELANE_BENCH_MEMORY").is_some() {
        SqliteStorage::connect(":memory:").await.unwrap()
    } else {
        SqliteStorage::connect_with(SqliteConfig::file(dir.path().join("bench.db")))
            .await
            .unwrap()
    };
    let now = Utc::now();

    let start = Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let s = storage.clone();
            tokio::spawn(async move {
                for _ in 0..200 {
                    s.enqueue(vec![NewJob::new("bench", "{}")], now)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let w = storage.writer_stats();
    println!(
        "10000 enqueues of one job from 50 tasks: {:?} ({} transactions)",
        start.elapsed(),
        w.batches
    );

    let start = Instant::now();
    for _ in 0..10 {
        let jobs = (0..1000).map(|_| NewJob::new("bench", "{}")).collect();
        storage.enqueue(jobs, now).await.unwrap();
    }
    println!("10000 enqueues in batches of 1000: {:?}", start.elapsed());

    let start = Instant::now();
    let server = ServerId::generate();
    let mut n = 0;
    loop {
        let request = FetchRequest::new(
            server.clone(),
            vec!["default".into()],
            100,
            now,
            Duration::from_secs(60),
        );
        let fetched = storage.fetch(request).await.unwrap();
        if fetched.is_empty() {
            break;
        }
        n += fetched.len();
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
    }
    println!(
        "{n} fetched and completed 100 at a time: {:?}",
        start.elapsed()
    );
}
