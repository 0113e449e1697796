//! The database: one data-access layer for SQLite and PostgreSQL, each in its own types.
//!
//! Each query is written once and compiled for both of sqlx's typed drivers (`with_db!`):
//! values are bound and read natively (a time is `timestamptz` on PostgreSQL and INTEGER
//! milliseconds on SQLite, a flag `boolean` or 0/1, the audit details `jsonb` or JSON text,
//! an address `inet` or text; see `types.rs`), and the SQL text is the one both dialects
//! accept. Where they differ, the store says so by name (`Backend`), never by templating.
//!
//! Three pools, chosen per query by what it needs:
//! - `writer`: transactions. On SQLite it holds one connection, so writers queue in the
//!   process instead of failing with SQLITE_BUSY; on PostgreSQL it is the primary.
//! - `reader`: reads that must see the latest commit (who is calling, what may they do).
//! - `reports`: lists, audit queries and exports: the read replica when one is set and has
//!   replayed every commit made before the read began (`replica.rs`), else the reader.

pub mod auth_cache;
mod migrate;
pub mod replica;
pub mod types;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, PgConnection, PgPool, Postgres, Sqlite, SqliteConnection, SqlitePool};

pub use auth_cache::AuthCache;
pub use migrate::{SCHEMA_VERSION, migrate, migrate_to};
pub use types::{CaseInsensitive, Inet};

use crate::clock::Timestamp;

use crate::config::{Config, DatabaseUrl};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One pool of either database.
#[derive(Clone)]
pub enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// A connection to either database, borrowed for some statements: what `with_db!` runs on.
pub enum Db<'c> {
    Postgres(&'c mut PgConnection),
    Sqlite(&'c mut SqliteConnection),
}

/// Anything statements can run on: a transaction, a pooled connection, a borrowed one.
pub trait AsDb: Send {
    fn db(&mut self) -> Db<'_>;

    /// Says that a statement just run changed account `user_id` or one of its sessions: the
    /// auth cache forgets the account once the change is committed (a transaction's commit, or
    /// at once on a plain connection).
    fn changed(&mut self, user_id: i64);
}

/// What the capabilities' store functions take: `&mut Connection` is a transaction as well as
/// a plain connection (both dereference to it), so a function does not care which it is in.
pub type Connection = dyn AsDb;

/// Runs the same statement on whichever database `$connection` is on. The body is compiled
/// once per driver, so every value it binds or reads must have both databases' encodings.
///
/// ```ignore
/// let user = with_db!(connection, |db| sqlx::query_as::<_, User>(SQL).bind(id).fetch_optional(db).await)?;
/// ```
#[macro_export]
macro_rules! with_db {
    ($connection:expr, |$db:ident| $body:expr) => {
        match $crate::store::AsDb::db(&mut *$connection) {
            $crate::store::Db::Postgres($db) => $body,
            $crate::store::Db::Sqlite($db) => $body,
        }
    };
}

/// Runs a statement that returns no rows on whichever database `$connection` is on: the
/// number of rows it changed.
#[macro_export]
macro_rules! execute {
    ($connection:expr, $query:expr) => {
        $crate::with_db!($connection, |db| $query
            .execute(db)
            .await
            .map(|done| done.rows_affected()))
    };
}

impl<T: AsDb + ?Sized> AsDb for &mut T {
    fn db(&mut self) -> Db<'_> {
        (**self).db()
    }

    fn changed(&mut self, user_id: i64) {
        (**self).changed(user_id)
    }
}

/// A borrowed connection knows neither its transaction nor the cache: store functions that
/// write accounts or sessions take a transaction or a pooled connection, never this.
impl AsDb for Db<'_> {
    fn db(&mut self) -> Db<'_> {
        match self {
            Db::Postgres(connection) => Db::Postgres(connection),
            Db::Sqlite(connection) => Db::Sqlite(connection),
        }
    }

    fn changed(&mut self, user_id: i64) {
        tracing::error!(user_id, "an account changed through a borrowed connection");
    }
}

