//! Jobs declared with `#[firelane::job]`, run by a real server over an in-memory SQLite store.
#![cfg(all(feature = "macros", feature = "sqlite"))]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use firelane::prelude::*;
use firelane::{CancelReason, Error, FromContext, JobDetails, NewJob, RetryPolicy, SqliteStorage};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// What the jobs saw, shared with the test through the server's state.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A second kind of state, to check that each parameter gets its own.
#[derive(Clone)]
struct Greeting(&'static str);

#[firelane::job(queue = "emails", retries = 5)]
async fn send_welcome_email(
    user_id: i64,
    name: String,
    State(log): State<Log>,
    greeting: State<Greeting>,
    ctx: JobContext,
) -> Result<(), JobError> {
    log.push(format!(
        "{} {name} ({user_id}), job {} attempt {} on {}",
        greeting.0.0,
        ctx.name(),
        ctx.attempt(),
        ctx.queue()
    ));
    Ok(())
}

#[firelane::job]
async fn tick(State(log): State<Log>) {
    log.push("tick".into());
}

#[firelane::job(retries = ["10ms"])]
async fn always_fails(State(log): State<Log>, ctx: JobContext) -> Result<(), std::io::Error> {
    log.push(format!("attempt {}", ctx.attempt()));
    Err(std::io::Error::other("the mail server is down"))
}

#[firelane::job(name = "billing.invoice", retries = 0)]
async fn invoice(number: u32, State(log): State<Log>) -> Result<(), JobError> {
    log.push(format!("invoice {number}"));
    Err(JobError::fail("no such customer"))
}

#[firelane::job]
async fn wait_for_cancel(State(log): State<Log>, cancel: Cancellation) {
    log.push("started".into());
    cancel.cancelled().await;
    log.push(format!("cancelled: {:?}", cancel.reason()));
}

#[firelane::job(queue = "reports", priority = -2, retries = 3, timeout = "90s")]
async fn report(
    title: String,
    #[serde(default)] locale: String,
    pages: Option<u32>,
    State(log): State<Log>,
) {
    log.push(format!("{title} [{locale}] {pages:?}"));
}

/// The attempt number, through a `FromContext` of this crate's own.
struct Attempt(u32);

impl FromContext for Attempt {
    fn from_context(ctx: &JobContext) -> Result<Self, JobError> {
        Ok(Attempt(ctx.attempt()))
    }
}

#[firelane::job]
async fn custom_injection(#[inject] Attempt(attempt): Attempt, State(log): State<Log>) {
    log.push(format!("injected attempt {attempt}"));
}

mod jobs {
    use firelane::prelude::*;

    /// A job declared in another module, public so that the parent can name it.
    #[firelane::job(queue = "nested")]
    pub(crate) async fn nested(value: u8, State(log): State<super::Log>) {
        log.push(format!("nested {value}"));
    }
}

async fn storage() -> Result<SqliteStorage, Error> {
    firelane::sqlite(":memory:").await
}

fn server(storage: &SqliteStorage, log: &Log) -> firelane::ServerBuilder {
    Server::builder(storage.clone())
        .state(log.clone())
        .state(Greeting("welcome"))
        .poll_interval(Duration::from_millis(20))
}

/// Waits (up to 10 s) until job `id` is in `state`.
async fn wait_for(client: &Client, id: JobId, state: JobState) -> Result<JobDetails, Error> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let details = client.job(id).await?;
        if details.job.state == state {
            return Ok(details);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} is {:?}, not {state:?}, after 10 s: {details:?}",
            details.job.state
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn stored_arguments_and_injected_state_and_context_reach_the_body() -> TestResult {
    let storage = storage().await?;
    let log = Log::default();
    let server = server(&storage, &log)
        .register(send_welcome_email)
        .queues(["emails"])
        .start()
        .await?;
    let client = Client::new(storage);

    let id = client
        .enqueue(send_welcome_email::args(42, "Ada".into()))
        .await?;
    let details = wait_for(&client, id, JobState::Succeeded).await?;

    assert_eq!(details.job.name, "send_welcome_email");
    assert_eq!(details.job.queue, "emails");
    assert_eq!(details.job.args, r#"{"user_id":42,"name":"Ada"}"#);
    assert_eq!(details.job.retry, RetryPolicy::Count(5));
    assert_eq!(
        log.lines(),
        ["welcome Ada (42), job send_welcome_email attempt 1 on emails"]
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_job_returning_unit_succeeds() -> TestResult {
    let storage = storage().await?;
    let log = Log::default();
    let server = server(&storage, &log).register(tick).start().await?;
    let client = Client::new(storage);

    let id = client.enqueue(tick::args()).await?;
    let details = wait_for(&client, id, JobState::Succeeded).await?;

    assert_eq!(details.job.args, "{}");
    assert_eq!(details.job.queue, "default");
    assert_eq!(log.lines(), ["tick"]);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn explicit_retry_delays_give_that_many_retries() -> TestResult {
    let storage = storage().await?;
    let log = Log::default();
    let server = server(&storage, &log)
        .register(always_fails)
        .start()
        .await?;
    let client = Client::new(storage);

    let id = client.enqueue(always_fails::args()).await?;
    let details = wait_for(&client, id, JobState::Failed).await?;

    assert_eq!(
        details.job.retry,
        RetryPolicy::Delays(vec![Duration::from_millis(10)])
    );
    assert_eq!(details.job.attempt, 2);
    assert_eq!(log.lines(), ["attempt 1", "attempt 2"]);
    assert_eq!(
        details.job.last_error.as_deref(),
        Some("the mail server is down")
    );
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn an_explicit_name_is_the_stored_name() -> TestResult {
    assert_eq!(<invoice as Job>::NAME, "billing.invoice");
    let storage = storage().await?;
    let log = Log::default();
    let server = server(&storage, &log).register(invoice).start().await?;
    let client = Client::new(storage);

    let id = client.enqueue(invoice::args(7)).await?;
    let details = wait_for(&client, id, JobState::Failed).await?;

    assert_eq!(details.job.name, "billing.invoice");
    assert_eq!(details.job.args, r#"{"number":7}"#);
    assert_eq!(details.job.attempt, 1, "JobError::fail does not retry");
    assert_eq!(log.lines(), ["invoice 7"]);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn the_injected_cancellation_fires_when_the_job_is_deleted() -> TestResult {
    let storage = storage().await?;
    let log = Log::default();
    let server = server(&storage, &log)
        .register(wait_for_cancel)
        .start()
        .await?;
    let client = Client::new(storage);

    let id = client.enqueue(wait_for_cancel::args()).await?;
    wait_for(&client, id, JobState::Processing).await?;
    while log.lines().is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.delete(id).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while log.lines().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", log.lines());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    assert_eq!(
        log.lines(),
        [
            "started".to_owned(),
            format!("cancelled: {:?}", Some(CancelReason::Deleted))
        ]
    );
    assert_eq!(client.job(id).await?.job.state, JobState::Deleted);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn options_are_stored_with_the_job_and_requests_override_them() -> TestResult {
    let client = Client::new(storage().await?);

    let id = client
        .enqueue(report::args("sales".into(), "tr".into(), Some(3)))
        .await?;
    let job = client.job(id).await?.job;
    assert_eq!(job.queue, "reports");
    assert_eq!(job.priority, -2);
    assert_eq!(job.retry, RetryPolicy::Count(3));
    assert_eq!(job.timeout, Some(Duration::from_secs(90)));
    assert_eq!(job.args, r#"{"title":"sales","locale":"tr","pages":3}"#);

    let id = client
        .enqueue(
            report::args("sales".into(), "tr".into(), None)
                .queue("urgent")
                .priority(5),
        )
        .await?;
    let job = client.job(id).await?.job;
    assert_eq!((job.queue.as_str(), job.priority), ("urgent", 5));
    Ok(())
}

#[tokio::test]
async fn a_queue_option_sends_jobs_to_that_queue() -> TestResult {
    let storage = storage().await?;
    let log = Log::default();
    let client = Client::new(storage.clone());

    let id = client.enqueue(jobs::nested::args(9)).await?;
    // A server of other queues leaves the job alone.
    let elsewhere = server(&storage, &log)
        .register(jobs::nested)
        .start()
        .await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.job(id).await?.job.state, JobState::Enqueued);
    elsewhere.shutdown().await?;

    let server = server(&storage, &log)
        .register(jobs::nested)
        .queues(["nested"])
        .start()
        .await?;
    wait_for(&client, id, JobState::Succeeded).await?;
    assert_eq!(log.lines(), ["nested 9"]);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn arguments_added_later_take_their_defaults() -> TestResult {
    let storage = storage().await?;
    let log = Log::default();
    let server = server(&storage, &log)
        .register(report)
        .queues(["reports"])
        .start()
        .await?;
    let client = Client::new(storage);

    // As stored by an older version of the job, before `locale` and `pages` existed.
    let mut old = NewJob::new("report", r#"{"title":"sales"}"#);
    old.queue = "reports".into();
    let id = client.enqueue_raw(old).await?;
    wait_for(&client, id, JobState::Succeeded).await?;

    assert_eq!(log.lines(), ["sales [] None"]);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn arguments_that_no_longer_match_fail_naming_the_field() -> TestResult {
    let storage = storage().await?;
    let log = Log::default();
    let server = server(&storage, &log).register(invoice).start().await?;
    let client = Client::new(storage);

    let id = client
        .enqueue_raw(NewJob::new("billing.invoice", r#"{"number":"seven"}"#))
        .await?;
    let details = wait_for(&client, id, JobState::Failed).await?;

    let error = details.job.last_error.unwrap_or_default();
    assert!(error.contains("`number`"), "{error}");
    assert!(error.contains("billing.invoice"), "{error}");
    assert!(log.lines().is_empty());
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_type_of_ours_can_be_injected() -> TestResult {
    let storage = storage().await?;
    let log = Log::default();
    let server = server(&storage, &log)
        .register(custom_injection)
        .start()
        .await?;
    let client = Client::new(storage);

    let id = client.enqueue(custom_injection::args()).await?;
    wait_for(&client, id, JobState::Succeeded).await?;

    assert_eq!(log.lines(), ["injected attempt 1"]);
    server.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_server_without_a_jobs_state_refuses_to_start() -> TestResult {
    let storage = storage().await?;
    let result = Server::builder(storage.clone())
        .register(send_welcome_email)
        .state(Log::default())
        .start()
        .await;

    match result {
        Err(Error::Config(message)) => {
            assert!(message.contains("Greeting"), "{message}");
            assert!(message.contains(".state(value)"), "{message}");
        }
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(server) => {
            server.shutdown().await?;
            panic!("the server started without the `Greeting` state");
        }
    }
    Ok(())
}

#[test]
fn the_job_struct_is_a_plain_value() {
    // `register` takes it by value; the derives make it easy to keep and pass around.
    let job = send_welcome_email;
    let copy = job;
    assert_eq!(format!("{copy:?}"), "send_welcome_email");
    fn made<T: Default + std::fmt::Debug>() -> String {
        format!("{:?}", T::default())
    }
    assert_eq!(made::<tick>(), "tick");
    assert_eq!(send_welcome_email::args(1, "Ada".into()).args().name, "Ada");
}
