//! Second factors in the console: an authenticator app, passkeys (through the console's own
//! small script, `static/passkeys.js`), recovery codes, and proving a factor again (step-up)
//! before changing them, which the API asks of a session that has not proved one lately.

use std::collections::HashMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use minijinja::context;
use secrecy::SecretString;

use super::account::account_page;
use super::{SignedForm, explain, refused, see_other};
use crate::console::render;
use crate::console::session::ConsoleUser;
use crate::error::{AppError, SecondStep, SecondStepKind};
use crate::http::extract::ClientOrigin;
use crate::mfa::Method;
use crate::mfa::totp::Enrollment;
use crate::state::AppState;
use crate::users::UserView;

/// A form's answer to a second step: a method, and its code or passkey assertion.
pub(super) struct Answer {
    pub method: Method,
    pub code: Option<String>,
    pub assertion: Option<serde_json::Value>,
}

/// Reads the `method`, `code` and `assertion` (the JSON of the passkey's answer) of a form.
pub(super) fn answer_of(fields: &HashMap<String, String>) -> Result<Answer, AppError> {
    let field = |name: &str| fields.get(name).cloned().filter(|value| !value.is_empty());
    let method = serde_json::from_value(serde_json::json!(field("method").unwrap_or_default()))
        .map_err(|_| AppError::field("method", "is not a method of this step"))?;
    let assertion =
        match field("assertion") {
            Some(json) => Some(serde_json::from_str(&json).map_err(|_| {
                AppError::field("assertion", "is not the JSON of a passkey's answer")
            })?),
            None => None,
        };
    Ok(Answer {
        method,
        code: field("code").map(|code| code.trim().to_string()),
        assertion,
    })
}

/// What a step's page offers: the methods answered with a code, and the passkey request
/// options (as JSON for the page's script) when a passkey can answer.
pub(super) fn proof_choices(step: &SecondStep) -> minijinja::Value {
    let label = |method: &str| match method {
        "totp" => "Authenticator app",
        "recovery_code" => "Recovery code",
        "email_code" => "Code sent by email",
        _ => "Other",
    };
    let methods: Vec<minijinja::Value> = step
        .methods
        .iter()
        .filter(|method| **method != "webauthn" && **method != "consent")
        .map(|method| context! { value => *method, label => label(method) })
        .collect();
    let webauthn = step.webauthn.as_ref().map(serde_json::Value::to_string);
    context! { methods, webauthn }
}

/// The page that sets up an authenticator app: its QR code (an SVG drawn by the server, as a
/// data URI the policy allows), its key as text, and the form its first code confirms
/// (`confirm` names the form's action and hidden fields).
pub(super) fn totp_setup_page(
    enrollment: &Enrollment,
    me: Option<&UserView>,
    csrf: &str,
    confirm: minijinja::Value,
) -> Response {
    use base64::Engine;
    let qr = format!(
        "data:image/svg+xml;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(enrollment.qr_svg.as_bytes())
    );
    render(
        "totp.html",
        StatusCode::OK,
        context! {
            title => "Set up an authenticator app",
            section => "account",
            me,
            csrf,
            qr,
            secret => enrollment.secret.clone(),
            confirm,
        },
    )
}

/// The recovery codes, shown once, then on to `next`.
pub(super) fn recovery_codes_page(
    me: &UserView,
    csrf: &str,
    codes: &[String],
    next: &str,
) -> Response {
    render(
        "totp.html",
        StatusCode::OK,
        context! {
            title => "Your recovery codes",
            section => "account",
            me,
            csrf,
            recovery_codes => codes,
            next,
            notice => "Your second factor is on: signing in asks for it after the password.",
        },
    )
}

fn account_error(
    state: &AppState,
    me: &ConsoleUser,
    error: AppError,
) -> impl Future<Output = Response> {
    account_page(state, me, error.status(), None, Some(explain(&error)))
}

// --- an authenticator app -----------------------------------------------------------------

/// `POST /account/totp/start`: a new authenticator app's secret, to confirm with its first
/// code.
pub async fn start_totp(
    State(state): State<AppState>,
    SignedForm { me, .. }: SignedForm,
) -> Response {
    match crate::mfa::service::start_totp(&state, &me.user, Some(&me.claims)).await {
        Ok(enrollment) => totp_setup_page(
            &enrollment,
            Some(&me.user.view(state.now())),
            &me.csrf,
            context! { action => "/account/totp/confirm" },
        ),
        Err(error) => account_error(&state, &me, error).await,
    }
}

/// `POST /account/totp/confirm`: the app's first code turns it on; the recovery codes of a
/// first factor are shown once.
pub async fn confirm_totp(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    let code = fields.get("code").cloned().unwrap_or_default();
    match crate::mfa::service::confirm_totp(&state, &me.user, code.trim(), &origin).await {
        Ok(enrolled) => match enrolled.recovery_codes {
            Some(codes) => {
                recovery_codes_page(&me.user.view(state.now()), &me.csrf, &codes, "/account")
            }
            None => see_other("/account?done=totp_on"),
        },
        Err(error) => account_error(&state, &me, error).await,
    }
}

/// `POST /account/totp/disable`: the password and a code turn the app off.
pub async fn disable_totp(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    let request = crate::mfa::service::DisableTotpRequest {
        password: SecretString::from(fields.get("password").cloned().unwrap_or_default()),
        code: fields.get("code").cloned().unwrap_or_default(),
    };
    match crate::mfa::service::disable_totp(&state, &me.user, &me.claims, request, &origin).await {
        Ok(()) => see_other("/account?done=totp_off"),
        Err(error) => account_error(&state, &me, error).await,
    }
}

