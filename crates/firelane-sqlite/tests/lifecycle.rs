//! A walk through a job's life on the SQLite store: the rows it leaves (history, queue table)
//! and the signals it sends. The generic promises of the trait are checked in depth by the
//! conformance suite; these check what is specific to this store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use firelane_core::chrono::{DateTime, TimeZone, Utc};
use firelane_core::{
    Change, Completion, CompletionStatus, ContinueOn, FetchRequest, FetchedJob, Heartbeat, Initial,
    JobId, JobQuery, JobState, NewJob, Outcome, Retention, RetryPolicy, ServerId, ServerInfo,
    Signal, Storage,
};
use firelane_sqlite::SqliteStorage;
use tokio::sync::broadcast;

fn t(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn new_job(name: &str, queue: &str) -> NewJob {
    let mut j = NewJob::new(name, r#"{"n":1}"#);
    j.queue = queue.to_owned();
    j
}

async fn fetch(
    s: &SqliteStorage,
    server: &ServerId,
    queues: &[&str],
    now: DateTime<Utc>,
) -> Vec<FetchedJob> {
    s.fetch(FetchRequest::new(
        server.clone(),
        queues.iter().map(|q| (*q).to_owned()).collect(),
        100,
        now,
        Duration::from_secs(60),
    ))
    .await
    .unwrap()
}

fn done(f: &FetchedJob, server: &ServerId, outcome: Outcome, at: DateTime<Utc>) -> Completion {
    Completion::new(
        f.id,
        f.lease,
        server.clone(),
        outcome,
        Duration::from_millis(1500),
        at,
    )
}

fn drain(rx: &mut broadcast::Receiver<Signal>) -> Vec<Signal> {
    let mut out = Vec::new();
    while let Ok(s) = rx.try_recv() {
        out.push(s);
    }
    out
}

async fn queue_rows(s: &SqliteStorage) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM firelane_queue")
        .fetch_one(s.pool())
        .await
        .unwrap()
}

async fn state_of(s: &SqliteStorage, id: JobId) -> JobState {
    s.job(id).await.unwrap().unwrap().job.state
}

#[tokio::test]
async fn retries_then_failure_release_continuations_with_history_and_signals() {
    let s = SqliteStorage::connect(":memory:").await.unwrap();
    let mut signals = s.subscribe();
    let server = ServerId::from_string("srv-1".into());

    let mut parent = new_job("parent", "default");
    parent.retry = RetryPolicy::Delays(vec![Duration::from_secs(10)]);
    parent.timeout = Some(Duration::from_secs(90));
    let pid = parent.id;
    let mut on_fail = new_job("on_fail", "cleanup");
    on_fail.initial = Initial::Awaiting {
        parent: pid,
        on: ContinueOn::Failed,
    };
    let mut on_success = new_job("on_success", "default");
    on_success.initial = Initial::Awaiting {
        parent: pid,
        on: ContinueOn::Succeeded,
    };
    let mut grandchild = new_job("grandchild", "default");
    grandchild.initial = Initial::Awaiting {
        parent: on_fail.id,
        on: ContinueOn::Deleted,
    };
    let (fail_id, success_id, grand_id) = (on_fail.id, on_success.id, grandchild.id);

    let created = s
        .enqueue(vec![parent, on_fail, on_success, grandchild], t(0))
        .await
        .unwrap();
    let states: Vec<JobState> = created.iter().map(|c| c.state).collect();
    assert_eq!(
        states,
        [
            JobState::Enqueued,
            JobState::Awaiting,
            JobState::Awaiting,
            JobState::Awaiting
        ]
    );
    assert_eq!(
        drain(&mut signals),
        [Signal::Enqueued {
            queue: "default".into()
        }]
    );
    assert_eq!(queue_rows(&s).await, 1);

    // Attempt 1 fails and is retried later.
    let f = fetch(&s, &server, &["default"], t(1)).await;
    assert_eq!(f.len(), 1);
    assert_eq!(
        (f[0].attempt, f[0].timeout),
        (1, Some(Duration::from_secs(90)))
    );
    assert_eq!(
        f[0].retry,
        RetryPolicy::Delays(vec![Duration::from_secs(10)])
    );
    assert_eq!(f[0].enqueued_at, t(0));
    assert_eq!(queue_rows(&s).await, 0);
    let retry = Outcome::Retry {
        at: t(12),
        error: "boom".into(),
    };
    let r = s
        .complete(vec![done(&f[0], &server, retry, t(2))])
        .await
        .unwrap();
    assert_eq!(r, [CompletionStatus::Applied(JobState::Scheduled)]);
    assert_eq!(drain(&mut signals), [Signal::Scheduled { at: t(12) }]);
    // The same completion again is stale.
    let again = Outcome::Failed {
        error: "late".into(),
    };
    let r = s
        .complete(vec![done(&f[0], &server, again, t(3))])
        .await
        .unwrap();
    assert_eq!(r, [CompletionStatus::Stale]);

    let p = s.promote_due(t(5), 10).await.unwrap();
    assert_eq!((p.promoted, p.next_due), (0, Some(t(12))));
    let p = s.promote_due(t(12), 10).await.unwrap();
    assert_eq!((p.promoted, p.next_due), (1, None));
    assert_eq!(
        drain(&mut signals),
        [Signal::Enqueued {
            queue: "default".into()
        }]
    );

    // Attempt 2 fails for good: on_fail is enqueued, on_success deleted.
    let f = fetch(&s, &server, &["default"], t(13)).await;
    assert_eq!(f[0].attempt, 2);
    let failed = Outcome::Failed {
        error: "boom again".into(),
    };
    s.complete(vec![done(&f[0], &server, failed, t(14))])
        .await
        .unwrap();
    assert_eq!(state_of(&s, fail_id).await, JobState::Enqueued);
    assert_eq!(
        state_of(&s, success_id).await,
        JobState::Awaiting,
        "a failed parent may be requeued"
    );
    assert_eq!(
        drain(&mut signals),
        [Signal::Enqueued {
            queue: "cleanup".into()
        }]
    );

    let details = s.job(pid).await.unwrap().unwrap();
    assert_eq!(details.job.state, JobState::Failed);
    assert_eq!(details.job.last_error.as_deref(), Some("boom again"));
    assert_eq!(details.continuations, {
        let mut c = vec![fail_id, success_id];
        c.sort();
        c
    });
    let trail: Vec<(JobState, u32)> = details
        .history
        .iter()
        .map(|h| (h.state, h.attempt))
        .collect();
    assert_eq!(
        trail,
        [
            (JobState::Enqueued, 0),
            (JobState::Processing, 1),
            (JobState::Scheduled, 1),
            (JobState::Enqueued, 1),
            (JobState::Processing, 2),
            (JobState::Failed, 2),
        ]
    );
    let end = details.history.last().unwrap();
    assert_eq!(end.server.as_ref(), Some(&server));
    assert_eq!(end.duration, Some(Duration::from_millis(1500)));
    assert_eq!(end.error.as_deref(), Some("boom again"));

    // Deleting the enqueued on_fail continuation releases the grandchild (waits on deletion).
    let r = s
        .delete(&[fail_id, JobId::new()], "not needed", t(20))
        .await
        .unwrap();
    assert_eq!(
        r,
        [
            Change::Changed {
                from: JobState::Enqueued
            },
            Change::NotFound
        ]
    );
    assert_eq!(state_of(&s, grand_id).await, JobState::Enqueued);
    assert_eq!(
        queue_rows(&s).await,
        1,
        "only the grandchild waits in a queue"
    );
    let r = s.delete(&[fail_id], "again", t(21)).await.unwrap();
    assert_eq!(
        r,
        [Change::Refused {
            state: JobState::Deleted
        }]
    );

    // Requeue the failed parent: attempts start over, and success releases on_success.
    let r = s.requeue(&[pid], "fixed the bug", t(30)).await.unwrap();
    assert_eq!(
        r,
        [Change::Changed {
            from: JobState::Failed
        }]
    );
    let f = fetch(&s, &server, &["default"], t(31)).await;
    let parent = f.iter().find(|f| f.id == pid).unwrap();
    assert_eq!(parent.attempt, 1);
    s.complete(vec![done(parent, &server, Outcome::Succeeded, t(32))])
        .await
        .unwrap();
    assert_eq!(state_of(&s, success_id).await, JobState::Enqueued);

    // Expiration removes finished jobs with their history, and keeps failed ones by default.
    let removed = s
        .expire(t(32 + 86_400), Retention::default(), 100)
        .await
        .unwrap();
    assert_eq!(
        removed, 2,
        "the succeeded parent and the deleted continuation"
    );
    assert!(s.job(pid).await.unwrap().is_none());
    let orphaned: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM firelane_history WHERE job_id = ?")
            .bind(pid.as_bytes().as_slice())
            .fetch_one(s.pool())
            .await
            .unwrap();
    assert_eq!(orphaned, 0);
}

#[tokio::test]
async fn fetch_order_names_and_priorities() {
    let s = SqliteStorage::connect(":memory:").await.unwrap();
    let server = ServerId::from_string("srv".into());
    let mut jobs = Vec::new();
    for (name, queue, priority) in [
        ("a", "low", 0),
        ("b", "high", 0),
        ("c", "high", 5),
        ("other", "high", 9),
        ("d", "high", 0),
    ] {
        let mut j = new_job(name, queue);
        j.priority = priority;
        jobs.push(j);
    }
    s.enqueue(jobs, t(0)).await.unwrap();
    let req = FetchRequest::new(
        server.clone(),
        vec!["high".into(), "low".into()],
        10,
        t(1),
        Duration::from_secs(60),
    )
    .names(vec!["a".into(), "b".into(), "c".into(), "d".into()]);
    let names: Vec<String> = s
        .fetch(req)
        .await
        .unwrap()
        .into_iter()
        .map(|f| f.name)
        .collect();
    assert_eq!(names, ["c", "b", "d", "a"]);
    let stats = s.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Processing), 4);
    let high = stats.queues.iter().find(|q| q.name == "high").unwrap();
    assert_eq!((high.enqueued, high.processing), (1, 3));
    let left = fetch(&s, &server, &["high"], t(2)).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].name, "other");
}

