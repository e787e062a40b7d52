//! `firelane bench`: throughput and latency of a store, measured in one process, printed as one
//! JSON line.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use firelane::{
    Client, Job, JobContext, JobError, JobQuery, JobState, Prefetch, Server, ServerBuilder, Storage,
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::{CliError, CliResult};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Scenario {
    /// N no-op jobs through the bulk API, in batches of 1,000.
    Enqueue,
    /// The enqueue above, then a server with C workers runs them all.
    Drain,
    /// A server with C workers runs 100 jobs enqueued 2 ms apart, its queue is paused, the N
    /// jobs are enqueued and the queue resumed: the drain of a burst that reaches a running
    /// server (whose store planned its statements on near-empty tables), timed from the resume.
    Burst,
    /// One job at a time: from just before the enqueue call to the handler's start.
    Latency,
    /// A server with nothing to do, for `--seconds`: its share of one core and its memory.
    Idle,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    /// What to measure.
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Jobs to enqueue (enqueue, drain, burst).
    #[arg(long, default_value_t = 100_000)]
    jobs: usize,
    /// Worker slots of the server (drain, burst, latency).
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// At most how many jobs the server leases beyond its free workers, at its pace (drain,
    /// burst, latency; default: the server's default, sixteen per worker); see
    /// `ServerBuilder::prefetch`.
    #[arg(long)]
    prefetch: Option<usize>,
    /// Samples (latency).
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Jobs scheduled for much later, created before measuring (to show they cost nothing).
    #[arg(long, default_value_t = 0)]
    scheduled: usize,
    /// How long to watch an idle server (idle).
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// The one JSON line a run prints.
#[derive(Debug, Serialize)]
struct Report {
    store: &'static str,
    scenario: Scenario,
    jobs: Option<usize>,
    concurrency: usize,
    /// The prefetch maximum, when set.
    prefetch: Option<usize>,
    enqueue_per_s: Option<f64>,
    drain_per_s: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    rss_mb: Option<f64>,
    /// Idle only: CPU time used per wall-clock time, in percent of one core.
    cpu_pct: Option<f64>,
}

/// The no-op job the drain runs.
struct BenchNoop;

impl Job for BenchNoop {
    const NAME: &'static str = "firelane_bench_noop";
    type Args = u64;
    async fn run(&self, _: JobContext, _: u64) -> Result<(), JobError> {
        Ok(())
    }
}

/// Reports when the handler starts, for latency samples.
struct BenchPing;

#[derive(Clone)]
struct PingTx(mpsc::UnboundedSender<Instant>);

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

/// A fresh, empty store of the kind `url` names, and what to remove afterwards.
struct Scratch {
    storage: Arc<dyn Storage>,
    cleanup: Option<tempfile::TempDir>,
    /// A PostgreSQL scratch schema, dropped at the end.
    schema: Option<crate::store::DropSchema>,
}

async fn scratch_store(url: &str) -> CliResult<Scratch> {
    let scheme = url.split(':').next().unwrap_or_default();
    match scheme {
        "sqlite" | "" => {
            // A fresh file in the directory the URL points at (or the temporary directory for
            // an in-memory URL), removed at the end.
            let path = url
                .trim_start_matches("sqlite://")
                .trim_start_matches("sqlite:");
            let parent = std::path::Path::new(path)
                .parent()
                .filter(|p| !p.as_os_str().is_empty() && !path.contains(":memory:"))
                .map(std::path::Path::to_path_buf)
                .unwrap_or_else(std::env::temp_dir);
            let dir = tempfile::Builder::new()
                .prefix("firelane-bench-")
                .tempdir_in(&parent)
                .map_err(|e| {
                    CliError::new(format!(
                        "cannot create a scratch directory in {}: {e}",
                        parent.display()
                    ))
                })?;
            let file = dir.path().join("bench.db");
            let storage = crate::store::open(&format!("sqlite://{}", file.display())).await?;
            Ok(Scratch {
                storage,
                cleanup: Some(dir),
                schema: None,
            })
        }
        "postgres" | "postgresql" => {
            // A fresh schema of a random name in the URL's database, dropped at the end.
            let (storage, schema) = crate::store::scratch_postgres(url).await?;
            Ok(Scratch {
                storage,
                cleanup: None,
                schema: Some(schema),
            })
        }
        _ => {
            let storage = crate::store::open(url).await?;
            Ok(Scratch {
                storage,
                cleanup: None,
                schema: None,
            })
        }
    }
}

fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(len),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>10} {bar:40} {pos}/{len} {per_sec}")
    {
        bar.set_style(style);
    }
    bar.set_message(what.to_owned());
    bar
}

