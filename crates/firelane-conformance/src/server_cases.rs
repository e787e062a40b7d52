//! Server-level cases: a real [`Server`] and [`Client`] over the store under test.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Timelike, Utc};
use firelane::storage::FetchRequest;
use firelane::{
    CancelReason, Client, ContinueOn, Error, Job, JobContext, JobError, JobId, JobOptions,
    JobState, NewJob, Prefetch, Retention, Server, ServerBuilder, ServerId, Storage,
};
use serde::{Deserialize, Serialize};

use crate::support::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// What test jobs report back to the test.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    runs: Arc<Mutex<HashMap<String, u32>>>,
    order: Arc<Mutex<Vec<String>>>,
    cancel_reasons: Arc<Mutex<Vec<CancelReason>>>,
    started: Arc<AtomicUsize>,
}

impl Probe {
    fn record(&self, key: &str) {
        *self.runs.lock().unwrap().entry(key.to_owned()).or_default() += 1;
        self.order.lock().unwrap().push(key.to_owned());
    }

    fn runs(&self, key: &str) -> u32 {
        self.runs.lock().unwrap().get(key).copied().unwrap_or(0)
    }

    fn order(&self) -> Vec<String> {
        self.order.lock().unwrap().clone()
    }
}

/// What a test job should do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Act {
    Succeed(String),
    /// Fail with a retryable error until the attempt number reaches the value, then succeed.
    FailUntil(String, u32),
    FailForGood(String),
    SnoozeOnce(String, u64),
    Cancel(String),
    Panic(String),
    Sleep(String, u64),
    /// Wait for cancellation, record its reason, then return an error.
    AwaitCancel(String),
    /// Sleep this long ignoring cancellation.
    IgnoreCancel(String, u64),
}

#[derive(Debug)]
pub struct TestJob;

impl Job for TestJob {
    const NAME: &'static str = "conformance_test_job";
    type Args = Act;

    fn options() -> JobOptions {
        JobOptions::new().retry_delays([Duration::from_millis(10); 5])
    }

    fn required_state() -> Vec<firelane::StateType> {
        vec![firelane::StateType::of::<Probe>()]
    }

    async fn run(&self, ctx: JobContext, act: Act) -> Result<(), JobError> {
        let probe: Probe = ctx.state()?;
        probe.started.fetch_add(1, Ordering::SeqCst);
        match act {
            Act::Succeed(k) => probe.record(&k),
            Act::FailUntil(k, n) => {
                probe.record(&k);
                if ctx.attempt() < n {
                    return Err(
                        std::io::Error::other(format!("attempt {} failed", ctx.attempt())).into(),
                    );
                }
            }
            Act::FailForGood(k) => {
                probe.record(&k);
                return Err(JobError::fail("the account is closed"));
            }
            Act::SnoozeOnce(k, ms) => {
                probe.record(&k);
                if probe.runs(&k) == 1 {
                    return Err(JobError::snooze(Duration::from_millis(ms)));
                }
            }
            Act::Cancel(k) => {
                probe.record(&k);
                return Err(JobError::cancel("nothing left to do"));
            }
            Act::Panic(k) => {
                probe.record(&k);
                panic!("boom in {k}");
            }
            Act::Sleep(k, ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                probe.record(&k);
            }
            Act::AwaitCancel(k) => {
                ctx.cancellation().cancelled().await;
                probe
                    .cancel_reasons
                    .lock()
                    .unwrap()
                    .push(ctx.cancellation().reason().unwrap());
                probe.record(&k);
                return Err(JobError::retry("stopped on cancellation"));
            }
            Act::IgnoreCancel(k, ms) => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                probe.record(&k);
            }
        }
        Ok(())
    }
}

/// A job with a struct argument, to test arguments that no longer decode.
#[derive(Debug)]
pub struct Welcome;

#[derive(Debug, Serialize, Deserialize)]
pub struct WelcomeArgs {
    pub user_id: i64,
}

impl Job for Welcome {
    const NAME: &'static str = "conformance_welcome";
    type Args = WelcomeArgs;

    async fn run(&self, _: JobContext, _: WelcomeArgs) -> Result<(), JobError> {
        Ok(())
    }
}

fn builder(store: &Arc<dyn Storage>, probe: &Probe) -> ServerBuilder {
    Server::builder(Arc::clone(store))
        .register(TestJob)
        .register(Welcome)
        .state(probe.clone())
        .workers(4)
        .lease(Duration::from_secs(2))
        .heartbeat_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
        .shutdown_timeout(Duration::from_secs(5))
}

fn act(a: Act) -> firelane::JobRequest<TestJob> {
    TestJob::with_args(a)
}

async fn wait_state(client: &Client, id: JobId, state: JobState) -> firelane::JobDetails {
    eventually(&format!("job {id} to be {state}"), WAIT, || async {
        let d = client.job(id).await.unwrap();
        (d.job.state == state).then_some(d)
    })
    .await
}

fn history_states(d: &firelane::JobDetails) -> Vec<JobState> {
    d.history.iter().map(|h| h.state).collect()
}

/// A job runs once and its history shows enqueued, processing and succeeded, with the server
/// and the attempt's duration.
pub async fn runs_an_enqueued_job(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client.enqueue(act(Act::Succeed("a".into()))).await.unwrap();
    let d = wait_state(&client, id, JobState::Succeeded).await;
    assert_eq!(probe.runs("a"), 1);
    assert_eq!(
        history_states(&d),
        [
            JobState::Enqueued,
            JobState::Processing,
            JobState::Succeeded
        ]
    );
    let done = d.history.last().unwrap();
    assert_eq!(done.server.as_ref(), Some(server.id()));
    assert!(done.duration.is_some());
    assert_eq!(d.job.attempt, 1);
    server.shutdown().await.unwrap();
}

/// A failing job is retried by its policy and succeeds on a later attempt; each failed
/// attempt is in the history with its error.
pub async fn retries_until_success(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::FailUntil("f".into(), 3)))
        .await
        .unwrap();
    let d = wait_state(&client, id, JobState::Succeeded).await;
    assert_eq!(probe.runs("f"), 3);
    assert_eq!(d.job.attempt, 3);
    let errors: Vec<_> = d.history.iter().filter_map(|h| h.error.clone()).collect();
    assert_eq!(errors, ["attempt 1 failed", "attempt 2 failed"]);
    server.shutdown().await.unwrap();
}

/// When retries run out the job ends failed, with every attempt recorded.
pub async fn exhausted_retries_end_failed(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::FailUntil("x".into(), 100)).retry_delays([Duration::from_millis(5); 2]))
        .await
        .unwrap();
    let d = wait_state(&client, id, JobState::Failed).await;
    assert_eq!(probe.runs("x"), 3, "one attempt and two retries");
    assert_eq!(d.job.attempt, 3);
    assert_eq!(d.job.last_error.as_deref(), Some("attempt 3 failed"));
    let attempts_with_error = d.history.iter().filter(|h| h.error.is_some()).count();
    assert_eq!(attempts_with_error, 3);
    server.shutdown().await.unwrap();
}

/// `JobError::fail` fails at once, whatever the retry policy.
pub async fn fail_error_does_not_retry(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::FailForGood("g".into())))
        .await
        .unwrap();
    let d = wait_state(&client, id, JobState::Failed).await;
    assert_eq!(probe.runs("g"), 1);
    assert_eq!(d.job.last_error.as_deref(), Some("the account is closed"));
    server.shutdown().await.unwrap();
}

