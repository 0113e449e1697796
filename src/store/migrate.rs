//! Forward-only, numbered migrations, one text for both databases.
//!
//! The shared text differs between dialects only in the identity key (`{{id}}`): SQLite's
//! rowid alias versus PostgreSQL's identity column. What has no common syntax at all
//! (triggers) comes as a per-dialect addition of the same version, applied in the same
//! transaction.

use anyhow::{Context, bail};

use super::{AsDb, Backend, Store};
use crate::with_db;

struct Migration {
    version: i64,
    name: &'static str,
    shared: &'static str,
    sqlite: Option<&'static str>,
    postgres: Option<&'static str>,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        shared: include_str!("migrations/0001_init.sql"),
        sqlite: None,
        postgres: None,
    },
    Migration {
        version: 2,
        name: "email_outbox",
        shared: include_str!("migrations/0002_email_outbox.sql"),
        sqlite: None,
        postgres: None,
    },
    Migration {
        version: 3,
        name: "audit_append_only",
        shared: include_str!("migrations/0003_audit_append_only.sql"),
        sqlite: Some(include_str!("migrations/0003_audit_append_only.sqlite.sql")),
        postgres: Some(include_str!(
            "migrations/0003_audit_append_only.postgres.sql"
        )),
    },
    Migration {
        version: 4,
        name: "audit_partitions",
        shared: "",
        sqlite: None,
        postgres: Some(include_str!(
            "migrations/0004_audit_partitions.postgres.sql"
        )),
    },
    Migration {
        version: 5,
        name: "credential_stamp",
        shared: include_str!("migrations/0005_credential_stamp.sql"),
        sqlite: Some(include_str!("migrations/0005_credential_stamp.sqlite.sql")),
        postgres: None,
    },
    Migration {
        version: 6,
        name: "keyed_audit_chain",
        shared: include_str!("migrations/0006_keyed_audit_chain.sql"),
        sqlite: None,
        postgres: None,
    },
    Migration {
        version: 7,
        name: "audit_functions_run_as_owner",
        shared: "",
        sqlite: None,
        postgres: Some(include_str!(
            "migrations/0007_audit_functions_run_as_owner.postgres.sql"
        )),
    },
    Migration {
        version: 8,
        name: "native_types",
        shared: "",
        sqlite: Some(include_str!("migrations/0008_native_types.sqlite.sql")),
        postgres: Some(include_str!("migrations/0008_native_types.postgres.sql")),
    },
    Migration {
        version: 9,
        name: "session_amr",
        shared: include_str!("migrations/0009_session_amr.sql"),
        sqlite: None,
        postgres: None,
    },
    Migration {
        version: 10,
        name: "second_factors",
        shared: "",
        sqlite: Some(include_str!("migrations/0010_second_factors.sqlite.sql")),
        postgres: Some(include_str!("migrations/0010_second_factors.postgres.sql")),
    },
    Migration {
        version: 11,
        name: "adaptive_sign_in",
        shared: "",
        sqlite: Some(include_str!("migrations/0011_adaptive_sign_in.sqlite.sql")),
        postgres: Some(include_str!(
            "migrations/0011_adaptive_sign_in.postgres.sql"
        )),
    },
    Migration {
        version: 12,
        name: "privacy",
        shared: "",
        sqlite: Some(include_str!("migrations/0012_privacy.sqlite.sql")),
        postgres: Some(include_str!("migrations/0012_privacy.postgres.sql")),
    },
    Migration {
        version: 13,
        name: "erasure",
        shared: "",
        sqlite: Some(include_str!("migrations/0013_erasure.sqlite.sql")),
        postgres: Some(include_str!("migrations/0013_erasure.postgres.sql")),
    },
    Migration {
        version: 14,
        name: "console",
        shared: "",
        sqlite: Some(include_str!("migrations/0014_console.sqlite.sql")),
        postgres: Some(include_str!("migrations/0014_console.postgres.sql")),
    },
    Migration {
        version: 15,
        name: "auth_notify",
        shared: "",
        sqlite: None,
        postgres: Some(include_str!("migrations/0015_auth_notify.postgres.sql")),
    },
];

pub const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].version;

