//! Account lockout: `threshold` failures in a row lock a username for `duration`.
//!
//! An attempt is counted *before* its password is evaluated, in one atomic statement, so
//! parallel attempts each get their own number: of 200 parallel wrong passwords, only the
//! first `threshold` are evaluated and the rest are refused as locked. The lock is set by the
//! attempt that reaches the threshold (and lifted again if that attempt turns out correct),
//! so a crash between counting and evaluating can only leave an account locked, never open.
//!
//! Real accounts keep their counter on the `users` row; submitted names that match no
//! account use `login_throttles`, so both lock alike and the response reveals nothing.

use crate::clock::{Millis, Timestamp};
use crate::store::{Connection, StoreError};

#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    pub threshold: i64,
    pub duration: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    User(i64),
    UnknownName(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Evaluate the password; this is failure number `attempt` if it is wrong.
    Evaluate { attempt: i64 },
    /// Do not evaluate: locked until the given time.
    Locked { until: Millis },
    /// Counted and given back already: a sign-in going on after a step between (consent).
    Released,
}

impl Reservation {
    /// Whether a wrong password at this attempt is the one that locks the account.
    pub fn locks_on_failure(self, policy: LockoutPolicy) -> bool {
        matches!(self, Reservation::Evaluate { attempt } if attempt == policy.threshold)
    }
}

/// The SET expressions of a reservation, written once for both tables. Parameters:
/// `$2` now, `$3` threshold, `$4` the lock's end if this attempt reaches the threshold.
fn reservation_assignments(table: &str) -> String {
    let expired = format!("{table}.locked_until IS NOT NULL AND {table}.locked_until <= $2");
    let next_count = format!("CASE WHEN {expired} THEN 1 ELSE {table}.failed_login_count + 1 END");
    format!(
        "failed_login_count = {next_count}, \
         locked_until = CASE WHEN {table}.locked_until > $2 THEN {table}.locked_until \
                             WHEN {next_count} >= $3 THEN $4 ELSE NULL END"
    )
}

/// Counts one attempt for `subject` and says whether it may be evaluated.
pub async fn reserve(
    connection: &mut Connection,
    policy: LockoutPolicy,
    subject: &Subject,
    now: Millis,
) -> Result<Reservation, StoreError> {
    let (attempt, locked_until): (i64, Option<Timestamp>) = match subject {
        Subject::User(id) => {
            let sql = format!(
                "UPDATE users SET {} WHERE id = $1 RETURNING failed_login_count, locked_until",
                reservation_assignments("users")
            );
            let counted = crate::with_db!(connection, |db| sqlx::query_as(&sql)
                .bind(*id)
                .bind(Timestamp::from(now))
                .bind(policy.threshold)
                .bind(Timestamp::from(now + policy.duration))
                .fetch_one(db)
                .await)?;
            connection.changed(*id);
            counted
        }
        Subject::UnknownName(name) => {
            let sql = format!(
                "INSERT INTO login_throttles (subject, failed_login_count, locked_until, updated_at) \
                 VALUES ($1, 1, CASE WHEN 1 >= $3 THEN $4 ELSE NULL END, $2) \
                 ON CONFLICT (subject) DO UPDATE SET {}, updated_at = $2 \
                 RETURNING failed_login_count, locked_until",
                reservation_assignments("login_throttles")
            );
            crate::with_db!(connection, |db| sqlx::query_as(&sql)
                .bind(name)
                .bind(Timestamp::from(now))
                .bind(policy.threshold)
                .bind(Timestamp::from(now + policy.duration))
                .fetch_one(db)
                .await)?
        }
    };
    Ok(decide(
        policy,
        attempt,
        locked_until.map(Timestamp::millis),
        now,
    ))
}

/// The rule, apart from the storage: attempts up to the threshold are evaluated.
pub fn decide(
    policy: LockoutPolicy,
    attempt: i64,
    locked_until: Option<Millis>,
    now: Millis,
) -> Reservation {
    if attempt <= policy.threshold {
        Reservation::Evaluate { attempt }
    } else {
        Reservation::Locked {
            until: locked_until
                .filter(|until| *until > now)
                .unwrap_or(now + policy.duration),
        }
    }
}

