//! The `firelane` binary, run as a person would: each command, its output, and its errors.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};

struct Store {
    _dir: tempfile::TempDir,
    url: String,
}

fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cli.db");
    Store {
        url: format!("sqlite://{}", path.display()),
        _dir: dir,
    }
}

fn firelane(store: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_firelane"))
        .arg("--store")
        .arg(store)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("FIRELANE_STORE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}\n{}", stderr(o), stdout(o));
    stdout(o)
}

fn fails_with(o: &Output, needle: &str) {
    assert!(!o.status.success(), "expected failure, got: {}", stdout(o));
    assert!(
        stderr(o).contains(needle),
        "expected {needle:?} in: {}",
        stderr(o)
    );
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(o)).unwrap()
}

#[test]
fn smoke_demo_runs_every_kind_of_job_to_its_end() {
    let s = store();
    let out = firelane(&s.url, &["demo", "--smoke", "--timeout", "60"]);
    let table = ok(&out);
    for kind in [
        "fire-and-forget",
        "delayed",
        "retries",
        "panics",
        "continuation on failure",
        "cancels itself",
    ] {
        assert!(table.contains(kind), "{kind} missing from:\n{table}");
    }
    assert!(
        !table.contains("WRONG") && !table.contains("waiting"),
        "{table}"
    );
    let rows = json(&firelane(
        &s.url,
        &["--json", "jobs", "list", "--limit", "100"],
    ));
    assert!(rows.as_array().unwrap().len() >= 10);
    assert!(table.contains("demo-every-two-seconds"), "{table}");

    // The demo declared a recurring job: steer it.
    let id = "demo-every-two-seconds";
    let list = ok(&firelane(&s.url, &["recurring", "list"]));
    assert!(
        list.contains(id) && list.contains("*/2 * * * * *") && list.contains("active"),
        "{list}"
    );
    let triggered = ok(&firelane(&s.url, &["recurring", "trigger", id]));
    assert!(triggered.contains("enqueued job"), "{triggered}");
    ok(&firelane(&s.url, &["recurring", "pause", id]));
    let listed = json(&firelane(&s.url, &["--json", "recurring", "list"]));
    assert_eq!(listed[0]["paused"], true, "{listed}");
    ok(&firelane(&s.url, &["recurring", "resume", id]));
    let listed = json(&firelane(&s.url, &["--json", "recurring", "list"]));
    assert_eq!(listed[0]["paused"], false, "{listed}");
    ok(&firelane(&s.url, &["recurring", "remove", id]));
    fails_with(
        &firelane(&s.url, &["recurring", "remove", id]),
        "no recurring job with id",
    );
    fails_with(
        &firelane(&s.url, &["recurring", "trigger", "nope"]),
        "no recurring job with id",
    );
}

