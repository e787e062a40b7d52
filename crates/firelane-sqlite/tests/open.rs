//! Opening stores: files, memory, and the databases that must be refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use firelane_core::chrono::Utc;
use firelane_core::{Error, JobState, NewJob, Storage};
use firelane_sqlite::{SqliteConfig, SqliteStorage};
use sqlx::{ConnectOptions, Executor};

fn url(path: &std::path::Path) -> String {
    format!("sqlite://{}", path.display())
}

async fn schema_rows(storage: &SqliteStorage) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM firelane_schema")
        .fetch_one(storage.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_file_is_created_and_reopened_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    assert!(!path.exists());

    let storage = SqliteStorage::connect(&url(&path)).await.unwrap();
    assert!(path.exists());
    assert_eq!(storage.backend(), "sqlite");
    let job = NewJob::new("report", "{}");
    let id = job.id;
    storage.enqueue(vec![job], Utc::now()).await.unwrap();
    assert_eq!(schema_rows(&storage).await, 7);
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(storage.pool())
        .await
        .unwrap();
    assert_eq!(mode, "wal");
    let limit: i64 = sqlx::query_scalar("PRAGMA journal_size_limit")
        .fetch_one(storage.pool())
        .await
        .unwrap();
    assert_eq!(limit, 64 << 20);
    storage.close().await;
    drop(storage);

    for form in [url(&path), format!("sqlite:{}", path.display())] {
        let reopened = SqliteStorage::connect(&form).await.unwrap();
        let details = reopened.job(id).await.unwrap().expect("the job persisted");
        assert_eq!(details.job.state, JobState::Enqueued);
        assert_eq!(details.history.len(), 1);
        assert_eq!(
            schema_rows(&reopened).await,
            7,
            "migrations are not applied twice"
        );
        reopened.close().await;
    }
}

#[tokio::test]
async fn memory_stores_work_and_are_private() {
    let now = Utc::now();
    let a = SqliteStorage::connect(":memory:").await.unwrap();
    let b = SqliteStorage::connect("sqlite::memory:").await.unwrap();
    let c = SqliteStorage::connect_with(SqliteConfig::memory())
        .await
        .unwrap();
    let job = NewJob::new("a", "{}");
    let id = job.id;
    a.enqueue(vec![job], now).await.unwrap();
    assert!(a.job(id).await.unwrap().is_some());
    assert!(b.job(id).await.unwrap().is_none());
    assert!(c.job(id).await.unwrap().is_none());
    assert_eq!(a.stats().await.unwrap().count(JobState::Enqueued), 1);
    assert_eq!(b.stats().await.unwrap().count(JobState::Enqueued), 0);

    // A clone is the same store, and the data outlives the original handle.
    let a2 = a.clone();
    drop(a);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(a2.job(id).await.unwrap().is_some());
}

#[tokio::test]
async fn an_empty_file_is_initialised() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.db");
    std::fs::write(&path, b"").unwrap();
    let storage = SqliteStorage::connect(&url(&path)).await.unwrap();
    assert_eq!(schema_rows(&storage).await, 7);
}

#[tokio::test]
async fn a_file_that_is_not_sqlite_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let garbage = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &garbage).unwrap();
    let err = SqliteStorage::connect(&url(&path)).await.unwrap_err();
    assert!(matches!(err, Error::NotFirelane(..)), "{err:?}");
    assert!(err.to_string().contains("not a SQLite database"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        garbage,
        "untouched"
    );
}

#[tokio::test]
async fn another_applications_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
            .await
            .unwrap();
        sqlx::Connection::close(conn).await.unwrap();
    }
    let err = SqliteStorage::connect(&url(&path)).await.unwrap_err();
    assert!(matches!(err, Error::NotFirelane(..)), "{err:?}");
    assert!(err.to_string().contains("users"), "{err}");

    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut conn)
            .await
            .unwrap();
    assert_eq!(tables, vec!["users".to_owned()], "no Firelane table added");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "delete", "journal mode not changed");
}

#[tokio::test]
async fn a_schema_from_a_newer_firelane_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jobs.db");
    let storage = SqliteStorage::connect(&url(&path)).await.unwrap();
    sqlx::query(
        "INSERT INTO firelane_schema (version, description, applied_at) VALUES (99, 'future', 0)",
    )
    .execute(storage.pool())
    .await
    .unwrap();
    storage.close().await;
    drop(storage);

    let err = SqliteStorage::connect(&url(&path)).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 99,
                known: 7
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_path_that_cannot_be_opened_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/jobs.db");
    let err = SqliteStorage::connect(&url(&path)).await.unwrap_err();
    match &err {
        Error::Connect { url, reason } => {
            assert!(url.contains("no/such/dir/jobs.db"), "{url}");
            assert!(reason.contains("does not exist"), "{reason}");
        }
        other => panic!("expected Connect, got {other:?}"),
    }

    let missing = dir.path().join("missing.db");
    let err = SqliteStorage::connect_with(SqliteConfig::file(&missing).create_if_missing(false))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(!missing.exists());

    let err = SqliteStorage::connect_with(SqliteConfig::file(dir.path()))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn a_url_of_another_database_is_a_config_error() {
    let err = SqliteStorage::connect("postgres://localhost/jobs")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err:?}");
}
