//! An outage of the database in the middle of a run: the store's role is refused new
//! connections and every connection it has is terminated (`pg_terminate_backend`) for three
//! seconds, which is what a server restart looks like to clients, without restarting the
//! server that other tests share. Enqueues during the outage return an error instead of
//! hanging; the server backs off, reconnects and finishes every job; nothing is lost and each
//! job succeeds once.
#![allow(clippy::unwrap_used)]

mod postgres_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use firelane::{Client, Job, JobContext, JobError, JobState, Server, Storage};
use firelane_postgres::{PostgresConfig, PostgresStorage};
use postgres_support::{available, drop_schema, exec, fresh_schema, url};
use sqlx::Connection;

struct Work;

impl Job for Work {
    const NAME: &'static str = "pg_outage_job";
    type Args = u32;
    async fn run(&self, _ctx: JobContext, _n: u32) -> Result<(), JobError> {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

async fn succeeded(store: &Arc<dyn Storage>) -> u64 {
    store.stats().await.unwrap().count(JobState::Succeeded)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_mid_run_loses_nothing_and_enqueues_fail_fast() {
    firelane_conformance::support::init_tracing();
    if !available().await {
        return;
    }
    let role = format!(
        "fl_outage_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let schema = fresh_schema();
    let mut admin = sqlx::PgConnection::connect(&url()).await.unwrap();
    exec(
        &mut admin,
        &format!("CREATE ROLE {role} LOGIN; CREATE SCHEMA \"{schema}\" AUTHORIZATION {role}"),
    )
    .await;
    let u = url();
    let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let role_url = format!("postgres://{role}@{host}");
    let store: Arc<dyn Storage> = Arc::new(
        PostgresStorage::connect_with(
            PostgresConfig::from_url(&role_url)
                .unwrap()
                .schema(&schema)
                .acquire_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap(),
    );
    let client = Client::new(Arc::clone(&store));
    const FIRST: u32 = 3000;
    const AFTER: u32 = 500;
    client
        .enqueue_many((0..FIRST).map(Work::with_args))
        .await
        .unwrap();
    let server = Server::builder(Arc::clone(&store))
        .register(Work)
        .workers(8)
        .lease(Duration::from_secs(10))
        .heartbeat_interval(Duration::from_millis(300))
        .poll_interval(Duration::from_millis(200))
        .start()
        .await
        .unwrap();

    let start = Instant::now();
    while succeeded(&store).await < 500 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the server did not start working"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The outage: no new connections for the role, and every one it has is terminated.
    exec(&mut admin, &format!("ALTER ROLE {role} NOLOGIN")).await;
    let terminated: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
    )
    .bind(&role)
    .fetch_all(&mut admin)
    .await
    .unwrap();
    let outage = Instant::now();
    eprintln!("outage: terminated {} connections", terminated.len());
    assert!(!terminated.is_empty());
    // pg_terminate_backend only signals: a backend in the middle of a COMMIT may still finish
    // it. The outage begins once every one of the role's backends is gone.
    loop {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE usename = $1")
                .bind(&role)
                .fetch_one(&mut admin)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        assert!(
            outage.elapsed() < Duration::from_secs(10),
            "{left} terminated backends are still there"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Enqueues during the outage are errors, soon, not hangs: the first may meet a terminated
    // connection, the next a refused one.
    for _ in 0..2 {
        let t = Instant::now();
        let res = tokio::time::timeout(
            Duration::from_secs(20),
            client.enqueue(Work::with_args(u32::MAX)),
        )
        .await
        .expect("an enqueue during the outage hung");
        eprintln!(
            "enqueue during the outage, after {:?}: {res:?}",
            t.elapsed()
        );
        assert!(res.is_err(), "an enqueue during the outage succeeded");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    // Nothing moves while the database is away.
    let mut frozen = None;
    for _ in 0..10 {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{schema}\".jobs WHERE state = 'succeeded'"
        )))
        .fetch_one(&mut admin)
        .await
        .unwrap();
        assert!(
            frozen.is_none_or(|f| f == n),
            "jobs finished during the outage"
        );
        frozen = Some(n);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3).saturating_sub(outage.elapsed())).await;
    exec(&mut admin, &format!("ALTER ROLE {role} LOGIN")).await;
    eprintln!("outage over after {:?}", outage.elapsed());

    // After it, enqueues work again and the server finishes everything.
    client
        .enqueue_many((FIRST..FIRST + AFTER).map(Work::with_args))
        .await
        .unwrap();
    let total = u64::from(FIRST + AFTER);
    let back = Instant::now();
    while succeeded(&store).await < total {
        assert!(
            back.elapsed() < Duration::from_secs(120),
            "not every job finished after the outage: {:?}",
            store.stats().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("every job done {:?} after the outage", back.elapsed());
    server.shutdown().await.unwrap();

    let stats = store.stats().await.unwrap();
    for state in JobState::ALL {
        let want = if state == JobState::Succeeded {
            total
        } else {
            0
        };
        assert_eq!(stats.count(state), want, "jobs {state}: {stats:?}");
    }
    let q = |sql: &str| {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(
            sql.replace("S.history", postgres_support::HISTORY)
                .replace("S.", &format!("\"{schema}\".")),
        ))
    };
    assert_eq!(
        q("SELECT count(*) FROM S.jobs")
            .fetch_one(&mut admin)
            .await
            .unwrap(),
        total as i64
    );
    assert_eq!(
        q("SELECT count(*) FROM S.history WHERE state = 'succeeded'")
            .fetch_one(&mut admin)
            .await
            .unwrap(),
        total as i64,
        "a job succeeded more than once"
    );
    drop(client);
    drop(store);
    drop_schema(&schema);
    exec(
        &mut admin,
        &format!("DROP OWNED BY {role}; DROP ROLE {role}"),
    )
    .await;
}
