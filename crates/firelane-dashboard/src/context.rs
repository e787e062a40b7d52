//! What every handler needs: the shared state, the mount prefix, the flash message, and the
//! page layout built from them.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};

use crate::AuthorizeFn;

/// The dashboard's shared state.
pub(crate) struct Inner {
    pub(crate) client: firelane::Client,
    pub(crate) read_only: bool,
    pub(crate) authorize: Option<Arc<AuthorizeFn>>,
    pub(crate) title: String,
    pub(crate) csrf: String,
}

/// The path the dashboard is mounted at, without a trailing slash (empty at the root). Put
/// into each request's extensions by [`crate::access::guard`].
#[derive(Clone, Debug, Default)]
pub(crate) struct Prefix(pub(crate) String);

impl Prefix {
    /// The mount path, from the URI the application received and the one the dashboard's
    /// router sees (what is left once the application's `nest` took its part).
    pub(crate) fn of(parts: &Parts) -> Self {
        let inner = parts.uri.path();
        let original = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or(inner, |o| o.0.path());
        let prefix = if let Some(p) = original.strip_suffix(inner) {
            p
        } else if inner == "/" {
            // `/admin/jobs` reaches the nested router as `/`.
            original
        } else {
            ""
        };
        Self(prefix.trim_end_matches('/').to_owned())
    }
}

/// A fresh anti-forgery token: 32 random bytes in hex.
pub(crate) fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two strings in time that does not depend on where they differ.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The cookie that carries a message from an action to the page it redirects to.
pub(crate) const FLASH_COOKIE: &str = "firelane_flash";

/// A message shown once after an action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Flash {
    /// `ok` or `error`.
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

impl Flash {
    pub(crate) fn ok(message: impl Into<String>) -> Self {
        Self {
            kind: "ok",
            message: message.into(),
        }
    }

    pub(crate) fn error(message: impl Into<String>) -> Self {
        Self {
            kind: "error",
            message: message.into(),
        }
    }

    /// The cookie value: `kind~message`, percent-encoded.
    pub(crate) fn encode(&self) -> String {
        crate::views::encode_component(&format!("{}~{}", self.kind, self.message))
    }

    /// Reads the flash cookie from a request's headers.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let value = cookie(headers, FLASH_COOKIE)?;
        let text = crate::views::decode_component(value)?;
        let (kind, message) = text.split_once('~')?;
        let kind = match kind {
            "ok" => "ok",
            "error" => "error",
            _ => return None,
        };
        // A message is ours only if it is short; anything else is ignored.
        (message.len() <= 2000).then(|| Self {
            kind,
            message: message.to_owned(),
        })
    }
}

/// A cookie's raw value.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The request context every page and action takes.
pub(crate) struct Ctx {
    pub(crate) inner: Arc<Inner>,
    pub(crate) prefix: String,
    pub(crate) flash: Option<Flash>,
    /// The path and query the dashboard's router saw (relative to the prefix).
    pub(crate) here: String,
}

impl FromRequestParts<Arc<Inner>> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<Inner>,
    ) -> Result<Self, Self::Rejection> {
        let prefix = parts
            .extensions
            .get::<Prefix>()
            .cloned()
            .unwrap_or_else(|| Prefix::of(parts))
            .0;
        let htmx = parts.headers.contains_key("hx-request");
        Ok(Self {
            inner: Arc::clone(state),
            prefix,
            flash: if htmx {
                None
            } else {
                Flash::from_headers(&parts.headers)
            },
            here: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
        })
    }
}

/// What the page frame (`base.html`) shows around every page.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) prefix: String,
    pub(crate) title: String,
    pub(crate) page_title: String,
    pub(crate) active: &'static str,
    pub(crate) read_only: bool,
    pub(crate) local_only: bool,
    pub(crate) csrf: String,
    pub(crate) flash: Option<Flash>,
    pub(crate) asset_version: &'static str,
    /// Counts for the navigation, when the page read the stats.
    pub(crate) counts: Option<NavCounts>,
    /// The current path and query, relative to the prefix, for forms to come back to.
    pub(crate) here: String,
    /// The search box's text.
    pub(crate) search: String,
}

