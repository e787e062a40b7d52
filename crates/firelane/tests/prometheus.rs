//! Feature `prometheus`: the endpoint installs once, renders Firelane's metrics with their
//! HELP and TYPE lines, and serves them through its axum router.

use std::time::Duration;

use firelane::metrics::{InstallError, PrometheusEndpoint};
use firelane::{Client, Job, JobContext, JobError, JobState, Server};
use http_body_util::BodyExt;
use tower::ServiceExt;

struct Hello;

impl Job for Hello {
    const NAME: &'static str = "hello";
    type Args = ();

    async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_renders_firelane_metrics_with_help_and_type() {
    let endpoint = PrometheusEndpoint::install().expect("first install");
    assert!(matches!(
        PrometheusEndpoint::install(),
        Err(InstallError::AlreadyInstalled)
    ));

    let storage = firelane::sqlite(":memory:").await.expect("store");
    let client = Client::new(storage.clone());
    let server = Server::builder(storage.clone())
        .register(Hello)
        .poll_interval(Duration::from_millis(50))
        .metrics_interval(Duration::from_millis(50))
        .start()
        .await
        .expect("server");
    let id = client.enqueue(Hello::with_args(())).await.expect("enqueue");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while client.job(id).await.expect("job").job.state != JobState::Succeeded {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job did not run"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let text = endpoint.render();
    for (name, kind) in [
        ("firelane_jobs_enqueued_total", "counter"),
        ("firelane_jobs_started_total", "counter"),
        ("firelane_jobs_succeeded_total", "counter"),
        ("firelane_jobs_failed_total", "counter"),
        ("firelane_jobs_retried_total", "counter"),
        ("firelane_job_duration_seconds", "histogram"),
        ("firelane_job_pickup_latency_seconds", "histogram"),
        ("firelane_queue_depth", "gauge"),
        ("firelane_queue_processing", "gauge"),
        ("firelane_queue_oldest_job_age_seconds", "gauge"),
        ("firelane_servers_alive", "gauge"),
    ] {
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name} in:\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "no TYPE {kind} for {name} in:\n{text}"
        );
    }
    assert!(
        text.contains(r#"firelane_jobs_succeeded_total{job="hello",queue="default"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"firelane_job_duration_seconds_count{job="hello",queue="default",outcome="succeeded"} 1"#),
        "{text}"
    );
    assert!(text.contains("firelane_servers_alive 1"), "{text}");

    let response = endpoint
        .router()
        .oneshot(
            axum::http::Request::get("/")
                .body(axum::body::Body::empty())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()[axum::http::header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/plain; version=0.0.4"))
    );
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let body = String::from_utf8(body.to_vec()).expect("utf-8");
    assert!(body.contains("# TYPE firelane_jobs_started_total counter"));

    server.shutdown().await.expect("shutdown");
}
