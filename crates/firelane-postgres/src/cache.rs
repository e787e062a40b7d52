//! What the store knows without asking, so that an idle server's polls cost no query.
//!
//! Every change that could make a poll find something sends a notification (`e:<queue>` when
//! jobs enter a queue, `s:<time>` when one is scheduled, `r` when a recurring job changes), and
//! the store also sees its own changes as they happen. So while the listening connection stays
//! up, a queue found empty stays empty until an `Enqueued` for it arrives, the next due time
//! stays the next due time until a `Scheduled` arrives, and the list of recurring jobs stays
//! the same until a `RecurringChanged` arrives. Each answer is kept with the version of what it
//! depends on as it was before the query was sent (a change that lands while the query runs
//! makes it stale at once), with the listening connection's generation (a dropped connection
//! may have lost notifications: nothing kept from before it counts), and for at most
//! [`TTL`] (a fetch that rolled back leaves its jobs in the queue without a notification).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use firelane_core::{RecurringRecord, Signal};

/// How long a kept answer counts at most.
pub(crate) const TTL: Duration = Duration::from_secs(10);

/// The versions an answer depended on when its query was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    link: u64,
    version: u64,
}

/// A queue and the job names a fetch from it was restricted to.
type QueueKey = (String, Option<Vec<String>>);

#[derive(Debug, Default)]
struct State {
    queue_versions: HashMap<String, u64>,
    /// Queues (with a job-name filter) found empty.
    empty: HashMap<QueueKey, (Token, Instant)>,
    scheduled_version: u64,
    next_due: Option<(Token, Instant, Option<DateTime<Utc>>)>,
    recurring_version: u64,
    recurring: Option<(Token, Instant, Vec<RecurringRecord>)>,
}

/// The store's kept answers.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    /// The listening connection: odd while connected, increased at every loss and reconnection.
    link: AtomicU64,
    state: Mutex<State>,
}

impl Cache {
    /// A cache whose listening connection is up.
    pub(crate) fn connected() -> Self {
        let c = Self::default();
        c.link.store(1, Ordering::SeqCst);
        c
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The listening connection was lost: nothing kept counts any more.
    pub(crate) fn link_lost(&self) {
        let l = self.link.load(Ordering::SeqCst);
        if !l.is_multiple_of(2) {
            self.link.store(l + 1, Ordering::SeqCst);
        }
    }

    /// Listening again.
    pub(crate) fn link_back(&self) {
        let l = self.link.load(Ordering::SeqCst);
        if l.is_multiple_of(2) {
            self.link.store(l + 1, Ordering::SeqCst);
        }
    }

    fn valid(&self, token: Token, at: Instant, version: u64) -> bool {
        let link = self.link.load(Ordering::SeqCst);
        !link.is_multiple_of(2)
            && token.link == link
            && token.version == version
            && at.elapsed() < TTL
    }

    /// A change happened (a signal, local or notified).
    pub(crate) fn observe(&self, signal: &Signal) {
        let mut s = self.state();
        match signal {
            Signal::Enqueued { queue } => {
                *s.queue_versions.entry(queue.clone()).or_default() += 1;
            }
            Signal::Scheduled { .. } => s.scheduled_version += 1,
            Signal::RecurringChanged => s.recurring_version += 1,
            _ => {}
        }
    }

    /// Before fetching from `queue`: whether it is known empty, and the token to keep the
    /// answer with.
    pub(crate) fn queue(&self, queue: &str, names: &Option<Vec<String>>) -> (bool, Token) {
        let s = self.state();
        let version = s.queue_versions.get(queue).copied().unwrap_or(0);
        let token = Token {
            link: self.link.load(Ordering::SeqCst),
            version,
        };
        let empty = s
            .empty
            .get(&(queue.to_owned(), names.clone()))
            .is_some_and(|(t, at)| self.valid(*t, *at, version));
        (empty, token)
    }

    /// A fetch from `queue` came back short: it is empty (as of `token`).
    pub(crate) fn set_empty(&self, queue: &str, names: &Option<Vec<String>>, token: Token) {
        let mut s = self.state();
        if s.empty.len() > 10_000 {
            s.empty.clear();
        }
        s.empty
            .insert((queue.to_owned(), names.clone()), (token, Instant::now()));
    }

    /// Before promoting: the next due time, if known (`Some(None)`: nothing is scheduled), and
    /// the token to keep the answer with.
    pub(crate) fn next_due(&self) -> (Option<Option<DateTime<Utc>>>, Token) {
        let s = self.state();
        let token = Token {
            link: self.link.load(Ordering::SeqCst),
            version: s.scheduled_version,
        };
        let known = s
            .next_due
            .filter(|(t, at, _)| self.valid(*t, *at, s.scheduled_version))
            .map(|(_, _, due)| due);
        (known, token)
    }

    /// Keeps the next due time found by a promotion that took every due job.
    pub(crate) fn set_next_due(&self, due: Option<DateTime<Utc>>, token: Token) {
        self.state().next_due = Some((token, Instant::now(), due));
    }

    /// Before listing recurring jobs: the list, if known, and the token.
    pub(crate) fn recurring(&self) -> (Option<Vec<RecurringRecord>>, Token) {
        let s = self.state();
        let token = Token {
            link: self.link.load(Ordering::SeqCst),
            version: s.recurring_version,
        };
        let known = s
            .recurring
            .as_ref()
            .filter(|(t, at, _)| self.valid(*t, *at, s.recurring_version))
            .map(|(_, _, list)| list.clone());
        (known, token)
    }

    /// Keeps the list of recurring jobs.
    pub(crate) fn set_recurring(&self, list: Vec<RecurringRecord>, token: Token) {
        self.state().recurring = Some((token, Instant::now(), list));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_during_the_query_makes_the_answer_stale() {
        let c = Cache::connected();
        let none = None;
        let (empty, token) = c.queue("q", &none);
        assert!(!empty);
        // An enqueue lands while the fetch runs.
        c.observe(&Signal::Enqueued { queue: "q".into() });
        c.set_empty("q", &none, token);
        assert!(!c.queue("q", &none).0);
        // Found empty with no change since: kept.
        let (_, token) = c.queue("q", &none);
        c.set_empty("q", &none, token);
        assert!(c.queue("q", &none).0);
        // Other queues' changes do not matter; this queue's do.
        c.observe(&Signal::Enqueued { queue: "r".into() });
        assert!(c.queue("q", &none).0);
        c.observe(&Signal::Enqueued { queue: "q".into() });
        assert!(!c.queue("q", &none).0);
    }

    #[test]
    fn a_lost_listen_connection_forgets_everything() {
        let c = Cache::connected();
        let (_, token) = c.next_due();
        c.set_next_due(None, token);
        assert_eq!(c.next_due().0, Some(None));
        c.link_lost();
        assert_eq!(c.next_due().0, None);
        c.link_back();
        assert_eq!(c.next_due().0, None, "kept from before the loss");
        let (_, token) = c.next_due();
        c.set_next_due(None, token);
        assert_eq!(c.next_due().0, Some(None));
        c.observe(&Signal::Scheduled { at: Utc::now() });
        assert_eq!(c.next_due().0, None);
    }
}