#[tokio::test]
async fn heartbeats_recovery_and_revocation() {
    let s = SqliteStorage::connect(":memory:").await.unwrap();
    let mut signals = s.subscribe();
    let a = ServerId::from_string("srv-a".into());
    let mut once = new_job("once", "default");
    once.retry = RetryPolicy::none();
    let twice = new_job("twice", "default");
    let revoked = new_job("revoked", "default");
    let (once_id, twice_id, revoked_id) = (once.id, twice.id, revoked.id);
    s.enqueue(vec![once, twice, revoked], t(0)).await.unwrap();
    let f = fetch(&s, &a, &["default"], t(1)).await;
    assert_eq!(f.len(), 3);
    drain(&mut signals);

    // A person requeues one running job: its server is told, and its heartbeat loses it.
    let r = s.requeue(&[revoked_id], "stuck", t(2)).await.unwrap();
    assert_eq!(
        r,
        [Change::Changed {
            from: JobState::Processing
        }]
    );
    assert_eq!(
        drain(&mut signals),
        [
            Signal::Enqueued {
                queue: "default".into()
            },
            Signal::Revoked {
                id: revoked_id,
                state: JobState::Enqueued
            }
        ]
    );
    let info = ServerInfo::new(a.clone(), vec!["default".into()], 4, vec![]);
    let running = f
        .iter()
        .map(|f| (f.id, f.lease))
        .chain([(JobId::new(), f[0].lease)])
        .collect();
    let reply = s
        .heartbeat(Heartbeat::new(info, t(30), running, t(90)))
        .await
        .unwrap();
    assert_eq!(reply.lost.len(), 2);
    assert!(reply.lost.contains(&(revoked_id, JobState::Enqueued)));
    assert!(
        reply.lost.iter().any(|(_, st)| *st == JobState::Deleted),
        "unknown job"
    );
    let servers = s.servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].last_heartbeat, t(30));

    // Nothing lapsed before the extended lease ends.
    let rec = s.recover(t(80), Duration::from_secs(60)).await.unwrap();
    assert!(rec.requeued.is_empty() && rec.failed.is_empty() && rec.dead_servers.is_empty());
    // The server dies: its heartbeat stops, its leases lapse.
    let rec = s.recover(t(100), Duration::from_secs(60)).await.unwrap();
    assert_eq!(rec.dead_servers, std::slice::from_ref(&a));
    assert_eq!(rec.requeued, [twice_id]);
    assert_eq!(rec.failed, [once_id]);
    let details = s.job(twice_id).await.unwrap().unwrap();
    assert_eq!(details.job.state, JobState::Enqueued);
    assert_eq!(details.job.attempt, 1);
    let last = details.history.last().unwrap();
    assert!(
        last.reason.as_deref().unwrap_or("").contains("srv-a"),
        "{last:?}"
    );
    assert_eq!(s.stats().await.unwrap().servers, 0);

    // A handed-back job does not count its attempt.
    let f = fetch(&s, &a, &["default"], t(101)).await;
    let twice = f.iter().find(|f| f.id == twice_id).unwrap();
    assert_eq!(twice.attempt, 2);
    let back = Outcome::HandedBack {
        reason: "shutting down".into(),
    };
    s.complete(vec![done(twice, &a, back, t(102))])
        .await
        .unwrap();
    assert_eq!(s.job(twice_id).await.unwrap().unwrap().job.attempt, 1);

    let listed = s
        .list_jobs(JobQuery::new().state(JobState::Enqueued))
        .await
        .unwrap();
    let mut ids: Vec<JobId> = listed.iter().map(|j| j.id).collect();
    assert_eq!(
        ids.len(),
        1,
        "revoked was fetched again above, twice handed back"
    );
    ids.clear();
    let all = s.list_jobs(JobQuery::new()).await.unwrap();
    assert!(all.windows(2).all(|w| w[0].id > w[1].id), "newest first");
    let page = s.list_jobs(JobQuery::new().page(1, 1)).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].id, all[1].id);
}

