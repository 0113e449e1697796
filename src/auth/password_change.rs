//! Changing a password: forgotten (an emailed reset link), or known (the current one
//! confirmed). Either is a credential event: it voids every emailed link outstanding and
//! ends the other sessions. The change, its event and its notice commit together.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, Action, Event, Origin};
use crate::auth::links::{self, INVALID_LINK, Link, hours};
use crate::auth::password::check_policy;
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::security::lockout::{self, Subject};
use crate::state::AppState;
use crate::users::store::{self as user_store};
use crate::users::{Email, User};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotPasswordRequest {
    pub email: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    pub token: String,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    #[schema(value_type = String, format = Password)]
    pub current_password: SecretString,
    #[schema(value_type = String, format = Password)]
    pub new_password: SecretString,
}

/// Always 202 with the same body. A reset email goes out only for an active account.
#[tracing::instrument(skip_all)]
pub async fn forgot_password(
    state: &AppState,
    request: ForgotPasswordRequest,
    origin: &Origin,
) -> Result<(), AppError> {
    let Ok(email) = Email::parse(&request.email) else {
        return Err(AppError::field("email", "must be an email address"));
    };
    crate::security::count_account_request(state, origin).await?;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let user = user_store::find_by_login(&mut transaction, email.as_str())
        .await?
        .filter(|user| user.is_active() && user.email == email.as_str());
    // Both paths write one audit event in one transaction, so they cost about the same.
    let event = Event::new(Action::PasswordResetRequested, now).origin(origin);
    match &user {
        Some(user)
            if links::sent_recently(&mut transaction, Link::PasswordReset, user.id, None, now)
                .await? =>
        {
            transaction.record(event
                    .actor(Some(user.id))
                    .resource("user", user.id)
                    .details(
                        json!({"email_sent": false, "reason": "a reset link was sent minutes ago"}),
                    )).await?;
        }
        Some(user) => {
            send_reset_link(&mut transaction, state, user, now).await?;
            transaction
                .record(event.actor(Some(user.id)).resource("user", user.id))
                .await?;
        }
        None => {
            transaction
                .record(
                    event
                        .failed()
                        .resource("user", "unknown")
                        .details(json!({"reason": "no active account"})),
                )
                .await?;
        }
    }
    transaction.commit_recorded().await?;
    Ok(())
}

/// Issues a reset link (voiding older ones) and queues its email, in the caller's transaction.
pub async fn send_reset_link(
    connection: &mut crate::store::Connection,
    state: &AppState,
    user: &User,
    now: crate::clock::Millis,
) -> Result<(), AppError> {
    let ttl = state.config.reset_token_ttl;
    let token = links::issue(connection, Link::PasswordReset, user.id, None, now, ttl).await?;
    let link = state.outbox.link("reset-password", &token);
    state
        .outbox
        .enqueue(
            connection,
            user,
            &user.email,
            EmailKind::PasswordReset,
            json!({"link": link, "valid_hours": hours(ttl)}),
            now,
        )
        .await
}

#[tracing::instrument(skip_all)]
pub async fn reset_password(
    state: &AppState,
    request: ResetPasswordRequest,
    origin: &Origin,
) -> Result<(), AppError> {
    let now = state.now();
    let (token_id, user_id) = {
        let mut connection = state.store.read().await?;
        let live =
            links::find_live(&mut connection, Link::PasswordReset, &request.token, now).await?;
        let Some((token_id, user_id, _)) = live else {
            drop(connection);
            crate::security::credential_failure(state, origin).await?;
            return Err(AppError::BadRequest(INVALID_LINK.into()));
        };
        let user = user_store::find_by_id(&mut connection, user_id)
            .await?
            .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
        // A weak password is refused before the token is spent, so the link stays usable.
        check_policy(
            request.new_password.expose_secret(),
            state.config.password_min_length,
            Some(&user.username),
        )
        .map_err(|message| AppError::field("new_password", message))?;
        (token_id, user_id)
    };
    let password = request.new_password;
    let hash = state
        .hashing(move |hasher| hasher.hash(&password))
        .await??;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    if !links::spend(&mut transaction, Link::PasswordReset, token_id, now).await? {
        return Err(AppError::BadRequest(INVALID_LINK.into()));
    }
    let user = user_store::find_by_id(&mut transaction, user_id)
        .await?
        .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    user_store::set_password(&mut transaction, user_id, &hash, now).await?;
    user_store::void_emailed_links(&mut transaction, user_id).await?;
    crate::mfa::challenges::remove_for_user(&mut transaction, user_id).await?;
    lockout::clear(&mut transaction, &Subject::User(user_id)).await?;
    let revoked =
        crate::auth::sessions::revoke_all(&mut transaction, user_id, "password_reset", None, now)
            .await?;
    state
        .outbox
        .enqueue(
            &mut transaction,
            &user,
            &user.email,
            EmailKind::PasswordChanged,
            json!({"sessions_note": "Every signed-in session was signed out; sign in again with the new password."}),
            now,
        )
        .await?;
    transaction
        .commit(
            Event::new(Action::PasswordReset, now)
                .actor(Some(user_id))
                .resource("user", user_id)
                .details(json!({"sessions_revoked": revoked, "unlocked": user.is_locked(now)}))
                .origin(origin),
        )
        .await?;
    Ok(())
}

/// Verifies the caller's current password on the blocking pool.
pub(crate) async fn confirm_password(
    state: &AppState,
    user: &User,
    password: SecretString,
    field: &str,
    origin: &Origin,
) -> Result<(), AppError> {
    let stored = user.password_hash.clone();
    let verification = state
        .hashing(move |hasher| hasher.verify(&password, Some(&stored)))
        .await?;
    if verification.matched() {
        Ok(())
    } else {
        crate::security::credential_failure(state, origin).await?;
        Err(AppError::field(field, "is incorrect"))
    }
}

#[tracing::instrument(skip_all)]
pub async fn change_password(
    state: &AppState,
    user: &User,
    current_session: &str,
    request: ChangePasswordRequest,
    origin: &Origin,
) -> Result<(), AppError> {
    check_policy(
        request.new_password.expose_secret(),
        state.config.password_min_length,
        Some(&user.username),
    )
    .map_err(|message| AppError::field("new_password", message))?;
    if request.new_password.expose_secret() == request.current_password.expose_secret() {
        return Err(AppError::field(
            "new_password",
            "must differ from the current password",
        ));
    }
    confirm_password(
        state,
        user,
        request.current_password,
        "current_password",
        origin,
    )
    .await?;
    let password = request.new_password;
    let hash = state
        .hashing(move |hasher| hasher.hash(&password))
        .await??;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    user_store::set_password(&mut transaction, user.id, &hash, now).await?;
    user_store::void_emailed_links(&mut transaction, user.id).await?;
    crate::mfa::challenges::remove_for_user(&mut transaction, user.id).await?;
    let revoked = crate::auth::sessions::revoke_all(
        &mut transaction,
        user.id,
        "password_changed",
        Some(current_session),
        now,
    )
    .await?;
    state
        .outbox
        .enqueue(
            &mut transaction,
            user,
            &user.email,
            EmailKind::PasswordChanged,
            json!({"sessions_note": "Your other signed-in sessions were signed out."}),
            now,
        )
        .await?;
    transaction
        .commit(
            Event::new(Action::PasswordChanged, now)
                .actor(Some(user.id))
                .resource("user", user.id)
                .details(json!({"other_sessions_revoked": revoked}))
                .origin(origin),
        )
        .await?;
    Ok(())
}
