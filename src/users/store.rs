//! Queries on `users` and a user's memberships.

use crate::clock::Millis;
use crate::clock::Timestamp;
use crate::store::{CaseInsensitive, Connection, StoreError};
use crate::users::{Email, Membership, User, Username};

/// The columns of a `User`, qualified by `table` (`"users."` in a join, `""` alone). The
/// case-insensitive columns are read as text: `citext`'s output function (an extension's C
/// function, looked up on every row) cost a tenth of `/me`'s throughput on PostgreSQL,
/// where the cast to text is free (binary-coercible); on SQLite it is a no-op.
pub fn user_columns(table: &str) -> String {
    format!(
        "{table}id, CAST({table}username AS TEXT) AS username, \
         CAST({table}email AS TEXT) AS email, {table}password_hash, {table}first_name, \
         {table}last_name, {table}is_active, {table}is_admin, {table}email_verified, \
         {table}failed_login_count, {table}locked_until, {table}last_login_at, \
         {table}password_changed_at, {table}mfa_enabled, {table}new_login_alerts, \
         {table}password_reset_required, \
         {table}created_at, {table}updated_at"
    )
}

static USER_COLUMNS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| user_columns(""));

pub struct NewUser<'a> {
    pub username: &'a Username,
    pub email: &'a Email,
    pub password_hash: &'a str,
    pub first_name: &'a str,
    pub last_name: &'a str,
    pub is_admin: bool,
    pub is_active: bool,
    pub email_verified: bool,
}

pub async fn insert(
    connection: &mut Connection,
    user: NewUser<'_>,
    now: Millis,
) -> Result<User, StoreError> {
    let columns = &*USER_COLUMNS;
    let sql = format!(
        "INSERT INTO users (username, email, password_hash, first_name, last_name, is_active, \
         is_admin, email_verified, password_changed_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9) RETURNING {columns}"
    );
    crate::with_db!(connection, |db| sqlx::query_as::<_, User>(&sql)
        .bind(user.username.as_str())
        .bind(user.email.as_str())
        .bind(user.password_hash)
        .bind(user.first_name)
        .bind(user.last_name)
        .bind(user.is_active)
        .bind(user.is_admin)
        .bind(user.email_verified)
        .bind(Timestamp::from(now))
        .fetch_one(db)
        .await)
    .map_err(StoreError::from)
}

pub async fn find_by_id(connection: &mut Connection, id: i64) -> Result<Option<User>, StoreError> {
    let columns = &*USER_COLUMNS;
    let sql = format!("SELECT {columns} FROM users WHERE id = $1");
    Ok(crate::with_db!(connection, |db| {
        sqlx::query_as::<_, User>(&sql)
            .bind(id)
            .fetch_optional(db)
            .await
    })?)
}

/// Finds the account a login names, by username (any case) or by email.
pub async fn find_by_login(
    connection: &mut Connection,
    login: &str,
) -> Result<Option<User>, StoreError> {
    let columns = &*USER_COLUMNS;
    let sql = format!("SELECT {columns} FROM users WHERE username = $1 OR email = $1");
    Ok(crate::with_db!(connection, |db| {
        sqlx::query_as::<_, User>(&sql)
            .bind(CaseInsensitive(login))
            .fetch_optional(db)
            .await
    })?)
}

pub async fn find_by_username(
    connection: &mut Connection,
    username: &str,
) -> Result<Option<User>, StoreError> {
    let columns = &*USER_COLUMNS;
    let sql = format!("SELECT {columns} FROM users WHERE username = $1");
    Ok(crate::with_db!(connection, |db| {
        sqlx::query_as::<_, User>(&sql)
            .bind(CaseInsensitive(username))
            .fetch_optional(db)
            .await
    })?)
}

/// The labs a user belongs to, with the role in each.
pub async fn labs_of(
    connection: &mut Connection,
    user_id: i64,
) -> Result<Vec<Membership>, StoreError> {
    Ok(crate::with_db!(connection, |db| {
        sqlx::query_as::<
        _,
        Membership,
    >(
        "SELECT labs.id, CAST(labs.code AS TEXT) AS code, labs.name, lab_memberships.role, labs.is_active \
         FROM lab_memberships JOIN labs ON labs.id = lab_memberships.lab_id \
         WHERE lab_memberships.user_id = $1 ORDER BY labs.code",
    )
    .bind(user_id)
    .fetch_all(db)
    .await
    })?)
}

