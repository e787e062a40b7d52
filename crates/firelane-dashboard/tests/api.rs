//! The JSON API: every route's answer against a seeded store, and its errors.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use firelane::Job;
use firelane_dashboard::Dashboard;
use support::*;

#[tokio::test]
async fn stats_are_the_store_counters() {
    let client = client().await;
    seed(&client).await;
    let app = mount(&Dashboard::new(client), "/admin/jobs");
    let a = get(&app, "/admin/jobs/api/stats").await;
    a.expect(StatusCode::OK);
    assert!(a.header("content-type").starts_with("application/json"));
    assert_eq!(a.header("cache-control"), "no-store");
    let json = a.json();
    assert_eq!(json["states"]["enqueued"], 1, "{json}");
    assert_eq!(json["states"]["scheduled"], 2);
    assert_eq!(json["states"]["failed"], 1);
    assert_eq!(json["succeeded_total"], 1);
    assert_eq!(json["failed_total"], 1);
    assert_eq!(json["queues"][0]["name"], "default");
    assert_eq!(json["queues"][0]["enqueued"], 1);
    assert_eq!(json["queues"][0]["processing"], 1);
}

#[tokio::test]
async fn history_has_one_entry_per_hour_ending_with_this_one() {
    let client = client().await;
    seed(&client).await;
    let app = mount(&Dashboard::new(client), "/jobs");
    for (range, hours) in [("24h", 24), ("7d", 168)] {
        let json = get(&app, &format!("/jobs/api/history?range={range}"))
            .await
            .expect(StatusCode::OK)
            .json();
        let list = json.as_array().unwrap();
        assert_eq!(list.len(), hours, "{range}");
        let last: DateTime<Utc> = list[hours - 1]["hour"].as_str().unwrap().parse().unwrap();
        let first: DateTime<Utc> = list[0]["hour"].as_str().unwrap().parse().unwrap();
        assert!(last <= Utc::now() && Utc::now() - last < chrono::Duration::hours(1));
        assert_eq!(last - first, chrono::Duration::hours(hours as i64 - 1));
        // The seeded job that succeeded and the one that failed, this hour.
        assert_eq!(list[hours - 1]["succeeded"], 1, "{json}");
        assert_eq!(list[hours - 1]["failed"], 1);
        assert_eq!(list[0]["succeeded"], 0);
    }
    // The default range is a day.
    let json = get(&app, "/jobs/api/history").await.json();
    assert_eq!(json.as_array().unwrap().len(), 24);
    let bad = get(&app, "/jobs/api/history?range=1y").await;
    bad.expect(StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.json()["error"],
        "range \"1y\" is not known: use 24h or 7d"
    );
}