/// A snoozed job runs again later without the snooze counting as an attempt.
pub async fn snooze_does_not_count_an_attempt(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::SnoozeOnce("s".into(), 100)).retries(0))
        .await
        .unwrap();
    let d = wait_state(&client, id, JobState::Succeeded).await;
    assert_eq!(probe.runs("s"), 2);
    assert_eq!(d.job.attempt, 1, "the snoozed run is not counted");
    assert!(history_states(&d).contains(&JobState::Scheduled));
    server.shutdown().await.unwrap();
}

/// `JobError::cancel` ends the job deleted, with the reason.
pub async fn cancel_error_deletes_the_job(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client.enqueue(act(Act::Cancel("c".into()))).await.unwrap();
    let d = wait_state(&client, id, JobState::Deleted).await;
    assert_eq!(probe.runs("c"), 1);
    assert!(
        d.job
            .reason
            .unwrap_or_default()
            .contains("nothing left to do")
    );
    server.shutdown().await.unwrap();
}

/// A panic is a failed attempt with its message, and the server goes on running jobs.
pub async fn panic_is_a_failed_attempt(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::Panic("p".into())).retries(0))
        .await
        .unwrap();
    let d = wait_state(&client, id, JobState::Failed).await;
    let error = d.job.last_error.unwrap();
    assert!(
        error.contains("panicked") && error.contains("boom in p"),
        "{error}"
    );
    let after = client
        .enqueue(act(Act::Succeed("after".into())))
        .await
        .unwrap();
    wait_state(&client, after, JobState::Succeeded).await;
    assert_eq!(server.loop_restarts(), 0);
    server.shutdown().await.unwrap();
}

/// An attempt over its timeout is cancelled and counted as a failure that says so.
pub async fn timeout_is_a_failed_attempt(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(
            act(Act::Sleep("t".into(), 60_000))
                .timeout(Duration::from_millis(100))
                .retries(0),
        )
        .await
        .unwrap();
    let d = wait_state(&client, id, JobState::Failed).await;
    let error = d.job.last_error.unwrap();
    assert!(error.contains("timed out after 100ms"), "{error}");
    assert_eq!(probe.runs("t"), 0, "the job was stopped");
    server.shutdown().await.unwrap();
}

/// Arguments that no longer decode fail the job at once with a message naming the job and the
/// field; the job is kept, and can be requeued.
pub async fn undecodable_arguments_fail_with_the_field(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue_raw(NewJob::new(Welcome::NAME, r#"{"user_id":"not a number"}"#))
        .await
        .unwrap();
    let d = wait_state(&client, id, JobState::Failed).await;
    let error = d.job.last_error.unwrap();
    assert!(error.contains("conformance_welcome"), "{error}");
    assert!(error.contains("user_id"), "{error}");
    assert_eq!(
        d.job.attempt, 1,
        "no retries for arguments that cannot decode"
    );
    assert_eq!(
        d.job.args, r#"{"user_id":"not a number"}"#,
        "arguments kept"
    );

    let missing = client
        .enqueue_raw(NewJob::new(Welcome::NAME, r#"{"id":1}"#))
        .await
        .unwrap();
    let d = wait_state(&client, missing, JobState::Failed).await;
    assert!(
        d.job
            .last_error
            .unwrap()
            .contains("missing field `user_id`")
    );

    client.requeue(id).await.unwrap();
    let d = wait_state(&client, id, JobState::Failed).await;
    assert!(
        history_states(&d)
            .iter()
            .filter(|s| **s == JobState::Failed)
            .count()
            == 2
    );
    server.shutdown().await.unwrap();
}

/// A job whose name no server knows waits in its queue, untouched, until a server that knows
/// it starts.
pub async fn unknown_job_name_waits_for_a_server_that_knows_it(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let unknown = client
        .enqueue_raw(NewJob::new("conformance_later", "null"))
        .await
        .unwrap();
    let known = client.enqueue(act(Act::Succeed("k".into()))).await.unwrap();
    wait_state(&client, known, JobState::Succeeded).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = client.job(unknown).await.unwrap();
    assert_eq!(d.job.state, JobState::Enqueued);
    assert_eq!(d.job.attempt, 0);
    assert!(!client.has_server_for("conformance_later").await.unwrap());

    struct Later;
    impl Job for Later {
        const NAME: &'static str = "conformance_later";
        type Args = ();
        async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> {
            Ok(())
        }
    }
    let second = Server::builder(Arc::clone(&store))
        .register(Later)
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    assert!(client.has_server_for("conformance_later").await.unwrap());
    wait_state(&client, unknown, JobState::Succeeded).await;
    second.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

/// A delayed job waits for its time, then runs.
pub async fn delayed_job_runs_when_due(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let before = Utc::now();
    let id = client
        .schedule(act(Act::Succeed("d".into())), Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(client.job(id).await.unwrap().job.state, JobState::Scheduled);
    let d = wait_state(&client, id, JobState::Succeeded).await;
    let processing = d
        .history
        .iter()
        .find(|h| h.state == JobState::Processing)
        .unwrap();
    assert!(processing.at >= before + chrono::Duration::milliseconds(300));
    server.shutdown().await.unwrap();
}

/// The scheduler is woken by a new earlier job instead of waiting for its next poll: with
/// polling set to an hour, a job due in 200 ms still runs.
pub async fn scheduler_wakes_for_an_earlier_job(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe)
        .poll_interval(Duration::from_secs(3600))
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    client
        .schedule(act(Act::Succeed("late".into())), Duration::from_secs(3600))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let id = client
        .schedule(act(Act::Succeed("soon".into())), Duration::from_millis(200))
        .await
        .unwrap();
    wait_state(&client, id, JobState::Succeeded).await;
    assert_eq!(probe.runs("late"), 0);
    server.shutdown().await.unwrap();
}

/// Continuations run after their parent: a chain and a fan-out, and one waiting on failure.
pub async fn continuations_run_after_their_parent(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let mut batch = client.batch();
    let a = batch.enqueue(act(Act::Sleep("a".into(), 50))).unwrap();
    let b = batch
        .continue_with(a, act(Act::Succeed("b".into())), ContinueOn::Succeeded)
        .unwrap();
    let c = batch
        .continue_with(b, act(Act::Succeed("c".into())), ContinueOn::Succeeded)
        .unwrap();
    let fan: Vec<_> = (0..4)
        .map(|i| {
            batch
                .continue_with(
                    a,
                    act(Act::Succeed(format!("fan{i}"))),
                    ContinueOn::Succeeded,
                )
                .unwrap()
        })
        .collect();
    let on_fail = batch
        .continue_with(a, act(Act::Succeed("on_fail".into())), ContinueOn::Failed)
        .unwrap();
    batch.submit().await.unwrap();
    assert_eq!(client.job(b).await.unwrap().job.state, JobState::Awaiting);

    wait_state(&client, c, JobState::Succeeded).await;
    for f in fan {
        wait_state(&client, f, JobState::Succeeded).await;
    }
    let order = probe.order();
    let pos = |k: &str| order.iter().position(|o| o == k).unwrap();
    assert!(pos("a") < pos("b") && pos("b") < pos("c"), "{order:?}");
    let d = wait_state(&client, on_fail, JobState::Deleted).await;
    assert!(d.job.reason.is_some());
    assert_eq!(probe.runs("on_fail"), 0);
    let parent = client.job(a).await.unwrap();
    assert_eq!(parent.continuations.len(), 6);
    server.shutdown().await.unwrap();
}

/// Deleting a processing job fires its cancellation token with the reason, and the job ends
/// deleted; the late outcome of the stopped attempt changes nothing.
pub async fn deleting_a_processing_job_cancels_it(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::AwaitCancel("w".into())))
        .await
        .unwrap();
    wait_state(&client, id, JobState::Processing).await;
    client.delete(id).await.unwrap();
    eventually("the job to see its cancellation", WAIT, || async {
        (probe.runs("w") == 1).then_some(())
    })
    .await;
    assert_eq!(
        *probe.cancel_reasons.lock().unwrap(),
        [CancelReason::Deleted]
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let d = client.job(id).await.unwrap();
    assert_eq!(d.job.state, JobState::Deleted);
    assert!(
        !history_states(&d).contains(&JobState::Scheduled),
        "the stopped attempt's error was not recorded"
    );
    server.shutdown().await.unwrap();
}

/// A paused queue keeps its jobs enqueued while servers run; resuming it runs them at once.
pub async fn paused_queue_waits_until_resumed(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let client = Client::new(Arc::clone(&store));
    client.pause_queue("default").await.unwrap();
    let server = builder(&store, &probe).start().await.unwrap();
    let id = client
        .enqueue(act(Act::Succeed("paused".into())))
        .await
        .unwrap();
    // Several poll intervals and wake-ups pass: the job stays where it is.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(client.job(id).await.unwrap().job.state, JobState::Enqueued);
    assert_eq!(probe.runs("paused"), 0);
    assert!(client.pause_queue("Not A Queue").await.is_err());
    let started = std::time::Instant::now();
    client.resume_queue("default").await.unwrap();
    wait_state(&client, id, JobState::Succeeded).await;
    eprintln!("ran {:?} after the resume", started.elapsed());
    server.shutdown().await.unwrap();
}

/// `Client::cancel` stops a running job (it ends deleted with the reason given) and refuses a
/// job that is not running.
pub async fn cancel_stops_a_running_job(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::AwaitCancel("c".into())))
        .await
        .unwrap();
    wait_state(&client, id, JobState::Processing).await;
    client.cancel(id, "cancelled from a test").await.unwrap();
    eventually("the job to see its cancellation", WAIT, || async {
        (probe.runs("c") == 1).then_some(())
    })
    .await;
    assert_eq!(
        *probe.cancel_reasons.lock().unwrap(),
        [CancelReason::Deleted]
    );
    let d = client.job(id).await.unwrap();
    assert_eq!(d.job.state, JobState::Deleted);
    assert_eq!(d.job.reason.as_deref(), Some("cancelled from a test"));
    let done = client
        .enqueue(act(Act::Succeed("done".into())))
        .await
        .unwrap();
    wait_state(&client, done, JobState::Succeeded).await;
    assert!(matches!(
        client.cancel(done, "too late").await,
        Err(firelane::Error::Refused { .. })
    ));
    server.shutdown().await.unwrap();
}

/// Shutdown waits for a job that finishes within the timeout.
pub async fn shutdown_waits_for_running_jobs(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::IgnoreCancel("slow".into(), 300)))
        .await
        .unwrap();
    wait_state(&client, id, JobState::Processing).await;
    let report = server.shutdown().await.unwrap();
    assert_eq!(report.handed_back, 0);
    assert_eq!(client.job(id).await.unwrap().job.state, JobState::Succeeded);
    assert!(
        client.servers().await.unwrap().is_empty(),
        "the server unregistered"
    );
}

