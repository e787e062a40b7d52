//! The PostgreSQL store's `complete_and_fetch`, which records the outcomes and leases new jobs
//! with two statements at once: what it applies, what it returns, and that concurrent calls (a
//! server's completer keeps two in flight) never hand out a job twice nor lose one.
#![allow(clippy::unwrap_used)]

mod postgres_support;

use postgres_support::done;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use firelane::{JobState, NewJob, Storage};
use firelane_core::{
    Completion, CompletionStatus, FetchRequest, FetchedJob, JobId, Outcome, ServerId,
};

const LEASE: Duration = Duration::from_secs(300);

fn request(server: &ServerId, queues: &[&str], limit: usize, now: DateTime<Utc>) -> FetchRequest {
    FetchRequest::new(
        server.clone(),
        queues.iter().map(|q| (*q).to_owned()).collect(),
        limit,
        now,
        LEASE,
    )
}

async fn add(store: &Arc<dyn Storage>, n: usize, queue: &str, now: DateTime<Utc>) -> Vec<JobId> {
    let jobs: Vec<NewJob> = (0..n)
        .map(|i| {
            let mut j = NewJob::new("work", format!("{{\"i\":{i}}}"));
            j.queue = queue.to_owned();
            j
        })
        .collect();
    let ids = jobs.iter().map(|j| j.id).collect();
    store.enqueue(jobs, now).await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_apply_and_the_fetch_takes_the_next_jobs_in_order() {
    let Some(store) = postgres_support::store().await else {
        return;
    };
    let now = Utc::now();
    let s = ServerId::from_string("cf".to_owned());
    let ids = add(&store, 6, "default", now).await;
    let first = store
        .fetch(request(&s, &["default"], 3, now))
        .await
        .unwrap();
    assert_eq!(
        first.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[..3].to_vec()
    );
    let end = now + chrono::Duration::seconds(1);
    let completions = vec![
        done(&first[0], &s, Outcome::Succeeded, end),
        // A retry due now goes back to its queue, after the jobs already there.
        done(
            &first[1],
            &s,
            Outcome::Retry {
                at: end,
                error: "again".into(),
            },
            end,
        ),
        done(&first[2], &s, Outcome::Succeeded, end),
        // The same completion twice in a batch: the second is stale.
        done(&first[2], &s, Outcome::Succeeded, end),
    ];
    let (statuses, got) = store
        .complete_and_fetch(completions, request(&s, &["default"], 10, end))
        .await
        .unwrap();
    assert_eq!(
        statuses,
        vec![
            CompletionStatus::Applied(JobState::Succeeded),
            CompletionStatus::Applied(JobState::Enqueued),
            CompletionStatus::Applied(JobState::Succeeded),
            CompletionStatus::Stale,
        ]
    );
    // The fetch runs beside the completion, on another connection: whether it sees the retry
    // depends on which commits first. Either way it takes the jobs that waited first, and the
    // retry (attempt 2) comes last, in this call or the next fetch.
    let mut got: Vec<(JobId, u32)> = got.iter().map(|j| (j.id, j.attempt)).collect();
    let waiting: Vec<(JobId, u32)> = ids[3..].iter().map(|id| (*id, 1)).collect();
    assert_eq!(got[..3], waiting[..], "{got:?}");
    if got.len() == 3 {
        let again = store
            .fetch(request(&s, &["default"], 10, end))
            .await
            .unwrap();
        got.extend(again.iter().map(|j| (j.id, j.attempt)));
    }
    assert_eq!(got[3..], [(ids[1], 2)], "{got:?}");

    // A completion with a lease that passed to someone else is stale and changes nothing,
    // and the fetch still happens.
    let late = done(&first[1], &s, Outcome::Succeeded, end);
    let (statuses, got) = store
        .complete_and_fetch(vec![late], request(&s, &["default"], 10, end))
        .await
        .unwrap();
    assert_eq!(statuses, vec![CompletionStatus::Stale]);
    assert!(got.is_empty());
    let job = store.job(ids[1]).await.unwrap().unwrap();
    assert_eq!(job.job.state, JobState::Processing);
    firelane_conformance::storage_cases::counters_agree(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_short_of_its_limit_goes_on_to_the_next_queue() {
    let Some(store) = postgres_support::store().await else {
        return;
    };
    let now = Utc::now();
    let s = ServerId::from_string("cf".to_owned());
    add(&store, 1, "a", now).await;
    let b = add(&store, 2, "b", now).await;
    let first = store.fetch(request(&s, &["a"], 1, now)).await.unwrap();
    let (statuses, got) = store
        .complete_and_fetch(
            vec![done(&first[0], &s, Outcome::Succeeded, now)],
            request(&s, &["a", "b"], 5, now),
        )
        .await
        .unwrap();
    assert_eq!(
        statuses,
        vec![CompletionStatus::Applied(JobState::Succeeded)]
    );
    assert_eq!(got.iter().map(|j| j.id).collect::<Vec<_>>(), b);
    firelane_conformance::storage_cases::counters_agree(&store).await;
}

/// Several "completers" each keep completing what they fetched and fetching more, all at once:
/// every job is handed out exactly once per attempt and ends succeeded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_calls_hand_out_each_job_once() {
    let Some(store) = postgres_support::store().await else {
        return;
    };
    const JOBS: usize = 3000;
    let now = Utc::now();
    let all: HashSet<JobId> = add(&store, JOBS, "default", now)
        .await
        .into_iter()
        .collect();
    let mut tasks = Vec::new();
    for w in 0..6 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let s = ServerId::from_string(format!("cf{w}"));
            let mut held: Vec<FetchedJob> = Vec::new();
            let mut seen: Vec<JobId> = Vec::new();
            loop {
                let now = Utc::now();
                let completions: Vec<Completion> = held
                    .iter()
                    .map(|j| done(j, &s, Outcome::Succeeded, now))
                    .collect();
                let n = completions.len();
                let (statuses, got) = store
                    .complete_and_fetch(completions, request(&s, &["default"], 25, now))
                    .await
                    .unwrap();
                assert_eq!(statuses.len(), n);
                assert!(
                    statuses
                        .iter()
                        .all(|st| *st == CompletionStatus::Applied(JobState::Succeeded)),
                    "{statuses:?}"
                );
                seen.extend(got.iter().map(|j| j.id));
                if got.is_empty() && n == 0 {
                    return seen;
                }
                held = got;
            }
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    let unique: HashSet<JobId> = seen.iter().copied().collect();
    assert_eq!(seen.len(), JOBS, "some job was handed out twice");
    assert_eq!(unique, all);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.count(JobState::Succeeded), JOBS as u64);
    firelane_conformance::storage_cases::counters_agree(&store).await;
}
