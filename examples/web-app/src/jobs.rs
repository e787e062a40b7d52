//! The background jobs. Each `#[firelane::job]` function becomes a job type: a unit struct of
//! its name to register with the server, and `name::args(..)` to build a typed request. The
//! stored parameters are the job's arguments (JSON in the store); `State(..)` parameters are
//! given by the server that runs it.

use firelane::{JobContext, JobError, State};

use crate::db::Db;

/// The recurring cleanup's id: the dashboard lists it under this name.
pub(crate) const CLEANUP_ID: &str = "remove-unconfirmed-signups";

/// Sends the welcome email with the link that confirms the sign-up. Retried up to 5 times with
/// Hangfire's back-off when the mail service fails.
#[firelane::job(queue = "emails", retries = 5, timeout = "1m")]
pub(crate) async fn send_welcome_email(
    user_id: i64,
    email: String,
    confirm_token: String,
    State(mailer): State<Mailer>,
    ctx: JobContext,
) -> Result<(), JobError> {
    mailer
        .send(
            &email,
            "Welcome!",
            &format!(
                "Confirm your sign-up: {}/confirm/{confirm_token}",
                mailer.public_url
            ),
        )
        .await?;
    tracing::info!(user_id, attempt = ctx.attempt(), "welcome email sent");
    Ok(())
}

/// Records that the welcome email went out: a continuation of `send_welcome_email`, created in
/// the sign-up's transaction, enqueued by Firelane when that job succeeds.
#[firelane::job]
pub(crate) async fn record_welcome_sent(
    user_id: i64,
    State(db): State<Db>,
) -> Result<(), JobError> {
    db.mark_welcomed(user_id).await?;
    Ok(())
}

/// Removes sign-ups that were not confirmed within `older_than_days` days. Declared as a
/// recurring job by the server (nightly, see `main.rs`).
#[firelane::job]
pub(crate) async fn remove_unconfirmed_signups(
    older_than_days: i64,
    State(db): State<Db>,
) -> Result<(), JobError> {
    let removed = db.remove_unconfirmed(older_than_days).await?;
    tracing::info!(removed, older_than_days, "removed unconfirmed sign-ups");
    Ok(())
}

/// Sends email. This example's mailer writes the message to the log; a real one would call an
/// SMTP server or an email API here, and return its errors so that Firelane retries.
#[derive(Clone, Debug)]
pub(crate) struct Mailer {
    public_url: String,
}

impl Mailer {
    pub(crate) fn new(public_url: &str) -> Self {
        Self {
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    async fn send(&self, to: &str, subject: &str, body: &str) -> Result<(), std::io::Error> {
        tracing::info!(%to, %subject, %body, "email");
        Ok(())
    }
}
