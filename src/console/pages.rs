//! The console's pages: each handler checks the sign-in and the form's CSRF token, calls the
//! service the API calls, and renders the outcome (or redirects after a change, so a reload
//! never repeats it).

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;
use secrecy::SecretString;

use crate::auth::sign_in::LoginResponse;
use crate::console::render;
use crate::console::session::{self, ConsoleUser};
use crate::error::{AppError, SecondStep, SecondStepKind};
use crate::http::extract::ClientOrigin;
use crate::labs::access::{LabAccess, ManageMembers};
use crate::state::AppState;

type Fields = Result<Form<HashMap<String, String>>, FormRejection>;

/// A page answered before the handler's own: the sign-in form, or a refusal.
pub struct Early(Box<Response>);

impl From<Response> for Early {
    fn from(response: Response) -> Self {
        Early(Box::new(response))
    }
}

impl IntoResponse for Early {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A form's fields, or the page that says the form could not be read.
fn fields(form: Fields) -> Result<HashMap<String, String>, Early> {
    form.map(|Form(fields)| fields).map_err(|rejection| {
        Early::from(message(
            None,
            "",
            StatusCode::BAD_REQUEST,
            "The form could not be read",
            &rejection.body_text(),
        ))
    })
}

/// A page that only says something: an error, or what became of a request.
fn message(
    me: Option<&ConsoleUser>,
    csrf: &str,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    let (back, back_label) = match me {
        Some(_) => ("/account", "Back to your account"),
        None => ("/account/login", "Sign in"),
    };
    let failed = status.is_client_error() || status.is_server_error();
    render(
        "message.html",
        status,
        context! {
            title,
            me => me.map(|me| me.user.view(0)),
            csrf,
            error => failed.then_some(text),
            notice => (!failed).then_some(text),
            back,
            back_label,
        },
    )
}

/// What a service's refusal says on a page: its problem's text and, for a form, each field's.
fn explain(error: &AppError) -> String {
    match error {
        AppError::Validation(fields) => fields
            .iter()
            .map(|(field, problems)| {
                format!("{}: {}", field.replace('_', " "), problems.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; "),
        // The console has no step-up of its own: a new sign-in proves the factor again.
        AppError::StepUpRequired => "This needs a recent proof of your second factor: sign out, \
            then sign in again with it."
            .into(),
        other => other.detail(),
    }
}

fn refused(me: Option<&ConsoleUser>, error: AppError) -> Response {
    if let AppError::Internal(inner) = &error {
        tracing::error!(error = %format!("{inner:#}"), "a console request failed");
    }
    let csrf = me.map(|me| me.csrf.clone()).unwrap_or_default();
    message(
        me,
        &csrf,
        error.status(),
        "That did not work",
        &explain(&error),
    )
}

/// The signed-in person, or the way to the sign-in page (back here afterwards).
async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    here: &str,
) -> Result<ConsoleUser, Early> {
    let secret = session::read_cookie(headers, session::cookie_name(state));
    let found = match secret {
        Some(secret) => session::find(state, &secret)
            .await
            .map_err(|error| Early::from(refused(None, error)))?,
        None => None,
    };
    found.ok_or_else(|| {
        let next = form_urlencoded_component(here);
        Early::from(Redirect::to(&format!("/account/login?next={next}")).into_response())
    })
}

/// The signed-in person of a page (else the way to the sign-in page, back here after).
pub struct Signed(ConsoleUser);

impl FromRequestParts<AppState> for Signed {
    type Rejection = Early;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Early> {
        // After signing in, a page is shown again; a form is not posted again.
        let here = match parts.method {
            axum::http::Method::GET => parts
                .uri
                .path_and_query()
                .map_or("/account", |path| path.as_str()),
            _ => "/account",
        };
        signed_in(state, &parts.headers, here).await.map(Signed)
    }
}

/// A system admin's page, signed in as the admin policy asks (with a proven second factor
/// while `UMS_REQUIRE_MFA_FOR_ADMINS` holds).
pub struct Admin(ConsoleUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Early;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Early> {
        let Signed(me) = Signed::from_request_parts(parts, state).await?;
        if !me.user.is_admin() {
            return Err(Early::from(refused(
                Some(&me),
                AppError::Forbidden("The admin console is for system admins."),
            )));
        }
        let proved = me.claims.amr.iter().any(|method| method == "mfa");
        if me
            .user
            .must_have_second_factor(&state.config.second_factors)
            && !proved
        {
            let refusal = if me.user.mfa_enabled {
                AppError::Forbidden(
                    "Admins sign in with their second factor here: sign out and in again with it.",
                )
            } else {
                AppError::MfaEnrollmentRequired
            };
            return Err(Early::from(refused(Some(&me), refusal)));
        }
        Ok(Admin(me))
    }
}

/// A form posted by the signed-in person, its CSRF token checked (the body comes last).
pub struct SignedForm {
    me: ConsoleUser,
    fields: HashMap<String, String>,
}

impl FromRequest<AppState> for SignedForm {
    type Rejection = Early;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Early> {
        let (mut parts, body) = request.into_parts();
        let Signed(me) = Signed::from_request_parts(&mut parts, state).await?;
        let fields = checked_fields(&me, Request::from_parts(parts, body), state).await?;
        Ok(SignedForm { me, fields })
    }
}

/// As `SignedForm`, for a system admin.
pub struct AdminForm {
    me: ConsoleUser,
    fields: HashMap<String, String>,
}

impl FromRequest<AppState> for AdminForm {
    type Rejection = Early;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Early> {
        let (mut parts, body) = request.into_parts();
        let Admin(me) = Admin::from_request_parts(&mut parts, state).await?;
        let fields = checked_fields(&me, Request::from_parts(parts, body), state).await?;
        Ok(AdminForm { me, fields })
    }
}

/// The fields of `me`'s form, whose CSRF token must be their sign-in's.
async fn checked_fields(
    me: &ConsoleUser,
    request: Request,
    state: &AppState,
) -> Result<HashMap<String, String>, Early> {
    let fields = fields(Form::from_request(request, state).await)?;
    session::check_csrf(&me.csrf, fields.get("csrf").map(String::as_str))
        .map_err(|error| Early::from(refused(Some(me), error)))?;
    Ok(fields)
}

fn form_urlencoded_component(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Where to go after signing in: a path of this console, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if (next.starts_with("/account") || next.starts_with("/admin"))
                && !next.contains("//")
                && !next.contains('\\')
                && next.bytes().all(|byte| byte.is_ascii_graphic()) =>
        {
            next.to_string()
        }
        _ => "/account".to_string(),
    }
}

fn see_other(location: &str) -> Response {
    Redirect::to(location).into_response()
}

// --- signing in -------------------------------------------------------------------------

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

/// `POST /account/login/step`: a second factor's code, an emailed code, or consent.
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
        method => {
            let method = serde_json::from_value(serde_json::json!(method.unwrap_or_default()));
            match method {
                Ok(method) => {
                    let request = crate::auth::second_factor::SecondStepRequest {
                        mfa_token,
                        method,
                        code: field("code"),
                        assertion: None,
                    };
                    crate::auth::second_factor::complete(&state, request, &origin).await
                }
                Err(_) => Err(AppError::field("method", "is not a method of this step")),
            }
        }
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
    let csrf = session::read_cookie(headers, session::login_cookie_name(state))
        .map(|secret| session::csrf_token(&secret))
        .unwrap_or_default();
    let label = |method: &str| match method {
        "totp" => "Authenticator app",
        "recovery_code" => "Recovery code",
        "email_code" => "Code sent by email",
        _ => "Other",
    };
    // Passkeys need the browser's WebAuthn API, which these script-free pages do not use.
    let methods: Vec<minijinja::Value> = step
        .methods
        .iter()
        .filter(|method| **method != "webauthn" && **method != "consent")
        .map(|method| context! { value => *method, label => label(method) })
        .collect();
    let (title, prompt) = match step.kind {
        SecondStepKind::ConsentRequired => ("Accept the terms", ""),
        SecondStepKind::VerificationRequired => (
            "Confirm it is you",
            "This sign-in looks unusual: we emailed you a code.",
        ),
        SecondStepKind::EnrollmentRequired => {
            return login_page(
                state,
                StatusCode::FORBIDDEN,
                next,
                "",
                Some(
                    "This account must enrol a second factor first; the console cannot enrol one yet."
                        .into(),
                ),
            );
        }
        SecondStepKind::MfaRequired => (
            "Second factor",
            "Enter the code of your authenticator app, or a recovery code.",
        ),
    };
    if methods.is_empty() && step.kind != SecondStepKind::ConsentRequired {
        return login_page(
            state,
            StatusCode::UNAUTHORIZED,
            next,
            "",
            Some(
                "This account signs in with a passkey, which the console does not offer yet."
                    .into(),
            ),
        );
    }
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
            mfa_token => step.mfa_token.clone(),
            methods,
            consent,
        },
    )
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
    let mut page = see_other(next);
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