#[test]
fn enqueue_list_show_requeue_delete() {
    let s = store();
    let id = ok(&firelane(
        &s.url,
        &[
            "enqueue",
            "send_email",
            r#"{"user_id": 42}"#,
            "--queue",
            "emails",
        ],
    ))
    .trim()
    .to_owned();
    let later = json(&firelane(
        &s.url,
        &["--json", "enqueue", "report", "null", "--in", "10m"],
    ));
    let later = later["id"].as_str().unwrap().to_owned();

    let list = ok(&firelane(&s.url, &["jobs", "list"]));
    assert!(
        list.contains(&id) && list.contains("send_email") && list.contains("emails"),
        "{list}"
    );
    let scheduled = json(&firelane(
        &s.url,
        &["--json", "jobs", "list", "--state", "scheduled"],
    ));
    assert_eq!(scheduled.as_array().unwrap().len(), 1);
    assert_eq!(scheduled[0]["id"], later.as_str());

    let show = ok(&firelane(&s.url, &["jobs", "show", &id]));
    assert!(show.contains(r#"{"user_id":42}"#), "{show}");
    assert!(
        show.contains("no running server knows jobs named `send_email`"),
        "{show}"
    );
    let shown = json(&firelane(&s.url, &["--json", "jobs", "show", &id]));
    assert_eq!(shown["job"]["state"], "enqueued");
    assert_eq!(shown["waiting_for_a_server_that_knows_it"], true);

    ok(&firelane(&s.url, &["jobs", "requeue", &later]));
    let shown = json(&firelane(&s.url, &["--json", "jobs", "show", &later]));
    assert_eq!(shown["job"]["state"], "enqueued");

    let deleted = ok(&firelane(&s.url, &["jobs", "delete", &id, &later]));
    assert!(deleted.contains("deleted (was enqueued)"), "{deleted}");
    let again = firelane(&s.url, &["jobs", "delete", &id]);
    assert!(!again.status.success());
    assert!(stdout(&again).contains("refused: the job is deleted"));

    let stats = json(&firelane(&s.url, &["--json", "stats"]));
    assert_eq!(stats["stats"]["states"]["deleted"], 2);
    let table = ok(&firelane(&s.url, &["stats"]));
    assert!(
        table.contains("deleted") && table.contains("no server is running"),
        "{table}"
    );
    ok(&firelane(&s.url, &["migrate"]));
}

#[test]
fn bad_input_is_refused_and_writes_nothing() {
    let s = store();
    ok(&firelane(&s.url, &["migrate"]));
    fails_with(
        &firelane(&s.url, &["enqueue", "x", "{user_id: 1}"]),
        "not valid JSON",
    );
    fails_with(
        &firelane(&s.url, &["enqueue", "x", "1", "--in", "soon"]),
        "is not a duration",
    );
    fails_with(
        &firelane(&s.url, &["enqueue", "x", "1", "--at", "tomorrow"]),
        "RFC 3339",
    );
    fails_with(
        &firelane(&s.url, &["enqueue", "x", "1", "--queue", "Bad Queue"]),
        "invalid queue name",
    );
    fails_with(
        &firelane(&s.url, &["jobs", "show", "42"]),
        "is not a job id",
    );
    fails_with(
        &firelane(
            &s.url,
            &["jobs", "show", "01a20b91-ee48-76b0-a0be-5714617836c3"],
        ),
        "no job with id",
    );
    fails_with(
        &firelane(&s.url, &["jobs", "list", "--state", "running"]),
        "is not a job state",
    );
    // One unknown id among known ones: nothing is changed.
    let id = ok(&firelane(&s.url, &["enqueue", "x", "1"]))
        .trim()
        .to_owned();
    fails_with(
        &firelane(
            &s.url,
            &[
                "jobs",
                "delete",
                &id,
                "01a20b91-ee48-76b0-a0be-5714617836c3",
            ],
        ),
        "no job with id",
    );
    let stats = json(&firelane(&s.url, &["--json", "stats"]));
    assert_eq!(stats["stats"]["states"]["enqueued"], 1, "{stats}");
    assert!(stats["stats"]["states"].get("deleted").is_none(), "{stats}");
}

#[test]
fn bad_stores_are_named_with_the_fix() {
    fails_with(
        &firelane("mysql://localhost/db", &["stats"]),
        "sqlite://path/to/file.db",
    );
    // A PostgreSQL URL that cannot be used (no such role, or no server) names the store.
    fails_with(
        &firelane("postgres://no-such-role@127.0.0.1:1/db", &["stats"]),
        "cannot open the store postgres://no-such-role@127.0.0.1:1/db",
    );
    let missing_dir = "sqlite:///nonexistent-dir-for-firelane/x.db";
    fails_with(&firelane(missing_dir, &["stats"]), "cannot open the store");

    let dir = tempfile::tempdir().unwrap();
    let garbage: &Path = &dir.path().join("garbage.db");
    std::fs::write(
        garbage,
        b"this is not a database, just text that is long enough to fill a header page",
    )
    .unwrap();
    fails_with(
        &firelane(&format!("sqlite://{}", garbage.display()), &["stats"]),
        "not a Firelane store",
    );
}

/// `firelane dashboard`: starts, answers the JSON API and a page, and stops on Ctrl-C (SIGINT)
/// after finishing.
#[cfg(unix)]
#[test]
fn dashboard_serves_the_api_and_stops_on_ctrl_c() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpStream;
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let s = store();
    ok(&firelane(&s.url, &["enqueue", "send_email", "42"]));
    let mut child = Command::new(env!("CARGO_BIN_EXE_firelane"))
        .args(["--store", &s.url, "dashboard", "--listen", "127.0.0.1:0"])
        .env_remove("FIRELANE_STORE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    stderr.read_line(&mut banner).unwrap();
    assert!(
        banner.contains("local requests only") && banner.contains("Ctrl-C"),
        "{banner}"
    );
    let url = banner
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {banner:?}"));
    let addr = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    let http_get = |path: &str| {
        let mut conn = TcpStream::connect(&addr).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).unwrap();
        answer
    };
    let stats = http_get("/api/stats");
    assert!(stats.starts_with("HTTP/1.1 200"), "{stats}");
    let body = &stats[stats.find("\r\n\r\n").unwrap() + 4..];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["states"]["enqueued"], 1, "{json}");
    let page = http_get("/jobs/enqueued");
    assert!(
        page.starts_with("HTTP/1.1 200") && page.contains("send_email"),
        "{page}"
    );

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(exit.success(), "exit {exit:?}: {rest}");
    assert!(rest.contains("stopped"), "{rest}");
}

#[test]
fn dashboard_on_a_busy_address_says_what_to_do() {
    let s = store();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    fails_with(
        &firelane(&s.url, &["dashboard", "--listen", &addr]),
        "pass another address with --listen",
    );
}

/// Each throughput scenario of the bench runs its jobs to the end and reports its rates (the
/// bench checks the count of succeeded jobs itself and fails otherwise).
#[test]
fn bench_scenarios_run_their_jobs_and_report() {
    let s = store();
    for scenario in ["enqueue", "drain", "burst"] {
        let out = json(&firelane(
            &s.url,
            &[
                "bench",
                "--scenario",
                scenario,
                "--jobs",
                "300",
                "--concurrency",
                "4",
                "--json",
            ],
        ));
        assert_eq!(out["scenario"], scenario);
        assert_eq!(out["jobs"], 300);
        assert!(out["enqueue_per_s"].as_f64().unwrap() > 0.0, "{out}");
        if scenario == "enqueue" {
            assert!(out["drain_per_s"].is_null(), "{out}");
        } else {
            assert!(out["drain_per_s"].as_f64().unwrap() > 0.0, "{out}");
        }
    }
}
