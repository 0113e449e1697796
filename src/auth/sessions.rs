//! Sessions (one a login) and their rotating refresh tokens.
//!
//! A session is the family of every refresh token descended from one login. Each refresh
//! spends its token in one conditional UPDATE, so of many concurrent refreshes exactly one
//! wins; a spent token presented again revokes the whole session. A session never outlives
//! the refresh lifetime counted from its login.

use serde::Serialize;

use crate::audit::Origin;
use crate::auth::tokens::{Claims, TokenType};
use crate::clock::{Millis, Timestamp};
use crate::error::AppError;
use crate::security::risk::Place;
use crate::security::secrets::{hash_token, random_token};
use crate::state::AppState;
use crate::store::{Connection, Inet};
use crate::users::User;
use crate::users::store::user_columns;
use sqlx::types::Json;

/// A freshly issued pair of tokens.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    pub id: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub last_used_at: Timestamp,
    pub current: bool,
}

/// Where a session began: the place GeoIP gave its address, and its device.
#[derive(Debug, Clone, Default)]
pub struct Whereabouts<'a> {
    pub place: Option<&'a Place>,
    pub device_id: Option<i64>,
}

/// Opens a session for a login and returns its id.
pub async fn open(
    connection: &mut Connection,
    user_id: i64,
    origin: &Origin,
    grant: &Grant,
    whereabouts: Whereabouts<'_>,
) -> Result<String, AppError> {
    let id = random_token()[..32].to_string();
    crate::execute!(connection, sqlx::query(
        "INSERT INTO sessions (id, user_id, ip, user_agent, created_at, last_used_at, expires_at, amr, \
         country, place, device_id) VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(user_id)
    .bind(origin.ip.as_deref().and_then(Inet::parse))
    .bind(&origin.user_agent)
    .bind(Timestamp::from(grant.signed_in_at))
    .bind(Timestamp::from(grant.expires_at))
    .bind(grant.amr.join(" "))
    .bind(whereabouts.place.map(|place| place.country_code.clone()))
    .bind(whereabouts.place.map(Json))
    .bind(whereabouts.device_id)
    )?;
    Ok(id)
}

/// How long an ended session (expired or revoked) is kept: the sign-in history the risk
/// engine learns habits from, and the user's own list of recent sessions, look this far back.
pub const KEPT_AFTER_END: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

/// Deletes the sessions (and with them their refresh tokens) that ended more than
/// `KEPT_AFTER_END` ago; returns how many.
pub async fn expire(connection: &mut Connection, now: Millis) -> Result<u64, AppError> {
    let before = Timestamp::from(now - KEPT_AFTER_END.as_millis() as i64);
    Ok(crate::execute!(
        connection,
        sqlx::query("DELETE FROM sessions WHERE expires_at < $1 OR revoked_at < $1").bind(before)
    )?)
}

/// A new token pair, recorded but not yet signed: signing the access token (a millisecond of
/// RSA) happens after the transaction commits, so it never holds the database writer. The
/// refresh token is not signed at all (see `new_refresh_token`).
pub struct IssuedTokens {
    access: Claims,
    refresh: String,
    expires_in: u64,
}

impl IssuedTokens {
    /// Signs the access token on the blocking pool: an RS256 signature takes about a millisecond,
    /// long enough to hold up every request waiting for that async worker, among them the
    /// one holding SQLite's single write connection.
    pub async fn sign_off_thread(self, state: &AppState) -> Result<TokenPair, AppError> {
        let keys = state.keys.clone();
        tokio::task::spawn_blocking(move || self.sign(&keys))
            .await
            .map_err(|error| AppError::Internal(error.into()))?
    }

    pub fn sign(self, keys: &crate::auth::tokens::Keys) -> Result<TokenPair, AppError> {
        metrics::counter!("ums_tokens_issued_total", "type" => "access").increment(1);
        metrics::counter!("ums_tokens_issued_total", "type" => "refresh").increment(1);
        Ok(TokenPair {
            access_token: keys.sign(&self.access)?,
            refresh_token: self.refresh,
            token_type: "Bearer",
            expires_in: self.expires_in,
        })
    }
}

/// What a session was granted when it began: until when it may be refreshed, when the user
/// signed in, and how (RFC 8176 method names). Every token of the session carries the last
/// two.
#[derive(Debug, Clone)]
pub struct Grant {
    pub expires_at: Millis,
    pub signed_in_at: Millis,
    pub amr: Vec<String>,
}

impl Grant {
    /// A session opened by a password alone.
    pub fn password(now: Millis, lifetime: Millis) -> Self {
        Self::new(now, lifetime, &["pwd"])
    }

    /// A session's grant as its row keeps it (`amr` space-separated).
    fn stored(expires_at: Timestamp, signed_in_at: Timestamp, amr: &str) -> Self {
        Grant {
            expires_at: expires_at.millis(),
            signed_in_at: signed_in_at.millis(),
            amr: amr.split_whitespace().map(String::from).collect(),
        }
    }

    /// A session opened now by the methods `amr`.
    pub fn new(now: Millis, lifetime: Millis, amr: &[&str]) -> Self {
        Grant {
            expires_at: now + lifetime,
            signed_in_at: now,
            amr: amr.iter().map(|method| method.to_string()).collect(),
        }
    }

    /// The grant after a step-up with `method` at `now`: the methods gain it and `mfa`, and
    /// the authentication time moves to now.
    pub fn stepped_up(&self, method: &str, now: Millis) -> Self {
        let mut amr = self.amr.clone();
        for added in [method, "mfa"] {
            if !amr.iter().any(|existing| existing == added) {
                amr.push(added.to_string());
            }
        }
        Grant {
            expires_at: self.expires_at,
            signed_in_at: now,
            amr,
        }
    }
}

/// The grant of an open session, from its row.
pub async fn grant_of(
    connection: &mut Connection,
    session_id: &str,
    now: Millis,
) -> Result<Option<Grant>, AppError> {
    let session: Option<(Timestamp, Timestamp, String)> = crate::with_db!(connection, |db| {
        sqlx::query_as(
            "SELECT expires_at, COALESCE(authenticated_at, created_at), amr FROM sessions \
             WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2",
        )
        .bind(session_id)
        .bind(Timestamp::from(now))
        .fetch_optional(db)
        .await
    })?;
    Ok(
        session
            .map(|(expires_at, signed_in_at, amr)| Grant::stored(expires_at, signed_in_at, &amr)),
    )
}

/// Records a step-up on the session: its methods and authentication time, which every later
/// refresh carries along. The session's unspent refresh tokens are retired (the step-up
/// issues the one that continues it), so a refresh token stolen before is not raised with it;
/// spent ones stay, for reuse detection.
pub async fn record_step_up(
    connection: &mut Connection,
    session_id: &str,
    grant: &Grant,
) -> Result<(), AppError> {
    crate::execute!(
        connection,
        sqlx::query("DELETE FROM refresh_tokens WHERE session_id = $1 AND spent_at IS NULL")
            .bind(session_id)
    )?;
    crate::execute!(
        connection,
        sqlx::query("UPDATE sessions SET amr = $2, authenticated_at = $3 WHERE id = $1")
            .bind(session_id)
            .bind(grant.amr.join(" "))
            .bind(Timestamp::from(grant.signed_in_at))
    )?;
    Ok(())
}

/// The prefix of every refresh token, so that secret scanners can recognise one.
pub const REFRESH_TOKEN_PREFIX: &str = "umsr_";

/// A new refresh token. Only UMS ever reads a refresh token, so it needs no signature: it is
/// 256 random bits, stored as their hash, and its row says whose session it continues and
/// until when. (Signing it, as earlier versions did, cost a refresh a second RSA signature.)
pub fn new_refresh_token() -> String {
    format!("{REFRESH_TOKEN_PREFIX}{}", random_token())
}

/// Issues an access token and a refresh token for `session_id`, recording the refresh token's
/// hash. The refresh token expires with its session at the latest.
pub async fn issue_tokens(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    session_id: &str,
    grant: &Grant,
    now: Millis,
) -> Result<IssuedTokens, AppError> {
    let config = &state.config;
    let access_ttl = config.access_token_ttl.as_millis() as i64;
    let refresh_expires_at =
        (now + config.refresh_token_ttl.as_millis() as i64).min(grant.expires_at);
    let access = Claims {
        iss: state.keys.issuer().to_string(),
        sub: user.id.to_string(),
        iat: now / 1000,
        exp: (now + access_ttl) / 1000,
        jti: random_token(),
        typ: TokenType::Access,
        sid: session_id.to_string(),
        is_admin: user.is_admin(),
        aud: state.keys.audience().map(String::from),
        amr: grant.amr.clone(),
        auth_time: grant.signed_in_at / 1000,
    };
    let refresh = new_refresh_token();
    crate::execute!(connection, sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(hash_token(&refresh))
    .bind(session_id)
    .bind(Timestamp::from(now))
    .bind(Timestamp::from(refresh_expires_at))
    )?;
    Ok(IssuedTokens {
        access,
        refresh,
        expires_in: config.access_token_ttl.as_secs(),
    })
}

/// A refresh token as presented: the hash that names its row and, for a signed refresh token
/// of an earlier version (still honoured until it expires, its signature and expiry checked
/// as before), the session its claims name.
pub struct PresentedRefresh {
    pub token_hash: String,
    pub claimed_session: Option<String>,
}

impl PresentedRefresh {
    pub fn opaque(token: &str) -> Self {
        PresentedRefresh {
            token_hash: hash_token(token),
            claimed_session: None,
        }
    }

    pub fn signed(claims: &Claims) -> Self {
        PresentedRefresh {
            token_hash: hash_token(&claims.jti),
            claimed_session: Some(claims.sid.clone()),
        }
    }

    /// Whether the token may continue `session_id` (a signed one, only the session it names).
    fn names(&self, session_id: &str) -> bool {
        self.claimed_session
            .as_deref()
            .is_none_or(|claimed| claimed == session_id)
    }
}

pub enum Spend {
    /// The token was live and is now spent; the session it continues, still open.
    Spent {
        session_id: String,
        user_id: i64,
        grant: Grant,
    },
    /// The token had been spent before: the session has been revoked.
    Reused { session_id: String, user_id: i64 },
    /// Unknown or expired token, or its session is revoked or over.
    Dead,
}

/// Spends a refresh token. Exactly one of many concurrent callers gets `Spent`.
pub async fn spend_refresh_token(
    connection: &mut Connection,
    presented: &PresentedRefresh,
    now: Millis,
) -> Result<Spend, AppError> {
    let spent: Option<String> = crate::with_db!(connection, |db| sqlx::query_scalar(
        "UPDATE refresh_tokens SET spent_at = $2 WHERE token_hash = $1 AND spent_at IS NULL \
         AND expires_at > $2 RETURNING session_id",
    )
    .bind(&presented.token_hash)
    .bind(Timestamp::from(now))
    .fetch_optional(db)
    .await)?;
    let Some(session_id) = spent.filter(|session_id| presented.names(session_id)) else {
        return match find_refresh_token(connection, presented).await? {
            Some(found) if found.spent => {
                revoke(connection, &found.session_id, "refresh_token_reused", now).await?;
                Ok(Spend::Reused {
                    session_id: found.session_id,
                    user_id: found.user_id,
                })
            }
            _ => Ok(Spend::Dead),
        };
    };
    // The session is used now, and still open: its grant, in the same statement.
    let session: Option<(i64, Timestamp, Timestamp, String)> =
        crate::with_db!(connection, |db| sqlx::query_as(
            "UPDATE sessions SET last_used_at = $2 \
             WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2 \
             RETURNING user_id, expires_at, COALESCE(authenticated_at, created_at), amr"
        )
        .bind(&session_id)
        .bind(Timestamp::from(now))
        .fetch_optional(db)
        .await)?;
    Ok(match session {
        Some((user_id, expires_at, signed_in_at, amr)) => Spend::Spent {
            session_id,
            user_id,
            grant: Grant::stored(expires_at, signed_in_at, &amr),
        },
        None => Spend::Dead,
    })
}

/// A stored refresh token: the session it continues, whose it is, and whether it was spent.
pub struct RefreshTokenRow {
    pub session_id: String,
    pub user_id: i64,
    pub spent: bool,
}

/// The row of a presented refresh token (of the session its claims name, for a signed one).
pub async fn find_refresh_token(
    connection: &mut Connection,
    presented: &PresentedRefresh,
) -> Result<Option<RefreshTokenRow>, AppError> {
    let found: Option<(String, i64, Option<Timestamp>)> =
        crate::with_db!(connection, |db| sqlx::query_as(
            "SELECT refresh_tokens.session_id, sessions.user_id, refresh_tokens.spent_at \
             FROM refresh_tokens JOIN sessions ON sessions.id = refresh_tokens.session_id \
             WHERE refresh_tokens.token_hash = $1"
        )
        .bind(&presented.token_hash)
        .fetch_optional(db)
        .await)?;
    Ok(found
        .map(|(session_id, user_id, spent_at)| RefreshTokenRow {
            session_id,
            user_id,
            spent: spent_at.is_some(),
        })
        .filter(|row| presented.names(&row.session_id)))
}

/// Revokes one session; true if it was open.
pub async fn revoke(
    connection: &mut Connection,
    session_id: &str,
    reason: &str,
    now: Millis,
) -> Result<bool, AppError> {
    let owner: Option<i64> = crate::with_db!(connection, |db| {
        sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 WHERE id = $1 AND revoked_at IS NULL \
         RETURNING user_id",
    )
    .bind(session_id)
    .bind(Timestamp::from(now))
    .bind(reason)
    .fetch_optional(db)
    .await
    })?;
    if let Some(user_id) = owner {
        connection.changed(user_id);
    }
    Ok(owner.is_some())
}

