//! Cron schedules in a time zone: parsing with errors that point at the bad field, and the
//! occurrences of a schedule as UTC instants, daylight saving included.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

use crate::Error;

/// How far ahead a schedule must have an occurrence to be accepted (a pattern such as
/// `0 0 30 2 *`, February 30th, parses but never fires).
const HORIZON_YEARS: i32 = 8;

/// A cron expression in an IANA time zone.
///
/// Five fields (`minute hour day-of-month month day-of-week`) or six with seconds first;
/// `@yearly`, `@monthly`, `@weekly`, `@daily`, `@hourly`; `L` (last), `W` (nearest weekday),
/// `#` (nth weekday). Occurrences follow the wall clock of the time zone: on a day when the
/// clocks spring forward, a time inside the gap fires once at the first valid time after it;
/// on a day when they fall back, a fixed time in the repeated hour fires once, at its first
/// pass (interval patterns such as `*/30 * * * *` fire in both passes: both are real instants).
///
/// ```
/// use firelane_core::CronSchedule;
///
/// let nightly = CronSchedule::parse("0 3 * * *", "Europe/Istanbul").unwrap();
/// let bad = CronSchedule::parse("0 25 * * *", "UTC").unwrap_err();
/// assert!(bad.to_string().contains("hour"));
/// ```
#[derive(Clone)]
pub struct CronSchedule {
    expr: String,
    tz: Tz,
    cron: Cron,
}

impl fmt::Debug for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CronSchedule({:?} in {})", self.expr, self.tz.name())
    }
}

impl PartialEq for CronSchedule {
    fn eq(&self, other: &Self) -> bool {
        self.expr == other.expr && self.tz == other.tz
    }
}

const FIVE: [&str; 5] = ["minute", "hour", "day-of-month", "month", "day-of-week"];
const SIX: [&str; 6] = [
    "second",
    "minute",
    "hour",
    "day-of-month",
    "month",
    "day-of-week",
];

fn parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
}

impl CronSchedule {
    /// Parses `expr` in the time zone named `tz` (such as `UTC` or `America/New_York`).
    pub fn parse(expr: &str, tz: &str) -> Result<Self, Error> {
        let tz = parse_time_zone(tz)?;
        let expr = expr.trim();
        let cron = parser().parse(expr).map_err(|e| Error::InvalidCron {
            expr: expr.to_owned(),
            reason: explain(expr, &e),
        })?;
        let schedule = Self {
            expr: expr.to_owned(),
            tz,
            cron,
        };
        let now = Utc::now();
        let horizon = now + chrono::Duration::days(366 * i64::from(HORIZON_YEARS));
        match schedule.next_after(now) {
            Some(t) if t <= horizon => Ok(schedule),
            _ => Err(Error::InvalidCron {
                expr: expr.to_owned(),
                reason: format!(
                    "it never fires (no occurrence in the next {HORIZON_YEARS} years); check the day-of-month and month fields"
                ),
            }),
        }
    }

    /// The expression as given.
    pub fn expr(&self) -> &str {
        &self.expr
    }

    /// The time zone's IANA name.
    pub fn time_zone(&self) -> &'static str {
        self.tz.name()
    }

    /// The first occurrence strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&self.tz);
        self.cron
            .find_next_occurrence(&local, false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }

    /// The occurrences in `(after, until]`, at most `max` of them, oldest first.
    pub fn occurrences(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        max: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut out = Vec::new();
        let mut cursor = after;
        while out.len() < max {
            match self.next_after(cursor) {
                Some(t) if t <= until => {
                    out.push(t);
                    cursor = t;
                }
                _ => break,
            }
        }
        out
    }
}

/// Parses an IANA time zone name, suggesting the right spelling of a near miss.
pub fn parse_time_zone(name: &str) -> Result<Tz, Error> {
    let name = name.trim();
    if let Ok(tz) = Tz::from_str(name) {
        return Ok(tz);
    }
    let lower = name.to_ascii_lowercase().replace(' ', "_");
    let hint = chrono_tz::TZ_VARIANTS
        .iter()
        .find(|tz| tz.name().to_ascii_lowercase() == lower)
        .map(|tz| format!(" (did you mean {}?)", tz.name()))
        .unwrap_or_default();
    Err(Error::InvalidTimeZone {
        tz: name.to_owned(),
        reason: format!(
            "not an IANA time zone{hint}; use a name such as UTC, Europe/Istanbul or America/New_York"
        ),
    })
}

/// Says which field of a cron expression is wrong, and why.
fn explain(expr: &str, error: &croner::errors::CronError) -> String {
    if expr.starts_with('@') {
        return format!(
            "unknown macro {expr:?}: use @yearly, @annually, @monthly, @weekly, @daily, @midnight or @hourly"
        );
    }
    let fields: Vec<&str> = expr.split_whitespace().collect();
    let names: &[&str] = match fields.len() {
        5 => &FIVE,
        6 => &SIX,
        n => {
            return format!(
                "it has {n} fields; expected 5 (minute hour day-of-month month day-of-week) or 6 (second first)"
            );
        }
    };
    for (i, field) in fields.iter().enumerate() {
        let probe: Vec<&str> = fields
            .iter()
            .enumerate()
            .map(|(j, f)| if i == j { *f } else { "*" })
            .collect();
        if let Err(e) = parser().parse(&probe.join(" ")) {
            return format!(
                "field {} ({}) {:?} is invalid: {}",
                i + 1,
                names[i],
                field,
                croner_reason(&e)
            );
        }
    }
    croner_reason(error)
}

