//! The log of login attempts (`login_attempts`): every attempt, its address and outcome, for
//! the security team's queries, until the hourly maintenance expires it.

use crate::audit::Origin;
use crate::clock::{Millis, Timestamp};
use crate::security::risk::SignInRisk;
use crate::store::{Connection, Inet, StoreError};
use sqlx::types::Json;

/// One attempt: the name typed, the account it named (if any), and its risk when weighed.
pub struct Attempt<'a> {
    pub login: &'a str,
    pub user_id: Option<i64>,
    pub success: bool,
    pub risk: Option<&'a SignInRisk>,
}

pub async fn record(
    connection: &mut Connection,
    attempt: Attempt<'_>,
    origin: &Origin,
    now: Millis,
) -> Result<(), StoreError> {
    let risk = attempt.risk;
    crate::execute!(
        connection,
        sqlx::query(
            "INSERT INTO login_attempts (username, ip, user_agent, success, attempted_at, \
             user_id, risk_score, risk_signals, country) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(attempt.login)
        .bind(origin.ip.as_deref().and_then(Inet::parse))
        .bind(&origin.user_agent)
        .bind(attempt.success)
        .bind(Timestamp::from(now))
        .bind(attempt.user_id)
        .bind(risk.map(|risk| risk.assessment.score as i32))
        .bind(risk.map(|risk| Json(&risk.assessment.signals)))
        .bind(risk.and_then(|risk| risk.place.as_ref().map(|place| place.country_code.clone())))
    )?;
    Ok(())
}

/// Deletes the attempts made before `before`; returns how many.
pub async fn expire(connection: &mut Connection, before: Millis) -> Result<u64, StoreError> {
    Ok(crate::execute!(
        connection,
        sqlx::query("DELETE FROM login_attempts WHERE attempted_at < $1")
            .bind(Timestamp::from(before))
    )?)
}
