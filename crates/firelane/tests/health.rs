//! Readiness: `Server::health`, `HealthCheck` and `Client::health` over a store that works, one
//! that fails, one that hangs, and one that stops taking heartbeats. The failing store is a
//! wrapper around SQLite: the thing under test is the check, not the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use firelane::storage::{
    Completion, CompletionStatus, Enqueued, FetchRequest, FetchedJob, Firing, Heartbeat,
    HeartbeatReply, Promotion, Recovery, RecurringDef, Signal,
};
use firelane::{
    Change, Client, Error, HourlyStats, Job, JobContext, JobDetails, JobError, JobId, JobQuery,
    JobRecord, NewJob, RecurringRecord, Result, Retention, Server, ServerId, ServerRecord, Stats,
    Storage,
};
use tokio::sync::broadcast;

struct Noop;

impl Job for Noop {
    const NAME: &'static str = "noop";
    type Args = ();

    async fn run(&self, _: JobContext, _: ()) -> Result<(), JobError> {
        Ok(())
    }
}

/// A store that can be made to fail every call, hang its reads, or drop heartbeats.
#[derive(Debug)]
struct Switchable {
    inner: Arc<dyn Storage>,
    down: AtomicBool,
    hang: AtomicBool,
    no_heartbeats: AtomicBool,
}

