//! The HTML pages.

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query};
use axum::response::{Html, IntoResponse};
use chrono::{DateTime, Utc};
use firelane::{JobId, JobQuery, JobRecord, JobState, Stats};
use serde::Deserialize;

use crate::context::{Ctx, Layout};
use crate::error::{PageError, PageResult};
use crate::views::{self, JobRow, encode_component, query_string};

/// Jobs per list page.
pub(crate) const PER_PAGE: u32 = 20;

/// The largest page number accepted (a page past the end shows a note, not an error).
const MAX_PAGE: u64 = 1_000_000_000;

fn render<T: Template>(page: &T) -> PageResult {
    Ok(Html(page.render()?).into_response())
}

/// A list's filters, as the query string gives them.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListParams {
    #[serde(default)]
    pub(crate) state: Option<String>,
    #[serde(default)]
    pub(crate) queue: Option<String>,
    #[serde(default)]
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) q: Option<String>,
    #[serde(default)]
    pub(crate) from: Option<String>,
    #[serde(default)]
    pub(crate) to: Option<String>,
    #[serde(default)]
    pub(crate) page: Option<String>,
}

/// Which jobs a list shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Listing {
    State(JobState),
    Retries,
    All,
}

impl Listing {
    /// `enqueued`, .., `awaiting`, or `retries`.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text == "retries" {
            return Some(Self::Retries);
        }
        JobState::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .map(Self::State)
    }

    pub(crate) fn key(self) -> &'static str {
        match self {
            Self::State(s) => s.as_str(),
            Self::Retries => "retries",
            Self::All => "search",
        }
    }
}

/// A list request, checked.
#[derive(Clone, Debug)]
pub(crate) struct ListRequest {
    pub(crate) listing: Listing,
    pub(crate) queue: String,
    pub(crate) name: String,
    pub(crate) q: String,
    pub(crate) from_text: String,
    pub(crate) to_text: String,
    pub(crate) from: Option<DateTime<Utc>>,
    pub(crate) to: Option<DateTime<Utc>>,
    pub(crate) page: u64,
}

impl ListRequest {
    pub(crate) fn parse(listing: Listing, p: ListParams) -> PageResult<Self> {
        let text = |v: Option<String>| v.map(|s| s.trim().to_owned()).unwrap_or_default();
        let from_text = text(p.from);
        let to_text = text(p.to);
        let page_text = text(p.page);
        let page = if page_text.is_empty() {
            1
        } else {
            match page_text.parse::<u64>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
                _ => {
                    return Err(PageError::bad_request(format!(
                        "`page` must be a whole number from 1 to {MAX_PAGE}, not {page_text:?}"
                    )));
                }
            }
        };
        Ok(Self {
            listing,
            queue: text(p.queue),
            name: text(p.name),
            q: text(p.q),
            from: views::parse_time("from", &from_text)?,
            to: views::parse_time("to", &to_text)?,
            from_text,
            to_text,
            page,
        })
    }

    /// The store query for this page, one job longer than a page to tell whether a next page
    /// exists.
    pub(crate) fn query(&self) -> JobQuery {
        let mut q = match self.listing {
            Listing::State(s) => JobQuery::new().state(s),
            Listing::Retries => JobQuery::new().retries(),
            Listing::All => JobQuery::new(),
        };
        if !self.queue.is_empty() {
            q = q.queue(self.queue.clone());
        }
        if !self.name.is_empty() {
            q = q.name(self.name.clone());
        }
        if !self.q.is_empty() {
            q = q.search(self.q.clone());
        }
        if self.from.is_some() || self.to.is_some() {
            q = q.created(self.from, self.to);
        }
        q.page((self.page - 1) * u64::from(PER_PAGE), PER_PAGE + 1)
    }

    /// A time filter as a `datetime-local` input shows it (UTC).
    pub(crate) fn input_from(&self) -> String {
        self.from
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
            .unwrap_or_default()
    }

    /// See [`ListRequest::input_from`].
    pub(crate) fn input_to(&self) -> String {
        self.to
            .map(|t| t.format("%Y-%m-%dT%H:%M:%S").to_string())
            .unwrap_or_default()
    }

    /// Whether a filter beyond the list and the queue is set.
    pub(crate) fn filtered(&self) -> bool {
        !(self.name.is_empty() && self.q.is_empty() && self.from.is_none() && self.to.is_none())
    }

    /// How many jobs the whole list holds, when the counters say it without counting.
    pub(crate) fn known_total(&self, stats: &Stats) -> Option<u64> {
        match self.listing {
            Listing::State(s) if !self.filtered() && self.queue.is_empty() => Some(stats.count(s)),
            Listing::State(JobState::Enqueued) if !self.filtered() => Some(
                stats
                    .queues
                    .iter()
                    .find(|q| q.name == self.queue)
                    .map_or(0, |q| q.enqueued),
            ),
            _ => None,
        }
    }

    /// The query string of this list's filters, with `page` when it is not 1.
    pub(crate) fn link(&self, path: &str, page: u64) -> String {
        let page = if page == 1 {
            String::new()
        } else {
            page.to_string()
        };
        format!(
            "{path}{}",
            query_string(&[
                ("queue", &self.queue),
                ("name", &self.name),
                ("q", &self.q),
                ("from", &self.from_text),
                ("to", &self.to_text),
                ("page", &page),
            ])
        )
    }
}