/// Shutdown hands back a job that does not finish in time, and one that stops on its
/// cancellation: both return to their queue without counting the attempt.
pub async fn shutdown_hands_back_unfinished_jobs(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe)
        .shutdown_timeout(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    let stubborn = client
        .enqueue(act(Act::IgnoreCancel("stubborn".into(), 60_000)))
        .await
        .unwrap();
    let polite = client
        .enqueue(act(Act::AwaitCancel("polite".into())))
        .await
        .unwrap();
    wait_state(&client, stubborn, JobState::Processing).await;
    wait_state(&client, polite, JobState::Processing).await;
    let report = server.shutdown().await.unwrap();
    assert_eq!(report.handed_back, 2);
    assert_eq!(
        *probe.cancel_reasons.lock().unwrap(),
        [CancelReason::Shutdown]
    );
    for id in [stubborn, polite] {
        let d = client.job(id).await.unwrap();
        assert_eq!(d.job.state, JobState::Enqueued, "{id}");
        assert_eq!(d.job.attempt, 0, "a handed-back attempt is not counted");
    }
}

/// Starts `server` (one worker), keeps its worker busy with a job that runs until it is
/// cancelled, and waits until that job has started: returns the server, a client and the busy
/// job's id (delete it to free the worker).
async fn with_busy_worker(
    store: &Arc<dyn Storage>,
    probe: &Probe,
    server: ServerBuilder,
) -> (Server, Client, JobId) {
    let server = server.workers(1).start().await.unwrap();
    let client = Client::new(Arc::clone(store));
    let blocker = client
        .enqueue(act(Act::AwaitCancel("blocker".into())))
        .await
        .unwrap();
    eventually("the blocker to start", WAIT, || async {
        (probe.started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    (server, client, blocker)
}

/// Jobs leased ahead of a busy worker wait without starting, keep their leases for longer than
/// a lease lasts, and are handed back at once by a shutdown, their attempt not counted.
pub async fn jobs_leased_ahead_wait_and_are_handed_back(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let (server, client, blocker) = with_busy_worker(
        &store,
        &probe,
        builder(&store, &probe)
            .prefetch(Prefetch::fixed(3))
            .lease(Duration::from_millis(500)),
    )
    .await;
    let ahead = client
        .enqueue_many((0..3).map(|i| act(Act::Succeed(format!("ahead{i}")))))
        .await
        .unwrap();
    for id in &ahead {
        wait_state(&client, *id, JobState::Processing).await;
    }
    // Three leases' time: the server's own watchdog would requeue a lapsed one.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for id in &ahead {
        let d = client.job(*id).await.unwrap();
        assert_eq!(d.job.state, JobState::Processing, "{id}");
        assert_eq!(d.job.attempt, 1, "{id} leased once");
    }
    assert_eq!(
        probe.started.load(Ordering::SeqCst),
        1,
        "only the blocker ran"
    );
    assert_eq!(server.running_jobs(), 1);
    let report = server.shutdown().await.unwrap();
    assert_eq!(report.handed_back, 4);
    assert_eq!(
        *probe.cancel_reasons.lock().unwrap(),
        [CancelReason::Shutdown],
        "only the blocker's handler saw a cancellation"
    );
    for id in &ahead {
        let d = client.job(*id).await.unwrap();
        assert_eq!(d.job.state, JobState::Enqueued, "{id}");
        assert_eq!(
            d.job.attempt, 0,
            "{id}: a handed-back attempt is not counted"
        );
    }
    assert_eq!(probe.started.load(Ordering::SeqCst), 1);
    assert_eq!(
        client.job(blocker).await.unwrap().job.state,
        JobState::Enqueued
    );
}

/// A shutdown hands back the jobs waiting for a worker as soon as it begins, even while the
/// fetcher is still inside a slow fetch and a worker comes free meanwhile.
pub async fn shutdown_during_a_slow_fetch_hands_back_waiting_jobs(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let flaky = FlakyStore::new(Arc::clone(&store));
    let slow: Arc<dyn Storage> = flaky.clone();
    let server = builder(&slow, &probe)
        .workers(1)
        .prefetch(Prefetch::fixed(3))
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    let busy = client
        .enqueue(act(Act::Sleep("busy".into(), 600)))
        .await
        .unwrap();
    eventually("the busy job to start", WAIT, || async {
        (probe.started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let ahead = client
        .enqueue_many((0..2).map(|i| act(Act::Succeed(format!("ahead{i}")))))
        .await
        .unwrap();
    for id in &ahead {
        wait_state(&client, *id, JobState::Processing).await;
    }
    // One lease slot is free: the next poll (every 50 ms) fetches, and takes 2 s.
    flaky.fetch_delay_ms.store(2000, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The busy job ends 400 ms into the shutdown, while the fetch still runs.
    let report = server.shutdown().await.unwrap();
    assert_eq!(
        probe.runs("ahead0") + probe.runs("ahead1"),
        0,
        "no waiting job started"
    );
    assert_eq!(report.handed_back, 2);
    assert_eq!(report.finished, 1);
    assert_eq!(
        client.job(busy).await.unwrap().job.state,
        JobState::Succeeded
    );
    for id in &ahead {
        let d = client.job(*id).await.unwrap();
        assert_eq!(d.job.state, JobState::Enqueued, "{id}");
        assert_eq!(d.job.attempt, 0, "{id}");
    }
}

/// A job deleted while it waits, leased ahead, for a worker never starts; the next one does.
pub async fn a_job_deleted_while_leased_ahead_never_starts(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let (server, client, blocker) = with_busy_worker(
        &store,
        &probe,
        builder(&store, &probe).prefetch(Prefetch::fixed(2)),
    )
    .await;
    let deleted = client
        .enqueue(act(Act::Succeed("deleted".into())))
        .await
        .unwrap();
    let kept = client
        .enqueue(act(Act::Succeed("kept".into())))
        .await
        .unwrap();
    wait_state(&client, deleted, JobState::Processing).await;
    wait_state(&client, kept, JobState::Processing).await;
    client.delete(deleted).await.unwrap();
    // Several heartbeats: the server learns of the revocation before a worker is free.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.delete(blocker).await.unwrap();
    wait_state(&client, kept, JobState::Succeeded).await;
    assert_eq!(probe.runs("kept"), 1);
    assert_eq!(probe.runs("deleted"), 0, "the deleted job never started");
    assert_eq!(
        client.job(deleted).await.unwrap().job.state,
        JobState::Deleted
    );
    let report = server.shutdown().await.unwrap();
    assert_eq!(report.handed_back, 0);
}

/// Jobs leased ahead start in the order they were fetched (priority, then arrival).
pub async fn jobs_leased_ahead_start_in_fetch_order(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let (server, client, blocker) = with_busy_worker(
        &store,
        &probe,
        builder(&store, &probe).prefetch(Prefetch::fixed(6)),
    )
    .await;
    let mut ids = client
        .enqueue_many((0..5).map(|i| act(Act::Succeed(format!("a{i}")))))
        .await
        .unwrap();
    for id in &ids {
        wait_state(&client, *id, JobState::Processing).await;
    }
    ids.push(
        client
            .enqueue(act(Act::Succeed("urgent".into())).priority(5))
            .await
            .unwrap(),
    );
    for id in &ids {
        wait_state(&client, *id, JobState::Processing).await;
    }
    client.delete(blocker).await.unwrap();
    for id in &ids {
        wait_state(&client, *id, JobState::Succeeded).await;
    }
    let order: Vec<String> = probe
        .order()
        .into_iter()
        .filter(|k| k != "blocker")
        .collect();
    // The urgent job was enqueued after the others were leased ahead: it waits its turn.
    assert_eq!(order, ["a0", "a1", "a2", "a3", "a4", "urgent"]);
    server.shutdown().await.unwrap();
}

/// A paced server (the default) leases nothing ahead while its jobs are slow: every job it
/// holds is one a worker runs, and the others wait in the queue for any server.
pub async fn a_paced_server_leases_nothing_ahead_of_slow_jobs(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let (server, client, blocker) = with_busy_worker(&store, &probe, builder(&store, &probe)).await;
    // Each enqueue wakes the server; several poll intervals pass too.
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            client
                .enqueue(act(Act::Succeed(format!("slow{i}"))))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in &ids {
        assert_eq!(
            client.job(*id).await.unwrap().job.state,
            JobState::Enqueued,
            "{id} was leased while the only worker was busy"
        );
    }
    client.delete(blocker).await.unwrap();
    for id in &ids {
        wait_state(&client, *id, JobState::Succeeded).await;
    }
    server.shutdown().await.unwrap();
}

/// Queues are served in the order given, and higher priority first within a queue.
pub async fn queue_and_priority_order(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let client = Client::new(Arc::clone(&store));
    client
        .enqueue(act(Act::Succeed("default-low".into())))
        .await
        .unwrap();
    client
        .enqueue(act(Act::Succeed("default-high".into())).priority(5))
        .await
        .unwrap();
    client
        .enqueue(act(Act::Succeed("critical".into())).queue("critical"))
        .await
        .unwrap();
    let server = builder(&store, &probe)
        .workers(1)
        .queues(["critical", "default"])
        .start()
        .await
        .unwrap();
    eventually("three jobs", WAIT, || async {
        (probe.order().len() == 3).then_some(())
    })
    .await;
    assert_eq!(probe.order(), ["critical", "default-high", "default-low"]);
    server.shutdown().await.unwrap();
}

/// Two servers share a queue, one of them leasing jobs ahead: every job runs exactly once.
pub async fn two_servers_run_each_job_once(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let a = builder(&store, &probe).start().await.unwrap();
    let b = builder(&store, &probe)
        .prefetch(Prefetch::fixed(16))
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    client
        .enqueue_many((0..500).map(|i| act(Act::Succeed(format!("j{i}")))))
        .await
        .unwrap();
    eventually("500 jobs to succeed", WAIT, || async {
        (client.stats().await.unwrap().count(JobState::Succeeded) == 500).then_some(())
    })
    .await;
    for i in 0..500 {
        assert_eq!(probe.runs(&format!("j{i}")), 1, "job j{i}");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A job held by a server that died (its lease lapses) is run by another server.
pub async fn watchdog_recovers_a_dead_servers_job(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::Succeed("orphan".into())))
        .await
        .unwrap();
    // A server that fetches the job and dies at once, without heartbeats.
    let dead = ServerId::from_string("dead-host:1:deadbeef".into());
    let fetched = store
        .fetch(FetchRequest::new(
            dead,
            vec!["default".into()],
            1,
            Utc::now(),
            Duration::from_millis(300),
        ))
        .await
        .unwrap();
    assert_eq!(fetched.len(), 1);
    let server = builder(&store, &probe)
        .watchdog_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let d = wait_state(&client, id, JobState::Succeeded).await;
    assert_eq!(probe.runs("orphan"), 1);
    assert_eq!(d.job.attempt, 2, "the lost attempt counts");
    server.shutdown().await.unwrap();
}

/// Application state given to the builder reaches jobs; a job needing state the server lacks
/// stops the server from starting.
pub async fn state_is_injected_and_checked(store: Arc<dyn Storage>) {
    let err = Server::builder(Arc::clone(&store))
        .register(TestJob)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("Probe")),
        "{err}"
    );
    runs_an_enqueued_job(store).await;
}

/// A builder with bad settings is an error at start, naming the setting.
pub async fn builder_refuses_bad_settings(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let cases: Vec<(ServerBuilder, &str)> = vec![
        (builder(&store, &probe).workers(0), "worker"),
        (
            builder(&store, &probe).queues(Vec::<String>::new()),
            "queue",
        ),
        (builder(&store, &probe).queues(["Bad Queue"]), "Bad Queue"),
        (builder(&store, &probe).queues(["a", "a"]), "twice"),
        (
            builder(&store, &probe)
                .lease(Duration::from_secs(1))
                .heartbeat_interval(Duration::from_secs(1)),
            "heartbeat",
        ),
        (Server::builder(Arc::clone(&store)), "no job is registered"),
        (
            builder(&store, &probe).register(TestJob),
            "registered under the name",
        ),
        (
            builder(&store, &probe).prefetch(Prefetch::fixed(100_001)),
            "prefetch",
        ),
    ];
    for (b, needle) in cases {
        let err = b.start().await.unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "expected {needle:?} in: {err}"
        );
    }
    assert!(
        Client::new(Arc::clone(&store))
            .servers()
            .await
            .unwrap()
            .is_empty()
    );
}

/// Arguments over the payload limit are refused at enqueue, and nothing is stored.
pub async fn oversized_payload_is_refused(store: Arc<dyn Storage>) {
    let client = Client::new(Arc::clone(&store)).max_payload(1024);
    let err = client
        .enqueue(act(Act::Succeed("x".repeat(2000))))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PayloadTooLarge { limit: 1024, .. }),
        "{err}"
    );
    let default_client = Client::new(Arc::clone(&store));
    let err = default_client
        .enqueue(act(Act::Succeed("x".repeat(1024 * 1024 + 1))))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err}");
    assert_eq!(
        client.stats().await.unwrap().states.values().sum::<u64>(),
        0
    );
}

