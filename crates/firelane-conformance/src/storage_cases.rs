//! Storage-level cases: every promise of the [`Storage`] trait, checked through the trait alone.
//!
//! Each case takes a fresh, empty store. Time is passed into every call, so the cases move the
//! clock instead of sleeping: a lease lapses because `recover` is called an hour later, not
//! because an hour passed.
//!
//! Run them all with [`crate::storage_suite!`].
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane_core::{
    Change, Completion, CompletionStatus, ContinueOn, CronSchedule, Enqueued, Error, FetchRequest,
    FetchedJob, Firing, Heartbeat, HistoryEntry, Initial, JobDetails, JobId, JobQuery, JobState,
    JobTemplate, LeaseId, Misfire, NewJob, Outcome, RecurringDef, RecurringRecord, Retention,
    RetryPolicy, ServerId, ServerInfo, Signal, Storage, plan_firing,
};
use tokio::sync::broadcast;

/// Generates one `#[tokio::test]` per storage case, each given a fresh store from `$factory`
/// (an `async fn() -> Arc<dyn Storage>`). The tests are named after the cases.
#[macro_export]
macro_rules! storage_suite {
    ($factory:path) => {
        $crate::__storage_tests!(
            $factory;
            enqueue_one_creates_an_enqueued_job,
            enqueue_many_creates_all_in_order,
            enqueue_is_all_or_none_when_a_parent_is_unknown,
            enqueue_scheduled_waits_until_due,
            enqueue_continuation_of_a_parent_in_the_same_batch,
            fetch_returns_what_a_server_needs,
            fetch_is_fifo_within_a_queue,
            fetch_takes_higher_priority_first,
            fetch_drains_queues_in_the_order_listed,
            fetch_ignores_unlisted_queues_and_respects_limit,
            fetch_leaves_jobs_of_unknown_names_enqueued,
            complete_succeeded,
            complete_retry_in_the_past_enqueues_at_once,
            complete_retry_in_the_future_schedules,
            complete_failed,
            complete_snoozed_does_not_count_the_attempt,
            complete_cancelled_deletes,
            complete_handed_back_does_not_count_the_attempt,
            complete_without_the_lease_is_stale,
            complete_applied_twice_is_applied_once,
            complete_duplicate_in_one_batch_applies_once,
            complete_batch_answers_each_in_order,
            illegal_transitions_are_refused,
            heartbeat_registers_the_server_and_extends_leases,
            heartbeat_reports_lost_leases,
            heartbeat_does_not_extend_a_lease_it_lost,
            remove_server_forgets_it,
            promote_due_enqueues_due_jobs_only,
            promote_due_respects_limit_in_due_order,
            recover_removes_dead_servers,
            recover_requeues_lapsed_leases,
            recover_fails_a_lapsed_last_attempt,
            late_completion_after_recovery_is_stale,
            expire_removes_finished_jobs_past_retention,
            expire_honours_custom_retention,
            expire_respects_limit,
            delete_from_each_state,
            delete_processing_revokes_the_lease,
            requeue_from_each_state,
            requeue_resets_attempts_of_finished_jobs,
            requeue_processing_revokes_the_lease,
            history_records_every_transition,
            list_jobs_filters,
            list_jobs_pages_newest_first,
            stats_counts_states_queues_and_servers,
            stats_keep_running_totals_and_hourly_figures,
            stats_history_is_kept_eight_days,
            paused_queue_is_not_fetched,
            list_jobs_search,
            list_jobs_created_range_and_retries,
            list_jobs_enqueued_in_fetch_order,
            trace_context_travels_with_the_job,
            stats_tell_when_the_head_job_was_enqueued,
            continuation_chain,
            continuation_fan_out,
            continuation_parent_deleted,
            continuation_parent_failed,
            continuation_any_finished,
            continuation_of_finished_parent,
            continuation_deleted_with_its_parent_releases_its_children,
            signal_enqueued,
            signal_scheduled,
            signal_revoked,
            concurrent_fetchers_never_share_a_job,
            recurring_upsert_then_read_back,
            recurring_upsert_keeps_next_run_unless_the_schedule_changed,
            recurring_upsert_keeps_paused_and_last_run,
            recurring_list_is_ordered_by_id,
            recurring_remove,
            recurring_pause_and_resume,
            recurring_fire_creates_the_jobs,
            recurring_fire_without_jobs_moves_next_run_only,
            recurring_fire_records_an_error,
            recurring_fire_applies_once,
            recurring_concurrent_firings_apply_once,
            recurring_trigger,
            signal_recurring_changed,
        );
    };
}

/// Expands to one test per listed case (used by [`storage_suite!`]).
#[doc(hidden)]
#[macro_export]
macro_rules! __storage_tests {
    ($factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let Some(store) = $crate::support::MaybeStore::into_store($factory().await) else {
                    return;
                };
                $crate::storage_cases::$case(::std::sync::Arc::clone(&store)).await;
                $crate::storage_cases::counters_agree(&store).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Checks that the counts [`Storage::stats`] keeps agree with the jobs the store holds, by
/// listing every job: run after every case, so that each operation a case uses is checked to
/// keep its counters right.
pub async fn counters_agree(store: &Arc<dyn Storage>) {
    use std::collections::BTreeMap;
    let stats = store.stats().await.unwrap();
    let mut states: BTreeMap<JobState, u64> = BTreeMap::new();
    let mut queues: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut offset = 0;
    loop {
        let page = store
            .list_jobs(JobQuery::new().page(offset, 500))
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        offset += page.len() as u64;
        for job in page {
            *states.entry(job.state).or_default() += 1;
            match job.state {
                JobState::Enqueued => queues.entry(job.queue).or_default().0 += 1,
                JobState::Processing => queues.entry(job.queue).or_default().1 += 1,
                _ => {}
            }
        }
    }
    for state in JobState::ALL {
        assert_eq!(
            stats.count(state),
            states.get(&state).copied().unwrap_or(0),
            "stats() counts {state} jobs wrong: {stats:?}"
        );
    }
    let counted: BTreeMap<String, (u64, u64)> = stats
        .queues
        .iter()
        .filter(|q| q.enqueued > 0 || q.processing > 0)
        .map(|q| (q.name.clone(), (q.enqueued, q.processing)))
        .collect();
    assert_eq!(counted, queues, "stats() counts queues wrong: {stats:?}");
}

/// A fixed point in time, in whole seconds (so that no store's precision matters).
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(Utc::now().timestamp(), 0).unwrap()
}

fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

const LEASE: Duration = Duration::from_secs(30);
const DAY: Duration = Duration::from_secs(24 * 3600);

fn server(name: &str) -> ServerId {
    ServerId::from_string(format!("conformance-{name}"))
}

fn job(name: &str) -> NewJob {
    NewJob::new(name, "{}")
}

fn job_in(name: &str, queue: &str) -> NewJob {
    let mut j = NewJob::new(name, "{}");
    j.queue = queue.to_owned();
    j
}

fn scheduled(name: &str, at: DateTime<Utc>) -> NewJob {
    let mut j = NewJob::new(name, "{}");
    j.initial = Initial::Scheduled { at };
    j
}

fn continuation(name: &str, parent: JobId, on: ContinueOn) -> NewJob {
    let mut j = NewJob::new(name, "{}");
    j.initial = Initial::Awaiting { parent, on };
    j
}

async fn add(store: &Arc<dyn Storage>, job: NewJob, now: DateTime<Utc>) -> JobId {
    let id = job.id;
    let created = store.enqueue(vec![job], now).await.unwrap();
    assert_eq!(created.len(), 1, "enqueue of one job answered {created:?}");
    assert_eq!(created[0].id, id);
    id
}

async fn add_many(store: &Arc<dyn Storage>, jobs: Vec<NewJob>, now: DateTime<Utc>) -> Vec<JobId> {
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let created = store.enqueue(jobs, now).await.unwrap();
    assert_eq!(created.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    ids
}

fn request(server: &ServerId, queues: &[&str], limit: usize, now: DateTime<Utc>) -> FetchRequest {
    FetchRequest::new(
        server.clone(),
        queues.iter().map(|q| (*q).to_owned()).collect(),
        limit,
        now,
        LEASE,
    )
}

async fn fetch(
    store: &Arc<dyn Storage>,
    server: &ServerId,
    queues: &[&str],
    limit: usize,
    now: DateTime<Utc>,
) -> Vec<FetchedJob> {
    store
        .fetch(request(server, queues, limit, now))
        .await
        .unwrap()
}

/// Fetches exactly one job from the default queue.
async fn fetch_one(store: &Arc<dyn Storage>, server: &ServerId, now: DateTime<Utc>) -> FetchedJob {
    let mut got = fetch(store, server, &["default"], 1, now).await;
    assert_eq!(got.len(), 1, "expected one job to fetch, got {got:?}");
    got.pop().unwrap()
}

/// The ids, in order, of single-job fetches until the queues are empty.
async fn drain_one_by_one(
    store: &Arc<dyn Storage>,
    queues: &[&str],
    now: DateTime<Utc>,
) -> Vec<JobId> {
    let s = server("drain");
    let mut ids = Vec::new();
    loop {
        let got = fetch(store, &s, queues, 1, now).await;
        assert!(got.len() <= 1, "a fetch of 1 returned {} jobs", got.len());
        match got.first() {
            Some(j) => ids.push(j.id),
            None => return ids,
        }
        assert!(ids.len() <= 10_000, "fetch never runs dry");
    }
}

fn completion(
    fetched: &FetchedJob,
    server: &ServerId,
    outcome: Outcome,
    at: DateTime<Utc>,
) -> Completion {
    Completion::new(
        fetched.id,
        fetched.lease,
        server.clone(),
        outcome,
        Duration::from_millis(1500),
        at,
    )
}

async fn complete(
    store: &Arc<dyn Storage>,
    fetched: &FetchedJob,
    server: &ServerId,
    outcome: Outcome,
    at: DateTime<Utc>,
) -> CompletionStatus {
    let statuses = store
        .complete(vec![completion(fetched, server, outcome, at)])
        .await
        .unwrap();
    assert_eq!(statuses.len(), 1, "one completion answered {statuses:?}");
    statuses[0]
}

/// Enqueues, fetches and completes a job with `outcome`; returns its id.
async fn run_to(
    store: &Arc<dyn Storage>,
    new: NewJob,
    outcome: Outcome,
    now: DateTime<Utc>,
) -> JobId {
    let id = add(store, new, now).await;
    let s = server("runner");
    let f = fetch_one(store, &s, now).await;
    assert_eq!(f.id, id, "run_to expects an otherwise empty default queue");
    let status = complete(store, &f, &s, outcome, now + secs(1)).await;
    assert!(
        matches!(status, CompletionStatus::Applied(_)),
        "completion was {status:?}"
    );
    id
}

async fn details(store: &Arc<dyn Storage>, id: JobId) -> JobDetails {
    store
        .job(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("job {id} should exist"))
}

async fn state(store: &Arc<dyn Storage>, id: JobId) -> JobState {
    details(store, id).await.job.state
}

fn states(history: &[HistoryEntry]) -> Vec<JobState> {
    history.iter().map(|h| h.state).collect()
}

fn count_state(history: &[HistoryEntry], state: JobState) -> usize {
    history.iter().filter(|h| h.state == state).count()
}

fn info(id: &ServerId, at: DateTime<Utc>) -> ServerInfo {
    let mut info = ServerInfo::new(
        id.clone(),
        vec!["default".to_owned()],
        4,
        vec!["a".to_owned(), "b".to_owned()],
    );
    info.started_at = at;
    info
}

async fn beat(
    store: &Arc<dyn Storage>,
    id: &ServerId,
    now: DateTime<Utc>,
    running: Vec<(JobId, LeaseId)>,
    lease_until: DateTime<Utc>,
) -> Vec<(JobId, JobState)> {
    let reply = store
        .heartbeat(Heartbeat::new(info(id, now), now, running, lease_until))
        .await
        .unwrap();
    let mut lost = reply.lost;
    lost.sort();
    lost
}

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

/// Waits (bounded) for a signal matching `want`, skipping others.
async fn expect_signal(
    rx: &mut broadcast::Receiver<Signal>,
    what: &str,
    want: impl Fn(&Signal) -> bool,
) -> Signal {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(s) if want(&s) => return s,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    panic!("signal channel closed while waiting for {what}")
                }
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(20), wait).await {
        Ok(s) => s,
        Err(_) => panic!("no signal {what} within 20 s"),
    }
}

// ---------------------------------------------------------------------------------------------
// enqueue
// ---------------------------------------------------------------------------------------------

/// One enqueued job is stored as given, enqueued, with no attempt and one history entry.
pub async fn enqueue_one_creates_an_enqueued_job(store: Arc<dyn Storage>) {
    let now = t0();
    let mut new = job_in("send_email", "emails");
    new.args = r#"{"user":42}"#.to_owned();
    new.priority = 7;
    new.retry = RetryPolicy::Count(3);
    new.timeout = Some(Duration::from_secs(90));
    let id = new.id;
    let created = store.enqueue(vec![new], now).await.unwrap();
    assert_eq!(created, vec![Enqueued::new(id, JobState::Enqueued)]);

    let d = details(&store, id).await;
    let r = &d.job;
    assert_eq!(r.id, id);
    assert_eq!(r.name, "send_email");
    assert_eq!(r.queue, "emails");
    assert_eq!(r.priority, 7);
    assert_eq!(r.args, r#"{"user":42}"#);
    assert_eq!(r.state, JobState::Enqueued);
    assert_eq!(r.attempt, 0);
    assert_eq!(r.retry, RetryPolicy::Count(3));
    assert_eq!(r.timeout, Some(Duration::from_secs(90)));
    assert_eq!(r.created_at, now);
    assert_eq!(r.state_at, now);
    assert_eq!(r.parent, None);
    assert_eq!(r.lease_server, None);
    assert_eq!(r.lease_until, None);
    assert_eq!(states(&d.history), vec![JobState::Enqueued]);
    assert_eq!(d.history[0].at, now);
    assert_eq!(d.history[0].attempt, 0);
    assert!(d.continuations.is_empty());

    assert!(store.job(JobId::new()).await.unwrap().is_none());
}

/// Many jobs are created in one call, answered in the order given.
pub async fn enqueue_many_creates_all_in_order(store: Arc<dyn Storage>) {
    let now = t0();
    let jobs: Vec<NewJob> = (0..250)
        .map(|i| NewJob::new("many", format!("{{\"n\":{i}}}")))
        .collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let created = store.enqueue(jobs, now).await.unwrap();
    assert_eq!(created.len(), 250);
    for (e, id) in created.iter().zip(&ids) {
        assert_eq!(e.id, *id);
        assert_eq!(e.state, JobState::Enqueued);
    }
    assert_eq!(store.stats().await.unwrap().count(JobState::Enqueued), 250);
    let d = details(&store, ids[123]).await;
    assert_eq!(d.job.args, r#"{"n":123}"#);

    // An empty batch creates nothing and is not an error.
    assert!(store.enqueue(Vec::new(), now).await.unwrap().is_empty());
}

/// A batch with a continuation of an unknown parent fails with `JobNotFound` and creates
/// nothing.
pub async fn enqueue_is_all_or_none_when_a_parent_is_unknown(store: Arc<dyn Storage>) {
    let now = t0();
    let before = add(&store, job("before"), now).await;
    let unknown = JobId::new();
    let good1 = job("good");
    let good2 = scheduled("good", now + secs(60));
    let bad = continuation("bad", unknown, ContinueOn::Succeeded);
    let ids = [good1.id, good2.id, bad.id];
    let err = store
        .enqueue(vec![good1, good2, bad], now)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::JobNotFound(id) if id == unknown),
        "expected JobNotFound({unknown}), got {err:?}"
    );
    for id in ids {
        assert!(
            store.job(id).await.unwrap().is_none(),
            "job {id} was created"
        );
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Enqueued), 1);
    assert_eq!(stats.count(JobState::Scheduled), 0);
    assert_eq!(stats.count(JobState::Awaiting), 0);
    let listed = store.list_jobs(JobQuery::new()).await.unwrap();
    assert_eq!(
        listed.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![before]
    );
}

/// A job scheduled in the future waits with its due time; one due now or earlier is enqueued.
pub async fn enqueue_scheduled_waits_until_due(store: Arc<dyn Storage>) {
    let now = t0();
    let later = scheduled("later", now + secs(3600));
    let at_now = scheduled("at_now", now);
    let past = scheduled("past", now - secs(3600));
    let ids = [later.id, at_now.id, past.id];
    let created = store.enqueue(vec![later, at_now, past], now).await.unwrap();
    assert_eq!(
        created,
        vec![
            Enqueued::new(ids[0], JobState::Scheduled),
            Enqueued::new(ids[1], JobState::Enqueued),
            Enqueued::new(ids[2], JobState::Enqueued),
        ]
    );
    let d = details(&store, ids[0]).await;
    assert_eq!(d.job.state, JobState::Scheduled);
    assert_eq!(d.job.due_at, Some(now + secs(3600)));
    assert_eq!(states(&d.history), vec![JobState::Scheduled]);

    let got = fetch(&store, &server("a"), &["default"], 10, now).await;
    let got: BTreeSet<JobId> = got.iter().map(|j| j.id).collect();
    assert_eq!(got, BTreeSet::from([ids[1], ids[2]]));
    assert_eq!(state(&store, ids[0]).await, JobState::Scheduled);
}

/// A continuation may follow a job created in the same batch.
pub async fn enqueue_continuation_of_a_parent_in_the_same_batch(store: Arc<dyn Storage>) {
    let now = t0();
    let parent = job("parent");
    let child = continuation("child", parent.id, ContinueOn::Succeeded);
    let grandchild = continuation("grandchild", child.id, ContinueOn::Succeeded);
    let ids = [parent.id, child.id, grandchild.id];
    let created = store
        .enqueue(vec![parent, child, grandchild], now)
        .await
        .unwrap();
    assert_eq!(
        created.iter().map(|e| e.state).collect::<Vec<_>>(),
        vec![JobState::Enqueued, JobState::Awaiting, JobState::Awaiting]
    );
    let c = details(&store, ids[1]).await;
    assert_eq!(c.job.parent, Some((ids[0], ContinueOn::Succeeded)));
    assert_eq!(details(&store, ids[0]).await.continuations, vec![ids[1]]);
    assert_eq!(details(&store, ids[1]).await.continuations, vec![ids[2]]);
}

