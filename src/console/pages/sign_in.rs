//! Signing in to the console: the password form, the second step (a code, an emailed code,
//! a passkey, consent), a passkey sign-in without a password, and signing out.

use std::collections::HashMap;

use axum::extract::{Form, FromRequest, FromRequestParts, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use minijinja::context;
use secrecy::SecretString;

use super::{Early, SignedForm, explain, fields, refused, safe_next, see_other};
use crate::auth::sign_in::LoginResponse;
use crate::console::render;
use crate::console::session::{self, ConsoleUser};
use crate::error::{AppError, SecondStep, SecondStepKind};
use crate::http::extract::ClientOrigin;
use crate::state::AppState;

/// `GET /account/login`: the form, with a CSRF token bound to a cookie of its own.
pub async fn login_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let next = safe_next(params.get("next").map(String::as_str));
    if let Ok(Some(_)) = match session::read_cookie(&headers, session::cookie_name(&state)) {
        Some(secret) => session::find(&state, &secret).await,
        None => Ok(None),
    } {
        return see_other(&next);
    }
    login_page(&state, StatusCode::OK, &next, "", None)
}

fn login_page(
    state: &AppState,
    status: StatusCode,
    next: &str,
    username: &str,
    error: Option<String>,
) -> Response {
    let secret = match session::new_secret() {
        Ok(secret) => secret,
        Err(error) => return refused(None, error),
    };
    let mut response = render(
        "login.html",
        status,
        context! {
            title => "Sign in",
            csrf => session::csrf_token(&secret),
            next,
            username,
            error,
        },
    );
    response.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(state, session::login_cookie_name(state), &secret),
    );
    response
}

/// The CSRF token of the sign-in forms that follow the first one (the next step's), from the
/// sign-in form's own cookie.
fn login_csrf(state: &AppState, headers: &HeaderMap) -> String {
    session::read_cookie(headers, session::login_cookie_name(state))
        .map(|secret| session::csrf_token(&secret))
        .unwrap_or_default()
}

/// The CSRF check of the sign-in forms, against the sign-in form's own cookie.
fn check_login_csrf(
    state: &AppState,
    headers: &HeaderMap,
    fields: &HashMap<String, String>,
) -> Result<(), AppError> {
    let secret = session::read_cookie(headers, session::login_cookie_name(state)).ok_or(
        AppError::Forbidden("The sign-in form has expired: reload the page and try again."),
    )?;
    session::check_csrf(
        &session::csrf_token(&secret),
        fields.get("csrf").map(String::as_str),
    )
}

/// A sign-in form's fields and where to go after, its CSRF token checked against the sign-in
/// form's cookie (else the form again, saying so).
pub struct LoginForm {
    fields: HashMap<String, String>,
    next: String,
    headers: HeaderMap,
}

impl FromRequest<AppState> for LoginForm {
    type Rejection = Early;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Early> {
        let headers = request.headers().clone();
        let (mut parts, body) = request.into_parts();
        let ClientOrigin(origin) = ClientOrigin::from_request_parts(&mut parts, state)
            .await
            .map_err(|error| Early::from(refused(None, error)))?;
        let request = Request::from_parts(parts, body);
        let fields = fields(Form::from_request(request, state).await)?;
        let next = safe_next(fields.get("next").map(String::as_str));
        // An address blocked for failing too often is refused here as by the API.
        let checked = match crate::security::check_ip(state, &origin).await {
            Ok(()) => check_login_csrf(state, &headers, &fields),
            Err(error) => Err(error),
        };
        if let Err(error) = checked {
            let username = fields.get("username").map_or("", String::as_str);
            let page = login_page(
                state,
                error.status(),
                &next,
                username,
                Some(explain(&error)),
            );
            return Err(Early::from(page));
        }
        Ok(LoginForm {
            fields,
            next,
            headers,
        })
    }
}

/// `POST /account/login`: the password step, through the API's sign-in.
pub async fn login(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    LoginForm {
        fields,
        next,
        headers,
    }: LoginForm,
) -> Response {
    let username = fields.get("username").cloned().unwrap_or_default();
    let request = crate::auth::service::LoginRequest {
        username: username.clone(),
        password: SecretString::from(fields.get("password").cloned().unwrap_or_default()),
        totp_code: None,
        accept_terms: None,
        accept_privacy: None,
    };
    let outcome = crate::auth::service::login(&state, request, &origin).await;
    after_step(&state, &headers, outcome, &next, &username).await
}

/// `POST /account/login/step`: a second factor's code or passkey, an emailed code, or consent.
pub async fn login_step(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    LoginForm {
        fields,
        next,
        headers,
    }: LoginForm,
) -> Response {
    let field = |name: &str| fields.get(name).cloned().filter(|value| !value.is_empty());
    let mfa_token = field("mfa_token").unwrap_or_default();
    let outcome = match field("method").as_deref() {
        Some("consent") => {
            let request = crate::auth::consent::ConsentRequest {
                mfa_token,
                accept_terms: field("accept_terms"),
                accept_privacy: field("accept_privacy"),
            };
            crate::auth::consent::accept(&state, request, &origin).await
        }
        _ => match super::factors::answer_of(&fields) {
            Ok(answer) => {
                let request = crate::auth::second_factor::SecondStepRequest {
                    mfa_token,
                    method: answer.method,
                    code: answer.code,
                    assertion: answer.assertion,
                };
                crate::auth::second_factor::complete(&state, request, &origin).await
            }
            Err(error) => Err(error),
        },
    };
    after_step(&state, &headers, outcome, &next, "").await
}