/// Finished jobs are removed after their retention; failed ones are kept.
pub async fn expiration_removes_finished_jobs(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe)
        .retention(Retention::new(
            Some(Duration::ZERO),
            Some(Duration::ZERO),
            None,
        ))
        .expiration_interval(Duration::from_millis(50))
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    let ok = client.enqueue(act(Act::Succeed("e".into()))).await.unwrap();
    let failed = client
        .enqueue(act(Act::FailForGood("f".into())))
        .await
        .unwrap();
    eventually("the succeeded job to expire", WAIT, || async {
        matches!(client.job(ok).await, Err(Error::JobNotFound(_))).then_some(())
    })
    .await;
    wait_state(&client, failed, JobState::Failed).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        client.job(failed).await.unwrap().job.state,
        JobState::Failed
    );
    server.shutdown().await.unwrap();
}

/// Many jobs through many workers: every one succeeds once, and attempts are counted once.
pub async fn many_jobs_drain_exactly_once(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe).workers(16).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    client
        .enqueue_many((0..2000).map(|i| act(Act::Succeed(format!("m{i}")))))
        .await
        .unwrap();
    eventually("2000 jobs to succeed", WAIT, || async {
        (client.stats().await.unwrap().count(JobState::Succeeded) == 2000).then_some(())
    })
    .await;
    for i in 0..2000 {
        assert_eq!(probe.runs(&format!("m{i}")), 1);
    }
    assert_eq!(probe.started.load(Ordering::SeqCst), 2000);
    server.shutdown().await.unwrap();
}