// --- the account ------------------------------------------------------------------------

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
        _ => None,
    };
    account_page(&state, &me, StatusCode::OK, notice, None).await
}

async fn account_page(
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

/// `POST /account/totp/start`: a new authenticator app's secret, shown as a QR code (an SVG
/// image drawn by the server) and as text, to confirm with its first code.
pub async fn start_totp(
    State(state): State<AppState>,
    SignedForm { me, .. }: SignedForm,
) -> Response {
    use base64::Engine;
    match crate::mfa::service::start_totp(&state, &me.user, Some(&me.claims)).await {
        Ok(enrollment) => {
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
                    me => me.user.view(state.now()),
                    csrf => me.csrf.clone(),
                    qr,
                    secret => enrollment.secret,
                },
            )
        }
        Err(error) => account_page(&state, &me, error.status(), None, Some(explain(&error))).await,
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
        Ok(enrolled) => render(
            "totp.html",
            StatusCode::OK,
            context! {
                title => "The authenticator app is on",
                section => "account",
                me => me.user.view(state.now()),
                csrf => me.csrf.clone(),
                recovery_codes => enrolled.recovery_codes.unwrap_or_default(),
                notice => "From now on, signing in asks for the app's code after the password.",
            },
        ),
        Err(error) => account_page(&state, &me, error.status(), None, Some(explain(&error))).await,
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
        Err(error) => account_page(&state, &me, error.status(), None, Some(explain(&error))).await,
    }
}

