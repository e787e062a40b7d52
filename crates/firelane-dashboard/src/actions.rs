//! The actions: each a `POST` that checks access, then acts, then redirects back (303) with a
//! flash message.

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use firelane::{Change, JobId, JobState};

use crate::access::{check_action, cookie_path};
use crate::context::{Ctx, FLASH_COOKIE, Flash};
use crate::error::{PageError, PageResult};
use crate::pages::job_id;

/// The most jobs one bulk action takes.
pub(crate) const MAX_BULK: usize = 1000;

/// A checked action's form fields.
struct Form {
    fields: Vec<(String, String)>,
}

impl Form {
    /// Parses the body and checks that the request may act.
    fn check(ctx: &Ctx, headers: &HeaderMap, body: &Bytes) -> PageResult<Self> {
        let fields: Vec<(String, String)> = form_urlencoded::parse(body)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let form = Self { fields };
        check_action(&ctx.inner, headers, form.get("csrf"))?;
        Ok(form)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.fields
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Where to go back to: the form's `back` field when it is a path inside the dashboard,
    /// else `default`.
    fn back<'a>(&'a self, default: &'a str) -> &'a str {
        match self.get("back") {
            Some(b)
                if b.starts_with('/')
                    && !b.starts_with("//")
                    && !b.contains('\\')
                    && !b.chars().any(char::is_control) =>
            {
                b
            }
            _ => default,
        }
    }
}

/// A 303 to `back` (inside the dashboard) that carries `flash` in a cookie.
fn redirect(ctx: &Ctx, back: &str, flash: &Flash) -> Response {
    let location = if back == "/" && !ctx.prefix.is_empty() {
        ctx.prefix.clone()
    } else {
        format!("{}{back}", ctx.prefix)
    };
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, v);
    }
    let cookie = format!(
        "{FLASH_COOKIE}={}; Path={}; Max-Age=60; HttpOnly; SameSite=Strict",
        flash.encode(),
        cookie_path(&ctx.prefix)
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        headers.append(header::SET_COOKIE, v);
    }
    response
}

fn short(id: JobId) -> String {
    let s = id.to_string();
    format!("…{}", &s[s.len().saturating_sub(8)..])
}

/// Runs a one-job action: a refusal because of the job's state comes back as an error flash;
/// an unknown job is a 404.
async fn one_job<F, Fut>(
    ctx: Ctx,
    headers: HeaderMap,
    id: String,
    body: Bytes,
    done: &str,
    act: F,
) -> PageResult
where
    F: FnOnce(firelane::Client, JobId) -> Fut,
    Fut: Future<Output = firelane::Result<()>>,
{
    let form = Form::check(&ctx, &headers, &body)?;
    let id = job_id(&id)?;
    let default_back = format!("/job/{id}");
    let back = form.back(&default_back).to_owned();
    let flash = match act(ctx.client().clone(), id).await {
        Ok(()) => Flash::ok(format!("Job {} {done}.", short(id))),
        Err(e @ firelane::Error::Refused { .. }) => Flash::error(capitalize(&e.to_string())),
        Err(e) => return Err(e.into()),
    };
    Ok(redirect(&ctx, &back, &flash))
}

