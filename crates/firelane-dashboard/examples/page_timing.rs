//! How long the dashboard's pages take with a million jobs in a SQLite store.
//!
//! ```sh
//! cargo run --release -p firelane-dashboard --example page_timing [-- /path/to/store.db]
//! ```
//!
//! Seeds the store (unless the file already holds jobs) with 1,010,000 jobs through the
//! `Client`, 1,000 per `enqueue_many` call or batch, then moves some through the store's own
//! `fetch` and `complete`, as a server would, for a mix of states: 650,000 enqueued (in two
//! queues), 110,000 scheduled (10,000 of them waiting for a retry), 1,000 processing,
//! 217,550 succeeded, 11,450 failed, 10,000 deleted and 10,000 awaiting. Then renders each
//! page five times through the router (no network) and prints the median, the slowest run and
//! the body's size. Without a path the store goes to a temporary directory, removed at the end.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use chrono::Utc;
use firelane::storage::{Completion, FetchRequest, Outcome};
use firelane::{Client, ContinueOn, Job, JobContext, JobError, JobQuery, JobState, ServerId};
use firelane_dashboard::Dashboard;
use http_body_util::BodyExt;
use tower::ServiceExt;

/// The seeded job: an order to process, with a customer's name in its arguments.
struct Order;

#[derive(serde::Serialize, serde::Deserialize)]
struct OrderArgs {
    order: u64,
    customer: String,
}

impl Job for Order {
    const NAME: &'static str = "process_order";
    type Args = OrderArgs;
    async fn run(&self, _: JobContext, _: OrderArgs) -> Result<(), JobError> {
        Ok(())
    }
}

fn order(n: u64) -> firelane::JobRequest<Order> {
    let req = Order::with_args(OrderArgs {
        order: n,
        customer: format!("customer-{}", n % 5000),
    });
    if n.is_multiple_of(2) {
        req.queue("mail")
    } else {
        req
    }
}

const BATCH: u64 = 1000;

async fn seed(client: &Client) {
    let started = Instant::now();
    let mut n = 0u64;
    // 800,000 enqueued.
    for _ in 0..800 {
        client
            .enqueue_many((n..n + BATCH).map(order))
            .await
            .unwrap();
        n += BATCH;
    }
    eprintln!("  800,000 enqueued in {:?}", started.elapsed());
    // 100,000 scheduled an hour or more ahead.
    for _ in 0..100 {
        let mut b = client.batch();
        for i in n..n + BATCH {
            b.schedule(order(i), Duration::from_secs(3600 + i % 86_400))
                .unwrap();
        }
        b.submit().await.unwrap();
        n += BATCH;
    }
    // 100,000 created enqueued, 10,000 of them deleted, and 10,000 continuations of others.
    let mut to_delete = Vec::new();
    for k in 0..100 {
        let ids = client
            .enqueue_many((n..n + BATCH).map(order))
            .await
            .unwrap();
        n += BATCH;
        if k < 10 {
            to_delete.extend(ids);
        }
    }
    for chunk in to_delete.chunks(BATCH as usize) {
        client.delete_many(chunk).await.unwrap();
    }
    let parents = client
        .list(JobQuery::new().state(JobState::Enqueued).page(0, 1000))
        .await
        .unwrap();
    for _ in 0..10 {
        let mut b = client.batch();
        for (i, p) in parents.iter().enumerate() {
            b.continue_with(p.id, order(n + i as u64), ContinueOn::Succeeded)
                .unwrap();
        }
        b.submit().await.unwrap();
        n += BATCH;
    }
    eprintln!(
        "  {} jobs created in {:?}; now moving some through their states",
        n,
        started.elapsed()
    );
    // Fetch 240,000 as a server would and complete them: succeeded, failed, retry later; keep
    // the last 1,000 processing.
    let server = ServerId::generate();
    for round in 0..240u64 {
        let queue = if round % 2 == 0 { "default" } else { "mail" };
        let fetched = client
            .storage()
            .fetch(FetchRequest::new(
                server.clone(),
                vec![queue.to_owned()],
                BATCH as usize,
                Utc::now(),
                Duration::from_secs(24 * 3600),
            ))
            .await
            .unwrap();
        if round == 239 {
            break;
        }
        let now = Utc::now();
        let completions = fetched
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let outcome = match (round, i % 20) {
                    (r, _) if r < 10 => Outcome::Retry {
                        at: now + chrono::Duration::hours(2),
                        error: "payment gateway timed out".into(),
                    },
                    (_, 0) => Outcome::Failed {
                        error: format!("card declined for order {}", f.id),
                    },
                    _ => Outcome::Succeeded,
                };
                Completion::new(
                    f.id,
                    f.lease,
                    server.clone(),
                    outcome,
                    Duration::from_millis(12),
                    now,
                )
            })
            .collect();
        client.storage().complete(completions).await.unwrap();
    }
    eprintln!("  seeded in {:?}", started.elapsed());
}