/// A store that fails on command: the real store underneath, with outages switched on and off
/// by the test. The thing under test is the server, not the store.
#[derive(Debug)]
pub struct FlakyStore {
    inner: Arc<dyn Storage>,
    /// Every call fails while set.
    pub down: std::sync::atomic::AtomicBool,
    /// Only `complete` fails while set.
    pub completions_down: std::sync::atomic::AtomicBool,
    /// Each `fetch` answers this many milliseconds late (a slow store).
    pub fetch_delay_ms: std::sync::atomic::AtomicU64,
}

impl FlakyStore {
    pub fn new(inner: Arc<dyn Storage>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            down: false.into(),
            completions_down: false.into(),
            fetch_delay_ms: 0.into(),
        })
    }

    fn check(&self, op: &'static str) -> firelane::Result<()> {
        if self.down.load(Ordering::SeqCst) {
            return Err(Error::backend(
                op,
                std::io::Error::other("store unreachable (injected)"),
            ));
        }
        Ok(())
    }
}

#[firelane_core::async_trait]
impl Storage for FlakyStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn enqueue(
        &self,
        jobs: Vec<NewJob>,
        now: chrono::DateTime<Utc>,
    ) -> firelane::Result<Vec<firelane::storage::Enqueued>> {
        self.check("enqueue")?;
        self.inner.enqueue(jobs, now).await
    }
    async fn fetch(&self, r: FetchRequest) -> firelane::Result<Vec<firelane::storage::FetchedJob>> {
        self.check("fetch")?;
        let jobs = self.inner.fetch(r).await;
        let delay = self.fetch_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        jobs
    }
    async fn complete(
        &self,
        c: Vec<firelane::storage::Completion>,
    ) -> firelane::Result<Vec<firelane::storage::CompletionStatus>> {
        self.check("complete")?;
        if self.completions_down.load(Ordering::SeqCst) {
            return Err(Error::backend(
                "complete",
                std::io::Error::other("injected"),
            ));
        }
        self.inner.complete(c).await
    }
    async fn heartbeat(
        &self,
        h: firelane::storage::Heartbeat,
    ) -> firelane::Result<firelane::storage::HeartbeatReply> {
        self.check("heartbeat")?;
        self.inner.heartbeat(h).await
    }
    async fn remove_server(&self, s: &ServerId) -> firelane::Result<()> {
        self.check("remove_server")?;
        self.inner.remove_server(s).await
    }
    async fn promote_due(
        &self,
        now: chrono::DateTime<Utc>,
        limit: usize,
    ) -> firelane::Result<firelane::storage::Promotion> {
        self.check("promote_due")?;
        self.inner.promote_due(now, limit).await
    }
    async fn recover(
        &self,
        now: chrono::DateTime<Utc>,
        dead_after: Duration,
    ) -> firelane::Result<firelane::storage::Recovery> {
        self.check("recover")?;
        self.inner.recover(now, dead_after).await
    }
    async fn expire(
        &self,
        now: chrono::DateTime<Utc>,
        r: Retention,
        limit: usize,
    ) -> firelane::Result<u64> {
        self.check("expire")?;
        self.inner.expire(now, r, limit).await
    }
    async fn delete(
        &self,
        ids: &[JobId],
        reason: &str,
        now: chrono::DateTime<Utc>,
    ) -> firelane::Result<Vec<firelane::Change>> {
        self.check("delete")?;
        self.inner.delete(ids, reason, now).await
    }
    async fn requeue(
        &self,
        ids: &[JobId],
        reason: &str,
        now: chrono::DateTime<Utc>,
    ) -> firelane::Result<Vec<firelane::Change>> {
        self.check("requeue")?;
        self.inner.requeue(ids, reason, now).await
    }
    async fn job(&self, id: JobId) -> firelane::Result<Option<firelane::JobDetails>> {
        self.check("job")?;
        self.inner.job(id).await
    }
    async fn list_jobs(&self, q: firelane::JobQuery) -> firelane::Result<Vec<firelane::JobRecord>> {
        self.check("list_jobs")?;
        self.inner.list_jobs(q).await
    }
    async fn stats(&self) -> firelane::Result<firelane::Stats> {
        self.check("stats")?;
        self.inner.stats().await
    }
    async fn servers(&self) -> firelane::Result<Vec<firelane::ServerRecord>> {
        self.check("servers")?;
        self.inner.servers().await
    }
    async fn stats_history(
        &self,
        from: chrono::DateTime<Utc>,
        to: chrono::DateTime<Utc>,
    ) -> firelane::Result<Vec<firelane::HourlyStats>> {
        self.check("stats_history")?;
        self.inner.stats_history(from, to).await
    }
    async fn set_queue_paused(
        &self,
        queue: &str,
        paused: bool,
        now: chrono::DateTime<Utc>,
    ) -> firelane::Result<()> {
        self.check("set_queue_paused")?;
        self.inner.set_queue_paused(queue, paused, now).await
    }
    async fn upsert_recurring(
        &self,
        def: firelane::storage::RecurringDef,
        next_run: Option<chrono::DateTime<Utc>>,
        now: chrono::DateTime<Utc>,
    ) -> firelane::Result<()> {
        self.check("upsert_recurring")?;
        self.inner.upsert_recurring(def, next_run, now).await
    }
    async fn remove_recurring(&self, id: &str) -> firelane::Result<bool> {
        self.check("remove_recurring")?;
        self.inner.remove_recurring(id).await
    }
    async fn recurring(&self, id: &str) -> firelane::Result<Option<firelane::RecurringRecord>> {
        self.check("recurring")?;
        self.inner.recurring(id).await
    }
    async fn list_recurring(&self) -> firelane::Result<Vec<firelane::RecurringRecord>> {
        self.check("list_recurring")?;
        self.inner.list_recurring().await
    }
    async fn set_recurring_paused(
        &self,
        id: &str,
        paused: bool,
        next_run: Option<chrono::DateTime<Utc>>,
        now: chrono::DateTime<Utc>,
    ) -> firelane::Result<bool> {
        self.check("set_recurring_paused")?;
        self.inner
            .set_recurring_paused(id, paused, next_run, now)
            .await
    }
    async fn fire_recurring(&self, firing: firelane::storage::Firing) -> firelane::Result<bool> {
        self.check("fire_recurring")?;
        self.inner.fire_recurring(firing).await
    }
    async fn trigger_recurring(
        &self,
        id: &str,
        now: chrono::DateTime<Utc>,
    ) -> firelane::Result<JobId> {
        self.check("trigger_recurring")?;
        self.inner.trigger_recurring(id, now).await
    }
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<firelane::storage::Signal> {
        self.inner.subscribe()
    }
}

