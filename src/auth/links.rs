//! Emailed links (password reset, email verification): one table each, the same rules.
//! A link is stored as the SHA-256 of its token, works once, until it expires, and only
//! under the credential stamp it was issued with (`users::store::void_emailed_links`).

use crate::clock::{Millis, Timestamp};
use crate::security::secrets::{hash_token, random_token};
use crate::store::{Connection, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    PasswordReset,
    EmailVerification,
    /// "This wasn't me", in a sign-in notice: each notice's link lives on its own (a later
    /// notice does not void an earlier one).
    NotMe,
}

impl Link {
    fn table(self) -> &'static str {
        match self {
            Link::PasswordReset => "password_reset_tokens",
            Link::EmailVerification => "email_verification_tokens",
            Link::NotMe => "not_me_tokens",
        }
    }
}

pub(crate) const INVALID_LINK: &str = "The link is unknown, already used or expired.";

/// Whole hours of a link's lifetime, as its email states it.
pub(crate) fn hours(duration: std::time::Duration) -> u64 {
    duration.as_secs().div_ceil(3600)
}

/// At most one link email of a kind to an address in this long: asking again sooner sends
/// nothing, and the link already sent stays usable. Forty requests are not forty emails.
pub const RESEND_INTERVAL: Millis = 5 * 60_000;

/// Voids the account's older links of this kind and issues a new one; returns its token
/// (only its hash is stored).
pub async fn issue(
    connection: &mut Connection,
    link: Link,
    user_id: i64,
    email: Option<&str>,
    now: Millis,
    ttl: std::time::Duration,
) -> Result<String, StoreError> {
    let table = link.table();
    if link != Link::NotMe {
        crate::execute!(
            connection,
            sqlx::query(&format!(
                "UPDATE {table} SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL"
            ))
            .bind(user_id)
            .bind(Timestamp::from(now))
        )?;
    }
    let token = random_token();
    let expires_at = Timestamp::from(now + ttl.as_millis() as i64);
    let stamp = "(SELECT credential_stamp FROM users WHERE id = $1)";
    match email {
        Some(email) => crate::execute!(
            connection,
            sqlx::query(&format!(
                "INSERT INTO {table} (user_id, token_hash, email, created_at, expires_at, credential_stamp) \
                 VALUES ($1, $2, $3, $4, $5, {stamp})"
            ))
            .bind(user_id)
            .bind(hash_token(&token))
            .bind(email)
            .bind(Timestamp::from(now))
            .bind(expires_at)
        )?,
        None => crate::execute!(
            connection,
            sqlx::query(&format!(
                "INSERT INTO {table} (user_id, token_hash, created_at, expires_at, credential_stamp) \
                 VALUES ($1, $2, $3, $4, {stamp})"
            ))
            .bind(user_id)
            .bind(hash_token(&token))
            .bind(Timestamp::from(now))
            .bind(expires_at)
        )?,
    };
    Ok(token)
}

/// Whether a live link of `table` went to this account (and address) within the resend
/// interval.
pub async fn sent_recently(
    connection: &mut Connection,
    link: Link,
    user_id: i64,
    email: Option<&str>,
    now: Millis,
) -> Result<bool, StoreError> {
    let table = link.table();
    let email_clause = if email.is_some() {
        "AND link.email = $3"
    } else {
        "AND $3 = ''"
    };
    let sql = format!(
        "SELECT COUNT(*) FROM {table} link \
         JOIN users ON users.id = link.user_id AND users.credential_stamp = link.credential_stamp \
         WHERE link.user_id = $1 AND link.used_at IS NULL AND link.created_at > $2 {email_clause}"
    );
    let count: i64 = crate::with_db!(connection, |db| sqlx::query_scalar(&sql)
        .bind(user_id)
        .bind(Timestamp::from(now - RESEND_INTERVAL))
        .bind(email.unwrap_or_default())
        .fetch_one(db)
        .await)?;
    Ok(count > 0)
}

/// The live token row of `table` whose hash matches, as (row id, user id, email column).
/// A token is live while unused, unexpired, and issued under the account's current
/// credential stamp: a credential event since its issue voided it.
pub async fn find_live(
    connection: &mut Connection,
    link: Link,
    token: &str,
    now: Millis,
) -> Result<Option<(i64, i64, Option<String>)>, StoreError> {
    let table = link.table();
    let email_column = if link == Link::EmailVerification {
        "link.email"
    } else {
        "NULL AS email"
    };
    let sql = format!(
        "SELECT link.id, link.user_id, {email_column} FROM {table} link \
         JOIN users ON users.id = link.user_id AND users.credential_stamp = link.credential_stamp \
         WHERE link.token_hash = $1 AND link.used_at IS NULL AND link.expires_at > $2"
    );
    Ok(crate::with_db!(connection, |db| sqlx::query_as(&sql)
        .bind(hash_token(token))
        .bind(Timestamp::from(now))
        .fetch_optional(db)
        .await)?)
}

/// How long a link's row is kept after it expired (used or not): long enough to answer "which
/// links were sent" in an investigation, no longer.
pub const KEPT_AFTER_EXPIRY: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// Deletes the links of every kind that expired more than `KEPT_AFTER_EXPIRY` ago; returns
/// how many.
pub async fn expire(connection: &mut Connection, now: Millis) -> Result<u64, StoreError> {
    let before = Timestamp::from(now - KEPT_AFTER_EXPIRY.as_millis() as i64);
    let mut deleted = 0;
    for link in [Link::PasswordReset, Link::EmailVerification, Link::NotMe] {
        let table = link.table();
        deleted += crate::execute!(
            connection,
            sqlx::query(&format!("DELETE FROM {table} WHERE expires_at < $1")).bind(before)
        )?;
    }
    Ok(deleted)
}

/// Spends a token row; false if another request spent it first.
pub async fn spend(
    connection: &mut Connection,
    link: Link,
    id: i64,
    now: Millis,
) -> Result<bool, StoreError> {
    let table = link.table();
    let sql = format!("UPDATE {table} SET used_at = $2 WHERE id = $1 AND used_at IS NULL");
    let result = crate::execute!(
        connection,
        sqlx::query(&sql).bind(id).bind(Timestamp::from(now))
    )?;
    Ok(result == 1)
}