#[tokio::test]
async fn jobs_by_state_with_paging_and_totals() {
    let client = client().await;
    let s = seed(&client).await;
    client
        .enqueue_many((0..25).map(Mail::with_args))
        .await
        .unwrap();
    let app = mount(&Dashboard::new(client), "/jobs");

    let failed = get(&app, "/jobs/api/jobs?state=failed").await.json();
    assert_eq!(failed["jobs"][0]["id"], s.failed.to_string());
    assert_eq!(failed["jobs"][0]["state"], "failed");
    assert!(
        failed["jobs"][0]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("boom")
    );
    assert_eq!(failed["total"], 1);
    assert_eq!(failed["has_next"], false);

    let mail = get(&app, "/jobs/api/jobs?state=enqueued&queue=mail")
        .await
        .json();
    assert_eq!(mail["jobs"].as_array().unwrap().len(), 20);
    assert_eq!(mail["total"], 25);
    assert_eq!(mail["has_next"], true);
    assert_eq!(mail["per_page"], 20);
    let page2 = get(&app, "/jobs/api/jobs?state=enqueued&queue=mail&page=2")
        .await
        .json();
    assert_eq!(page2["jobs"].as_array().unwrap().len(), 5);
    assert_eq!(page2["page"], 2);
    assert_eq!(page2["has_next"], false);

    let retries = get(&app, "/jobs/api/jobs?state=retries").await.json();
    assert_eq!(retries["jobs"][0]["id"], s.retry.to_string());
    assert!(retries["total"].is_null());
    // No state: every job; a search by name text.
    let all = get(&app, "/jobs/api/jobs?q=send_mail").await.json();
    assert_eq!(all["jobs"].as_array().unwrap().len(), 20);
    assert!(all["total"].is_null());
    assert_eq!(all["has_next"], true);

    let bad = get(&app, "/jobs/api/jobs?state=running").await;
    bad.expect(StatusCode::BAD_REQUEST);
    assert!(
        bad.json()["error"]
            .as_str()
            .unwrap()
            .contains("\"running\" is not a job state")
    );
    get(&app, "/jobs/api/jobs?from=soon")
        .await
        .expect(StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn one_job_with_history_and_unknown_ones() {
    let client = client().await;
    let s = seed(&client).await;
    let app = mount(&Dashboard::new(client), "/jobs");
    let json = get(&app, &format!("/jobs/api/job/{}", s.processing))
        .await
        .expect(StatusCode::OK)
        .json();
    assert_eq!(json["job"]["state"], "processing");
    assert_eq!(json["history"].as_array().unwrap().len(), 2);
    assert_eq!(json["continuations"][0], s.awaiting.to_string());

    let missing = get(&app, "/jobs/api/job/01a20b91-ee48-76b0-a0be-5714617836c3").await;
    missing.expect(StatusCode::NOT_FOUND);
    assert_eq!(
        missing.json()["error"],
        "no job with id 01a20b91-ee48-76b0-a0be-5714617836c3"
    );
    get(&app, "/jobs/api/job/nope")
        .await
        .expect(StatusCode::NOT_FOUND);
    let unknown = get(&app, "/jobs/api/nothing").await;
    unknown.expect(StatusCode::NOT_FOUND);
    assert!(unknown.json()["error"].is_string());
}

#[tokio::test]
async fn recurring_servers_and_queues() {
    let client = client().await;
    client
        .recurring("nightly")
        .cron("0 3 * * *")
        .tz("Europe/Istanbul")
        .upsert(Mail::with_args(1))
        .await
        .unwrap();
    client.trigger("nightly").await.unwrap();
    client.pause_queue("reports").await.unwrap();
    let server = firelane::Server::builder(client.storage().clone())
        .register(Echo)
        .workers(2)
        .start()
        .await
        .unwrap();
    let app = mount(&Dashboard::new(client), "/jobs");

    let recurring = get(&app, "/jobs/api/recurring").await.json();
    assert_eq!(recurring[0]["id"], "nightly");
    assert_eq!(recurring[0]["cron"], "0 3 * * *");
    assert_eq!(recurring[0]["time_zone"], "Europe/Istanbul");
    assert_eq!(recurring[0]["last_job_state"], "enqueued");

    let servers = get(&app, "/jobs/api/servers").await.json();
    assert_eq!(servers[0]["info"]["id"], server.id().as_str());
    assert_eq!(servers[0]["info"]["workers"], 2);
    assert!(servers[0]["last_heartbeat"].is_string());

    let queues = get(&app, "/jobs/api/queues").await.json();
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mail", "reports"]);
    assert_eq!(queues[1]["paused"], true);
    server.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_api_follows_the_access_rules() {
    let client = client().await;
    let app = mount(&Dashboard::new(client.clone()), "/jobs");
    let remote: SocketAddr = "198.51.100.7:443".parse().unwrap();
    for uri in [
        "/jobs/api/stats",
        "/jobs/api/history",
        "/jobs/api/jobs",
        "/jobs/api/recurring",
        "/jobs/api/servers",
        "/jobs/api/queues",
    ] {
        let a = Call::get(uri).peer(Some(remote)).send(&app).await;
        a.expect(StatusCode::FORBIDDEN);
        assert!(
            a.json()["error"]
                .as_str()
                .unwrap()
                .contains("local machine")
        );
        Call::get(uri).send(&app).await.expect(StatusCode::OK);
    }
    let hooked = mount(
        &Dashboard::new(client).authorize(|p| p.uri.query() == Some("key=1")),
        "/jobs",
    );
    get(&hooked, "/jobs/api/stats")
        .await
        .expect(StatusCode::FORBIDDEN);
    Call::get("/jobs/api/stats?key=1")
        .peer(Some(remote))
        .send(&hooked)
        .await
        .expect(StatusCode::OK);
}