/// Records a successful login: stamps the time and, when the stored hash was of an older
/// scheme, replaces it with the fresh Argon2id one.
pub async fn record_login(
    connection: &mut Connection,
    user_id: i64,
    rehashed_password: Option<&str>,
    now: Millis,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query(
            "UPDATE users SET last_login_at = $2, \
         password_hash = COALESCE($3, password_hash), updated_at = $2 WHERE id = $1",
        )
        .bind(user_id)
        .bind(Timestamp::from(now))
        .bind(rehashed_password)
    )?;
    connection.changed(user_id);
    Ok(())
}

/// Replaces an imported password hash with its Argon2id rehash (same password: no credential
/// event).
pub async fn replace_password_hash(
    connection: &mut Connection,
    user_id: i64,
    password_hash: &str,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query("UPDATE users SET password_hash = $2 WHERE id = $1")
            .bind(user_id)
            .bind(password_hash)
    )?;
    connection.changed(user_id);
    Ok(())
}

/// Whether the account has a second factor (kept by `mfa::service`).
pub async fn set_mfa_enabled(
    connection: &mut Connection,
    user_id: i64,
    enabled: bool,
    now: Millis,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query(
            "UPDATE users SET mfa_enabled = $2, updated_at = $3 \
             WHERE id = $1 AND mfa_enabled <> $2",
        )
        .bind(user_id)
        .bind(enabled)
        .bind(Timestamp::from(now))
    )?;
    connection.changed(user_id);
    Ok(())
}

pub struct UserFilter {
    pub query: Option<String>,
    pub is_active: Option<bool>,
    pub is_admin: Option<bool>,
    /// Only the accounts locked (`true`) or not locked (`false`) at the time.
    pub locked: Option<(bool, Timestamp)>,
}

pub async fn list(
    connection: &mut Connection,
    filter: &UserFilter,
    page: crate::paging::PageRequest,
) -> Result<(Vec<User>, i64), StoreError> {
    use crate::store::{Conditions, SqlValue, like_pattern};
    let mut conditions = Conditions::new();
    if let Some(query) = &filter.query {
        conditions.push(
            "(lower(username) LIKE ? ESCAPE '\\' OR lower(email) LIKE ? ESCAPE '\\')",
            SqlValue::Text(like_pattern(query)),
        );
    }
    if let Some(active) = filter.is_active {
        conditions.push("is_active = ?", SqlValue::Flag(active));
    }
    if let Some(admin) = filter.is_admin {
        conditions.push("is_admin = ?", SqlValue::Flag(admin));
    }
    if let Some((locked, now)) = filter.locked {
        let clause = match locked {
            true => "locked_until > ?",
            false => "(locked_until IS NULL OR locked_until <= ?)",
        };
        conditions.push(clause, SqlValue::Time(now));
    }
    let where_sql = conditions.where_sql();
    let count_sql = format!("SELECT COUNT(*) FROM users{where_sql}");
    let (total,): (i64,) = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as(&count_sql))
        .fetch_one(db)
        .await)?;
    let columns = &*USER_COLUMNS;
    let items_sql = format!(
        "SELECT {columns} FROM users{where_sql} ORDER BY id LIMIT {} OFFSET {}",
        conditions.next_placeholder(1),
        conditions.next_placeholder(2)
    );
    let users = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as::<_, User>(&items_sql))
        .bind(page.per_page)
        .bind(page.offset())
        .fetch_all(db)
        .await)?;
    Ok((users, total))
}

/// Field changes of an account; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct UserChanges {
    pub username: Option<Username>,
    pub email: Option<Email>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub is_active: Option<bool>,
    pub is_admin: Option<bool>,
    pub new_login_alerts: Option<bool>,
}