// ---------------------------------------------------------------------------------------------
// fetch
// ---------------------------------------------------------------------------------------------

/// A fetched job carries its name, queue, arguments, options, attempt 1 and a lease; the
/// record shows it processing on that server until the lease's end.
pub async fn fetch_returns_what_a_server_needs(store: Arc<dyn Storage>) {
    let now = t0();
    let mut new = job_in("report", "reports");
    new.args = r#"{"month":"2025-01","ids":[1,2,3]}"#.to_owned();
    new.priority = -3;
    new.retry = RetryPolicy::Delays(vec![Duration::from_secs(5), Duration::from_secs(60)]);
    new.timeout = Some(Duration::from_millis(2500));
    let id = add(&store, new, now).await;

    let s = server("a");
    let later = now + secs(10);
    let got = fetch(&store, &s, &["reports"], 10, later).await;
    assert_eq!(got.len(), 1);
    let f = &got[0];
    assert_eq!(f.id, id);
    assert_eq!(f.name, "report");
    assert_eq!(f.queue, "reports");
    assert_eq!(f.priority, -3);
    assert_eq!(f.args, r#"{"month":"2025-01","ids":[1,2,3]}"#);
    assert_eq!(f.attempt, 1);
    assert_eq!(
        f.retry,
        RetryPolicy::Delays(vec![Duration::from_secs(5), Duration::from_secs(60)])
    );
    assert_eq!(f.timeout, Some(Duration::from_millis(2500)));
    assert_eq!(f.created_at, now);
    assert_eq!(f.enqueued_at, now);

    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Processing);
    assert_eq!(d.job.attempt, 1);
    assert_eq!(d.job.state_at, later);
    assert_eq!(d.job.lease_server, Some(s.clone()));
    assert_eq!(d.job.lease_until, Some(later + secs(30)));
    assert_eq!(
        states(&d.history),
        vec![JobState::Enqueued, JobState::Processing]
    );
    let p = &d.history[1];
    assert_eq!(p.at, later);
    assert_eq!(p.server, Some(s.clone()));
    assert_eq!(p.attempt, 1);

    // Nothing is left to fetch.
    assert!(fetch(&store, &s, &["reports"], 10, later).await.is_empty());
    // Leases are unique per fetch.
    let id2 = add(&store, job_in("report", "reports"), now).await;
    let f2 = fetch(&store, &s, &["reports"], 10, later).await;
    assert_eq!(f2.len(), 1);
    assert_eq!(f2[0].id, id2);
    assert_ne!(f2[0].lease, f.lease);
}

/// Jobs of one queue and one priority come out in the order they were enqueued, whether
/// enqueued in one batch or one by one.
pub async fn fetch_is_fifo_within_a_queue(store: Arc<dyn Storage>) {
    let now = t0();
    // One batch, same instant: order by arrival within the batch.
    let batch: Vec<NewJob> = (0..20).map(|_| job("fifo")).collect();
    let mut expected = add_many(&store, batch, now).await;
    // One by one, same instant.
    for _ in 0..10 {
        expected.push(add(&store, job("fifo"), now).await);
    }
    // One by one, later instants.
    for i in 1..=10 {
        expected.push(add(&store, job("fifo"), now + secs(i)).await);
    }
    let got = drain_one_by_one(&store, &["default"], now + secs(60)).await;
    assert_eq!(got, expected);
}

/// A job of higher priority is fetched before any of lower priority, whatever the order of
/// arrival; equal priorities keep their order.
pub async fn fetch_takes_higher_priority_first(store: Arc<dyn Storage>) {
    let now = t0();
    let mut jobs = Vec::new();
    for (i, p) in [0, -5, 10, 0, 10, 3, -5, 3].into_iter().enumerate() {
        let mut j = job("prio");
        j.priority = p;
        let id = add(&store, j, now + secs(i64::try_from(i).unwrap())).await;
        jobs.push((p, i, id));
    }
    // Higher priority first, then arrival.
    jobs.sort_by_key(|&(p, i, _)| (-p, i));
    let expected: Vec<JobId> = jobs.iter().map(|&(_, _, id)| id).collect();
    let got = drain_one_by_one(&store, &["default"], now + secs(60)).await;
    assert_eq!(got, expected);

    // A batch fetch takes the highest priorities.
    let mut low = job("prio");
    low.priority = 1;
    let low = add(&store, low, now).await;
    let mut high_ids = BTreeSet::new();
    for _ in 0..3 {
        let mut h = job("prio");
        h.priority = 2;
        high_ids.insert(add(&store, h, now + secs(5)).await);
    }
    let got = fetch(&store, &server("b"), &["default"], 3, now + secs(60)).await;
    assert_eq!(got.iter().map(|j| j.id).collect::<BTreeSet<_>>(), high_ids);
    assert_eq!(state(&store, low).await, JobState::Enqueued);
}

/// Every job of the first queue listed is fetched before any job of the next one, whatever
/// the priorities and the arrival order.
pub async fn fetch_drains_queues_in_the_order_listed(store: Arc<dyn Storage>) {
    let now = t0();
    let mut default_ids = Vec::new();
    for i in 0..3 {
        let mut j = job_in("q", "default");
        j.priority = 100;
        default_ids.push(add(&store, j, now + secs(i)).await);
    }
    let mut critical_ids = Vec::new();
    for i in 0..3 {
        critical_ids.push(add(&store, job_in("q", "critical"), now + secs(10 + i)).await);
    }
    let got = drain_one_by_one(&store, &["critical", "default"], now + secs(60)).await;
    let expected: Vec<JobId> = critical_ids.iter().chain(&default_ids).copied().collect();
    assert_eq!(got, expected);

    // A batch fetch crossing queues takes the rest of the first queue, then the second's.
    let c = add(&store, job_in("q", "critical"), now + secs(30)).await;
    let mut d = Vec::new();
    for i in 0..3 {
        d.push(add(&store, job_in("q", "default"), now + secs(i)).await);
    }
    let got = fetch(
        &store,
        &server("b"),
        &["critical", "default"],
        3,
        now + secs(60),
    )
    .await;
    assert_eq!(
        got.iter().map(|j| j.id).collect::<BTreeSet<_>>(),
        BTreeSet::from([c, d[0], d[1]])
    );
    // Listed the other way round, the other queue comes first.
    let c2 = add(&store, job_in("q", "critical"), now + secs(31)).await;
    let got = drain_one_by_one(&store, &["default", "critical"], now + secs(60)).await;
    assert_eq!(got, vec![d[2], c2]);
}

/// Jobs of queues not listed stay enqueued; a fetch returns at most `limit` jobs.
pub async fn fetch_ignores_unlisted_queues_and_respects_limit(store: Arc<dyn Storage>) {
    let now = t0();
    let other = add(&store, job_in("x", "other"), now).await;
    let ids = add_many(&store, (0..10).map(|_| job("x")).collect(), now).await;
    let s = server("a");
    let got = fetch(&store, &s, &["default"], 4, now).await;
    assert_eq!(got.len(), 4);
    assert_eq!(
        got.iter().map(|j| j.id).collect::<Vec<_>>().len(),
        got.iter().map(|j| j.id).collect::<BTreeSet<_>>().len()
    );
    let got2 = fetch(&store, &s, &["default", "empty"], 100, now).await;
    assert_eq!(got2.len(), 6);
    let all: BTreeSet<JobId> = got.iter().chain(&got2).map(|j| j.id).collect();
    assert_eq!(all, ids.iter().copied().collect());
    assert!(fetch(&store, &s, &["default"], 100, now).await.is_empty());
    assert_eq!(state(&store, other).await, JobState::Enqueued);
    let got3 = fetch(&store, &s, &["other"], 100, now).await;
    assert_eq!(got3.iter().map(|j| j.id).collect::<Vec<_>>(), vec![other]);
}

/// A fetch limited to some job names leaves the others enqueued, even ahead of it in the
/// queue.
pub async fn fetch_leaves_jobs_of_unknown_names_enqueued(store: Arc<dyn Storage>) {
    let now = t0();
    let unknown = add(&store, job("unknown"), now).await;
    let mut high = job("unknown");
    high.priority = 50;
    let unknown_high = add(&store, high, now).await;
    let known1 = add(&store, job("known"), now + secs(1)).await;
    let other = add(&store, job("other_known"), now + secs(2)).await;
    let known2 = add(&store, job("known"), now + secs(3)).await;

    let s = server("a");
    let req = request(&s, &["default"], 10, now + secs(10))
        .names(vec!["known".to_owned(), "other_known".to_owned()]);
    let got = store.fetch(req).await.unwrap();
    assert_eq!(
        got.iter().map(|j| j.id).collect::<BTreeSet<_>>(),
        BTreeSet::from([known1, other, known2])
    );
    assert_eq!(state(&store, unknown).await, JobState::Enqueued);
    assert_eq!(state(&store, unknown_high).await, JobState::Enqueued);
    assert_eq!(details(&store, unknown).await.job.attempt, 0);

    let req = request(&s, &["default"], 10, now + secs(10)).names(vec!["known".to_owned()]);
    assert!(store.fetch(req).await.unwrap().is_empty());
    // A server that knows the name takes them, the higher priority first.
    let got = drain_one_by_one(&store, &["default"], now + secs(20)).await;
    assert_eq!(got, vec![unknown_high, unknown]);
}

// ---------------------------------------------------------------------------------------------
// complete
// ---------------------------------------------------------------------------------------------

/// `Succeeded` ends the job succeeded, keeping its attempt, releasing its lease, and records
/// server and duration.
pub async fn complete_succeeded(store: Arc<dyn Storage>) {
    let now = t0();
    let id = add(&store, job("ok"), now).await;
    let s = server("a");
    let f = fetch_one(&store, &s, now).await;
    let end = now + secs(2);
    assert_eq!(
        complete(&store, &f, &s, Outcome::Succeeded, end).await,
        CompletionStatus::Applied(JobState::Succeeded)
    );
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Succeeded);
    assert_eq!(d.job.state_at, end);
    assert_eq!(d.job.attempt, 1);
    assert_eq!(d.job.lease_server, None);
    assert_eq!(d.job.lease_until, None);
    assert_eq!(
        states(&d.history),
        vec![
            JobState::Enqueued,
            JobState::Processing,
            JobState::Succeeded
        ]
    );
    let last = d.history.last().unwrap();
    assert_eq!(last.at, end);
    assert_eq!(last.server, Some(s));
    assert_eq!(last.attempt, 1);
    assert_eq!(last.duration, Some(Duration::from_millis(1500)));
    assert_eq!(last.error, None);
    assert!(
        fetch(&store, &server("b"), &["default"], 10, end)
            .await
            .is_empty()
    );
}

/// `Retry` with a time already past enqueues the job at once, keeping the attempt count and
/// the error; the next fetch is attempt 2.
pub async fn complete_retry_in_the_past_enqueues_at_once(store: Arc<dyn Storage>) {
    let now = t0();
    let id = add(&store, job("flaky"), now).await;
    let s = server("a");
    let f = fetch_one(&store, &s, now).await;
    let end = now + secs(5);
    let outcome = Outcome::Retry {
        at: end - secs(1),
        error: "connection refused".into(),
    };
    assert_eq!(
        complete(&store, &f, &s, outcome, end).await,
        CompletionStatus::Applied(JobState::Enqueued)
    );
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Enqueued);
    assert_eq!(d.job.attempt, 1);
    assert_eq!(d.job.last_error.as_deref(), Some("connection refused"));
    let last = d.history.last().unwrap();
    assert_eq!(last.state, JobState::Enqueued);
    assert_eq!(last.error.as_deref(), Some("connection refused"));
    assert_eq!(last.server, Some(s.clone()));
    assert_eq!(last.duration, Some(Duration::from_millis(1500)));

    let f2 = fetch_one(&store, &s, end).await;
    assert_eq!(f2.id, id);
    assert_eq!(f2.attempt, 2);
    assert_ne!(f2.lease, f.lease);
}

/// `Retry` with a future time schedules the job for then; it is promoted when due and fetched
/// as attempt 2.
pub async fn complete_retry_in_the_future_schedules(store: Arc<dyn Storage>) {
    let now = t0();
    let id = add(&store, job("flaky"), now).await;
    let s = server("a");
    let f = fetch_one(&store, &s, now).await;
    let end = now + secs(5);
    let at = end + secs(60);
    let outcome = Outcome::Retry {
        at,
        error: "timeout".into(),
    };
    assert_eq!(
        complete(&store, &f, &s, outcome, end).await,
        CompletionStatus::Applied(JobState::Scheduled)
    );
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Scheduled);
    assert_eq!(d.job.due_at, Some(at));
    assert_eq!(d.job.attempt, 1);
    assert_eq!(d.job.last_error.as_deref(), Some("timeout"));
    let last = d.history.last().unwrap();
    assert_eq!(last.state, JobState::Scheduled);
    assert_eq!(last.error.as_deref(), Some("timeout"));
    assert_eq!(last.server, Some(s.clone()));
    assert_eq!(last.attempt, 1);

    assert!(fetch(&store, &s, &["default"], 10, end).await.is_empty());
    let p = store.promote_due(at - secs(1), 100).await.unwrap();
    assert_eq!(p.promoted, 0);
    assert_eq!(p.next_due, Some(at));
    let p = store.promote_due(at, 100).await.unwrap();
    assert_eq!(p.promoted, 1);
    assert_eq!(p.next_due, None);
    let f2 = fetch_one(&store, &s, at).await;
    assert_eq!(f2.id, id);
    assert_eq!(f2.attempt, 2);
}

/// `Failed` ends the job failed with its error.
pub async fn complete_failed(store: Arc<dyn Storage>) {
    let now = t0();
    let id = add(&store, job("doomed"), now).await;
    let s = server("a");
    let f = fetch_one(&store, &s, now).await;
    let end = now + secs(3);
    let outcome = Outcome::Failed {
        error: "account closed: no such user".into(),
    };
    assert_eq!(
        complete(&store, &f, &s, outcome, end).await,
        CompletionStatus::Applied(JobState::Failed)
    );
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Failed);
    assert_eq!(d.job.state_at, end);
    assert_eq!(d.job.attempt, 1);
    assert_eq!(
        d.job.last_error.as_deref(),
        Some("account closed: no such user")
    );
    let last = d.history.last().unwrap();
    assert_eq!(last.state, JobState::Failed);
    assert_eq!(last.error.as_deref(), Some("account closed: no such user"));
    assert_eq!(last.server, Some(s.clone()));
    assert_eq!(last.duration, Some(Duration::from_millis(1500)));
    assert!(fetch(&store, &s, &["default"], 10, end).await.is_empty());
}

/// `Snoozed` schedules the job for later without counting the attempt.
pub async fn complete_snoozed_does_not_count_the_attempt(store: Arc<dyn Storage>) {
    let now = t0();
    let id = add(&store, job("sleepy"), now).await;
    let s = server("a");
    let f = fetch_one(&store, &s, now).await;
    assert_eq!(f.attempt, 1);
    let end = now + secs(1);
    let until = end + secs(30);
    assert_eq!(
        complete(&store, &f, &s, Outcome::Snoozed { until }, end).await,
        CompletionStatus::Applied(JobState::Scheduled)
    );
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Scheduled);
    assert_eq!(d.job.due_at, Some(until));
    assert_eq!(d.job.attempt, 0, "a snoozed attempt is not counted");

    assert_eq!(store.promote_due(until, 10).await.unwrap().promoted, 1);
    let f2 = fetch_one(&store, &s, until).await;
    assert_eq!(f2.id, id);
    assert_eq!(f2.attempt, 1, "a snoozed attempt is not counted");
    // Snoozing again and again never uses up attempts.
    assert_eq!(
        complete(
            &store,
            &f2,
            &s,
            Outcome::Snoozed {
                until: until + secs(30)
            },
            until + secs(1)
        )
        .await,
        CompletionStatus::Applied(JobState::Scheduled)
    );
    assert_eq!(details(&store, id).await.job.attempt, 0);
}

/// `Cancelled` ends the job deleted, with its reason.
pub async fn complete_cancelled_deletes(store: Arc<dyn Storage>) {
    let now = t0();
    let id = add(&store, job("quitter"), now).await;
    let s = server("a");
    let f = fetch_one(&store, &s, now).await;
    let end = now + secs(1);
    let outcome = Outcome::Cancelled {
        reason: "nothing to do".into(),
    };
    assert_eq!(
        complete(&store, &f, &s, outcome, end).await,
        CompletionStatus::Applied(JobState::Deleted)
    );
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Deleted);
    assert_eq!(d.job.reason.as_deref(), Some("nothing to do"));
    let last = d.history.last().unwrap();
    assert_eq!(last.state, JobState::Deleted);
    assert_eq!(last.reason.as_deref(), Some("nothing to do"));
    assert_eq!(last.server, Some(s.clone()));
    assert!(fetch(&store, &s, &["default"], 10, end).await.is_empty());
}

/// `HandedBack` enqueues the job again without counting the attempt.
pub async fn complete_handed_back_does_not_count_the_attempt(store: Arc<dyn Storage>) {
    let now = t0();
    let id = add(&store, job("long"), now).await;
    let s = server("a");
    let f = fetch_one(&store, &s, now).await;
    let end = now + secs(1);
    let outcome = Outcome::HandedBack {
        reason: "shutting down".into(),
    };
    assert_eq!(
        complete(&store, &f, &s, outcome, end).await,
        CompletionStatus::Applied(JobState::Enqueued)
    );
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Enqueued);
    assert_eq!(d.job.attempt, 0, "a handed-back attempt is not counted");
    assert_eq!(d.job.lease_server, None);
    assert_eq!(d.history.last().unwrap().state, JobState::Enqueued);
    assert_eq!(
        d.history.last().unwrap().reason.as_deref(),
        Some("shutting down")
    );
    let f2 = fetch_one(&store, &server("b"), end).await;
    assert_eq!(f2.id, id);
    assert_eq!(f2.attempt, 1, "a handed-back attempt is not counted");
}

