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
use crate::auth::password::check_policy;
use crate::auth::tokens::{hash_token, random_token};
use crate::clock::{Millis, Timestamp, to_rfc3339};
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::security::lockout::{self, Subject};
use crate::state::AppState;
use crate::store::{Connection, Inet};
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

/// At most one link email of a kind to an address in this long: asking again sooner sends
/// nothing, and the link already sent stays usable. Forty requests are not forty emails.
pub const RESEND_INTERVAL: Millis = 5 * 60_000;

/// Whether a live link of `table` went to this account (and address) within the resend
/// interval.
async fn sent_recently(
    connection: &mut Connection,
    table: &str,
    user_id: i64,
    email: Option<&str>,
    now: Millis,
) -> Result<bool, AppError> {
    let email_clause = if email.is_some() {
        "AND link.email = $3"
    } else {
        "AND $3 = ''"
    };
    let sql = format!(
        "SELECT COUNT(*) FROM {table} link \
         JOIN users ON users.id = link.user_id AND users.credential_stamp = link.credential_stamp \
         WHERE link.user_id = $1 AND link.used_at IS NULL AND link.created_at > $2 {email_clause}"
    );
    let count: i64 = crate::with_db!(connection, |db| sqlx::query_scalar(&sql)
        .bind(user_id)
        .bind(Timestamp::from(now - RESEND_INTERVAL))
        .bind(email.unwrap_or_default())
        .fetch_one(db)
        .await)?;
    Ok(count > 0)
}

fn hours(duration: std::time::Duration) -> u64 {
    duration.as_secs().div_ceil(3600)
}

