//! The application's database: its own `users` table, beside Firelane's tables in the same
//! SQLite file or the same PostgreSQL database, so that a user and their jobs are written in
//! one transaction.

use std::time::{SystemTime, UNIX_EPOCH};

use firelane::{ContinueOn, Initial, IntoStorage, NewJob, PostgresStorage, SqliteStorage, Storage};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};
use std::sync::Arc;
use std::time::Duration;

use crate::BoxError;
use crate::jobs;

/// The application's pool and the Firelane store, on the same database.
#[derive(Clone, Debug)]
pub(crate) enum Db {
    Sqlite {
        pool: SqlitePool,
        store: SqliteStorage,
    },
    Postgres {
        pool: PgPool,
        store: PostgresStorage,
    },
}

/// Runs the same sqlx expression on whichever pool the application uses: the statements below
/// are written to run on both (`$1`, `$2`, ... are understood by SQLite too).
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Db::Sqlite { pool: $pool, .. } => $body,
            Db::Postgres { pool: $pool, .. } => $body,
        }
    };
}

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS users (
    id           INTEGER PRIMARY KEY,
    email        TEXT NOT NULL UNIQUE,
    confirm_token TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL, -- seconds since the Unix epoch
    confirmed_at INTEGER,
    welcomed_at  INTEGER           -- set by the welcome email's continuation
)";

const POSTGRES_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS users (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email        TEXT NOT NULL UNIQUE,
    confirm_token TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    confirmed_at BIGINT,
    welcomed_at  BIGINT
)";

const INSERT_USER: &str =
    "INSERT INTO users (email, confirm_token, created_at) VALUES ($1, $2, $3) RETURNING id";

/// What a sign-up made.
#[derive(Debug)]
pub(crate) enum SignUp {
    Created { user_id: i64 },
    AlreadyRegistered,
}

