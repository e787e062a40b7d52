//! How to open a store: [`SqliteConfig`] and its URL forms.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use firelane_core::Error;

/// Where the database lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A file on disk.
    File(PathBuf),
    /// A private in-memory database, gone when the store is dropped.
    Memory,
}

/// SQLite's `synchronous` setting: how often SQLite waits for the disk.
///
/// The store runs in WAL mode, where [`Synchronous::Normal`] (the default) keeps the database
/// consistent after a crash of the process or of the machine, and may lose only the last
/// transactions committed before a power loss or an operating-system crash. [`Synchronous::Full`]
/// also keeps those, at the cost of one `fsync` per commit (which group commit shares among all
/// the operations of a batch).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Synchronous {
    /// Never wait for the disk: fastest; a power loss may corrupt the database.
    Off,
    /// Wait at checkpoints only (the default): durable across process crashes.
    #[default]
    Normal,
    /// Wait at every commit: durable across power loss.
    Full,
    /// Like `Full`, and also sync the directory after deleting a journal.
    Extra,
}

impl Synchronous {
    pub(crate) fn to_sqlx(self) -> sqlx::sqlite::SqliteSynchronous {
        use sqlx::sqlite::SqliteSynchronous as S;
        match self {
            Synchronous::Off => S::Off,
            Synchronous::Normal => S::Normal,
            Synchronous::Full => S::Full,
            Synchronous::Extra => S::Extra,
        }
    }
}

/// How to open a [`SqliteStorage`](crate::SqliteStorage).
///
/// ```
/// use std::time::Duration;
/// use firelane_sqlite::{SqliteConfig, Synchronous};
///
/// let config = SqliteConfig::file("firelane.db")
///     .read_pool_size(8)
///     .busy_timeout(Duration::from_secs(30))
///     .synchronous(Synchronous::Full);
/// assert_eq!(config.url(), "sqlite://firelane.db");
///
/// let memory = SqliteConfig::from_url("sqlite::memory:").unwrap();
/// assert!(memory.is_memory());
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct SqliteConfig {
    pub(crate) target: Target,
    pub(crate) read_pool_size: u32,
    pub(crate) busy_timeout: Duration,
    pub(crate) synchronous: Synchronous,
    pub(crate) create_if_missing: bool,
    pub(crate) max_batch: usize,
    pub(crate) shared: bool,
}

impl fmt::Debug for SqliteConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteConfig")
            .field("url", &self.url())
            .field("read_pool_size", &self.read_pool_size)
            .field("busy_timeout", &self.busy_timeout)
            .field("synchronous", &self.synchronous)
            .field("create_if_missing", &self.create_if_missing)
            .field("max_batch", &self.max_batch)
            .field("shared", &self.shared)
            .finish()
    }
}

impl SqliteConfig {
    /// The default number of read connections.
    pub const DEFAULT_READ_POOL_SIZE: u32 = 4;
    /// The default time SQLite waits for another connection's write lock.
    pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default largest number of operations committed in one transaction.
    pub const DEFAULT_MAX_BATCH: usize = 256;

    fn with_target(target: Target) -> Self {
        Self {
            target,
            read_pool_size: Self::DEFAULT_READ_POOL_SIZE,
            busy_timeout: Self::DEFAULT_BUSY_TIMEOUT,
            synchronous: Synchronous::Normal,
            create_if_missing: true,
            max_batch: Self::DEFAULT_MAX_BATCH,
            shared: false,
        }
    }

    /// A database file, created if missing (see [`SqliteConfig::create_if_missing`]).
    pub fn file(path: impl AsRef<Path>) -> Self {
        Self::with_target(Target::File(path.as_ref().to_path_buf()))
    }

    /// A private in-memory database: it lives as long as the store (and its clones) and is
    /// seen by no one else. Meant for tests and demos.
    pub fn memory() -> Self {
        Self::with_target(Target::Memory)
    }