/// A completion is stale, and changes nothing, for a job that is not processing under its
/// lease: never fetched, another lease, unknown, or already finished.
pub async fn complete_without_the_lease_is_stale(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let enqueued = add(&store, job("e"), now).await;
    let never = Completion::new(
        enqueued,
        LeaseId::new(),
        s.clone(),
        Outcome::Succeeded,
        Duration::from_secs(1),
        now,
    );
    let unknown = Completion::new(
        JobId::new(),
        LeaseId::new(),
        s.clone(),
        Outcome::Succeeded,
        Duration::from_secs(1),
        now,
    );
    assert_eq!(
        store.complete(vec![never, unknown]).await.unwrap(),
        vec![CompletionStatus::Stale, CompletionStatus::Stale]
    );
    assert_eq!(state(&store, enqueued).await, JobState::Enqueued);
    assert_eq!(details(&store, enqueued).await.history.len(), 1);

    let f = fetch_one(&store, &s, now).await;
    let mut wrong = completion(&f, &s, Outcome::Succeeded, now + secs(1));
    wrong.lease = LeaseId::new();
    assert_eq!(
        store.complete(vec![wrong]).await.unwrap(),
        vec![CompletionStatus::Stale]
    );
    let d = details(&store, enqueued).await;
    assert_eq!(d.job.state, JobState::Processing);
    assert_eq!(d.history.len(), 2);

    // With the right lease it applies; afterwards the same lease is stale for every outcome.
    assert_eq!(
        complete(
            &store,
            &f,
            &s,
            Outcome::Failed { error: "x".into() },
            now + secs(2)
        )
        .await,
        CompletionStatus::Applied(JobState::Failed)
    );
    for outcome in [
        Outcome::Succeeded,
        Outcome::HandedBack { reason: "r".into() },
        Outcome::Retry {
            at: now,
            error: "e".into(),
        },
        Outcome::Cancelled { reason: "c".into() },
    ] {
        assert_eq!(
            complete(&store, &f, &s, outcome.clone(), now + secs(3)).await,
            CompletionStatus::Stale,
            "{outcome:?} on a failed job"
        );
    }
    let d = details(&store, enqueued).await;
    assert_eq!(d.job.state, JobState::Failed);
    assert_eq!(d.history.len(), 3);
}

/// The same completion sent twice (a retried batch) is applied once: the second is stale and
/// leaves one history entry.
pub async fn complete_applied_twice_is_applied_once(store: Arc<dyn Storage>) {
    let now = t0();
    let parent = add(&store, job("p"), now).await;
    let child = add(
        &store,
        continuation("c", parent, ContinueOn::Succeeded),
        now,
    )
    .await;
    let s = server("a");
    let f = fetch_one(&store, &s, now).await;
    let c = completion(&f, &s, Outcome::Succeeded, now + secs(1));
    assert_eq!(
        store.complete(vec![c.clone()]).await.unwrap(),
        vec![CompletionStatus::Applied(JobState::Succeeded)]
    );
    assert_eq!(
        store.complete(vec![c]).await.unwrap(),
        vec![CompletionStatus::Stale]
    );
    let d = details(&store, parent).await;
    assert_eq!(count_state(&d.history, JobState::Succeeded), 1);
    assert_eq!(d.history.len(), 3);
    // The continuation was released once.
    let cd = details(&store, child).await;
    assert_eq!(cd.job.state, JobState::Enqueued);
    assert_eq!(
        states(&cd.history),
        vec![JobState::Awaiting, JobState::Enqueued]
    );
    assert_eq!(store.stats().await.unwrap().count(JobState::Enqueued), 1);
}

/// The same completion twice in one batch is applied once: the second is stale.
pub async fn complete_duplicate_in_one_batch_applies_once(store: Arc<dyn Storage>) {
    let now = t0();
    let id = add(&store, job("dup"), now).await;
    let s = server("a");
    let f = fetch_one(&store, &s, now).await;
    let retry = completion(
        &f,
        &s,
        Outcome::Retry {
            at: now,
            error: "e".into(),
        },
        now + secs(1),
    );
    let statuses = store.complete(vec![retry.clone(), retry]).await.unwrap();
    assert_eq!(
        statuses,
        vec![
            CompletionStatus::Applied(JobState::Enqueued),
            CompletionStatus::Stale
        ]
    );
    let d = details(&store, id).await;
    assert_eq!(
        states(&d.history),
        vec![JobState::Enqueued, JobState::Processing, JobState::Enqueued]
    );
    // It was enqueued once: one fetch gets it, the next finds nothing.
    assert_eq!(
        fetch(&store, &s, &["default"], 10, now + secs(2))
            .await
            .len(),
        1
    );
    assert!(
        fetch(&store, &s, &["default"], 10, now + secs(2))
            .await
            .is_empty()
    );
}

/// A batch of completions is answered one status per completion, in the same order.
pub async fn complete_batch_answers_each_in_order(store: Arc<dyn Storage>) {
    let now = t0();
    let ids = add_many(&store, (0..6).map(|_| job("b")).collect(), now).await;
    let s = server("a");
    let mut fetched = fetch(&store, &s, &["default"], 6, now).await;
    assert_eq!(fetched.len(), 6);
    fetched.sort_by_key(|f| ids.iter().position(|i| *i == f.id).unwrap());
    let end = now + secs(1);
    let outcomes = [
        Outcome::Succeeded,
        Outcome::Failed { error: "f".into() },
        Outcome::Retry {
            at: end + secs(100),
            error: "r".into(),
        },
        Outcome::Snoozed {
            until: end + secs(100),
        },
        Outcome::Cancelled { reason: "c".into() },
        Outcome::HandedBack { reason: "h".into() },
    ];
    let mut batch: Vec<Completion> = fetched
        .iter()
        .zip(outcomes)
        .map(|(f, o)| completion(f, &s, o, end))
        .collect();
    // A stale one in the middle.
    let mut stale = batch[0].clone();
    stale.lease = LeaseId::new();
    stale.id = ids[1];
    batch.insert(3, stale);
    let statuses = store.complete(batch).await.unwrap();
    assert_eq!(
        statuses,
        vec![
            CompletionStatus::Applied(JobState::Succeeded),
            CompletionStatus::Applied(JobState::Failed),
            CompletionStatus::Applied(JobState::Scheduled),
            CompletionStatus::Stale,
            CompletionStatus::Applied(JobState::Scheduled),
            CompletionStatus::Applied(JobState::Deleted),
            CompletionStatus::Applied(JobState::Enqueued),
        ]
    );
    let expect = [
        JobState::Succeeded,
        JobState::Failed,
        JobState::Scheduled,
        JobState::Scheduled,
        JobState::Deleted,
        JobState::Enqueued,
    ];
    for (id, want) in ids.iter().zip(expect) {
        assert_eq!(state(&store, *id).await, want);
    }
}

/// Transitions a state does not allow are refused and change nothing.
pub async fn illegal_transitions_are_refused(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let enqueued = add(&store, job("e"), now).await;
    let awaiting = add(
        &store,
        continuation("w", enqueued, ContinueOn::Succeeded),
        now,
    )
    .await;
    let deleted = add(&store, job_in("d", "other"), now).await;
    store.delete(&[deleted], "gone", now).await.unwrap();

    // Completing a job that was never fetched.
    let c = Completion::new(
        enqueued,
        LeaseId::new(),
        s.clone(),
        Outcome::Succeeded,
        Duration::ZERO,
        now,
    );
    assert_eq!(
        store.complete(vec![c]).await.unwrap(),
        vec![CompletionStatus::Stale]
    );
    // Deleting a deleted job, requeueing an enqueued or awaiting one.
    assert_eq!(
        store.delete(&[deleted], "again", now).await.unwrap(),
        vec![Change::Refused {
            state: JobState::Deleted
        }]
    );
    assert_eq!(
        store
            .requeue(&[enqueued, awaiting], "again", now)
            .await
            .unwrap(),
        vec![
            Change::Refused {
                state: JobState::Enqueued
            },
            Change::Refused {
                state: JobState::Awaiting
            }
        ]
    );
    for (id, want, len) in [
        (enqueued, JobState::Enqueued, 1),
        (awaiting, JobState::Awaiting, 1),
        (deleted, JobState::Deleted, 2),
    ] {
        let d = details(&store, id).await;
        assert_eq!(d.job.state, want);
        assert_eq!(
            d.history.len(),
            len,
            "history of {want} job: {:?}",
            d.history
        );
    }
    // The awaiting job was not released by any of this.
    assert_eq!(
        fetch(&store, &s, &["default"], 10, now)
            .await
            .iter()
            .map(|f| f.id)
            .collect::<Vec<_>>(),
        vec![enqueued]
    );
}

// ---------------------------------------------------------------------------------------------
// heartbeat, servers, remove_server
// ---------------------------------------------------------------------------------------------

/// A heartbeat registers the server as it describes itself, updates its last heartbeat, and
/// extends the leases of the jobs it runs.
pub async fn heartbeat_registers_the_server_and_extends_leases(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    assert!(store.servers().await.unwrap().is_empty());
    assert!(beat(&store, &s, now, Vec::new(), now).await.is_empty());
    let servers = store.servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].info, info(&s, now));
    assert_eq!(servers[0].last_heartbeat, now);
    assert_eq!(store.stats().await.unwrap().servers, 1);

    let ids = add_many(&store, (0..3).map(|_| job("h")).collect(), now).await;
    let mut fetched = fetch(&store, &s, &["default"], 3, now).await;
    fetched.sort_by_key(|f| f.id);
    assert_eq!(fetched.len(), 3);
    for id in &ids {
        assert_eq!(
            details(&store, *id).await.job.lease_until,
            Some(now + secs(30))
        );
    }
    // Extend two of the three.
    let running: Vec<(JobId, LeaseId)> = fetched[..2].iter().map(|f| (f.id, f.lease)).collect();
    let lost = beat(&store, &s, now + secs(20), running, now + secs(80)).await;
    assert!(lost.is_empty(), "nothing was lost, got {lost:?}");
    let servers = store.servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].last_heartbeat, now + secs(20));
    for f in &fetched[..2] {
        let d = details(&store, f.id).await;
        assert_eq!(d.job.lease_until, Some(now + secs(80)));
        assert_eq!(d.job.state, JobState::Processing);
    }
    assert_eq!(
        details(&store, fetched[2].id).await.job.lease_until,
        Some(now + secs(30))
    );
    // The extended leases have not lapsed at +60 s; the other one has.
    let r = store.recover(now + secs(60), DAY).await.unwrap();
    assert_eq!(r.requeued, vec![fetched[2].id]);
    assert!(r.dead_servers.is_empty());
    for f in &fetched[..2] {
        assert_eq!(state(&store, f.id).await, JobState::Processing);
    }
    let r = store.recover(now + secs(81), DAY).await.unwrap();
    assert_eq!(sorted(&r.requeued), vec![fetched[0].id, fetched[1].id]);
    // A second server appears beside the first.
    beat(&store, &server("b"), now + secs(81), Vec::new(), now).await;
    let mut names: Vec<ServerId> = store
        .servers()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.info.id)
        .collect();
    names.sort();
    assert_eq!(names, vec![s, server("b")]);
    assert_eq!(store.stats().await.unwrap().servers, 2);
}

/// A heartbeat reports the running jobs whose lease the server lost, with their state now:
/// deleted, requeued, recovered, or taken by another server.
pub async fn heartbeat_reports_lost_leases(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    beat(&store, &s, now, Vec::new(), now).await;
    let ids = add_many(&store, (0..5).map(|_| job("h")).collect(), now).await;
    let mut fetched = fetch(&store, &s, &["default"], 5, now).await;
    assert_eq!(fetched.len(), 5);
    fetched.sort_by_key(|f| ids.iter().position(|i| *i == f.id).unwrap());
    let running: Vec<(JobId, LeaseId)> = fetched.iter().map(|f| (f.id, f.lease)).collect();

    // 0 is deleted, 1 requeued by hand, 2 and 3 recovered after their lease lapsed (then 3 is
    // taken by server b), 4 is still held.
    store
        .delete(&[ids[0]], "by hand", now + secs(1))
        .await
        .unwrap();
    store
        .requeue(&[ids[1]], "by hand", now + secs(1))
        .await
        .unwrap();
    beat(
        &store,
        &s,
        now + secs(10),
        vec![(ids[4], fetched[4].lease)],
        now + secs(100),
    )
    .await;
    let r = store.recover(now + secs(40), DAY).await.unwrap();
    assert_eq!(sorted(&r.requeued), sorted(&[ids[2], ids[3]]));
    let b = server("b");
    let taken = fetch(&store, &b, &["default"], 10, now + secs(41)).await;
    assert_eq!(
        taken.iter().map(|f| f.id).collect::<BTreeSet<_>>(),
        BTreeSet::from([ids[1], ids[2], ids[3]])
    );
    for f in taken.iter().filter(|f| f.id != ids[3]) {
        let back = Outcome::HandedBack {
            reason: "not now".into(),
        };
        complete(&store, f, &b, back, now + secs(42)).await;
    }

    let lost = beat(&store, &s, now + secs(50), running, now + secs(150)).await;
    assert_eq!(
        lost,
        sorted(&[
            (ids[0], JobState::Deleted),
            (ids[1], JobState::Enqueued),
            (ids[2], JobState::Enqueued),
            (ids[3], JobState::Processing),
        ])
    );
    // The one it still holds was extended; 3's lease stays b's.
    assert_eq!(
        details(&store, ids[4]).await.job.lease_until,
        Some(now + secs(150))
    );
    let d3 = details(&store, ids[3]).await;
    assert_eq!(d3.job.lease_server, Some(b.clone()));
    assert_eq!(d3.job.lease_until, Some(now + secs(41) + secs(30)));
}

/// A server's heartbeat naming a job it lost does not extend the lease of the server that
/// holds the job now.
pub async fn heartbeat_does_not_extend_a_lease_it_lost(store: Arc<dyn Storage>) {
    let now = t0();
    let (a, b) = (server("a"), server("b"));
    let id = add(&store, job("h"), now).await;
    let fa = fetch_one(&store, &a, now).await;
    let r = store.recover(now + secs(31), DAY).await.unwrap();
    assert_eq!(r.requeued, vec![id]);
    let fb = fetch_one(&store, &b, now + secs(32)).await;
    assert_eq!(fb.id, id);
    let lost = beat(
        &store,
        &a,
        now + secs(33),
        vec![(id, fa.lease)],
        now + secs(1000),
    )
    .await;
    assert_eq!(lost, vec![(id, JobState::Processing)]);
    let d = details(&store, id).await;
    assert_eq!(d.job.lease_server, Some(b.clone()));
    assert_eq!(d.job.lease_until, Some(now + secs(62)));
    assert_eq!(d.job.attempt, 2);
    // b's own heartbeat does extend it.
    assert!(
        beat(
            &store,
            &b,
            now + secs(40),
            vec![(id, fb.lease)],
            now + secs(200)
        )
        .await
        .is_empty()
    );
    assert_eq!(
        details(&store, id).await.job.lease_until,
        Some(now + secs(200))
    );
}

/// `remove_server` forgets a server (twice is harmless, an unknown one too).
pub async fn remove_server_forgets_it(store: Arc<dyn Storage>) {
    let now = t0();
    let (a, b) = (server("a"), server("b"));
    beat(&store, &a, now, Vec::new(), now).await;
    beat(&store, &b, now, Vec::new(), now).await;
    assert_eq!(store.servers().await.unwrap().len(), 2);
    store.remove_server(&a).await.unwrap();
    let left = store.servers().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].info.id, b);
    assert_eq!(store.stats().await.unwrap().servers, 1);
    store.remove_server(&a).await.unwrap();
    store.remove_server(&server("never")).await.unwrap();
    assert_eq!(store.servers().await.unwrap().len(), 1);
    store.remove_server(&b).await.unwrap();
    assert!(store.servers().await.unwrap().is_empty());
    assert_eq!(store.stats().await.unwrap().servers, 0);
}

// ---------------------------------------------------------------------------------------------
// promote_due
// ---------------------------------------------------------------------------------------------

/// `promote_due` enqueues the scheduled jobs due at `now` (and only those) and says when the
/// next one is due.
pub async fn promote_due_enqueues_due_jobs_only(store: Arc<dyn Storage>) {
    let now = t0();
    let p = store.promote_due(now, 100).await.unwrap();
    assert_eq!(p.promoted, 0);
    assert_eq!(p.next_due, None);

    let soon = add(&store, scheduled("s", now + secs(10)), now).await;
    let exact = add(&store, scheduled("s", now + secs(20)), now).await;
    let late = add(&store, scheduled("s", now + secs(3600)), now).await;
    let plain = add(&store, job("plain"), now).await;
    let p = store.promote_due(now + secs(5), 100).await.unwrap();
    assert_eq!(p.promoted, 0);
    assert_eq!(p.next_due, Some(now + secs(10)));

    let p = store.promote_due(now + secs(20), 100).await.unwrap();
    assert_eq!(p.promoted, 2);
    assert_eq!(p.next_due, Some(now + secs(3600)));
    for id in [soon, exact] {
        let d = details(&store, id).await;
        assert_eq!(d.job.state, JobState::Enqueued);
        assert_eq!(d.job.state_at, now + secs(20));
        assert_eq!(
            states(&d.history),
            vec![JobState::Scheduled, JobState::Enqueued]
        );
        assert_eq!(d.history[1].at, now + secs(20));
    }
    assert_eq!(state(&store, late).await, JobState::Scheduled);
    assert_eq!(state(&store, plain).await, JobState::Enqueued);

    // Again at the same time: nothing more.
    let p = store.promote_due(now + secs(20), 100).await.unwrap();
    assert_eq!(p.promoted, 0);
    assert_eq!(p.next_due, Some(now + secs(3600)));
    let got = fetch(&store, &server("a"), &["default"], 10, now + secs(21)).await;
    assert_eq!(
        got.iter().map(|f| f.id).collect::<BTreeSet<_>>(),
        BTreeSet::from([soon, exact, plain])
    );
    // A deleted scheduled job is not promoted.
    store.delete(&[late], "no", now + secs(30)).await.unwrap();
    let p = store.promote_due(now + secs(7200), 100).await.unwrap();
    assert_eq!(p.promoted, 0);
    assert_eq!(p.next_due, None);
    assert_eq!(state(&store, late).await, JobState::Deleted);
}

