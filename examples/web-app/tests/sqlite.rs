//! The sign-up service end to end on SQLite, as one process (`--mode all`): the built binary on
//! a free port and a fresh database file; the form posted; the jobs waited for through a
//! Firelane client on the same file; the dashboard behind the login; SIGTERM.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use firelane::{Client, JobState};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use support::{App, PASSWORD, http, only_job_named, wait_for_state};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_up_runs_the_welcome_jobs_and_the_dashboard_needs_a_login() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web-app.db");
    let url = format!("sqlite://{}", file.display());
    let mut app = App::start("all", &url, dir.path());
    let addr = app.addr();

    let home = http(addr, "/", None, None).await;
    assert_eq!(home.status, 200);
    assert!(home.body.contains(r#"action="/signup""#), "{}", home.body);

    // A second process on the same file: the test's own client.
    let client = Client::new(firelane::sqlite(&url).await.unwrap());

    // The form: the user row and both jobs are written in one transaction.
    let posted = Instant::now();
    let signed_up = http(addr, "/signup", None, Some(&[("email", "ada@example.com")])).await;
    assert_eq!(signed_up.status, 200, "{}", signed_up.body);
    assert!(signed_up.body.contains("ada@example.com"));

    let welcome = only_job_named(&client, "send_welcome_email").await;
    let recorded = only_job_named(&client, "record_welcome_sent").await;
    let done = wait_for_state(&client, welcome, JobState::Succeeded).await;
    let welcome_done = posted.elapsed();
    assert_eq!(done.job.queue, "emails");
    assert!(done.continuations.contains(&recorded));
    let done = wait_for_state(&client, recorded, JobState::Succeeded).await;
    let recorded_done = posted.elapsed();
    // The job ran in the app's own server.
    let ran_on = done.history.iter().find_map(|h| h.server.clone()).unwrap();
    assert_eq!(Some(ran_on.as_str()), app.server_id.as_deref());
    eprintln!(
        "sqlite, one process: welcome email succeeded {welcome_done:?} after the form's answer, its continuation {recorded_done:?}"
    );

    // The continuation's work: the user row is marked.
    let pool = SqlitePool::connect_with(SqliteConnectOptions::new().filename(&file))
        .await
        .unwrap();
    let welcomed: Option<i64> =
        sqlx::query_scalar("SELECT welcomed_at FROM users WHERE email = 'ada@example.com'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(welcomed.is_some(), "the continuation marks the user");

    // The same email again: refused, and no job is left behind by the rolled-back transaction.
    let again = http(addr, "/signup", None, Some(&[("email", "ada@example.com")])).await;
    assert_eq!(again.status, 409, "{}", again.body);
    only_job_named(&client, "send_welcome_email").await;

    // The nightly cleanup is declared, in its time zone; triggered now, it removes old
    // unconfirmed sign-ups and keeps the rest.
    let cleanup = client
        .recurring_job("remove-unconfirmed-signups")
        .await
        .unwrap();
    assert_eq!(cleanup.record.cron, "0 3 * * *");
    assert_eq!(cleanup.record.time_zone, "Europe/Istanbul");
    assert!(cleanup.record.next_run.is_some());
    let month_ago = unix_now() - 30 * 24 * 3600;
    sqlx::query(
        "INSERT INTO users (email, confirm_token, created_at, confirmed_at)
         VALUES ('old@example.com', 't1', $1, NULL), ('kept@example.com', 't2', $1, $1)",
    )
    .bind(month_ago)
    .execute(&pool)
    .await
    .unwrap();
    let run = client.trigger("remove-unconfirmed-signups").await.unwrap();
    wait_for_state(&client, run, JobState::Succeeded).await;
    let emails: Vec<String> = sqlx::query_scalar("SELECT email FROM users ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(emails, ["ada@example.com", "kept@example.com"]);

    // The dashboard: refused without the app's login, shown with it.
    let anonymous = http(addr, "/admin/jobs", None, None).await;
    assert_eq!(anonymous.status, 403);
    let wrong = http(addr, "/login", None, Some(&[("password", "guess")])).await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("set-cookie").is_none());
    let login = http(addr, "/login", None, Some(&[("password", PASSWORD)])).await;
    assert_eq!(login.status, 303);
    assert_eq!(login.header("location"), Some("/admin/jobs"));
    let cookie = login
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let dashboard = http(addr, "/admin/jobs", Some(&cookie), None).await;
    assert_eq!(dashboard.status, 200, "{}", dashboard.body);
    let api = http(addr, "/admin/jobs/api/stats", Some(&cookie), None).await;
    assert_eq!(api.status, 200);
    assert!(api.body.contains("succeeded"), "{}", api.body);
    let forged = http(addr, "/admin/jobs", Some("web_app_admin=0000"), None).await;
    assert_eq!(forged.status, 403);

    // Readiness (the server's check and the app's database) and Prometheus metrics.
    let health = http(addr, "/healthz", None, None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert!(health.body.contains(r#""ready":true"#), "{}", health.body);
    assert!(
        health.body.contains(r#""heartbeat_fresh":true"#),
        "{}",
        health.body
    );
    let metrics = http(addr, "/metrics", None, None).await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics.body.contains(
            r#"firelane_jobs_succeeded_total{job="send_welcome_email",queue="emails"} 1"#
        ),
        "{}",
        metrics.body
    );

    // SIGTERM: the web server and then the Firelane server stop, and the process exits 0.
    let (status, took) = app.stop();
    assert!(status.success(), "exit status {status}");
    assert!(took < Duration::from_secs(15), "took {took:?} to stop");
    eprintln!("sqlite, one process: stopped {took:?} after SIGTERM");
    // The server unregistered itself on the way out.
    assert!(
        client
            .storage()
            .servers()
            .await
            .unwrap()
            .iter()
            .all(|s| Some(s.info.id.as_str()) != app.server_id.as_deref())
    );
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}
