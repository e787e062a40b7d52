//! The drain of `firelane bench`, on a schema that already holds many finished jobs (the
//! bench itself always starts from an empty one). Ignored: run by hand, in release, e.g.
//!
//! ```sh
//! FINISHED=1000000 EXPIRED=1 cargo test --release -p firelane-conformance \
//!     --test postgres_bench -- --ignored --nocapture
//! ```
//!
//! `FINISHED` succeeded jobs (default 1,000,000, each with its end in its row, finished an hour
//! ago, so not yet expired) are written straight into the tables; with `EXPIRED=1` every fifth
//! of them is then deleted and the tables vacuumed, leaving free space all through the heap,
//! as expiry does in steady state. Then the latency of `SAMPLES` (300) jobs run one at a time is
//! measured as `firelane bench --scenario latency` does, `JOBS` (100,000) no-op jobs are
//! enqueued and a server with `WORKERS` (50) drains them; one JSON line gives the figures. `FINISHED=0` is the empty case. Each run starts
//! right after a `CHECKPOINT`.
#![allow(clippy::unwrap_used)]

mod postgres_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use firelane::{Client, Job, JobContext, JobError, JobQuery, JobState, Server, Storage};

struct BenchNoop;

/// Sends when it started, for the latency samples.
struct BenchPing;

#[derive(Clone)]
struct PingTx(tokio::sync::mpsc::UnboundedSender<Instant>);

impl Job for BenchPing {
    const NAME: &'static str = "firelane_bench_ping";
    type Args = u64;
    fn required_state() -> Vec<firelane::StateType> {
        vec![firelane::StateType::of::<PingTx>()]
    }
    async fn run(&self, ctx: JobContext, _: u64) -> Result<(), JobError> {
        let started = Instant::now();
        let tx: PingTx = ctx.state()?;
        let _ = tx.0.send(started);
        Ok(())
    }
}

/// The latency of `firelane bench --scenario latency`: `samples` jobs one at a time, each from
/// just before its enqueue to its handler's start, after 10 unmeasured ones. Returns the
/// median and the 99th percentile, in milliseconds.
async fn latency(storage: &Arc<dyn Storage>, workers: usize, samples: usize) -> (f64, f64) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let server = Server::builder(Arc::clone(storage))
        .register(BenchPing)
        .state(PingTx(tx))
        .workers(workers)
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(storage));
    let mut ms = Vec::with_capacity(samples);
    for i in 0..samples + 10 {
        let before = Instant::now();
        client
            .enqueue(BenchPing::with_args(i as u64))
            .await
            .unwrap();
        let started = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap()
            .unwrap();
        if i >= 10 {
            ms.push(started.duration_since(before).as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.shutdown().await.unwrap();
    ms.sort_by(f64::total_cmp);
    // Nearest rank, as the bench's report.
    let at = |p: f64| ms[((p * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
    (at(0.5), at(0.99))
}

impl Job for BenchNoop {
    const NAME: &'static str = "firelane_bench_noop";
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

async fn exec(pool: &sqlx::PgPool, sql: String) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run by hand in release"]
async fn drain_beside_finished_jobs() {
    let Some(scratch) = postgres_support::scratch().await else {
        return;
    };
    let finished = env("FINISHED", 1_000_000);
    let expired = env("EXPIRED", 0) == 1;
    let jobs = env("JOBS", 100_000);
    let workers = env("WORKERS", 50);
    let pool = scratch.inner.pool().clone();
    let s = format!("\"{}\"", scratch.schema);
    let setup = Instant::now();
    if finished > 0 {
        // As the drain leaves them: a job row in state succeeded, the attempt's end in the row
        // (no history row), with time-ordered ids (as `JobId`s are: UUID v7) from an hour ago.
        exec(
            &pool,
            format!(
                "INSERT INTO {s}.jobs (id, name, queue, priority, args, state, attempt,
                     max_attempts, created_at, state_at, finished_at, initial_state, started_at,
                     started_by, queue_seq, ended_by, ended_us)
                 SELECT (lpad(to_hex((extract(epoch FROM now() - interval '1 hour') * 1000)::int8
                             + g / 100), 12, '0') || '7' || substr(md5(g::text), 1, 3) || '8'
                             || substr(md5(g::text), 4, 15))::uuid, 'firelane_bench_noop', 'default', 0, g::text,
                     'succeeded', 1, 11, now() - interval '1 hour', now() - interval '1 hour',
                     now() - interval '1 hour' + g * interval '1 microsecond', 'enqueued',
                     now() - interval '1 hour', 'old-server', g, 'old-server', 100
                 FROM generate_series(1, {finished}) g;"
            ),
        )
        .await;
        if expired {
            exec(
                &pool,
                format!(
                    "DELETE FROM {s}.history WHERE job_id IN
                         (SELECT id FROM {s}.jobs WHERE queue_seq % 5 = 0);
                     DELETE FROM {s}.jobs WHERE queue_seq % 5 = 0;"
                ),
            )
            .await;
        }
        exec(&pool, format!("VACUUM ANALYZE {s}.jobs, {s}.history")).await;
    }
    // Every run, empty or not, starts right after a checkpoint: the first change to a page
    // after one writes the whole page to the WAL, and without this the checkpoint that the
    // setup's writes cause would land inside the measured drain of the runs with jobs kept
    // (a store that has held its finished jobs for a while has long checkpointed them).
    exec(&pool, "CHECKPOINT".to_owned()).await;
    let setup = setup.elapsed();

    let storage: Arc<dyn Storage> = Arc::new(scratch);
    let samples = env("SAMPLES", 300);
    let (p50_ms, p99_ms) = if samples > 0 {
        let (p50, p99) = latency(&storage, workers, samples).await;
        (format!("{p50:.2}"), format!("{p99:.2}"))
    } else {
        ("null".to_owned(), "null".to_owned())
    };
    let client = Client::new(Arc::clone(&storage));
    let start = Instant::now();
    let mut done = 0usize;
    while done < jobs {
        let n = 1000.min(jobs - done);
        client
            .enqueue_many((done..done + n).map(|i| BenchNoop::with_args(i as u64)))
            .await
            .unwrap();
        done += n;
    }
    let enqueue_per_s = jobs as f64 / start.elapsed().as_secs_f64();

    let start = Instant::now();
    let server = Server::builder(Arc::clone(&storage))
        .register(BenchNoop)
        .workers(workers)
        .start()
        .await
        .unwrap();
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiting = client
            .list(JobQuery::new().state(JobState::Enqueued).page(0, 1))
            .await
            .unwrap();
        if !waiting.is_empty() {
            continue;
        }
        let running = client
            .list(JobQuery::new().state(JobState::Processing).page(0, 1))
            .await
            .unwrap();
        if running.is_empty() {
            break;
        }
    }
    let elapsed = start.elapsed();
    server.shutdown().await.unwrap();
    let kept = if expired {
        finished - finished / 5
    } else {
        finished
    };
    let succeeded: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {s}.jobs WHERE state = 'succeeded' AND name = 'firelane_bench_noop'"
    )))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(succeeded, (kept + jobs) as i64);
    println!(
        "{{\"finished\":{finished},\"expired\":{expired},\"kept\":{kept},\"jobs\":{jobs},\"workers\":{workers},\"setup_s\":{:.1},\"enqueue_per_s\":{enqueue_per_s:.0},\"drain_per_s\":{:.0},\"p50_ms\":{p50_ms},\"p99_ms\":{p99_ms}}}",
        setup.as_secs_f64(),
        jobs as f64 / elapsed.as_secs_f64()
    );
}