/// `promote_due` takes at most `limit` jobs, the earliest due first.
pub async fn promote_due_respects_limit_in_due_order(store: Arc<dyn Storage>) {
    let now = t0();
    // Created latest-due first, so that creation order and due order disagree.
    let mut by_due = Vec::new();
    for i in (1..=5).rev() {
        let id = add(&store, scheduled("s", now + secs(60 * i)), now).await;
        by_due.push((i, id));
    }
    by_due.sort();
    let ids: Vec<JobId> = by_due.iter().map(|&(_, id)| id).collect();
    let far = add(&store, scheduled("s", now + secs(86_400)), now).await;

    let at = now + secs(600);
    let p = store.promote_due(at, 2).await.unwrap();
    assert_eq!(p.promoted, 2);
    assert_eq!(p.next_due, Some(now + secs(180)));
    for (i, id) in ids.iter().enumerate() {
        let want = if i < 2 {
            JobState::Enqueued
        } else {
            JobState::Scheduled
        };
        assert_eq!(state(&store, *id).await, want, "job due at +{} min", i + 1);
    }
    let p = store.promote_due(at, 2).await.unwrap();
    assert_eq!(p.promoted, 2);
    assert_eq!(p.next_due, Some(now + secs(300)));
    let p = store.promote_due(at, 2).await.unwrap();
    assert_eq!(p.promoted, 1);
    assert_eq!(p.next_due, Some(now + secs(86_400)));
    assert_eq!(state(&store, far).await, JobState::Scheduled);
    assert_eq!(store.stats().await.unwrap().count(JobState::Enqueued), 5);
}

// ---------------------------------------------------------------------------------------------
// recover
// ---------------------------------------------------------------------------------------------

/// `recover` removes the servers silent for longer than `dead_after` and keeps the others.
pub async fn recover_removes_dead_servers(store: Arc<dyn Storage>) {
    let now = t0();
    let (a, b) = (server("a"), server("b"));
    beat(&store, &a, now, Vec::new(), now).await;
    beat(&store, &b, now + secs(3000), Vec::new(), now).await;
    let r = store
        .recover(now + secs(3600), Duration::from_secs(1800))
        .await
        .unwrap();
    assert_eq!(r.dead_servers, vec![a.clone()]);
    assert!(r.requeued.is_empty());
    assert!(r.failed.is_empty());
    let left = store.servers().await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].info.id, b);
    // Again: nothing more to do.
    let r = store
        .recover(now + secs(3600), Duration::from_secs(1800))
        .await
        .unwrap();
    assert!(r.dead_servers.is_empty());
    // A dead server that comes back registers again.
    beat(&store, &a, now + secs(3700), Vec::new(), now).await;
    assert_eq!(store.servers().await.unwrap().len(), 2);
}

/// `recover` re-enqueues processing jobs whose lease lapsed (and only those), recording it;
/// the next fetch is the next attempt.
pub async fn recover_requeues_lapsed_leases(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    beat(&store, &s, now, Vec::new(), now).await;
    let ids = add_many(&store, (0..3).map(|_| job("r")).collect(), now).await;
    let fetched = fetch(&store, &s, &["default"], 2, now).await;
    assert_eq!(fetched.len(), 2);
    let lapsing: Vec<JobId> = sorted(&fetched.iter().map(|f| f.id).collect::<Vec<_>>());
    let waiting = *ids.iter().find(|i| !lapsing.contains(i)).unwrap();

    // Not lapsed yet.
    let r = store.recover(now + secs(29), DAY).await.unwrap();
    assert!(r.requeued.is_empty() && r.failed.is_empty(), "{r:?}");
    for id in &lapsing {
        assert_eq!(state(&store, *id).await, JobState::Processing);
    }
    let later = now + secs(3600);
    let r = store.recover(later, DAY).await.unwrap();
    assert_eq!(sorted(&r.requeued), lapsing);
    assert!(r.failed.is_empty());
    for id in &lapsing {
        let d = details(&store, *id).await;
        assert_eq!(d.job.state, JobState::Enqueued);
        assert_eq!(d.job.attempt, 1);
        assert_eq!(d.job.lease_server, None);
        assert_eq!(d.job.lease_until, None);
        assert_eq!(
            states(&d.history),
            vec![JobState::Enqueued, JobState::Processing, JobState::Enqueued]
        );
        assert_eq!(d.history[2].at, later);
    }
    assert_eq!(state(&store, waiting).await, JobState::Enqueued);
    let r = store.recover(later, DAY).await.unwrap();
    assert!(r.requeued.is_empty());

    let again = fetch(&store, &server("b"), &["default"], 10, later).await;
    assert_eq!(again.len(), 3);
    for f in again {
        let want = if f.id == waiting { 1 } else { 2 };
        assert_eq!(f.attempt, want);
    }
}

/// A lapsed lease on the job's last allowed attempt fails the job (and releases its
/// continuations waiting on failure).
pub async fn recover_fails_a_lapsed_last_attempt(store: Arc<dyn Storage>) {
    let now = t0();
    let mut once = job("once");
    once.retry = RetryPolicy::Count(1);
    let id = add(&store, once, now).await;
    let on_fail = add(&store, continuation("on_fail", id, ContinueOn::Failed), now).await;
    let s = server("a");

    let f1 = fetch_one(&store, &s, now).await;
    assert_eq!(f1.attempt, 1);
    let t1 = now + secs(100);
    let r = store.recover(t1, DAY).await.unwrap();
    assert_eq!(r.requeued, vec![id]);
    assert!(r.failed.is_empty());

    let f2 = fetch_one(&store, &s, t1).await;
    assert_eq!(f2.id, id);
    assert_eq!(f2.attempt, 2);
    let t2 = t1 + secs(100);
    let r = store.recover(t2, DAY).await.unwrap();
    assert_eq!(r.failed, vec![id]);
    assert!(r.requeued.is_empty());
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Failed);
    assert_eq!(d.job.attempt, 2);
    assert_eq!(
        states(&d.history),
        vec![
            JobState::Enqueued,
            JobState::Processing,
            JobState::Enqueued,
            JobState::Processing,
            JobState::Failed,
        ]
    );
    assert_eq!(d.history[4].at, t2);
    assert_eq!(state(&store, on_fail).await, JobState::Enqueued);

    // No retries at all: the first lapse fails it.
    let mut never = job_in("never", "other");
    never.retry = RetryPolicy::none();
    let nid = add(&store, never, t2).await;
    let got = fetch(&store, &s, &["other"], 1, t2).await;
    assert_eq!(got[0].id, nid);
    let r = store.recover(t2 + secs(100), DAY).await.unwrap();
    assert_eq!(r.failed, vec![nid]);
    assert_eq!(state(&store, nid).await, JobState::Failed);
}

/// A server that lost its lease (recovered, then fetched by another server) cannot complete
/// the job: its completion is stale and changes nothing, and the new holder's applies.
pub async fn late_completion_after_recovery_is_stale(store: Arc<dyn Storage>) {
    let now = t0();
    let (a, b) = (server("a"), server("b"));
    let id = add(&store, job("slow"), now).await;
    let child = add(&store, continuation("c", id, ContinueOn::Failed), now).await;
    let fa = fetch_one(&store, &a, now).await;
    let t1 = now + secs(3600);
    assert_eq!(store.recover(t1, DAY).await.unwrap().requeued, vec![id]);

    // a's completion after the recovery, before anyone fetched it again: stale.
    let statuses = store
        .complete(vec![completion(
            &fa,
            &a,
            Outcome::Failed {
                error: "late".into(),
            },
            t1 + secs(1),
        )])
        .await
        .unwrap();
    assert_eq!(statuses, vec![CompletionStatus::Stale]);
    assert_eq!(state(&store, id).await, JobState::Enqueued);

    let fb = fetch_one(&store, &b, t1 + secs(2)).await;
    assert_eq!(fb.id, id);
    let before = details(&store, id).await;
    for outcome in [
        Outcome::Succeeded,
        Outcome::Failed {
            error: "late".into(),
        },
        Outcome::HandedBack {
            reason: "late".into(),
        },
    ] {
        assert_eq!(
            complete(&store, &fa, &a, outcome, t1 + secs(3)).await,
            CompletionStatus::Stale
        );
    }
    let after = details(&store, id).await;
    assert_eq!(after.job.state, JobState::Processing);
    assert_eq!(after.job.lease_server, Some(b.clone()));
    assert_eq!(after.job.attempt, 2);
    assert_eq!(after.history, before.history);
    assert_eq!(state(&store, child).await, JobState::Awaiting);

    assert_eq!(
        complete(&store, &fb, &b, Outcome::Succeeded, t1 + secs(4)).await,
        CompletionStatus::Applied(JobState::Succeeded)
    );
    let d = details(&store, id).await;
    assert_eq!(count_state(&d.history, JobState::Succeeded), 1);
    assert_eq!(count_state(&d.history, JobState::Failed), 0);
    assert_eq!(d.history.last().unwrap().server, Some(b));
    // The Failed-continuation is deleted: its parent succeeded.
    assert_eq!(state(&store, child).await, JobState::Deleted);
}

// ---------------------------------------------------------------------------------------------
// expire
// ---------------------------------------------------------------------------------------------

/// With the default retention, succeeded and deleted jobs go after a day with their history;
/// failed jobs and unfinished ones stay.
pub async fn expire_removes_finished_jobs_past_retention(store: Arc<dyn Storage>) {
    let now = t0();
    let ok = run_to(&store, job("ok"), Outcome::Succeeded, now).await;
    let failed = run_to(
        &store,
        job("bad"),
        Outcome::Failed { error: "x".into() },
        now,
    )
    .await;
    let deleted = add(&store, job_in("del", "other"), now).await;
    store.delete(&[deleted], "no", now).await.unwrap();
    let enqueued = add(&store, job_in("wait", "other"), now).await;
    let sched = add(&store, scheduled("sched", now + secs(10 * 86_400)), now).await;
    let processing = add(&store, job_in("proc", "busy"), now).await;
    fetch(&store, &server("a"), &["busy"], 1, now).await;
    let awaiting = add(
        &store,
        continuation("aw", failed, ContinueOn::Succeeded),
        now,
    )
    .await;

    let retention = Retention::default();
    assert_eq!(
        store
            .expire(now + secs(12 * 3600), retention, 100)
            .await
            .unwrap(),
        0
    );
    assert!(store.job(ok).await.unwrap().is_some());
    let removed = store
        .expire(now + secs(2 * 86_400), retention, 100)
        .await
        .unwrap();
    assert_eq!(removed, 2);
    assert!(store.job(ok).await.unwrap().is_none());
    assert!(store.job(deleted).await.unwrap().is_none());
    for id in [failed, enqueued, sched, processing, awaiting] {
        assert!(store.job(id).await.unwrap().is_some(), "job {id} expired");
    }
    let listed: BTreeSet<JobId> = store
        .list_jobs(JobQuery::new())
        .await
        .unwrap()
        .iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(
        listed,
        BTreeSet::from([failed, enqueued, sched, processing, awaiting])
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Succeeded), 0);
    assert_eq!(stats.count(JobState::Deleted), 0);
    assert_eq!(stats.count(JobState::Failed), 1);
    // Nothing else ever expires under the default retention, however late.
    assert_eq!(
        store
            .expire(now + secs(1000 * 86_400), retention, 100)
            .await
            .unwrap(),
        0
    );
    // A new job with the id of an expired one could not see its old history: an expired job
    // is gone for good.
    assert!(store.job(ok).await.unwrap().is_none());
}

/// Each finished state has its own retention: measured from when the job finished; `None`
/// keeps it.
pub async fn expire_honours_custom_retention(store: Arc<dyn Storage>) {
    let now = t0();
    let hour = Duration::from_secs(3600);
    // Finished at now + 1 s (run_to completes one second later).
    let ok = run_to(&store, job("ok"), Outcome::Succeeded, now).await;
    let failed = run_to(
        &store,
        job("bad"),
        Outcome::Failed { error: "x".into() },
        now,
    )
    .await;
    let deleted = add(&store, job("del"), now).await;
    store.delete(&[deleted], "no", now + secs(1)).await.unwrap();
    // Finished later: not yet expired when the others are.
    let late_fail = add(&store, job("bad_late"), now).await;
    let s = server("a");
    let f = fetch_one(&store, &s, now + secs(3000)).await;
    assert_eq!(f.id, late_fail);
    complete(
        &store,
        &f,
        &s,
        Outcome::Failed { error: "y".into() },
        now + secs(3000),
    )
    .await;

    let keep_ok = Retention::new(None, Some(hour), Some(hour));
    assert_eq!(
        store.expire(now + secs(3600), keep_ok, 100).await.unwrap(),
        0,
        "nothing has been finished for an hour at +1 h"
    );
    assert_eq!(
        store.expire(now + secs(3602), keep_ok, 100).await.unwrap(),
        2
    );
    assert!(store.job(ok).await.unwrap().is_some());
    assert!(store.job(failed).await.unwrap().is_none());
    assert!(store.job(deleted).await.unwrap().is_none());
    assert!(store.job(late_fail).await.unwrap().is_some());
    assert_eq!(
        store
            .expire(now + secs(3000 + 3601), keep_ok, 100)
            .await
            .unwrap(),
        1
    );
    assert!(store.job(late_fail).await.unwrap().is_none());
    assert_eq!(
        store
            .expire(now + secs(400 * 86_400), keep_ok, 100)
            .await
            .unwrap(),
        0
    );
    assert!(store.job(ok).await.unwrap().is_some());
    let ok_only = Retention::new(Some(hour), None, None);
    assert_eq!(
        store.expire(now + secs(3602), ok_only, 100).await.unwrap(),
        1
    );
    assert!(store.job(ok).await.unwrap().is_none());
}