/// Peak resident memory of this process, from /proc (Linux); `None` elsewhere.
fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Resident memory of this process now, from /proc (Linux).
fn current_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// User plus system CPU time of this process, from /proc (Linux).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it are space-separated.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // Clock ticks; 100 per second on Linux.
    Some((utime + stime) / 100.0)
}

async fn enqueue_all(client: &Client, jobs: usize) -> CliResult<f64> {
    const BATCH: usize = 1000;
    let bar = progress(jobs as u64, "enqueue");
    let start = Instant::now();
    let mut done = 0usize;
    while done < jobs {
        let n = BATCH.min(jobs - done);
        client
            .enqueue_many((done..done + n).map(|i| BenchNoop::with_args(i as u64)))
            .await?;
        done += n;
        bar.set_position(done as u64);
    }
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    Ok(jobs as f64 / elapsed.as_secs_f64())
}

/// Waits until nothing is waiting or running, polling every 10 ms, and returns the time since
/// `start`. The progress bar costs a count query, so it is only updated when someone sees it.
/// `before` jobs had succeeded when the bar started.
async fn drained(
    client: &Client,
    bar: &indicatif::ProgressBar,
    before: u64,
    start: Instant,
) -> CliResult<Duration> {
    let mut polls: u64 = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        polls += 1;
        let waiting = client
            .list(JobQuery::new().state(JobState::Enqueued).page(0, 1))
            .await?;
        if !waiting.is_empty() {
            if !bar.is_hidden() && polls.is_multiple_of(50) {
                let succeeded = client.stats().await?.count(JobState::Succeeded);
                bar.set_position(succeeded.saturating_sub(before));
            }
            continue;
        }
        let running = client
            .list(JobQuery::new().state(JobState::Processing).page(0, 1))
            .await?;
        if running.is_empty() {
            let elapsed = start.elapsed();
            bar.finish_and_clear();
            return Ok(elapsed);
        }
    }
}

/// Fails unless exactly `jobs` jobs succeeded.
async fn check_succeeded(client: &Client, jobs: u64) -> CliResult {
    let succeeded = client.stats().await?.count(JobState::Succeeded);
    if succeeded != jobs {
        return Err(CliError::new(format!(
            "the run ended with {succeeded} of {jobs} jobs succeeded"
        )));
    }
    Ok(())
}

async fn schedule_far(client: &Client, jobs: usize) -> CliResult {
    let mut left = jobs;
    while left > 0 {
        let n = left.min(1000);
        let mut batch = client.batch();
        for i in 0..n {
            batch.schedule(
                BenchNoop::with_args(i as u64),
                Duration::from_secs(30 * 24 * 3600),
            )?;
        }
        batch.submit().await?;
        left -= n;
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len() - 1))
        .copied()
}

/// A server with the run's workers and prefetch.
fn server_builder(storage: &Arc<dyn Storage>, args: &BenchArgs) -> ServerBuilder {
    let builder = Server::builder(Arc::clone(storage)).workers(args.concurrency);
    match args.prefetch {
        Some(jobs) => builder.prefetch(Prefetch::paced(jobs)),
        None => builder,
    }
}