fn capitalize(text: &str) -> String {
    let mut c = text.chars();
    match c.next() {
        Some(first) => first.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// `POST /job/{id}/requeue`.
pub(crate) async fn requeue(
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    one_job(ctx, headers, id, body, "requeued", |c, id| async move {
        c.requeue(id).await
    })
    .await
}

/// `POST /job/{id}/delete`.
pub(crate) async fn delete(
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    one_job(ctx, headers, id, body, "deleted", |c, id| async move {
        c.delete(id).await
    })
    .await
}

/// `POST /job/{id}/cancel`.
pub(crate) async fn cancel(
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    one_job(ctx, headers, id, body, "cancelled", |c, id| async move {
        c.cancel(id, "cancelled from the dashboard").await
    })
    .await
}

/// `POST /jobs/bulk`: `action` = `requeue`, `delete` or `enqueue` (a scheduled job now), with
/// one `id` field per job.
pub(crate) async fn bulk(ctx: Ctx, headers: HeaderMap, body: Bytes) -> PageResult {
    let form = Form::check(&ctx, &headers, &body)?;
    let back = form.back("/").to_owned();
    let action = form.get("action").unwrap_or_default();
    let (verb, requeue) = match action {
        "requeue" => ("Requeued", true),
        "enqueue" => ("Enqueued", true),
        "delete" => ("Deleted", false),
        other => {
            return Err(PageError::bad_request(format!(
                "unknown bulk action {other:?}: use requeue, delete or enqueue"
            )));
        }
    };
    let ids = form
        .all("id")
        .map(|t| {
            t.parse::<JobId>()
                .map_err(|_| PageError::bad_request(format!("{t:?} is not a job id")))
        })
        .collect::<PageResult<Vec<JobId>>>()?;
    if ids.is_empty() {
        return Ok(redirect(
            &ctx,
            &back,
            &Flash::error("Select at least one job first."),
        ));
    }
    if ids.len() > MAX_BULK {
        return Err(PageError::bad_request(format!(
            "{} jobs selected: one bulk action takes at most {MAX_BULK}",
            ids.len()
        )));
    }
    let changes = if requeue {
        ctx.client().requeue_many(&ids).await?
    } else {
        ctx.client().delete_many(&ids).await?
    };
    Ok(redirect(&ctx, &back, &bulk_flash(verb, &changes)))
}

/// "Requeued 3 jobs; 1 refused (awaiting); 1 not found."
fn bulk_flash(verb: &str, changes: &[Change]) -> Flash {
    let changed = changes
        .iter()
        .filter(|c| matches!(c, Change::Changed { .. }))
        .count();
    let mut refused: Vec<JobState> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Refused { state } => Some(*state),
            _ => None,
        })
        .collect();
    let missing = changes
        .iter()
        .filter(|c| matches!(c, Change::NotFound))
        .count();
    let mut message = format!(
        "{verb} {changed} {}",
        if changed == 1 { "job" } else { "jobs" }
    );
    if !refused.is_empty() {
        let n = refused.len();
        refused.sort();
        refused.dedup();
        let states: Vec<&str> = refused.iter().map(|s| s.as_str()).collect();
        message.push_str(&format!("; {n} refused ({})", states.join(", ")));
    }
    if missing > 0 {
        message.push_str(&format!("; {missing} not found"));
    }
    message.push('.');
    if changed == 0 {
        Flash::error(message)
    } else {
        Flash::ok(message)
    }
}

/// Runs a recurring-job or queue action and redirects back to `default_back`.
async fn simple<Fut>(
    ctx: Ctx,
    headers: HeaderMap,
    body: Bytes,
    default_back: &str,
    act: Fut,
) -> PageResult
where
    Fut: Future<Output = PageResult<String>>,
{
    let form = Form::check(&ctx, &headers, &body)?;
    let back = form.back(default_back).to_owned();
    let message = act.await?;
    Ok(redirect(&ctx, &back, &Flash::ok(message)))
}

/// `POST /recurring/{id}/trigger`.
pub(crate) async fn trigger(
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    let client = ctx.client().clone();
    simple(ctx, headers, body, "/recurring", async move {
        let job = client.trigger(&id).await?;
        Ok(format!(
            "Triggered recurring job {id}: enqueued job {}.",
            short(job)
        ))
    })
    .await
}

/// `POST /recurring/{id}/pause`.
pub(crate) async fn pause_recurring(
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    let client = ctx.client().clone();
    simple(ctx, headers, body, "/recurring", async move {
        client.pause_recurring(&id).await?;
        Ok(format!("Paused recurring job {id}."))
    })
    .await
}

/// `POST /recurring/{id}/resume`.
pub(crate) async fn resume_recurring(
    ctx: Ctx,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> PageResult {
    let client = ctx.client().clone();
    simple(ctx, headers, body, "/recurring", async move {
        client.resume_recurring(&id).await?;
        Ok(format!("Resumed recurring job {id}."))
    })
    .await
}

/// `POST /queues/{name}/pause`.
pub(crate) async fn pause_queue(
    ctx: Ctx,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> PageResult {
    let client = ctx.client().clone();
    simple(ctx, headers, body, "/queues", async move {
        client.pause_queue(&name).await?;
        Ok(format!(
            "Paused queue {name}: servers take none of its jobs until it is resumed."
        ))
    })
    .await
}

/// `POST /queues/{name}/resume`.
pub(crate) async fn resume_queue(
    ctx: Ctx,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Bytes,
) -> PageResult {
    let client = ctx.client().clone();
    simple(ctx, headers, body, "/queues", async move {
        client.resume_queue(&name).await?;
        Ok(format!("Resumed queue {name}."))
    })
    .await
}