/// `expire` removes at most `limit` jobs per call and says how many.
pub async fn expire_respects_limit(store: Arc<dyn Storage>) {
    let now = t0();
    let ids = add_many(&store, (0..7).map(|_| job("x")).collect(), now).await;
    let deleted = store.delete(&ids, "bulk", now).await.unwrap();
    assert!(deleted.iter().all(|c| matches!(c, Change::Changed { .. })));
    let later = now + secs(2 * 86_400);
    let r = Retention::default();
    assert_eq!(store.expire(later, r, 3).await.unwrap(), 3);
    assert_eq!(store.expire(later, r, 3).await.unwrap(), 3);
    assert_eq!(store.expire(later, r, 3).await.unwrap(), 1);
    assert_eq!(store.expire(later, r, 3).await.unwrap(), 0);
    for id in ids {
        assert!(store.job(id).await.unwrap().is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// delete, requeue
// ---------------------------------------------------------------------------------------------

/// Every state but `Deleted` may be deleted (reason and time recorded); deleting a deleted
/// job is refused and an unknown one is not found.
pub async fn delete_from_each_state(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let enqueued = add(&store, job_in("e", "q-enq"), now).await;
    let sched = add(&store, scheduled("s", now + secs(60)), now).await;
    let processing = add(&store, job_in("p", "q-proc"), now).await;
    assert_eq!(fetch(&store, &s, &["q-proc"], 1, now).await.len(), 1);
    let succeeded = run_to(&store, job("ok"), Outcome::Succeeded, now).await;
    let failed = run_to(
        &store,
        job("bad"),
        Outcome::Failed { error: "x".into() },
        now,
    )
    .await;
    // Its parent is not deleted here (deleting a parent may delete its continuations first).
    let keeper = add(&store, job_in("k", "q-keep"), now).await;
    let awaiting = add(
        &store,
        continuation("aw", keeper, ContinueOn::Succeeded),
        now,
    )
    .await;
    let deleted = add(&store, job_in("d", "q-del"), now).await;
    assert_eq!(
        store.delete(&[deleted], "first", now).await.unwrap(),
        vec![Change::Changed {
            from: JobState::Enqueued
        }]
    );
    let unknown = JobId::new();

    let t = now + secs(10);
    let ids = [
        enqueued, sched, processing, succeeded, failed, awaiting, deleted, unknown,
    ];
    let changes = store.delete(&ids, "cleanup", t).await.unwrap();
    assert_eq!(
        changes,
        vec![
            Change::Changed {
                from: JobState::Enqueued
            },
            Change::Changed {
                from: JobState::Scheduled
            },
            Change::Changed {
                from: JobState::Processing
            },
            Change::Changed {
                from: JobState::Succeeded
            },
            Change::Changed {
                from: JobState::Failed
            },
            Change::Changed {
                from: JobState::Awaiting
            },
            Change::Refused {
                state: JobState::Deleted
            },
            Change::NotFound,
        ]
    );
    for id in &ids[..6] {
        let d = details(&store, *id).await;
        assert_eq!(d.job.state, JobState::Deleted);
        assert_eq!(d.job.state_at, t);
        assert_eq!(d.job.reason.as_deref(), Some("cleanup"));
        let last = d.history.last().unwrap();
        assert_eq!(last.state, JobState::Deleted);
        assert_eq!(last.at, t);
        assert_eq!(last.reason.as_deref(), Some("cleanup"));
    }
    // The first deletion's record is untouched by the refused second one.
    let d = details(&store, deleted).await;
    assert_eq!(d.job.reason.as_deref(), Some("first"));
    assert_eq!(d.history.len(), 2);
    // Deleted jobs are neither fetched nor promoted.
    assert!(
        fetch(&store, &s, &["default", "q-enq", "q-proc"], 10, t)
            .await
            .is_empty()
    );
    assert_eq!(
        store
            .promote_due(t + secs(3600), 10)
            .await
            .unwrap()
            .promoted,
        0
    );
    assert_eq!(store.stats().await.unwrap().count(JobState::Deleted), 7);
    assert!(store.delete(&[], "nothing", t).await.unwrap().is_empty());
}

/// Deleting a processing job takes its lease: the server's completion is stale and its next
/// heartbeat reports the job lost as deleted.
pub async fn delete_processing_revokes_the_lease(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    beat(&store, &s, now, Vec::new(), now).await;
    let id = add(&store, job("p"), now).await;
    let f = fetch_one(&store, &s, now).await;
    store.delete(&[id], "stop it", now + secs(1)).await.unwrap();
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Deleted);
    assert_eq!(d.job.lease_server, None);
    let lost = beat(
        &store,
        &s,
        now + secs(2),
        vec![(id, f.lease)],
        now + secs(60),
    )
    .await;
    assert_eq!(lost, vec![(id, JobState::Deleted)]);
    assert_eq!(
        complete(&store, &f, &s, Outcome::Succeeded, now + secs(3)).await,
        CompletionStatus::Stale
    );
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Deleted);
    assert_eq!(count_state(&d.history, JobState::Succeeded), 0);
    // Recovery does not bring it back either.
    let r = store.recover(now + secs(3600), DAY).await.unwrap();
    assert!(r.requeued.is_empty() && r.failed.is_empty());
    assert_eq!(state(&store, id).await, JobState::Deleted);
}

/// Scheduled, processing, succeeded, failed and deleted jobs may be requeued (enqueued now);
/// enqueued and awaiting ones are refused; unknown ones are not found.
pub async fn requeue_from_each_state(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let sched = add(&store, scheduled("s", now + secs(3600)), now).await;
    let processing = add(&store, job_in("p", "q-proc"), now).await;
    assert_eq!(fetch(&store, &s, &["q-proc"], 1, now).await.len(), 1);
    let succeeded = run_to(&store, job("ok"), Outcome::Succeeded, now).await;
    let failed = run_to(
        &store,
        job("bad"),
        Outcome::Failed { error: "x".into() },
        now,
    )
    .await;
    let deleted = add(&store, job("d"), now).await;
    store.delete(&[deleted], "gone", now).await.unwrap();
    let enqueued = add(&store, job_in("e", "q-enq"), now).await;
    let awaiting = add(
        &store,
        continuation("aw", enqueued, ContinueOn::Succeeded),
        now,
    )
    .await;
    let unknown = JobId::new();

    let t = now + secs(10);
    let ids = [
        sched, processing, succeeded, failed, deleted, enqueued, awaiting, unknown,
    ];
    let changes = store.requeue(&ids, "try again", t).await.unwrap();
    assert_eq!(
        changes,
        vec![
            Change::Changed {
                from: JobState::Scheduled
            },
            Change::Changed {
                from: JobState::Processing
            },
            Change::Changed {
                from: JobState::Succeeded
            },
            Change::Changed {
                from: JobState::Failed
            },
            Change::Changed {
                from: JobState::Deleted
            },
            Change::Refused {
                state: JobState::Enqueued
            },
            Change::Refused {
                state: JobState::Awaiting
            },
            Change::NotFound,
        ]
    );
    for id in &ids[..5] {
        let d = details(&store, *id).await;
        assert_eq!(d.job.state, JobState::Enqueued);
        assert_eq!(d.job.state_at, t);
        assert_eq!(d.job.lease_server, None);
        let last = d.history.last().unwrap();
        assert_eq!(last.state, JobState::Enqueued);
        assert_eq!(last.at, t);
        assert_eq!(last.reason.as_deref(), Some("try again"));
    }
    assert_eq!(details(&store, enqueued).await.history.len(), 1);
    assert_eq!(state(&store, awaiting).await, JobState::Awaiting);
    // The requeued jobs are fetchable, the scheduled one without waiting for its time.
    let got = fetch(&store, &s, &["default", "q-proc"], 10, t).await;
    assert_eq!(
        got.iter().map(|f| f.id).collect::<BTreeSet<_>>(),
        BTreeSet::from([sched, processing, succeeded, failed, deleted])
    );
    assert!(store.requeue(&[], "nothing", t).await.unwrap().is_empty());
}

/// Requeueing a succeeded, failed or deleted job resets its attempt count: the next fetch is
/// attempt 1 with every retry available again.
pub async fn requeue_resets_attempts_of_finished_jobs(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let mut new = job("flaky");
    new.retry = RetryPolicy::Count(2);
    let id = add(&store, new, now).await;
    // Three attempts: retry, retry, fail.
    let mut t = now;
    for attempt in 1..=3 {
        let f = fetch_one(&store, &s, t).await;
        assert_eq!(f.attempt, attempt);
        t += secs(1);
        let outcome = if attempt < 3 {
            Outcome::Retry {
                at: t,
                error: format!("error {attempt}"),
            }
        } else {
            Outcome::Failed {
                error: "error 3".into(),
            }
        };
        complete(&store, &f, &s, outcome, t).await;
    }
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Failed);
    assert_eq!(d.job.attempt, 3);

    for (end, want) in [
        (Outcome::Succeeded, JobState::Succeeded),
        (Outcome::Cancelled { reason: "c".into() }, JobState::Deleted),
        (Outcome::Failed { error: "f".into() }, JobState::Failed),
    ] {
        t += secs(10);
        assert_eq!(store.requeue(&[id], "again", t).await.unwrap().len(), 1);
        let d = details(&store, id).await;
        assert_eq!(d.job.state, JobState::Enqueued);
        assert_eq!(d.job.attempt, 0, "requeue resets the attempt count");
        let f = fetch_one(&store, &s, t).await;
        assert_eq!(f.attempt, 1);
        assert_eq!(
            complete(&store, &f, &s, end, t + secs(1)).await,
            CompletionStatus::Applied(want)
        );
    }
}

/// Requeueing a processing job takes its lease: the server's completion is stale, its next
/// heartbeat reports the job lost, and the job can be fetched again at once.
pub async fn requeue_processing_revokes_the_lease(store: Arc<dyn Storage>) {
    let now = t0();
    let (a, b) = (server("a"), server("b"));
    let id = add(&store, job("p"), now).await;
    let fa = fetch_one(&store, &a, now).await;
    assert_eq!(
        store.requeue(&[id], "stuck", now + secs(1)).await.unwrap(),
        vec![Change::Changed {
            from: JobState::Processing
        }]
    );
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Enqueued);
    assert_eq!(d.job.lease_server, None);
    let lost = beat(
        &store,
        &a,
        now + secs(2),
        vec![(id, fa.lease)],
        now + secs(60),
    )
    .await;
    assert_eq!(lost, vec![(id, JobState::Enqueued)]);
    assert_eq!(
        complete(&store, &fa, &a, Outcome::Succeeded, now + secs(3)).await,
        CompletionStatus::Stale
    );
    let fb = fetch_one(&store, &b, now + secs(4)).await;
    assert_eq!(fb.id, id);
    assert_ne!(fb.lease, fa.lease);
    assert_eq!(
        complete(&store, &fb, &b, Outcome::Succeeded, now + secs(5)).await,
        CompletionStatus::Applied(JobState::Succeeded)
    );
    let d = details(&store, id).await;
    assert_eq!(count_state(&d.history, JobState::Succeeded), 1);
    assert_eq!(d.history.last().unwrap().server, Some(b));
}

// ---------------------------------------------------------------------------------------------
// job(), list_jobs, stats
// ---------------------------------------------------------------------------------------------

/// `job()` returns every transition in order, each with its time, server, attempt, duration,
/// error and reason where they apply.
pub async fn history_records_every_transition(store: Arc<dyn Storage>) {
    let t = t0();
    let (a, b) = (server("a"), server("b"));
    let mut new = scheduled("story", t + secs(10));
    new.retry = RetryPolicy::Count(5);
    let id = add(&store, new, t).await;
    // Scheduled -> Enqueued (promoted) -> Processing (a, 1) -> Scheduled (retry, error)
    store.promote_due(t + secs(10), 10).await.unwrap();
    let f = fetch_one(&store, &a, t + secs(11)).await;
    let c = Completion::new(
        id,
        f.lease,
        a.clone(),
        Outcome::Retry {
            at: t + secs(100),
            error: "boom".into(),
        },
        Duration::from_millis(250),
        t + secs(12),
    );
    store.complete(vec![c]).await.unwrap();
    // -> Enqueued (promoted) -> Processing (b, 2) -> Enqueued (recovered)
    store.promote_due(t + secs(100), 10).await.unwrap();
    fetch_one(&store, &b, t + secs(101)).await;
    store.recover(t + secs(200), DAY).await.unwrap();
    // -> Processing (a, 3) -> Enqueued (handed back, not counted)
    let f = fetch_one(&store, &a, t + secs(201)).await;
    assert_eq!(f.attempt, 3);
    let c = Completion::new(
        id,
        f.lease,
        a.clone(),
        Outcome::HandedBack {
            reason: "shutdown".into(),
        },
        Duration::from_millis(40),
        t + secs(202),
    );
    store.complete(vec![c]).await.unwrap();
    // -> Processing (b, 3) -> Failed (error)
    let f = fetch_one(&store, &b, t + secs(203)).await;
    assert_eq!(f.attempt, 3);
    let c = Completion::new(
        id,
        f.lease,
        b.clone(),
        Outcome::Failed {
            error: "fatal".into(),
        },
        Duration::from_millis(3000),
        t + secs(206),
    );
    store.complete(vec![c]).await.unwrap();
    // -> Enqueued (requeued) -> Deleted (by hand)
    store
        .requeue(&[id], "requeued by ops", t + secs(300))
        .await
        .unwrap();
    store
        .delete(&[id], "deleted by ops", t + secs(301))
        .await
        .unwrap();

    let d = details(&store, id).await;
    let h = &d.history;
    assert_eq!(
        states(h),
        vec![
            JobState::Scheduled,
            JobState::Enqueued,
            JobState::Processing,
            JobState::Scheduled,
            JobState::Enqueued,
            JobState::Processing,
            JobState::Enqueued,
            JobState::Processing,
            JobState::Enqueued,
            JobState::Processing,
            JobState::Failed,
            JobState::Enqueued,
            JobState::Deleted,
        ],
        "history: {h:#?}"
    );
    let times: Vec<i64> = h.iter().map(|e| (e.at - t).num_seconds()).collect();
    assert_eq!(
        times,
        vec![0, 10, 11, 12, 100, 101, 200, 201, 202, 203, 206, 300, 301]
    );
    let servers: Vec<Option<&ServerId>> = h.iter().map(|e| e.server.as_ref()).collect();
    assert_eq!(servers[2], Some(&a));
    assert_eq!(servers[3], Some(&a));
    assert_eq!(servers[5], Some(&b));
    assert_eq!(servers[7], Some(&a));
    assert_eq!(servers[8], Some(&a));
    assert_eq!(servers[9], Some(&b));
    assert_eq!(servers[10], Some(&b));
    assert_eq!(h[2].attempt, 1);
    assert_eq!(h[3].attempt, 1);
    assert_eq!(h[5].attempt, 2);
    assert_eq!(h[7].attempt, 3);
    assert_eq!(h[9].attempt, 3);
    assert_eq!(h[10].attempt, 3);
    assert_eq!(h[3].duration, Some(Duration::from_millis(250)));
    assert_eq!(h[8].duration, Some(Duration::from_millis(40)));
    assert_eq!(h[10].duration, Some(Duration::from_millis(3000)));
    assert_eq!(h[3].error.as_deref(), Some("boom"));
    assert_eq!(h[10].error.as_deref(), Some("fatal"));
    for i in [0, 1, 2, 4, 5, 7, 9, 11, 12] {
        assert_eq!(h[i].error, None, "entry {i} has no error: {:?}", h[i]);
        assert_eq!(h[i].duration, None, "entry {i} has no duration: {:?}", h[i]);
    }
    assert_eq!(h[8].reason.as_deref(), Some("shutdown"));
    assert_eq!(h[11].reason.as_deref(), Some("requeued by ops"));
    assert_eq!(h[12].reason.as_deref(), Some("deleted by ops"));
    assert_eq!(d.job.last_error.as_deref(), Some("fatal"));
    assert_eq!(d.job.created_at, t);
    assert_eq!(d.job.state_at, t + secs(301));
}

/// `list_jobs` filters by state, queue and name, alone or together, newest first.
pub async fn list_jobs_filters(store: Arc<dyn Storage>) {
    let now = t0();
    let a1 = add(&store, job_in("alpha", "default"), now).await;
    let a2 = add(&store, job_in("alpha", "default"), now + secs(1)).await;
    let b1 = add(&store, job_in("beta", "emails"), now + secs(2)).await;
    let b2 = add(&store, job_in("beta", "emails"), now + secs(3)).await;
    let mut s = job_in("alpha", "emails");
    s.initial = Initial::Scheduled {
        at: now + secs(3600),
    };
    let a3 = add(&store, s, now + secs(4)).await;
    let f = fetch_one(&store, &server("a"), now + secs(5)).await;
    assert_eq!(f.id, a1);

    let ids = |v: Vec<firelane_core::JobRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let all = ids(store.list_jobs(JobQuery::new()).await.unwrap());
    assert_eq!(all, vec![a3, b2, b1, a2, a1]);
    assert_eq!(
        ids(store
            .list_jobs(JobQuery::new().state(JobState::Enqueued))
            .await
            .unwrap()),
        vec![b2, b1, a2]
    );
    assert_eq!(
        ids(store
            .list_jobs(JobQuery::new().state(JobState::Processing))
            .await
            .unwrap()),
        vec![a1]
    );
    assert_eq!(
        ids(store
            .list_jobs(JobQuery::new().queue("emails"))
            .await
            .unwrap()),
        vec![a3, b2, b1]
    );
    assert_eq!(
        ids(store
            .list_jobs(JobQuery::new().name("alpha"))
            .await
            .unwrap()),
        vec![a3, a2, a1]
    );
    assert_eq!(
        ids(store
            .list_jobs(JobQuery::new().name("alpha").queue("emails"))
            .await
            .unwrap()),
        vec![a3]
    );
    assert_eq!(
        ids(store
            .list_jobs(
                JobQuery::new()
                    .name("alpha")
                    .queue("default")
                    .state(JobState::Enqueued)
            )
            .await
            .unwrap()),
        vec![a2]
    );
    assert!(
        store
            .list_jobs(JobQuery::new().state(JobState::Failed))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .list_jobs(JobQuery::new().queue("nowhere"))
            .await
            .unwrap()
            .is_empty()
    );
    // Records are complete.
    let rec = store
        .list_jobs(JobQuery::new().state(JobState::Processing))
        .await
        .unwrap()
        .pop()
        .unwrap();
    assert_eq!(rec.name, "alpha");
    assert_eq!(rec.queue, "default");
    assert_eq!(rec.attempt, 1);
    assert_eq!(rec.lease_server, Some(server("a")));
}

