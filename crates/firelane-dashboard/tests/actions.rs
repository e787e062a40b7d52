//! Every action, done and refused, and the access rules around every route.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;

use axum::http::StatusCode;
use firelane::{Client, Job, JobId, JobState};
use firelane_dashboard::Dashboard;
use support::*;

async fn state(client: &Client, id: JobId) -> JobState {
    client.job(id).await.unwrap().job.state
}

/// The app at `/admin/jobs` and the token its pages carry.
async fn app(client: &Client) -> (axum::Router, String) {
    let app = mount(&Dashboard::new(client.clone()), "/admin/jobs");
    let token = get(&app, "/admin/jobs/jobs/failed").await.csrf();
    (app, token)
}

/// Follows an action's redirect: the page it lands on shows the flash once.
async fn follow(app: &axum::Router, answer: &Answer) -> Answer {
    answer.expect(StatusCode::SEE_OTHER);
    let cookie = answer.flash_cookie();
    let page = Call::get(answer.header("location"))
        .header("cookie", &cookie)
        .send(app)
        .await;
    page.expect(StatusCode::OK);
    // Shown once: the page clears the cookie.
    let cleared = page.headers.get_all("set-cookie").iter().any(|v| {
        v.to_str()
            .unwrap()
            .starts_with("firelane_flash=; Path=/admin/jobs; Max-Age=0")
    });
    assert!(cleared, "flash not cleared: {:?}", page.headers);
    page
}

