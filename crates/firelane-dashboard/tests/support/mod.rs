//! What the route tests share: a store with jobs in every state, requests as a browser on this
//! machine sends them, and readers for the answers.
#![allow(clippy::unwrap_used, dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, Method, Request, StatusCode, header};
use chrono::Utc;
use firelane::storage::{Completion, FetchRequest, LeaseId, Outcome};
use firelane::{Client, Job, JobContext, JobError, JobId, JobOptions, ServerId};
use http_body_util::BodyExt;
use tower::ServiceExt;

/// A job that does nothing; its arguments are any JSON.
pub struct Echo;

impl Job for Echo {
    const NAME: &'static str = "echo";
    type Args = serde_json::Value;
    async fn run(&self, _: JobContext, _: serde_json::Value) -> Result<(), JobError> {
        Ok(())
    }
}

/// A job in the `mail` queue that does nothing.
pub struct Mail;

impl Job for Mail {
    const NAME: &'static str = "send_mail";
    type Args = u32;
    fn options() -> JobOptions {
        JobOptions::new().queue("mail")
    }
    async fn run(&self, _: JobContext, _: u32) -> Result<(), JobError> {
        Ok(())
    }
}

/// A store and a client over it.
pub async fn client() -> Client {
    Client::new(firelane::sqlite(":memory:").await.unwrap())
}

/// Fetches up to `n` enqueued jobs of `queue` as a server would: they become processing.
pub async fn take(client: &Client, queue: &str, n: usize) -> Vec<(JobId, LeaseId)> {
    let server = ServerId::generate();
    let fetched = client
        .storage()
        .fetch(FetchRequest::new(
            server,
            vec![queue.to_owned()],
            n,
            Utc::now(),
            Duration::from_secs(300),
        ))
        .await
        .unwrap();
    fetched.into_iter().map(|f| (f.id, f.lease)).collect()
}

/// Ends a processing job's attempt with `outcome`.
pub async fn finish(client: &Client, job: (JobId, LeaseId), outcome: Outcome) {
    client
        .storage()
        .complete(vec![Completion::new(
            job.0,
            job.1,
            ServerId::from_string("test-server".into()),
            outcome,
            Duration::from_millis(1234),
            Utc::now(),
        )])
        .await
        .unwrap();
}

/// Jobs in known states.
pub struct Seeded {
    pub enqueued: JobId,
    pub scheduled: JobId,
    pub processing: JobId,
    pub succeeded: JobId,
    pub failed: JobId,
    pub deleted: JobId,
    pub awaiting: JobId,
    pub retry: JobId,
}

/// One job in each state (and one waiting for a retry), made through the store's own
/// operations.
pub async fn seed(client: &Client) -> Seeded {
    let ids = client
        .enqueue_many((0..5).map(|i| Echo::with_args(serde_json::json!({ "n": i }))))
        .await
        .unwrap();
    // Fetch order is first in, first out: ids[0..4] become processing.
    let taken = take(client, "default", 4).await;
    assert_eq!(taken.len(), 4);
    finish(client, taken[0], Outcome::Succeeded).await;
    finish(
        client,
        taken[1],
        Outcome::Failed {
            error: "boom: the disk is full\ncaused by: no space left on device".into(),
        },
    )
    .await;
    finish(
        client,
        taken[3],
        Outcome::Retry {
            at: Utc::now() + chrono::Duration::hours(1),
            error: "gateway timed out".into(),
        },
    )
    .await;
    let processing = taken[2].0;
    let enqueued = *ids
        .iter()
        .find(|id| taken.iter().all(|t| t.0 != **id))
        .unwrap();
    let scheduled = client
        .schedule(
            Echo::with_args(serde_json::json!("later")),
            Duration::from_secs(3600),
        )
        .await
        .unwrap();
    let deleted = client
        .enqueue(Echo::with_args(serde_json::json!("to delete")))
        .await
        .unwrap();
    client.delete(deleted).await.unwrap();
    let awaiting = client
        .continue_with(
            processing,
            Echo::with_args(serde_json::json!("after")),
            firelane::ContinueOn::Succeeded,
        )
        .await
        .unwrap();
    Seeded {
        enqueued,
        scheduled,
        processing,
        succeeded: taken[0].0,
        failed: taken[1].0,
        deleted,
        awaiting,
        retry: taken[3].0,
    }
}

/// The address requests come from unless a test says otherwise.
pub fn local() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50000))
}