/// Failures in a row counted for `subject` now: 0 while it is locked (a locked name is
/// refused without evaluation, so there is nothing to slow down) or after a lock expired.
pub async fn current_failures(
    connection: &mut Connection,
    subject: &Subject,
    user: Option<&crate::users::User>,
) -> Result<i64, StoreError> {
    let (count, locked_until) = match (subject, user) {
        (Subject::User(_), Some(user)) => (user.failed_login_count, user.locked_until),
        (Subject::UnknownName(name), _) => {
            let row: Option<(i64, Option<Timestamp>)> = crate::with_db!(connection, |db| {
                sqlx::query_as(
                    "SELECT failed_login_count, locked_until FROM login_throttles WHERE subject = $1",
                )
                .bind(name)
                .fetch_optional(db)
                .await
            })?;
            row.unwrap_or((0, None))
        }
        (Subject::User(_), None) => (0, None),
    };
    Ok(if locked_until.is_some() { 0 } else { count })
}

/// A correct password, a reset or an admin unlock: the counter starts again.
pub async fn clear(connection: &mut Connection, subject: &Subject) -> Result<(), StoreError> {
    match subject {
        Subject::User(id) => {
            crate::execute!(
                connection,
                sqlx::query(
                    "UPDATE users SET failed_login_count = 0, locked_until = NULL WHERE id = $1",
                )
                .bind(*id)
            )?;
            connection.changed(*id);
        }
        Subject::UnknownName(name) => {
            crate::execute!(
                connection,
                sqlx::query("DELETE FROM login_throttles WHERE subject = $1").bind(name)
            )?;
        }
    }
    Ok(())
}

/// Gives back an attempt that was right but does not end the sign-in: a password whose second
/// factor is still to come. It counts as no failure, and clears none of the failures before
/// it (else a thief with the password could reset the count between guesses at the code);
/// a lock this attempt set is lifted.
pub async fn release(
    connection: &mut Connection,
    policy: LockoutPolicy,
    subject: &Subject,
    reservation: Reservation,
) -> Result<(), StoreError> {
    let (Subject::User(id), Reservation::Evaluate { attempt }) = (subject, reservation) else {
        return Ok(());
    };
    crate::execute!(
        connection,
        sqlx::query(
            "UPDATE users SET failed_login_count = CASE WHEN failed_login_count > 0 \
             THEN failed_login_count - 1 ELSE 0 END, \
             locked_until = CASE WHEN $2 THEN NULL ELSE locked_until END WHERE id = $1",
        )
        .bind(*id)
        .bind(attempt == policy.threshold)
    )?;
    connection.changed(*id);
    Ok(())
}

/// Forgets the counters of unknown names that are not locked and saw no attempt for a day.
pub async fn expire_idle(connection: &mut Connection, now: Millis) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query(
            "DELETE FROM login_throttles WHERE (locked_until IS NULL OR locked_until < $1) \
             AND updated_at < $2"
        )
        .bind(Timestamp::from(now))
        .bind(Timestamp::from(now - 86_400_000))
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LockoutPolicy = LockoutPolicy {
        threshold: 5,
        duration: 30 * 60 * 1000,
    };

    #[test]
    fn attempts_up_to_the_threshold_are_evaluated() {
        for attempt in 1..=5 {
            assert_eq!(
                decide(POLICY, attempt, None, 0),
                Reservation::Evaluate { attempt }
            );
        }
        assert!(decide(POLICY, 5, Some(1), 0).locks_on_failure(POLICY));
        assert!(!decide(POLICY, 4, None, 0).locks_on_failure(POLICY));
    }

    #[test]
    fn attempts_past_the_threshold_are_locked_until_the_recorded_end() {
        assert_eq!(
            decide(POLICY, 6, Some(90_000), 1_000),
            Reservation::Locked { until: 90_000 }
        );
        // A lock that has not been written yet (its attempt is still being evaluated).
        assert_eq!(
            decide(POLICY, 7, None, 1_000),
            Reservation::Locked {
                until: 1_000 + POLICY.duration
            }
        );
    }
}
