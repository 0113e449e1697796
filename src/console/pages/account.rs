//! `/account`: a person's own profile, email address, password, sessions, devices, data
//! and deletion.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::Response;
use minijinja::context;
use secrecy::SecretString;

use super::{Signed, SignedForm, explain, message, refused, see_other};
use crate::console::render;
use crate::console::session::{self, ConsoleUser};
use crate::error::AppError;
use crate::http::extract::ClientOrigin;
use crate::state::AppState;

/// `GET /account`: the person's profile, password, sessions, data and deletion.
pub async fn account(
    State(state): State<AppState>,
    Signed(me): Signed,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let notice = match params.get("done").map(String::as_str) {
        Some("profile") => Some("Your names were saved."),
        Some("password") => Some("Your password was changed; your other sessions were signed out."),
        Some("session") => Some("That session was signed out."),
        Some("unlocked") => Some("The account was unlocked."),
        Some("totp_off") => Some("The authenticator app was turned off."),
        Some("email") => Some("A link was sent to the new address: open it to make the change."),
        Some("device") => Some("The device was forgotten: its next sign-in is reported as new."),
        Some("totp_on") => Some("The authenticator app is on."),
        Some("passkey") => Some("The passkey was added."),
        Some("passkey_renamed") => Some("The passkey was renamed."),
        Some("passkey_removed") => Some("The passkey was removed."),
        Some("step_up") => {
            Some("Confirmed: for ten minutes this session can change your second factors.")
        }
        _ => None,
    };
    account_page(&state, &me, StatusCode::OK, notice, None).await
}

pub(super) async fn account_page(
    state: &AppState,
    me: &ConsoleUser,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<String>,
) -> Response {
    let sessions = {
        let connection = state.store.read().await;
        match connection {
            Ok(mut connection) => {
                crate::auth::sessions::list_open(
                    &mut connection,
                    me.user.id,
                    &me.claims.sid,
                    state.now(),
                )
                .await
            }
            Err(error) => Err(error.into()),
        }
    };
    let sessions = match sessions {
        Ok(sessions) => sessions,
        Err(error) => return refused(Some(me), error),
    };
    let mfa = match crate::mfa::service::status(state, me.user.id).await {
        Ok(mfa) => mfa,
        Err(error) => return refused(Some(me), error),
    };
    let devices = match state.store.read().await {
        Ok(mut connection) => {
            // The console's requests carry no device hints of their own: none is "current".
            crate::security::devices::list(&mut connection, me.user.id, "")
                .await
                .map_err(AppError::from)
        }
        Err(error) => Err(error.into()),
    };
    let devices = match devices {
        Ok(devices) => devices,
        Err(error) => return refused(Some(me), error),
    };
    render(
        "account.html",
        status,
        context! {
            title => "My account",
            section => "account",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            sessions,
            proved_recently => crate::mfa::service::proved_factor_recently(&me.claims, state.now()),
            mfa,
            devices,
            notice,
            error,
        },
    )
}

/// `POST /account/profile`: the person's names.
pub async fn save_profile(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    let request = crate::users::service::UpdateUser {
        first_name: fields.get("first_name").cloned(),
        last_name: fields.get("last_name").cloned(),
        ..Default::default()
    };
    match crate::users::service::update(&state, &me.user, me.user.id, request, &origin).await {
        Ok(_) => see_other("/account?done=profile"),
        Err(error) => account_page(&state, &me, error.status(), None, Some(explain(&error))).await,
    }
}

/// `POST /account/password`: the current password and a new one.
pub async fn change_password(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    if let Err(error) = crate::security::check_ip(&state, &origin).await {
        return refused(Some(&me), error);
    }
    let secret = |name: &str| SecretString::from(fields.get(name).cloned().unwrap_or_default());
    let request = crate::auth::password_change::ChangePasswordRequest {
        current_password: secret("current_password"),
        new_password: secret("new_password"),
    };
    let changed = crate::auth::password_change::change_password(
        &state,
        &me.user,
        &me.claims.sid,
        request,
        &origin,
    )
    .await;
    match changed {
        Ok(()) => see_other("/account?done=password"),
        Err(error) => account_page(&state, &me, error.status(), None, Some(explain(&error))).await,
    }
}

/// `POST /account/sessions/{id}/revoke`: signs one of the person's sessions out.
pub async fn revoke_session(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<String>,
    SignedForm { me, .. }: SignedForm,
) -> Response {
    match crate::auth::service::revoke_session(&state, me.user.id, &id, &origin).await {
        Ok(()) => see_other("/account?done=session"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `GET /account/export?format=json|zip`: everything held about the person, as the API's
/// export (audited the same way).
pub async fn export(
    State(state): State<AppState>,
    Signed(me): Signed,
    ClientOrigin(origin): ClientOrigin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let exported =
        crate::privacy::routes::export_of(state.clone(), me.user.id, me.user.id, origin, params)
            .await;
    match exported {
        Ok(response) => response,
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /account/delete`: erases the account (the password again, and a recent second
/// factor when the account has one), then signs the browser out.
pub async fn delete_account(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    let request = crate::privacy::erasure::EraseRequest {
        password: SecretString::from(fields.get("password").cloned().unwrap_or_default()),
    };
    let erased =
        crate::privacy::erasure::erase_self(&state, &me.user, &me.claims, request, &origin).await;
    match erased {
        Ok(erasure) => {
            let text = match erasure.erase_after {
                Some(when) => format!(
                    "Your account is disabled and will be erased at {}, unless an administrator cancels it.",
                    crate::clock::to_rfc3339(when.millis())
                ),
                None => "Your account and everything about you were erased.".to_string(),
            };
            let mut page = message(None, "", StatusCode::OK, "Account deleted", &text);
            page.headers_mut().append(
                header::SET_COOKIE,
                session::clear_cookie(&state, session::cookie_name(&state)),
            );
            page
        }
        Err(error) => account_page(&state, &me, error.status(), None, Some(explain(&error))).await,
    }
}

/// `POST /account/email`: the new address and the password; the change waits for the link
/// sent to the new address.
pub async fn change_email(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    if let Err(error) = crate::security::check_ip(&state, &origin).await {
        return refused(Some(&me), error);
    }
    let request = crate::auth::email_change::ChangeEmailRequest {
        new_email: fields.get("new_email").cloned().unwrap_or_default(),
        password: SecretString::from(fields.get("password").cloned().unwrap_or_default()),
    };
    match crate::auth::email_change::change_email(&state, &me.user, request, &origin).await {
        Ok(()) => see_other("/account?done=email"),
        Err(error) => account_page(&state, &me, error.status(), None, Some(explain(&error))).await,
    }
}

/// `POST /account/devices/{id}/forget`.
pub async fn forget_device(
    State(state): State<AppState>,
    Path(device_id): Path<i64>,
    SignedForm { me, .. }: SignedForm,
) -> Response {
    let forgotten = async {
        let mut transaction = state.store.begin().await?;
        let forgotten =
            crate::security::devices::forget(&mut transaction, me.user.id, device_id).await?;
        transaction.commit().await?;
        Ok::<_, AppError>(forgotten)
    };
    match forgotten.await {
        Ok(true) => see_other("/account?done=device"),
        Ok(false) => refused(Some(&me), AppError::NotFound),
        Err(error) => refused(Some(&me), error),
    }
}