/// `list_jobs` pages newest first: `limit` 0 means 50, `offset` skips.
pub async fn list_jobs_pages_newest_first(store: Arc<dyn Storage>) {
    let now = t0();
    let mut ids = Vec::new();
    for i in 0..60 {
        ids.push(add(&store, job("p"), now + secs(i)).await);
    }
    ids.reverse(); // newest first
    let page = |offset, limit| {
        let store = Arc::clone(&store);
        async move {
            store
                .list_jobs(JobQuery::new().page(offset, limit))
                .await
                .unwrap()
                .into_iter()
                .map(|r| r.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(page(0, 0).await, ids[..50].to_vec());
    assert_eq!(page(0, 10).await, ids[..10].to_vec());
    assert_eq!(page(10, 10).await, ids[10..20].to_vec());
    assert_eq!(page(55, 10).await, ids[55..].to_vec());
    assert_eq!(page(50, 0).await, ids[50..].to_vec());
    assert!(page(60, 10).await.is_empty());
    assert!(page(1000, 10).await.is_empty());
    // Paging with a filter pages the filtered list.
    for id in &ids[..30] {
        if ids.iter().position(|x| x == id).unwrap() % 2 == 0 {
            store.delete(&[*id], "odd", now).await.unwrap();
        }
    }
    let deleted: Vec<JobId> = ids[..30].iter().step_by(2).copied().collect();
    let got: Vec<JobId> = store
        .list_jobs(JobQuery::new().state(JobState::Deleted).page(5, 5))
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(got, deleted[5..10].to_vec());
}

/// `stats` counts jobs per state, waiting and running jobs per queue, and live servers.
pub async fn stats_counts_states_queues_and_servers(store: Arc<dyn Storage>) {
    let now = t0();
    let empty = store.stats().await.unwrap();
    for s in JobState::ALL {
        assert_eq!(empty.count(s), 0);
    }
    assert!(
        empty
            .queues
            .iter()
            .all(|q| q.enqueued == 0 && q.processing == 0)
    );
    assert_eq!(empty.servers, 0);

    let s = server("a");
    beat(&store, &s, now, Vec::new(), now).await;
    add_many(&store, (0..4).map(|_| job_in("x", "emails")).collect(), now).await;
    add_many(
        &store,
        (0..3).map(|_| job_in("x", "reports")).collect(),
        now,
    )
    .await;
    let parent = add(&store, job_in("x", "idle"), now).await;
    add(
        &store,
        continuation("c", parent, ContinueOn::Succeeded),
        now,
    )
    .await;
    add(&store, scheduled("s", now + secs(600)), now).await;
    add(&store, scheduled("s", now + secs(600)), now).await;
    assert_eq!(fetch(&store, &s, &["emails"], 3, now).await.len(), 3);
    let mut reports = fetch(&store, &s, &["reports"], 3, now).await;
    let r0 = reports.pop().unwrap();
    let r1 = reports.pop().unwrap();
    let r2 = reports.pop().unwrap();
    complete(&store, &r0, &s, Outcome::Succeeded, now).await;
    complete(&store, &r1, &s, Outcome::Failed { error: "e".into() }, now).await;
    complete(
        &store,
        &r2,
        &s,
        Outcome::Cancelled { reason: "c".into() },
        now,
    )
    .await;

    let st = store.stats().await.unwrap();
    assert_eq!(st.count(JobState::Enqueued), 2); // 1 email + the idle parent
    assert_eq!(st.count(JobState::Processing), 3);
    assert_eq!(st.count(JobState::Scheduled), 2);
    assert_eq!(st.count(JobState::Awaiting), 1);
    assert_eq!(st.count(JobState::Succeeded), 1);
    assert_eq!(st.count(JobState::Failed), 1);
    assert_eq!(st.count(JobState::Deleted), 1);
    assert_eq!(st.servers, 1);
    let mut queues: Vec<(String, u64, u64)> = st
        .queues
        .iter()
        .filter(|q| q.enqueued > 0 || q.processing > 0)
        .map(|q| (q.name.clone(), q.enqueued, q.processing))
        .collect();
    queues.sort();
    assert_eq!(
        queues,
        vec![("emails".to_owned(), 1, 3), ("idle".to_owned(), 1, 0)]
    );
    let names: HashSet<&str> = st.queues.iter().map(|q| q.name.as_str()).collect();
    assert_eq!(
        names.len(),
        st.queues.len(),
        "a queue is listed twice: {:?}",
        st.queues
    );
}

// ---------------------------------------------------------------------------------------------
// continuations
// ---------------------------------------------------------------------------------------------

/// A → B → C: each runs only after the previous one succeeded.
pub async fn continuation_chain(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let a = add(&store, job("a"), now).await;
    let b = add(&store, continuation("b", a, ContinueOn::Succeeded), now).await;
    let c = add(&store, continuation("c", b, ContinueOn::Succeeded), now).await;
    assert_eq!(state(&store, b).await, JobState::Awaiting);
    assert_eq!(state(&store, c).await, JobState::Awaiting);
    assert_eq!(details(&store, a).await.continuations, vec![b]);
    assert_eq!(details(&store, b).await.continuations, vec![c]);
    assert_eq!(
        details(&store, c).await.job.parent,
        Some((b, ContinueOn::Succeeded))
    );

    let fa = fetch_one(&store, &s, now).await;
    assert_eq!(fa.id, a);
    assert!(fetch(&store, &s, &["default"], 10, now).await.is_empty());
    complete(&store, &fa, &s, Outcome::Succeeded, now + secs(1)).await;
    let db = details(&store, b).await;
    assert_eq!(db.job.state, JobState::Enqueued);
    assert_eq!(db.job.state_at, now + secs(1));
    assert_eq!(
        states(&db.history),
        vec![JobState::Awaiting, JobState::Enqueued]
    );
    assert_eq!(state(&store, c).await, JobState::Awaiting);

    let fb = fetch_one(&store, &s, now + secs(2)).await;
    assert_eq!(fb.id, b);
    assert!(fetch(&store, &s, &["default"], 10, now).await.is_empty());
    complete(&store, &fb, &s, Outcome::Succeeded, now + secs(3)).await;
    assert_eq!(state(&store, c).await, JobState::Enqueued);
    let fc = fetch_one(&store, &s, now + secs(4)).await;
    assert_eq!(fc.id, c);
}

/// A → B1..B5: all five are released together when A succeeds.
pub async fn continuation_fan_out(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let a = add(&store, job("a"), now).await;
    let children = add_many(
        &store,
        (0..5)
            .map(|_| continuation("b", a, ContinueOn::Succeeded))
            .collect(),
        now,
    )
    .await;
    assert_eq!(
        sorted(&details(&store, a).await.continuations),
        sorted(&children)
    );
    let fa = fetch_one(&store, &s, now).await;
    // A retried attempt releases nothing.
    complete(
        &store,
        &fa,
        &s,
        Outcome::Retry {
            at: now,
            error: "once more".into(),
        },
        now + secs(1),
    )
    .await;
    for c in &children {
        assert_eq!(state(&store, *c).await, JobState::Awaiting);
    }
    let fa = fetch_one(&store, &s, now + secs(2)).await;
    complete(&store, &fa, &s, Outcome::Succeeded, now + secs(3)).await;
    for c in &children {
        assert_eq!(state(&store, *c).await, JobState::Enqueued);
    }
    let got = fetch(&store, &s, &["default"], 10, now + secs(4)).await;
    assert_eq!(
        got.iter().map(|f| f.id).collect::<BTreeSet<_>>(),
        children.iter().copied().collect()
    );
}

/// A deleted parent (by hand or cancelled by itself) deletes its on-success and on-failure
/// continuations and enqueues its on-deletion and any-finish ones.
pub async fn continuation_parent_deleted(store: Arc<dyn Storage>) {
    let now = t0();
    for cancelled in [false, true] {
        let p = add(&store, job("p"), now).await;
        let on_ok = add(&store, continuation("c", p, ContinueOn::Succeeded), now).await;
        let on_fail = add(&store, continuation("c", p, ContinueOn::Failed), now).await;
        let on_del = add(&store, continuation("c", p, ContinueOn::Deleted), now).await;
        let on_any = add(&store, continuation("c", p, ContinueOn::AnyFinished), now).await;
        let t = now + secs(5);
        if cancelled {
            let s = server("a");
            let f = fetch_one(&store, &s, now).await;
            assert_eq!(f.id, p);
            complete(&store, &f, &s, Outcome::Cancelled { reason: "c".into() }, t).await;
        } else {
            store.delete(&[p], "by hand", t).await.unwrap();
        }
        assert_eq!(state(&store, p).await, JobState::Deleted);
        for (id, want) in [
            (on_ok, JobState::Deleted),
            (on_fail, JobState::Deleted),
            (on_del, JobState::Enqueued),
            (on_any, JobState::Enqueued),
        ] {
            let d = details(&store, id).await;
            assert_eq!(
                d.job.state, want,
                "cancelled={cancelled} {:?}",
                d.job.parent
            );
            assert_eq!(d.job.state_at, t);
            assert_eq!(states(&d.history), vec![JobState::Awaiting, want]);
        }
        // Clear the queue for the next round.
        let got = fetch(&store, &server("x"), &["default"], 10, t).await;
        assert_eq!(
            got.iter().map(|f| f.id).collect::<BTreeSet<_>>(),
            BTreeSet::from([on_del, on_any])
        );
    }
}

/// A failed parent enqueues its on-failure and any-finish continuations and leaves the
/// on-success one waiting: a person may still requeue the parent, whose success then
/// releases it.
pub async fn continuation_parent_failed(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let p = add(&store, job("p"), now).await;
    let on_ok = add(&store, continuation("c", p, ContinueOn::Succeeded), now).await;
    let on_fail = add(&store, continuation("c", p, ContinueOn::Failed), now).await;
    let on_del = add(&store, continuation("c", p, ContinueOn::Deleted), now).await;
    let on_any = add(&store, continuation("c", p, ContinueOn::AnyFinished), now).await;
    let f = fetch_one(&store, &s, now).await;
    complete(
        &store,
        &f,
        &s,
        Outcome::Failed { error: "e".into() },
        now + secs(1),
    )
    .await;
    for (id, want) in [
        (on_ok, JobState::Awaiting),
        (on_fail, JobState::Enqueued),
        (on_del, JobState::Awaiting),
        (on_any, JobState::Enqueued),
    ] {
        assert_eq!(state(&store, id).await, want);
    }
    let got = fetch(&store, &s, &["default"], 10, now + secs(2)).await;
    assert_eq!(
        got.iter().map(|f| f.id).collect::<BTreeSet<_>>(),
        BTreeSet::from([on_fail, on_any])
    );

    // The parent is requeued and succeeds: on-success runs, on-deletion is deleted.
    store.requeue(&[p], "fixed", now + secs(3)).await.unwrap();
    let f = fetch_one(&store, &s, now + secs(4)).await;
    assert_eq!(f.id, p);
    complete(&store, &f, &s, Outcome::Succeeded, now + secs(5)).await;
    assert_eq!(state(&store, on_ok).await, JobState::Enqueued);
    assert_eq!(state(&store, on_del).await, JobState::Deleted);
    assert_eq!(fetch_one(&store, &s, now + secs(6)).await.id, on_ok);
}

/// An any-finish continuation is released however its parent ends, and not before.
pub async fn continuation_any_finished(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let ends = [
        (Outcome::Succeeded, JobState::Succeeded),
        (Outcome::Failed { error: "e".into() }, JobState::Failed),
        (Outcome::Cancelled { reason: "c".into() }, JobState::Deleted),
    ];
    for (outcome, parent_state) in ends {
        let p = add(&store, job("p"), now).await;
        let c = add(&store, continuation("c", p, ContinueOn::AnyFinished), now).await;
        let f = fetch_one(&store, &s, now).await;
        assert_eq!(f.id, p);
        assert_eq!(state(&store, c).await, JobState::Awaiting);
        // Not released by an unfinished end.
        complete(
            &store,
            &f,
            &s,
            Outcome::HandedBack { reason: "h".into() },
            now,
        )
        .await;
        assert_eq!(state(&store, c).await, JobState::Awaiting);
        let f = fetch_one(&store, &s, now).await;
        assert_eq!(
            complete(&store, &f, &s, outcome, now + secs(1)).await,
            CompletionStatus::Applied(parent_state)
        );
        assert_eq!(
            state(&store, c).await,
            JobState::Enqueued,
            "after {parent_state}"
        );
        assert_eq!(fetch_one(&store, &s, now + secs(2)).await.id, c);
    }
}

/// A continuation of an already finished parent starts enqueued, deleted or awaiting as the
/// parent's end decides.
pub async fn continuation_of_finished_parent(store: Arc<dyn Storage>) {
    let now = t0();
    let ok = run_to(&store, job("ok"), Outcome::Succeeded, now).await;
    let bad = run_to(
        &store,
        job("bad"),
        Outcome::Failed { error: "e".into() },
        now,
    )
    .await;
    let gone = add(&store, job("gone"), now).await;
    store.delete(&[gone], "x", now).await.unwrap();
    let cases = [
        (ok, ContinueOn::Succeeded, JobState::Enqueued),
        (ok, ContinueOn::Failed, JobState::Deleted),
        (ok, ContinueOn::Deleted, JobState::Deleted),
        (ok, ContinueOn::AnyFinished, JobState::Enqueued),
        (bad, ContinueOn::Succeeded, JobState::Awaiting),
        (bad, ContinueOn::Failed, JobState::Enqueued),
        (bad, ContinueOn::Deleted, JobState::Awaiting),
        (bad, ContinueOn::AnyFinished, JobState::Enqueued),
        (gone, ContinueOn::Succeeded, JobState::Deleted),
        (gone, ContinueOn::Failed, JobState::Deleted),
        (gone, ContinueOn::Deleted, JobState::Enqueued),
        (gone, ContinueOn::AnyFinished, JobState::Enqueued),
    ];
    let t = now + secs(10);
    let jobs: Vec<NewJob> = cases
        .iter()
        .map(|&(p, on, _)| continuation("c", p, on))
        .collect();
    let ids: Vec<JobId> = jobs.iter().map(|j| j.id).collect();
    let created = store.enqueue(jobs, t).await.unwrap();
    for ((e, (_, on, want)), id) in created.iter().zip(cases).zip(&ids) {
        assert_eq!(e.id, *id);
        assert_eq!(e.state, want, "continuation on {on}");
        let d = details(&store, *id).await;
        assert_eq!(d.job.state, want, "continuation on {on}");
        assert_eq!(d.history.last().unwrap().state, want);
    }
    let enqueued: BTreeSet<JobId> = cases
        .iter()
        .zip(&ids)
        .filter(|((_, _, w), _)| *w == JobState::Enqueued)
        .map(|(_, id)| *id)
        .collect();
    let got = fetch(&store, &server("a"), &["default"], 100, t).await;
    assert_eq!(got.iter().map(|f| f.id).collect::<BTreeSet<_>>(), enqueued);
}

/// A continuation deleted because of its parent releases its own continuations in turn.
pub async fn continuation_deleted_with_its_parent_releases_its_children(store: Arc<dyn Storage>) {
    let now = t0();
    let a = add(&store, job("a"), now).await;
    let b = add(&store, continuation("b", a, ContinueOn::Succeeded), now).await;
    let c_on_del = add(&store, continuation("c", b, ContinueOn::Deleted), now).await;
    let c_on_ok = add(&store, continuation("c", b, ContinueOn::Succeeded), now).await;
    let d_on_del = add(&store, continuation("d", c_on_ok, ContinueOn::Deleted), now).await;
    let e_on_ok = add(
        &store,
        continuation("e", c_on_del, ContinueOn::Succeeded),
        now,
    )
    .await;
    let t = now + secs(1);
    store.delete(&[a], "no", t).await.unwrap();
    assert_eq!(state(&store, b).await, JobState::Deleted);
    assert_eq!(state(&store, c_on_del).await, JobState::Enqueued);
    assert_eq!(state(&store, c_on_ok).await, JobState::Deleted);
    assert_eq!(state(&store, d_on_del).await, JobState::Enqueued);
    assert_eq!(state(&store, e_on_ok).await, JobState::Awaiting);
    let got = fetch(&store, &server("a"), &["default"], 10, t).await;
    assert_eq!(
        got.iter().map(|f| f.id).collect::<BTreeSet<_>>(),
        BTreeSet::from([c_on_del, d_on_del])
    );
}

// ---------------------------------------------------------------------------------------------
// signals
// ---------------------------------------------------------------------------------------------

/// An enqueue sends `Enqueued` naming the job's queue.
pub async fn signal_enqueued(store: Arc<dyn Storage>) {
    let mut rx = store.subscribe();
    let now = t0();
    add(&store, job_in("x", "emails"), now).await;
    expect_signal(&mut rx, "Enqueued{emails}", |s| {
        *s == Signal::Enqueued {
            queue: "emails".into(),
        }
    })
    .await;
    // A batch over two queues names both.
    add_many(
        &store,
        vec![job_in("x", "reports"), job_in("x", "critical")],
        now,
    )
    .await;
    let mut want: HashSet<String> = HashSet::from(["reports".to_owned(), "critical".to_owned()]);
    while !want.is_empty() {
        let s = expect_signal(&mut rx, "Enqueued{reports|critical}", |s| {
            matches!(s, Signal::Enqueued { queue } if queue == "reports" || queue == "critical")
        })
        .await;
        if let Signal::Enqueued { queue } = s {
            want.remove(&queue);
        }
    }
}

/// Scheduling a job sends `Scheduled` with its due time.
pub async fn signal_scheduled(store: Arc<dyn Storage>) {
    let mut rx = store.subscribe();
    let now = t0();
    let at = now + secs(90);
    add(&store, scheduled("x", at), now).await;
    expect_signal(&mut rx, "Scheduled{at}", |s| *s == Signal::Scheduled { at }).await;
}

/// Deleting or requeueing a processing job sends `Revoked` with its new state.
pub async fn signal_revoked(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("a");
    let ids = add_many(&store, vec![job("x"), job("x")], now).await;
    let got = fetch(&store, &s, &["default"], 2, now).await;
    assert_eq!(got.len(), 2);
    let mut rx = store.subscribe();
    store
        .delete(&[ids[0]], "stop", now + secs(1))
        .await
        .unwrap();
    expect_signal(&mut rx, "Revoked{deleted}", |sig| {
        *sig == Signal::Revoked {
            id: ids[0],
            state: JobState::Deleted,
        }
    })
    .await;
    store
        .requeue(&[ids[1]], "again", now + secs(1))
        .await
        .unwrap();
    expect_signal(&mut rx, "Revoked{enqueued}", |sig| {
        *sig == Signal::Revoked {
            id: ids[1],
            state: JobState::Enqueued,
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// concurrency
// ---------------------------------------------------------------------------------------------

/// Eight concurrent fetchers with batches of 1 to 50 over 3,000 jobs never get the same job
/// and together get all of them.
pub async fn concurrent_fetchers_never_share_a_job(store: Arc<dyn Storage>) {
    const JOBS: usize = 3000;
    const FETCHERS: usize = 8;
    let now = t0();
    let mut ids = Vec::with_capacity(JOBS);
    for chunk in 0..3 {
        let jobs: Vec<NewJob> = (0..JOBS / 3)
            .map(|i| {
                let mut j = NewJob::new("c", format!("{}", chunk * 1000 + i));
                j.queue = if i % 2 == 0 { "default" } else { "other" }.to_owned();
                j.priority = i32::try_from(i % 3).unwrap();
                j
            })
            .collect();
        ids.extend(add_many(&store, jobs, now).await);
    }
    let mut tasks = Vec::new();
    for t in 0..FETCHERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let s = server(&format!("f{t}"));
            let mut mine = Vec::new();
            let mut n: usize = t * 7 + 1;
            loop {
                let limit = n % 50 + 1;
                n = n.wrapping_mul(31).wrapping_add(17);
                let queues: &[&str] = if t % 2 == 0 {
                    &["default", "other"]
                } else {
                    &["other", "default"]
                };
                let got = store.fetch(request(&s, queues, limit, now)).await.unwrap();
                assert!(got.len() <= limit, "asked {limit}, got {}", got.len());
                if got.is_empty() {
                    return mine;
                }
                for f in got {
                    assert_eq!(f.attempt, 1, "job {} fetched twice", f.id);
                    mine.push(f.id);
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    let mut seen = HashSet::with_capacity(JOBS);
    let mut per_task = Vec::new();
    for t in tasks {
        let mine = t.await.unwrap();
        per_task.push(mine.len());
        for id in mine {
            assert!(seen.insert(id), "job {id} was fetched by two fetchers");
        }
    }
    assert_eq!(seen.len(), JOBS, "fetched per task: {per_task:?}");
    assert_eq!(seen, ids.iter().copied().collect::<HashSet<_>>());
    let st = store.stats().await.unwrap();
    assert_eq!(st.count(JobState::Processing), JOBS as u64);
    assert_eq!(st.count(JobState::Enqueued), 0);
}

// ---------------------------------------------------------------------------------------------
// recurring jobs
// ---------------------------------------------------------------------------------------------

const DAILY: &str = "0 3 * * *";

fn daily_schedule() -> CronSchedule {
    CronSchedule::parse(DAILY, "UTC").unwrap()
}

/// A recurring job firing every day at 03:00 UTC, creating a `report` job.
fn daily(id: &str) -> RecurringDef {
    RecurringDef::new(
        id,
        daily_schedule(),
        JobTemplate::from_job(&NewJob::new("report", r#"{"format":"pdf"}"#)),
    )
    .unwrap()
}

/// The first 03:00 UTC after `t`.
fn next_3am(t: DateTime<Utc>) -> DateTime<Utc> {
    daily_schedule().next_after(t).unwrap()
}

async fn recurring(store: &Arc<dyn Storage>, id: &str) -> RecurringRecord {
    store
        .recurring(id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("recurring job {id:?} should exist"))
}

/// The firing a server would plan for `id` at `now` (which must be due).
async fn plan(store: &Arc<dyn Storage>, id: &str, now: DateTime<Utc>) -> Firing {
    let record = recurring(store, id).await;
    plan_firing(&record, now, Misfire::DEFAULT_GRACE)
        .unwrap()
        .unwrap_or_else(|| panic!("{id:?} should be due at {now}: {record:?}"))
}

async fn count_jobs(store: &Arc<dyn Storage>) -> usize {
    store
        .list_jobs(JobQuery::new().page(0, 1000))
        .await
        .unwrap()
        .len()
}

/// Every field of a recurring job is stored and read back as given.
pub async fn recurring_upsert_then_read_back(store: Arc<dyn Storage>) {
    let now = t0();
    assert!(store.recurring("nightly").await.unwrap().is_none());
    let mut template = NewJob::new("report", r#"{"format":"pdf","pages":[1,2]}"#);
    template.queue = "reports".to_owned();
    template.priority = 5;
    template.retry = RetryPolicy::Delays(vec![Duration::from_secs(1), Duration::from_millis(2500)]);
    template.timeout = Some(Duration::from_secs(90));
    let template = JobTemplate::from_job(&template);
    let schedule = CronSchedule::parse("30 4 * * 1-5", "Europe/Paris").unwrap();
    let next = schedule.next_after(now).unwrap();
    let mut def = RecurringDef::new("nightly", schedule, template.clone()).unwrap();
    def.misfire = Misfire::FireEach { max: 3 };
    store.upsert_recurring(def, Some(next), now).await.unwrap();

    let r = recurring(&store, "nightly").await;
    assert_eq!(r.id, "nightly");
    assert_eq!(r.cron, "30 4 * * 1-5");
    assert_eq!(r.time_zone, "Europe/Paris");
    assert_eq!(r.misfire, Misfire::FireEach { max: 3 });
    assert_eq!(r.job, template);
    assert!(!r.paused);
    assert_eq!(r.next_run, Some(next));
    assert_eq!(r.last_run, None);
    assert_eq!(r.last_job, None);
    assert_eq!(r.last_error, None);
    assert_eq!(r.created_at, now);
    assert_eq!(r.updated_at, now);
    assert_eq!(r.schedule().unwrap().expr(), "30 4 * * 1-5");

    // The defaults, and a job added disabled (no next run).
    store
        .upsert_recurring(daily("plain"), None, now)
        .await
        .unwrap();
    let r = recurring(&store, "plain").await;
    assert_eq!(r.misfire, Misfire::FireOnce);
    assert_eq!(r.job, daily("plain").job);
    assert_eq!(r.job.retry, RetryPolicy::default());
    assert_eq!(r.job.timeout, None);
    assert_eq!(r.next_run, None);
    assert!(store.recurring("missing").await.unwrap().is_none());
}

/// Declaring the same schedule again keeps the occurrence waited for (a deploy misses
/// nothing); a new cron expression or time zone, or a disabled job, takes the given one. The
/// template is always replaced, the last error cleared; `updated_at` moves only when the
/// definition changed.
pub async fn recurring_upsert_keeps_next_run_unless_the_schedule_changed(store: Arc<dyn Storage>) {
    let now = t0();
    let n1 = next_3am(now);
    store
        .upsert_recurring(daily("r"), Some(n1), now)
        .await
        .unwrap();

    // Same schedule, new arguments, another proposed next run: the next run stays.
    let mut def = daily("r");
    def.job.args = r#"{"format":"csv"}"#.to_owned();
    store
        .upsert_recurring(def.clone(), Some(n1 + secs(3600)), now + secs(10))
        .await
        .unwrap();
    let r = recurring(&store, "r").await;
    assert_eq!(r.next_run, Some(n1), "same schedule: the next run is kept");
    assert_eq!(r.job.args, r#"{"format":"csv"}"#);
    assert_eq!(r.created_at, now);
    assert_eq!(r.updated_at, now + secs(10));

    // The very same definition again: nothing changed, not even updated_at.
    store
        .upsert_recurring(def.clone(), Some(n1 + secs(7200)), now + secs(20))
        .await
        .unwrap();
    let r = recurring(&store, "r").await;
    assert_eq!(r.next_run, Some(n1));
    assert_eq!(
        r.updated_at,
        now + secs(10),
        "an identical definition is no change"
    );

    // Another cron expression: the given next run.
    let hourly = CronSchedule::parse("0 * * * *", "UTC").unwrap();
    let n2 = hourly.next_after(now).unwrap();
    let mut changed = def.clone();
    changed.schedule = hourly;
    store
        .upsert_recurring(changed.clone(), Some(n2), now + secs(30))
        .await
        .unwrap();
    let r = recurring(&store, "r").await;
    assert_eq!(r.cron, "0 * * * *");
    assert_eq!(r.next_run, Some(n2), "new cron: the given next run");
    assert_eq!(r.updated_at, now + secs(30));

    // Same expression in another time zone: the given next run.
    let tokyo = CronSchedule::parse("0 * * * *", "Asia/Tokyo").unwrap();
    let n3 = n2 + secs(60);
    changed.schedule = tokyo;
    store
        .upsert_recurring(changed.clone(), Some(n3), now + secs(40))
        .await
        .unwrap();
    let r = recurring(&store, "r").await;
    assert_eq!(r.time_zone, "Asia/Tokyo");
    assert_eq!(r.next_run, Some(n3), "new time zone: the given next run");

    // Disabled by a firing (no next occurrence) with an error: an upsert of the same schedule
    // takes the given next run and clears the error.
    let mut f = plan(&store, "r", n3).await;
    f.jobs.clear();
    f.next_run = None;
    f.error = Some("no server knows the job type report".to_owned());
    assert!(store.fire_recurring(f).await.unwrap());
    let r = recurring(&store, "r").await;
    assert_eq!(r.next_run, None);
    assert!(r.last_error.is_some());
    let n4 = n3 + secs(3600);
    store
        .upsert_recurring(changed, Some(n4), n3 + secs(1))
        .await
        .unwrap();
    let r = recurring(&store, "r").await;
    assert_eq!(
        r.next_run,
        Some(n4),
        "a disabled job takes the given next run"
    );
    assert_eq!(r.last_error, None, "an upsert clears the last error");
}

/// An upsert keeps a paused job paused, and keeps its last run and last job.
pub async fn recurring_upsert_keeps_paused_and_last_run(store: Arc<dyn Storage>) {
    let now = t0();
    let n1 = next_3am(now);
    store
        .upsert_recurring(daily("r"), Some(n1), now)
        .await
        .unwrap();
    let fired_at = n1 + secs(1);
    let f = plan(&store, "r", fired_at).await;
    let job = f.jobs[0].id;
    assert!(store.fire_recurring(f).await.unwrap());
    assert!(
        store
            .set_recurring_paused("r", true, None, fired_at)
            .await
            .unwrap()
    );
    store
        .upsert_recurring(daily("r"), Some(n1 + secs(86400 * 2)), fired_at + secs(5))
        .await
        .unwrap();
    let r = recurring(&store, "r").await;
    assert!(r.paused, "an upsert does not resume a paused job");
    assert_eq!(r.last_job, Some(job));
    assert_eq!(r.last_run, Some(fired_at));
    assert_eq!(r.next_run, Some(n1 + secs(86400)));
}

/// Recurring jobs are listed by id.
pub async fn recurring_list_is_ordered_by_id(store: Arc<dyn Storage>) {
    let now = t0();
    assert!(store.list_recurring().await.unwrap().is_empty());
    for id in ["b", "a", "c-2", "c-10", "B"] {
        store
            .upsert_recurring(daily(id), Some(next_3am(now)), now)
            .await
            .unwrap();
    }
    let ids: Vec<String> = store
        .list_recurring()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["B", "a", "b", "c-10", "c-2"]);
}

/// A removed recurring job is gone; the jobs it created stay. Removing an unknown id is false.
pub async fn recurring_remove(store: Arc<dyn Storage>) {
    let now = t0();
    let n1 = next_3am(now);
    store
        .upsert_recurring(daily("r"), Some(n1), now)
        .await
        .unwrap();
    store
        .upsert_recurring(daily("other"), Some(n1), now)
        .await
        .unwrap();
    let f = plan(&store, "r", n1).await;
    let job = f.jobs[0].id;
    assert!(store.fire_recurring(f).await.unwrap());

    assert!(store.remove_recurring("r").await.unwrap());
    assert!(store.recurring("r").await.unwrap().is_none());
    let ids: Vec<String> = store
        .list_recurring()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["other"]);
    assert_eq!(
        state(&store, job).await,
        JobState::Enqueued,
        "its jobs stay"
    );
    assert!(!store.remove_recurring("r").await.unwrap());
    assert!(!store.remove_recurring("unknown").await.unwrap());
    // Triggering a removed job fails.
    assert!(matches!(
        store.trigger_recurring("r", now).await,
        Err(Error::RecurringNotFound(id)) if id == "r"
    ));
}

/// A paused job keeps its next run but does not fire; resuming takes the given next run.
pub async fn recurring_pause_and_resume(store: Arc<dyn Storage>) {
    let now = t0();
    let n1 = next_3am(now);
    store
        .upsert_recurring(daily("r"), Some(n1), now)
        .await
        .unwrap();
    // A server planned the firing just before a person paused the job.
    let f = plan(&store, "r", n1).await;
    assert!(
        store
            .set_recurring_paused("r", true, None, now)
            .await
            .unwrap()
    );
    let r = recurring(&store, "r").await;
    assert!(r.paused);
    assert_eq!(
        r.next_run,
        Some(n1),
        "a paused job keeps its next run for display"
    );
    assert!(
        plan_firing(&r, n1 + secs(1), Misfire::DEFAULT_GRACE)
            .unwrap()
            .is_none()
    );
    assert!(
        !store.fire_recurring(f).await.unwrap(),
        "a paused job does not fire"
    );
    assert_eq!(count_jobs(&store).await, 0);
    assert_eq!(recurring(&store, "r").await.last_job, None);

    // Resumed two days later: the occurrences meanwhile are not fired.
    let later = n1 + secs(2 * 86400 + 60);
    let n2 = next_3am(later);
    assert!(
        store
            .set_recurring_paused("r", false, Some(n2), later)
            .await
            .unwrap()
    );
    let r = recurring(&store, "r").await;
    assert!(!r.paused);
    assert_eq!(r.next_run, Some(n2), "resume takes the given next run");
    // Resuming a job that is not paused does not move its schedule (a due occurrence would be
    // skipped).
    assert!(
        store
            .set_recurring_paused("r", false, Some(n2 + secs(86400)), later)
            .await
            .unwrap()
    );
    assert_eq!(recurring(&store, "r").await.next_run, Some(n2));
    let mut f = plan(&store, "r", n2).await;
    f.next_run = None;
    f.error = Some("disabled".to_owned());
    assert!(store.fire_recurring(f).await.unwrap());
    assert_eq!(count_jobs(&store).await, 1);
    // A disabled job (no next run) that is resumed takes the given next run.
    let n3 = n2 + secs(86400);
    assert!(
        store
            .set_recurring_paused("r", false, Some(n3), n2)
            .await
            .unwrap()
    );
    assert_eq!(recurring(&store, "r").await.next_run, Some(n3));

    assert!(
        !store
            .set_recurring_paused("unknown", true, None, now)
            .await
            .unwrap()
    );
    assert!(
        !store
            .set_recurring_paused("unknown", false, Some(n1), now)
            .await
            .unwrap()
    );
}

/// A firing creates its jobs exactly as enqueue does (enqueued, in their queue, with
/// history) and records the last job, the last run and the next run.
pub async fn recurring_fire_creates_the_jobs(store: Arc<dyn Storage>) {
    let now = t0();
    let n1 = next_3am(now);
    let mut def = daily("r");
    def.job.queue = "reports".to_owned();
    def.job.priority = 3;
    store
        .upsert_recurring(def.clone(), Some(n1), now)
        .await
        .unwrap();
    let fired_at = n1 + secs(2);
    let mut f = plan(&store, "r", fired_at).await;
    assert_eq!(f.expected_next_run, n1);
    assert_eq!(f.next_run, Some(n1 + secs(86400)));
    // Three jobs, as a FireEach policy would plan after missed occurrences.
    f.jobs = (0..3).map(|_| def.job.instantiate()).collect();
    let ids: Vec<JobId> = f.jobs.iter().map(|j| j.id).collect();
    assert!(store.fire_recurring(f).await.unwrap());

    for id in &ids {
        let d = details(&store, *id).await;
        assert_eq!(d.job.state, JobState::Enqueued);
        assert_eq!(d.job.name, "report");
        assert_eq!(d.job.queue, "reports");
        assert_eq!(d.job.priority, 3);
        assert_eq!(d.job.args, r#"{"format":"pdf"}"#);
        assert_eq!(d.job.created_at, fired_at);
        assert_eq!(states(&d.history), [JobState::Enqueued]);
        assert_eq!(d.history[0].at, fired_at);
    }
    let r = recurring(&store, "r").await;
    assert_eq!(r.last_job, ids.last().copied(), "the last job created");
    assert_eq!(r.last_run, Some(fired_at));
    assert_eq!(r.next_run, Some(n1 + secs(86400)));
    assert_eq!(r.last_error, None);
    // They are in their queue, in order.
    let got = fetch(&store, &server("w"), &["reports"], 10, fired_at).await;
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), ids);
}

/// A firing with no jobs (missed occurrences skipped) moves the next run and leaves the last
/// job and last run alone.
pub async fn recurring_fire_without_jobs_moves_next_run_only(store: Arc<dyn Storage>) {
    let now = t0();
    let n1 = next_3am(now);
    let mut def = daily("r");
    def.misfire = Misfire::Skip;
    store.upsert_recurring(def, Some(n1), now).await.unwrap();
    let triggered = store.trigger_recurring("r", now).await.unwrap();
    // No server ran for three days: the skip policy creates nothing.
    let late = n1 + secs(3 * 86400 + 3600);
    let f = plan(&store, "r", late).await;
    assert!(f.jobs.is_empty());
    let next = f.next_run;
    assert_eq!(next, Some(n1 + secs(4 * 86400)));
    assert!(store.fire_recurring(f).await.unwrap());
    let r = recurring(&store, "r").await;
    assert_eq!(r.next_run, next);
    assert_eq!(r.last_job, Some(triggered));
    assert_eq!(r.last_run, Some(now));
    assert_eq!(r.last_error, None);
    assert_eq!(count_jobs(&store).await, 1);
}

/// A firing that carries an error records it (and creates nothing); the next firing without
/// one clears it.
pub async fn recurring_fire_records_an_error(store: Arc<dyn Storage>) {
    let now = t0();
    let n1 = next_3am(now);
    store
        .upsert_recurring(daily("r"), Some(n1), now)
        .await
        .unwrap();
    let mut f = plan(&store, "r", n1).await;
    f.jobs.clear();
    f.error = Some("no server registers the job type \"report\"".to_owned());
    let next = f.next_run;
    assert!(store.fire_recurring(f).await.unwrap());
    let r = recurring(&store, "r").await;
    assert_eq!(
        r.last_error.as_deref(),
        Some("no server registers the job type \"report\"")
    );
    assert_eq!(r.next_run, next, "the schedule moves on");
    assert_eq!(r.last_job, None);
    assert_eq!(r.last_run, None);
    assert_eq!(count_jobs(&store).await, 0);

    let f = plan(&store, "r", next.unwrap()).await;
    let job = f.jobs[0].id;
    assert!(store.fire_recurring(f).await.unwrap());
    let r = recurring(&store, "r").await;
    assert_eq!(r.last_error, None);
    assert_eq!(r.last_job, Some(job));
}

/// The same occurrence fired twice applies once and creates its jobs once; a firing of an
/// occurrence the job no longer waits for, or of an unknown job, does nothing.
pub async fn recurring_fire_applies_once(store: Arc<dyn Storage>) {
    let now = t0();
    let n1 = next_3am(now);
    store
        .upsert_recurring(daily("r"), Some(n1), now)
        .await
        .unwrap();
    let first = plan(&store, "r", n1).await;
    let second = plan(&store, "r", n1 + secs(1)).await;
    let winner = first.jobs[0].id;
    let loser = second.jobs[0].id;
    assert!(store.fire_recurring(first.clone()).await.unwrap());
    assert!(!store.fire_recurring(second).await.unwrap());
    assert!(
        !store.fire_recurring(first).await.unwrap(),
        "the very same firing again"
    );
    assert_eq!(count_jobs(&store).await, 1);
    assert!(store.job(loser).await.unwrap().is_none());
    let r = recurring(&store, "r").await;
    assert_eq!(r.last_job, Some(winner));
    assert_eq!(r.last_run, Some(n1));

    let mut unknown = plan(&store, "r", n1 + secs(86400)).await;
    unknown.id = "unknown".to_owned();
    assert!(!store.fire_recurring(unknown).await.unwrap());
    assert_eq!(count_jobs(&store).await, 1);
}

/// Eight servers firing the same occurrence at once: one applies, one job is created.
pub async fn recurring_concurrent_firings_apply_once(store: Arc<dyn Storage>) {
    const SERVERS: usize = 8;
    let now = t0();
    let n1 = next_3am(now);
    store
        .upsert_recurring(daily("r"), Some(n1), now)
        .await
        .unwrap();
    for round in 0..5_i64 {
        let due = n1 + secs(86400 * round);
        let record = recurring(&store, "r").await;
        assert_eq!(record.next_run, Some(due));
        let barrier = Arc::new(tokio::sync::Barrier::new(SERVERS));
        let mut tasks = Vec::new();
        for s in 0..SERVERS {
            let store = Arc::clone(&store);
            let barrier = Arc::clone(&barrier);
            let f = plan_firing(
                &record,
                due + secs(i64::try_from(s).unwrap()),
                Misfire::DEFAULT_GRACE,
            )
            .unwrap()
            .unwrap();
            tasks.push(tokio::spawn(async move {
                let job = f.jobs[0].id;
                barrier.wait().await;
                (store.fire_recurring(f).await.unwrap(), job)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (applied, job) = t.await.unwrap();
            if applied {
                winners.push(job);
            }
        }
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} firings applied",
            winners.len()
        );
        assert_eq!(
            count_jobs(&store).await,
            usize::try_from(round).unwrap() + 1
        );
        let r = recurring(&store, "r").await;
        assert_eq!(r.last_job, Some(winners[0]));
        assert_eq!(state(&store, winners[0]).await, JobState::Enqueued);
    }
}

/// Triggering creates a job from the template now, records it, and leaves the schedule alone;
/// an unknown id fails with `RecurringNotFound`.
pub async fn recurring_trigger(store: Arc<dyn Storage>) {
    let now = t0();
    let n1 = next_3am(now);
    let mut def = daily("r");
    def.job.queue = "reports".to_owned();
    store.upsert_recurring(def, Some(n1), now).await.unwrap();
    let at = now + secs(5);
    let id = store.trigger_recurring("r", at).await.unwrap();
    let d = details(&store, id).await;
    assert_eq!(d.job.state, JobState::Enqueued);
    assert_eq!(d.job.name, "report");
    assert_eq!(d.job.queue, "reports");
    assert_eq!(d.job.args, r#"{"format":"pdf"}"#);
    assert_eq!(states(&d.history), [JobState::Enqueued]);
    let r = recurring(&store, "r").await;
    assert_eq!(r.last_job, Some(id));
    assert_eq!(r.last_run, Some(at));
    assert_eq!(r.next_run, Some(n1), "a trigger does not move the schedule");
    assert_eq!(r.updated_at, now);
    let got = fetch(&store, &server("w"), &["reports"], 10, at).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, id);

    match store.trigger_recurring("unknown", at).await {
        Err(Error::RecurringNotFound(missing)) => assert_eq!(missing, "unknown"),
        other => panic!("trigger of an unknown id answered {other:?}"),
    }
    assert_eq!(count_jobs(&store).await, 1);
}

/// Adding, resuming and removing a recurring job wake the recurring schedulers.
pub async fn signal_recurring_changed(store: Arc<dyn Storage>) {
    let mut rx = store.subscribe();
    let now = t0();
    store
        .upsert_recurring(daily("r"), Some(next_3am(now)), now)
        .await
        .unwrap();
    expect_signal(&mut rx, "RecurringChanged after upsert", |s| {
        *s == Signal::RecurringChanged
    })
    .await;
    store
        .set_recurring_paused("r", true, None, now)
        .await
        .unwrap();
    store
        .set_recurring_paused("r", false, Some(next_3am(now)), now)
        .await
        .unwrap();
    expect_signal(&mut rx, "RecurringChanged after resume", |s| {
        *s == Signal::RecurringChanged
    })
    .await;
    assert!(store.remove_recurring("r").await.unwrap());
    expect_signal(&mut rx, "RecurringChanged after remove", |s| {
        *s == Signal::RecurringChanged
    })
    .await;
}

/// Running totals and hourly figures count successes and failures for good, per hour, and
/// stay when the jobs expire.
pub async fn stats_keep_running_totals_and_hourly_figures(store: Arc<dyn Storage>) {
    // Two hours apart, so the figures land in two hours.
    let now = firelane_core::hour_of(t0()) + secs(600);
    let later = now + secs(3600);
    let s = server("totals");
    for (at, outcome) in [
        (now, Outcome::Succeeded),
        (now, Outcome::Succeeded),
        (now, Outcome::Failed { error: "e".into() }),
        (later, Outcome::Succeeded),
        // Neither a success nor a failure for good: not counted.
        (later, Outcome::Cancelled { reason: "c".into() }),
        (
            later,
            Outcome::Retry {
                at: later + secs(60),
                error: "again".into(),
            },
        ),
    ] {
        add(&store, job("t"), at).await;
        let f = fetch_one(&store, &s, at).await;
        complete(&store, &f, &s, outcome, at).await;
    }
    let st = store.stats().await.unwrap();
    assert_eq!((st.succeeded_total, st.failed_total), (3, 1));

    let hour = firelane_core::hour_of(now);
    let figures = store
        .stats_history(hour - secs(3600), hour + secs(3 * 3600))
        .await
        .unwrap();
    let figures: Vec<_> = figures
        .iter()
        .filter(|h| h.succeeded > 0 || h.failed > 0)
        .map(|h| (h.hour, h.succeeded, h.failed))
        .collect();
    assert_eq!(
        figures,
        vec![(hour, 2, 1), (hour + secs(3600), 1, 0)],
        "hourly figures"
    );
    // The range is [from, to): the second hour alone.
    let second = store
        .stats_history(hour + secs(3600), hour + secs(7200))
        .await
        .unwrap();
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(
        store
            .stats_history(hour + secs(7200), hour + secs(9000))
            .await
            .unwrap()
            .iter()
            .all(|h| h.succeeded == 0 && h.failed == 0)
    );

    // Expiring finished jobs lowers the state counts but not the totals or the figures.
    let removed = store
        .expire(
            later + secs(10),
            Retention::new(
                Some(Duration::ZERO),
                Some(Duration::ZERO),
                Some(Duration::ZERO),
            ),
            1000,
        )
        .await
        .unwrap();
    assert_eq!(removed, 5);
    let st = store.stats().await.unwrap();
    assert_eq!(st.count(JobState::Succeeded), 0);
    assert_eq!(st.count(JobState::Failed), 0);
    assert_eq!((st.succeeded_total, st.failed_total), (3, 1));
    let after = store.stats_history(hour, hour + secs(7200)).await.unwrap();
    assert_eq!(after.iter().map(|h| h.succeeded).sum::<u64>(), 3);
}

/// Hourly figures older than eight days are removed by `expire`; the totals stay.
pub async fn stats_history_is_kept_eight_days(store: Arc<dyn Storage>) {
    let old = firelane_core::hour_of(t0()) - secs(10 * 24 * 3600);
    let s = server("old");
    add(&store, job("t"), old).await;
    let f = fetch_one(&store, &s, old).await;
    complete(&store, &f, &s, Outcome::Succeeded, old).await;
    let seen = |v: Vec<firelane_core::HourlyStats>| v.iter().map(|h| h.succeeded).sum::<u64>();
    let range = (old - secs(3600), old + secs(3600));
    assert_eq!(
        seen(store.stats_history(range.0, range.1).await.unwrap()),
        1
    );
    // Expiry keeps finished jobs (no retention) but drops hours older than eight days.
    store
        .expire(t0(), Retention::new(None, None, None), 1000)
        .await
        .unwrap();
    assert_eq!(
        seen(store.stats_history(range.0, range.1).await.unwrap()),
        0
    );
    assert_eq!(store.stats().await.unwrap().succeeded_total, 1);
}

/// A paused queue is skipped by fetches, still takes jobs, shows in the stats, and wakes the
/// servers when resumed.
pub async fn paused_queue_is_not_fetched(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("paused");
    let mut signals = store.subscribe();
    add_many(
        &store,
        vec![job_in("a", "emails"), job_in("b", "reports")],
        now,
    )
    .await;
    store.set_queue_paused("emails", true, now).await.unwrap();
    // Idempotent.
    store.set_queue_paused("emails", true, now).await.unwrap();
    let got = fetch(&store, &s, &["emails", "reports"], 10, now).await;
    assert_eq!(
        got.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>(),
        ["reports"]
    );
    // A paused queue still takes new jobs, and shows in the stats with them.
    add(&store, job_in("a", "emails"), now).await;
    assert!(fetch(&store, &s, &["emails"], 10, now).await.is_empty());
    let st = store.stats().await.unwrap();
    let emails = st.queues.iter().find(|q| q.name == "emails").unwrap();
    assert!(emails.paused);
    assert_eq!(emails.enqueued, 2);
    // A paused queue with no jobs is listed too.
    store.set_queue_paused("idle", true, now).await.unwrap();
    let st = store.stats().await.unwrap();
    assert!(st.queues.iter().any(|q| q.name == "idle" && q.paused));
    store.set_queue_paused("idle", false, now).await.unwrap();

    while signals.try_recv().is_ok() {}
    store.set_queue_paused("emails", false, now).await.unwrap();
    let woke = std::iter::from_fn(|| signals.try_recv().ok()).any(|sig| {
        sig == Signal::Enqueued {
            queue: "emails".into(),
        }
    });
    assert!(woke, "resuming a queue wakes the servers");
    assert_eq!(fetch(&store, &s, &["emails"], 10, now).await.len(), 2);
    let st = store.stats().await.unwrap();
    assert!(st.queues.iter().all(|q| !q.paused), "{st:?}");
    // Resuming a queue that is not paused is allowed and changes nothing.
    store.set_queue_paused("emails", false, now).await.unwrap();
}

/// Search finds jobs by argument text, part of a name, queue or id.
pub async fn list_jobs_search(store: Arc<dyn Storage>) {
    let now = t0();
    let mut welcome = NewJob::new("send_welcome_email", r#"{"to":"ada@example.com"}"#);
    welcome.queue = "emails".into();
    let report = NewJob::new("build_report", r#"{"month":"2026-11"}"#);
    let other = NewJob::new("cleanup", r#"{"older_than_days":30}"#);
    let ids = add_many(&store, vec![welcome, report, other], now).await;
    let found = |q: JobQuery| {
        let store = Arc::clone(&store);
        async move { ids_of(store.list_jobs(q).await.unwrap()) }
    };
    // Argument text.
    assert_eq!(
        found(JobQuery::new().search("ada@example")).await,
        vec![ids[0]]
    );
    // Part of a name.
    assert_eq!(found(JobQuery::new().search("report")).await, vec![ids[1]]);
    // A queue.
    assert_eq!(found(JobQuery::new().search("emails")).await, vec![ids[0]]);
    // An id, whole.
    assert_eq!(
        found(JobQuery::new().search(ids[2].to_string())).await,
        vec![ids[2]]
    );
    // Combined with a state.
    assert!(
        found(JobQuery::new().search("ada").state(JobState::Failed))
            .await
            .is_empty()
    );
    // Nothing, and text that looks like SQL is just text.
    assert!(found(JobQuery::new().search("nobody")).await.is_empty());
    assert!(
        found(JobQuery::new().search("%' OR 1=1 --"))
            .await
            .is_empty()
    );
    // An empty search is no filter.
    assert_eq!(found(JobQuery::new().search("")).await.len(), 3);
}

/// Creation time ranges are `[from, to)`; `retries()` lists scheduled retries only.
pub async fn list_jobs_created_range_and_retries(store: Arc<dyn Storage>) {
    let now = t0();
    let early = add(&store, job("t"), now - secs(3600)).await;
    let middle = add(&store, job("t"), now - secs(60)).await;
    let late = add(&store, job("t"), now).await;
    let found = |q: JobQuery| {
        let store = Arc::clone(&store);
        async move { ids_of(store.list_jobs(q).await.unwrap()) }
    };
    assert_eq!(
        found(JobQuery::new().created(Some(now - secs(120)), None)).await,
        vec![late, middle]
    );
    assert_eq!(
        found(JobQuery::new().created(None, Some(now - secs(60)))).await,
        vec![early]
    );
    assert_eq!(
        found(JobQuery::new().created(Some(now - secs(60)), Some(now))).await,
        vec![middle]
    );

    // Retries: scheduled after a failed attempt, not scheduled by the user.
    let s = server("retries");
    let fetched = fetch(&store, &s, &["default"], 3, now).await;
    assert_eq!(fetched.len(), 3);
    complete(
        &store,
        &fetched[0],
        &s,
        Outcome::Retry {
            at: now + secs(600),
            error: "boom".into(),
        },
        now,
    )
    .await;
    add(&store, scheduled("later", now + secs(600)), now).await;
    assert_eq!(found(JobQuery::new().retries()).await, vec![fetched[0].id]);
    assert_eq!(
        found(JobQuery::new().state(JobState::Scheduled))
            .await
            .len(),
        2
    );
}

/// The enqueued jobs of one queue are listed in the order a fetch takes them.
pub async fn list_jobs_enqueued_in_fetch_order(store: Arc<dyn Storage>) {
    let now = t0();
    let mut jobs: Vec<NewJob> = (0..4).map(|_| job_in("x", "emails")).collect();
    jobs[2].priority = 5;
    let ids = add_many(&store, jobs, now).await;
    add(&store, job_in("x", "reports"), now).await;
    let listed = ids_of(
        store
            .list_jobs(JobQuery::new().state(JobState::Enqueued).queue("emails"))
            .await
            .unwrap(),
    );
    assert_eq!(listed, vec![ids[2], ids[0], ids[1], ids[3]]);
    let page = ids_of(
        store
            .list_jobs(
                JobQuery::new()
                    .state(JobState::Enqueued)
                    .queue("emails")
                    .page(1, 2),
            )
            .await
            .unwrap(),
    );
    assert_eq!(page, vec![ids[0], ids[1]]);
    // The order is the order a fetch takes them.
    let fetched: Vec<JobId> = fetch(&store, &server("order"), &["emails"], 10, now)
        .await
        .iter()
        .map(|j| j.id)
        .collect();
    assert_eq!(fetched, listed);
}

/// The ids of jobs, in order.
fn ids_of(jobs: Vec<firelane_core::JobRecord>) -> Vec<JobId> {
    jobs.into_iter().map(|j| j.id).collect()
}

const TRACE: &str = r#"{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}"#;

/// A job's trace context comes back with every fetch of it (retries and released
/// continuations included) and with its record; a job without one has none.
pub async fn trace_context_travels_with_the_job(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("traced");
    let mut traced = job("traced");
    traced.trace_context = Some(TRACE.to_owned());
    let traced = add(&store, traced, now).await;
    let plain = add(&store, job("plain"), now).await;
    let mut child = continuation("child", traced, ContinueOn::Succeeded);
    child.trace_context = Some(TRACE.replace("-01\"", "-00\""));
    let child = add(&store, child, now).await;

    assert_eq!(
        details(&store, traced).await.job.trace_context.as_deref(),
        Some(TRACE)
    );
    assert_eq!(details(&store, plain).await.job.trace_context, None);
    let got = fetch(&store, &s, &["default"], 10, now).await;
    assert_eq!(got.len(), 2, "{got:?}");
    let (first, second) = (&got[0], &got[1]);
    assert_eq!(first.id, traced);
    assert_eq!(first.trace_context.as_deref(), Some(TRACE));
    assert_eq!(second.id, plain);
    assert_eq!(second.trace_context, None);

    // A retry keeps it.
    let end = now + secs(2);
    let retry = Outcome::Retry {
        at: end,
        error: "try again".into(),
    };
    complete(&store, first, &s, retry, end).await;
    let again = fetch_one(&store, &s, end).await;
    assert_eq!(again.id, traced);
    assert_eq!(again.attempt, 2);
    assert_eq!(again.trace_context.as_deref(), Some(TRACE));

    // A continuation released by its parent keeps its own.
    complete(&store, &again, &s, Outcome::Succeeded, end + secs(1)).await;
    let released = fetch_one(&store, &s, end + secs(1)).await;
    assert_eq!(released.id, child);
    assert_eq!(
        released.trace_context.as_deref(),
        Some(TRACE.replace("-01\"", "-00\"").as_str())
    );
}

/// Queue figures tell when the job a fetch would take next entered its queue.
pub async fn stats_tell_when_the_head_job_was_enqueued(store: Arc<dyn Storage>) {
    let now = t0();
    let s = server("head");
    let head_of = |st: &firelane_core::Stats, q: &str| {
        st.queues
            .iter()
            .find(|x| x.name == q)
            .and_then(|x| x.head_enqueued_at)
    };
    add(&store, job_in("old", "work"), now).await;
    let mut urgent = job_in("urgent", "work");
    urgent.priority = 5;
    add(&store, urgent, now + secs(10)).await;
    add(&store, job_in("other", "other"), now + secs(20)).await;
    let st = store.stats().await.unwrap();
    assert_eq!(head_of(&st, "work"), Some(now + secs(10)), "{st:?}");
    assert_eq!(head_of(&st, "other"), Some(now + secs(20)), "{st:?}");

    let got = fetch(&store, &s, &["work"], 1, now + secs(30)).await;
    assert_eq!(got[0].name, "urgent");
    let st = store.stats().await.unwrap();
    assert_eq!(head_of(&st, "work"), Some(now), "{st:?}");

    // A retry enters the queue again at the time of its completion.
    let old = fetch(&store, &s, &["work"], 1, now + secs(30)).await;
    let end = now + secs(40);
    let retry = Outcome::Retry {
        at: end,
        error: "again".into(),
    };
    complete(&store, &old[0], &s, retry, end).await;
    let st = store.stats().await.unwrap();
    assert_eq!(head_of(&st, "work"), Some(end), "{st:?}");

    // An empty queue has none.
    fetch(&store, &s, &["work"], 10, end).await;
    let st = store.stats().await.unwrap();
    assert_eq!(head_of(&st, "work"), None, "{st:?}");
}