/// A transaction: dropped without `commit`, it rolls back. It remembers whose accounts it
/// changed, for the auth cache to forget after the commit.
pub struct Tx<'c> {
    inner: TxInner<'c>,
    changed: Vec<i64>,
    cache: Option<Arc<AuthCache>>,
}

enum TxInner<'c> {
    Postgres(sqlx::Transaction<'c, Postgres>),
    Sqlite(sqlx::Transaction<'c, Sqlite>),
}

/// A transaction on a connection of its own from the writer pool.
pub type Transaction = Tx<'static>;

impl<'c> Tx<'c> {
    fn new(inner: TxInner<'c>, cache: Option<Arc<AuthCache>>) -> Self {
        Tx {
            inner,
            changed: Vec::new(),
            cache,
        }
    }

    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Postgres(transaction) => transaction.commit().await?,
            TxInner::Sqlite(transaction) => transaction.commit().await?,
        }
        if let Some(cache) = &self.cache {
            for user_id in &self.changed {
                cache.invalidate(*user_id);
            }
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Postgres(transaction) => transaction.rollback().await,
            TxInner::Sqlite(transaction) => transaction.rollback().await,
        }
    }
}

impl AsDb for Tx<'_> {
    fn db(&mut self) -> Db<'_> {
        match &mut self.inner {
            TxInner::Postgres(transaction) => Db::Postgres(transaction),
            TxInner::Sqlite(transaction) => Db::Sqlite(transaction),
        }
    }

    fn changed(&mut self, user_id: i64) {
        if !self.changed.contains(&user_id) {
            self.changed.push(user_id);
        }
    }
}

/// A connection taken from a pool, returned to it when dropped.
pub struct PooledConnection {
    inner: PooledInner,
    cache: Option<Arc<AuthCache>>,
}

enum PooledInner {
    Postgres(PoolConnection<Postgres>),
    Sqlite(PoolConnection<Sqlite>),
}

impl PooledConnection {
    /// Closes the connection instead of returning it to the pool (its session state is not
    /// what the pool promises).
    pub fn close_on_drop(&mut self) {
        match &mut self.inner {
            PooledInner::Postgres(connection) => connection.close_on_drop(),
            PooledInner::Sqlite(connection) => connection.close_on_drop(),
        }
    }

    /// A transaction on this connection.
    pub async fn begin(&mut self) -> Result<Tx<'_>, sqlx::Error> {
        let inner = match &mut self.inner {
            PooledInner::Postgres(connection) => {
                TxInner::Postgres(sqlx::Connection::begin(&mut **connection).await?)
            }
            PooledInner::Sqlite(connection) => {
                TxInner::Sqlite(sqlx::Connection::begin(&mut **connection).await?)
            }
        };
        Ok(Tx::new(inner, self.cache.clone()))
    }
}

impl AsDb for PooledConnection {
    fn db(&mut self) -> Db<'_> {
        match &mut self.inner {
            PooledInner::Postgres(connection) => Db::Postgres(connection),
            PooledInner::Sqlite(connection) => Db::Sqlite(connection),
        }
    }

    /// Each statement on a plain connection commits alone: it has committed already.
    fn changed(&mut self, user_id: i64) {
        if let Some(cache) = &self.cache {
            cache.invalidate(user_id);
        }
    }
}

macro_rules! deref_to_connection {
    ($type:ty) => {
        impl std::ops::Deref for $type {
            type Target = Connection;
            fn deref(&self) -> &Connection {
                self
            }
        }
        impl std::ops::DerefMut for $type {
            fn deref_mut(&mut self) -> &mut Connection {
                self
            }
        }
    };
}
deref_to_connection!(Transaction);
deref_to_connection!(PooledConnection);

