//! Job states, and the rules that connect them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The state a job is in. See `ARCHITECTURE.md` for the diagram of legal transitions.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waits for its due time (a delayed job, or a retry waiting out its back-off).
    Scheduled,
    /// In a queue, ready to be fetched by a server.
    Enqueued,
    /// Held by a server under a lease, running.
    Processing,
    /// Ran to completion.
    Succeeded,
    /// Failed for good: retries exhausted, or failed at once. Kept until a person acts on it.
    Failed,
    /// Deleted by a person, cancelled by the job itself, or a continuation whose parent ended in
    /// a state it did not wait for.
    Deleted,
    /// A continuation waiting for its parent to finish.
    Awaiting,
}

impl JobState {
    /// Every state, in the order the dashboard lists them.
    pub const ALL: [JobState; 7] = [
        JobState::Enqueued,
        JobState::Scheduled,
        JobState::Processing,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Deleted,
        JobState::Awaiting,
    ];

    /// The lowercase name the stores keep.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Enqueued => "enqueued",
            JobState::Processing => "processing",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Deleted => "deleted",
            JobState::Awaiting => "awaiting",
        }
    }

    /// Whether the job has finished: succeeded, failed or deleted. Only finished jobs expire,
    /// and only finished parents release their continuations.
    pub const fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Deleted
        )
    }

    /// Whether a person may delete a job in this state (every state but `Deleted`).
    pub const fn can_delete(self) -> bool {
        !matches!(self, JobState::Deleted)
    }

    /// Whether a person may requeue a job in this state. An awaiting continuation cannot be
    /// requeued: it would run before its parent; enqueue its parent's outcome instead.
    pub const fn can_requeue(self) -> bool {
        !matches!(self, JobState::Awaiting | JobState::Enqueued)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "scheduled" => JobState::Scheduled,
            "enqueued" => JobState::Enqueued,
            "processing" => JobState::Processing,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "deleted" => JobState::Deleted,
            "awaiting" => JobState::Awaiting,
            _ => return Err(crate::Error::InvalidState(s.to_owned())),
        })
    }
}

/// Which outcome of its parent a continuation waits for.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContinueOn {
    /// Run after the parent succeeded (the default).
    #[default]
    Succeeded,
    /// Run after the parent failed for good.
    Failed,
    /// Run after the parent was deleted.
    Deleted,
    /// Run after the parent finished, however it ended.
    AnyFinished,
}

impl ContinueOn {
    /// The name the stores keep.
    pub const fn as_str(self) -> &'static str {
        match self {
            ContinueOn::Succeeded => "succeeded",
            ContinueOn::Failed => "failed",
            ContinueOn::Deleted => "deleted",
            ContinueOn::AnyFinished => "any_finished",
        }
    }

    /// What becomes of a continuation when its parent is in `parent` state.
    ///
    /// `Failed` is final only until a person requeues the parent, so a continuation that waits
    /// for success (or deletion) keeps waiting on a failed parent; `Succeeded` and `Deleted` end
    /// the parent's story, so a continuation that waited for something else is deleted.
    pub const fn decide(self, parent: JobState) -> ContinuationDecision {
        use ContinuationDecision::{Delete, Enqueue, Wait};
        match (parent, self) {
            (JobState::Succeeded, ContinueOn::Succeeded | ContinueOn::AnyFinished) => Enqueue,
            (JobState::Failed, ContinueOn::Failed | ContinueOn::AnyFinished) => Enqueue,
            (JobState::Deleted, ContinueOn::Deleted | ContinueOn::AnyFinished) => Enqueue,
            (JobState::Succeeded | JobState::Deleted, _) => Delete,
            _ => Wait,
        }
    }
}

impl fmt::Display for ContinueOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ContinueOn {
    type Err = crate::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "succeeded" => ContinueOn::Succeeded,
            "failed" => ContinueOn::Failed,
            "deleted" => ContinueOn::Deleted,
            "any_finished" | "any" | "finished" => ContinueOn::AnyFinished,
            _ => return Err(crate::Error::InvalidState(s.to_owned())),
        })
    }
}

/// What a store does with an awaiting continuation, given its parent's state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ContinuationDecision {
    /// The parent ended the way the continuation waited for: enqueue it.
    Enqueue,
    /// The parent is not finished, or may still end the awaited way: keep waiting.
    Wait,
    /// The parent ended another way for good: delete the continuation.
    Delete,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
        }
        assert!("running".parse::<JobState>().is_err());
    }

    #[test]
    fn continuation_rules() {
        use ContinuationDecision::*;
        assert_eq!(ContinueOn::Succeeded.decide(JobState::Succeeded), Enqueue);
        assert_eq!(ContinueOn::Succeeded.decide(JobState::Failed), Wait);
        assert_eq!(ContinueOn::Succeeded.decide(JobState::Deleted), Delete);
        assert_eq!(ContinueOn::Failed.decide(JobState::Failed), Enqueue);
        assert_eq!(ContinueOn::Failed.decide(JobState::Succeeded), Delete);
        assert_eq!(ContinueOn::Deleted.decide(JobState::Deleted), Enqueue);
        assert_eq!(ContinueOn::Deleted.decide(JobState::Failed), Wait);
        for s in [JobState::Succeeded, JobState::Failed, JobState::Deleted] {
            assert_eq!(ContinueOn::AnyFinished.decide(s), Enqueue);
        }
        for s in [
            JobState::Enqueued,
            JobState::Scheduled,
            JobState::Processing,
            JobState::Awaiting,
        ] {
            assert_eq!(ContinueOn::AnyFinished.decide(s), Wait);
        }
    }
}
