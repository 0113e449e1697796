//! The console's sign-in, kept in a cookie: a random secret whose hash names a row of
//! `console_sessions`, which rides on a session of `sessions` (so revoking that session from
//! the API, or signing out everywhere, ends it too). The cookie is `HttpOnly`,
//! `SameSite=Strict`, and `Secure` with the `__Host-` prefix when the service is served over
//! TLS. Every form carries a CSRF token derived from the cookie's secret, so a page of another
//! site can neither read it nor forge it, and no state is kept for it. A sign-in ends after
//! `UMS_CONSOLE_IDLE_TIMEOUT` without a request and `UMS_CONSOLE_MAX_AGE` after it began.

use axum::http::{HeaderMap, HeaderValue, header};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::tokens::{Claims, TokenType};
use crate::clock::{Millis, Timestamp};
use crate::error::AppError;
use crate::state::AppState;
use crate::users::User;

/// The signed-in person of a console request.
pub struct ConsoleUser {
    pub user: User,
    /// The session's claims, as an access token of it would carry them (for the rules that
    /// ask how and when the person signed in).
    pub claims: Claims,
    /// The token every form of this sign-in carries.
    pub csrf: String,
    /// The cookie's secret (to end this sign-in).
    pub secret: String,
}

/// The cookie of a signed-in console, and the one that carries the sign-in form's CSRF token
/// before there is a session.
pub fn cookie_name(state: &AppState) -> &'static str {
    if served_over_tls(state) {
        "__Host-ums_console"
    } else {
        "ums_console"
    }
}

pub fn login_cookie_name(state: &AppState) -> &'static str {
    if served_over_tls(state) {
        "__Host-ums_console_login"
    } else {
        "ums_console_login"
    }
}

fn served_over_tls(state: &AppState) -> bool {
    state.config.public_url.starts_with("https://")
}

/// A new random secret for a cookie.
pub fn new_secret() -> Result<String, AppError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes)
        .map_err(|_| AppError::Internal(anyhow::anyhow!("random cookie secret")))?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The CSRF token of the forms of a cookie's holder: only someone who holds the cookie's
/// secret can compute it, and a page of another origin cannot read the cookie.
pub fn csrf_token(secret: &str) -> String {
    hex::encode(Sha256::digest(
        format!("ums-console-csrf/{secret}").as_bytes(),
    ))
}

/// Compares a form's CSRF token with the expected one in constant time.
pub fn check_csrf(expected: &str, given: Option<&str>) -> Result<(), AppError> {
    let given = given.unwrap_or_default();
    if expected.len() == given.len() && bool::from(expected.as_bytes().ct_eq(given.as_bytes())) {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "The form has expired or came from another site: reload the page and try again.",
        ))
    }
}

/// `Set-Cookie` for `name`, which the browser keeps for the session of the browser only.
pub fn set_cookie(state: &AppState, name: &str, secret: &str) -> HeaderValue {
    let cookie = cookie::Cookie::build((name, secret))
        .path("/")
        .http_only(true)
        .secure(served_over_tls(state))
        .same_site(cookie::SameSite::Strict)
        .build();
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// `Set-Cookie` that removes `name`.
pub fn clear_cookie(state: &AppState, name: &str) -> HeaderValue {
    let cookie = cookie::Cookie::build((name, ""))
        .path("/")
        .http_only(true)
        .secure(served_over_tls(state))
        .same_site(cookie::SameSite::Strict)
        .max_age(cookie::time::Duration::ZERO)
        .build();
    HeaderValue::from_str(&cookie.to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// The value of cookie `name` in the request, if any.
pub fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(cookie::Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|cookie| cookie.name() == name)
        .map(|cookie| cookie.value().to_string())
}

/// Opens a console sign-in on `session_id`; returns the cookie's secret. The session lives
/// no longer than the console's sign-in may (a browser closed without signing out leaves
/// nothing usable behind for long).
pub async fn open(state: &AppState, session_id: &str) -> Result<String, AppError> {
    let secret = new_secret()?;
    let now = state.now();
    let until = Timestamp::from(now + state.config.console_max_age.as_millis() as Millis);
    let now = Timestamp::from(now);
    let mut connection = state.store.write().await?;
    let owner: Option<i64> = crate::with_db!(connection, |db| {
        sqlx::query_scalar(
        "UPDATE sessions SET expires_at = CASE WHEN expires_at > $2 THEN $2 ELSE expires_at END \
         WHERE id = $1 RETURNING user_id"
    )
    .bind(session_id)
    .bind(until)
    .fetch_optional(db)
    .await
    })?;
    if let Some(user_id) = owner {
        connection.changed(user_id);
    }
    crate::execute!(
        connection,
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, session_id, created_at, last_seen_at) \
             VALUES ($1, $2, $3, $3)"
        )
        .bind(hash(&secret))
        .bind(session_id)
        .bind(now)
    )?;
    Ok(secret)
}

/// Whether a sign-in that began at `created_at` and was last used at `last_seen_at` is still
/// on at `now`.
pub fn is_live(
    created_at: Millis,
    last_seen_at: Millis,
    now: Millis,
    idle_timeout: Millis,
    max_age: Millis,
) -> bool {
    now < last_seen_at + idle_timeout && now < created_at + max_age
}

/// How often a sign-in's last-seen time is written (not on every request): a minute, or half
/// the idle timeout when that is shorter.
fn touch_every(idle_timeout: Millis) -> Millis {
    (idle_timeout / 2).min(60_000)
}