// --- recovery codes -----------------------------------------------------------------------

/// `POST /account/recovery-codes`: a new set, with the password; the old set is void.
pub async fn regenerate_recovery_codes(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    let request = crate::mfa::service::RegenerateCodesRequest {
        password: SecretString::from(fields.get("password").cloned().unwrap_or_default()),
    };
    let regenerated = crate::mfa::service::regenerate_recovery_codes(
        &state, &me.user, &me.claims, request, &origin,
    )
    .await;
    match regenerated {
        Ok(codes) => recovery_codes_page(
            &me.user.view(state.now()),
            &me.csrf,
            &codes.recovery_codes,
            "/account",
        ),
        Err(error) => account_error(&state, &me, error).await,
    }
}

// --- passkeys -----------------------------------------------------------------------------

/// `POST /account/passkeys/start`: the page that asks the browser to create a passkey, with
/// the registration's options and token.
pub async fn start_passkey(
    State(state): State<AppState>,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    let name = fields.get("name").cloned().unwrap_or_default();
    if let Err(message) = crate::mfa::passkeys::parse_name(&name) {
        return account_error(&state, &me, AppError::field("name", message)).await;
    }
    match crate::mfa::service::start_passkey_registration(&state, &me.user, Some(&me.claims)).await
    {
        Ok(start) => render(
            "passkey.html",
            StatusCode::OK,
            context! {
                title => "Add a passkey",
                section => "account",
                me => me.user.view(state.now()),
                csrf => me.csrf.clone(),
                name,
                registration_token => start.registration_token,
                webauthn => start.webauthn.to_string(),
            },
        ),
        Err(error) => account_error(&state, &me, error).await,
    }
}

/// `POST /account/passkeys/finish`: the browser's new passkey, stored; the recovery codes of
/// a first factor are shown once.
pub async fn finish_passkey(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    let credential = serde_json::from_str(fields.get("credential").map_or("", String::as_str))
        .unwrap_or(serde_json::Value::Null);
    let request = crate::mfa::service::FinishPasskeyRegistration {
        registration_token: fields
            .get("registration_token")
            .cloned()
            .unwrap_or_default(),
        name: fields.get("name").cloned(),
        credential,
    };
    match crate::mfa::service::finish_passkey_registration(&state, request, &origin).await {
        Ok(enrolled) => match enrolled.recovery_codes {
            Some(codes) => {
                recovery_codes_page(&me.user.view(state.now()), &me.csrf, &codes, "/account")
            }
            None => see_other("/account?done=passkey"),
        },
        Err(error) => account_error(&state, &me, error).await,
    }
}

/// `POST /account/passkeys/{id}/rename`.
pub async fn rename_passkey(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(passkey_id): Path<i64>,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    let request = crate::mfa::service::RenamePasskey {
        name: fields.get("name").cloned().unwrap_or_default(),
    };
    let renamed =
        crate::mfa::service::rename_passkey(&state, &me.user, passkey_id, request, &origin).await;
    match renamed {
        Ok(()) => see_other("/account?done=passkey_renamed"),
        Err(AppError::NotFound) => refused(Some(&me), AppError::NotFound),
        Err(error) => account_error(&state, &me, error).await,
    }
}

/// `POST /account/passkeys/{id}/remove`.
pub async fn remove_passkey(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(passkey_id): Path<i64>,
    SignedForm { me, .. }: SignedForm,
) -> Response {
    let removed =
        crate::mfa::service::remove_passkey(&state, &me.user, &me.claims, passkey_id, &origin)
            .await;
    match removed {
        Ok(()) => see_other("/account?done=passkey_removed"),
        Err(AppError::NotFound) => refused(Some(&me), AppError::NotFound),
        Err(error) => account_error(&state, &me, error).await,
    }
}

// --- step-up ------------------------------------------------------------------------------

/// `POST /account/step-up`: the session proves a second factor again (a code, or a passkey:
/// a first post without its answer shows the page that asks the browser for it).
pub async fn step_up(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, fields }: SignedForm,
) -> Response {
    let answer = match answer_of(&fields) {
        Ok(answer) => answer,
        Err(error) => return account_error(&state, &me, error).await,
    };
    let request = crate::auth::second_factor::StepUpRequest {
        method: answer.method,
        code: answer.code,
        assertion: answer.assertion,
        mfa_token: fields.get("mfa_token").cloned(),
    };
    let stepped =
        crate::auth::second_factor::step_up(&state, &me.user, &me.claims.sid, request, &origin)
            .await;
    match stepped {
        Ok(_tokens) => see_other("/account?done=step_up"),
        Err(AppError::SecondStep(step)) if step.kind == SecondStepKind::MfaRequired => render(
            "step.html",
            StatusCode::OK,
            context! {
                title => "Confirm it is you",
                section => "account",
                me => me.user.view(state.now()),
                csrf => me.csrf.clone(),
                prompt => "Use your passkey to confirm it is you.",
                action => "/account/step-up",
                mfa_token => step.mfa_token.clone(),
                back => "/account",
                back_label => "Back to your account",
                ..proof_choices(&step)
            },
        ),
        Err(error) => account_error(&state, &me, error).await,
    }
}
