//! Emailed-link flows: forgot/reset password, change password, change and verify email.
//!
//! Link tokens carry 256 random bits, are stored only as SHA-256 hashes, work once, expire
//! (reset 24 h, verification 48 h by default), and a newer token of a kind voids the older
//! ones. The two kinds live in separate tables, so a token of one kind means nothing to the
//! other flow. Each flow commits its change, its audit event and its email together.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, Action, Event, Origin};
use crate::auth::links::{self, Link};
use crate::auth::password::check_policy;
use crate::clock::{Millis, to_rfc3339};
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::security::lockout::{self, Subject};
use crate::state::AppState;
use crate::store::Connection;
use crate::users::store::{self as user_store, UserChanges};
use crate::users::{Email, User, UserView};

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

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeEmailRequest {
    pub new_email: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailRequest {
    pub token: String,
}

const INVALID_LINK: &str = "The link is unknown, already used or expired.";

fn hours(duration: std::time::Duration) -> u64 {
    duration.as_secs().div_ceil(3600)
}

/// Issues a verification token for `email` (voiding older ones) and queues its email:
/// the welcome message at registration, the verification message for a change.
#[tracing::instrument(skip_all)]
pub async fn send_verification(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    email: &str,
    kind: EmailKind,
    now: Millis,
) -> Result<(), AppError> {
    let ttl = state.config.verification_token_ttl;
    let token = links::issue(
        connection,
        Link::EmailVerification,
        user.id,
        Some(email),
        now,
        ttl,
    )
    .await?;
    let link = state.outbox.link("verify-email", &token);
    state
        .outbox
        .enqueue(
            connection,
            user,
            email,
            kind,
            json!({"link": link, "valid_hours": hours(ttl)}),
            now,
        )
        .await
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
            let ttl = state.config.reset_token_ttl;
            let token = links::issue(
                &mut transaction,
                Link::PasswordReset,
                user.id,
                None,
                now,
                ttl,
            )
            .await?;
            let link = state.outbox.link("reset-password", &token);
            state
                .outbox
                .enqueue(
                    &mut transaction,
                    user,
                    &user.email,
                    EmailKind::PasswordReset,
                    json!({"link": link, "valid_hours": hours(ttl)}),
                    now,
                )
                .await?;
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
async fn confirm_password(
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

#[tracing::instrument(skip_all)]
pub async fn change_email(
    state: &AppState,
    user: &User,
    request: ChangeEmailRequest,
    origin: &Origin,
) -> Result<(), AppError> {
    let email = Email::parse(&request.new_email)
        .map_err(|message| AppError::field("new_email", message))?;
    if email.as_str() == user.email {
        return Err(AppError::field(
            "new_email",
            "is already the account's address",
        ));
    }
    confirm_password(state, user, request.password, "password", origin).await?;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    if user_store::find_by_login(&mut transaction, email.as_str())
        .await?
        .is_some()
    {
        return Err(AppError::conflict(
            "new_email",
            "a user with this email already exists",
        ));
    }
    let resend = links::sent_recently(
        &mut transaction,
        Link::EmailVerification,
        user.id,
        Some(email.as_str()),
        now,
    )
    .await?;
    if !resend {
        send_verification(
            &mut transaction,
            state,
            user,
            email.as_str(),
            EmailKind::VerifyEmail,
            now,
        )
        .await?;
    }
    transaction
        .commit(
            Event::new(Action::EmailChangeRequested, now)
                .actor(Some(user.id))
                .resource("user", user.id)
                .details(json!({"new_email": email.as_str(), "email_sent": !resend}))
                .origin(origin),
        )
        .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn verify_email(
    state: &AppState,
    request: VerifyEmailRequest,
    origin: &Origin,
) -> Result<UserView, AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let (token_id, user_id, email) = links::find_live(
        &mut transaction,
        Link::EmailVerification,
        &request.token,
        now,
    )
    .await?
    .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    if !links::spend(&mut transaction, Link::EmailVerification, token_id, now).await? {
        return Err(AppError::BadRequest(INVALID_LINK.into()));
    }
    let before = user_store::find_by_id(&mut transaction, user_id)
        .await?
        .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    let email = email.unwrap_or_else(|| before.email.clone());
    let switching = email != before.email;
    let changes = UserChanges {
        email: if switching {
            Some(Email::parse(&email).map_err(|message| AppError::field("email", message))?)
        } else {
            None
        },
        ..UserChanges::default()
    };
    let after = user_store::update(&mut transaction, user_id, &changes, Some(true), now)
        .await
        .map_err(|error| match error {
            AppError::Conflict { .. } => {
                AppError::conflict("email", "a user with this email already exists")
            }
            other => other,
        })?
        .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    if switching {
        user_store::void_emailed_links(&mut transaction, user_id).await?;
        state
            .outbox
            .enqueue(
                &mut transaction,
                &before,
                &before.email,
                EmailKind::EmailChanged,
                json!({"new_email": email}),
                now,
            )
            .await?;
    }
    transaction
        .commit(
            Event::new(
                if switching {
                    Action::EmailChanged
                } else {
                    Action::EmailVerified
                },
                now,
            )
            .actor(Some(user_id))
            .resource("user", user_id)
            .details(if switching {
                json!({"from": before.email, "to": email})
            } else {
                json!({"email": email})
            })
            .origin(origin),
        )
        .await?;
    Ok(after.view(now))
}

/// Queues the "account locked" notice, once per lock (the caller is the locking attempt).
#[tracing::instrument(skip_all)]
pub async fn notify_locked(
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
pub async fn notify_new_login(
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
            }),
            now,
        )
        .await
}
