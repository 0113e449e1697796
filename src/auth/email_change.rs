//! Changing and verifying an email address: the new address is proven by a link sent to it
//! (the welcome message carries the first one), and the old address is told. A link of this
//! kind means nothing to the password flows (its own table).

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, Action, Event, Origin};
use crate::auth::links::{self, INVALID_LINK, Link, hours};
use crate::clock::Millis;
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::state::AppState;
use crate::store::Connection;
use crate::users::store::{self as user_store, UserChanges};
use crate::users::{Email, User, UserView};

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
    crate::auth::password_change::confirm_password(
        state,
        user,
        request.password,
        "password",
        origin,
    )
    .await?;
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
        .await?
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
