//! The JSON API: what the pages show, for scripts and the pages' own live parts.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use chrono::{DateTime, Duration, Utc};
use firelane::{HourlyStats, JobRecord, hour_of};
use serde::{Deserialize, Serialize};

use crate::context::Ctx;
use crate::error::{PageError, PageResult};
use crate::pages::{ListParams, ListRequest, Listing, PER_PAGE, job_id};

/// `GET /api/stats`.
pub(crate) async fn stats(ctx: Ctx) -> PageResult<Json<firelane::Stats>> {
    Ok(Json(ctx.client().stats().await?))
}

#[derive(Debug, Deserialize)]
pub(crate) struct HistoryParams {
    #[serde(default)]
    range: Option<String>,
}

/// One hour of the history graph.
#[derive(Debug, Serialize)]
pub(crate) struct Hour {
    hour: DateTime<Utc>,
    succeeded: u64,
    failed: u64,
}

/// `GET /api/history?range=24h|7d`: one entry per hour, oldest first, the current hour last.
pub(crate) async fn history(
    ctx: Ctx,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> PageResult<Json<Vec<Hour>>> {
    let Query(params) = params.map_err(|e| PageError::bad_request(e.body_text()))?;
    let hours: i64 = match params.range.as_deref().unwrap_or("24h") {
        "24h" => 24,
        "7d" => 7 * 24,
        other => {
            return Err(PageError::bad_request(format!(
                "range {other:?} is not known: use 24h or 7d"
            )));
        }
    };
    let to = hour_of(Utc::now()) + Duration::hours(1);
    let from = to - Duration::hours(hours);
    let stored: Vec<HourlyStats> = ctx.client().stats_history(from, to).await?;
    let out = (0..hours)
        .map(|i| {
            let hour = from + Duration::hours(i);
            let found = stored.iter().find(|h| h.hour == hour);
            Hour {
                hour,
                succeeded: found.map_or(0, |h| h.succeeded),
                failed: found.map_or(0, |h| h.failed),
            }
        })
        .collect();
    Ok(Json(out))
}

/// A page of jobs.
#[derive(Debug, Serialize)]
pub(crate) struct JobsAnswer {
    jobs: Vec<JobRecord>,
    page: u64,
    per_page: u32,
    /// The whole list's length, when the counters give it without counting.
    total: Option<u64>,
    has_next: bool,
}

/// `GET /api/jobs?state=&queue=&name=&q=&from=&to=&page=`.
pub(crate) async fn jobs(
    ctx: Ctx,
    params: Result<Query<ListParams>, QueryRejection>,
) -> PageResult<Json<JobsAnswer>> {
    let Query(params) = params.map_err(|e| PageError::bad_request(e.body_text()))?;
    let listing = match params.state.as_deref().map(str::trim) {
        None | Some("") => Listing::All,
        Some(s) => Listing::parse(s).ok_or_else(|| {
            PageError::bad_request(format!(
                "{s:?} is not a job state: use enqueued, scheduled, processing, succeeded, failed, deleted, awaiting or retries"
            ))
        })?,
    };
    let req = ListRequest::parse(listing, params)?;
    let stats = ctx.client().stats().await?;
    let mut jobs = ctx.client().list(req.query()).await?;
    let has_next = jobs.len() > PER_PAGE as usize;
    jobs.truncate(PER_PAGE as usize);
    Ok(Json(JobsAnswer {
        jobs,
        page: req.page,
        per_page: PER_PAGE,
        total: req.known_total(&stats),
        has_next,
    }))
}

/// `GET /api/job/{id}`.
pub(crate) async fn job(
    ctx: Ctx,
    Path(id): Path<String>,
) -> PageResult<Json<firelane::JobDetails>> {
    let id = job_id(&id)?;
    Ok(Json(ctx.client().job(id).await?))
}

/// `GET /api/recurring`.
pub(crate) async fn recurring(ctx: Ctx) -> PageResult<Json<Vec<firelane::RecurringView>>> {
    Ok(Json(ctx.client().recurring_jobs().await?))
}

/// `GET /api/servers`.
pub(crate) async fn servers(ctx: Ctx) -> PageResult<Json<Vec<firelane::ServerRecord>>> {
    Ok(Json(ctx.client().servers().await?))
}

/// `GET /api/queues`.
pub(crate) async fn queues(ctx: Ctx) -> PageResult<Json<Vec<firelane::QueueStats>>> {
    Ok(Json(ctx.client().stats().await?.queues))
}
