//! Two server processes draining one SQLite file at the same time: every job ends Succeeded
//! exactly once, is never leased twice at once, and both processes take part.
#![allow(clippy::unwrap_used)]

#[path = "../src/bin/firelane-crash-worker/job.rs"]
#[allow(dead_code)]
mod job;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use firelane::{Client, Job, JobQuery, JobState};

const JOBS: usize = 3000;

/// Kills the child processes however the test ends.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_server_processes_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let client = Client::new(firelane::sqlite(&url).await.unwrap());
    client
        .enqueue_many((0..JOBS as u32).map(job::CrashJob::with_args))
        .await
        .unwrap();

    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_firelane-crash-worker"))
            .arg(&url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let workers = Workers(vec![spawn(), spawn()]);

    let start = Instant::now();
    loop {
        let stats = client.stats().await.unwrap();
        if stats.count(JobState::Succeeded) == JOBS as u64 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "timed out: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(workers);

    let stats = client.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Succeeded), JOBS as u64);
    let total: u64 = stats.states.values().sum();
    assert_eq!(total, JOBS as u64, "no job in another state: {stats:?}");

    let jobs = client
        .list(JobQuery::new().page(0, JOBS as u32))
        .await
        .unwrap();
    assert_eq!(jobs.len(), JOBS);
    let mut servers = HashSet::new();
    for j in &jobs {
        let d = client.job(j.id).await.unwrap();
        let succeeded: Vec<_> = d
            .history
            .iter()
            .filter(|h| h.state == JobState::Succeeded)
            .collect();
        assert_eq!(
            succeeded.len(),
            1,
            "job {} succeeded {} times",
            j.id,
            succeeded.len()
        );
        // Delivery is at least once: under heavy load a heartbeat can miss the 1 s lease and
        // the job is recovered and run again. What must never happen is a second lease while
        // the first is held: between two Processing entries there is always a release.
        let mut leased = false;
        for h in &d.history {
            if h.state == JobState::Processing {
                assert!(
                    !leased,
                    "job {} leased twice without a release: {:#?}",
                    j.id, d.history
                );
                leased = true;
            } else {
                leased = false;
            }
        }
        servers.insert(succeeded[0].server.clone());
    }
    assert_eq!(servers.len(), 2, "both processes ran jobs: {servers:?}");
}
