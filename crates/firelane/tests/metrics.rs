//! Feature `metrics`: what a client and a server record, read back from metrics-util's
//! debugging recorder. One test: the recorder is global and a snapshot resets it.

use std::collections::HashMap;
use std::time::Duration;

use firelane::{Client, Job, JobContext, JobError, JobId, JobState, Server};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

struct Ok_;

impl Job for Ok_ {
    const NAME: &'static str = "ok";
    type Args = ();

    async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> {
        Ok(())
    }
}

/// Fails its first attempt, succeeds its second.
struct Flaky;

impl Job for Flaky {
    const NAME: &'static str = "flaky";
    type Args = ();

    async fn run(&self, ctx: JobContext, _: ()) -> Result<(), JobError> {
        if ctx.attempt() == 1 {
            Err(JobError::retry("first attempts fail"))
        } else {
            Ok(())
        }
    }
}

struct Doomed;

impl Job for Doomed {
    const NAME: &'static str = "doomed";
    type Args = ();

    async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> {
        Err(JobError::fail("this never works"))
    }
}

async fn wait_for(client: &Client, id: JobId, state: JobState) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = client.job(id).await.expect("job").job.state;
        if now == state {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} is {now}, not {state}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Metric name and sorted `key=value` labels.
type Key = (String, Vec<String>);

fn key(name: &str, labels: &[(&str, &str)]) -> Key {
    let mut l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    l.sort();
    (name.to_owned(), l)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_histograms_and_gauges_by_name_and_labels() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("metrics.db").display());
    let storage = firelane::sqlite(&url).await.expect("store");
    let client = Client::new(storage.clone());

    let mut ok = Vec::new();
    for _ in 0..3 {
        ok.push(client.enqueue(Ok_::with_args(())).await.expect("enqueue"));
    }
    let flaky = client
        .enqueue(Flaky::with_args(()).retry_delays([Duration::ZERO]))
        .await
        .expect("enqueue");
    let doomed = client
        .enqueue(Doomed::with_args(()))
        .await
        .expect("enqueue");
    // A queue no server serves: it keeps one job waiting.
    client
        .enqueue(Ok_::with_args(()).queue("parked"))
        .await
        .expect("enqueue");

    let server = Server::builder(storage.clone())
        .register(Ok_)
        .register(Flaky)
        .register(Doomed)
        .poll_interval(Duration::from_millis(50))
        .metrics_interval(Duration::from_millis(100))
        .start()
        .await
        .expect("server starts");
    for id in &ok {
        wait_for(&client, *id, JobState::Succeeded).await;
    }
    wait_for(&client, flaky, JobState::Succeeded).await;
    wait_for(&client, doomed, JobState::Failed).await;
    // Let the gauges be sampled after the last job ended.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let health = server.health().await;
    assert!(health.is_ready(), "{:?}", health.problems);

    let snapshot: HashMap<Key, DebugValue> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(ck, _, _, v)| {
            let (_, k) = ck.into_parts();
            let mut labels: Vec<String> = k
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            labels.sort();
            ((k.name().to_owned(), labels), v)
        })
        .collect();
    let counter = |name: &str, labels: &[(&str, &str)]| match snapshot.get(&key(name, labels)) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("counter {name} {labels:?}: {other:?}"),
    };
    let samples = |name: &str, labels: &[(&str, &str)]| match snapshot.get(&key(name, labels)) {
        Some(DebugValue::Histogram(v)) => v.iter().map(|x| x.into_inner()).collect::<Vec<f64>>(),
        other => panic!("histogram {name} {labels:?}: {other:?}"),
    };
    let gauge = |name: &str, labels: &[(&str, &str)]| match snapshot.get(&key(name, labels)) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("gauge {name} {labels:?}: {other:?}"),
    };
    let job = |name: &'static str| [("job", name), ("queue", "default")];

    assert_eq!(counter("firelane_jobs_enqueued_total", &job("ok")), 3);
    assert_eq!(counter("firelane_jobs_enqueued_total", &job("flaky")), 1);
    assert_eq!(counter("firelane_jobs_enqueued_total", &job("doomed")), 1);
    assert_eq!(
        counter(
            "firelane_jobs_enqueued_total",
            &[("job", "ok"), ("queue", "parked")]
        ),
        1
    );

    assert_eq!(counter("firelane_jobs_started_total", &job("ok")), 3);
    assert_eq!(counter("firelane_jobs_succeeded_total", &job("ok")), 3);
    assert_eq!(counter("firelane_jobs_retried_total", &job("ok")), 0);
    assert_eq!(counter("firelane_jobs_failed_total", &job("ok")), 0);

    assert_eq!(counter("firelane_jobs_started_total", &job("flaky")), 2);
    assert_eq!(counter("firelane_jobs_retried_total", &job("flaky")), 1);
    assert_eq!(counter("firelane_jobs_succeeded_total", &job("flaky")), 1);
    assert_eq!(counter("firelane_jobs_failed_total", &job("flaky")), 0);

    assert_eq!(counter("firelane_jobs_started_total", &job("doomed")), 1);
    assert_eq!(counter("firelane_jobs_failed_total", &job("doomed")), 1);
    assert_eq!(counter("firelane_jobs_succeeded_total", &job("doomed")), 0);
    assert_eq!(counter("firelane_jobs_retried_total", &job("doomed")), 0);

    let duration = |name: &'static str, outcome: &'static str| {
        samples(
            "firelane_job_duration_seconds",
            &[("job", name), ("queue", "default"), ("outcome", outcome)],
        )
    };
    assert_eq!(duration("ok", "succeeded").len(), 3);
    assert_eq!(duration("flaky", "retried").len(), 1);
    assert_eq!(duration("flaky", "succeeded").len(), 1);
    assert_eq!(duration("doomed", "failed").len(), 1);
    assert!(
        !snapshot.contains_key(&key(
            "firelane_job_duration_seconds",
            &[("job", "ok"), ("queue", "default"), ("outcome", "failed")]
        )),
        "a duration series appears only for outcomes that happened"
    );
    assert!(duration("ok", "succeeded").iter().all(|s| *s >= 0.0));

    let pickup = samples("firelane_job_pickup_latency_seconds", &job("ok"));
    assert_eq!(pickup.len(), 3);
    assert!(pickup.iter().all(|s| *s >= 0.0 && *s < 20.0), "{pickup:?}");
    assert_eq!(
        samples("firelane_job_pickup_latency_seconds", &job("flaky")).len(),
        2
    );

    let parked = [("queue", "parked")];
    assert_eq!(gauge("firelane_queue_depth", &parked), 1.0);
    assert_eq!(gauge("firelane_queue_processing", &parked), 0.0);
    assert_eq!(gauge("firelane_queue_paused", &parked), 0.0);
    let age = gauge("firelane_queue_oldest_job_age_seconds", &parked);
    assert!(age > 0.3 && age < 30.0, "oldest job age {age}");
    // The server's own queue has its series even when empty.
    assert_eq!(gauge("firelane_queue_depth", &[("queue", "default")]), 0.0);
    assert_eq!(
        gauge(
            "firelane_queue_oldest_job_age_seconds",
            &[("queue", "default")]
        ),
        0.0
    );
    assert_eq!(gauge("firelane_servers_alive", &[]), 1.0);
    assert_eq!(gauge("firelane_jobs", &[("state", "succeeded")]), 4.0);
    assert_eq!(gauge("firelane_jobs", &[("state", "failed")]), 1.0);
    assert_eq!(gauge("firelane_jobs", &[("state", "enqueued")]), 1.0);

    server.shutdown().await.expect("shutdown");
}