/// Revokes every open session of a user (deactivation, a password reset or change), but
/// `keep` (the session that changed the password); returns how many.
pub async fn revoke_all(
    connection: &mut Connection,
    user_id: i64,
    reason: &str,
    keep: Option<&str>,
    now: Millis,
) -> Result<u64, AppError> {
    let revoked = crate::execute!(
        connection,
        sqlx::query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3 \
             WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $4",
        )
        .bind(user_id)
        .bind(Timestamp::from(now))
        .bind(reason)
        .bind(keep)
    )?;
    connection.changed(user_id);
    Ok(revoked)
}

/// (other sessions the user ever had, of them from this address and device): a sign-in
/// alert goes out only for a device and address never seen before.
pub async fn earlier_sessions(
    connection: &mut Connection,
    user_id: i64,
    origin: &Origin,
    current_session: &str,
) -> Result<(i64, i64), AppError> {
    Ok(crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN ip IS NOT DISTINCT FROM $2 \
         AND user_agent IS NOT DISTINCT FROM $3 THEN 1 ELSE 0 END), 0) \
         FROM sessions WHERE user_id = $1 AND id <> $4",
    )
    .bind(user_id)
    .bind(origin.ip.as_deref().and_then(Inet::parse))
    .bind(origin.user_agent.as_deref())
    .bind(current_session)
    .fetch_one(db)
    .await)?)
}