impl Switchable {
    fn check(&self, op: &'static str) -> Result<()> {
        if self.down.load(Ordering::SeqCst) {
            Err(Error::backend(op, "the test store is down"))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Storage for Switchable {
    fn backend(&self) -> &'static str {
        "switchable"
    }
    async fn enqueue(&self, jobs: Vec<NewJob>, now: DateTime<Utc>) -> Result<Vec<Enqueued>> {
        self.check("enqueue")?;
        self.inner.enqueue(jobs, now).await
    }
    async fn fetch(&self, request: FetchRequest) -> Result<Vec<FetchedJob>> {
        self.check("fetch")?;
        self.inner.fetch(request).await
    }
    async fn complete(&self, completions: Vec<Completion>) -> Result<Vec<CompletionStatus>> {
        self.check("complete")?;
        self.inner.complete(completions).await
    }
    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<HeartbeatReply> {
        self.check("heartbeat")?;
        if self.no_heartbeats.load(Ordering::SeqCst) {
            return Err(Error::backend("heartbeat", "heartbeats are refused"));
        }
        self.inner.heartbeat(heartbeat).await
    }
    async fn remove_server(&self, server: &ServerId) -> Result<()> {
        self.check("remove_server")?;
        self.inner.remove_server(server).await
    }
    async fn promote_due(&self, now: DateTime<Utc>, limit: usize) -> Result<Promotion> {
        self.check("promote_due")?;
        self.inner.promote_due(now, limit).await
    }
    async fn recover(&self, now: DateTime<Utc>, dead_after: Duration) -> Result<Recovery> {
        self.check("recover")?;
        self.inner.recover(now, dead_after).await
    }
    async fn expire(&self, now: DateTime<Utc>, retention: Retention, limit: usize) -> Result<u64> {
        self.check("expire")?;
        self.inner.expire(now, retention, limit).await
    }
    async fn delete(&self, ids: &[JobId], reason: &str, now: DateTime<Utc>) -> Result<Vec<Change>> {
        self.check("delete")?;
        self.inner.delete(ids, reason, now).await
    }
    async fn requeue(
        &self,
        ids: &[JobId],
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Change>> {
        self.check("requeue")?;
        self.inner.requeue(ids, reason, now).await
    }
    async fn job(&self, id: JobId) -> Result<Option<JobDetails>> {
        self.check("job")?;
        self.inner.job(id).await
    }
    async fn list_jobs(&self, query: JobQuery) -> Result<Vec<JobRecord>> {
        self.check("list_jobs")?;
        self.inner.list_jobs(query).await
    }
    async fn stats(&self) -> Result<Stats> {
        self.check("stats")?;
        self.inner.stats().await
    }
    async fn stats_history(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<HourlyStats>> {
        self.check("stats_history")?;
        self.inner.stats_history(from, to).await
    }
    async fn set_queue_paused(&self, queue: &str, paused: bool, now: DateTime<Utc>) -> Result<()> {
        self.check("set_queue_paused")?;
        self.inner.set_queue_paused(queue, paused, now).await
    }
    async fn servers(&self) -> Result<Vec<ServerRecord>> {
        self.check("servers")?;
        if self.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        self.inner.servers().await
    }
    async fn upsert_recurring(
        &self,
        def: RecurringDef,
        next_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.check("upsert_recurring")?;
        self.inner.upsert_recurring(def, next_run, now).await
    }
    async fn remove_recurring(&self, id: &str) -> Result<bool> {
        self.check("remove_recurring")?;
        self.inner.remove_recurring(id).await
    }
    async fn recurring(&self, id: &str) -> Result<Option<RecurringRecord>> {
        self.check("recurring")?;
        self.inner.recurring(id).await
    }
    async fn list_recurring(&self) -> Result<Vec<RecurringRecord>> {
        self.check("list_recurring")?;
        self.inner.list_recurring().await
    }
    async fn set_recurring_paused(
        &self,
        id: &str,
        paused: bool,
        next_run: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        self.check("set_recurring_paused")?;
        self.inner
            .set_recurring_paused(id, paused, next_run, now)
            .await
    }
    async fn fire_recurring(&self, firing: Firing) -> Result<bool> {
        self.check("fire_recurring")?;
        self.inner.fire_recurring(firing).await
    }
    async fn trigger_recurring(&self, id: &str, now: DateTime<Utc>) -> Result<JobId> {
        self.check("trigger_recurring")?;
        self.inner.trigger_recurring(id, now).await
    }
    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.inner.subscribe()
    }
}

async fn switchable() -> Arc<Switchable> {
    let inner = firelane::sqlite(":memory:").await.expect("store");
    Arc::new(Switchable {
        inner: Arc::new(inner),
        down: AtomicBool::new(false),
        hang: AtomicBool::new(false),
        no_heartbeats: AtomicBool::new(false),
    })
}

async fn start(store: &Arc<Switchable>) -> Server {
    let storage: Arc<dyn Storage> = store.clone();
    Server::builder(storage)
        .register(Noop)
        .lease(Duration::from_secs(1))
        .heartbeat_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(100))
        .start()
        .await
        .expect("server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_server_is_ready_and_reports_it_as_json() {
    let store = switchable().await;
    let server = start(&store).await;

    let health = server.health().await;
    assert!(health.is_ready(), "{:?}", health.problems);
    assert!(health.problems.is_empty());
    assert!(health.store.reachable);
    assert_eq!(health.store.servers_alive, Some(1));
    let s = health.server.as_ref().expect("a server section");
    assert_eq!(&s.id, server.id());
    assert!(s.running && s.heartbeat_fresh);
    assert!(s.stopped_loops.is_empty());
    assert!(s.last_heartbeat.is_some());
    assert_eq!(s.heartbeat_max_age_ms, 300);

    let json: serde_json::Value = serde_json::to_value(&health).expect("serializes");
    assert_eq!(json["ready"], true);
    assert_eq!(json["server"]["running"], true);
    assert_eq!(json["store"]["reachable"], true);
    assert_eq!(json["problems"], serde_json::json!([]));

    let storage: Arc<dyn Storage> = store.clone();
    let client_health = Client::new(storage).health().await;
    assert!(client_health.is_ready());
    assert!(client_health.server.is_none());
    let json = serde_json::to_value(&client_health).expect("serializes");
    assert!(json.get("server").is_none());

    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_is_not_ready_once_shut_down() {
    let store = switchable().await;
    let server = start(&store).await;
    let check = server.health_check();
    assert!(check.check().await.is_ready());

    server.shutdown().await.expect("shutdown");
    let health = check.check().await;
    assert!(!health.is_ready());
    let s = health.server.as_ref().expect("a server section");
    assert!(!s.running);
    assert_eq!(s.last_heartbeat, None, "the server unregistered");
    assert!(
        health.problems.iter().any(|p| p.contains("shut down")),
        "{:?}",
        health.problems
    );
    // The store itself is fine: a client in the same process is still ready.
    assert!(health.store.reachable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_makes_server_and_client_unready_until_it_recovers() {
    let store = switchable().await;
    let server = start(&store).await;
    let storage: Arc<dyn Storage> = store.clone();
    let client = Client::new(storage);
    assert!(server.health().await.is_ready());

    store.down.store(true, Ordering::SeqCst);
    let health = server.health().await;
    assert!(!health.is_ready());
    assert!(!health.store.reachable);
    assert!(
        health
            .store
            .error
            .as_deref()
            .is_some_and(|e| e.contains("the test store is down")),
        "{:?}",
        health.store.error
    );
    assert!(health.server.as_ref().is_some_and(|s| s.running));
    assert!(!client.health().await.is_ready());

    store.down.store(false, Ordering::SeqCst);
    // The next heartbeat (every 100 ms) makes it fresh again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let health = server.health().await;
        if health.is_ready() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again: {:?}",
            health.problems
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(client.health().await.is_ready());
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_is_unready_within_the_timeout() {
    let store = switchable().await;
    let server = start(&store).await;
    store.hang.store(true, Ordering::SeqCst);

    let started = std::time::Instant::now();
    let health = server
        .health_check()
        .timeout(Duration::from_millis(200))
        .check()
        .await;
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!health.is_ready());
    assert!(
        health
            .store
            .error
            .as_deref()
            .is_some_and(|e| e.contains("did not answer")),
        "{:?}",
        health.store.error
    );
    store.hang.store(false, Ordering::SeqCst);
    server.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_heartbeats_fail_turns_unready_once_its_last_one_is_stale() {
    let store = switchable().await;
    let server = start(&store).await;
    assert!(server.health().await.is_ready());

    store.no_heartbeats.store(true, Ordering::SeqCst);
    // Three heartbeat intervals (300 ms) and a margin.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let health = server.health().await;
    assert!(!health.is_ready());
    assert!(health.store.reachable);
    let s = health.server.as_ref().expect("a server section");
    assert!(s.running);
    assert!(!s.heartbeat_fresh);
    assert!(
        health.problems.iter().any(|p| p.contains("heartbeat")),
        "{:?}",
        health.problems
    );
    store.no_heartbeats.store(false, Ordering::SeqCst);
    server.shutdown().await.expect("shutdown");
}
