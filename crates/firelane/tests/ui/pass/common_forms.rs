//! The forms a job function takes, with no warning under strict lints.
#![deny(warnings, missing_docs, unreachable_pub, missing_debug_implementations)]

use std::time::Duration;

use firelane::prelude::*;
use serde::{Deserialize, Serialize};

/// Application state.
#[derive(Clone, Debug)]
pub struct Mailer;

/// A stored argument of the application's own type.
#[derive(Debug, Serialize, Deserialize)]
pub struct Address {
    /// Where to send.
    pub email: String,
}

/// Every option, state by pattern, the context, a `Result<(), JobError>`.
#[firelane::job(
    name = "emails.welcome",
    queue = "emails",
    priority = -1,
    retries = ["1s", "30s", "5m", "1h", "1d"],
    timeout = "1500ms",
)]
pub async fn send_welcome_email(
    user_id: i64,
    address: Address,
    State(mailer): State<Mailer>,
    ctx: JobContext,
) -> Result<(), JobError> {
    let _ = (user_id, address.email, mailer, ctx.attempt());
    Ok(())
}

/// No arguments, no result.
#[firelane::job]
pub async fn tick() {}

/// A count of retries, a timeout in seconds, any error type, a cancellation, a mutable argument.
#[firelane::job(retries = 3, timeout = 90)]
pub async fn download(
    mut url: String,
    cancel: Cancellation,
    state: firelane::State<Mailer>,
) -> Result<(), std::io::Error> {
    url.push('/');
    if cancel.is_cancelled() {
        return Err(std::io::Error::other(format!("{url} cancelled, {:?}", state.0)));
    }
    Ok(())
}

/// An explicit `()`.
#[firelane::job]
pub async fn explicit_unit(count: u32) -> () {
    let _ = count;
}

/// Serde attributes on arguments, an optional argument, a raw identifier.
#[firelane::job]
pub async fn report(
    #[serde(default)] locale: String,
    #[serde(rename = "n")] pages: Option<u32>,
    r#type: String,
) {
    let _ = (locale, pages, r#type);
}

mod private_jobs {
    use firelane::prelude::*;

    #[firelane::job]
    async fn private(value: u8) -> Result<(), JobError> {
        let _ = value;
        Ok(())
    }

    #[firelane::job(queue = "crate_wide")]
    pub(crate) async fn crate_wide(value: u8) {
        let _ = value;
    }

    pub(crate) fn request() -> String {
        format!("{:?}", private::args(1))
    }
}

fn main() {
    let _ = send_welcome_email::args(
        42,
        Address {
            email: "ada@example.com".into(),
        },
    );
    let _ = tick::args().queue("other").priority(3);
    let _ = explicit_unit::args(1);
    let _ = download::args("https://example.com".into()).timeout(Duration::from_secs(1));
    let _ = report::args("tr".into(), None, "summary".into());
    let _ = private_jobs::request();
    let _ = private_jobs::crate_wide::args(1);

    let _ = |storage: firelane::SqliteStorage| {
        Server::builder(storage)
            .register(send_welcome_email)
            .register(tick)
            .register(download)
            .register(report)
            .register(private_jobs::crate_wide)
            .state(Mailer)
    };
    assert_eq!(<send_welcome_email as Job>::NAME, "emails.welcome");
    assert_eq!(<tick as Job>::NAME, "tick");
    assert_eq!(<report as Job>::NAME, "report");
}