impl Pool {
    async fn acquire(&self, cache: &Arc<AuthCache>) -> Result<PooledConnection, sqlx::Error> {
        let inner = match self {
            Pool::Postgres(pool) => PooledInner::Postgres(pool.acquire().await?),
            Pool::Sqlite(pool) => PooledInner::Sqlite(pool.acquire().await?),
        };
        Ok(PooledConnection {
            inner,
            cache: Some(cache.clone()),
        })
    }

    async fn begin(&self, cache: &Arc<AuthCache>) -> Result<Transaction, sqlx::Error> {
        let inner = match self {
            Pool::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
            // IMMEDIATE takes SQLite's write lock at the start, where the busy timeout waits
            // for another process's writer; a deferred transaction that read first and wrote
            // after another process's commit fails at once (SQLITE_BUSY_SNAPSHOT), which the
            // timeout does not cover (a second instance, or a command, on the same file).
            Pool::Sqlite(pool) => TxInner::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?),
        };
        Ok(Tx::new(inner, Some(cache.clone())))
    }

    /// (open connections, idle connections).
    fn stats(&self) -> (u32, usize) {
        match self {
            Pool::Postgres(pool) => (pool.size(), pool.num_idle()),
            Pool::Sqlite(pool) => (pool.size(), pool.num_idle()),
        }
    }

    async fn close(&self) {
        match self {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }
}

#[derive(Clone)]
pub struct Store {
    writer: Pool,
    reader: Pool,
    backend: Backend,
    /// Where lag-tolerant reads go when it has caught up (PostgreSQL only).
    replica: Option<Arc<replica::Replica>>,
    /// The audit chain's HMAC key: the store writes and checks the chain.
    chain_key: crate::audit::chain_key::ChainKey,
    /// Who is behind each live session, invalidated by every write to accounts and sessions.
    auth_cache: Arc<AuthCache>,
}

impl Store {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        if let Some(directory) = config.sqlite_directory() {
            std::fs::create_dir_all(&directory).with_context(|| {
                format!("creating the database directory {}", directory.display())
            })?;
        }
        let timeout = config.database_timeout;
        let primary = &config.database_url;
        let chain_key = crate::audit::chain_key::ChainKey::from_secret(config.secret_key.as_ref());
        if primary.is_sqlite() {
            let writer = sqlite_writer_pool(primary, timeout)?;
            let reader = sqlite_pool(primary, 8, timeout)?;
            Ok(Store {
                writer,
                reader,
                backend: Backend::Sqlite,
                replica: None,
                chain_key,
                // This process is SQLite's only writer while it serves.
                auth_cache: Arc::new(AuthCache::new(config.auth_cache_capacity, true)),
            })
        } else {
            let writer = Pool::Postgres(postgres_pool(primary, 16, timeout)?);
            let replica = match &config.replica_url {
                Some(url) => Some(Arc::new(replica::Replica::new(postgres_pool(
                    url, 8, timeout,
                )?))),
                None => None,
            };
            Ok(Store {
                reader: writer.clone(),
                writer,
                backend: Backend::Postgres,
                replica,
                chain_key,
                // Off until the notification channel listens (`auth_cache::listen`).
                auth_cache: Arc::new(AuthCache::new(config.auth_cache_capacity, false)),
            })
        }
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn chain_key(&self) -> &crate::audit::chain_key::ChainKey {
        &self.chain_key
    }

    pub fn auth_cache(&self) -> &Arc<AuthCache> {
        &self.auth_cache
    }

    /// The primary's pool, on PostgreSQL.
    pub fn postgres_pool(&self) -> Option<PgPool> {
        match &self.writer {
            Pool::Postgres(pool) => Some(pool.clone()),
            Pool::Sqlite(_) => None,
        }
    }

    pub async fn begin(&self) -> Result<Transaction, sqlx::Error> {
        self.writer.begin(&self.auth_cache).await
    }

    /// A connection to the primary outside any transaction: each statement commits alone.
    pub async fn write(&self) -> Result<PooledConnection, sqlx::Error> {
        self.writer.acquire(&self.auth_cache).await
    }