/// `GET` fallback: no such page.
pub(crate) async fn not_found(uri: axum::http::Uri) -> PageError {
    PageError::not_found(format!("There is no page at {}.", uri.path()))
}

// ---------------------------------------------------------------------------------------------
// Overview

struct StateCard {
    key: &'static str,
    label: &'static str,
    count: u64,
    href: String,
}

/// A queue in a table.
pub(crate) struct QueueRow {
    name: String,
    name_enc: String,
    href: String,
    enqueued: u64,
    processing: u64,
    paused: bool,
    servers: usize,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    cards: Vec<StateCard>,
    servers: u64,
    succeeded_total: u64,
    failed_total: u64,
    queues: Vec<QueueRow>,
}

fn state_label(s: JobState) -> &'static str {
    match s {
        JobState::Enqueued => "Enqueued",
        JobState::Scheduled => "Scheduled",
        JobState::Processing => "Processing",
        JobState::Succeeded => "Succeeded",
        JobState::Failed => "Failed",
        JobState::Deleted => "Deleted",
        JobState::Awaiting => "Awaiting",
    }
}

/// Queues with jobs, paused ones, and those some server listens to.
async fn queue_rows(ctx: &Ctx, layout: &Layout, stats: &Stats) -> PageResult<Vec<QueueRow>> {
    let servers = ctx.client().servers().await?;
    let mut map: BTreeMap<String, QueueRow> = BTreeMap::new();
    let row = |name: &str| QueueRow {
        name: name.to_owned(),
        name_enc: encode_component(name),
        href: layout.url(&format!(
            "/jobs/enqueued{}",
            query_string(&[("queue", name)])
        )),
        enqueued: 0,
        processing: 0,
        paused: false,
        servers: 0,
    };
    for q in &stats.queues {
        let r = map.entry(q.name.clone()).or_insert_with(|| row(&q.name));
        r.enqueued = q.enqueued;
        r.processing = q.processing;
        r.paused = q.paused;
    }
    for s in &servers {
        for q in &s.info.queues {
            map.entry(q.clone()).or_insert_with(|| row(q)).servers += 1;
        }
    }
    Ok(map.into_values().collect())
}

/// `GET /`.
pub(crate) async fn overview(ctx: Ctx) -> PageResult {
    let stats = ctx.client().stats().await?;
    let layout = ctx.layout("overview", "Overview", Some(&stats));
    let cards = JobState::ALL
        .into_iter()
        .map(|s| StateCard {
            key: s.as_str(),
            label: state_label(s),
            count: stats.count(s),
            href: layout.url(&format!("/jobs/{}", s.as_str())),
        })
        .collect();
    let queues = queue_rows(&ctx, &layout, &stats).await?;
    render(&OverviewPage {
        cards,
        servers: stats.servers,
        succeeded_total: stats.succeeded_total,
        failed_total: stats.failed_total,
        queues,
        layout,
    })
}

// ---------------------------------------------------------------------------------------------
// Job lists

struct QueueChip {
    name: String,
    count: u64,
    href: String,
    active: bool,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    layout: Layout,
    heading: String,
    key: &'static str,
    /// The path of this list (`/jobs/failed`, `/search`), for the filter form.
    path: String,
    req: ListRequest,
    rows: Vec<JobRow>,
    total: Option<u64>,
    pages: Option<u64>,
    prev_href: Option<String>,
    next_href: Option<String>,
    first_href: Option<String>,
    last_href: Option<String>,
    past_end: Option<String>,
    queue_chips: Vec<QueueChip>,
    all_queues_href: String,
    show_state: bool,
    show_filters: bool,
    when_label: &'static str,
    can_requeue: bool,
    can_delete: bool,
    can_enqueue: bool,
    live_url: String,
    empty_note: String,
    prompt: bool,
}