/// A link in the navigation.
#[derive(Clone, Debug)]
pub(crate) struct NavItem {
    pub(crate) key: &'static str,
    pub(crate) label: &'static str,
    pub(crate) href: String,
    pub(crate) count: Option<u64>,
    pub(crate) active: bool,
}

/// Jobs per state, for the navigation.
#[derive(Clone, Debug, Default)]
pub(crate) struct NavCounts {
    pub(crate) enqueued: u64,
    pub(crate) scheduled: u64,
    pub(crate) processing: u64,
    pub(crate) succeeded: u64,
    pub(crate) failed: u64,
    pub(crate) deleted: u64,
    pub(crate) awaiting: u64,
}

impl NavCounts {
    pub(crate) fn from_stats(stats: &firelane::Stats) -> Self {
        use firelane::JobState as S;
        Self {
            enqueued: stats.count(S::Enqueued),
            scheduled: stats.count(S::Scheduled),
            processing: stats.count(S::Processing),
            succeeded: stats.count(S::Succeeded),
            failed: stats.count(S::Failed),
            deleted: stats.count(S::Deleted),
            awaiting: stats.count(S::Awaiting),
        }
    }
}

impl Ctx {
    /// The frame for a page.
    pub(crate) fn layout(
        &self,
        active: &'static str,
        page_title: impl Into<String>,
        stats: Option<&firelane::Stats>,
    ) -> Layout {
        Layout {
            prefix: self.prefix.clone(),
            title: self.inner.title.clone(),
            page_title: page_title.into(),
            active,
            read_only: self.inner.read_only,
            local_only: self.inner.authorize.is_none(),
            csrf: self.inner.csrf.clone(),
            flash: self.flash.clone(),
            asset_version: crate::assets::version(),
            counts: stats.map(NavCounts::from_stats),
            here: self.here.clone(),
            search: String::new(),
        }
    }

    pub(crate) fn client(&self) -> &firelane::Client {
        &self.inner.client
    }
}

impl Layout {
    /// A link to a path inside the dashboard.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.prefix, path)
    }

    /// The overview's address: the prefix itself, or `/` at the root.
    pub(crate) fn home(&self) -> String {
        if self.prefix.is_empty() {
            "/".to_owned()
        } else {
            self.prefix.clone()
        }
    }

    /// The search box's text.
    pub(crate) fn search_text(&self) -> &str {
        &self.search
    }

    /// This crate's version.
    pub(crate) fn version(&self) -> &'static str {
        env!("CARGO_PKG_VERSION")
    }

    /// The navigation links, with counts when the page read them.
    pub(crate) fn nav(&self) -> Vec<NavItem> {
        let c = self.counts.as_ref();
        let item =
            |key: &'static str, label: &'static str, path: String, count: Option<u64>| NavItem {
                key,
                label,
                href: if path == "/" {
                    self.home()
                } else {
                    self.url(&path)
                },
                count,
                active: self.active == key,
            };
        vec![
            item("overview", "Overview", "/".to_owned(), None),
            item(
                "enqueued",
                "Enqueued",
                "/jobs/enqueued".to_owned(),
                c.map(|c| c.enqueued),
            ),
            item(
                "scheduled",
                "Scheduled",
                "/jobs/scheduled".to_owned(),
                c.map(|c| c.scheduled),
            ),
            item(
                "processing",
                "Processing",
                "/jobs/processing".to_owned(),
                c.map(|c| c.processing),
            ),
            item(
                "succeeded",
                "Succeeded",
                "/jobs/succeeded".to_owned(),
                c.map(|c| c.succeeded),
            ),
            item(
                "failed",
                "Failed",
                "/jobs/failed".to_owned(),
                c.map(|c| c.failed),
            ),
            item(
                "deleted",
                "Deleted",
                "/jobs/deleted".to_owned(),
                c.map(|c| c.deleted),
            ),
            item(
                "awaiting",
                "Awaiting",
                "/jobs/awaiting".to_owned(),
                c.map(|c| c.awaiting),
            ),
            item("retries", "Retries", "/jobs/retries".to_owned(), None),
            item("recurring", "Recurring", "/recurring".to_owned(), None),
            item("servers", "Servers", "/servers".to_owned(), None),
            item("queues", "Queues", "/queues".to_owned(), None),
        ]
    }
}