    pub async fn read(&self) -> Result<PooledConnection, sqlx::Error> {
        self.reader.acquire(&self.auth_cache).await
    }

    /// A connection for reads that may go to the replica: lists, audit queries, exports. It
    /// is the replica's only when the replica has replayed everything committed before this
    /// call (`replica.rs`), so the caller still reads its own writes.
    pub async fn reports(&self) -> Result<PooledConnection, sqlx::Error> {
        if let (Some(replica), Pool::Postgres(primary)) = (&self.replica, &self.writer)
            && let Some(connection) = replica.caught_up(primary).await
        {
            return Ok(PooledConnection {
                inner: PooledInner::Postgres(connection),
                cache: Some(self.auth_cache.clone()),
            });
        }
        self.reader.acquire(&self.auth_cache).await
    }

    /// The replica, when one is configured.
    pub fn replica(&self) -> Option<&Arc<replica::Replica>> {
        self.replica.as_ref()
    }

    /// Whether the database answers and carries the schema this binary expects.
    pub async fn check(&self) -> Result<(), String> {
        let mut connection = self
            .reader
            .acquire(&self.auth_cache)
            .await
            .map_err(|e| e.to_string())?;
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
        let (writer, reader) = (self.writer.stats(), self.reader.stats());
        let mut pools = match self.backend {
            Backend::Sqlite => vec![
                ("writer", writer.0, writer.1),
                ("reader", reader.0, reader.1),
            ],
            Backend::Postgres => vec![("primary", writer.0, writer.1)],
        };
        if let Some(replica) = &self.replica {
            let pool = replica.pool();
            pools.push(("replica", pool.size(), pool.num_idle()));
        }
        pools
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
        if let Some(replica) = &self.replica {
            replica.pool().close().await;
        }
    }
}

/// SQLite: WAL lets readers run beside the writer; the busy timeout covers the moments
/// another process (a CLI command) holds the write lock. A file that does not exist yet is
/// created.
fn sqlite_pool(url: &DatabaseUrl, size: u32, timeout: Duration) -> anyhow::Result<Pool> {
    Ok(Pool::Sqlite(
        sqlite_pool_options(size, timeout).connect_lazy_with(sqlite_options(url)?),
    ))
}

/// SQLite's one writer connection. A connection is checked when it comes back: one still
/// inside a transaction is closed (which rolls it back) instead of blocking every later
/// BEGIN. sqlx-sqlite leaves one so when a request is cancelled in the instant between its
/// BEGIN succeeding and the answer reaching it: no `Transaction` exists to roll back, and
/// every BEGIN IMMEDIATE after it failed ("begin_with at non-zero transaction depth"), as
/// seen once under load.
fn sqlite_writer_pool(url: &DatabaseUrl, timeout: Duration) -> anyhow::Result<Pool> {
    let pool = sqlite_pool_options(1, timeout)
        .after_release(|connection, _| {
            Box::pin(async move {
                use sqlx::Connection;
                if !connection.is_in_transaction() {
                    return Ok(true);
                }
                // Only then the round trip: it may be a dropped transaction's ROLLBACK, queued.
                connection.ping().await?;
                let stranded = connection.is_in_transaction();
                if stranded {
                    tracing::warn!(
                        "the SQLite writer connection came back inside a transaction; closed it"
                    );
                    metrics::counter!("ums_db_stranded_transactions_total").increment(1);
                }
                Ok(!stranded)
            })
        })
        .connect_lazy_with(sqlite_options(url)?);
    Ok(Pool::Sqlite(pool))
}

fn sqlite_pool_options(size: u32, timeout: Duration) -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(timeout)
        // sqlx already pings every connection when it is released (and closes a broken one);
        // a second ping on acquire cost every request another round trip.
        .test_before_acquire(false)
}

