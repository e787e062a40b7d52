//! Recurring jobs: a cron schedule that creates a job at each occurrence.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::{CronSchedule, Error, JobId, NewJob, RetryPolicy};

/// What happens to occurrences that passed while no server was running.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "policy")]
pub enum Misfire {
    /// One job for all the missed occurrences together (the default, as Hangfire does).
    #[default]
    FireOnce,
    /// No job for missed occurrences: wait for the next one.
    Skip,
    /// One job per missed occurrence, at most `max` of them (the most recent).
    FireEach {
        /// The most jobs created for missed occurrences at once.
        max: u32,
    },
}

impl Misfire {
    /// The default for how late an occurrence may fire and still count as on time (not
    /// missed): a server that was busy or just restarting is not a misfire.
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(60);
}

/// The job a recurring job creates: everything of a [`NewJob`] but its id and start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobTemplate {
    /// The job type's name.
    pub name: String,
    /// Its queue.
    pub queue: String,
    /// Its priority.
    pub priority: i32,
    /// Its arguments, as JSON text.
    pub args: String,
    /// Its retry policy.
    pub retry: RetryPolicy,
    /// Its per-attempt timeout.
    pub timeout: Option<Duration>,
}

impl JobTemplate {
    /// The template of a job (its id and start are dropped).
    pub fn from_job(job: &NewJob) -> Self {
        Self {
            name: job.name.clone(),
            queue: job.queue.clone(),
            priority: job.priority,
            args: job.args.clone(),
            retry: job.retry.clone(),
            timeout: job.timeout,
        }
    }

    /// A new job from this template, enqueued at once.
    pub fn instantiate(&self) -> NewJob {
        let mut job = NewJob::new(self.name.clone(), self.args.clone());
        job.queue = self.queue.clone();
        job.priority = self.priority;
        job.retry = self.retry.clone();
        job.timeout = self.timeout;
        job
    }
}

/// The longest recurring job id accepted.
pub const MAX_RECURRING_ID: usize = 200;

/// Checks a recurring job's id: 1 to 200 printable characters, no surrounding spaces.
pub fn validate_recurring_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_RECURRING_ID
        && id.trim() == id
        && !id.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidRecurringId(id.to_owned()))
    }
}

/// A recurring job's definition, to add or update.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RecurringDef {
    /// The id the application gives it, such as `nightly-report`.
    pub id: String,
    /// When it fires.
    pub schedule: CronSchedule,
    /// What to do about missed occurrences.
    pub misfire: Misfire,
    /// The job it creates.
    pub job: JobTemplate,
}

impl RecurringDef {
    /// A definition; the id is checked.
    pub fn new(
        id: impl Into<String>,
        schedule: CronSchedule,
        job: JobTemplate,
    ) -> Result<Self, Error> {
        let id = id.into();
        validate_recurring_id(&id)?;
        Ok(Self {
            id,
            schedule,
            misfire: Misfire::default(),
            job,
        })
    }
}

/// A recurring job as a store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct RecurringRecord {
    /// Its id.
    pub id: String,
    /// The cron expression.
    pub cron: String,
    /// The IANA time zone.
    pub time_zone: String,
    /// What it does about missed occurrences.
    pub misfire: Misfire,
    /// The job it creates.
    pub job: JobTemplate,
    /// Whether a person paused it.
    pub paused: bool,
    /// The next occurrence it waits for (`None` when paused or disabled).
    pub next_run: Option<DateTime<Utc>>,
    /// When it last created a job.
    pub last_run: Option<DateTime<Utc>>,
    /// The last job it created.
    pub last_job: Option<JobId>,
    /// Why it could not fire, if it could not (such as a job type no server registers).
    pub last_error: Option<String>,
    /// When it was first added.
    pub created_at: DateTime<Utc>,
    /// When its definition last changed.
    pub updated_at: DateTime<Utc>,
}

impl RecurringRecord {
    /// A record fresh from a definition (for stores).
    pub fn new(def: &RecurringDef, next_run: Option<DateTime<Utc>>, now: DateTime<Utc>) -> Self {
        Self {
            id: def.id.clone(),
            cron: def.schedule.expr().to_owned(),
            time_zone: def.schedule.time_zone().to_owned(),
            misfire: def.misfire,
            job: def.job.clone(),
            paused: false,
            next_run,
            last_run: None,
            last_job: None,
            last_error: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// The schedule, parsed again.
    pub fn schedule(&self) -> Result<CronSchedule, Error> {
        CronSchedule::parse(&self.cron, &self.time_zone)
    }
}

/// A firing: the jobs to create for occurrences up to `now`, applied only if the recurring job
/// still waits for `expected_next_run` (so that each occurrence fires once across servers).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Firing {
    /// The recurring job.
    pub id: String,
    /// The occurrence the firing server saw as next; if the store has another, someone else
    /// fired (or the definition changed) and this firing does nothing.
    pub expected_next_run: DateTime<Utc>,
    /// The occurrence to wait for afterwards.
    pub next_run: Option<DateTime<Utc>>,
    /// The jobs to create (none when missed occurrences are skipped).
    pub jobs: Vec<NewJob>,
    /// An error to record instead of firing (the job type is unknown, the arguments no longer
    /// decode); the schedule still moves on.
    pub error: Option<String>,
    /// When.
    pub now: DateTime<Utc>,
}

impl Firing {
    /// A firing with no error.
    pub fn new(
        id: String,
        expected_next_run: DateTime<Utc>,
        next_run: Option<DateTime<Utc>>,
        jobs: Vec<NewJob>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            expected_next_run,
            next_run,
            jobs,
            error: None,
            now,
        }
    }
}