fn croner_reason(e: &croner::errors::CronError) -> String {
    use croner::errors::CronError as E;
    match e {
        E::ComponentError(m) | E::InvalidPattern(m) | E::IllegalCharacters(m) => {
            m.trim_end_matches('.').to_owned()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    #[test]
    fn spring_forward_fires_once_at_the_first_valid_time_after_the_gap() {
        // 2026-03-08: New York clocks go from 02:00 EST to 03:00 EDT; 02:30 does not exist.
        let s = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        let runs = s.occurrences(utc(2026, 3, 7, 12, 0), utc(2026, 3, 10, 12, 0), 10);
        assert_eq!(
            runs,
            [
                utc(2026, 3, 8, 7, 0),  // 03:00 EDT
                utc(2026, 3, 9, 6, 30), // 02:30 EDT
                utc(2026, 3, 10, 6, 30),
            ]
        );
    }

    #[test]
    fn fall_back_fires_once() {
        // 2026-11-01: New York clocks go from 02:00 EDT back to 01:00 EST; 01:30 happens twice.
        let s = CronSchedule::parse("30 2 * * *", "America/New_York").unwrap();
        let runs = s.occurrences(utc(2026, 10, 31, 12, 0), utc(2026, 11, 2, 12, 0), 10);
        assert_eq!(runs, [utc(2026, 11, 1, 7, 30), utc(2026, 11, 2, 7, 30)]);
        let s = CronSchedule::parse("30 1 * * *", "America/New_York").unwrap();
        let runs = s.occurrences(utc(2026, 10, 31, 12, 0), utc(2026, 11, 2, 12, 0), 10);
        assert_eq!(
            runs,
            [utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)],
            "the repeated 01:30 fires once, at its first pass (EDT)"
        );
    }

    #[test]
    fn a_zone_without_daylight_saving_fires_at_the_same_local_time() {
        let s = CronSchedule::parse("30 2 * * *", "Europe/Istanbul").unwrap();
        let runs = s.occurrences(utc(2026, 3, 1, 0, 0), utc(2026, 11, 30, 0, 0), 400);
        assert_eq!(runs.len(), 274);
        assert!(
            runs.iter()
                .all(|t| t.format("%H:%M").to_string() == "23:30")
        );
    }

    #[test]
    fn seconds_macros_and_special_characters() {
        let s = CronSchedule::parse("*/15 * * * * *", "UTC").unwrap();
        assert_eq!(
            s.next_after(utc(2026, 1, 1, 0, 0)),
            Some(utc(2026, 1, 1, 0, 0) + chrono::Duration::seconds(15))
        );
        let hourly = CronSchedule::parse("@hourly", "UTC").unwrap();
        assert_eq!(
            hourly.next_after(utc(2026, 1, 1, 0, 5)),
            Some(utc(2026, 1, 1, 1, 0))
        );
        let last_day = CronSchedule::parse("0 0 L * *", "UTC").unwrap();
        assert_eq!(
            last_day.next_after(utc(2026, 2, 1, 0, 0)),
            Some(utc(2026, 2, 28, 0, 0))
        );
        let second_friday = CronSchedule::parse("0 9 * * 5#2", "UTC").unwrap();
        assert_eq!(
            second_friday.next_after(utc(2026, 12, 1, 0, 0)),
            Some(utc(2026, 12, 11, 9, 0))
        );
        let weekday = CronSchedule::parse("0 9 15W * *", "UTC").unwrap();
        // 2026-08-15 is a Saturday: the nearest weekday is Friday the 14th.
        assert_eq!(
            weekday.next_after(utc(2026, 8, 1, 0, 0)),
            Some(utc(2026, 8, 14, 9, 0))
        );
    }

    #[test]
    fn errors_point_at_the_bad_field() {
        let cases = [
            ("61 * * * *", "field 1 (minute)"),
            ("0 24 * * *", "field 2 (hour)"),
            ("0 0 32 * *", "field 3 (day-of-month)"),
            ("0 0 * 13 *", "field 4 (month)"),
            ("0 0 * * MOON", "field 5 (day-of-week)"),
            ("70 0 0 * * *", "field 1 (second)"),
            ("* * *", "expected 5"),
            ("@fortnightly", "unknown macro"),
            ("0 0 30 2 *", "never fires"),
        ];
        for (expr, needle) in cases {
            let e = CronSchedule::parse(expr, "UTC").unwrap_err().to_string();
            assert!(e.contains(needle), "{expr}: {e}");
            assert!(
                e.contains(expr),
                "{expr}: the message quotes the expression: {e}"
            );
        }
    }

    #[test]
    fn bad_time_zones_are_named_with_a_hint() {
        let e = CronSchedule::parse("0 3 * * *", "Mars/Olympus")
            .unwrap_err()
            .to_string();
        assert!(e.contains("Mars/Olympus") && e.contains("IANA"), "{e}");
        let e = parse_time_zone("europe/istanbul").unwrap_err().to_string();
        assert!(e.contains("did you mean Europe/Istanbul?"), "{e}");
    }
}
