//! The log of login attempts (`login_attempts`): every attempt, its address and outcome, for
//! the security team's queries, until the hourly maintenance expires it.

use crate::audit::Origin;
use crate::clock::{Millis, Timestamp};
use crate::store::{Connection, Inet, StoreError};

pub async fn record(
    connection: &mut Connection,
    login: &str,
    origin: &Origin,
    success: bool,
    now: Millis,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query(
            "INSERT INTO login_attempts (username, ip, user_agent, success, attempted_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(login)
        .bind(origin.ip.as_deref().and_then(Inet::parse))
        .bind(&origin.user_agent)
        .bind(success)
        .bind(Timestamp::from(now))
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