async fn render(app: &axum::Router, uri: &str) -> (Duration, usize, u16) {
    let mut request = Request::get(uri).body(Body::empty()).unwrap();
    request
        .extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 1))));
    let started = Instant::now();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (started.elapsed(), body.len(), status)
}

#[tokio::main]
async fn main() {
    let arg = std::env::args().nth(1);
    let dir = tempfile::tempdir().unwrap();
    let path = arg.map_or_else(|| dir.path().join("timing.db"), std::path::PathBuf::from);
    let client = Client::new(
        firelane::sqlite(&format!("sqlite://{}", path.display()))
            .await
            .unwrap(),
    );
    let total: u64 = client.stats().await.unwrap().states.values().sum();
    if total == 0 {
        eprintln!("seeding {} with 1,000,000 jobs", path.display());
        seed(&client).await;
    } else {
        eprintln!("{} already holds {total} jobs", path.display());
    }
    let stats = client.stats().await.unwrap();
    eprintln!("jobs per state: {:?}", stats.states);

    let some_failed = client
        .list(JobQuery::new().state(JobState::Failed).page(0, 1))
        .await
        .unwrap()[0]
        .id;
    let app = axum::Router::new().nest("/jobs", Dashboard::new(client.clone()).router());
    let mut pages: Vec<String> = vec!["/jobs".into()];
    for s in JobState::ALL {
        pages.push(format!("/jobs/jobs/{s}"));
    }
    pages.extend(
        [
            "/jobs/jobs/retries",
            "/jobs/jobs/enqueued?queue=mail",
            "/jobs/jobs/enqueued?queue=mail&page=1000",
            "/jobs/jobs/succeeded?page=2",
            "/jobs/jobs/succeeded?page=100",
            "/jobs/jobs/succeeded?page=5000",
            "/jobs/jobs/failed?name=process_order",
            "/jobs/jobs/failed?q=customer-42",
            "/jobs/search?q=customer-4242",
            "/jobs/search?q=no-such-text",
            "/jobs/recurring",
            "/jobs/servers",
            "/jobs/queues",
            "/jobs/api/stats",
            "/jobs/api/jobs?state=failed",
        ]
        .map(String::from),
    );
    pages.push(format!("/jobs/search?q={some_failed}"));
    pages.push(format!("/jobs/job/{some_failed}"));

    // One unmeasured pass to warm the page cache.
    for p in &pages {
        render(&app, p).await;
    }
    println!(
        "{:<48} {:>10} {:>10} {:>8} {:>6}",
        "page", "median", "max", "bytes", "status"
    );
    for p in &pages {
        let mut times = Vec::new();
        let mut size = 0;
        let mut status = 0;
        for _ in 0..5 {
            let (t, s, st) = render(&app, p).await;
            times.push(t);
            size = s;
            status = st;
        }
        times.sort();
        let flag = if times[2] > Duration::from_millis(100) {
            "  > 100 ms"
        } else {
            ""
        };
        println!(
            "{:<48} {:>8.1}ms {:>8.1}ms {:>8} {:>6}{flag}",
            p,
            times[2].as_secs_f64() * 1000.0,
            times[4].as_secs_f64() * 1000.0,
            size,
            status
        );
    }
}
