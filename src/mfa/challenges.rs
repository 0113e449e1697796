//! Challenges: the state between two steps, kept in the database so any instance behind the
//! load balancer can take the second step. An `mfa_token` is one (a sign-in waiting for its
//! second factor, or for an admin's first enrolment); so is a passkey ceremony (the server
//! half WebAuthn requires to be kept server-side). The token is random and stored hashed; a
//! challenge lives five minutes, is spent once, and dies after three wrong answers.

use serde_json::Value;
use sqlx::types::Json;

use crate::clock::{Millis, Timestamp};
use crate::security::risk::SignInRisk;
use crate::security::secrets::{hash_token, random_token};
use crate::store::{Connection, StoreError};

pub const LIFETIME: Millis = 5 * 60 * 1000;
pub const MAX_FAILURES: i32 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A password was right; the second factor is awaited.
    Login,
    /// A password was right, but the account must enrol a factor first (an admin under
    /// `UMS_REQUIRE_MFA_FOR_ADMINS`).
    Enrollment,
    /// A signed-in session proving a factor again.
    StepUp,
    /// A passkey sign-in with no password and no name: the passkey says whose it is.
    Passwordless,
    /// A passkey being registered.
    PasskeyRegistration,
    /// A risky sign-in confirming itself with a code emailed to the verified address.
    Verification,
    /// A right password, waiting for the person to accept the terms or privacy notice in force.
    Consent,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Login => "login",
            Purpose::Enrollment => "enrollment",
            Purpose::StepUp => "step_up",
            Purpose::Passwordless => "passwordless",
            Purpose::PasskeyRegistration => "passkey_registration",
            Purpose::Verification => "verification",
            Purpose::Consent => "consent",
        }
    }

    fn parse(value: &str) -> Option<Self> {
        [
            Purpose::Login,
            Purpose::Enrollment,
            Purpose::StepUp,
            Purpose::Passwordless,
            Purpose::PasskeyRegistration,
            Purpose::Verification,
            Purpose::Consent,
        ]
        .into_iter()
        .find(|purpose| purpose.as_str() == value)
    }
}

/// The answer to a challenge token that does not (or no longer) work.
pub const EXPIRED: &str = "The mfa_token is unknown, used or expired; sign in again.";

#[derive(Debug, Clone)]
pub struct Challenge {
    pub token_hash: String,
    pub purpose: Purpose,
    pub user_id: Option<i64>,
    pub session_id: Option<String>,
    pub ceremony: Option<Value>,
    pub risk: Option<SignInRisk>,
    pub failures: i32,
}

pub struct NewChallenge<'a> {
    pub purpose: Purpose,
    pub user_id: Option<i64>,
    pub session_id: Option<&'a str>,
    pub ceremony: Option<Value>,
    pub risk: Option<&'a SignInRisk>,
}

