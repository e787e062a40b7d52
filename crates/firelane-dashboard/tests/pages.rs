//! Every page, at two mount points, against a real SQLite store: what it shows, and what it
//! answers to bad input.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use firelane::{Client, Job, JobState, NewJob};
use firelane_dashboard::Dashboard;
use support::*;

const PREFIXES: [&str; 2] = ["/admin/jobs", ""];

async fn app_at(prefix: &str) -> (Client, Seeded, axum::Router) {
    let client = client().await;
    let seeded = seed(&client).await;
    let app = mount(&Dashboard::new(client.clone()), prefix);
    (client, seeded, app)
}

#[tokio::test]
async fn overview_shows_counts_per_state_and_links_under_the_prefix() {
    for prefix in PREFIXES {
        let (_client, _s, app) = app_at(prefix).await;
        let home = if prefix.is_empty() { "/" } else { prefix };
        let page = get(&app, home).await;
        page.expect(StatusCode::OK);
        for (state, n) in [
            ("enqueued", "1"),
            ("scheduled", "2"),
            ("processing", "1"),
            ("succeeded", "1"),
            ("failed", "1"),
            ("deleted", "1"),
            ("awaiting", "1"),
        ] {
            assert_eq!(
                page.testid_text(&format!("state-count-{state}")),
                n,
                "{state} at {prefix:?}"
            );
            page.has(&[&format!(r#"href="{prefix}/jobs/{state}""#)]);
        }
        page.has(&[
            r#"data-testid="live-graph""#,
            r#"data-testid="history-graph""#,
            &format!(r#"data-api="{prefix}/api/stats""#),
            &format!(r#"data-api="{prefix}/api/history""#),
            &format!(r#"src="{prefix}/assets/uPlot.iife.min.js?v="#),
            &format!(r#"src="{prefix}/assets/htmx.min.js?v="#),
            &format!(r#"href="{prefix}/assets/dashboard.css?v="#),
            &format!(r#"action="{prefix}/search""#),
            &format!(r#"data-testid="nav-overview" href="{home}""#),
            &format!(r#"data-testid="nav-retries" href="{prefix}/jobs/retries""#),
            &format!(r#"data-testid="nav-queues" href="{prefix}/queues""#),
        ]);
        assert!(
            page.testid_text("access-note")
                .contains("Local requests only"),
            "{}",
            page.body
        );
        // Every nav link of the contract is there.
        for nav in [
            "overview",
            "enqueued",
            "scheduled",
            "processing",
            "succeeded",
            "failed",
            "deleted",
            "awaiting",
            "retries",
            "recurring",
            "servers",
            "queues",
        ] {
            page.has(&[&format!(r#"data-testid="nav-{nav}""#)]);
        }
        // The page's own links and assets all carry the prefix.
        for attr in [r#"href="/"#, r#"src="/"#, r#"action="/"#] {
            for (i, _) in page.body.match_indices(attr) {
                let rest = &page.body[i + attr.len() - 1..];
                assert!(
                    rest.starts_with(&format!("{home}\""))
                        || rest.starts_with(&format!("{prefix}/")),
                    "link without the prefix {prefix:?}: {}",
                    &rest[..rest.len().min(60)]
                );
            }
        }
    }
}

#[tokio::test]
async fn the_overview_is_the_mount_point_itself() {
    let (_c, _s, app) = app_at("/jobs").await;
    get(&app, "/jobs")
        .await
        .expect(StatusCode::OK)
        .has(&["<h1>Overview</h1>", r#"href="/jobs/assets/dashboard.css"#]);
    // axum's `nest` does not send `/jobs/` to the nested router: the dashboard's links never
    // use it.
    let page = get(&app, "/jobs/jobs/failed").await;
    page.lacks(&[r#"href="/jobs/""#]);
}

#[tokio::test]
async fn each_state_lists_its_jobs_and_no_other() {
    for prefix in PREFIXES {
        let (_c, s, app) = app_at(prefix).await;
        let cases = [
            ("enqueued", vec![s.enqueued]),
            ("scheduled", vec![s.scheduled, s.retry]),
            ("processing", vec![s.processing]),
            ("succeeded", vec![s.succeeded]),
            ("failed", vec![s.failed]),
            ("deleted", vec![s.deleted]),
            ("awaiting", vec![s.awaiting]),
            ("retries", vec![s.retry]),
        ];
        for (list, expected) in cases {
            let page = get(&app, &format!("{prefix}/jobs/{list}")).await;
            page.expect(StatusCode::OK);
            let mut rows = page.job_rows();
            rows.sort();
            let mut want: Vec<String> = expected.iter().map(ToString::to_string).collect();
            want.sort();
            assert_eq!(rows, want, "list {list} at {prefix:?}");
            for id in &want {
                page.has(&[&format!(
                    r#"data-testid="job-link" href="{prefix}/job/{id}""#
                )]);
            }
            page.has(&[
                &format!(r#"data-testid="nav-{list}" href="{prefix}/jobs/{list}" class="active""#),
                &format!(r#"hx-get="{prefix}/jobs/{list}""#),
                &format!(r#"action="{prefix}/jobs/bulk""#),
            ]);
        }
        // The failed job's error shows in the list; a retry shows its error too.
        get(&app, &format!("{prefix}/jobs/failed"))
            .await
            .has(&["boom: the disk is full…"]);
        get(&app, &format!("{prefix}/jobs/retries"))
            .await
            .has(&["gateway timed out"]);
    }
}

#[tokio::test]
async fn bulk_buttons_fit_the_list() {
    let (_c, _s, app) = app_at("/jobs").await;
    let has = |page: &Answer, id: &str| page.body.contains(&format!(r#"data-testid="{id}""#));
    let failed = get(&app, "/jobs/jobs/failed").await;
    assert!(
        has(&failed, "bulk-requeue")
            && has(&failed, "bulk-delete")
            && !has(&failed, "bulk-enqueue")
    );
    let scheduled = get(&app, "/jobs/jobs/scheduled").await;
    assert!(has(&scheduled, "bulk-enqueue") && has(&scheduled, "bulk-delete"));
    let deleted = get(&app, "/jobs/jobs/deleted").await;
    assert!(has(&deleted, "bulk-requeue") && !has(&deleted, "bulk-delete"));
    assert_eq!(failed.count(r#"data-testid="select-job""#), 1);
}

#[tokio::test]
async fn enqueued_per_queue_lists_in_fetch_order() {
    let client = client().await;
    // Priority first, then first in, first out.
    let low = client.enqueue(Mail::with_args(1)).await.unwrap();
    let high = client
        .enqueue(Mail::with_args(2).priority(5))
        .await
        .unwrap();
    let low2 = client.enqueue(Mail::with_args(3)).await.unwrap();
    client
        .enqueue(Echo::with_args(serde_json::json!(0)))
        .await
        .unwrap();
    let app = mount(&Dashboard::new(client), "/jobs");
    let page = get(&app, "/jobs/jobs/enqueued?queue=mail").await;
    page.expect(StatusCode::OK)
        .has(&["Enqueued jobs in queue mail", "page 1 of 1"]);
    assert_eq!(
        page.job_rows(),
        vec![high.to_string(), low.to_string(), low2.to_string()]
    );
    // Without a queue: every queue as a chip, with its count.
    let all = get(&app, "/jobs/jobs/enqueued").await;
    all.has(&[
        r#"href="/jobs/jobs/enqueued?queue=mail""#,
        r#"href="/jobs/jobs/enqueued?queue=default""#,
    ]);
    assert_eq!(all.job_rows().len(), 4);
}

#[tokio::test]
async fn pages_of_twenty_with_links_and_a_refusal_of_bad_numbers() {
    let client = client().await;
    let ids = client
        .enqueue_many((0..45).map(|i| Echo::with_args(serde_json::json!(i))))
        .await
        .unwrap();
    let app = mount(&Dashboard::new(client), "/admin/jobs");
    let p1 = get(&app, "/admin/jobs/jobs/enqueued").await;
    p1.expect(StatusCode::OK).has(&[
        "page 1 of 3",
        r#"href="/admin/jobs/jobs/enqueued?page=2" data-testid="page-next""#,
        r#"href="/admin/jobs/jobs/enqueued?page=3" data-testid="page-last""#,
    ]);
    // Newest first.
    let newest: Vec<String> = ids.iter().rev().take(20).map(ToString::to_string).collect();
    assert_eq!(p1.job_rows(), newest);
    let p3 = get(&app, "/admin/jobs/jobs/enqueued?page=3").await;
    p3.has(&["page 3 of 3", r#"data-testid="page-prev""#])
        .lacks(&[r#"data-testid="page-next""#]);
    assert_eq!(p3.job_rows().len(), 5);
    assert_eq!(p3.job_rows()[4], ids[0].to_string());

    for bad in ["0", "-1", "two", "1.5", "99999999999999999999"] {
        get(&app, &format!("/admin/jobs/jobs/enqueued?page={bad}"))
            .await
            .expect(StatusCode::BAD_REQUEST)
            .has(&[
                "`page` must be a whole number from 1",
                "<h1>Bad request</h1>",
            ]);
    }
    get(&app, "/admin/jobs/api/jobs?state=enqueued&page=0")
        .await
        .expect(StatusCode::BAD_REQUEST);
    // Past the end: said, not an error.
    get(&app, "/admin/jobs/jobs/enqueued?page=7")
        .await
        .expect(StatusCode::OK)
        .has(&["Page 7 is past the last page (3)"]);
}

#[tokio::test]
async fn filters_by_name_text_queue_and_time() {
    let client = client().await;
    let mail = client.enqueue(Mail::with_args(77)).await.unwrap();
    let echo = client
        .enqueue(Echo::with_args(serde_json::json!({"customer": "ACME-42"})))
        .await
        .unwrap();
    let app = mount(&Dashboard::new(client), "/jobs");
    let by_name = get(&app, "/jobs/jobs/enqueued?name=send_mail").await;
    assert_eq!(by_name.job_rows(), vec![mail.to_string()]);
    let by_text = get(&app, "/jobs/jobs/enqueued?q=ACME-42").await;
    assert_eq!(by_text.job_rows(), vec![echo.to_string()]);
    // Filters survive into the page links and the live refresh.
    by_text.has(&[
        r#"hx-get="/jobs/jobs/enqueued?q=ACME-42""#,
        r#"value="ACME-42""#,
    ]);
    let by_queue = get(&app, "/jobs/jobs/enqueued?queue=mail&name=echo").await;
    assert!(by_queue.job_rows().is_empty());
    by_queue.has(&["No job matches these filters."]);

    let past = get(&app, "/jobs/jobs/enqueued?to=2000-01-01T00:00:00Z").await;
    assert!(past.job_rows().is_empty());
    let window = get(
        &app,
        "/jobs/jobs/enqueued?from=2000-01-01T00:00&to=2999-01-01T00:00",
    )
    .await;
    assert_eq!(window.job_rows().len(), 2);
    window.has(&[r#"value="2000-01-01T00:00:00""#]);
    get(&app, "/jobs/jobs/enqueued?from=yesterday")
        .await
        .expect(StatusCode::BAD_REQUEST)
        .has(&["`from` = &#34;yesterday&#34; is not a time"]);
}

#[tokio::test]
async fn search_finds_by_id_argument_text_and_queue_in_every_state() {
    let (_c, s, app) = app_at("/jobs").await;
    let by_id = get(&app, &format!("/jobs/search?q={}", s.failed)).await;
    by_id.expect(StatusCode::OK);
    assert_eq!(by_id.job_rows(), vec![s.failed.to_string()]);
    by_id.has(&[
        r#"<span class="state state-failed">failed</span>"#,
        &format!(
            r#"data-testid="search-input" type="search" name="q" value="{}""#,
            s.failed
        ),
    ]);
    let by_arg = get(&app, "/jobs/search?q=to+delete").await;
    assert_eq!(by_arg.job_rows(), vec![s.deleted.to_string()]);
    let by_queue = get(&app, "/jobs/search?q=default").await;
    // Seeded: five jobs of one batch, one scheduled, one deleted, one awaiting.
    assert_eq!(by_queue.job_rows().len(), 8);
    get(&app, "/jobs/search")
        .await
        .expect(StatusCode::OK)
        .has(&["Type a job id"])
        .lacks(&[r#"data-testid="job-row""#]);
    get(&app, "/jobs/search?q=no-such-text-anywhere")
        .await
        .has(&["No job matches"]);
}

#[tokio::test]
async fn a_job_page_shows_arguments_options_links_and_full_history() {
    for prefix in PREFIXES {
        let client = client().await;
        let parent = client
            .enqueue(
                Echo::with_args(serde_json::json!({"order": 1001, "items": ["a", "b"]}))
                    .queue("payments")
                    .priority(3)
                    .timeout(Duration::from_secs(90))
                    .retry_delays([Duration::from_secs(1), Duration::from_secs(30)]),
            )
            .await
            .unwrap();
        let child = client
            .continue_with(
                parent,
                Echo::with_args(serde_json::json!("audit")),
                firelane::ContinueOn::Failed,
            )
            .await
            .unwrap();
        let t = take(&client, "payments", 1).await;
        finish(
            &client,
            t[0],
            firelane::storage::Outcome::Retry {
                at: chrono::Utc::now(),
                error: "card gateway said 503\ncaused by: <html>busy</html>".into(),
            },
        )
        .await;
        let app = mount(&Dashboard::new(client.clone()), prefix);
        let page = get(&app, &format!("{prefix}/job/{parent}")).await;
        page.expect(StatusCode::OK);
        assert_eq!(page.testid_text("job-state"), "enqueued");
        page.has(&[
            "data-testid=\"job-args\">{\n  &#34;items&#34;: [\n    &#34;a&#34;,\n    &#34;b&#34;\n  ],\n  &#34;order&#34;: 1001\n}</pre>",
        ]);
        page.has(&[
            &format!(r#"href="{prefix}/jobs/enqueued?queue=payments" data-testid="job-queue">payments</a>"#),
            "<dt>Priority</dt><dd>3</dd>",
            "<dt>Timeout</dt><dd>1 min 30 s</dd>",
            "2 retries after 1.00 s, 30.00 s",
            r#"data-testid="job-attempts">1 of 3<"#,
            &format!(r#"<a href="{prefix}/job/{child}" class="mono">{child}</a> echo"#),
            // The attempt's error, escaped, in a <pre>, with the server and duration.
            "<pre class=\"error\">card gateway said 503\ncaused by: &#60;html&#62;busy&#60;/html&#62;</pre>",
            "test-server",
            "1.23 s",
            &format!(r#"action="{prefix}/job/{parent}/delete""#),
            &format!(r#"hx-get="{prefix}/job/{parent}""#),
        ]);
        // Enqueued, processing, enqueued again after the failed attempt: newest first.
        assert_eq!(
            page.count(r#"data-testid="history-row""#),
            3,
            "{}",
            page.body
        );
        let first_row = page.body.find(r#"data-testid="history-row""#).unwrap();
        assert!(
            page.body[first_row..]
                .starts_with(r#"data-testid="history-row" data-state="enqueued""#)
        );
        // An enqueued job can be deleted, not requeued or cancelled.
        page.has(&[r#"data-testid="action-delete""#]).lacks(&[
            r#"data-testid="action-requeue""#,
            r#"data-testid="action-cancel""#,
        ]);

        let child_page = get(&app, &format!("{prefix}/job/{child}")).await;
        assert_eq!(child_page.testid_text("job-state"), "awaiting");
        child_page.has(&[
            &format!(r#"Continues <a href="{prefix}/job/{parent}" class="mono">{parent}</a> (echo, <span class="state state-enqueued">enqueued</span>) when it has failed."#),
        ]);
    }
}

#[tokio::test]
async fn action_buttons_follow_the_state() {
    let (_c, s, app) = app_at("/jobs").await;
    let buttons = |page: &Answer| {
        ["action-requeue", "action-delete", "action-cancel"]
            .into_iter()
            .filter(|b| page.body.contains(&format!(r#"data-testid="{b}""#)))
            .collect::<Vec<_>>()
    };
    let failed = get(&app, &format!("/jobs/job/{}", s.failed)).await;
    assert_eq!(buttons(&failed), ["action-requeue", "action-delete"]);
    failed
        .has(&["boom: the disk is full\ncaused by: no space left on device</pre>"])
        .lacks(&["hx-trigger"]);
    let processing = get(&app, &format!("/jobs/job/{}", s.processing)).await;
    assert_eq!(
        buttons(&processing),
        ["action-requeue", "action-delete", "action-cancel"]
    );
    let scheduled = get(&app, &format!("/jobs/job/{}", s.scheduled)).await;
    scheduled.has(&[
        r#"data-testid="action-requeue">Enqueue now<"#,
        "<dt>Due</dt>",
    ]);
    let deleted = get(&app, &format!("/jobs/job/{}", s.deleted)).await;
    assert_eq!(buttons(&deleted), ["action-requeue"]);
    let awaiting = get(&app, &format!("/jobs/job/{}", s.awaiting)).await;
    assert_eq!(buttons(&awaiting), ["action-delete"]);
}

#[tokio::test]
async fn unknown_jobs_states_and_pages_are_404_pages() {
    for prefix in PREFIXES {
        let (_c, _s, app) = app_at(prefix).await;
        get(
            &app,
            &format!("{prefix}/job/01a20b91-ee48-76b0-a0be-5714617836c3"),
        )
        .await
        .expect(StatusCode::NOT_FOUND)
        .has(&[
            "<h1>Not found</h1>",
            "no job with id 01a20b91-ee48-76b0-a0be-5714617836c3",
            &format!(r#"data-testid="nav-failed" href="{prefix}/jobs/failed""#),
        ]);
        get(&app, &format!("{prefix}/job/42"))
            .await
            .expect(StatusCode::NOT_FOUND)
            .has(&["&#34;42&#34; is not a job id"]);
        get(&app, &format!("{prefix}/jobs/running"))
            .await
            .expect(StatusCode::NOT_FOUND)
            .has(&["&#34;running&#34; is not a job state"]);
        get(&app, &format!("{prefix}/no/such/page"))
            .await
            .expect(StatusCode::NOT_FOUND)
            .has(&["There is no page at /no/such/page."]);
    }
}

#[tokio::test]
async fn job_arguments_and_names_are_shown_as_text_not_markup() {
    let client = client().await;
    let xss = "<script>alert(1)</script>";
    let id = client
        .enqueue(Echo::with_args(serde_json::json!(xss)))
        .await
        .unwrap();
    let mut named = NewJob::new("<img src=x onerror=alert(2)>", r#""<b>bold</b>""#);
    named.queue = "default".into();
    let named = client.enqueue_raw(named).await.unwrap();
    let app = mount(&Dashboard::new(client), "/jobs");
    let escaped = "&#60;script&#62;alert(1)&#60;/script&#62;";

    let job = get(&app, &format!("/jobs/job/{id}")).await;
    job.expect(StatusCode::OK).has(&[escaped]).lacks(&[xss]);
    assert_eq!(job.testid_text("job-args"), format!("&#34;{escaped}&#34;"));

    let list = get(&app, "/jobs/jobs/enqueued").await;
    list.has(&[
        escaped,
        "&#60;img src=x onerror=alert(2)&#62;",
        "&#60;b&#62;bold",
    ])
    .lacks(&[xss, "<img src=x", "<b>bold"]);
    let search = get(&app, "/jobs/search?q=%3Cscript%3E").await;
    assert_eq!(search.job_rows(), vec![id.to_string()]);
    search
        .has(&[escaped, r#"value="&#60;script&#62;""#])
        .lacks(&[xss]);
    let named_page = get(&app, &format!("/jobs/job/{named}")).await;
    named_page
        .lacks(&["<img src=x"])
        .has(&["&#60;img src=x onerror=alert(2)&#62;"]);
}

#[tokio::test]
async fn recurring_servers_and_queues_pages() {
    for prefix in PREFIXES {
        let client = client().await;
        client
            .recurring("nightly <report>")
            .cron("0 3 * * *")
            .tz("Europe/Istanbul")
            .upsert(Mail::with_args(1))
            .await
            .unwrap();
        client
            .recurring("hourly")
            .cron("0 * * * *")
            .upsert(Echo::with_args(serde_json::json!(null)))
            .await
            .unwrap();
        client.pause_recurring("hourly").await.unwrap();
        client.trigger("hourly").await.unwrap();
        client.enqueue(Mail::with_args(5)).await.unwrap();
        client.pause_queue("mail").await.unwrap();
        let server = firelane::Server::builder(client.storage().clone())
            .register(Echo)
            .queues(["default", "reports"])
            .workers(3)
            .start()
            .await
            .unwrap();
        let app = mount(&Dashboard::new(client.clone()), prefix);

        let recurring = get(&app, &format!("{prefix}/recurring")).await;
        recurring.expect(StatusCode::OK).has(&[
            r#"data-testid="recurring-row" data-recurring-id="nightly &#60;report&#62;""#,
            r#"data-testid="recurring-row" data-recurring-id="hourly""#,
            "0 3 * * *",
            "Europe/Istanbul",
            &format!(r#"action="{prefix}/recurring/nightly%20%3Creport%3E/trigger""#),
            &format!(r#"action="{prefix}/recurring/hourly/resume""#),
            &format!(r#"action="{prefix}/recurring/nightly%20%3Creport%3E/pause""#),
            r#"data-testid="recurring-status">paused<"#,
            r#"data-testid="recurring-status">active<"#,
            r#"data-testid="recurring-last-job""#,
        ]);
        assert_eq!(recurring.count(r#"data-testid="action-trigger""#), 2);
        assert_eq!(
            recurring.count(r#"data-testid="action-pause-recurring""#),
            1
        );
        assert_eq!(
            recurring.count(r#"data-testid="action-resume-recurring""#),
            1
        );

        let servers = get(&app, &format!("{prefix}/servers")).await;
        servers.expect(StatusCode::OK).has(&[
            &format!(r#"data-server-id="{}""#, server.id()),
            "default, reports",
            r#"<td class="num">3</td>"#,
        ]);

        let queues = get(&app, &format!("{prefix}/queues")).await;
        queues.expect(StatusCode::OK).has(&[
            r#"data-testid="queue-row" data-queue="mail""#,
            r#"data-testid="queue-row" data-queue="reports""#,
            &format!(r#"action="{prefix}/queues/mail/resume""#),
            &format!(r#"action="{prefix}/queues/reports/pause""#),
            &format!(r#"href="{prefix}/jobs/enqueued?queue=mail""#),
        ]);
        let mail_row = &queues.body[queues.body.find(r#"data-queue="mail""#).unwrap()..];
        assert!(mail_row.contains(r#"data-testid="queue-enqueued">1<"#));
        let paused = mail_row.find(r#"data-testid="queue-paused">"#).unwrap();
        assert!(mail_row[paused..].starts_with(r#"data-testid="queue-paused">yes<"#));
        server.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn empty_store_pages_say_so() {
    let app = mount(&Dashboard::new(client().await), "/jobs");
    get(&app, "/jobs/jobs/failed")
        .await
        .expect(StatusCode::OK)
        .has(&["No failed jobs.", "page 1 of 1"]);
    get(&app, "/jobs/servers")
        .await
        .has(&["No server is running"]);
    get(&app, "/jobs/recurring")
        .await
        .has(&["No recurring jobs."]);
    get(&app, "/jobs/queues").await.has(&["No queue has jobs"]);
    let overview = get(&app, "/jobs").await;
    assert_eq!(overview.testid_text("state-count-failed"), "0");
}

#[tokio::test]
async fn title_appears_in_header_and_title_bar() {
    let app = mount(
        &Dashboard::new(client().await).title("Billing <jobs>"),
        "/jobs",
    );
    get(&app, "/jobs/queues").await.has(&[
        "<title>Queues · Billing &#60;jobs&#62;</title>",
        r#"<a class="brand" href="/jobs">Billing &#60;jobs&#62;</a>"#,
    ]);
}

#[tokio::test]
async fn assets_are_compiled_in_and_cached_for_long() {
    let app = mount(&Dashboard::new(client().await), "/admin/jobs");
    for (file, ty, needle) in [
        ("htmx.min.js", "text/javascript", "htmx"),
        ("uPlot.iife.min.js", "text/javascript", "uPlot"),
        ("uPlot.min.css", "text/css", ".uplot"),
        ("dashboard.css", "text/css", "prefers-color-scheme: dark"),
        ("dashboard.js", "text/javascript", "live-graph"),
    ] {
        let a = get(&app, &format!("/admin/jobs/assets/{file}")).await;
        a.expect(StatusCode::OK).has(&[needle]);
        assert!(a.header("content-type").starts_with(ty), "{file}");
        assert_eq!(
            a.header("cache-control"),
            "public, max-age=31536000, immutable"
        );
    }
    get(&app, "/admin/jobs/assets/secrets.txt")
        .await
        .expect(StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn pages_carry_security_headers_and_are_not_cached() {
    let app = mount(&Dashboard::new(client().await), "/jobs");
    let page = get(&app, "/jobs").await;
    assert!(
        page.header("content-security-policy")
            .contains("script-src 'self'")
    );
    assert!(
        page.header("content-security-policy")
            .contains("frame-ancestors 'none'")
    );
    assert_eq!(page.header("x-frame-options"), "DENY");
    assert_eq!(page.header("x-content-type-options"), "nosniff");
    assert_eq!(page.header("cache-control"), "no-store");
    assert!(page.header("content-type").starts_with("text/html"));
}

#[tokio::test]
async fn a_job_run_by_a_real_server_shows_succeeded_with_its_server() {
    let client = client().await;
    let server = firelane::Server::builder(client.storage().clone())
        .register(Echo)
        .start()
        .await
        .unwrap();
    let id = client
        .enqueue(Echo::with_args(serde_json::json!("hello")))
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while client.job(id).await.unwrap().job.state != JobState::Succeeded {
        assert!(std::time::Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let app = mount(&Dashboard::new(client.clone()), "/jobs");
    let page = get(&app, &format!("/jobs/job/{id}")).await;
    assert_eq!(page.testid_text("job-state"), "succeeded");
    page.has(&[server.id().as_str()]);
    server.shutdown().await.unwrap();
}