#[tokio::test]
async fn requeue_a_failed_job_redirects_back_with_a_flash() {
    let client = client().await;
    let s = seed(&client).await;
    let (app, token) = app(&client).await;
    let answer = Call::post(
        &format!("/admin/jobs/job/{}/requeue", s.failed),
        &[("csrf", &token)],
    )
    .send(&app)
    .await;
    assert_eq!(
        answer.header("location"),
        format!("/admin/jobs/job/{}", s.failed)
    );
    assert_eq!(state(&client, s.failed).await, JobState::Enqueued);
    let page = follow(&app, &answer).await;
    let short = &s.failed.to_string()[28..];
    assert_eq!(page.testid_text("flash"), format!("Job …{short} requeued."));
    assert_eq!(page.testid_text("job-state"), "enqueued");
    // A request of the same page without the cookie shows no flash.
    get(&app, answer.header("location"))
        .await
        .lacks(&[r#"data-testid="flash""#]);
}

#[tokio::test]
async fn a_refused_action_comes_back_as_an_error_flash() {
    let client = client().await;
    let s = seed(&client).await;
    let (app, token) = app(&client).await;
    // An awaiting continuation cannot be requeued, an enqueued job cannot be cancelled.
    let answer = Call::post(
        &format!("/admin/jobs/job/{}/requeue", s.awaiting),
        &[("csrf", &token)],
    )
    .send(&app)
    .await;
    let page = follow(&app, &answer).await;
    page.has(&[
        r#"class="flash flash-error""#,
        &format!("Cannot requeue job {}: it is awaiting", s.awaiting),
    ]);
    let answer = Call::post(
        &format!("/admin/jobs/job/{}/cancel", s.enqueued),
        &[("csrf", &token)],
    )
    .send(&app)
    .await;
    follow(&app, &answer)
        .await
        .has(&[&format!("Cannot cancel job {}: it is enqueued", s.enqueued)]);
    assert_eq!(state(&client, s.awaiting).await, JobState::Awaiting);
    assert_eq!(state(&client, s.enqueued).await, JobState::Enqueued);
}

#[tokio::test]
async fn delete_and_cancel_and_enqueue_now() {
    let client = client().await;
    let s = seed(&client).await;
    let (app, token) = app(&client).await;
    let answer = Call::post(
        &format!("/admin/jobs/job/{}/delete", s.succeeded),
        &[("csrf", &token), ("back", "/jobs/succeeded")],
    )
    .send(&app)
    .await;
    assert_eq!(answer.header("location"), "/admin/jobs/jobs/succeeded");
    assert_eq!(state(&client, s.succeeded).await, JobState::Deleted);
    follow(&app, &answer).await.has(&["deleted."]);

    let answer = Call::post(
        &format!("/admin/jobs/job/{}/cancel", s.processing),
        &[("csrf", &token)],
    )
    .send(&app)
    .await;
    answer.expect(StatusCode::SEE_OTHER);
    let details = client.job(s.processing).await.unwrap();
    assert_eq!(details.job.state, JobState::Deleted);
    assert_eq!(
        details.history.last().unwrap().reason.as_deref(),
        Some("cancelled from the dashboard")
    );

    // Enqueue now: a scheduled job's requeue.
    Call::post(
        &format!("/admin/jobs/job/{}/requeue", s.scheduled),
        &[("csrf", &token)],
    )
    .send(&app)
    .await
    .expect(StatusCode::SEE_OTHER);
    assert_eq!(state(&client, s.scheduled).await, JobState::Enqueued);
}

#[tokio::test]
async fn back_must_stay_inside_the_dashboard() {
    let client = client().await;
    let s = seed(&client).await;
    let (app, token) = app(&client).await;
    for evil in [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "jobs",
    ] {
        let answer = Call::post(
            &format!("/admin/jobs/job/{}/requeue", s.failed),
            &[("csrf", &token), ("back", evil)],
        )
        .send(&app)
        .await;
        assert_eq!(
            answer.header("location"),
            format!("/admin/jobs/job/{}", s.failed),
            "back = {evil}"
        );
    }
}

#[tokio::test]
async fn bulk_requeue_delete_and_enqueue_say_what_happened() {
    let client = client().await;
    let s = seed(&client).await;
    let (app, token) = app(&client).await;

    let failed = s.failed.to_string();
    let awaiting = s.awaiting.to_string();
    let answer = Call::post(
        "/admin/jobs/jobs/bulk",
        &[
            ("csrf", &token),
            ("back", "/jobs/failed?page=1"),
            ("action", "requeue"),
            ("id", &failed),
            ("id", &awaiting),
        ],
    )
    .send(&app)
    .await;
    assert_eq!(answer.header("location"), "/admin/jobs/jobs/failed?page=1");
    follow(&app, &answer)
        .await
        .has(&["Requeued 1 job; 1 refused (awaiting)."]);
    assert_eq!(state(&client, s.failed).await, JobState::Enqueued);

    let scheduled = s.scheduled.to_string();
    let retry = s.retry.to_string();
    let answer = Call::post(
        "/admin/jobs/jobs/bulk",
        &[
            ("csrf", &token),
            ("action", "enqueue"),
            ("id", &scheduled),
            ("id", &retry),
        ],
    )
    .send(&app)
    .await;
    assert_eq!(answer.header("location"), "/admin/jobs");
    follow(&app, &answer).await.has(&["Enqueued 2 jobs."]);
    assert_eq!(state(&client, s.scheduled).await, JobState::Enqueued);
    assert_eq!(state(&client, s.retry).await, JobState::Enqueued);

    let deleted = s.deleted.to_string();
    let succeeded = s.succeeded.to_string();
    let answer = Call::post(
        "/admin/jobs/jobs/bulk",
        &[
            ("csrf", &token),
            ("action", "delete"),
            ("id", &succeeded),
            ("id", &deleted),
            ("id", "01a20b91-ee48-76b0-a0be-5714617836c3"),
        ],
    )
    .send(&app)
    .await;
    follow(&app, &answer)
        .await
        .has(&["Deleted 1 job; 1 refused (deleted); 1 not found."]);
    assert_eq!(state(&client, s.succeeded).await, JobState::Deleted);

    // Nothing selected: said, nothing done.
    let answer = Call::post(
        "/admin/jobs/jobs/bulk",
        &[("csrf", &token), ("action", "delete")],
    )
    .send(&app)
    .await;
    follow(&app, &answer)
        .await
        .has(&["Select at least one job first."]);
    // Bad input: 400 with the reason.
    Call::post(
        "/admin/jobs/jobs/bulk",
        &[("csrf", &token), ("action", "explode"), ("id", &failed)],
    )
    .send(&app)
    .await
    .expect(StatusCode::BAD_REQUEST)
    .has(&["unknown bulk action &#34;explode&#34;"]);
    Call::post(
        "/admin/jobs/jobs/bulk",
        &[("csrf", &token), ("action", "delete"), ("id", "nope")],
    )
    .send(&app)
    .await
    .expect(StatusCode::BAD_REQUEST)
    .has(&["&#34;nope&#34; is not a job id"]);
    assert_eq!(state(&client, s.enqueued).await, JobState::Enqueued);
}

#[tokio::test]
async fn recurring_trigger_pause_resume() {
    let client = client().await;
    client
        .recurring("nightly report")
        .cron("0 3 * * *")
        .upsert(Mail::with_args(1))
        .await
        .unwrap();
    let (app, token) = app(&client).await;
    let answer = Call::post(
        "/admin/jobs/recurring/nightly%20report/trigger",
        &[("csrf", &token)],
    )
    .send(&app)
    .await;
    assert_eq!(answer.header("location"), "/admin/jobs/recurring");
    let view = client.recurring_job("nightly report").await.unwrap();
    let last = view.record.last_job.unwrap();
    assert_eq!(state(&client, last).await, JobState::Enqueued);
    let short = &last.to_string()[28..];
    follow(&app, &answer).await.has(&[&format!(
        "Triggered recurring job nightly report: enqueued job …{short}."
    )]);

    let answer = Call::post(
        "/admin/jobs/recurring/nightly%20report/pause",
        &[("csrf", &token)],
    )
    .send(&app)
    .await;
    assert!(
        client
            .recurring_job("nightly report")
            .await
            .unwrap()
            .record
            .paused
    );
    follow(&app, &answer).await.has(&[
        "Paused recurring job nightly report.",
        r#"data-testid="recurring-status">paused<"#,
        r#"data-testid="action-resume-recurring""#,
    ]);
    Call::post(
        "/admin/jobs/recurring/nightly%20report/resume",
        &[("csrf", &token)],
    )
    .send(&app)
    .await
    .expect(StatusCode::SEE_OTHER);
    assert!(
        !client
            .recurring_job("nightly report")
            .await
            .unwrap()
            .record
            .paused
    );

    Call::post("/admin/jobs/recurring/nope/trigger", &[("csrf", &token)])
        .send(&app)
        .await
        .expect(StatusCode::NOT_FOUND)
        .has(&["no recurring job with id &#34;nope&#34;"]);
}

#[tokio::test]
async fn queues_pause_and_resume() {
    let client = client().await;
    client.enqueue(Mail::with_args(1)).await.unwrap();
    let (app, token) = app(&client).await;
    let answer = Call::post("/admin/jobs/queues/mail/pause", &[("csrf", &token)])
        .send(&app)
        .await;
    assert_eq!(answer.header("location"), "/admin/jobs/queues");
    let stats = client.stats().await.unwrap();
    assert!(stats.queues.iter().any(|q| q.name == "mail" && q.paused));
    let page = follow(&app, &answer).await;
    page.has(&["Paused queue mail", r#"data-testid="action-resume-queue""#]);
    let row = &page.body[page.body.find(r#"data-queue="mail""#).unwrap()..];
    assert!(row.contains(r#"data-testid="queue-paused">yes<"#));

    Call::post("/admin/jobs/queues/mail/resume", &[("csrf", &token)])
        .send(&app)
        .await
        .expect(StatusCode::SEE_OTHER);
    let stats = client.stats().await.unwrap();
    assert!(stats.queues.iter().any(|q| q.name == "mail" && !q.paused));

    Call::post("/admin/jobs/queues/Bad%20Queue/pause", &[("csrf", &token)])
        .send(&app)
        .await
        .expect(StatusCode::BAD_REQUEST)
        .has(&["invalid queue name"]);
}

#[tokio::test]
async fn actions_without_a_valid_token_or_from_another_site_are_refused() {
    let client = client().await;
    let s = seed(&client).await;
    let (app, token) = app(&client).await;
    let uri = format!("/admin/jobs/job/{}/requeue", s.failed);

    Call::post(&uri, &[])
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN)
        .has(&["carries no anti-forgery token"]);
    Call::post(&uri, &[("csrf", "0000")])
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN)
        .has(&["anti-forgery token is wrong"]);
    let other = Dashboard::new(client.clone());
    let other_token = get(&mount(&other, "/x"), "/x/jobs/failed").await.csrf();
    assert_ne!(other_token, token);
    Call::post(&uri, &[("csrf", &other_token)])
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN);
    // A valid token, but the browser says another site sent it.
    Call::post(&uri, &[("csrf", &token)])
        .header("sec-fetch-site", "cross-site")
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN)
        .has(&["Refused a cross-site request"]);
    // An action is never a GET.
    Call::get(&uri)
        .send(&app)
        .await
        .expect(StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(state(&client, s.failed).await, JobState::Failed);

    // The token may come in a header instead of the form.
    Call::post(&uri, &[])
        .header("x-firelane-csrf", &token)
        .send(&app)
        .await
        .expect(StatusCode::SEE_OTHER);
    assert_eq!(state(&client, s.failed).await, JobState::Enqueued);
}

#[tokio::test]
async fn an_origin_that_is_not_the_host_is_refused() {
    let client = client().await;
    let s = seed(&client).await;
    let (app, token) = app(&client).await;
    let uri = format!("/admin/jobs/job/{}/delete", s.failed);
    let post = || Call::post(&uri, &[("csrf", &token)]).without("sec-fetch-site");
    post()
        .header("origin", "http://evil.example")
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN)
        .has(&["Refused a request from another origin"]);
    post()
        .header("origin", "null")
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN);
    post()
        .header("origin", "http://localhost:8080.evil.example")
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(state(&client, s.failed).await, JobState::Failed);
    // No Origin and no Sec-Fetch-Site (a script, curl): the token alone decides.
    post()
        .without("origin")
        .send(&app)
        .await
        .expect(StatusCode::SEE_OTHER);
    assert_eq!(state(&client, s.failed).await, JobState::Deleted);
}

#[tokio::test]
async fn read_only_hides_every_action_and_refuses_every_post() {
    let client = client().await;
    let s = seed(&client).await;
    client
        .recurring("r")
        .cron("0 3 * * *")
        .upsert(Mail::with_args(1))
        .await
        .unwrap();
    // The same dashboard, read-only: its token is valid, and still refused.
    let dashboard = Dashboard::new(client.clone());
    let token = get(&mount(&dashboard, "/j"), "/j/jobs/failed").await.csrf();
    let app = mount(&dashboard.clone().read_only(true), "/j");
    for page in [
        format!("/j/job/{}", s.failed),
        format!("/j/job/{}", s.processing),
        "/j/jobs/failed".to_owned(),
        "/j/jobs/scheduled".to_owned(),
        "/j/recurring".to_owned(),
        "/j/queues".to_owned(),
    ] {
        let a = get(&app, &page).await;
        a.expect(StatusCode::OK).lacks(&[
            "action-requeue",
            "action-delete",
            "action-cancel",
            "bulk-requeue",
            "bulk-delete",
            "bulk-enqueue",
            "select-job",
            "action-trigger",
            "action-pause",
            "action-resume",
            r#"method="post""#,
        ]);
        assert!(
            a.testid_text("access-note").contains("Read-only"),
            "{page}: {}",
            a.body
        );
    }
    // Even with a token: every action is refused.
    let failed = s.failed.to_string();
    for (uri, fields) in [
        (format!("/j/job/{failed}/requeue"), vec![]),
        (format!("/j/job/{failed}/delete"), vec![]),
        (format!("/j/job/{}/cancel", s.processing), vec![]),
        (
            "/j/jobs/bulk".to_owned(),
            vec![("action", "delete"), ("id", failed.as_str())],
        ),
        ("/j/recurring/r/trigger".to_owned(), vec![]),
        ("/j/recurring/r/pause".to_owned(), vec![]),
        ("/j/queues/default/pause".to_owned(), vec![]),
    ] {
        let mut f = fields.clone();
        f.push(("csrf", &token));
        Call::post(&uri, &f)
            .send(&app)
            .await
            .expect(StatusCode::FORBIDDEN)
            .has(&["read-only: actions are disabled"]);
    }
    assert_eq!(state(&client, s.failed).await, JobState::Failed);
    assert_eq!(state(&client, s.processing).await, JobState::Processing);
    assert!(
        client
            .recurring_job("r")
            .await
            .unwrap()
            .record
            .last_job
            .is_none()
    );
    assert!(
        client
            .stats()
            .await
            .unwrap()
            .queues
            .iter()
            .all(|q| !q.paused)
    );
}

#[tokio::test]
async fn only_local_peers_without_a_hook() {
    let client = client().await;
    seed(&client).await;
    let app = mount(&Dashboard::new(client.clone()), "/jobs");
    let remote: SocketAddr = "203.0.113.9:4000".parse().unwrap();
    for uri in [
        "/jobs",
        "/jobs/jobs/failed",
        "/jobs/api/stats",
        "/jobs/assets/htmx.min.js",
    ] {
        let a = Call::get(uri).peer(Some(remote)).send(&app).await;
        a.expect(StatusCode::FORBIDDEN)
            .has(&["local machine only"])
            .lacks(&["state-count", "htmx.org"]);
    }
    let api = Call::get("/jobs/api/stats")
        .peer(Some(remote))
        .send(&app)
        .await;
    assert!(
        api.json()["error"]
            .as_str()
            .unwrap()
            .contains("local machine only")
    );
    // IPv6 loopback and IPv4-mapped loopback are local.
    for local in ["[::1]:5000", "[::ffff:127.0.0.1]:5000", "127.8.9.10:1"] {
        Call::get("/jobs")
            .peer(Some(local.parse().unwrap()))
            .send(&app)
            .await
            .expect(StatusCode::OK);
    }
    // No peer address at all: refused, with how to fix it.
    Call::get("/jobs")
        .peer(None)
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN)
        .has(&[
            "into_make_service_with_connect_info::&#60;SocketAddr&#62;()",
            "Dashboard::authorize",
        ]);
    // Actions too.
    let token = get(&app, "/jobs/jobs/failed").await.csrf();
    Call::post("/jobs/queues/default/pause", &[("csrf", &token)])
        .peer(Some(remote))
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert!(
        client
            .stats()
            .await
            .unwrap()
            .queues
            .iter()
            .all(|q| !q.paused)
    );
}

#[tokio::test]
async fn the_hook_decides_when_given() {
    let client = client().await;
    let s = seed(&client).await;
    let dashboard = Dashboard::new(client.clone())
        .authorize(|parts| parts.headers.get("x-admin").is_some_and(|v| v == "yes"));
    let app = mount(&dashboard, "/jobs");
    let remote: SocketAddr = "203.0.113.9:4000".parse().unwrap();
    // Refused by the hook, even from this machine.
    Call::get("/jobs")
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN)
        .has(&["authorization hook refused"]);
    Call::get("/jobs/api/jobs?state=failed")
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN);
    // Allowed by the hook, from anywhere, and without a peer address.
    let page = Call::get("/jobs/jobs/failed")
        .header("x-admin", "yes")
        .peer(Some(remote))
        .send(&app)
        .await;
    page.expect(StatusCode::OK);
    assert!(
        page.testid_text("access-note")
            .contains("authorization hook")
    );
    assert!(!page.body.contains("Local requests only"));
    let token = page.csrf();
    Call::get("/jobs/api/stats")
        .header("x-admin", "yes")
        .peer(None)
        .send(&app)
        .await
        .expect(StatusCode::OK);
    // Actions go through the hook too.
    let uri = format!("/jobs/job/{}/requeue", s.failed);
    Call::post(&uri, &[("csrf", &token)])
        .peer(Some(remote))
        .send(&app)
        .await
        .expect(StatusCode::FORBIDDEN);
    assert_eq!(state(&client, s.failed).await, JobState::Failed);
    Call::post(&uri, &[("csrf", &token)])
        .header("x-admin", "yes")
        .peer(Some(remote))
        .send(&app)
        .await
        .expect(StatusCode::SEE_OTHER);
    assert_eq!(state(&client, s.failed).await, JobState::Enqueued);
}

