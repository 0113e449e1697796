//! The database: one data-access layer for SQLite and PostgreSQL.
//!
//! Every query is written once, in the SQL that both dialects share (`$n` parameters,
//! `RETURNING`, `ON CONFLICT`, expression indexes), and runs through sqlx's `Any` driver.
//! Columns are BIGINT or TEXT only (times in Unix milliseconds, flags 0/1), because those two
//! types mean the same thing on both databases and through `Any`.
//!
//! Three pools, chosen per query by what it needs:
//! - `writer`: transactions. On SQLite it holds one connection, so writers queue in the
//!   process instead of failing with SQLITE_BUSY; on PostgreSQL it is the primary.
//! - `reader`: reads that must see the latest commit (who is calling, what may they do).
//! - `reports`: lists and exports that may lag a little; the read replica when one is set.

mod migrate;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyConnection, AnyPool, ConnectOptions, Executor};

pub use migrate::{SCHEMA_VERSION, migrate, migrate_to};

use crate::config::{Config, DatabaseUrl};

pub type Transaction = sqlx::Transaction<'static, sqlx::Any>;
pub type Connection = AnyConnection;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    writer: AnyPool,
    reader: AnyPool,
    reports: AnyPool,
    backend: Backend,
    has_replica: bool,
    /// The audit chain's HMAC key: the store writes and checks the chain.
    chain_key: crate::audit::ChainKey,
}

impl Store {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        if let Some(directory) = config.sqlite_directory() {
            std::fs::create_dir_all(&directory).with_context(|| {
                format!("creating the database directory {}", directory.display())
            })?;
        }
        let timeout = config.database_timeout;
        let primary = &config.database_url;
        let chain_key = crate::audit::ChainKey::from_secret(config.secret_key.as_ref());
        if primary.is_sqlite() {
            let url = sqlite_url(primary);
            let writer = pool(&url, 1, timeout).await?;
            let reader = pool(&url, 8, timeout).await?;
            Ok(Store {
                writer,
                reports: reader.clone(),
                reader,
                backend: Backend::Sqlite,
                has_replica: false,
                chain_key,
            })
        } else {
            let writer = pool(primary, 16, timeout).await?;
            let reports = match &config.replica_url {
                Some(replica) => pool(replica, 8, timeout).await?,
                None => writer.clone(),
            };
            Ok(Store {
                reader: writer.clone(),
                writer,
                reports,
                backend: Backend::Postgres,
                has_replica: config.replica_url.is_some(),
                chain_key,
            })
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn chain_key(&self) -> &crate::audit::ChainKey {
        &self.chain_key
    }

    pub async fn begin(&self) -> Result<Transaction, sqlx::Error> {
        self.writer.begin().await
    }

    /// A connection to the primary outside any transaction: each statement commits alone.
    pub async fn write(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
        self.writer.acquire().await
    }

    pub async fn read(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
        self.reader.acquire().await
    }

    pub async fn reports(&self) -> Result<sqlx::pool::PoolConnection<sqlx::Any>, sqlx::Error> {
        self.reports.acquire().await
    }

    /// Whether the database answers and carries the schema this binary expects.
    pub async fn check(&self) -> Result<(), String> {
        let mut connection = self.reader.acquire().await.map_err(|e| e.to_string())?;
        let version = migrate::current_version(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        if version == SCHEMA_VERSION {
            Ok(())
        } else {
            Err(format!(
                "schema version {version}, expected {SCHEMA_VERSION}"
            ))
        }
    }

    /// (pool, open connections, idle connections) for the metrics.
    pub fn pool_stats(&self) -> Vec<(&'static str, u32, usize)> {
        let stats = |pool: &AnyPool| (pool.size(), pool.num_idle());
        let (writer, reader, reports) = (
            stats(&self.writer),
            stats(&self.reader),
            stats(&self.reports),
        );
        match self.backend {
            Backend::Sqlite => vec![
                ("writer", writer.0, writer.1),
                ("reader", reader.0, reader.1),
            ],
            Backend::Postgres if self.has_replica => {
                vec![
                    ("primary", writer.0, writer.1),
                    ("replica", reports.0, reports.1),
                ]
            }
            Backend::Postgres => vec![("primary", writer.0, writer.1)],
        }
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        self.reports.close().await;
    }
}

/// SQLite URLs get `mode=rwc` so a file that does not exist yet is created.
fn sqlite_url(url: &DatabaseUrl) -> DatabaseUrl {
    let raw = url.expose();
    if raw.contains("mode=") {
        url.clone()
    } else if raw.contains('?') {
        DatabaseUrl::new(format!("{raw}&mode=rwc"))
    } else {
        DatabaseUrl::new(format!("{raw}?mode=rwc"))
    }
}

async fn pool(url: &DatabaseUrl, size: u32, timeout: Duration) -> anyhow::Result<AnyPool> {
    let options = AnyConnectOptions::from_str(url.expose())
        .with_context(|| format!("parsing the database URL {url:?}"))?
        .disable_statement_logging();
    let is_sqlite = url.is_sqlite();
    let pool = AnyPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(timeout)
        // sqlx already pings every connection when it is released (and closes a broken one);
        // a second ping on acquire cost every request another round trip.
        .test_before_acquire(false)
        .after_connect(move |connection, _| {
            Box::pin(async move {
                if is_sqlite {
                    // WAL lets readers run beside the writer; the busy timeout covers the
                    // moments another process (a CLI command) holds the write lock.
                    connection
                        .execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 5000;",
                        )
                        .await?;
                }
                Ok(())
            })
        })
        .connect_lazy_with(options);
    Ok(pool)
}

/// True for errors that mean "the database is not reachable right now" (answered 503),
/// as opposed to a bug or a constraint violation.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        // A connection that broke mid-conversation.
        sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database) => database
            .code()
            .is_some_and(|code| is_unavailable_state(&code)),
        _ => false,
    }
}