/// The store goes away while jobs run: the server backs off, keeps its jobs, and once the store
/// is back every job succeeds exactly once; enqueues during the outage return an error.
pub async fn store_outage_mid_flight_loses_nothing(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let flaky = FlakyStore::new(Arc::clone(&store));
    let flaky_dyn: Arc<dyn Storage> = flaky.clone();
    let server = builder(&flaky_dyn, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    client
        .enqueue_many((0..60).map(|i| act(Act::Sleep(format!("o{i}"), 20))))
        .await
        .unwrap();
    eventually("some progress", WAIT, || async {
        (probe.order().len() >= 5).then_some(())
    })
    .await;
    flaky.down.store(true, Ordering::SeqCst);
    let err = Client::new(Arc::clone(&flaky_dyn))
        .enqueue(act(Act::Succeed("during".into())))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("store unreachable"), "{err}");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    flaky.down.store(false, Ordering::SeqCst);
    eventually("60 jobs to succeed", WAIT, || async {
        (client.stats().await.unwrap().count(JobState::Succeeded) == 60).then_some(())
    })
    .await;
    for i in 0..60 {
        assert_eq!(probe.runs(&format!("o{i}")), 1, "job o{i}");
    }
    assert_eq!(probe.runs("during"), 0);
    server.shutdown().await.unwrap();
}

/// Outcomes that cannot be written keep their leases alive through heartbeats, so that an
/// outage of the writes longer than the lease does not make another server run the job again.
pub async fn unwritten_outcomes_keep_their_lease(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let flaky = FlakyStore::new(Arc::clone(&store));
    let flaky_dyn: Arc<dyn Storage> = flaky.clone();
    flaky.completions_down.store(true, Ordering::SeqCst);
    let server = builder(&flaky_dyn, &probe)
        .lease(Duration::from_millis(500))
        .heartbeat_interval(Duration::from_millis(100))
        .watchdog_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    let id = client
        .enqueue(act(Act::Succeed("once".into())))
        .await
        .unwrap();
    eventually("the job to run", WAIT, || async {
        (probe.runs("once") == 1).then_some(())
    })
    .await;
    // Three leases long: without the heartbeat covering it, the watchdog would re-enqueue it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        client.job(id).await.unwrap().job.state,
        JobState::Processing
    );
    flaky.completions_down.store(false, Ordering::SeqCst);
    let d = wait_state(&client, id, JobState::Succeeded).await;
    assert_eq!(probe.runs("once"), 1);
    assert_eq!(d.job.attempt, 1);
    server.shutdown().await.unwrap();
}

fn recurring_def(id: &str, cron: &str, job: NewJob) -> firelane::storage::RecurringDef {
    firelane::storage::RecurringDef::new(
        id,
        firelane::CronSchedule::parse(cron, "UTC").unwrap(),
        firelane::storage::JobTemplate::from_job(&job),
    )
    .unwrap()
}

fn test_job_args(a: &Act) -> String {
    serde_json::to_string(a).unwrap()
}

async fn jobs_named(client: &Client, name: &str) -> Vec<firelane::JobRecord> {
    client
        .list(firelane::JobQuery::new().name(name).page(0, 10_000))
        .await
        .unwrap()
}

/// A recurring job fires once per occurrence, however many servers run it and even when a
/// server stops and another starts at the moment of firing.
pub async fn recurring_fires_each_occurrence_once_across_servers(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let a = builder(&store, &probe).start().await.unwrap();
    let b = builder(&store, &probe).start().await.unwrap();
    let c = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    client
        .recurring("every-second")
        .cron("* * * * * *")
        .upsert(act(Act::Succeed("tick".into())))
        .await
        .unwrap();
    let started = Utc::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // A server stops and another starts while occurrences keep coming.
    let report = c.shutdown().await.unwrap();
    assert_eq!(report.handed_back, 0);
    let d = builder(&store, &probe).start().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2000)).await;
    client.pause_recurring("every-second").await.unwrap();
    let ended = Utc::now();
    let jobs = jobs_named(&client, TestJob::NAME).await;
    let mut seconds: Vec<i64> = jobs.iter().map(|j| j.created_at.timestamp()).collect();
    seconds.sort_unstable();
    let before = seconds.len();
    seconds.dedup();
    assert_eq!(
        before,
        seconds.len(),
        "two jobs for one occurrence: {seconds:?}"
    );
    let span = (ended - started).num_seconds();
    assert!(
        seconds.len() as i64 >= span - 1 && seconds.len() as i64 <= span + 1,
        "{} jobs over {span} s",
        seconds.len()
    );
    let lateness: Vec<i64> = jobs
        .iter()
        .map(|j| j.created_at.timestamp_subsec_millis() as i64)
        .collect();
    eprintln!("recurring firing lateness after the occurrence, ms: {lateness:?}");
    for s in [a, b, d] {
        s.shutdown().await.unwrap();
    }
}