/// Revokes one session of `user_id`; false if it is not theirs or already over.
pub async fn revoke_own(
    connection: &mut Connection,
    user_id: i64,
    session_id: &str,
    now: Millis,
) -> Result<bool, AppError> {
    let result = crate::execute!(
        connection,
        sqlx::query(
            "UPDATE sessions SET revoked_at = $3, revoked_reason = 'revoked_by_user' \
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL AND expires_at > $3",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(Timestamp::from(now))
    )?;
    connection.changed(user_id);
    Ok(result > 0)
}

/// The caller's open sessions, most recently used first.
pub async fn list_open(
    connection: &mut Connection,
    user_id: i64,
    current_session: &str,
    now: Millis,
) -> Result<Vec<SessionView>, AppError> {
    #[derive(sqlx::FromRow)]
    struct SessionRow {
        id: String,
        ip: Option<Inet>,
        user_agent: Option<String>,
        created_at: Timestamp,
        last_used_at: Timestamp,
    }
    let rows = crate::with_db!(connection, |db| sqlx::query_as::<_, SessionRow>(
        "SELECT id, ip, user_agent, created_at, last_used_at FROM sessions \
         WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
         ORDER BY last_used_at DESC, created_at DESC",
    )
    .bind(user_id)
    .bind(Timestamp::from(now))
    .fetch_all(db)
    .await)?;
    Ok(rows
        .into_iter()
        .map(|row| SessionView {
            current: row.id == current_session,
            id: row.id,
            ip: row.ip.map(|ip| ip.to_string()),
            user_agent: row.user_agent,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        })
        .collect())
}

/// Built once: this query runs on every authenticated request the cache cannot answer.
static LIVE_SESSION_USER: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let columns = user_columns("users.");
    format!(
        "SELECT sessions.expires_at AS session_expires_at, {columns} \
         FROM sessions JOIN users ON users.id = sessions.user_id \
         WHERE sessions.id = $1 AND sessions.user_id = $2 AND sessions.revoked_at IS NULL \
         AND sessions.expires_at > $3"
    )
});

