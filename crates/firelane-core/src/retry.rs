//! How failed attempts are retried.

use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};

/// How many times a failed job is retried, and how long it waits before each retry.
///
/// The default is Hangfire's: 10 retries after the first attempt, the `n`-th retry waiting
/// `(n-1)^4 + 15 + rand(0..30) * n` seconds (15 s to 45 s for the first, about 1.8 hours for
/// the tenth).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryPolicy {
    /// Retry up to this many times with Hangfire's polynomial back-off. `Count(0)` never retries.
    Count(u32),
    /// Retry once per listed delay, waiting that long before each retry.
    Delays(Vec<Duration>),
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::Count(Self::DEFAULT_RETRIES)
    }
}

impl RetryPolicy {
    /// Hangfire's default number of retries.
    pub const DEFAULT_RETRIES: u32 = 10;

    /// No retries: the first failure is final.
    pub const fn none() -> Self {
        RetryPolicy::Count(0)
    }

    /// The number of retries this policy allows.
    pub fn retries(&self) -> u32 {
        match self {
            RetryPolicy::Count(n) => *n,
            RetryPolicy::Delays(d) => u32::try_from(d.len()).unwrap_or(u32::MAX),
        }
    }

    /// The number of attempts in all: the first one plus the retries.
    pub fn max_attempts(&self) -> u32 {
        self.retries().saturating_add(1)
    }

    /// The explicit delays, if this policy lists them.
    pub fn explicit_delays(&self) -> Option<&[Duration]> {
        match self {
            RetryPolicy::Count(_) => None,
            RetryPolicy::Delays(d) => Some(d),
        }
    }

    /// Rebuilds a policy from what a store keeps: the attempt limit and the explicit delays.
    pub fn from_stored(max_attempts: u32, delays: Option<Vec<Duration>>) -> Self {
        match delays {
            Some(d) => RetryPolicy::Delays(d),
            None => RetryPolicy::Count(max_attempts.saturating_sub(1)),
        }
    }

    /// The delay before retry number `retry` (1 for the first retry), or `None` when the policy
    /// allows no such retry.
    pub fn delay_before(&self, retry: u32) -> Option<Duration> {
        if retry == 0 || retry > self.retries() {
            return None;
        }
        match self {
            RetryPolicy::Count(_) => Some(hangfire_delay(retry, rand::rng().random_range(0..30))),
            RetryPolicy::Delays(d) => d.get(usize::try_from(retry - 1).ok()?).copied(),
        }
    }
}

/// Hangfire's back-off for the `n`-th retry with the random part fixed: `(n-1)^4 + 15 + r * n`
/// seconds, `r` in `0..30`.
pub fn hangfire_delay(n: u32, r: u32) -> Duration {
    let n = u64::from(n.max(1));
    let secs = (n - 1).pow(4) + 15 + u64::from(r) * n;
    Duration::from_secs(secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hangfire_default() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 11);
        assert_eq!(hangfire_delay(1, 0), Duration::from_secs(15));
        assert_eq!(hangfire_delay(1, 29), Duration::from_secs(44));
        assert_eq!(hangfire_delay(2, 10), Duration::from_secs(1 + 15 + 20));
        assert_eq!(hangfire_delay(10, 0), Duration::from_secs(6561 + 15));
        for n in 1..=10 {
            let d = p.delay_before(n).unwrap().as_secs();
            let base = u64::from(n - 1).pow(4) + 15;
            assert!(d >= base && d < base + 30 * u64::from(n), "retry {n}: {d}");
        }
        assert_eq!(p.delay_before(11), None);
        assert_eq!(p.delay_before(0), None);
    }

    #[test]
    fn explicit_delays() {
        let p = RetryPolicy::Delays(vec![Duration::from_secs(1), Duration::from_secs(5)]);
        assert_eq!(p.max_attempts(), 3);
        assert_eq!(p.delay_before(1), Some(Duration::from_secs(1)));
        assert_eq!(p.delay_before(2), Some(Duration::from_secs(5)));
        assert_eq!(p.delay_before(3), None);
        assert_eq!(RetryPolicy::none().delay_before(1), None);
        assert_eq!(RetryPolicy::from_stored(4, None), RetryPolicy::Count(3));
    }
}
