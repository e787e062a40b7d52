//! Turning store records into what the templates show: times, durations, rows, links.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use firelane::{JobRecord, JobState, RetryPolicy};

use crate::error::PageError;

/// Percent-encodes everything but unreserved characters: safe in a path segment and in a
/// query value.
pub(crate) fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`encode_component`] (and any other percent-encoding); `None` when the result is
/// not UTF-8 or an escape is broken.
pub(crate) fn decode_component(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A time as the pages show it: `2026-11-24 05:25:24 UTC`.
pub(crate) fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A time relative to now: `3 min ago`, `in 5 s`.
pub(crate) fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds();
    let (n, future) = if secs < 0 {
        (secs.unsigned_abs(), true)
    } else {
        (secs.unsigned_abs(), false)
    };
    let amount = if n < 60 {
        format!("{n} s")
    } else if n < 3600 {
        format!("{} min", n / 60)
    } else if n < 48 * 3600 {
        format!("{} h", n / 3600)
    } else {
        format!("{} d", n / 86400)
    };
    if n == 0 {
        "now".to_owned()
    } else if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A duration: `250 ms`, `1.25 s`, `2 min 5 s`, `3 h 2 min`.
pub(crate) fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        let s = d.as_secs();
        format!("{} min {} s", s / 60, s % 60)
    } else {
        let s = d.as_secs();
        format!("{} h {} min", s / 3600, (s % 3600) / 60)
    }
}

/// A retry policy in words.
pub(crate) fn retry_policy(p: &RetryPolicy) -> String {
    match p.explicit_delays() {
        Some([]) | None if p.retries() == 0 => "no retries".to_owned(),
        Some(delays) => {
            let list: Vec<String> = delays.iter().map(|d| duration(*d)).collect();
            format!(
                "{} {} after {}",
                delays.len(),
                if delays.len() == 1 {
                    "retry"
                } else {
                    "retries"
                },
                list.join(", ")
            )
        }
        None => format!(
            "{} {} with the default back-off",
            p.retries(),
            if p.retries() == 1 { "retry" } else { "retries" }
        ),
    }
}

/// The first line of a text, cut to `max` characters.
pub(crate) fn snippet(text: &str, max: usize) -> String {
    let line = text.lines().next().unwrap_or_default();
    let mut out: String = line.chars().take(max).collect();
    if line.chars().count() > max || text.lines().nth(1).is_some() {
        out.push('…');
    }
    out
}

/// Arguments pretty-printed when they are JSON, as stored otherwise.
pub(crate) fn pretty_args(args: &str) -> String {
    serde_json::from_str::<serde_json::Value>(args)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| args.to_owned())
}

/// A job in a list.
#[derive(Clone, Debug)]
pub(crate) struct JobRow {
    pub(crate) id: String,
    pub(crate) short_id: String,
    pub(crate) name: String,
    pub(crate) queue: String,
    pub(crate) state: &'static str,
    pub(crate) args: String,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
    /// What the "when" column shows for this list, and its exact time.
    pub(crate) when: String,
    pub(crate) when_exact: String,
    /// The last error's first line, or the state's reason.
    pub(crate) note: String,
}

impl JobRow {
    pub(crate) fn new(job: &JobRecord, now: DateTime<Utc>) -> Self {
        let id = job.id.to_string();
        let short_id = format!("…{}", &id[id.len().saturating_sub(8)..]);
        let when_at = match job.state {
            JobState::Scheduled => job.due_at.unwrap_or(job.state_at),
            _ => job.state_at,
        };
        let note = job
            .last_error
            .as_deref()
            .filter(|_| matches!(job.state, JobState::Failed | JobState::Scheduled))
            .or(job.reason.as_deref())
            .map(|t| snippet(t, 120))
            .unwrap_or_default();
        Self {
            short_id,
            id,
            name: job.name.clone(),
            queue: job.queue.clone(),
            state: job.state.as_str(),
            args: snippet(&job.args, 80),
            attempt: job.attempt,
            max_attempts: job.retry.max_attempts(),
            when: ago(when_at, now),
            when_exact: time(when_at),
            note,
        }
    }
}

/// Parses a time filter: RFC 3339, or a browser's `datetime-local` value (read as UTC).
pub(crate) fn parse_time(field: &str, text: &str) -> Result<Option<DateTime<Utc>>, PageError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    for format in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Some(t.and_utc()));
        }
    }
    Err(PageError::bad_request(format!(
        "`{field}` = {text:?} is not a time: use RFC 3339 (2026-01-31T09:30:00Z) or 2026-01-31T09:30 (UTC)"
    )))
}

/// Builds a query string from the pairs whose value is not empty.
pub(crate) fn query_string(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", encode_component(v)))
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn components_round_trip() {
        for text in ["a b/c?d=e&f", "ünï~cödé", "ok~done", ""] {
            let enc = encode_component(text);
            assert!(!enc.contains(' ') && !enc.contains('/') && !enc.contains('&'));
            assert_eq!(decode_component(&enc).as_deref(), Some(text));
        }
        assert_eq!(decode_component("%zz"), None);
        assert_eq!(decode_component("%4"), None);
    }

    #[test]
    fn durations_and_times_read_well() {
        assert_eq!(duration(Duration::from_millis(250)), "250 ms");
        assert_eq!(duration(Duration::from_millis(1250)), "1.25 s");
        assert_eq!(duration(Duration::from_secs(125)), "2 min 5 s");
        assert_eq!(duration(Duration::from_secs(3 * 3600 + 120)), "3 h 2 min");
        let now = Utc::now();
        assert_eq!(ago(now - chrono::Duration::seconds(5), now), "5 s ago");
        assert_eq!(ago(now + chrono::Duration::minutes(3), now), "in 3 min");
        assert_eq!(ago(now, now), "now");
    }

    #[test]
    fn retry_policies_in_words() {
        assert_eq!(
            retry_policy(&RetryPolicy::default()),
            "10 retries with the default back-off"
        );
        assert_eq!(retry_policy(&RetryPolicy::none()), "no retries");
        assert_eq!(
            retry_policy(&RetryPolicy::Delays(vec![Duration::from_secs(1)])),
            "1 retry after 1.00 s"
        );
    }

    #[test]
    fn times_parse_from_both_forms() {
        let a = parse_time("from", "2026-01-31T09:30:00Z").unwrap().unwrap();
        let b = parse_time("from", "2026-01-31T09:30").unwrap().unwrap();
        assert_eq!(a, b);
        assert_eq!(parse_time("from", " ").unwrap(), None);
        let e = parse_time("to", "yesterday").unwrap_err();
        assert!(e.message.contains("`to`") && e.message.contains("RFC 3339"));
    }

    #[test]
    fn snippets_cut_long_and_multiline_text() {
        assert_eq!(snippet("short", 10), "short");
        assert_eq!(snippet("line one\nline two", 20), "line one…");
        assert_eq!(snippet("abcdef", 3), "abc…");
    }
}
