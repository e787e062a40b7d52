//! Four server processes drain 100,000 jobs from one PostgreSQL database; one is killed with
//! SIGKILL and another stopped gracefully (SIGTERM) mid-run. Every job ends Succeeded exactly
//! once (counted from the history the store keeps, not from the handlers), no two attempts of
//! a job overlap, none is left Processing once the dead server's lease (2 s) lapses,
//! and the killed server's jobs show their recovery.
#![allow(clippy::unwrap_used)]

mod postgres_support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use firelane::{Client, Job, JobContext, JobError, JobState, Storage};

/// The job the workers run (its name and arguments; the workers have the handler).
struct DistJob;

impl Job for DistJob {
    const NAME: &'static str = "pg_dist_job";
    type Args = u32;
    async fn run(&self, _ctx: JobContext, _n: u32) -> Result<(), JobError> {
        Ok(())
    }
}

const JOBS: u32 = 100_000;
const LIMIT: Duration = Duration::from_secs(300);

/// Kills the workers however the test ends.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn succeeded(store: &Arc<dyn Storage>) -> u64 {
    store.stats().await.unwrap().count(JobState::Succeeded)
}

async fn wait_for(store: &Arc<dyn Storage>, what: &str, done: u64, started: Instant) {
    loop {
        let n = succeeded(store).await;
        if n >= done {
            eprintln!("{n} jobs succeeded after {:?}", started.elapsed());
            return;
        }
        assert!(
            started.elapsed() < LIMIT,
            "timed out waiting for {what}: {n} succeeded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_processes_one_killed_one_stopped_every_job_succeeds_once() {
    let Some(scratch) = postgres_support::scratch().await else {
        return;
    };
    let pool = scratch.inner.pool().clone();
    let schema = scratch.schema.clone();
    let store: Arc<dyn Storage> = Arc::new(scratch);
    let client = Client::new(Arc::clone(&store));
    let start = Instant::now();
    for chunk in 0..(JOBS / 1000) {
        client
            .enqueue_many((chunk * 1000..(chunk + 1) * 1000).map(DistJob::with_args))
            .await
            .unwrap();
    }
    eprintln!("enqueued {JOBS} jobs in {:?}", start.elapsed());

    let sep = if postgres_support::url().contains('?') {
        '&'
    } else {
        '?'
    };
    let url = format!("{}{sep}schema={schema}", postgres_support::url());
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_postgres_worker"))
            .arg(&url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut workers = Workers((0..4).map(|_| spawn()).collect());
    let started = Instant::now();

    // SIGKILL one worker after a fifth of the jobs, while it holds some.
    wait_for(&store, "a fifth of the jobs", u64::from(JOBS) / 5, started).await;
    let killed_pid = workers.0[0].id();
    workers.0[0].kill().unwrap();
    workers.0[0].wait().unwrap();
    eprintln!("killed worker {killed_pid} after {:?}", started.elapsed());

    // SIGTERM another after two fifths: it stops gracefully and exits 0.
    wait_for(
        &store,
        "two fifths of the jobs",
        u64::from(JOBS) * 2 / 5,
        started,
    )
    .await;
    let stopped_pid = workers.0[1].id();
    let status = Command::new("kill")
        .args(["-TERM", &stopped_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = workers.0[1].wait().unwrap();
    assert!(exit.success(), "the stopped worker exited with {exit}");
    eprintln!(
        "stopped worker {stopped_pid} gracefully after {:?}",
        started.elapsed()
    );

    wait_for(&store, "every job", u64::from(JOBS), started).await;
    let elapsed = started.elapsed();
    eprintln!(
        "{JOBS} jobs drained by 4 processes (one killed, one stopped) in {elapsed:?}: {:.0} jobs/s",
        f64::from(JOBS) / elapsed.as_secs_f64()
    );

    // Nothing left processing (the dead server's lease lapsed and its jobs were recovered), and
    // nothing in any other state.
    let stats = store.stats().await.unwrap();
    for state in JobState::ALL {
        let want = if state == JobState::Succeeded {
            u64::from(JOBS)
        } else {
            0
        };
        assert_eq!(stats.count(state), want, "jobs {state}: {stats:?}");
    }
    // `S.history` in the queries below reads the whole history: the rows of `history` and the
    // successes whose end the store keeps in the job's row (`ended_by`), last.
    let q = |sql: &str| {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(
            sql.replace("S.history", postgres_support::HISTORY)
                .replace("S.", &format!("\"{schema}\".")),
        ))
    };
    assert_eq!(
        q("SELECT count(*) FROM S.jobs")
            .fetch_one(&pool)
            .await
            .unwrap(),
        i64::from(JOBS)
    );
    assert_eq!(
        q("SELECT count(*) FROM S.jobs WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap(),
        i64::from(JOBS)
    );
    // Each job succeeded exactly once, per the history.
    assert_eq!(
        q("SELECT count(DISTINCT job_id) FROM S.history WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap(),
        i64::from(JOBS)
    );
    assert_eq!(
        q("SELECT count(*) FROM S.history WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap(),
        i64::from(JOBS),
        "some job succeeded more than once"
    );
    // Never leased twice at once. The store writes one history row per attempt when it ends,
    // holding its start (`started_at`): every attempt starts after the job's previous history
    // entry (the previous attempt's end, or its recovery), so no two attempts overlapped.
    assert_eq!(
        q("SELECT count(*) FROM (SELECT started_at, lag(at) OVER (PARTITION BY job_id ORDER BY seq) AS prev
              FROM S.history) h WHERE started_at < prev")
        .fetch_one(&pool)
        .await
        .unwrap(),
        0
    );
    // The killed worker's jobs were recovered after its lease lapsed.
    let recovered = q("SELECT count(*) FROM S.history WHERE state = 'enqueued' AND reason LIKE 'the lease of server %lapsed%'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(recovered > 0, "no job of the killed worker was recovered");
    let with_start = q("SELECT count(*) FROM S.history WHERE state = 'enqueued' AND reason LIKE 'the lease of server %lapsed%' AND started_at IS NOT NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        with_start, recovered,
        "a recovered attempt's start is in its history row"
    );
    let reruns = q(
        "SELECT count(*) FROM (SELECT job_id FROM S.history WHERE started_at IS NOT NULL
                     GROUP BY job_id HAVING count(*) > 1) r",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    // Every process took part.
    let servers = q("SELECT count(DISTINCT server) FROM S.history WHERE state = 'succeeded'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(servers, 4, "every worker ran jobs");
    eprintln!(
        "{recovered} jobs recovered from the killed worker; {reruns} jobs ran more than once"
    );
    drop(workers);
}