fn heading(listing: Listing, req: &ListRequest) -> String {
    let base = match listing {
        Listing::State(s) => format!("{} jobs", state_label(s)),
        Listing::Retries => "Retries".to_owned(),
        Listing::All => "Search".to_owned(),
    };
    if req.queue.is_empty() {
        base
    } else {
        format!("{base} in queue {}", req.queue)
    }
}

/// `GET /jobs/{state}`.
pub(crate) async fn jobs(
    ctx: Ctx,
    Path(state): Path<String>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> PageResult {
    let listing = Listing::parse(&state).ok_or_else(|| {
        PageError::not_found(format!(
            "{state:?} is not a job state: the lists are enqueued, scheduled, processing, succeeded, failed, deleted, awaiting and retries."
        ))
    })?;
    let Query(params) = params.map_err(|e| PageError::bad_request(e.body_text()))?;
    list_page(ctx, listing, params).await
}

/// `GET /search`.
pub(crate) async fn search(
    ctx: Ctx,
    params: Result<Query<ListParams>, QueryRejection>,
) -> PageResult {
    let Query(params) = params.map_err(|e| PageError::bad_request(e.body_text()))?;
    list_page(ctx, Listing::All, params).await
}

async fn list_page(ctx: Ctx, listing: Listing, params: ListParams) -> PageResult {
    let req = ListRequest::parse(listing, params)?;
    let stats = ctx.client().stats().await?;
    let heading = heading(listing, &req);
    let mut layout = ctx.layout(listing.key(), heading.clone(), Some(&stats));
    if listing == Listing::All {
        layout.search = req.q.clone();
    }
    let path = match listing {
        Listing::All => "/search".to_owned(),
        l => format!("/jobs/{}", l.key()),
    };
    let prompt = listing == Listing::All && req.q.is_empty();
    let mut records: Vec<JobRecord> = if prompt {
        Vec::new()
    } else {
        ctx.client().list(req.query()).await?
    };
    let has_next = records.len() > PER_PAGE as usize;
    records.truncate(PER_PAGE as usize);
    let now = Utc::now();
    let rows: Vec<JobRow> = records.iter().map(|j| JobRow::new(j, now)).collect();

    let total = req.known_total(&stats);
    let pages = total.map(|t| t.div_ceil(u64::from(PER_PAGE)).max(1));
    let link = |n: u64| layout.url(&req.link(&path, n));
    let past_end = match pages {
        Some(p) if req.page > p => Some(format!(
            "Page {} is past the last page ({p}): the list is shorter than that now.",
            req.page
        )),
        _ => None,
    };
    let prev_href = (req.page > 1).then(|| link(req.page - 1));
    let next_href = (has_next || pages.is_some_and(|p| req.page < p)).then(|| link(req.page + 1));
    let first_href = (req.page > 1).then(|| link(1));
    let last_href = pages.filter(|p| req.page != *p).map(link);

    let queue_chips = if listing == Listing::State(JobState::Enqueued) {
        stats
            .queues
            .iter()
            .map(|q| QueueChip {
                name: q.name.clone(),
                count: q.enqueued,
                href: layout.url(&format!(
                    "/jobs/enqueued{}",
                    query_string(&[("queue", &q.name)])
                )),
                active: q.name == req.queue,
            })
            .collect()
    } else {
        Vec::new()
    };
    let (can_requeue, can_delete, can_enqueue) = match listing {
        Listing::State(JobState::Enqueued | JobState::Awaiting) => (false, true, false),
        Listing::State(JobState::Scheduled) | Listing::Retries => (false, true, true),
        Listing::State(JobState::Deleted) => (true, false, false),
        Listing::State(_) | Listing::All => (true, true, false),
    };
    let when_label = match listing {
        Listing::State(JobState::Scheduled) | Listing::Retries => "Due",
        Listing::State(JobState::Enqueued) => "Enqueued",
        Listing::State(JobState::Processing) => "Started",
        Listing::State(JobState::Succeeded) => "Succeeded",
        Listing::State(JobState::Failed) => "Failed",
        Listing::State(JobState::Deleted) => "Deleted",
        Listing::State(JobState::Awaiting) => "Since",
        Listing::All => "State since",
    };
    let empty_note = if req.filtered() || !req.queue.is_empty() {
        "No job matches these filters.".to_owned()
    } else {
        format!("No {} jobs.", listing.key())
    };
    let live_url = layout.url(&ctx.here);
    render(&JobsPage {
        heading,
        key: listing.key(),
        all_queues_href: layout.url("/jobs/enqueued"),
        show_state: listing == Listing::All,
        show_filters: listing != Listing::All,
        path: layout.url(&path),
        rows,
        total,
        pages,
        prev_href,
        next_href,
        first_href,
        last_href,
        past_end,
        queue_chips,
        when_label,
        can_requeue,
        can_delete,
        can_enqueue,
        live_url,
        empty_note,
        prompt,
        req,
        layout,
    })
}

// ---------------------------------------------------------------------------------------------
// A job

struct LinkedJob {
    id: String,
    href: String,
    name: String,
    state: String,
}

struct HistoryRow {
    n: usize,
    state: &'static str,
    at: String,
    ago: String,
    attempt: u32,
    server: String,
    duration: String,
    reason: String,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    layout: Layout,
    id: String,
    name: String,
    state: &'static str,
    queue: String,
    queue_href: String,
    priority: i32,
    attempts: String,
    retry: String,
    timeout: String,
    created: String,
    created_ago: String,
    state_at: String,
    state_ago: String,
    due: Option<(String, String)>,
    lease: Option<String>,
    reason: Option<String>,
    last_error: Option<String>,
    args: String,
    parent: Option<(LinkedJob, &'static str)>,
    continuations: Vec<LinkedJob>,
    history: Vec<HistoryRow>,
    can_requeue: bool,
    requeue_label: &'static str,
    can_delete: bool,
    can_cancel: bool,
    live: bool,
    live_url: String,
    back: String,
}

/// Continuations looked up by name and state on a job's page; more are listed by id only.
const LINKED_LOOKUPS: usize = 20;

async fn linked(ctx: &Ctx, layout: &Layout, id: JobId, look_up: bool) -> LinkedJob {
    let (name, state) = if look_up {
        match ctx.client().job(id).await {
            Ok(d) => (d.job.name, d.job.state.as_str().to_owned()),
            Err(_) => (String::new(), "expired".to_owned()),
        }
    } else {
        (String::new(), String::new())
    };
    LinkedJob {
        id: id.to_string(),
        href: layout.url(&format!("/job/{id}")),
        name,
        state,
    }
}

/// Parses a job id from a path, or says there is no such page.
pub(crate) fn job_id(text: &str) -> PageResult<JobId> {
    text.parse::<JobId>().map_err(|_| {
        PageError::not_found(format!(
            "{text:?} is not a job id (ids look like 0193a5a0-7c3e-7b52-8f6c-1d2e3f4a5b6c)."
        ))
    })
}

/// `GET /job/{id}`.
pub(crate) async fn job(ctx: Ctx, Path(id): Path<String>) -> PageResult {
    let id = job_id(&id)?;
    let details = ctx.client().job(id).await?;
    let stats = ctx.client().stats().await?;
    let j = &details.job;
    let layout = ctx.layout("job", format!("Job {}", j.name), Some(&stats));
    let now = Utc::now();
    let parent = match j.parent {
        Some((pid, on)) => Some((linked(&ctx, &layout, pid, true).await, on.as_str())),
        None => None,
    };
    let mut continuations = Vec::new();
    for (i, c) in details.continuations.iter().enumerate() {
        continuations.push(linked(&ctx, &layout, *c, i < LINKED_LOOKUPS).await);
    }
    let history = details
        .history
        .iter()
        .enumerate()
        .rev()
        .map(|(i, h)| HistoryRow {
            n: i + 1,
            state: h.state.as_str(),
            at: views::time(h.at),
            ago: views::ago(h.at, now),
            attempt: h.attempt,
            server: h
                .server
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            duration: h.duration.map(views::duration).unwrap_or_default(),
            reason: h.reason.clone().unwrap_or_default(),
            error: h.error.clone(),
        })
        .collect();
    let lease = match (&j.lease_server, j.lease_until) {
        (Some(s), Some(until)) => Some(format!("{s}, until {}", views::time(until))),
        (Some(s), None) => Some(s.to_string()),
        _ => None,
    };
    let live = !j.state.is_finished();
    render(&JobPage {
        id: id.to_string(),
        name: j.name.clone(),
        state: j.state.as_str(),
        queue: j.queue.clone(),
        queue_href: layout.url(&format!(
            "/jobs/enqueued{}",
            query_string(&[("queue", &j.queue)])
        )),
        priority: j.priority,
        attempts: format!("{} of {}", j.attempt, j.retry.max_attempts()),
        retry: views::retry_policy(&j.retry),
        timeout: j.timeout.map_or_else(|| "none".to_owned(), views::duration),
        created: views::time(j.created_at),
        created_ago: views::ago(j.created_at, now),
        state_at: views::time(j.state_at),
        state_ago: views::ago(j.state_at, now),
        due: j
            .due_at
            .filter(|_| j.state == JobState::Scheduled)
            .map(|t| (views::time(t), views::ago(t, now))),
        lease,
        reason: j.reason.clone(),
        last_error: j.last_error.clone(),
        args: views::pretty_args(&j.args),
        parent,
        continuations,
        history,
        can_requeue: j.state.can_requeue(),
        requeue_label: if j.state == JobState::Scheduled {
            "Enqueue now"
        } else {
            "Requeue"
        },
        can_delete: j.state.can_delete(),
        can_cancel: j.state == JobState::Processing,
        live,
        live_url: layout.url(&format!("/job/{id}")),
        back: format!("/job/{id}"),
        layout,
    })
}

// ---------------------------------------------------------------------------------------------
// Recurring jobs, servers, queues

struct RecurringRow {
    id: String,
    id_enc: String,
    cron: String,
    time_zone: String,
    job_name: String,
    queue: String,
    next: Option<(String, String)>,
    last: Option<(String, String)>,
    last_job: Option<(String, String, String)>,
    status: &'static str,
    paused: bool,
    last_error: Option<String>,
}

#[derive(Template)]
#[template(path = "recurring.html")]
struct RecurringPage {
    layout: Layout,
    rows: Vec<RecurringRow>,
}

/// `GET /recurring`.
pub(crate) async fn recurring(ctx: Ctx) -> PageResult {
    let stats = ctx.client().stats().await?;
    let layout = ctx.layout("recurring", "Recurring jobs", Some(&stats));
    let now = Utc::now();
    let rows = ctx
        .client()
        .recurring_jobs()
        .await?
        .into_iter()
        .map(|v| {
            let r = v.record;
            let status = if r.paused {
                "paused"
            } else if r.next_run.is_none() {
                "disabled"
            } else {
                "active"
            };
            RecurringRow {
                id_enc: encode_component(&r.id),
                cron: r.cron,
                time_zone: r.time_zone,
                job_name: r.job.name,
                queue: r.job.queue,
                next: r.next_run.map(|t| (views::ago(t, now), views::time(t))),
                last: r.last_run.map(|t| (views::ago(t, now), views::time(t))),
                last_job: r.last_job.map(|id| {
                    let s = id.to_string();
                    (
                        layout.url(&format!("/job/{s}")),
                        format!("…{}", &s[s.len().saturating_sub(8)..]),
                        v.last_job_state
                            .map_or_else(|| "expired".to_owned(), |s| s.as_str().to_owned()),
                    )
                }),
                status,
                paused: r.paused,
                last_error: r.last_error,
                id: r.id,
            }
        })
        .collect();
    render(&RecurringPage { layout, rows })
}

struct ServerRow {
    id: String,
    hostname: String,
    pid: u32,
    workers: u32,
    queues: String,
    job_names: String,
    job_count: usize,
    started: (String, String),
    heartbeat: (String, String),
}

#[derive(Template)]
#[template(path = "servers.html")]
struct ServersPage {
    layout: Layout,
    rows: Vec<ServerRow>,
}

/// `GET /servers`.
pub(crate) async fn servers(ctx: Ctx) -> PageResult {
    let stats = ctx.client().stats().await?;
    let layout = ctx.layout("servers", "Servers", Some(&stats));
    let now = Utc::now();
    let rows = ctx
        .client()
        .servers()
        .await?
        .into_iter()
        .map(|s| ServerRow {
            id: s.info.id.to_string(),
            hostname: s.info.hostname.clone(),
            pid: s.info.pid,
            workers: s.info.workers,
            queues: s.info.queues.join(", "),
            job_count: s.info.job_names.len(),
            job_names: s.info.job_names.join(", "),
            started: (
                views::ago(s.info.started_at, now),
                views::time(s.info.started_at),
            ),
            heartbeat: (
                views::ago(s.last_heartbeat, now),
                views::time(s.last_heartbeat),
            ),
        })
        .collect();
    render(&ServersPage { layout, rows })
}

#[derive(Template)]
#[template(path = "queues.html")]
struct QueuesPage {
    layout: Layout,
    rows: Vec<QueueRow>,
}

/// `GET /queues`.
pub(crate) async fn queues(ctx: Ctx) -> PageResult {
    let stats = ctx.client().stats().await?;
    let layout = ctx.layout("queues", "Queues", Some(&stats));
    let rows = queue_rows(&ctx, &layout, &stats).await?;
    render(&QueuesPage { layout, rows })
}