    /// Reads a URL: `sqlite://path/to/file.db`, `sqlite:file.db`, `sqlite:///absolute/path.db`,
    /// `sqlite::memory:` or `:memory:`. A plain path is taken as a file. The query parameter
    /// `mode` is understood as sqlx does: `rwc` (the default) creates a missing file, `rw` does
    /// not, `memory` opens an in-memory database; `shared=true` sets
    /// [`SqliteConfig::shared_database`].
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let trimmed = url.trim();
        let rest = if let Some(rest) = trimmed.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = trimmed.strip_prefix("sqlite:") {
            rest
        } else if trimmed.contains("://") {
            return Err(Error::Config(format!(
                "{url:?} is not a SQLite URL: use sqlite://path/to/file.db or sqlite::memory:"
            )));
        } else {
            trimmed
        };
        let (path, query) = match rest.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (rest, None),
        };
        let mut config = if path == ":memory:" {
            Self::memory()
        } else if path.is_empty() && query.is_none() {
            return Err(Error::Config(format!(
                "{url:?} names no database file: use sqlite://path/to/file.db or sqlite::memory:"
            )));
        } else {
            Self::file(path)
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            match pair {
                "mode=rwc" => config.create_if_missing = true,
                "mode=rw" => config.create_if_missing = false,
                "mode=memory" => config.target = Target::Memory,
                "shared=true" => config.shared = true,
                "shared=false" => config.shared = false,
                other => {
                    return Err(Error::Config(format!(
                        "unknown parameter {other:?} in SQLite URL {url:?}: only mode=rwc, mode=rw, mode=memory and shared=true|false are understood; use SqliteConfig for other settings"
                    )));
                }
            }
        }
        if config.target == Target::File(PathBuf::new()) {
            return Err(Error::Config(format!(
                "{url:?} names no database file: use sqlite://path/to/file.db or sqlite::memory:"
            )));
        }
        Ok(config)
    }

    /// How many read-only connections serve `job`, `list_jobs`, `stats` and `servers` (default
    /// 4, at least 1). An in-memory database has no read pool: reads share its one connection.
    pub fn read_pool_size(mut self, size: u32) -> Self {
        self.read_pool_size = size.max(1);
        self
    }

    /// How long a write waits for another process's write lock before failing with an error
    /// (default 10 seconds). A read or write also waits at most this long (and at least 30
    /// seconds) for a connection of this store's own pools.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// SQLite's `synchronous` setting (default [`Synchronous::Normal`]).
    pub fn synchronous(mut self, synchronous: Synchronous) -> Self {
        self.synchronous = synchronous;
        self
    }

    /// Whether a missing database file is created (default `true`).
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create_if_missing = create;
        self
    }

    /// Whether the database file is shared with the application's own tables (default
    /// `false`). Firelane's tables and indexes all start with `firelane_`. Unshared, a database
    /// that has tables but not Firelane's is refused ([`Error::NotFirelane`]), so that a
    /// mistyped path never adds Firelane's tables to another application's database; shared,
    /// Firelane adds its tables beside the application's. Sharing the file is what lets an
    /// application enqueue inside its own transactions
    /// ([`SqliteStorage::enqueue_in`](crate::SqliteStorage)).
    pub fn shared_database(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// The largest number of write operations committed together in one transaction (default
    /// 256, at least 1).
    pub fn max_batch(mut self, ops: usize) -> Self {
        self.max_batch = ops.max(1);
        self
    }

    /// Whether this is an in-memory database.
    pub fn is_memory(&self) -> bool {
        self.target == Target::Memory
    }

    /// The database file, if it is one.
    pub fn path(&self) -> Option<&Path> {
        match &self.target {
            Target::File(p) => Some(p),
            Target::Memory => None,
        }
    }

    /// The store's address as text, for messages.
    pub fn url(&self) -> String {
        match &self.target {
            Target::File(p) => format!("sqlite://{}", p.display()),
            Target::Memory => "sqlite::memory:".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path_of(url: &str) -> Option<PathBuf> {
        SqliteConfig::from_url(url)
            .ok()
            .and_then(|c| c.path().map(Path::to_path_buf))
    }

    #[test]
    fn url_forms() {
        assert_eq!(
            path_of("sqlite://data/jobs.db"),
            Some("data/jobs.db".into())
        );
        assert_eq!(path_of("sqlite:jobs.db"), Some("jobs.db".into()));
        assert_eq!(
            path_of("sqlite:///var/jobs.db"),
            Some("/var/jobs.db".into())
        );
        assert_eq!(path_of("jobs.db"), Some("jobs.db".into()));
        for memory in [
            ":memory:",
            "sqlite::memory:",
            "sqlite://:memory:",
            "sqlite://?mode=memory",
        ] {
            assert!(
                SqliteConfig::from_url(memory).is_ok_and(|c| c.is_memory()),
                "{memory}"
            );
        }
        assert!(
            SqliteConfig::from_url("sqlite://jobs.db?mode=rw").is_ok_and(|c| !c.create_if_missing)
        );
        assert!(SqliteConfig::from_url("postgres://localhost/db").is_err());
        assert!(SqliteConfig::from_url("sqlite://").is_err());
        assert!(SqliteConfig::from_url("sqlite://jobs.db?cache=shared").is_err());
    }

    #[test]
    fn builder_clamps() {
        let c = SqliteConfig::memory().read_pool_size(0).max_batch(0);
        assert_eq!(c.read_pool_size, 1);
        assert_eq!(c.max_batch, 1);
        assert_eq!(c.synchronous, Synchronous::Normal);
        assert_eq!(c.busy_timeout, Duration::from_secs(10));
    }
}
