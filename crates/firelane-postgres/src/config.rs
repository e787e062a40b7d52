//! Settings of a PostgreSQL store.

use std::time::Duration;

use firelane_core::Error;

/// The schema Firelane uses unless told otherwise.
pub const DEFAULT_SCHEMA: &str = "firelane";

/// How to open a [`crate::PostgresStorage`].
///
/// ```
/// use std::time::Duration;
/// use firelane_postgres::PostgresConfig;
///
/// let config = PostgresConfig::new("postgres://app@db.internal/app")
///     .schema("jobs")
///     .max_connections(20)
///     .acquire_timeout(Duration::from_secs(5));
/// assert_eq!(config.schema_name(), "jobs");
///
/// // The schema can also come from the URL:
/// let config = PostgresConfig::from_url("postgres://app@db.internal/app?schema=jobs")?;
/// assert_eq!(config.schema_name(), "jobs");
/// # Ok::<(), firelane_core::Error>(())
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The connection URL, without Firelane's own parameters.
    pub(crate) url: String,
    /// The schema Firelane's tables live in.
    pub(crate) schema: String,
    /// The most connections the pool opens.
    pub(crate) max_connections: u32,
    /// How long an operation waits for a connection (and the first connection for the
    /// server) before it fails.
    pub(crate) acquire_timeout: Duration,
    /// Whether to create or upgrade the schema at start (otherwise it must be at the version
    /// this build knows).
    pub(crate) migrate: bool,
}

impl PostgresConfig {
    /// Settings for the database at `url` (`postgres://user:password@host:port/database`),
    /// with the defaults: schema `firelane`, up to 10 connections, a 10 s acquire timeout.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            migrate: true,
        }
    }

    /// Settings from a URL, which may name the schema with a `schema` parameter
    /// (`postgres://host/db?schema=jobs`); the other parameters are sqlx's.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an empty or overlong schema name.
    pub fn from_url(url: &str) -> Result<Self, Error> {
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b, Some(q)),
            None => (url, None),
        };
        let mut schema = None;
        let mut kept = Vec::new();
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("schema", v)) => schema = Some(percent_decode(v)),
                _ => kept.push(pair),
            }
        }
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config = Self::new(url);
        if let Some(s) = schema {
            config = config.schema(s);
        }
        config.check()?;
        Ok(config)
    }

    /// The schema to keep Firelane's tables in (default `firelane`); it is created if missing.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The schema's name.
    pub fn schema_name(&self) -> &str {
        &self.schema
    }

    /// The most connections to open (default 10). A server uses a few at once: its fetcher,
    /// completer, heartbeat and background passes.
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = n;
        self
    }

    /// How long an operation waits for a connection before it fails (default 10 s): while the
    /// database is unreachable, calls return an error after this instead of hanging.
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// Whether to create or upgrade the schema when the store opens (default on). Off, a
    /// schema that is missing or older than this build is an error.
    pub fn migrate(mut self, migrate: bool) -> Self {
        self.migrate = migrate;
        self
    }

    /// The URL with its password hidden, for messages.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.schema.is_empty()
            || self.schema.len() > 63
            || self.schema.contains(['\'', '"', '\0'])
        {
            return Err(Error::Config(format!(
                "invalid PostgreSQL schema name {:?}: use 1 to 63 bytes without quotes",
                self.schema
            )));
        }
        if self.max_connections == 0 {
            return Err(Error::Config(
                "max_connections must be at least 1".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Decodes `%XX` escapes (enough for schema names).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (hex(bytes.get(i + 1)), hex(bytes.get(i + 2)))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A URL with the password of its user part replaced by `***`.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let Some((user, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match user.split_once(':') {
        Some((name, _)) => format!("{scheme}://{name}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_comes_from_the_url() {
        let c = PostgresConfig::from_url("postgres://u@h/db?sslmode=disable&schema=jobs%5F1")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.schema, "jobs_1");
        assert_eq!(c.url, "postgres://u@h/db?sslmode=disable");
        let c = PostgresConfig::from_url("postgres://u@h/db").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.schema, "firelane");
        assert!(PostgresConfig::from_url("postgres://u@h/db?schema=").is_err());
    }

    #[test]
    fn passwords_are_hidden() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x?a=b"),
            "postgres://app:***@db:5432/x?a=b"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("not a url"), "not a url");
    }
}
