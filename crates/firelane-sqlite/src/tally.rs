//! What an operation changes in the `counters` and `stats_hourly` tables, gathered while it
//! decides its moves and written by the same statement text that moves the jobs.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use firelane_core::{JobState, hour_of};
use serde_json::Value;

use crate::codec::us;

/// Amounts to add to counters, and jobs finished per hour.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    counters: BTreeMap<String, i64>,
    hours: BTreeMap<i64, (i64, i64)>,
}

impl Tally {
    fn add(&mut self, key: String, amount: i64) {
        *self.counters.entry(key).or_insert(0) += amount;
    }

    /// A job appears in `state` (in `queue`, for an enqueued one).
    pub(crate) fn enter(&mut self, state: JobState, queue: &str, at: DateTime<Utc>) {
        self.add(format!("state:{state}"), 1);
        match state {
            JobState::Enqueued => self.add(format!("queue:{queue}"), 1),
            JobState::Succeeded | JobState::Failed => {
                self.add(format!("total:{state}"), 1);
                let hour = self.hours.entry(us(hour_of(at))).or_insert((0, 0));
                if state == JobState::Succeeded {
                    hour.0 += 1;
                } else {
                    hour.1 += 1;
                }
            }
            _ => {}
        }
    }

    /// A job leaves `state` (and its queue row, for an enqueued one).
    pub(crate) fn leave(&mut self, state: JobState, queue: &str) {
        self.add(format!("state:{state}"), -1);
        if state == JobState::Enqueued {
            self.add(format!("queue:{queue}"), -1);
        }
    }

    /// A job moves from one state to another.
    pub(crate) fn moved(&mut self, from: JobState, to: JobState, queue: &str, at: DateTime<Utc>) {
        self.leave(from, queue);
        self.enter(to, queue, at);
    }

    /// `n` jobs leave `state` without a queue row involved (expired finished jobs).
    pub(crate) fn removed(&mut self, state: JobState, n: i64) {
        self.add(format!("state:{state}"), -n);
    }

    /// The counters, as the JSON object the SQL reads.
    pub(crate) fn counters_json(&self) -> String {
        let map: serde_json::Map<String, Value> = self
            .counters
            .iter()
            .filter(|(_, n)| **n != 0)
            .map(|(k, n)| (k.clone(), Value::from(*n)))
            .collect();
        Value::Object(map).to_string()
    }

    /// The hourly figures, as the JSON array the SQL reads.
    pub(crate) fn hours_json(&self) -> String {
        let rows: Vec<Value> = self
            .hours
            .iter()
            .map(|(h, (s, f))| Value::from(vec![*h, *s, *f]))
            .collect();
        Value::Array(rows).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_drain_nets_out() {
        let at = DateTime::from_timestamp(7_200 + 59, 0).unwrap_or_default();
        let mut t = Tally::default();
        t.enter(JobState::Enqueued, "mail", at);
        t.moved(JobState::Enqueued, JobState::Processing, "mail", at);
        t.moved(JobState::Processing, JobState::Succeeded, "mail", at);
        assert_eq!(
            t.counters_json(),
            r#"{"state:succeeded":1,"total:succeeded":1}"#
        );
        assert_eq!(t.hours_json(), "[[7200000000,1,0]]");
    }
}
