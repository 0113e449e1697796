//! Erasure (GDPR Art. 17): a person deletes their account (`DELETE /api/users/me`, with their
//! password, and a recent proof of their second factor when they have one) or an admin
//! deletes it. Everything UMS holds about them goes: the user row and all that hangs from it
//! by foreign keys (sessions, factors, devices, consents, memberships, links), the rows that
//! name them without a key (login attempts, throttles, invitations, queued mail), and the key
//! that seals their personal fields in the audit trail (`audit::personal`), so those read as
//! erased in the table and in every archive while the chain still verifies.
//!
//! With `UMS_ERASURE_GRACE` the erasure waits: the account is disabled and its sessions end
//! at once, and an admin can cancel until the time comes.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{self, Action, Event, Origin};
use crate::clock::{Millis, Timestamp};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{CaseInsensitive, Connection};
use crate::users::User;
use crate::users::store as user_store;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct EraseRequest {
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

/// What became of an erasure asked for.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Erasure {
    /// `erased`, or `scheduled` while the grace period runs.
    pub status: &'static str,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub erase_after: Option<Timestamp>,
}

/// Who asked.
#[derive(Debug, Clone, Copy)]
pub enum Requester {
    /// The person, for their own account.
    Themselves,
    /// A system admin, by id.
    Admin(i64),
}

/// `DELETE /api/users/me`: the password again, and a session that proved the second factor
/// lately (`POST /api/auth/step-up`) when the account has one.
pub async fn erase_self(
    state: &AppState,
    user: &User,
    session: &crate::auth::tokens::Claims,
    request: EraseRequest,
    origin: &Origin,
) -> Result<Erasure, AppError> {
    crate::auth::password_change::confirm_password(
        state,
        user,
        request.password,
        "password",
        origin,
    )
    .await?;
    let factors = {
        let mut connection = state.store.read().await?;
        crate::mfa::factors_of(&mut connection, user.id).await?
    };
    if factors.any() {
        crate::mfa::service::require_recent_sign_in(session, &factors, state.now())?;
    }
    ask(state, Requester::Themselves, user.id, origin).await
}

/// Erases the account now, or schedules it when there is a grace period.
pub async fn ask(
    state: &AppState,
    requester: Requester,
    target_id: i64,
    origin: &Origin,
) -> Result<Erasure, AppError> {
    let now = state.now();
    let grace = state.config.erasure_grace.as_millis() as Millis;
    let mut transaction = audit::Audited::begin(&state.store).await?;
    claim_the_chain(&mut transaction).await?;
    let target = user_store::find_by_id(&mut transaction, target_id)
        .await?
        .ok_or(AppError::NotFound)?;
    crate::users::service::keep_an_admin(&mut transaction, &target).await?;
    if matches!(requester, Requester::Themselves) {
        keep_lab_admins(&mut transaction, &target).await?;
    }
    let actor = match requester {
        Requester::Themselves => target.id,
        Requester::Admin(admin) => admin,
    };
    let by = match requester {
        Requester::Themselves => "self",
        Requester::Admin(_) => "admin",
    };
    if grace == 0 {
        erase(&mut transaction, &target).await?;
        transaction
            .commit(
                Event::new(Action::UserDeleted, now)
                    .actor(Some(actor))
                    .resource("user", target.id)
                    .details(json!({"erased": true, "requested_by": by}))
                    .origin(origin),
            )
            .await?;
        return Ok(Erasure {
            status: "erased",
            erase_after: None,
        });
    }
    let erase_after = now + grace;
    crate::execute!(
        &mut transaction,
        sqlx::query(
            "UPDATE users SET is_active = FALSE, erase_after = $2, updated_at = $3 WHERE id = $1"
        )
        .bind(target.id)
        .bind(Timestamp::from(erase_after))
        .bind(Timestamp::from(now))
    )?;
    crate::store::AsDb::changed(&mut transaction, target.id);
    crate::auth::sessions::revoke_all(&mut transaction, target.id, "erasure", None, now).await?;
    user_store::void_emailed_links(&mut transaction, target.id).await?;
    transaction
        .commit(
            Event::new(Action::ErasureRequested, now)
                .actor(Some(actor))
                .resource("user", target.id)
                .details(json!({
                    "requested_by": by,
                    "erase_after": crate::clock::to_rfc3339(erase_after),
                }))
                .origin(origin),
        )
        .await?;
    Ok(Erasure {
        status: "scheduled",
        erase_after: Some(Timestamp::from(erase_after)),
    })
}