/// What a sign-in step led to: the console signed in, the next step's page, or the sign-in
/// form again with what went wrong.
async fn after_step(
    state: &AppState,
    headers: &HeaderMap,
    outcome: Result<LoginResponse, AppError>,
    next: &str,
    username: &str,
) -> Response {
    match outcome {
        Ok(response) => match open_console(state, headers, &response, next).await {
            Ok(response) => response,
            Err(error) => refused(None, error),
        },
        Err(AppError::SecondStep(step)) => step_page(state, headers, &step, next),
        Err(error) => login_page(state, error.status(), next, username, Some(explain(&error))),
    }
}

fn step_page(state: &AppState, headers: &HeaderMap, step: &SecondStep, next: &str) -> Response {
    let csrf = login_csrf(state, headers);
    let (title, prompt) = match step.kind {
        SecondStepKind::ConsentRequired => ("Accept the terms", ""),
        SecondStepKind::VerificationRequired => (
            "Confirm it is you",
            "This sign-in looks unusual: we emailed you a code.",
        ),
        SecondStepKind::EnrollmentRequired => ("Set up a second factor", ""),
        SecondStepKind::MfaRequired => ("Second factor", "Prove your second factor."),
    };
    let consent = (step.kind == SecondStepKind::ConsentRequired).then(|| {
        let consent = &state.config.consent;
        context! {
            terms_version => consent.terms_version.clone(),
            privacy_version => consent.privacy_version.clone(),
        }
    });
    render(
        "step.html",
        StatusCode::OK,
        context! {
            title,
            prompt,
            csrf,
            next,
            action => "/account/login/step",
            mfa_token => step.mfa_token.clone(),
            enrol => step.kind == SecondStepKind::EnrollmentRequired,
            consent,
            ..super::factors::proof_choices(step)
        },
    )
}

/// `POST /account/login/passkey`: a sign-in with a passkey alone; the next page asks the
/// browser for one.
pub async fn passkey_login(
    State(state): State<AppState>,
    LoginForm { next, headers, .. }: LoginForm,
) -> Response {
    match crate::auth::second_factor::start_passwordless(&state).await {
        Ok(challenge) => {
            let step = SecondStep {
                kind: SecondStepKind::MfaRequired,
                mfa_token: challenge.mfa_token,
                methods: vec![crate::mfa::Method::Webauthn.as_str()],
                webauthn: Some(challenge.webauthn),
                expires_in: 0,
            };
            step_page(&state, &headers, &step, &next)
        }
        Err(error) => login_page(&state, error.status(), &next, "", Some(explain(&error))),
    }
}

/// `POST /account/login/enrol`: a sign-in that must enrol a second factor first sets up an
/// authenticator app with its token; the app's first code finishes the sign-in.
pub async fn enrol(
    State(state): State<AppState>,
    LoginForm {
        fields,
        next,
        headers,
    }: LoginForm,
) -> Response {
    let mfa_token = fields.get("mfa_token").cloned().unwrap_or_default();
    let enrollment = async {
        let user = crate::mfa::service::enrolling_user(&state, &mfa_token).await?;
        crate::mfa::service::start_totp(&state, &user, None).await
    };
    match enrollment.await {
        Ok(enrollment) => {
            let csrf = login_csrf(&state, &headers);
            super::factors::totp_setup_page(
                &enrollment,
                None,
                &csrf,
                context! { action => "/account/login/step", mfa_token, next },
            )
        }
        Err(error) => login_page(&state, error.status(), &next, "", Some(explain(&error))),
    }
}

/// The sign-in passed: a console sign-in on its session, and on to `next`.
async fn open_console(
    state: &AppState,
    headers: &HeaderMap,
    response: &LoginResponse,
    next: &str,
) -> Result<Response, AppError> {
    // A sign-in over another one ends the one before (and its session).
    if let Some(previous) = session::read_cookie(headers, session::cookie_name(state)) {
        session::end(state, &previous).await?;
    }
    let claims = crate::http::extract::verify_access_token(
        state,
        &response.tokens.access_token,
        state.now(),
    )
    .await?;
    let secret = session::open(state, &claims.sid).await?;
    // A sign-in that enrolled the account's first factor shows its recovery codes, once.
    let mut page = match &response.recovery_codes {
        Some(codes) => super::factors::recovery_codes_page(
            &response.user.user,
            &session::csrf_token(&secret),
            codes,
            next,
        ),
        None => see_other(next),
    };
    let headers = page.headers_mut();
    headers.append(
        header::SET_COOKIE,
        session::set_cookie(state, session::cookie_name(state), &secret),
    );
    headers.append(
        header::SET_COOKIE,
        session::clear_cookie(state, session::login_cookie_name(state)),
    );
    Ok(page)
}

/// `POST /account/logout`: ends the sign-in and its session.
pub async fn logout(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, .. }: SignedForm,
) -> Response {
    if let Err(error) = crate::auth::service::logout(&state, &me.claims, None, &origin).await {
        return refused(Some(&me), error);
    }
    signed_out(&state, &me).await
}

/// `POST /account/logout-everywhere`: ends every session of the account.
pub async fn logout_everywhere(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    SignedForm { me, .. }: SignedForm,
) -> Response {
    if let Err(error) = crate::auth::service::logout_everywhere(&state, &me.user, &origin).await {
        return refused(Some(&me), error);
    }
    signed_out(&state, &me).await
}

async fn signed_out(state: &AppState, me: &ConsoleUser) -> Response {
    if let Err(error) = session::close(state, &me.secret).await {
        return refused(None, error);
    }
    let mut page = see_other("/account/login");
    page.headers_mut().append(
        header::SET_COOKIE,
        session::clear_cookie(state, session::cookie_name(state)),
    );
    page
}