impl Db {
    /// Opens Firelane's store and the application's pool on `url`, and creates the `users`
    /// table if needed.
    pub(crate) async fn open(url: &str) -> Result<Self, BoxError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            // Firelane keeps its tables in a schema of its own (`firelane`, or `?schema=`); the
            // application's pool connects to the same database and works in its usual
            // search path.
            let store = firelane::postgres(url).await?;
            let options: PgConnectOptions = without_param(url, "schema").parse()?;
            let pool = PgPoolOptions::new()
                .max_connections(5)
                .connect_with(options)
                .await?;
            sqlx::query(POSTGRES_SCHEMA).execute(&pool).await?;
            Ok(Db::Postgres { pool, store })
        } else {
            // One file for both: SQLite makes a transaction atomic within one database file
            // only. `shared=true` tells the store that the application's tables live there
            // too (it refuses, otherwise, a file holding tables other than its own).
            let sep = if url.contains('?') { '&' } else { '?' };
            let store = firelane::sqlite(&format!("{url}{sep}shared=true")).await?;
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            let path = path.split('?').next().unwrap_or(path);
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(
                    SqliteConnectOptions::new()
                        .filename(path)
                        // The store's writer and other processes take turns on the write lock.
                        .busy_timeout(Duration::from_secs(10)),
                )
                .await?;
            sqlx::query(SQLITE_SCHEMA).execute(&pool).await?;
            Ok(Db::Sqlite { pool, store })
        }
    }

    /// The Firelane store, for a `Client` or a `Server`.
    pub(crate) fn storage(&self) -> Arc<dyn Storage> {
        match self {
            Db::Sqlite { store, .. } => store.clone().into_storage(),
            Db::Postgres { store, .. } => store.clone().into_storage(),
        }
    }

    /// For the log.
    pub(crate) fn describe(&self) -> String {
        match self {
            Db::Sqlite { store, .. } => store.url().to_owned(),
            Db::Postgres { store, .. } => format!("{} (schema {})", store.url(), store.schema()),
        }
    }

    /// Creates the user and enqueues their welcome email and its continuation, all in one
    /// transaction: if anything fails, nothing is left behind, and no job ever runs for a user
    /// that does not exist.
    pub(crate) async fn sign_up(&self, email: &str) -> Result<SignUp, BoxError> {
        let token = uuid::Uuid::new_v4().simple().to_string();
        let created = match self {
            Db::Sqlite { pool, store } => {
                // IMMEDIATE: take SQLite's write lock now, waiting for it if need be, rather
                // than failing when the first write finds another writer got there first.
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let user_id: Option<i64> = sqlx::query_scalar(INSERT_USER)
                    .bind(email)
                    .bind(&token)
                    .bind(unix_now())
                    .fetch_one(&mut *tx)
                    .await
                    .map(Some)
                    .or_else(already_registered)?;
                let Some(user_id) = user_id else {
                    return Ok(SignUp::AlreadyRegistered);
                };
                store
                    .enqueue_in(&mut tx, welcome_jobs(user_id, email, &token)?)
                    .await?;
                tx.commit().await?; // the user and both jobs, or none of them
                user_id
            }
            Db::Postgres { pool, store } => {
                let mut tx = pool.begin().await?;
                let user_id: Option<i64> = sqlx::query_scalar(INSERT_USER)
                    .bind(email)
                    .bind(&token)
                    .bind(unix_now())
                    .fetch_one(&mut *tx)
                    .await
                    .map(Some)
                    .or_else(already_registered)?;
                let Some(user_id) = user_id else {
                    return Ok(SignUp::AlreadyRegistered);
                };
                store
                    .enqueue_in(&mut tx, welcome_jobs(user_id, email, &token)?)
                    .await?;
                tx.commit().await?;
                user_id
            }
        };
        Ok(SignUp::Created { user_id: created })
    }

    /// Confirms the sign-up holding `token`; `false` when no unconfirmed one does.
    pub(crate) async fn confirm(&self, token: &str) -> Result<bool, sqlx::Error> {
        const SQL: &str = "UPDATE users SET confirmed_at = $1
                           WHERE confirm_token = $2 AND confirmed_at IS NULL";
        let done = on_pool!(self, |pool| sqlx::query(SQL)
            .bind(unix_now())
            .bind(token)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(done > 0)
    }

    /// Records that the welcome email went out (once: a job may run more than once).
    pub(crate) async fn mark_welcomed(&self, user_id: i64) -> Result<(), sqlx::Error> {
        const SQL: &str = "UPDATE users SET welcomed_at = $1 WHERE id = $2 AND welcomed_at IS NULL";
        on_pool!(self, |pool| sqlx::query(SQL)
            .bind(unix_now())
            .bind(user_id)
            .execute(pool)
            .await
            .map(drop))
    }

    /// Removes the sign-ups not confirmed within `days` days; returns how many.
    pub(crate) async fn remove_unconfirmed(&self, days: i64) -> Result<u64, sqlx::Error> {
        const SQL: &str = "DELETE FROM users WHERE confirmed_at IS NULL AND created_at < $1";
        let cutoff = unix_now() - days.saturating_mul(24 * 3600);
        Ok(on_pool!(self, |pool| sqlx::query(SQL)
            .bind(cutoff)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Whether the database answers, for the health check.
    pub(crate) async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(self, |pool| sqlx::query("SELECT 1")
            .execute(pool)
            .await
            .map(drop))
    }

    /// Closes the application's pool and the store.
    pub(crate) async fn close(&self) {
        match self {
            Db::Sqlite { pool, store } => {
                pool.close().await;
                store.close().await;
            }
            Db::Postgres { pool, store } => {
                pool.close().await;
                store.close().await;
            }
        }
    }
}

/// The welcome email, and a continuation that runs once it has succeeded. Built from the
/// typed requests the `#[firelane::job]` functions make, as the store keeps them.
fn welcome_jobs(user_id: i64, email: &str, token: &str) -> Result<Vec<NewJob>, firelane::Error> {
    let welcome = jobs::send_welcome_email::args(user_id, email.to_owned(), token.to_owned())
        .into_new_job()?;
    let mut recorded = jobs::record_welcome_sent::args(user_id).into_new_job()?;
    recorded.initial = Initial::Awaiting {
        parent: welcome.id,
        on: ContinueOn::Succeeded,
    };
    Ok(vec![welcome, recorded])
}

/// A unique violation on insert means the email is taken: `None`, not an error.
fn already_registered(e: sqlx::Error) -> Result<Option<i64>, sqlx::Error> {
    match e.as_database_error() {
        Some(db) if db.is_unique_violation() => Ok(None),
        _ => Err(e),
    }
}

/// `url` without the query parameter `name` (Firelane's `schema`, which sqlx does not know).
fn without_param(url: &str, name: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| pair.split('=').next() != Some(name))
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// Seconds since the Unix epoch: the application stores times as plain integers, the same in
/// SQLite and PostgreSQL.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::without_param;

    #[test]
    fn firelanes_schema_parameter_is_left_out_of_the_applications_url() {
        assert_eq!(
            without_param("postgres://u@h/db?schema=jobs", "schema"),
            "postgres://u@h/db"
        );
        assert_eq!(
            without_param(
                "postgres://u@h/db?sslmode=disable&schema=jobs&x=1",
                "schema"
            ),
            "postgres://u@h/db?sslmode=disable&x=1"
        );
        assert_eq!(
            without_param("postgres://u@h/db", "schema"),
            "postgres://u@h/db"
        );
    }
}