/// Issues a verification token for `email` (voiding older ones) and queues its email:
/// the welcome message at registration, the verification message for a change.
pub async fn send_verification(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    email: &str,
    kind: EmailKind,
    now: Millis,
) -> Result<(), AppError> {
    crate::execute!(connection, sqlx::query(
        "UPDATE email_verification_tokens SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(user.id)
    .bind(Timestamp::from(now))
    )?;
    let token = random_token();
    let ttl = state.config.verification_token_ttl;
    crate::execute!(connection, sqlx::query(
        "INSERT INTO email_verification_tokens (user_id, token_hash, email, created_at, expires_at, credential_stamp) \
         VALUES ($1, $2, $3, $4, $5, (SELECT credential_stamp FROM users WHERE id = $1))",
    )
    .bind(user.id)
    .bind(hash_token(&token))
    .bind(email)
    .bind(Timestamp::from(now))
    .bind(Timestamp::from(now + ttl.as_millis() as i64))
    )?;
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
    let mut transaction = state.store.begin().await?;
    let user = user_store::find_by_login(&mut transaction, email.as_str())
        .await?
        .filter(|user| user.is_active() && user.email == email.as_str());
    // Both paths write one audit event in one transaction, so they cost about the same.
    let event = Event::new(Action::PasswordResetRequested, now).origin(origin);
    match &user {
        Some(user)
            if sent_recently(
                &mut transaction,
                "password_reset_tokens",
                user.id,
                None,
                now,
            )
            .await? =>
        {
            audit::record(
                &mut transaction,
                state.store.chain_key(),
                event
                    .actor(Some(user.id))
                    .resource("user", user.id)
                    .details(
                        json!({"email_sent": false, "reason": "a reset link was sent minutes ago"}),
                    ),
            )
            .await?;
        }
        Some(user) => {
            crate::execute!(transaction, sqlx::query("UPDATE password_reset_tokens SET used_at = $2 WHERE user_id = $1 AND used_at IS NULL")
                .bind(user.id)
                .bind(Timestamp::from(now))
                )?;
            let token = random_token();
            let ttl = state.config.reset_token_ttl;
            crate::execute!(transaction, sqlx::query(
                "INSERT INTO password_reset_tokens (user_id, token_hash, created_at, expires_at, credential_stamp) \
                 VALUES ($1, $2, $3, $4, (SELECT credential_stamp FROM users WHERE id = $1))",
            )
            .bind(user.id)
            .bind(hash_token(&token))
            .bind(Timestamp::from(now))
            .bind(Timestamp::from(now + ttl.as_millis() as i64))
            )?;
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
            audit::record(
                &mut transaction,
                state.store.chain_key(),
                event.actor(Some(user.id)).resource("user", user.id),
            )
            .await?;
        }
        None => {
            audit::record(
                &mut transaction,
                state.store.chain_key(),
                event
                    .failed()
                    .resource("user", "unknown")
                    .details(json!({"reason": "no active account"})),
            )
            .await?;
        }
    }
    transaction.commit().await?;
    Ok(())
}

/// The live token row of `table` whose hash matches, as (row id, user id, email column).
/// A token is live while unused, unexpired, and issued under the account's current
/// credential stamp: a credential event since its issue voided it.
async fn find_live_token(
    connection: &mut Connection,
    table: &str,
    token: &str,
    now: Millis,
) -> Result<Option<(i64, i64, Option<String>)>, AppError> {
    let email_column = if table == "email_verification_tokens" {
        "link.email"
    } else {
        "NULL AS email"
    };
    let sql = format!(
        "SELECT link.id, link.user_id, {email_column} FROM {table} link \
         JOIN users ON users.id = link.user_id AND users.credential_stamp = link.credential_stamp \
         WHERE link.token_hash = $1 AND link.used_at IS NULL AND link.expires_at > $2"
    );
    Ok(crate::with_db!(connection, |db| sqlx::query_as(&sql)
        .bind(hash_token(token))
        .bind(Timestamp::from(now))
        .fetch_optional(db)
        .await)?)
}

/// Spends a token row; false if another request spent it first.
async fn spend_token(
    connection: &mut Connection,
    table: &str,
    id: i64,
    now: Millis,
) -> Result<bool, AppError> {
    let sql = format!("UPDATE {table} SET used_at = $2 WHERE id = $1 AND used_at IS NULL");
    let result = crate::execute!(
        connection,
        sqlx::query(&sql).bind(id).bind(Timestamp::from(now))
    )?;
    Ok(result == 1)
}

/// Sets a new password and stamps `password_changed_at`.
async fn store_password(
    connection: &mut Connection,
    user_id: i64,
    hash: &str,
    now: Millis,
) -> Result<(), AppError> {
    crate::execute!(connection, sqlx::query("UPDATE users SET password_hash = $2, password_changed_at = $3, updated_at = $3 WHERE id = $1")
        .bind(user_id)
        .bind(hash)
        .bind(Timestamp::from(now))
        )?;
    Ok(())
}

pub async fn reset_password(
    state: &AppState,
    request: ResetPasswordRequest,
    origin: &Origin,
) -> Result<(), AppError> {
    let now = state.now();
    let (token_id, user_id) = {
        let mut connection = state.store.read().await?;
        let live = find_live_token(
            &mut connection,
            "password_reset_tokens",
            &request.token,
            now,
        )
        .await?;
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
    let mut transaction = state.store.begin().await?;
    if !spend_token(&mut transaction, "password_reset_tokens", token_id, now).await? {
        return Err(AppError::BadRequest(INVALID_LINK.into()));
    }
    let user = user_store::find_by_id(&mut transaction, user_id)
        .await?
        .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    store_password(&mut transaction, user_id, &hash, now).await?;
    user_store::void_emailed_links(&mut transaction, user_id).await?;
    lockout::clear(&mut transaction, &Subject::User(user_id)).await?;
    let revoked =
        user_store::revoke_sessions(&mut transaction, user_id, "password_reset", now).await?;
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
    audit::record(
        &mut transaction,
        state.store.chain_key(),
        Event::new(Action::PasswordReset, now)
            .actor(Some(user_id))
            .resource("user", user_id)
            .details(json!({"sessions_revoked": revoked, "unlocked": user.is_locked(now)}))
            .origin(origin),
    )
    .await?;
    transaction.commit().await?;
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
    let mut transaction = state.store.begin().await?;
    store_password(&mut transaction, user.id, &hash, now).await?;
    user_store::void_emailed_links(&mut transaction, user.id).await?;
    let revoked = crate::execute!(
        transaction,
        sqlx::query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = 'password_changed' \
         WHERE user_id = $1 AND id <> $3 AND revoked_at IS NULL",
        )
        .bind(user.id)
        .bind(Timestamp::from(now))
        .bind(current_session)
    )?;
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
    audit::record(
        &mut transaction,
        state.store.chain_key(),
        Event::new(Action::PasswordChanged, now)
            .actor(Some(user.id))
            .resource("user", user.id)
            .details(json!({"other_sessions_revoked": revoked}))
            .origin(origin),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

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
    let mut transaction = state.store.begin().await?;
    if user_store::find_by_login(&mut transaction, email.as_str())
        .await?
        .is_some()
    {
        return Err(AppError::conflict(
            "new_email",
            "a user with this email already exists",
        ));
    }
    let resend = sent_recently(
        &mut transaction,
        "email_verification_tokens",
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
    audit::record(
        &mut transaction,
        state.store.chain_key(),
        Event::new(Action::EmailChangeRequested, now)
            .actor(Some(user.id))
            .resource("user", user.id)
            .details(json!({"new_email": email.as_str(), "email_sent": !resend}))
            .origin(origin),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

pub async fn verify_email(
    state: &AppState,
    request: VerifyEmailRequest,
    origin: &Origin,
) -> Result<UserView, AppError> {
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    let (token_id, user_id, email) = find_live_token(
        &mut transaction,
        "email_verification_tokens",
        &request.token,
        now,
    )
    .await?
    .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    if !spend_token(&mut transaction, "email_verification_tokens", token_id, now).await? {
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
    audit::record(
        &mut transaction,
        state.store.chain_key(),
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
    transaction.commit().await?;
    Ok(after.view(now))
}

/// Queues the "account locked" notice, once per lock (the caller is the locking attempt).
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
    let (earlier, same_device): (i64, i64) = crate::with_db!(connection, |db| {
        sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN ip IS NOT DISTINCT FROM $2 AND user_agent IS NOT DISTINCT FROM $3 THEN 1 ELSE 0 END), 0) \
         FROM sessions WHERE user_id = $1 AND id <> $4",
    )
    .bind(user.id)
    .bind(origin.ip.as_deref().and_then(Inet::parse))
    .bind(origin.user_agent.as_deref())
    .bind(current_session)
    .fetch_one(db).await
    })?;
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
