//! Who is answered, what every answer carries, and how errors are shown.

use std::net::SocketAddr;
use std::sync::Arc;

use askama::Template;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};

use crate::context::{FLASH_COOKIE, Inner, Layout, Prefix, cookie, same_secret};
use crate::error::PageError;

/// The policy every page sends: scripts and styles from the dashboard only (inline styles are
/// allowed for the graphs), no framing, forms only to the dashboard.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
                   form-action 'self'; base-uri 'none'; object-src 'none'";

/// The page shown to a request that is not answered.
#[derive(Template)]
#[template(path = "refused.html")]
struct RefusedPage<'a> {
    title: &'a str,
    message: &'a str,
    hint: &'a str,
}

/// The page shown for an error, in the dashboard's frame.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    layout: Layout,
    error: &'a PageError,
}

/// Why a request is not answered, if it is not.
fn refusal(inner: &Inner, parts: &Parts) -> Option<(&'static str, &'static str)> {
    if let Some(hook) = &inner.authorize {
        return (!hook(parts)).then_some((
            "The application's authorization hook refused this request.",
            "Sign in to the application, or ask its administrators for access.",
        ));
    }
    match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        None => Some((
            "This dashboard answers requests from the local machine only, and cannot tell where this request comes from: the application serves it without the peer's address.",
            "Serve the application with `app.into_make_service_with_connect_info::<SocketAddr>()`, or give the dashboard an authorization hook with `Dashboard::authorize(..)`.",
        )),
        Some(ConnectInfo(addr)) if !addr.ip().to_canonical().is_loopback() => Some((
            "This dashboard answers requests from the local machine only.",
            "Open it from the machine it runs on, or have the application give the dashboard an authorization hook with `Dashboard::authorize(..)`.",
        )),
        Some(_) => None,
    }
}

/// The middleware around every route: decides access, renders errors, adds security headers,
/// and clears a flash message once a page has shown it.
pub(crate) async fn guard(State(inner): State<Arc<Inner>>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let prefix = Prefix::of(&parts);
    parts.extensions.insert(prefix.clone());
    let is_api = parts.uri.path().starts_with("/api/");
    let shows_flash = cookie(&parts.headers, FLASH_COOKIE).is_some()
        && !parts.headers.contains_key("hx-request")
        && parts.method == Method::GET;

    let mut response = if let Some((message, hint)) = refusal(&inner, &parts) {
        refused(is_api, message, hint)
    } else {
        next.run(Request::from_parts(parts, body)).await
    };

    if let Some(error) = response.extensions_mut().remove::<PageError>() {
        response = render_error(&inner, &prefix, is_api, &error);
    }
    let headers = response.headers_mut();
    set_security_headers(headers);
    let is_page = response.status() == StatusCode::OK
        && response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/html"));
    if shows_flash && is_page {
        let clear = format!(
            "{FLASH_COOKIE}=; Path={}; Max-Age=0; HttpOnly; SameSite=Strict",
            cookie_path(&prefix.0)
        );
        if let Ok(v) = HeaderValue::from_str(&clear) {
            response.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    response
}

/// The path a cookie of the dashboard is scoped to.
pub(crate) fn cookie_path(prefix: &str) -> &str {
    if prefix.is_empty() { "/" } else { prefix }
}

fn set_security_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
}

fn refused(is_api: bool, message: &str, hint: &str) -> Response {
    if is_api {
        return (
            StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({ "error": format!("{message} {hint}") })),
        )
            .into_response();
    }
    let page = RefusedPage {
        title: "Forbidden",
        message,
        hint,
    };
    match page.render() {
        Ok(html) => (StatusCode::FORBIDDEN, Html(html)).into_response(),
        Err(_) => (StatusCode::FORBIDDEN, format!("{message} {hint}")).into_response(),
    }
}

fn render_error(inner: &Inner, prefix: &Prefix, is_api: bool, error: &PageError) -> Response {
    if is_api {
        return (
            error.status,
            axum::Json(serde_json::json!({ "error": error.message })),
        )
            .into_response();
    }
    let layout = Layout {
        prefix: prefix.0.clone(),
        title: inner.title.clone(),
        page_title: error.title.to_owned(),
        active: "",
        read_only: inner.read_only,
        local_only: inner.authorize.is_none(),
        csrf: inner.csrf.clone(),
        flash: None,
        asset_version: crate::assets::version(),
        counts: None,
        here: "/".to_owned(),
        search: String::new(),
    };
    let page = ErrorPage { layout, error };
    match page.render() {
        Ok(html) => (error.status, Html(html)).into_response(),
        Err(_) => (error.status, error.message.clone()).into_response(),
    }
}

/// Checks that a `POST` may act: the dashboard is not read-only, the browser says the request
/// comes from the dashboard's own origin, and it carries the anti-forgery token (form field
/// `csrf` or header `X-Firelane-Csrf`).
pub(crate) fn check_action(
    inner: &Inner,
    headers: &HeaderMap,
    form_token: Option<&str>,
) -> Result<(), PageError> {
    if inner.read_only {
        return Err(PageError::forbidden(
            "This dashboard is read-only: actions are disabled.",
        ));
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok())
        && !matches!(site, "same-origin" | "none")
    {
        return Err(PageError::forbidden(format!(
            "Refused a {site} request: actions are taken from the dashboard's own pages only."
        )));
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| o.split_once("://"))
            .map(|(_, h)| h);
        if host.is_none() || origin_host != host {
            return Err(PageError::forbidden(
                "Refused a request from another origin: actions are taken from the dashboard's own pages only.",
            ));
        }
    }
    let token = headers
        .get("x-firelane-csrf")
        .and_then(|v| v.to_str().ok())
        .or(form_token);
    match token {
        Some(t) if same_secret(t, &inner.csrf) => Ok(()),
        Some(_) => Err(PageError::forbidden(
            "The anti-forgery token is wrong (the dashboard may have restarted): reload the page and try again.",
        )),
        None => Err(PageError::forbidden(
            "The request carries no anti-forgery token: actions are taken from the dashboard's own pages only.",
        )),
    }
}