#[tokio::test]
async fn actions_at_the_root_and_at_another_prefix_redirect_inside_it() {
    for (prefix, home, cookie_path) in [("", "/", "/"), ("/jobs", "/jobs", "/jobs")] {
        let client = client().await;
        let s = seed(&client).await;
        let app = mount(&Dashboard::new(client.clone()), prefix);
        let page = get(&app, &format!("{prefix}/job/{}", s.failed)).await;
        page.has(&[&format!(r#"action="{prefix}/job/{}/requeue""#, s.failed)]);
        let token = page.csrf();
        let answer = Call::post(
            &format!("{prefix}/job/{}/requeue", s.failed),
            &[("csrf", &token)],
        )
        .send(&app)
        .await;
        answer.expect(StatusCode::SEE_OTHER);
        assert_eq!(
            answer.header("location"),
            format!("{prefix}/job/{}", s.failed)
        );
        let set_cookie = answer.header("set-cookie");
        assert!(
            set_cookie.contains(&format!("; Path={cookie_path};")),
            "{set_cookie}"
        );
        assert_eq!(state(&client, s.failed).await, JobState::Enqueued);
        // A bulk action without `back` returns to the overview.
        let id = s.scheduled.to_string();
        let answer = Call::post(
            &format!("{prefix}/jobs/bulk"),
            &[("csrf", &token), ("action", "enqueue"), ("id", &id)],
        )
        .send(&app)
        .await;
        assert_eq!(answer.header("location"), home);
        let landed = Call::get(home)
            .header("cookie", &answer.flash_cookie())
            .send(&app)
            .await;
        assert_eq!(landed.testid_text("flash"), "Enqueued 1 job.");
    }
}