#[tokio::test]
async fn completions_in_one_call_are_taken_in_order() {
    let s = SqliteStorage::connect(":memory:").await.unwrap();
    let server = ServerId::from_string("srv".into());
    s.enqueue(vec![new_job("a", "default")], t(0))
        .await
        .unwrap();
    let f = fetch(&s, &server, &["default"], t(1)).await;
    let mut wrong = done(&f[0], &server, Outcome::Succeeded, t(2));
    wrong.lease = firelane_core::LeaseId::new();
    let right = done(&f[0], &server, Outcome::Succeeded, t(2));
    let again = done(&f[0], &server, Outcome::Failed { error: "x".into() }, t(3));
    let r = s.complete(vec![wrong, right, again]).await.unwrap();
    assert_eq!(
        r,
        [
            CompletionStatus::Stale,
            CompletionStatus::Applied(JobState::Succeeded),
            CompletionStatus::Stale
        ]
    );
    let details = s.job(f[0].id).await.unwrap().unwrap();
    assert_eq!(details.job.state, JobState::Succeeded);
    assert_eq!(details.history.len(), 3);
}

#[tokio::test]
async fn a_delete_sees_what_deleting_an_earlier_job_did() {
    let s = SqliteStorage::connect(":memory:").await.unwrap();
    let parent = new_job("parent", "default");
    let mut child = new_job("child", "default");
    child.initial = Initial::Awaiting {
        parent: parent.id,
        on: ContinueOn::Deleted,
    };
    let (pid, cid) = (parent.id, child.id);
    s.enqueue(vec![parent, child], t(0)).await.unwrap();
    let r = s.delete(&[pid, cid, pid], "clean up", t(1)).await.unwrap();
    assert_eq!(
        r,
        [
            Change::Changed {
                from: JobState::Enqueued
            },
            Change::Changed {
                from: JobState::Enqueued
            },
            Change::Refused {
                state: JobState::Deleted
            },
        ]
    );
    let trail: Vec<JobState> = s
        .job(cid)
        .await
        .unwrap()
        .unwrap()
        .history
        .iter()
        .map(|h| h.state)
        .collect();
    assert_eq!(
        trail,
        [JobState::Awaiting, JobState::Enqueued, JobState::Deleted]
    );
    assert_eq!(queue_rows(&s).await, 0);
}