// --- the admin console ------------------------------------------------------------------

/// `GET /admin`: the users, searched by name or address.
pub async fn users(
    State(state): State<AppState>,
    Admin(me): Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let q = params.get("q").cloned().unwrap_or_default();
    let mut query = HashMap::new();
    if !q.is_empty() {
        query.insert("q".to_string(), q.clone());
    }
    query.insert("per_page".to_string(), "100".to_string());
    let page = match crate::users::service::list(&state, query).await {
        Ok(page) => page,
        Err(error) => return refused(Some(&me), error),
    };
    let notice = match params.get("done").map(String::as_str) {
        Some("unlocked") => Some("The account was unlocked."),
        Some("active") => Some("The account was changed."),
        Some("reset") => Some("The user's second factors were removed; they were told by email."),
        _ => None,
    };
    render(
        "users.html",
        StatusCode::OK,
        context! {
            title => "Users",
            section => "users",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            users => page.items,
            total => page.total,
            q,
            notice,
        },
    )
}

/// `POST /admin/users/{id}/unlock`.
pub async fn unlock(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<i64>,
    AdminForm { me, .. }: AdminForm,
) -> Response {
    match crate::users::service::unlock(&state, &me.user, id, &origin).await {
        Ok(_) => see_other("/admin?done=unlocked"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/users/{id}/active`: deactivates (its sessions end) or activates an account,
/// as an admin's `PATCH /api/users/{id}` does.
pub async fn set_active(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<i64>,
    AdminForm { me, fields }: AdminForm,
) -> Response {
    let request = crate::users::service::UpdateUser {
        is_active: Some(fields.get("active").map(String::as_str) == Some("true")),
        ..Default::default()
    };
    match crate::users::service::update(&state, &me.user, id, request, &origin).await {
        Ok(_) => see_other("/admin?done=active"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/users/{id}/reset-factors`: removes every second factor of a user who lost
/// them (they are told by email), from the admin's recent sign-in.
pub async fn reset_factors(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<i64>,
    AdminForm { me, .. }: AdminForm,
) -> Response {
    match crate::mfa::service::reset(&state, &me.user, &me.claims, id, &origin).await {
        Ok(()) => see_other("/admin?done=reset"),
        Err(error) => refused(Some(&me), error),
    }
}

/// The filters of a list page that are among `names` and not left empty.
fn given_filters(params: &HashMap<String, String>, names: &[&str]) -> HashMap<String, String> {
    params
        .iter()
        .filter(|(name, value)| names.contains(&name.as_str()) && !value.is_empty())
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The sign-in attempt filters the console offers.
const ATTEMPT_FILTERS: [&str; 3] = ["username", "ip", "success"];

/// `GET /admin/attempts`: sign-in attempts, newest first, with the API's filters.
pub async fn attempts(
    State(state): State<AppState>,
    Admin(me): Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filters = given_filters(&params, &ATTEMPT_FILTERS);
    let mut query = filters.clone();
    query.insert("per_page".into(), "100".into());
    let found = match state.store.reports().await {
        Ok(mut connection) => crate::audit::query::login_attempts(&mut connection, query).await,
        Err(error) => Err(error.into()),
    };
    let (attempts, total, error) = match found {
        Ok(page) => (page.items, page.total, None),
        Err(error) => (Vec::new(), 0, Some(explain(&error))),
    };
    render(
        "attempts.html",
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        context! {
            title => "Sign-in attempts",
            section => "attempts",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            attempts,
            total,
            filters,
            error,
        },
    )
}

/// The audit filters the console offers, as given (empty ones left out).
const AUDIT_FILTERS: [&str; 4] = ["action", "user_id", "ip", "success"];

/// `GET /admin/audit`: the trail, newest first, with the API's filters.
pub async fn audit(
    State(state): State<AppState>,
    Admin(me): Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filters = given_filters(&params, &AUDIT_FILTERS);
    let query: String = AUDIT_FILTERS
        .iter()
        .filter_map(|name| {
            filters
                .get(*name)
                .map(|value| format!("&{name}={}", form_urlencoded_component(value)))
        })
        .collect();
    let mut list = crate::paging::ListQuery::new({
        let mut params = filters.clone();
        params.insert("per_page".into(), "100".into());
        params
    });
    let page = list.page();
    let filter = crate::audit::query::EventFilter::read(&mut list);
    let events = match list.finish() {
        Ok(()) => match state.store.reports().await {
            Ok(mut connection) => {
                crate::audit::query::page(&mut connection, state.store.chain_key(), &filter, page)
                    .await
            }
            Err(error) => Err(error.into()),
        },
        Err(error) => Err(error),
    };
    let (events, total, error) = match events {
        Ok((events, total)) => (events, total, None),
        Err(error) => (Vec::new(), 0, Some(explain(&error))),
    };
    // The details are shown as their JSON text.
    let events: Vec<serde_json::Value> = events
        .into_iter()
        .filter_map(|event| serde_json::to_value(event).ok())
        .map(|mut event| {
            event["details"] = serde_json::Value::String(event["details"].to_string());
            event
        })
        .collect();
    render(
        "audit.html",
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        context! {
            title => "Audit log",
            section => "audit",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            events,
            total,
            filters,
            query,
            error,
        },
    )
}

/// `GET /admin/audit/export?format=csv|json|pdf&...`: the API's export of the filtered set.
pub async fn audit_export(
    State(state): State<AppState>,
    Admin(me): Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if !params.contains_key("format") {
        let error = AppError::field("format", "must be json, csv or pdf");
        return refused(Some(&me), error);
    }
    match crate::audit::routes::answer(state.clone(), params).await {
        Ok(mut response) => {
            let extension = match response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
            {
                Some(kind) if kind.starts_with("text/csv") => "csv",
                Some(kind) if kind.starts_with("application/pdf") => "pdf",
                _ => "jsonl",
            };
            if let Ok(disposition) =
                HeaderValue::from_str(&format!("attachment; filename=\"ums-audit.{extension}\""))
            {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, disposition);
            }
            response
        }
        Err(error) => refused(Some(&me), error),
    }
}

/// `GET /admin/security`: the last day's security at a glance (counts, failures per hour,
/// the addresses and names tried most, the security events), updated live by the page's
/// script from `/admin/security/stream`.
pub async fn security(State(state): State<AppState>, Admin(me): Admin) -> Response {
    const DAY: crate::clock::Millis = 86_400_000;
    let now = state.now();
    let summary = match crate::security::dashboard::summary(&state, DAY).await {
        Ok(summary) => summary,
        Err(error) => return refused(Some(&me), error),
    };
    let outbox = match crate::mail::outbox::counts(&state).await {
        Ok(counts) => counts,
        Err(error) => return refused(Some(&me), AppError::Internal(error)),
    };
    let read = async {
        let mut connection = state.store.read().await?;
        let hourly = crate::security::dashboard::failures_by_hour(&mut connection, now, 24).await?;
        let params = HashMap::from([("per_page".to_string(), "50".to_string())]);
        let events =
            crate::security::dashboard::events(&mut connection, state.store.chain_key(), params)
                .await?;
        Ok::<_, AppError>((hourly, events))
    };
    let (hourly, events) = match read.await {
        Ok(read) => read,
        Err(error) => return refused(Some(&me), error),
    };
    let events: Vec<serde_json::Value> = events
        .items
        .into_iter()
        .filter_map(|event| serde_json::to_value(event).ok())
        .map(|mut event| {
            event["details"] = serde_json::Value::String(event["details"].to_string());
            event
        })
        .collect();
    render(
        "security.html",
        StatusCode::OK,
        context! {
            title => "Security",
            section => "security",
            me => me.user.view(now),
            csrf => me.csrf.clone(),
            counts => summary.counts,
            top_ips => summary.top_ips,
            accounts => summary.targeted_accounts,
            outbox,
            chart => bar_chart(&hourly, now),
            events,
        },
    )
}

/// The bars of the failures-per-hour chart, drawn on the server as SVG.
fn bar_chart(hourly: &[i64], now: crate::clock::Millis) -> minijinja::Value {
    const WIDTH: usize = 480;
    const HEIGHT: i64 = 120;
    let bar_width = WIDTH / hourly.len().max(1);
    let max = hourly.iter().copied().max().unwrap_or(0).max(1);
    let hours = hourly.len() as i64;
    let bars: Vec<minijinja::Value> = hourly
        .iter()
        .enumerate()
        .map(|(index, count)| {
            let height = count * HEIGHT / max;
            let hours_ago = hours - index as i64;
            let start = crate::clock::to_rfc3339(now - hours_ago * 3_600_000);
            context! {
                x => index * bar_width,
                y => HEIGHT - height,
                height,
                count,
                label => format!("the hour from {}", &start[..16.min(start.len())]),
            }
        })
        .collect();
    context! {
        width => WIDTH,
        height => HEIGHT,
        bar_width => bar_width.saturating_sub(2).max(1),
        max,
        bars,
    }
}

/// `GET /admin/security/stream`: the security events from now on, as Server-Sent Events.
pub async fn security_stream(State(state): State<AppState>, Admin(me): Admin) -> Response {
    match crate::security::routes::live_events(state).await {
        Ok(stream) => stream.into_response(),
        Err(error) => refused(Some(&me), error),
    }
}

// --- labs --------------------------------------------------------------------------------

/// The signed-in person's access to manage lab `lab_id`, by the API's rules (a system admin
/// everywhere; a lab_admin of an active lab; else refused, whether or not the lab exists).
async fn manage_lab(
    state: &AppState,
    me: ConsoleUser,
    lab_id: i64,
) -> Result<(ConsoleUser, LabAccess<ManageMembers>), Early> {
    let caller = crate::http::extract::AuthUser {
        user: me.user.clone(),
        claims: me.claims.clone(),
    };
    match LabAccess::resolve(state, caller, Ok(lab_id)).await {
        Ok(access) => Ok((me, access)),
        Err(error) => Err(Early::from(refused(Some(&me), error))),
    }
}

/// A form posted about a lab its sender manages: the CSRF token checked, the access resolved
/// by the API's rules.
pub struct LabForm {
    me: ConsoleUser,
    access: LabAccess<ManageMembers>,
    fields: HashMap<String, String>,
}

impl FromRequest<AppState> for LabForm {
    type Rejection = Early;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Early> {
        let (mut parts, body) = request.into_parts();
        let lab_id = crate::labs::access::lab_id_from_path(&mut parts, state).await;
        let SignedForm { me, fields } =
            SignedForm::from_request(Request::from_parts(parts, body), state).await?;
        let lab_id = lab_id.map_err(|error| Early::from(refused(Some(&me), error)))?;
        let (me, access) = manage_lab(state, me, lab_id).await?;
        Ok(LabForm { me, access, fields })
    }
}

/// `GET /admin/labs`: every lab for a system admin, the person's own for anyone else; the
/// ones they manage link to their page.
pub async fn labs(State(state): State<AppState>, Signed(me): Signed) -> Response {
    let params = HashMap::from([("per_page".to_string(), "100".to_string())]);
    let page = match crate::labs::service::list(&state, &me.user, params).await {
        Ok(page) => page,
        Err(error) => return refused(Some(&me), error),
    };
    let roles: HashMap<i64, String> = {
        let memberships = match state.store.read().await {
            Ok(mut connection) => crate::users::store::labs_of(&mut connection, me.user.id)
                .await
                .map_err(AppError::from),
            Err(error) => Err(error.into()),
        };
        match memberships {
            Ok(memberships) => memberships
                .into_iter()
                .map(|membership| (membership.id, membership.role))
                .collect(),
            Err(error) => return refused(Some(&me), error),
        }
    };
    let labs: Vec<minijinja::Value> = page
        .items
        .into_iter()
        .map(|lab| {
            let role = roles.get(&lab.id).cloned();
            let manage = me.user.is_admin() || role.as_deref() == Some("lab_admin");
            context! {
                id => lab.id,
                code => lab.code,
                name => lab.name,
                is_active => lab.is_active,
                role => role.unwrap_or_else(|| "system admin".into()),
                manage,
            }
        })
        .collect();
    render(
        "labs.html",
        StatusCode::OK,
        context! {
            title => "Labs",
            section => "labs",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            labs,
        },
    )
}

/// `GET /admin/labs/{id}`: a lab's members and invitations, for whoever manages it.
pub async fn lab(
    State(state): State<AppState>,
    Signed(me): Signed,
    Path(lab_id): Path<i64>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (me, access) = match manage_lab(&state, me, lab_id).await {
        Ok(found) => found,
        Err(page) => return page.into_response(),
    };
    let members = crate::labs::service::members(&state, &access).await;
    let invitations = crate::labs::invitations::list(&state, &access).await;
    let (members, invitations) = match members.and_then(|members| Ok((members, invitations?))) {
        Ok(found) => found,
        Err(error) => return refused(Some(&me), error),
    };
    let notice = match params.get("done").map(String::as_str) {
        Some("invited") => Some("The invitation was sent."),
        Some("revoked") => Some("The invitation was revoked."),
        Some("role") => Some("The role was changed."),
        Some("removed") => Some("The member was removed from the lab."),
        _ => None,
    };
    render(
        "lab.html",
        StatusCode::OK,
        context! {
            title => format!("Lab {}", access.lab.code),
            section => "labs",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            lab => access.lab.view(),
            members,
            invitations,
            roles => ["lab_admin", "member", "viewer"],
            notice,
        },
    )
}

/// After a change to lab `lab_id`: back to its page, saying what was done.
fn back_to_lab(lab_id: i64, done: &str) -> Response {
    see_other(&format!("/admin/labs/{lab_id}?done={done}"))
}

/// `POST /admin/labs/{id}/invitations`: invites an address, as through the API.
pub async fn invite(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    LabForm { me, access, fields }: LabForm,
) -> Response {
    let lab_id = access.lab.id;
    let request = crate::labs::invitations::Invite {
        email: fields.get("email").cloned().unwrap_or_default(),
        role: fields.get("role").cloned().unwrap_or_default(),
    };
    match crate::labs::invitations::invite(&state, &access, request, &origin).await {
        Ok(_) => back_to_lab(lab_id, "invited"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/labs/{id}/invitations/{invitation_id}/revoke`.
pub async fn revoke_invitation(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path((_, invitation_id)): Path<(i64, i64)>,
    LabForm { me, access, .. }: LabForm,
) -> Response {
    let lab_id = access.lab.id;
    match crate::labs::invitations::revoke(&state, &access, invitation_id, &origin).await {
        Ok(()) => back_to_lab(lab_id, "revoked"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/labs/{id}/members/{user_id}/role`.
pub async fn change_role(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path((_, user_id)): Path<(i64, i64)>,
    LabForm { me, access, fields }: LabForm,
) -> Response {
    let lab_id = access.lab.id;
    let request = crate::labs::service::ChangeRole {
        role: fields.get("role").cloned().unwrap_or_default(),
    };
    match crate::labs::service::change_role(&state, &access, user_id, request, &origin).await {
        Ok(_) => back_to_lab(lab_id, "role"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/labs/{id}/members/{user_id}/remove`.
pub async fn remove_member(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path((_, user_id)): Path<(i64, i64)>,
    LabForm { me, access, .. }: LabForm,
) -> Response {
    let lab_id = access.lab.id;
    match crate::labs::service::remove_member(&state, &access, user_id, &origin).await {
        Ok(()) => back_to_lab(lab_id, "removed"),
        Err(error) => refused(Some(&me), error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_signing_in_only_a_page_of_this_console_is_next() {
        assert_eq!(
            safe_next(Some("/admin/audit?action=x")),
            "/admin/audit?action=x"
        );
        for elsewhere in [
            "https://evil.example/account",
            "//evil.example/account",
            "/account/../..//evil",
            "/account\\evil",
            "/account\nSet-Cookie: x",
            "/api/users",
            "",
        ] {
            assert_eq!(safe_next(Some(elsewhere)), "/account", "{elsewhere:?}");
        }
        assert_eq!(safe_next(None), "/account");
    }
}