/// The person signed in with cookie secret `secret`, if the sign-in, its session and the
/// account are all still on. A sign-in past a timeout is deleted.
pub async fn find(state: &AppState, secret: &str) -> Result<Option<ConsoleUser>, AppError> {
    let now = state.now();
    let token_hash = hash(secret);
    let columns = crate::users::store::user_columns("users.");
    let sql = format!(
        "SELECT console_sessions.created_at AS console_created_at, console_sessions.last_seen_at, \
         sessions.id AS session_id, sessions.amr AS session_amr, \
         COALESCE(sessions.authenticated_at, sessions.created_at) AS signed_in_at, {columns} \
         FROM console_sessions JOIN sessions ON sessions.id = console_sessions.session_id \
         JOIN users ON users.id = sessions.user_id \
         WHERE console_sessions.token_hash = $1 AND sessions.revoked_at IS NULL \
         AND sessions.expires_at > $2"
    );
    let found = {
        let mut connection = state.store.read().await?;
        crate::with_db!(connection, |db| sqlx::query_as::<_, Found>(&sql)
            .bind(&token_hash)
            .bind(Timestamp::from(now))
            .fetch_optional(db)
            .await)?
    };
    let Some(Found {
        console_created_at,
        last_seen_at,
        session_id,
        session_amr,
        signed_in_at,
        user,
    }) = found
    else {
        return Ok(None);
    };
    let (created_at, last_seen_at) = (console_created_at.millis(), last_seen_at.millis());
    let config = &state.config;
    let idle_timeout = config.console_idle_timeout.as_millis() as Millis;
    let live = is_live(
        created_at,
        last_seen_at,
        now,
        idle_timeout,
        config.console_max_age.as_millis() as Millis,
    );
    if !live || !user.is_active() {
        end(state, secret).await?;
        return Ok(None);
    }
    if now - last_seen_at >= touch_every(idle_timeout) {
        let mut connection = state.store.write().await?;
        crate::execute!(
            connection,
            sqlx::query("UPDATE console_sessions SET last_seen_at = $2 WHERE token_hash = $1")
                .bind(&token_hash)
                .bind(Timestamp::from(now))
        )?;
    }
    let claims = Claims {
        iss: config.issuer.clone(),
        sub: user.id.to_string(),
        iat: now / 1000,
        exp: now / 1000,
        jti: String::new(),
        typ: TokenType::Access,
        sid: session_id,
        is_admin: user.is_admin(),
        aud: None,
        amr: session_amr.split_whitespace().map(String::from).collect(),
        auth_time: signed_in_at.millis() / 1000,
    };
    Ok(Some(ConsoleUser {
        user,
        claims,
        csrf: csrf_token(secret),
        secret: secret.to_string(),
    }))
}

/// A console sign-in with its session and account, as `find` reads them.
#[derive(sqlx::FromRow)]
struct Found {
    console_created_at: Timestamp,
    last_seen_at: Timestamp,
    session_id: String,
    session_amr: String,
    signed_in_at: Timestamp,
    #[sqlx(flatten)]
    user: User,
}

/// Ends the console sign-in of `secret` and the session it rode on (timed out, or replaced
/// by a new sign-in in the same browser), audited as a revoked session.
pub async fn end(state: &AppState, secret: &str) -> Result<(), AppError> {
    let now = state.now();
    let mut transaction = crate::audit::Audited::begin(&state.store).await?;
    let ended: Option<(String, i64)> = crate::with_db!(&mut transaction, |db| sqlx::query_as(
        "DELETE FROM console_sessions WHERE token_hash = $1 \
         RETURNING session_id, \
         (SELECT user_id FROM sessions WHERE sessions.id = console_sessions.session_id)"
    )
    .bind(hash(secret))
    .fetch_optional(db)
    .await)?;
    let Some((session_id, user_id)) = ended else {
        return Ok(());
    };
    if crate::auth::sessions::revoke(&mut transaction, &session_id, "console_ended", now).await? {
        transaction
            .commit(
                crate::audit::Event::new(crate::audit::Action::SessionRevoked, now)
                    .actor(Some(user_id))
                    .resource("session", &session_id)
                    .details(serde_json::json!({"reason": "console_ended"})),
            )
            .await
    } else {
        transaction.commit_recorded().await
    }
}

/// Deletes the console sign-in of `secret` (after its session was ended by a sign-out).
pub async fn close(state: &AppState, secret: &str) -> Result<(), AppError> {
    let mut connection = state.store.write().await?;
    crate::execute!(
        connection,
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1").bind(hash(secret))
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sign_in_ends_when_idle_or_old() {
        let minute = 60_000;
        assert!(is_live(0, 0, 29 * minute, 30 * minute, 720 * minute));
        assert!(!is_live(0, 0, 30 * minute, 30 * minute, 720 * minute));
        assert!(is_live(
            0,
            700 * minute,
            719 * minute,
            30 * minute,
            720 * minute
        ));
        assert!(!is_live(
            0,
            719 * minute,
            720 * minute,
            30 * minute,
            720 * minute
        ));
    }

    #[test]
    fn the_csrf_token_is_the_cookies_own_and_compared_whole() {
        let token = csrf_token("secret-a");
        assert_ne!(token, csrf_token("secret-b"));
        assert!(check_csrf(&token, Some(&token)).is_ok());
        assert!(check_csrf(&token, Some(&token[..10])).is_err());
        assert!(check_csrf(&token, None).is_err());
    }
}