/// Occurrences missed while no server ran follow the job's misfire policy: one job for all of
/// them, none, or one each (bounded).
pub async fn recurring_misfire_policies(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let now = Utc::now();
    // As if every server had been down for five hours: the hourly job waited since then.
    let five_hours_ago = now - chrono::Duration::hours(5);
    let args = test_job_args(&Act::Succeed("missed".into()));
    // Hourly, half an hour away from now: the latest occurrence is never within the grace
    // period (a minute), in which it would count as on time rather than missed.
    let hourly = format!("{} * * * *", (now.minute() + 30) % 60);
    for (id, misfire) in [
        ("once", firelane::Misfire::FireOnce),
        ("skip", firelane::Misfire::Skip),
        ("each", firelane::Misfire::FireEach { max: 3 }),
    ] {
        let mut def = recurring_def(id, &hourly, NewJob::new(TestJob::NAME, args.clone()));
        def.misfire = misfire;
        store
            .upsert_recurring(def, Some(five_hours_ago), now)
            .await
            .unwrap();
    }
    let server = builder(&store, &probe).start().await.unwrap();
    let client = Client::new(Arc::clone(&store));
    eventually(
        "all three to be past their missed occurrences",
        WAIT,
        || async {
            let all = client.recurring_jobs().await.unwrap();
            all.iter()
                .all(|v| v.record.next_run.is_some_and(|n| n > now))
                .then_some(())
        },
    )
    .await;
    let created = |id: &'static str| {
        let client = client.clone();
        async move { client.recurring_job(id).await.unwrap() }
    };
    assert!(created("once").await.record.last_job.is_some());
    assert!(
        created("skip").await.record.last_job.is_none(),
        "skip creates nothing"
    );
    assert!(created("each").await.record.last_job.is_some());
    let total = jobs_named(&client, TestJob::NAME).await.len();
    assert_eq!(
        total,
        1 + 3,
        "one for fire-once, three (the bound) for fire-each"
    );
    server.shutdown().await.unwrap();
}

/// With every server stopped across several occurrences, the first server to start fires the
/// missed ones by the policy (here: one job each).
pub async fn recurring_missed_while_all_servers_stopped(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let client = Client::new(Arc::clone(&store));
    client
        .recurring("each-second")
        .cron("* * * * * *")
        .misfire(firelane::Misfire::FireEach { max: 100 })
        .upsert(act(Act::Succeed("e".into())))
        .await
        .unwrap();
    let a = builder(&store, &probe)
        .misfire_grace(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    a.shutdown().await.unwrap();
    let before = jobs_named(&client, TestJob::NAME).await.len();
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let b = builder(&store, &probe)
        .misfire_grace(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let first_firing = eventually("the first firing after the restart", WAIT, || async {
        let n = jobs_named(&client, TestJob::NAME).await.len();
        (n > before).then_some(n - before)
    })
    .await;
    assert!(
        first_firing >= 2,
        "missed occurrences each fired: {first_firing}"
    );
    client.remove_recurring("each-second").await.unwrap();
    b.shutdown().await.unwrap();
}

/// A recurring job whose job type no server has any more is disabled with an error that says
/// so, and a job whose stored arguments no longer decode likewise; the others keep firing.
pub async fn recurring_that_cannot_load_is_disabled_and_others_fire(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let now = Utc::now();
    let due = Some(now);
    store
        .upsert_recurring(
            recurring_def(
                "gone",
                "* * * * * *",
                NewJob::new("removed_job_type", "null"),
            ),
            due,
            now,
        )
        .await
        .unwrap();
    store
        .upsert_recurring(
            recurring_def(
                "stale-args",
                "* * * * * *",
                NewJob::new(Welcome::NAME, r#"{"id":1}"#),
            ),
            due,
            now,
        )
        .await
        .unwrap();
    let ok_args = test_job_args(&Act::Succeed("alive".into()));
    store
        .upsert_recurring(
            recurring_def("alive", "* * * * * *", NewJob::new(TestJob::NAME, ok_args)),
            due,
            now,
        )
        .await
        .unwrap();
    // A job type missing from every server counts as removed once that lasted longer than a
    // silent server is given (here 300 ms): a deploy's restart does not disable it.
    let server = builder(&store, &probe)
        .dead_after(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    eventually("the live recurring job to fire twice", WAIT, || async {
        (probe.runs("alive") >= 2).then_some(())
    })
    .await;
    let gone = eventually(
        "the removed job type's recurring job to be disabled",
        WAIT,
        || async {
            let r = client.recurring_job("gone").await.unwrap().record;
            r.next_run.is_none().then_some(r)
        },
    )
    .await;
    let error = gone.last_error.unwrap_or_default();
    assert!(
        error.contains("no running server registers job `removed_job_type`"),
        "{error}"
    );
    assert_eq!(gone.next_run, None, "disabled");
    let stale = client.recurring_job("stale-args").await.unwrap().record;
    assert!(stale.last_error.unwrap_or_default().contains("user_id"));
    assert_eq!(stale.next_run, None);
    assert!(jobs_named(&client, "removed_job_type").await.is_empty());
    // Resumed while no server runs, it waits for its next occurrence again; once a server
    // runs, its still stale arguments disable it again, and the error stays visible.
    server.shutdown().await.unwrap();
    client.resume_recurring("stale-args").await.unwrap();
    let resumed = client.recurring_job("stale-args").await.unwrap().record;
    assert!(resumed.next_run.is_some(), "resume sets the next run");
    let server = builder(&store, &probe)
        .dead_after(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    eventually("the stale job to be disabled again", WAIT, || async {
        let r = client.recurring_job("stale-args").await.unwrap().record;
        (r.next_run.is_none() && r.last_error.is_some() && r.last_job.is_none()).then_some(())
    })
    .await;
    server.shutdown().await.unwrap();
}

/// Recurring jobs declared on the server builder are stored at start; bad declarations stop the
/// start with an error naming the field; undeclared ones are removed only when asked.
pub async fn recurring_declared_at_server_start(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let client = Client::new(Arc::clone(&store));
    client
        .recurring("old")
        .cron("0 3 * * *")
        .upsert(act(Act::Succeed("old".into())))
        .await
        .unwrap();
    let err = builder(&store, &probe)
        .recurring(firelane::Recurring::new(
            "bad",
            "61 * * * *",
            act(Act::Succeed("b".into())),
        ))
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("field 1 (minute)"), "{err}");
    let err = builder(&store, &probe)
        .recurring(
            firelane::Recurring::new("bad-tz", "0 3 * * *", act(Act::Succeed("b".into())))
                .tz("Mars/Base"),
        )
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Mars/Base"), "{err}");
    assert_eq!(
        client.recurring_jobs().await.unwrap().len(),
        1,
        "nothing stored by failed starts"
    );

    let server = builder(&store, &probe)
        .recurring(
            firelane::Recurring::new("nightly", "0 3 * * *", act(Act::Succeed("n".into())))
                .tz("Europe/Istanbul"),
        )
        .start()
        .await
        .unwrap();
    let ids: Vec<String> = client
        .recurring_jobs()
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.record.id)
        .collect();
    assert_eq!(ids, ["nightly", "old"]);
    server.shutdown().await.unwrap();
    let server = builder(&store, &probe)
        .recurring(
            firelane::Recurring::new("nightly", "0 4 * * *", act(Act::Succeed("n".into())))
                .tz("Europe/Istanbul"),
        )
        .remove_undeclared_recurring(true)
        .start()
        .await
        .unwrap();
    let all = client.recurring_jobs().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].record.cron, "0 4 * * *",
        "a deploy updates the schedule"
    );
    assert_eq!(all[0].record.time_zone, "Europe/Istanbul");
    server.shutdown().await.unwrap();
}

/// The client's recurring API: bad input refused with the field named; trigger runs a job
/// without moving the schedule; pause stops firing; resume starts again.
pub async fn recurring_client_api(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let client = Client::new(Arc::clone(&store));
    let err = client
        .recurring("r")
        .cron("0 0 * * MOON")
        .upsert(act(Act::Succeed("x".into())))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidCron { .. }) && err.to_string().contains("day-of-week"),
        "{err}"
    );
    let err = client
        .recurring("r")
        .cron("0 3 * * *")
        .tz("Europe/Instanbul")
        .upsert(act(Act::Succeed("x".into())))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTimeZone { .. }), "{err}");
    let err = client
        .recurring("r")
        .upsert(act(Act::Succeed("x".into())))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(".cron("), "{err}");
    let err = client
        .recurring("")
        .cron("0 3 * * *")
        .upsert(act(Act::Succeed("x".into())))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRecurringId(_)), "{err}");
    assert!(client.recurring_jobs().await.unwrap().is_empty());
    assert!(matches!(
        client.trigger("nope").await,
        Err(Error::RecurringNotFound(_))
    ));
    assert!(matches!(
        client.pause_recurring("nope").await,
        Err(Error::RecurringNotFound(_))
    ));

    let server = builder(&store, &probe).start().await.unwrap();
    client
        .recurring("yearly")
        .cron("0 0 1 1 *")
        .upsert(act(Act::Succeed("yearly".into())))
        .await
        .unwrap();
    let next = client
        .recurring_job("yearly")
        .await
        .unwrap()
        .record
        .next_run;
    let id = client.trigger("yearly").await.unwrap();
    wait_state(&client, id, JobState::Succeeded).await;
    let view = client.recurring_job("yearly").await.unwrap();
    assert_eq!(
        view.record.next_run, next,
        "trigger does not move the schedule"
    );
    assert_eq!(view.record.last_job, Some(id));
    assert_eq!(view.last_job_state, Some(JobState::Succeeded));

    client
        .recurring("fast")
        .cron("* * * * * *")
        .upsert(act(Act::Succeed("fast".into())))
        .await
        .unwrap();
    eventually("a firing", WAIT, || async {
        (probe.runs("fast") >= 1).then_some(())
    })
    .await;
    client.pause_recurring("fast").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused_at = probe.runs("fast");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(probe.runs("fast"), paused_at, "a paused job does not fire");
    client.resume_recurring("fast").await.unwrap();
    eventually("firing again", WAIT, || async {
        (probe.runs("fast") > paused_at).then_some(())
    })
    .await;
    server.shutdown().await.unwrap();
}