/// SQLSTATEs of a database that is going away or not taking work, rather than refusing this
/// statement: connection exceptions (class 08), an operator's or a crash's shutdown (57P01,
/// 57P02, 57P03), too many connections (53300), a read-only standby (25006); and SQLite's
/// busy and locked (5, 6) once its own timeout has passed.
fn is_unavailable_state(code: &str) -> bool {
    code.starts_with("08")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "53300" | "25006" | "5" | "6"
        )
}

/// The name of the unique index a write collided with, if that is what failed.
pub fn unique_violation(error: &sqlx::Error) -> Option<String> {
    let database_error = error.as_database_error()?;
    if !database_error.is_unique_violation() {
        return None;
    }
    let message = database_error.message().to_string();
    Some(
        database_error
            .constraint()
            .map(String::from)
            // SQLite names the columns instead of the index: "UNIQUE constraint failed: users.email".
            .unwrap_or(message),
    )
}

/// Flags are stored as 0/1 BIGINT on both databases.
pub fn flag(value: bool) -> i64 {
    i64::from(value)
}

/// A value bound into a dynamically built query.
#[derive(Debug, Clone)]
pub enum SqlValue {
    Int(i64),
    Text(String),
}

/// The WHERE clause of a list query with optional filters, numbered `$1..` in order.
/// Conditions are written with `?` where their value goes.
#[derive(Debug, Default)]
pub struct Conditions {
    clauses: Vec<String>,
    values: Vec<SqlValue>,
}

impl Conditions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, clause: &str, value: SqlValue) -> &mut Self {
        self.values.push(value);
        let placeholder = format!("${}", self.values.len());
        self.clauses.push(clause.replace('?', &placeholder));
        self
    }

    /// `" WHERE a AND b"`, or nothing.
    pub fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The placeholder the next bound value will take (for LIMIT/OFFSET after the filters).
    pub fn next_placeholder(&self, offset: usize) -> String {
        format!("${}", self.values.len() + offset)
    }

    /// The same binding for a plain `query` (rows read by name or streamed).
    pub fn bind_query<'q>(
        &'q self,
        mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
        for value in &self.values {
            query = match value {
                SqlValue::Int(number) => query.bind(*number),
                SqlValue::Text(text) => query.bind(text.as_str()),
            };
        }
        query
    }

    pub fn bind<'q, O>(
        &'q self,
        mut query: sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>>,
    ) -> sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>> {
        for value in &self.values {
            query = match value {
                SqlValue::Int(number) => query.bind(*number),
                SqlValue::Text(text) => query.bind(text.as_str()),
            };
        }
        query
    }
}

/// Escapes `%`, `_` and `\` for a LIKE pattern used with `ESCAPE '\'`.
pub fn like_pattern(fragment: &str) -> String {
    let mut escaped = String::with_capacity(fragment.len() + 2);
    escaped.push('%');
    for character in fragment.to_lowercase().chars() {
        if matches!(character, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped.push('%');
    escaped
}
