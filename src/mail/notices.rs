//! Security notices the service sends on its own: an account locked by failed logins, and a
//! sign-in from a device and address never seen before.

use serde_json::json;

use crate::audit::Origin;
use crate::clock::{Millis, to_rfc3339};
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::state::AppState;
use crate::store::Connection;
use crate::users::User;

/// Queues the "account locked" notice, once per lock (the caller is the locking attempt).
#[tracing::instrument(skip_all)]
pub async fn account_locked(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    until: Millis,
    now: Millis,
) -> Result<(), AppError> {
    state
        .outbox
        .enqueue(
            connection,
            user,
            &user.email,
            EmailKind::AccountLocked,
            json!({"unlocks_at": to_rfc3339(until), "failures": state.config.lockout_threshold}),
            now,
        )
        .await
}

/// Queues the new sign-in alert when this device and address pair is new for the user
/// (and the user has signed in before, and has not opted out).
#[tracing::instrument(skip_all)]
pub async fn new_sign_in(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    origin: &Origin,
    current_session: &str,
    now: Millis,
) -> Result<(), AppError> {
    if !user.new_login_alerts {
        return Ok(());
    }
    let (earlier, same_device) =
        crate::auth::sessions::earlier_sessions(connection, user.id, origin, current_session)
            .await?;
    if earlier == 0 || same_device > 0 {
        return Ok(());
    }
    let not_me_link = crate::auth::adaptive::not_me_link(connection, state, user.id, now).await?;
    state
        .outbox
        .enqueue(
            connection,
            user,
            &user.email,
            EmailKind::NewLogin,
            json!({
                "ip": origin.ip.as_deref().unwrap_or("unknown"),
                "device": crate::mail::describe_device(origin.user_agent.as_deref()),
                "not_me_link": not_me_link,
            }),
            now,
        )
        .await
}
