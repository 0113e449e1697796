//! Queries on `users` and a user's memberships.

use crate::clock::Millis;
use crate::http::AppError;
use crate::store::{Connection, flag, unique_violation};
use crate::users::{Email, Membership, User, Username};

pub const USER_COLUMNS: &str = "id, username, email, password_hash, first_name, last_name, \
    is_active, is_admin, email_verified, failed_login_count, locked_until, last_login_at, \
    password_changed_at, mfa_enabled, new_login_alerts, created_at, updated_at";

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
) -> Result<User, AppError> {
    let sql = format!(
        "INSERT INTO users (username, email, password_hash, first_name, last_name, is_active, \
         is_admin, email_verified, password_changed_at, created_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9) RETURNING {USER_COLUMNS}"
    );
    sqlx::query_as::<_, User>(&sql)
        .bind(user.username.as_str())
        .bind(user.email.as_str())
        .bind(user.password_hash)
        .bind(user.first_name)
        .bind(user.last_name)
        .bind(flag(user.is_active))
        .bind(flag(user.is_admin))
        .bind(flag(user.email_verified))
        .bind(now)
        .fetch_one(&mut *connection)
        .await
        .map_err(duplicate_username_or_email)
}

/// Maps a unique-index collision on `users` to the 409 that names the field.
pub fn duplicate_username_or_email(error: sqlx::Error) -> AppError {
    match unique_violation(&error) {
        Some(index) if index.contains("email") => {
            AppError::conflict("email", "a user with this email already exists")
        }
        Some(index) if index.contains("username") => {
            AppError::conflict("username", "a user with this username already exists")
        }
        _ => AppError::from(error),
    }
}

pub async fn find_by_id(connection: &mut Connection, id: i64) -> Result<Option<User>, AppError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    Ok(sqlx::query_as::<_, User>(&sql)
        .bind(id)
        .fetch_optional(&mut *connection)
        .await?)
}

/// Finds the account a login names, by username (any case) or by email.
pub async fn find_by_login(
    connection: &mut Connection,
    login: &str,
) -> Result<Option<User>, AppError> {
    let sql = format!(
        "SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1) OR lower(email) = lower($1)"
    );
    Ok(sqlx::query_as::<_, User>(&sql)
        .bind(login)
        .fetch_optional(&mut *connection)
        .await?)
}

pub async fn find_by_username(
    connection: &mut Connection,
    username: &str,
) -> Result<Option<User>, AppError> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE lower(username) = lower($1)");
    Ok(sqlx::query_as::<_, User>(&sql)
        .bind(username)
        .fetch_optional(&mut *connection)
        .await?)
}

/// The labs a user belongs to, with the role in each.
pub async fn labs_of(
    connection: &mut Connection,
    user_id: i64,
) -> Result<Vec<Membership>, AppError> {
    Ok(sqlx::query_as::<_, Membership>(
        "SELECT labs.id, labs.code, labs.name, lab_memberships.role, labs.is_active \
         FROM lab_memberships JOIN labs ON labs.id = lab_memberships.lab_id \
         WHERE lab_memberships.user_id = $1 ORDER BY labs.code",
    )
    .bind(user_id)
    .fetch_all(&mut *connection)
    .await?)
}

/// Records a successful login: stamps the time and, when the stored hash was of an older
/// scheme, replaces it with the fresh Argon2id one.
pub async fn record_login(
    connection: &mut Connection,
    user_id: i64,
    rehashed_password: Option<&str>,
    now: Millis,
) -> Result<(), AppError> {
    sqlx::query(
        "UPDATE users SET last_login_at = $2, \
         password_hash = COALESCE($3, password_hash), updated_at = $2 WHERE id = $1",
    )
    .bind(user_id)
    .bind(now)
    .bind(rehashed_password)
    .execute(&mut *connection)
    .await?;
    Ok(())
}
