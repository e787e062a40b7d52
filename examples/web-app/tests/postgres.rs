//! The sign-up service on PostgreSQL: split into a web process (HTTP and enqueueing, no
//! Firelane server) and a worker process (the Firelane server, no HTTP), and as one process.
//! Each test gets fresh schemas. Without a PostgreSQL server the tests are skipped with one
//! line; on CI (`CI=true`) they fail.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use firelane::{Client, JobState};
use support::{App, Schemas, http, only_job_named, postgres_available, wait_for_state};

/// A connection to the test database, to read the app's own table.
async fn connect() -> sqlx::PgConnection {
    <sqlx::PgConnection as sqlx::Connection>::connect(&support::postgres_url())
        .await
        .unwrap()
}

/// Whether the app's own table marks the user as welcomed.
async fn welcomed(conn: &mut sqlx::PgConnection, schemas: &Schemas, email: &str) -> bool {
    let sql = format!(
        "SELECT welcomed_at IS NOT NULL FROM {}.users WHERE email = $1",
        schemas.app
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(email)
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_process_enqueues_and_only_the_worker_process_runs_jobs() {
    if !postgres_available().await {
        return;
    }
    let schemas = Schemas::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut web = App::start("web", &schemas.app_url(), dir.path());
    assert!(
        web.server_id.is_none(),
        "--mode web starts no Firelane server"
    );

    let client = Client::new(firelane::postgres(&schemas.firelane_url()).await.unwrap());
    let mut conn = connect().await;

    let signed_up = http(
        web.addr(),
        "/signup",
        None,
        Some(&[("email", "grace@example.com")]),
    )
    .await;
    assert_eq!(signed_up.status, 200, "{}", signed_up.body);

    let welcome = only_job_named(&client, "send_welcome_email").await;
    let recorded = only_job_named(&client, "record_welcome_sent").await;
    // Nothing runs them yet: the web process has no server. Give it more than a poll interval.
    assert!(!client.has_server_for("send_welcome_email").await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let waiting = client.job(welcome).await.unwrap();
    assert_eq!(waiting.job.state, JobState::Enqueued);
    assert_eq!(waiting.history.len(), 1, "{:?}", waiting.history);
    assert_eq!(
        client.job(recorded).await.unwrap().job.state,
        JobState::Awaiting
    );

    let started = Instant::now();
    let mut worker = App::start("worker", &schemas.app_url(), dir.path());
    let worker_id = worker.server_id.clone().unwrap();
    // A worker serves no pages, only its health and metrics.
    let page = http(worker.addr(), "/", None, None).await;
    assert_eq!(page.status, 404);
    let health = http(worker.addr(), "/healthz", None, None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.body.contains(&worker_id), "{}", health.body);
    let done = wait_for_state(&client, welcome, JobState::Succeeded).await;
    let done_recorded = wait_for_state(&client, recorded, JobState::Succeeded).await;
    eprintln!(
        "postgres, split: both jobs succeeded {:?} after the worker process was started",
        started.elapsed()
    );
    // Every run was the worker's.
    for entry in done.history.iter().chain(&done_recorded.history) {
        if let Some(server) = &entry.server {
            assert_eq!(server.as_str(), worker_id, "{entry:?}");
        }
    }
    assert!(welcomed(&mut conn, &schemas, "grace@example.com").await);

    // With the worker running, a new sign-up is picked up at once: the commit's NOTIFY wakes
    // the worker, no poll needed.
    let posted = Instant::now();
    let second = http(
        web.addr(),
        "/signup",
        None,
        Some(&[("email", "alan@example.com")]),
    )
    .await;
    assert_eq!(second.status, 200, "{}", second.body);
    let deadline = Instant::now() + support::PATIENCE;
    while !welcomed(&mut conn, &schemas, "alan@example.com").await {
        assert!(Instant::now() < deadline, "alan was never welcomed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "postgres, split: second sign-up welcomed (both jobs run) {:?} after the form's answer",
        posted.elapsed()
    );

    // The web process's metrics count no attempt; the worker's count both jobs.
    let started_total = "firelane_jobs_started_total{job=\"send_welcome_email\"";
    let web_metrics = http(web.addr(), "/metrics", None, None).await;
    assert!(
        !web_metrics.body.contains(started_total),
        "{}",
        web_metrics.body
    );
    let worker_metrics = http(worker.addr(), "/metrics", None, None).await;
    assert!(
        worker_metrics.body.contains(started_total),
        "{}",
        worker_metrics.body
    );
    let health = http(web.addr(), "/healthz", None, None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(!health.body.contains(r#""server":"#), "{}", health.body);

    let (status, took) = web.stop();
    assert!(status.success(), "web exit status {status}");
    let (status, took_worker) = worker.stop();
    assert!(status.success(), "worker exit status {status}");
    eprintln!("postgres, split: web stopped in {took:?}, worker in {took_worker:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_on_postgres_runs_the_welcome_jobs() {
    if !postgres_available().await {
        return;
    }
    let schemas = Schemas::create().await;
    let dir = tempfile::tempdir().unwrap();
    let mut app = App::start("all", &schemas.app_url(), dir.path());

    let client = Client::new(firelane::postgres(&schemas.firelane_url()).await.unwrap());
    let mut conn = connect().await;

    let posted = Instant::now();
    let signed_up = http(
        app.addr(),
        "/signup",
        None,
        Some(&[("email", "ada@example.com")]),
    )
    .await;
    assert_eq!(signed_up.status, 200, "{}", signed_up.body);

    let recorded = only_job_named(&client, "record_welcome_sent").await;
    let done = wait_for_state(&client, recorded, JobState::Succeeded).await;
    eprintln!(
        "postgres, one process: continuation succeeded {:?} after the form's answer",
        posted.elapsed()
    );
    let ran_on = done.history.iter().find_map(|h| h.server.clone()).unwrap();
    assert_eq!(Some(ran_on.as_str()), app.server_id.as_deref());
    assert!(welcomed(&mut conn, &schemas, "ada@example.com").await);

    let (status, _) = app.stop();
    assert!(status.success(), "exit status {status}");
}