/// Applies the migrations this database lacks. Refuses a database whose schema is newer than
/// this binary knows: an older binary must not write into a newer layout.
pub async fn migrate(store: &Store) -> anyhow::Result<Vec<i64>> {
    migrate_to(store, SCHEMA_VERSION).await
}

/// Applies the migrations up to `target` only (tests of upgrades start from older schemas).
///
/// On SQLite, foreign keys are off while the migrations run and are checked in full before
/// they commit: rebuilding a table (SQLite cannot alter a key) drops the old one, which must
/// not cascade to the rows that refer to it. The pragma has no effect inside a transaction,
/// so it is set on the connection around it.
pub async fn migrate_to(store: &Store, target: i64) -> anyhow::Result<Vec<i64>> {
    let backend = store.backend();
    let mut connection = store.write().await.context("connecting to the database")?;
    // A current schema needs no statement that only its owner may run: `serve` can then use
    // a role that owns nothing (see the README's PostgreSQL roles).
    if let Ok(current) = current_version(&mut connection).await
        && current >= target.min(SCHEMA_VERSION)
        && current <= SCHEMA_VERSION
    {
        return Ok(Vec::new());
    }
    if backend == Backend::Sqlite {
        crate::execute!(connection, sqlx::query("PRAGMA foreign_keys = OFF"))?;
    }
    let applied = apply(store, &mut connection, target).await;
    if backend == Backend::Sqlite
        && let Err(error) = crate::execute!(connection, sqlx::query("PRAGMA foreign_keys = ON"))
    {
        // Never hand a connection without foreign keys back to the pool.
        connection.close_on_drop();
        return Err(error).context("turning foreign keys back on");
    }
    applied
}

async fn apply(
    store: &Store,
    connection: &mut super::PooledConnection,
    target: i64,
) -> anyhow::Result<Vec<i64>> {
    let backend = store.backend();
    let mut transaction = connection
        .begin()
        .await
        .context("connecting to the database")?;
    crate::execute!(
        &mut transaction,
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations \
             (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
    )
    .context("creating schema_migrations")?;
    let current = current_version(&mut transaction).await?;
    if current > SCHEMA_VERSION {
        bail!(
            "the database schema is at version {current}, newer than this binary's {SCHEMA_VERSION}; \
             upgrade ums"
        );
    }
    let mut applied = Vec::new();
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= target)
    {
        let (version, name) = (&migration.version, &migration.name);
        if !migration.shared.is_empty() {
            let sql = migration.shared.replace("{{id}}", identity_key(backend));
            crate::execute!(&mut transaction, sqlx::raw_sql(sql.as_str()))
                .with_context(|| format!("applying migration {version} ({name})"))?;
        }
        let dialect_part = match backend {
            Backend::Sqlite => migration.sqlite,
            Backend::Postgres => migration.postgres,
        };
        if let Some(sql) = dialect_part {
            crate::execute!(&mut transaction, sqlx::raw_sql(sql))
                .with_context(|| format!("applying migration {version} ({name}), dialect part"))?;
        }
        crate::execute!(
            &mut transaction,
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
            )
            .bind(*version)
            .bind(*name)
            .bind(chrono::Utc::now().timestamp_millis())
        )?;
        applied.push(*version);
    }
    if backend == Backend::Sqlite {
        let broken = with_db!(&mut transaction, |db| sqlx::query(
            "PRAGMA foreign_key_check"
        )
        .fetch_all(db)
        .await
        .map(|rows| rows.len()))?;
        if broken > 0 {
            bail!("the migrations would leave {broken} rows referring to rows that do not exist");
        }
    }
    transaction
        .commit()
        .await
        .context("committing migrations")?;
    Ok(applied)
}

fn identity_key(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "INTEGER PRIMARY KEY",
        Backend::Postgres => "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY",
    }
}

pub async fn current_version(connection: &mut (impl AsDb + ?Sized)) -> anyhow::Result<i64> {
    with_db!(connection, |db| sqlx::query_scalar::<_, i64>(
        "SELECT COALESCE(MAX(version), 0) FROM schema_migrations"
    )
    .fetch_one(db)
    .await)
    .context("reading the schema version")
}
