//! The store's hot path alone, one call at a time, for counting instructions with callgrind
//! (repeatable on a noisy machine, where timings are not). Not run by default:
//!
//! ```text
//! cargo test --release -p firelane-sqlite --test op_cost --no-run
//! OPCOST_JOBS=10000 valgrind --tool=callgrind target/release/deps/op_cost-* --ignored --exact op_cost
//! OPCOST_PHASE=enqueue ...   # only the enqueue, to subtract from the whole
//! ```
//!
//! Enqueues `OPCOST_JOBS` jobs (default 20,000) in batches of 1,000, then fetches 32 and
//! completes those 32 as succeeded until the queue is empty (`OPCOST_PHASE=fetch` skips the
//! completions). Each call is its own transaction: nothing runs beside it.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use firelane_core::chrono::Utc;
use firelane_core::{Completion, FetchRequest, NewJob, Outcome, ServerId, Storage};
use firelane_sqlite::{SqliteConfig, SqliteStorage};

#[tokio::test(flavor = "current_thread")]
#[ignore = "a measurement, not a test: run under callgrind with --ignored"]
async fn op_cost() {
    let jobs: usize = std::env::var("OPCOST_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let phase = std::env::var("OPCOST_PHASE").unwrap_or_default();
    let dir = tempfile::tempdir().unwrap();
    let storage = SqliteStorage::connect_with(SqliteConfig::file(dir.path().join("cost.db")))
        .await
        .unwrap();
    let now = Utc::now();
    for _ in 0..jobs / 1000 {
        let batch = (0..1000).map(|_| NewJob::new("cost", "{}")).collect();
        storage.enqueue(batch, now).await.unwrap();
    }
    if phase == "enqueue" {
        return;
    }
    let server = ServerId::generate();
    let mut done = 0;
    loop {
        let request = FetchRequest::new(
            server.clone(),
            vec!["default".into()],
            32,
            Utc::now(),
            Duration::from_secs(60),
        );
        let fetched = storage.fetch(request).await.unwrap();
        if fetched.is_empty() {
            break;
        }
        done += fetched.len();
        if phase == "fetch" {
            continue;
        }
        let completions = fetched
            .iter()
            .map(|j| {
                let at = Utc::now();
                Completion::new(
                    j.id,
                    j.lease,
                    server.clone(),
                    Outcome::Succeeded,
                    Duration::from_micros(5),
                    at,
                )
            })
            .collect();
        storage.complete(completions).await.unwrap();
    }
    assert_eq!(done, jobs / 1000 * 1000, "every job fetched once");
}