/// An app with the dashboard at `prefix` (`""` for the root).
pub fn mount(dashboard: &firelane_dashboard::Dashboard, prefix: &str) -> Router {
    if prefix.is_empty() {
        dashboard.router()
    } else {
        Router::new().nest(prefix, dashboard.router())
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// Asserts the status, showing the body when it differs.
    pub fn expect(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "body: {}", self.body);
        self
    }

    /// Asserts that the body contains each needle.
    pub fn has(&self, needles: &[&str]) -> &Self {
        for n in needles {
            assert!(
                self.body.contains(n),
                "{n:?} missing from the answer ({}):\n{}",
                self.status,
                self.body
            );
        }
        self
    }

    /// Asserts that the body contains none of the needles.
    pub fn lacks(&self, needles: &[&str]) -> &Self {
        for n in needles {
            assert!(
                !self.body.contains(n),
                "{n:?} should not be in the answer:\n{}",
                self.body
            );
        }
        self
    }

    /// How often `needle` occurs.
    pub fn count(&self, needle: &str) -> usize {
        self.body.matches(needle).count()
    }

    /// The anti-forgery token from the page's forms.
    pub fn csrf(&self) -> String {
        let start = self
            .body
            .find(r#"name="csrf" value=""#)
            .unwrap_or_else(|| panic!("no csrf field in:\n{}", self.body))
            + r#"name="csrf" value=""#.len();
        let end = self.body[start..].find('"').unwrap() + start;
        self.body[start..end].to_owned()
    }

    /// The `Set-Cookie` pair (`name=value`) of the flash cookie.
    pub fn flash_cookie(&self) -> String {
        self.headers
            .get_all(header::SET_COOKIE)
            .iter()
            .map(|v| v.to_str().unwrap())
            .find(|v| v.starts_with("firelane_flash="))
            .map(|v| v.split(';').next().unwrap().to_owned())
            .unwrap_or_else(|| panic!("no flash cookie in {:?}", self.headers))
    }

    /// The ids of the rows of a job list, in order.
    pub fn job_rows(&self) -> Vec<String> {
        self.body
            .split(r#"data-testid="job-row" data-job-id=""#)
            .skip(1)
            .map(|s| s[..s.find('"').unwrap()].to_owned())
            .collect()
    }

    /// The text of the element with `data-testid="{testid}"`, inner tags removed (the
    /// element must not hold another of its own kind).
    pub fn testid_text(&self, testid: &str) -> String {
        let marker = format!(r#"data-testid="{testid}""#);
        let at = self
            .body
            .find(&marker)
            .unwrap_or_else(|| panic!("no {marker} in:\n{}", self.body));
        let open = self.body[..at].rfind('<').unwrap();
        let tag: String = self.body[open + 1..]
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        let rest = &self.body[at..];
        let start = rest.find('>').unwrap() + 1;
        let end = rest.find(&format!("</{tag}>")).unwrap();
        let mut text = String::new();
        let mut in_tag = false;
        for c in rest[start..end].chars() {
            match c {
                '<' => in_tag = true,
                '>' => in_tag = false,
                c if !in_tag => text.push(c),
                _ => {}
            }
        }
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// A request builder with the peer address of a local browser.
pub struct Call {
    method: Method,
    uri: String,
    headers: Vec<(String, String)>,
    body: String,
    peer: Option<SocketAddr>,
}

impl Call {
    pub fn get(uri: &str) -> Self {
        Self {
            method: Method::GET,
            uri: uri.to_owned(),
            headers: Vec::new(),
            body: String::new(),
            peer: Some(local()),
        }
    }

    /// A form post as a browser on the dashboard's page sends it.
    pub fn post(uri: &str, fields: &[(&str, &str)]) -> Self {
        let body = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    "{}={}",
                    form_urlencoded::byte_serialize(k.as_bytes()).collect::<String>(),
                    form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
                )
            })
            .collect::<Vec<_>>()
            .join("&");
        Self {
            method: Method::POST,
            uri: uri.to_owned(),
            headers: Vec::new(),
            body,
            peer: Some(local()),
        }
        .header("content-type", "application/x-www-form-urlencoded")
        .header("host", "localhost:8080")
        .header("origin", "http://localhost:8080")
        .header("sec-fetch-site", "same-origin")
    }

    /// Sets a header, replacing one of the same name.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Removes a header.
    pub fn without(mut self, name: &str) -> Self {
        self.headers.retain(|(n, _)| n != name);
        self
    }

    pub fn peer(mut self, peer: Option<SocketAddr>) -> Self {
        self.peer = peer;
        self
    }

    pub async fn send(self, app: &Router) -> Answer {
        let mut builder = Request::builder().method(self.method).uri(&self.uri);
        for (n, v) in &self.headers {
            builder = builder.header(n.as_str(), v.as_str());
        }
        let mut request = builder.body(Body::from(self.body)).unwrap();
        if let Some(peer) = self.peer {
            request.extensions_mut().insert(ConnectInfo(peer));
        }
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }
}

/// `GET uri` from this machine.
pub async fn get(app: &Router, uri: &str) -> Answer {
    Call::get(uri).send(app).await
}
