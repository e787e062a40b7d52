//! Shared by the end-to-end tests: the built `web-app` binary started as a child process, a
//! minimal HTTP client, waiting for jobs, and PostgreSQL's skip-or-fail rule.
#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use firelane::{Client, JobDetails, JobId, JobQuery, JobState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The administrator's password the tests start the app with.
pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// How long anything the tests wait for may take: generous, for a loaded 2-core machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// A running `web-app` process; killed if the test ends without stopping it, and its log
/// printed when the test fails.
pub(crate) struct App {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    log: PathBuf,
    /// Where it listens.
    pub(crate) addr: Option<SocketAddr>,
    /// Its Firelane server's id (not in `--mode web`).
    pub(crate) server_id: Option<String>,
}

impl App {
    /// Starts `web-app --mode <mode>` on `database_url`, on a free port, and waits until it
    /// says it listens and/or that its Firelane server started.
    pub(crate) fn start(mode: &str, database_url: &str, dir: &Path) -> App {
        let log = dir.join(format!("web-app-{mode}-{}.log", nanos()));
        let mut child = Command::new(env!("CARGO_BIN_EXE_web-app"))
            .args(["--mode", mode, "--listen", "127.0.0.1:0"])
            // Nothing from the test's own environment (CI sets DATABASE_URL for its
            // PostgreSQL tests): only what is given here.
            .env("DATABASE_URL", database_url)
            .env("ADMIN_PASSWORD", PASSWORD)
            .env("RUST_LOG", "info,sqlx=warn")
            .env_remove("LISTEN")
            .env_remove("PUBLIC_URL")
            .env_remove("CLEANUP_TIME_ZONE")
            .env_remove("UNCONFIRMED_DAYS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut app = App {
            child: Some(child),
            lines,
            log,
            addr: None,
            server_id: None,
        };
        let deadline = Instant::now() + PATIENCE;
        let wants_addr = true; // a worker serves its health and metrics
        let wants_server = mode != "web";
        while (wants_addr && app.addr.is_none()) || (wants_server && app.server_id.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = app.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("web-app --mode {mode} did not start within {PATIENCE:?}")
            });
            if let Some(addr) = line.strip_prefix("listening on http://") {
                app.addr = Some(addr.parse().unwrap());
            } else if let Some(rest) = line.strip_prefix("firelane server ") {
                app.server_id = rest.strip_suffix(" started").map(str::to_owned);
            }
        }
        app
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr.expect("started")
    }

    /// Sends SIGTERM and waits for the process to exit; returns its status and how long that
    /// took.
    pub(crate) fn stop(&mut self) -> (ExitStatus, Duration) {
        let child = self.child.as_mut().expect("running");
        let started = Instant::now();
        let killed = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -TERM failed");
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < PATIENCE,
                "web-app did not exit within {PATIENCE:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for App {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---\n{log}--- end ---", self.log.display());
        }
    }
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// An HTTP response, read whole.
#[derive(Debug)]
pub(crate) struct Response {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on a fresh connection: `GET` without a form, `POST` with one.
pub(crate) async fn http(
    addr: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    form: Option<&[(&str, &str)]>,
) -> Response {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let method = if form.is_some() { "POST" } else { "GET" };
    let body = form.map(encode_form).unwrap_or_default();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(cookie) = cookie {
        request.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    if form.is_some() {
        request.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {raw:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Response {
        status,
        headers,
        body,
    }
}

fn encode_form(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                b' ' => "+".to_owned(),
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The only job named `name`, once there is one.
pub(crate) async fn only_job_named(client: &Client, name: &str) -> JobId {
    let jobs = client.list(JobQuery::new().name(name)).await.unwrap();
    assert_eq!(jobs.len(), 1, "expected one {name} job: {jobs:?}");
    jobs[0].id
}

/// Waits until the job is in `state` (panics after [`PATIENCE`], naming where it is).
pub(crate) async fn wait_for_state(client: &Client, id: JobId, state: JobState) -> JobDetails {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let details = client.job(id).await.unwrap();
        if details.job.state == state {
            return details;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} ({}) is {} after {PATIENCE:?}, expected {state}: {details:?}",
            details.job.name,
            details.job.state
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The database the PostgreSQL tests use: `DATABASE_URL`, or the development machine's.
pub(crate) fn postgres_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Whether PostgreSQL answers: when it does not, CI (`CI=true`) fails, elsewhere the tests
/// are skipped with one line saying so.
pub(crate) async fn postgres_available() -> bool {
    static UP: OnceLock<bool> = OnceLock::new();
    if let Some(up) = UP.get() {
        return *up;
    }
    let url = postgres_url();
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        <sqlx::PgConnection as sqlx::Connection>::connect(&url),
    )
    .await;
    let up = match answer {
        Ok(Ok(conn)) => {
            let _ = sqlx::Connection::close(conn).await;
            true
        }
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer within 5 s".to_owned(),
            };
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!(
                    "PostgreSQL is not reachable at {url} ({why}); CI needs it (set DATABASE_URL)"
                );
            }
            static SAID: Once = Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "skipping web-app PostgreSQL tests: no server at {url} (set DATABASE_URL)"
                );
            });
            false
        }
    };
    *UP.get_or_init(|| up)
}

/// Two fresh schemas in the test database, dropped at the end: Firelane's, and the
/// application's (where its `users` table goes, through the connection's search path).
pub(crate) struct Schemas {
    pub(crate) firelane: String,
    pub(crate) app: String,
}

impl Schemas {
    pub(crate) async fn create() -> Schemas {
        let random = uuid::Uuid::new_v4().simple().to_string();
        let base = format!("webapp_t_{}_{}", std::process::id(), &random[..8]);
        let schemas = Schemas {
            firelane: base.clone(),
            app: format!("{base}_app"),
        };
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&postgres_url())
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA {}",
            schemas.app
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        schemas
    }

    /// The URL the app is started with: Firelane in its schema, the app's tables in theirs.
    pub(crate) fn app_url(&self) -> String {
        let url = postgres_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!(
            "{url}{sep}schema={}&options[search_path]={}",
            self.firelane, self.app
        )
    }

    /// Firelane's store, as the app opens it.
    pub(crate) fn firelane_url(&self) -> String {
        let url = postgres_url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}schema={}", self.firelane)
    }
}

impl Drop for Schemas {
    fn drop(&mut self) {
        let sql = format!(
            "DROP SCHEMA IF EXISTS {} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE",
            self.firelane, self.app
        );
        // A runtime of its own: drops may run outside any.
        let done = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let dropped = match <sqlx::PgConnection as sqlx::Connection>::connect(
                    &postgres_url(),
                )
                .await
                {
                    Ok(mut c) => sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut c)
                        .await
                        .map(drop),
                    Err(e) => Err(e),
                };
                if let Err(e) = dropped {
                    eprintln!("could not drop the test schemas: {e}");
                }
            });
        });
        let _ = done.join();
    }
}