/// An admin cancels an erasure still in its grace period. The account stays disabled until
/// an admin activates it: whoever asked for the erasure may not be its owner. (Activating
/// the account cancels the erasure too: `users::store::update`.)
pub async fn cancel(
    state: &AppState,
    admin: &User,
    target_id: i64,
    origin: &Origin,
) -> Result<(), AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let cancelled = crate::execute!(
        &mut transaction,
        sqlx::query(
            "UPDATE users SET erase_after = NULL, updated_at = $2 \
             WHERE id = $1 AND erase_after IS NOT NULL"
        )
        .bind(target_id)
        .bind(Timestamp::from(now))
    )?;
    crate::store::AsDb::changed(&mut transaction, target_id);
    if cancelled == 0 {
        return Err(AppError::NotFound);
    }
    transaction
        .commit(
            Event::new(Action::ErasureCancelled, now)
                .actor(Some(admin.id))
                .resource("user", target_id)
                .origin(origin),
        )
        .await
}

/// Carries out the erasures whose grace period ended (the hourly housekeeping).
pub async fn erase_due(state: &AppState, now: Millis) -> Result<u64, AppError> {
    let due: Vec<i64> = {
        let mut connection = state.store.read().await?;
        crate::with_db!(connection, |db| sqlx::query_scalar(
            "SELECT id FROM users WHERE erase_after IS NOT NULL AND erase_after <= $1 ORDER BY id"
        )
        .bind(Timestamp::from(now))
        .fetch_all(db)
        .await)?
    };
    let mut erased = 0;
    for user_id in due {
        let mut transaction = audit::Audited::begin(&state.store).await?;
        claim_the_chain(&mut transaction).await?;
        // Still due now that the row is held: not cancelled, nor the account activated.
        let still_due = crate::execute!(
            &mut transaction,
            sqlx::query(
                "UPDATE users SET erase_after = erase_after WHERE id = $1 \
                 AND erase_after IS NOT NULL AND erase_after <= $2"
            )
            .bind(user_id)
            .bind(Timestamp::from(now))
        )?;
        let target = match still_due {
            0 => None,
            _ => user_store::find_by_id(&mut transaction, user_id).await?,
        };
        let Some(target) = target else {
            continue;
        };
        erase(&mut transaction, &target).await?;
        transaction
            .commit(
                Event::new(Action::UserDeleted, now)
                    .resource("user", user_id)
                    .details(json!({"erased": true, "requested_by": "grace_period_ended"})),
            )
            .await?;
        erased += 1;
    }
    Ok(erased)
}

/// Claims the audit chain's head before anything is deleted: an erasure deletes the person's
/// key, which a concurrent event about them may be using, and both must take the head and
/// the key in the same order (else PostgreSQL finds a deadlock).
async fn claim_the_chain(connection: &mut Connection) -> Result<(), AppError> {
    crate::execute!(
        connection,
        sqlx::query("UPDATE audit_chain SET seq = seq WHERE id = 1")
    )?;
    Ok(())
}

/// A person leaving on their own may not leave a lab with members and no lab admin (a system
/// admin's erasure may): checked when they ask, grace period or not.
async fn keep_lab_admins(connection: &mut Connection, target: &User) -> Result<(), AppError> {
    for membership in user_store::labs_of(connection, target.id).await? {
        if membership.role != "lab_admin" {
            continue;
        }
        let (members, admins) =
            crate::labs::store::admin_balance(connection, membership.id).await?;
        if members > 1 && admins == 1 {
            return Err(AppError::conflict(
                "lab",
                "you are the last lab_admin of a lab with members: give the role to another member first",
            ));
        }
    }
    Ok(())
}

/// Deletes everything about `target`.
async fn erase(connection: &mut Connection, target: &User) -> Result<(), AppError> {
    let names = [target.username.as_str(), target.email.as_str()];
    crate::execute!(
        connection,
        sqlx::query(
            "DELETE FROM login_attempts WHERE user_id = $1 OR username = $2 OR username = $3"
        )
        .bind(target.id)
        .bind(CaseInsensitive(names[0]))
        .bind(CaseInsensitive(names[1]))
    )?;
    for name in names {
        crate::execute!(
            connection,
            sqlx::query("DELETE FROM login_throttles WHERE subject = $1").bind(name.to_lowercase())
        )?;
    }
    crate::execute!(
        connection,
        sqlx::query("DELETE FROM lab_invitations WHERE email = $1")
            .bind(target.email.to_lowercase())
    )?;
    crate::execute!(
        connection,
        sqlx::query("DELETE FROM email_outbox WHERE recipient = $1")
            .bind(CaseInsensitive(names[1]))
    )?;
    user_store::delete(connection, target.id).await?;
    Ok(())
}
