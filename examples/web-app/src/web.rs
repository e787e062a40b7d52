//! The web side: the sign-up form, confirmation links, the administrator's login, and the
//! Firelane dashboard under `/admin/jobs` behind that login.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Json, Redirect, Response};
use axum::routing::{get, post};
use firelane::metrics::PrometheusEndpoint;
use firelane::{Client, HealthCheck};
use firelane_dashboard::Dashboard;
use serde::Deserialize;

use crate::BoxError;
use crate::db::{Db, SignUp};

/// The session cookie set by a successful login.
const SESSION_COOKIE: &str = "web_app_admin";

/// What the handlers share.
#[derive(Clone, Debug)]
pub(crate) struct AppState {
    db: Db,
    client: Client,
    admin: Option<Arc<Admin>>,
}

impl AppState {
    pub(crate) fn new(db: Db, client: Client, admin_password: Option<String>) -> Self {
        let admin = admin_password.filter(|p| !p.is_empty()).map(|password| {
            Arc::new(Admin {
                password,
                // One random session value per process: a login lasts until the app restarts.
                session: uuid::Uuid::new_v4().simple().to_string(),
            })
        });
        if admin.is_none() {
            tracing::warn!("ADMIN_PASSWORD is not set: nobody can log in to /admin/jobs");
        }
        Self { db, client, admin }
    }
}

/// The administrator's password and the session value a login hands out.
struct Admin {
    password: String,
    session: String,
}

impl std::fmt::Debug for Admin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Admin { .. }")
    }
}

impl Admin {
    /// Whether the request carries the session cookie of a login.
    fn is_logged_in(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|c| c.trim().split_once('='))
            .any(|(name, value)| {
                name == SESSION_COOKIE && same(value.as_bytes(), self.session.as_bytes())
            })
    }
}

/// Compares secrets in a time that does not depend on where they differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub(crate) fn router(state: AppState) -> Router {
    // The dashboard asks this hook about every request it gets (pages, actions, JSON API); a
    // request it refuses gets 403. Here: logged in as the administrator, by the app's login.
    let admin = state.admin.clone();
    let dashboard = Dashboard::new(state.client.clone())
        .title("web-app jobs")
        .authorize(move |parts| {
            admin
                .as_ref()
                .is_some_and(|admin| admin.is_logged_in(&parts.headers))
        });

    Router::new()
        .route("/", get(home))
        .route("/signup", post(signup))
        .route("/confirm/{token}", get(confirm))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .with_state(state)
        .nest("/admin/jobs", dashboard.router())
}

async fn home() -> Html<String> {
    page(
        "Sign up",
        r#"<h1>Sign up</h1>
<form method="post" action="/signup">
  <label>Email <input type="email" name="email" required></label>
  <button>Sign up</button>
</form>
<p><a href="/login">Administrator</a></p>"#,
    )
}

#[derive(Deserialize)]
struct SignupForm {
    email: String,
}

async fn signup(
    State(state): State<AppState>,
    Form(form): Form<SignupForm>,
) -> Result<Response, AppError> {
    let email = form.email.trim();
    if !plausible_email(email) {
        let body = format!("<p>{} is not an email address.</p>", escape(email));
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, page("Sign up", &body)).into_response());
    }
    match state.db.sign_up(email).await? {
        SignUp::Created { user_id } => {
            tracing::info!(user_id, "signed up");
            let body = format!(
                "<h1>Thank you</h1><p>We sent a confirmation link to {}.</p>",
                escape(email)
            );
            Ok(page("Signed up", &body).into_response())
        }
        SignUp::AlreadyRegistered => {
            let body = format!("<p>{} has already signed up.</p>", escape(email));
            Ok((StatusCode::CONFLICT, page("Sign up", &body)).into_response())
        }
    }
}

async fn confirm(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Result<Response, AppError> {
    if state.db.confirm(&token).await? {
        Ok(page("Confirmed", "<h1>Confirmed</h1><p>Welcome aboard.</p>").into_response())
    } else {
        let body = "<p>This link is unknown, already used, or expired.</p>";
        Ok((StatusCode::NOT_FOUND, page("Confirm", body)).into_response())
    }
}

fn login_form(message: &str) -> Html<String> {
    page(
        "Log in",
        &format!(
            r#"<h1>Administrator</h1>{message}
<form method="post" action="/login">
  <label>Password <input type="password" name="password" required></label>
  <button>Log in</button>
</form>"#
        ),
    )
}

async fn login_page() -> Html<String> {
    login_form("")
}

#[derive(Deserialize)]
struct LoginForm {
    password: String,
}

async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    match &state.admin {
        Some(admin) if same(form.password.as_bytes(), admin.password.as_bytes()) => {
            let cookie = format!(
                "{SESSION_COOKIE}={}; Path=/; HttpOnly; SameSite=Strict",
                admin.session
            );
            ([(header::SET_COOKIE, cookie)], Redirect::to("/admin/jobs")).into_response()
        }
        _ => (
            StatusCode::UNAUTHORIZED,
            login_form("<p>Wrong password.</p>"),
        )
            .into_response(),
    }
}

async fn logout() -> Response {
    let cookie = format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

/// What `/healthz` asks about Firelane.
#[derive(Clone, Debug)]
pub(crate) enum Readiness {
    /// This process runs a Firelane server: is it running, its heartbeat fresh, its store up?
    Server(HealthCheck),
    /// It only enqueues: does its store answer?
    Client(Client),
}

/// The routes every mode serves: `/healthz` and `/metrics`.
pub(crate) fn ops_router(db: Db, readiness: Readiness, metrics: &PrometheusEndpoint) -> Router {
    Router::new()
        .route("/healthz", get(health))
        .with_state((db, readiness))
        .nest("/metrics", metrics.router())
}

/// Readiness for a load balancer or an orchestrator: 200 when Firelane is ready (see
/// [`Readiness`]) and the application's own database answers, 503 otherwise; Firelane's report
/// as JSON either way.
async fn health(State((db, readiness)): State<(Db, Readiness)>) -> Response {
    let mut report = match readiness {
        Readiness::Server(check) => check.check().await,
        Readiness::Client(client) => client.health().await,
    };
    if let Err(e) = db.ping().await {
        report.ready = false;
        report
            .problems
            .push(format!("the application's database: {e}"));
    }
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(report)).into_response()
}

/// Good enough for a form: something@something, no spaces, not too long.
fn plausible_email(email: &str) -> bool {
    email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email
            .split_once('@')
            .is_some_and(|(user, domain)| !user.is_empty() && domain.contains('.'))
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n<body>{body}</body></html>\n",
        escape(title)
    ))
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An unexpected failure: logged, answered with 500.
#[derive(Debug)]
struct AppError(BoxError);

impl<E: Into<BoxError>> From<E> for AppError {
    fn from(e: E) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::error!(error = %self.0, "request failed");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            page("Error", "<p>Something went wrong; please try again.</p>"),
        )
            .into_response()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let admin = Admin {
            password: "pw".into(),
            session: "abc".into(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            "theme=dark; web_app_admin=abc".parse().unwrap(),
        );
        assert!(admin.is_logged_in(&headers));
        headers.insert(header::COOKIE, "web_app_admin=abd".parse().unwrap());
        assert!(!admin.is_logged_in(&headers));
        assert!(!admin.is_logged_in(&HeaderMap::new()));
    }

    #[test]
    fn emails_are_checked_loosely() {
        assert!(plausible_email("ada@example.com"));
        assert!(!plausible_email("ada"));
        assert!(!plausible_email("@example.com"));
        assert!(!plausible_email("a da@example.com"));
    }
}
