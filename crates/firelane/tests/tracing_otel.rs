//! Feature `opentelemetry`: a job's span joins the trace of the span that enqueued it, through
//! the store (SQLite), and every attempt of a retried job keeps that parent.

use std::sync::OnceLock;
use std::time::Duration;

use firelane::{Client, Job, JobContext, JobError, JobId, JobState, NewJob, Server};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

/// One subscriber for the whole test binary: the server's tasks run on other threads, so the
/// subscriber must be the global one.
fn exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static INSTALLED: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("firelane-test")));
        tracing::subscriber::set_global_default(subscriber).expect("one global subscriber");
        (exporter, provider)
    })
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

struct Plain;

impl Job for Plain {
    const NAME: &'static str = "plain";
    type Args = ();

    async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> {
        Ok(())
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

fn job_spans(name: &str) -> Vec<SpanData> {
    let (exporter, provider) = exporter();
    provider.force_flush().expect("flush");
    exporter
        .get_finished_spans()
        .expect("spans")
        .into_iter()
        .filter(|s| s.name == format!("firelane.job {name}"))
        .collect()
}

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a opentelemetry::Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

async fn server(storage: &firelane::SqliteStorage) -> Server {
    Server::builder(storage.clone())
        .register(Flaky)
        .register(Plain)
        .poll_interval(Duration::from_millis(50))
        .start()
        .await
        .expect("server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_and_its_retry_are_children_of_the_span_that_enqueued_it() {
    exporter();
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("trace.db").display());
    let storage = firelane::sqlite(&url).await.expect("store");
    let client = Client::new(storage.clone());

    // The "request": an HTTP handler's span, current while it enqueues.
    let request = tracing::info_span!("POST /signup");
    let (trace_id, request_span_id, id) = async {
        let sc = tracing::Span::current()
            .context()
            .span()
            .span_context()
            .clone();
        let id = client
            .enqueue(Flaky::with_args(()).retry_delays([Duration::ZERO]))
            .await
            .expect("enqueue");
        (sc.trace_id(), sc.span_id(), id)
    }
    .instrument(request.clone())
    .await;
    drop(request);
    assert_ne!(trace_id, TraceId::INVALID);

    let stored = client.job(id).await.expect("job").job.trace_context;
    let stored = stored.expect("the job carries the request's trace context");
    assert!(stored.contains(&format!("{trace_id}")), "{stored}");

    let server = server(&storage).await;
    wait_for(&client, id, JobState::Succeeded).await;
    server.shutdown().await.expect("shutdown");

    let spans: Vec<SpanData> = job_spans("flaky")
        .into_iter()
        .filter(|s| s.span_context.trace_id() == trace_id)
        .collect();
    assert_eq!(
        spans.len(),
        2,
        "both attempts of the job are in the request's trace"
    );
    for span in &spans {
        assert_eq!(span.parent_span_id, request_span_id);
        assert!(span.parent_span_is_remote);
        assert_eq!(span.span_kind, opentelemetry::trace::SpanKind::Consumer);
        assert_eq!(
            attr(span, "job.id").map(|v| v.to_string()),
            Some(id.to_string())
        );
    }
    let mut outcomes: Vec<(String, String)> = spans
        .iter()
        .map(|s| {
            (
                attr(s, "job.attempt")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
                attr(s, "job.outcome")
                    .map(|v| v.to_string())
                    .unwrap_or_default(),
            )
        })
        .collect();
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            ("1".to_owned(), "retried".to_owned()),
            ("2".to_owned(), "succeeded".to_owned())
        ]
    );
    let retried = spans
        .iter()
        .find(|s| attr(s, "job.attempt").map(|v| v.to_string()).as_deref() == Some("1"))
        .expect("first attempt");
    assert!(matches!(
        retried.status,
        opentelemetry::trace::Status::Error { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_enqueued_outside_any_span_or_with_a_malformed_context_runs_in_a_trace_of_its_own() {
    exporter();
    let storage = firelane::sqlite(":memory:").await.expect("store");
    let client = Client::new(storage.clone());

    let bare = client.enqueue(Plain::with_args(())).await.expect("enqueue");
    assert_eq!(client.job(bare).await.expect("job").job.trace_context, None);

    let mut job = NewJob::new("plain", "null");
    job.trace_context = Some(r#"{"traceparent":"00-nonsense"}"#.to_owned());
    let malformed = client.enqueue_raw(job).await.expect("enqueue");

    let server = server(&storage).await;
    wait_for(&client, bare, JobState::Succeeded).await;
    wait_for(&client, malformed, JobState::Succeeded).await;
    server.shutdown().await.expect("shutdown");

    let spans: Vec<SpanData> = job_spans("plain")
        .into_iter()
        .filter(|s| {
            let id = attr(s, "job.id").map(|v| v.to_string());
            id == Some(bare.to_string()) || id == Some(malformed.to_string())
        })
        .collect();
    assert_eq!(spans.len(), 2);
    for span in spans {
        assert_eq!(span.parent_span_id, SpanId::INVALID, "a root span");
        assert_eq!(
            attr(&span, "job.outcome").map(|v| v.to_string()).as_deref(),
            Some("succeeded")
        );
    }
}