pub(crate) async fn run(url: &str, args: BenchArgs) -> CliResult<ExitCode> {
    if args.concurrency == 0 || args.jobs == 0 || args.samples == 0 {
        return Err(CliError::new(
            "--jobs, --concurrency and --samples must be at least 1",
        ));
    }
    let scratch = scratch_store(url).await?;
    let storage = Arc::clone(&scratch.storage);
    let client = Client::new(Arc::clone(&storage));
    if args.scheduled > 0 {
        schedule_far(&client, args.scheduled).await?;
    }
    let mut report = Report {
        store: storage.backend(),
        scenario: args.scenario,
        jobs: None,
        concurrency: args.concurrency,
        prefetch: args.prefetch,
        enqueue_per_s: None,
        drain_per_s: None,
        p50_ms: None,
        p99_ms: None,
        max_ms: None,
        rss_mb: None,
        cpu_pct: None,
    };
    match args.scenario {
        Scenario::Enqueue => {
            report.jobs = Some(args.jobs);
            report.enqueue_per_s = Some(enqueue_all(&client, args.jobs).await?);
        }
        Scenario::Drain => {
            report.jobs = Some(args.jobs);
            report.enqueue_per_s = Some(enqueue_all(&client, args.jobs).await?);
            let bar = progress(args.jobs as u64, "drain");
            let start = Instant::now();
            let server = server_builder(&storage, &args)
                .register(BenchNoop)
                .start()
                .await?;
            let elapsed = drained(&client, &bar, 0, start).await?;
            server.shutdown().await?;
            check_succeeded(&client, args.jobs as u64).await?;
            report.drain_per_s = Some(args.jobs as f64 / elapsed.as_secs_f64());
        }
        Scenario::Burst => {
            const WARM_UP: usize = 100;
            // The queue the bench's jobs go to.
            const QUEUE: &str = "default";
            report.jobs = Some(args.jobs);
            let server = server_builder(&storage, &args)
                .register(BenchNoop)
                .start()
                .await?;
            for i in 0..WARM_UP {
                client.enqueue(BenchNoop::with_args(i as u64)).await?;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            drained(
                &client,
                &indicatif::ProgressBar::hidden(),
                0,
                Instant::now(),
            )
            .await?;
            client.pause_queue(QUEUE).await?;
            report.enqueue_per_s = Some(enqueue_all(&client, args.jobs).await?);
            let bar = progress(args.jobs as u64, "burst");
            let start = Instant::now();
            client.resume_queue(QUEUE).await?;
            let elapsed = drained(&client, &bar, WARM_UP as u64, start).await?;
            server.shutdown().await?;
            check_succeeded(&client, (WARM_UP + args.jobs) as u64).await?;
            report.drain_per_s = Some(args.jobs as f64 / elapsed.as_secs_f64());
        }
        Scenario::Idle => {
            let server = server_builder(&storage, &args)
                .register(BenchNoop)
                .start()
                .await?;
            // Let start-up work (migrations, first heartbeat, first recovery pass) pass.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let cpu_before = process_cpu_seconds();
            let wall = Instant::now();
            tokio::time::sleep(Duration::from_secs(args.seconds)).await;
            let cpu = process_cpu_seconds().zip(cpu_before).map(|(a, b)| a - b);
            report.cpu_pct = cpu.map(|c| 100.0 * c / wall.elapsed().as_secs_f64());
            report.rss_mb = current_rss_mb();
            server.shutdown().await?;
        }
        Scenario::Latency => {
            let (tx, mut rx) = mpsc::unbounded_channel();
            let server = server_builder(&storage, &args)
                .register(BenchPing)
                .state(PingTx(tx))
                .start()
                .await?;
            let bar = progress(args.samples as u64, "latency");
            let mut samples = Vec::with_capacity(args.samples);
            // A few unmeasured rounds first, so that connections and caches are warm.
            for i in 0..(args.samples + 10) {
                let before = Instant::now();
                client.enqueue(BenchPing::with_args(i as u64)).await?;
                let started = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                    .await
                    .map_err(|_| CliError::new("a latency sample's job did not start within 30 s"))?
                    .ok_or_else(|| CliError::new("the latency job's channel closed"))?;
                if i >= 10 {
                    samples.push(started.duration_since(before).as_secs_f64() * 1000.0);
                    bar.inc(1);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            bar.finish_and_clear();
            server.shutdown().await?;
            samples.sort_by(f64::total_cmp);
            report.p50_ms = percentile(&samples, 50.0);
            report.p99_ms = percentile(&samples, 99.0);
            report.max_ms = samples.last().copied();
        }
    }
    if args.scenario != Scenario::Idle {
        report.rss_mb = peak_rss_mb();
    }
    let line = serde_json::to_string(&report).map_err(|e| CliError::new(e.to_string()))?;
    println!("{line}");
    drop(client);
    drop(storage);
    drop(scratch.storage);
    drop(scratch.cleanup);
    if let Some(schema) = scratch.schema {
        schema.drop_now().await?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[3.0], 99.0), Some(3.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