async fn history_rows(s: &SqliteStorage, id: JobId) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM firelane_history WHERE job_id = ?")
        .bind(id.as_uuid().as_bytes().as_slice())
        .fetch_one(s.pool())
        .await
        .unwrap()
}

/// A batch of successes alone keeps each success's end in the job's row, with no history row;
/// a batch with another outcome in it writes the success as a history row. Both read as the
/// same history, and a requeue first writes the end kept in the row to the history, so that
/// the entries stay whole and in order through the job's next attempt.
#[tokio::test]
async fn a_success_reads_the_same_from_the_row_or_the_history() {
    let s = SqliteStorage::connect(":memory:").await.unwrap();
    let server = ServerId::from_string("w1".to_owned());
    let (fast, general, failing) = (
        new_job("a", "default"),
        new_job("b", "default"),
        new_job("c", "default"),
    );
    let ids = [fast.id, general.id, failing.id];
    s.enqueue(vec![fast, general, failing], t(0)).await.unwrap();
    let fetched = fetch(&s, &server, &["default"], t(1)).await;
    assert_eq!(fetched.len(), 3);
    // `fast` alone (all successes: the one-statement path); `general` beside a failure.
    s.complete(vec![done(&fetched[0], &server, Outcome::Succeeded, t(2))])
        .await
        .unwrap();
    s.complete(vec![
        done(&fetched[1], &server, Outcome::Succeeded, t(2)),
        done(
            &fetched[2],
            &server,
            Outcome::Failed { error: "no".into() },
            t(2),
        ),
    ])
    .await
    .unwrap();
    assert_eq!(history_rows(&s, ids[0]).await, 0, "the end is in the row");
    assert_eq!(history_rows(&s, ids[1]).await, 1);
    let history = |id| {
        let s = &s;
        async move { s.job(id).await.unwrap().unwrap().history }
    };
    let fast_history = history(ids[0]).await;
    assert_eq!(fast_history, history(ids[1]).await);
    assert_eq!(
        fast_history.iter().map(|h| h.state).collect::<Vec<_>>(),
        [
            JobState::Enqueued,
            JobState::Processing,
            JobState::Succeeded
        ]
    );
    let end = &fast_history[2];
    assert_eq!((end.at, end.attempt), (t(2), 1));
    assert_eq!(end.server.as_ref().map(ServerId::as_str), Some("w1"));
    assert_eq!(end.duration, Some(Duration::from_millis(1500)));

    // A requeue writes the kept end first; the next success is kept in the row again.
    s.requeue(&ids[..2], "again", t(10)).await.unwrap();
    assert_eq!(history_rows(&s, ids[0]).await, 2);
    assert_eq!(history(ids[0]).await, history(ids[1]).await);
    let again = fetch(&s, &server, &["default"], t(11)).await;
    assert_eq!(again.len(), 2);
    s.complete(
        again
            .iter()
            .map(|f| done(f, &server, Outcome::Succeeded, t(12)))
            .collect(),
    )
    .await
    .unwrap();
    let fast_history = history(ids[0]).await;
    assert_eq!(
        fast_history.iter().map(|h| h.state).collect::<Vec<_>>(),
        [
            JobState::Enqueued,
            JobState::Processing,
            JobState::Succeeded,
            JobState::Enqueued,
            JobState::Processing,
            JobState::Succeeded,
        ]
    );
    assert_eq!(fast_history[..4], history(ids[1]).await[..4]);
    // A requeue of a finished job starts its attempts again.
    assert_eq!((fast_history[5].at, fast_history[5].attempt), (t(12), 1));
    // A delete writes it out as well.
    s.delete(&ids[..1], "gone", t(20)).await.unwrap();
    let deleted = history(ids[0]).await;
    assert_eq!(deleted.len(), 7);
    assert_eq!(deleted[..6], fast_history[..]);
    assert_eq!(deleted[6].state, JobState::Deleted);
}