pub async fn update(
    connection: &mut Connection,
    user_id: i64,
    changes: &UserChanges,
    email_verified: Option<bool>,
    now: Millis,
) -> Result<Option<User>, StoreError> {
    let columns = &*USER_COLUMNS;
    let sql = format!(
        "UPDATE users SET username = COALESCE($2, username), email = COALESCE($3, email), \
         first_name = COALESCE($4, first_name), last_name = COALESCE($5, last_name), \
         is_active = COALESCE($6, is_active), is_admin = COALESCE($7, is_admin), \
         email_verified = COALESCE($8, email_verified), updated_at = $9, \
         new_login_alerts = COALESCE($10, new_login_alerts), \
         erase_after = CASE WHEN $6 THEN NULL ELSE erase_after END \
         WHERE id = $1 RETURNING {columns}"
    );
    let updated = crate::with_db!(connection, |db| sqlx::query_as::<_, User>(&sql)
        .bind(user_id)
        .bind(changes.username.as_ref().map(Username::as_str))
        .bind(changes.email.as_ref().map(Email::as_str))
        .bind(changes.first_name.as_deref())
        .bind(changes.last_name.as_deref())
        .bind(changes.is_active)
        .bind(changes.is_admin)
        .bind(email_verified)
        .bind(Timestamp::from(now))
        .bind(changes.new_login_alerts)
        .fetch_optional(db)
        .await)?;
    connection.changed(user_id);
    Ok(updated)
}

/// Deletes an account; its sessions, refresh tokens, memberships and emailed links go with
/// it by their foreign keys (`ON DELETE CASCADE`, on in both databases). The audit trail
/// keeps its events: they name the id, never reference the row.
pub async fn delete(connection: &mut Connection, user_id: i64) -> Result<bool, StoreError> {
    let result = crate::execute!(
        connection,
        sqlx::query("DELETE FROM users WHERE id = $1").bind(user_id)
    )?;
    connection.changed(user_id);
    Ok(result > 0)
}

/// Active system admins other than `user_id`.
pub async fn other_active_admins(
    connection: &mut Connection,
    user_id: i64,
) -> Result<i64, StoreError> {
    let (count,): (i64,) = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT COUNT(*) FROM users WHERE is_admin AND is_active AND id <> $1",
    )
    .bind(user_id)
    .fetch_one(db)
    .await)?;
    Ok(count)
}

/// A credential event: moves the account's credential stamp on, which voids every emailed
/// link issued before it (reset and verification links carry the stamp they were issued
/// under and work only while it is the account's).
pub async fn void_emailed_links(
    connection: &mut Connection,
    user_id: i64,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query("UPDATE users SET credential_stamp = credential_stamp + 1 WHERE id = $1")
            .bind(user_id)
    )?;
    connection.changed(user_id);
    Ok(())
}

/// No sign-in until the password is reset ("This wasn't me").
pub async fn require_password_reset(
    connection: &mut Connection,
    user_id: i64,
    now: Millis,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query(
            "UPDATE users SET password_reset_required = true, updated_at = $2 WHERE id = $1"
        )
        .bind(user_id)
        .bind(Timestamp::from(now))
    )?;
    connection.changed(user_id);
    Ok(())
}

/// Sets a new password (which ends a required reset) and stamps `password_changed_at`.
pub async fn set_password(
    connection: &mut Connection,
    user_id: i64,
    hash: &str,
    now: Millis,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query(
            "UPDATE users SET password_hash = $2, password_changed_at = $3, updated_at = $3, \
             password_reset_required = false WHERE id = $1"
        )
        .bind(user_id)
        .bind(hash)
        .bind(Timestamp::from(now))
    )?;
    connection.changed(user_id);
    Ok(())
}

pub async fn active_admins(connection: &mut Connection) -> Result<Vec<User>, StoreError> {
    let columns = &*USER_COLUMNS;
    let sql = format!("SELECT {columns} FROM users WHERE is_admin AND is_active ORDER BY id");
    Ok(crate::with_db!(connection, |db| {
        sqlx::query_as::<_, User>(&sql).fetch_all(db).await
    })?)
}