fn sqlite_options(url: &DatabaseUrl) -> anyhow::Result<SqliteConnectOptions> {
    Ok(SqliteConnectOptions::from_str(url.expose())
        .with_context(|| format!("parsing the database URL {url:?}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5))
        .disable_statement_logging())
}

fn postgres_pool(url: &DatabaseUrl, size: u32, timeout: Duration) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url.expose())
        .with_context(|| format!("parsing the database URL {url:?}"))?
        .disable_statement_logging();
    Ok(PgPoolOptions::new()
        .max_connections(size)
        .min_connections(0)
        .acquire_timeout(timeout)
        .test_before_acquire(false)
        .connect_lazy_with(options))
}

/// What a store answers when a statement fails: the database's own error, a write that a
/// unique key refused (named by the key, so the rules can say which field), or a stored
/// value the code cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Database(sqlx::Error),
    #[error("a row with this {0:?} exists already")]
    Duplicate(UniqueKey),
    #[error("a stored value is not valid: {0}")]
    Corrupt(String),
}

/// The unique keys whose collisions the rules answer (a 409 naming the field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UniqueKey {
    Username,
    Email,
    LabCode,
    Membership,
    /// A passkey's credential id, registered already (to this account or another).
    PasskeyCredential,
    /// Any other key (a token hash, a session id): a collision there is a bug.
    Other,
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match unique_key(&error) {
            Some(key) => StoreError::Duplicate(key),
            None => StoreError::Database(error),
        }
    }
}

/// The key a write collided with: PostgreSQL names the constraint, SQLite the columns
/// ("UNIQUE constraint failed: users.email").
fn unique_key(error: &sqlx::Error) -> Option<UniqueKey> {
    let database_error = error.as_database_error()?;
    if !database_error.is_unique_violation() {
        return None;
    }
    let name = database_error
        .constraint()
        .map(String::from)
        .unwrap_or_else(|| {
            let message = database_error.message();
            message
                .strip_prefix("UNIQUE constraint failed: ")
                .unwrap_or(message)
                .to_string()
        });
    Some(match name.as_str() {
        "users_username_key" | "users.username" => UniqueKey::Username,
        "users_email_key" | "users.email" => UniqueKey::Email,
        "labs_code_key" | "labs.code" => UniqueKey::LabCode,
        "lab_memberships_user_lab_key" | "lab_memberships.user_id, lab_memberships.lab_id" => {
            UniqueKey::Membership
        }
        "passkeys_credential_id_key" | "passkeys.credential_id" => UniqueKey::PasskeyCredential,
        _ => UniqueKey::Other,
    })
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

/// A value bound into a dynamically built query.
#[derive(Debug, Clone)]
pub enum SqlValue {
    Int(i64),
    Text(String),
    Flag(bool),
    Time(Timestamp),
    /// Text compared without regard to case (a username, an email, a lab code).
    Folded(String),
    Address(Inet),
    Bytes(Vec<u8>),
}

/// The WHERE clause of a list query with optional filters, numbered `$1..` in order.
/// Conditions are written with `?` where their value goes.
#[derive(Debug, Default)]
pub struct Conditions {
    clauses: Vec<String>,
    values: Vec<SqlValue>,
}

/// Binds the filter values in order, in the driver's own types.
macro_rules! bind_values {
    ($values:expr, $query:expr) => {{
        let mut query = $query;
        for value in $values {
            query = match value {
                SqlValue::Int(number) => query.bind(*number),
                SqlValue::Text(text) => query.bind(text.as_str()),
                SqlValue::Flag(flag) => query.bind(*flag),
                SqlValue::Time(time) => query.bind(*time),
                SqlValue::Folded(text) => query.bind(CaseInsensitive(text.as_str())),
                SqlValue::Address(address) => query.bind(*address),
                SqlValue::Bytes(bytes) => query.bind(bytes.as_slice()),
            };
        }
        query
    }};
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

    /// A clause with several values, bound to its `?`s in order.
    pub fn push_values(&mut self, clause: &str, values: Vec<SqlValue>) -> &mut Self {
        let mut sql = String::new();
        let mut parts = clause.split('?');
        sql.push_str(parts.next().unwrap_or_default());
        for (part, value) in parts.zip(values) {
            self.values.push(value);
            sql.push_str(&format!("${}", self.values.len()));
            sql.push_str(part);
        }
        self.clauses.push(sql);
        self
    }

    /// A clause with no value of its own (written from constants, never from input).
    pub fn push_fixed(&mut self, clause: &str) -> &mut Self {
        self.clauses.push(clause.to_string());
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

    pub fn bind<'q, DB, O>(
        &'q self,
        query: sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments<'q>>,
    ) -> sqlx::query::QueryAs<'q, DB, O, <DB as sqlx::Database>::Arguments<'q>>
    where
        DB: sqlx::Database,
        i64: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Timestamp: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        CaseInsensitive<'q>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        Inet: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
        &'q [u8]: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    {
        bind_values!(&self.values, query)
    }
}