/// What a firing server decides for a due recurring job: which jobs to create, and the next
/// occurrence. An occurrence more than `grace` before `now` counts as missed. Pure: the same
/// record, `now` and `grace` give the same plan.
pub fn plan_firing(
    record: &RecurringRecord,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<Option<Firing>, Error> {
    let Some(due) = record.next_run else {
        return Ok(None);
    };
    if record.paused || due > now {
        return Ok(None);
    }
    let schedule = record.schedule()?;
    // Every occurrence from the one waited for up to now, bounded so that a job unseen for
    // years does not plan millions.
    let mut occurrences = vec![due];
    occurrences.extend(schedule.occurrences(due, now, 10_000));
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let on_time = |t: &DateTime<Utc>| now - *t <= grace;
    let count = match record.misfire {
        Misfire::FireOnce => 1,
        Misfire::Skip => usize::from(occurrences.last().is_some_and(on_time)),
        Misfire::FireEach { max } => {
            let missed = occurrences.iter().filter(|t| !on_time(t)).count();
            let recent = occurrences.len() - missed;
            missed.min(usize::try_from(max).unwrap_or(usize::MAX)) + recent
        }
    };
    let jobs = (0..count).map(|_| record.job.instantiate()).collect();
    Ok(Some(Firing::new(
        record.id.clone(),
        due,
        schedule.next_after(now),
        jobs,
        now,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const G: Duration = Misfire::DEFAULT_GRACE;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn record(cron: &str, tz: &str, misfire: Misfire, next: DateTime<Utc>) -> RecurringRecord {
        let schedule = CronSchedule::parse(cron, tz).unwrap();
        let mut def = RecurringDef::new(
            "r",
            schedule,
            JobTemplate::from_job(&NewJob::new("report", "null")),
        )
        .unwrap();
        def.misfire = misfire;
        RecurringRecord::new(&def, Some(next), next)
    }

    #[test]
    fn fires_once_on_time_and_moves_to_the_next_occurrence() {
        let r = record("0 3 * * *", "UTC", Misfire::FireOnce, utc(2026, 5, 1, 3, 0));
        assert!(
            plan_firing(&r, utc(2026, 5, 1, 2, 59), G)
                .unwrap()
                .is_none()
        );
        let f = plan_firing(&r, utc(2026, 5, 1, 3, 0), G).unwrap().unwrap();
        assert_eq!(f.jobs.len(), 1);
        assert_eq!(f.expected_next_run, utc(2026, 5, 1, 3, 0));
        assert_eq!(f.next_run, Some(utc(2026, 5, 2, 3, 0)));
    }

    #[test]
    fn misfire_policies() {
        // Due at 03:00 on the 1st; no server ran until 12:00 on the 4th: four occurrences.
        let now = utc(2026, 5, 4, 12, 0);
        let start = utc(2026, 5, 1, 3, 0);
        let once = record("0 3 * * *", "UTC", Misfire::FireOnce, start);
        assert_eq!(plan_firing(&once, now, G).unwrap().unwrap().jobs.len(), 1);
        let skip = record("0 3 * * *", "UTC", Misfire::Skip, start);
        let f = plan_firing(&skip, now, G).unwrap().unwrap();
        assert_eq!(f.jobs.len(), 0);
        assert_eq!(f.next_run, Some(utc(2026, 5, 5, 3, 0)));
        let each = record("0 3 * * *", "UTC", Misfire::FireEach { max: 10 }, start);
        assert_eq!(plan_firing(&each, now, G).unwrap().unwrap().jobs.len(), 4);
        let bounded = record("0 3 * * *", "UTC", Misfire::FireEach { max: 2 }, start);
        assert_eq!(
            plan_firing(&bounded, now, G).unwrap().unwrap().jobs.len(),
            2
        );
        // Within the grace period nothing counts as missed: skip still fires.
        let late = record("0 3 * * *", "UTC", Misfire::Skip, start);
        let f = plan_firing(&late, start + chrono::Duration::seconds(5), G)
            .unwrap()
            .unwrap();
        assert_eq!(f.jobs.len(), 1);
    }

    #[test]
    fn paused_jobs_do_not_fire() {
        let mut r = record("* * * * *", "UTC", Misfire::FireOnce, utc(2026, 5, 1, 3, 0));
        r.paused = true;
        assert!(plan_firing(&r, utc(2026, 6, 1, 0, 0), G).unwrap().is_none());
    }

    #[test]
    fn recurring_ids_are_checked() {
        assert!(validate_recurring_id("nightly-report").is_ok());
        assert!(validate_recurring_id("").is_err());
        assert!(validate_recurring_id(" padded").is_err());
        assert!(validate_recurring_id(&"x".repeat(201)).is_err());
    }
}
