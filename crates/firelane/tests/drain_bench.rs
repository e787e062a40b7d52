//! The CLI's drain benchmark with a real metrics recorder: `firelane bench` installs none, so
//! it measures the feature's cost without one. Ignored; run it in release, A/B with the
//! environment variable:
//!
//! ```sh
//! cargo test --release -p firelane --test drain_bench -- --ignored --nocapture
//! FIRELANE_BENCH_PROMETHEUS=1 cargo test --release -p firelane --test drain_bench -- --ignored --nocapture
//! ```
//!
//! `FIRELANE_BENCH_JOBS` (default 100,000) and `FIRELANE_BENCH_CONCURRENCY` (50) as in the CLI.

use std::time::{Duration, Instant};

use firelane::{Client, Job, JobContext, JobError, Server};

struct Noop;

impl Job for Noop {
    const NAME: &'static str = "bench_noop";
    type Args = u64;

    async fn run(&self, _: JobContext, _: u64) -> Result<(), JobError> {
        Ok(())
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run it in release with --ignored"]
async fn drain() {
    let endpoint = std::env::var_os("FIRELANE_BENCH_PROMETHEUS")
        .map(|_| firelane::metrics::PrometheusEndpoint::install().expect("install"));
    let jobs = env("FIRELANE_BENCH_JOBS", 100_000);
    let concurrency = env("FIRELANE_BENCH_CONCURRENCY", 50);

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let storage = firelane::sqlite(&url).await.expect("store");
    let client = Client::new(storage.clone());

    let start = Instant::now();
    let mut left = jobs;
    while left > 0 {
        let n = left.min(1000);
        client
            .enqueue_many((0..n as u64).map(Noop::with_args))
            .await
            .expect("enqueue");
        left -= n;
    }
    let enqueue_per_s = jobs as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let server = Server::builder(storage.clone())
        .register(Noop)
        .workers(concurrency)
        .start()
        .await
        .expect("server");
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let stats = client.stats().await.expect("stats");
        if stats.count(firelane::JobState::Succeeded) == jobs as u64 {
            break;
        }
    }
    let drain_per_s = jobs as f64 / start.elapsed().as_secs_f64();
    server.shutdown().await.expect("shutdown");

    if let Some(endpoint) = &endpoint {
        let text = endpoint.render();
        assert!(text.contains(&format!(
            r#"firelane_jobs_succeeded_total{{job="bench_noop",queue="default"}} {jobs}"#
        )));
    }
    println!(
        "recorder={} jobs={jobs} concurrency={concurrency} enqueue_per_s={enqueue_per_s:.0} drain_per_s={drain_per_s:.0}",
        if endpoint.is_some() {
            "prometheus"
        } else {
            "none"
        }
    );
}