/// A running job requeued by a person and fetched again by the same server: the old run is
/// told to stop, the new run keeps its lease through heartbeats, and the job runs exactly twice
/// (the old run's late outcome changes nothing).
pub async fn requeued_running_job_on_the_same_server_runs_twice(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let server = builder(&store, &probe)
        .lease(Duration::from_millis(400))
        .heartbeat_interval(Duration::from_millis(100))
        .watchdog_interval(Duration::from_millis(100))
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    // Ignores cancellation and outlives several leases.
    let id = client
        .enqueue(act(Act::IgnoreCancel("long".into(), 1500)))
        .await
        .unwrap();
    wait_state(&client, id, JobState::Processing).await;
    // Late in the first run, so that the second outlives it by more than a lease.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    client.requeue(id).await.unwrap();
    let d = wait_state(&client, id, JobState::Succeeded).await;
    assert_eq!(probe.started.load(Ordering::SeqCst), 2, "exactly two runs");
    let lapses = d
        .history
        .iter()
        .filter(|h| h.reason.as_deref().unwrap_or_default().contains("lapsed"))
        .count();
    assert_eq!(lapses, 0, "no lease lapsed: {:#?}", d.history);
    server.shutdown().await.unwrap();
}

/// Absurd durations are refused with an error, not a panic: a delay past the end of time, a
/// snooze of `Duration::MAX` (runs "never", the job waits scheduled), builder settings over a
/// year.
pub async fn absurd_durations_are_errors_not_panics(store: Arc<dyn Storage>) {
    let probe = Probe::default();
    let client = Client::new(Arc::clone(&store));
    let err = client
        .schedule(act(Act::Succeed("x".into())), Duration::MAX)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("too long"), "{err}");
    let err = builder(&store, &probe)
        .poll_interval(Duration::MAX)
        .start()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("poll interval"), "{err}");
    let server = builder(&store, &probe).start().await.unwrap();
    let id = client
        .enqueue(act(Act::SnoozeOnce("forever".into(), u64::MAX)))
        .await
        .unwrap();
    let d = wait_state(&client, id, JobState::Scheduled).await;
    assert!(d.job.due_at.unwrap() > Utc::now() + chrono::Duration::days(365 * 1000));
    assert_eq!(server.loop_restarts(), 0);
    server.shutdown().await.unwrap();
}

/// Generates one test per server case for a store factory.
#[macro_export]
macro_rules! server_suite {
    ($factory:path) => {
        $crate::server_suite!(@cases $factory;
            runs_an_enqueued_job,
            retries_until_success,
            exhausted_retries_end_failed,
            fail_error_does_not_retry,
            snooze_does_not_count_an_attempt,
            cancel_error_deletes_the_job,
            panic_is_a_failed_attempt,
            timeout_is_a_failed_attempt,
            undecodable_arguments_fail_with_the_field,
            unknown_job_name_waits_for_a_server_that_knows_it,
            delayed_job_runs_when_due,
            scheduler_wakes_for_an_earlier_job,
            continuations_run_after_their_parent,
            deleting_a_processing_job_cancels_it,
            shutdown_waits_for_running_jobs,
            shutdown_hands_back_unfinished_jobs,
            queue_and_priority_order,
            two_servers_run_each_job_once,
            jobs_leased_ahead_wait_and_are_handed_back,
            a_job_deleted_while_leased_ahead_never_starts,
            jobs_leased_ahead_start_in_fetch_order,
            a_paced_server_leases_nothing_ahead_of_slow_jobs,
            shutdown_during_a_slow_fetch_hands_back_waiting_jobs,
            watchdog_recovers_a_dead_servers_job,
            state_is_injected_and_checked,
            builder_refuses_bad_settings,
            oversized_payload_is_refused,
            expiration_removes_finished_jobs,
            many_jobs_drain_exactly_once,
            store_outage_mid_flight_loses_nothing,
            unwritten_outcomes_keep_their_lease,
            recurring_fires_each_occurrence_once_across_servers,
            recurring_misfire_policies,
            recurring_missed_while_all_servers_stopped,
            recurring_that_cannot_load_is_disabled_and_others_fire,
            recurring_declared_at_server_start,
            recurring_client_api,
            requeued_running_job_on_the_same_server_runs_twice,
            absurd_durations_are_errors_not_panics,
            paused_queue_waits_until_resumed,
            cancel_stops_a_running_job,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::support::init_tracing();
                let Some(store) = $crate::support::MaybeStore::into_store($factory().await) else {
                    return;
                };
                $crate::server_cases::$case(store).await;
            }
        )*
    };
}