/// The VALUES list of a multi-row INSERT: `rows` tuples of `columns` placeholders, bound in
/// order. PostgreSQL numbers them (`$1, $2`); SQLite gets anonymous `?`, because sqlx-sqlite
/// looks every numbered parameter up by name, and SQLite finds a name by walking the list of
/// names: a 1,600-parameter INSERT spent more time there than in the insert (measured: 12%
/// of the server's CPU under `/access`, whose access log writes such batches).
pub fn values_list(connection: &mut Connection, rows: usize, columns: usize) -> String {
    let numbered = matches!(connection.db(), Db::Postgres(_));
    let tuples: Vec<String> = (0..rows)
        .map(|row| {
            let placeholders: Vec<String> = (1..=columns)
                .map(|column| match numbered {
                    true => format!("${}", row * columns + column),
                    false => "?".to_string(),
                })
                .collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    tuples.join(", ")
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A transaction that no `Transaction` value owns any more (what a cancelled BEGIN leaves)
    /// must not outlive its connection's return to the pool: the next BEGIN succeeds.
    #[tokio::test]
    async fn a_stranded_transaction_does_not_block_the_sqlite_writer() {
        let directory = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::new(format!(
            "sqlite://{}",
            directory.path().join("ums.db").display()
        ));
        let writer = sqlite_writer_pool(&url, Duration::from_secs(5)).unwrap();
        let cache = Arc::new(AuthCache::new(0, true));
        let Pool::Sqlite(pool) = &writer else {
            unreachable!()
        };
        // Open connections once each returned connection has been checked.
        let settled = |open: u32| async move {
            for _ in 0..100 {
                if pool.size() == open && pool.num_idle() == open as usize {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        };
        // A transaction dropped without a commit rolls back as usual: the connection stays.
        {
            let mut transaction = writer.begin(&cache).await.unwrap();
            execute!(transaction, sqlx::query("CREATE TABLE dropped (x INTEGER)")).unwrap();
        }
        assert!(settled(1).await, "a rolled-back connection was closed");
        {
            let mut connection = pool.acquire().await.unwrap();
            let transaction = sqlx::Connection::begin(&mut *connection).await.unwrap();
            std::mem::forget(transaction);
            assert!(sqlx::Connection::is_in_transaction(&*connection));
        }
        assert!(settled(0).await, "the stranded connection was kept");
        let mut transaction = writer.begin(&cache).await.expect("a new BEGIN IMMEDIATE");
        execute!(transaction, sqlx::query("CREATE TABLE t (x INTEGER)")).unwrap();
        transaction.commit().await.unwrap();
        let mut connection = writer.acquire(&cache).await.unwrap();
        let tables = with_db!(connection, |db| sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('t', 'dropped')"
        )
        .fetch_one(db)
        .await)
        .unwrap();
        assert_eq!(tables, 1);
    }
}