#[derive(sqlx::FromRow)]
struct LiveSession {
    session_expires_at: Timestamp,
    #[sqlx(flatten)]
    user: User,
}

/// The account behind an access token, if its session is still open and it is active: from
/// the auth cache when it knows them (`store::auth_cache`), else read and remembered.
pub async fn live_session_user(
    state: &AppState,
    claims: &Claims,
    now: Millis,
) -> Result<Option<User>, AppError> {
    let Some(user_id) = claims.user_id() else {
        return Ok(None);
    };
    let cache = state.store.auth_cache();
    if let Some(user) = cache.get(user_id, &claims.sid, now) {
        metrics::counter!("ums_auth_cache_total", "outcome" => "hit").increment(1);
        return Ok(Some(user).filter(User::is_active));
    }
    metrics::counter!("ums_auth_cache_total", "outcome" => "miss").increment(1);
    let epoch = cache.epoch();
    let sql = LIVE_SESSION_USER.as_str();
    let mut connection = state.store.read().await?;
    let found = crate::with_db!(connection, |db| sqlx::query_as::<_, LiveSession>(sql)
        .bind(&claims.sid)
        .bind(user_id)
        .bind(Timestamp::from(now))
        .fetch_optional(db)
        .await)?;
    Ok(found
        .map(|live| {
            let expires_at = live.session_expires_at.millis();
            cache.fill(epoch, &live.user, &claims.sid, expires_at, now);
            live.user
        })
        .filter(User::is_active))
}