/// Stores a challenge and returns its token (shown once, to the client).
pub async fn create(
    connection: &mut Connection,
    challenge: NewChallenge<'_>,
    now: Millis,
) -> Result<String, StoreError> {
    let token = random_token();
    crate::execute!(
        connection,
        sqlx::query(
            "INSERT INTO mfa_challenges \
             (token_hash, purpose, user_id, session_id, ceremony, created_at, expires_at, risk) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(hash_token(&token))
        .bind(challenge.purpose.as_str())
        .bind(challenge.user_id)
        .bind(challenge.session_id)
        .bind(challenge.ceremony.map(Json))
        .bind(Timestamp::from(now))
        .bind(Timestamp::from(now + LIFETIME))
        .bind(challenge.risk.map(Json))
    )?;
    Ok(token)
}

/// The live challenge of `token`: not expired, not spent, not failed too often.
pub async fn find_live(
    connection: &mut Connection,
    token: &str,
    now: Millis,
) -> Result<Option<Challenge>, StoreError> {
    type Row = (
        String,
        String,
        Option<i64>,
        Option<String>,
        Option<Json<Value>>,
        i32,
        Option<Json<SignInRisk>>,
    );
    let row: Option<Row> = crate::with_db!(connection, |db| {
        sqlx::query_as(
            "SELECT token_hash, purpose, user_id, session_id, ceremony, failures, risk \
         FROM mfa_challenges \
         WHERE token_hash = $1 AND spent_at IS NULL AND expires_at > $2 AND failures < $3",
        )
        .bind(hash_token(token))
        .bind(Timestamp::from(now))
        .bind(MAX_FAILURES)
        .fetch_optional(db)
        .await
    })?;
    let Some((token_hash, purpose, user_id, session_id, ceremony, failures, risk)) = row else {
        return Ok(None);
    };
    let purpose = Purpose::parse(&purpose)
        .ok_or_else(|| StoreError::Corrupt(format!("challenge purpose {purpose}")))?;
    Ok(Some(Challenge {
        token_hash,
        purpose,
        user_id,
        session_id,
        ceremony: ceremony.map(|Json(value)| value),
        risk: risk.map(|Json(risk)| risk),
        failures,
    }))
}

/// Replaces the ceremony of a live challenge (a new WebAuthn challenge for the same step).
pub async fn set_ceremony(
    connection: &mut Connection,
    token_hash: &str,
    ceremony: Value,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query("UPDATE mfa_challenges SET ceremony = $2 WHERE token_hash = $1")
            .bind(token_hash)
            .bind(Json(ceremony))
    )?;
    Ok(())
}

/// Counts a wrong answer; returns how many there have been.
pub async fn count_failure(
    connection: &mut Connection,
    token_hash: &str,
) -> Result<i32, StoreError> {
    Ok(crate::with_db!(connection, |db| sqlx::query_scalar(
        "UPDATE mfa_challenges SET failures = failures + 1 WHERE token_hash = $1 RETURNING failures",
    )
    .bind(token_hash)
    .fetch_optional(db)
    .await)?
    .unwrap_or(MAX_FAILURES))
}

/// Claims a live challenge for an answer about to be weighed, in the answer's transaction
/// (rolled back with it if the answer is wrong): true for exactly one of two racing answers,
/// and never for a challenge expired or failed out since it was read.
pub async fn claim(
    connection: &mut Connection,
    token_hash: &str,
    now: Millis,
) -> Result<bool, StoreError> {
    let affected = crate::execute!(
        connection,
        sqlx::query(
            "UPDATE mfa_challenges SET spent_at = $2 WHERE token_hash = $1 AND spent_at IS NULL \
             AND expires_at > $2 AND failures < $3",
        )
        .bind(token_hash)
        .bind(Timestamp::from(now))
        .bind(MAX_FAILURES)
    )?;
    Ok(affected == 1)
}

/// Spends the challenge: true for exactly one of two racing answers.
pub async fn spend(
    connection: &mut Connection,
    token_hash: &str,
    now: Millis,
) -> Result<bool, StoreError> {
    let affected = crate::execute!(
        connection,
        sqlx::query(
            "UPDATE mfa_challenges SET spent_at = $2 WHERE token_hash = $1 AND spent_at IS NULL",
        )
        .bind(token_hash)
        .bind(Timestamp::from(now))
    )?;
    Ok(affected == 1)
}

/// Ends every challenge of an account (its password changed: a sign-in begun with the old
/// one must not finish).
pub async fn remove_for_user(connection: &mut Connection, user_id: i64) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1").bind(user_id)
    )?;
    Ok(())
}

/// Deletes challenges that expired (the periodic sweep).
pub async fn delete_expired(connection: &mut Connection, now: Millis) -> Result<u64, StoreError> {
    Ok(crate::execute!(
        connection,
        sqlx::query("DELETE FROM mfa_challenges WHERE expires_at <= $1").bind(Timestamp::from(now))
    )?)
}
