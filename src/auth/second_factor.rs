//! The second step of a sign-in, a passkey sign-in without a password, and step-up.
//!
//! After a right password, an account with a second factor gets `mfa_required` and an
//! `mfa_token` (a challenge, `mfa/challenges.rs`); an admin without one, while admins must
//! have one, gets `mfa_enrollment_required`. `POST /api/auth/login/mfa` answers the token
//! with a TOTP code, a recovery code or a passkey assertion. A wrong answer counts toward
//! the account's lockout like a wrong password, and three kill the token; the right password
//! of the first step neither counts nor clears the failures before it (`lockout::release`),
//! so signing in again does not buy a thief more guesses.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::audit::{self, Action, Event, Origin};
use crate::auth::sessions::{self, Grant, TokenPair};
use crate::auth::sign_in::{
    self, Accepted, LoginResponse, WRONG_SECOND_FACTOR, count_answer, refuse_answer,
};
use crate::error::{AppError, SecondStep, SecondStepKind};
use crate::mfa::challenges::{self, Challenge, NewChallenge, Purpose};
use crate::mfa::service::{Answer, Proven, answer_for};
use crate::mfa::{Factors, Method, email_code, passkeys, totp};
use crate::security::IpAttempt;
use crate::security::lockout::{self, Reservation, Subject};
use crate::security::risk::SignInRisk;
use crate::state::AppState;
use crate::users::User;
use crate::users::store as user_store;

use crate::mfa::challenges::EXPIRED;

/// A password step that passed, for an account that has (or must enrol) a second factor.
pub struct PasswordStep<'a> {
    pub login: &'a str,
    pub subject: &'a Subject,
    pub user: User,
    pub factors: Factors,
    /// The login body's `totp_code`: the one-step form.
    pub totp_code: Option<String>,
    pub reservation: Reservation,
    pub rehashed: Option<String>,
    /// The sign-in's risk, weighed after the password.
    pub risk: SignInRisk,
}

fn lifetime(state: &AppState) -> i64 {
    state.config.refresh_token_ttl.as_millis() as i64
}

fn method_names(methods: &[Method]) -> Vec<&'static str> {
    methods.iter().map(|method| method.as_str()).collect()
}

/// After a right password: the one-step form (`totp_code` in the body) signs in at once;
/// otherwise the sign-in waits for its second step (or for a first enrolment).
pub async fn after_password(
    state: &AppState,
    step: PasswordStep<'_>,
    origin: &Origin,
    ip_attempt: IpAttempt,
) -> Result<LoginResponse, AppError> {
    let now = state.now();
    // The password was right: the address is not guessing passwords.
    ip_attempt.succeeded(state).await;
    let code = step.totp_code.as_deref().map(str::trim).unwrap_or_default();
    if step.factors.totp && !code.is_empty() {
        let mut transaction = audit::Audited::begin(&state.store).await?;
        let answer = Answer::Code(code.to_string());
        let proven = crate::mfa::service::prove(
            &mut transaction,
            state,
            step.user.id,
            Method::Totp,
            &answer,
            None,
            now,
        )
        .await?;
        return match proven {
            Some(proven) => {
                let accepted = accepted(state, &step, proven);
                sign_in::open_session_in(state, transaction, accepted, origin).await
            }
            None => {
                drop(transaction);
                Err(refuse_answer(state, &step.user, None, step.reservation, origin).await?)
            }
        };
    }
    let must_enrol = step
        .user
        .must_have_second_factor(&state.config.second_factors);
    let (purpose, kind, methods) = if step.factors.any() {
        // A second factor answers every risk short of a refusal.
        (
            Purpose::Login,
            SecondStepKind::MfaRequired,
            step.factors.methods(),
        )
    } else if must_enrol {
        (
            Purpose::Enrollment,
            SecondStepKind::EnrollmentRequired,
            vec![Method::Totp, Method::Webauthn],
        )
    } else {
        (
            Purpose::Verification,
            SecondStepKind::VerificationRequired,
            vec![Method::EmailCode],
        )
    };
    let mut transaction = audit::Audited::begin(&state.store).await?;
    lockout::release(
        &mut transaction,
        state.lockout_policy(),
        step.subject,
        step.reservation,
    )
    .await?;
    if let Some(rehashed) = &step.rehashed {
        // The password was right: its imported hash is upgraded now, whatever the second
        // step does.
        user_store::replace_password_hash(&mut transaction, step.user.id, rehashed).await?;
    }
    let (webauthn, ceremony) = if methods.contains(&Method::Webauthn) && purpose == Purpose::Login {
        let stored = passkeys::of_user(&mut transaction, step.user.id).await?;
        let (options, ceremony) = passkeys::start_authentication(&state.webauthn, &stored)?;
        (Some(to_value(options)?), Some(ceremony))
    } else if purpose == Purpose::Verification {
        let code = email_code::new_code();
        email_code::send(&mut transaction, state, &step.user, &code, &step.risk, now).await?;
        (
            None,
            Some(json!({"code_hash": crate::security::secrets::hash_token(&code)})),
        )
    } else {
        (None, None)
    };
    let mfa_token = challenges::create(
        &mut transaction,
        NewChallenge {
            purpose,
            user_id: Some(step.user.id),
            session_id: None,
            ceremony,
            risk: Some(&step.risk),
        },
        now,
    )
    .await?;
    transaction
        .commit(
            Event::new(Action::MfaChallenged, now)
                .actor(Some(step.user.id))
                .resource("user", step.user.id)
                .details(json!({
                    "step": kind.code(),
                    "methods": method_names(&methods),
                    "risk": step.risk,
                }))
                .origin(origin),
        )
        .await?;
    metrics::counter!("ums_logins_total", "result" => kind.code()).increment(1);
    Err(AppError::SecondStep(Box::new(SecondStep {
        kind,
        mfa_token,
        methods: method_names(&methods),
        webauthn,
        expires_in: (challenges::LIFETIME / 1000) as u64,
    })))
}

fn to_value(options: impl Serialize) -> Result<Value, AppError> {
    serde_json::to_value(options).map_err(|error| AppError::Internal(error.into()))
}

fn accepted<'a>(state: &AppState, step: &PasswordStep<'a>, proven: Proven) -> Accepted<'a> {
    Accepted {
        login: step.login,
        subject: step.subject,
        user: step.user.clone(),
        rehashed: step.rehashed.clone(),
        grant: Grant::new(
            state.now(),
            lifetime(state),
            &["pwd", proven.method.amr(), "mfa"],
        ),
        details: json!({"second_factor": proven.method.as_str(), "one_step": true}),
        risk: Some(step.risk.clone()),
    }
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecondStepRequest {
    /// From the `mfa_required` (or `mfa_enrollment_required`) answer of the login, or from
    /// `POST /api/auth/login/passkey`.
    pub mfa_token: String,
    pub method: Method,
    /// A TOTP code or a recovery code.
    #[serde(default)]
    pub code: Option<String>,
    /// The `PublicKeyCredential` that `navigator.credentials.get` returned, as JSON. Without
    /// it, `webauthn` answers `mfa_required` again with fresh request options.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub assertion: Option<Value>,
}

/// `POST /api/auth/login/mfa`: the second step.
#[tracing::instrument(skip_all)]
pub async fn complete(
    state: &AppState,
    request: SecondStepRequest,
    origin: &Origin,
) -> Result<LoginResponse, AppError> {
    let now = state.now();
    let challenge = {
        let mut connection = state.store.read().await?;
        challenges::find_live(&mut connection, &request.mfa_token, now).await?
    }
    .filter(|challenge| {
        matches!(
            challenge.purpose,
            Purpose::Login | Purpose::Enrollment | Purpose::Passwordless | Purpose::Verification
        )
    })
    .ok_or(AppError::Unauthorized(EXPIRED))?;
    if request.method == Method::Webauthn && request.assertion.is_none() {
        return Err(renew_passkey_challenge(state, &challenge, &request.mfa_token).await?);
    }
    let answer = answer_for(request.method, request.code, request.assertion)?;
    let user = whose(state, &challenge, &answer).await?;
    let reservation = count_answer(state, &user, origin).await?;
    let mut transaction = audit::Audited::begin(&state.store).await?;
    // The token is claimed before the answer is weighed: of two answers racing, the second
    // waits for the first and finds it spent (not a wrong answer). A wrong answer rolls the
    // claim back, and is counted on the token after.
    if !challenges::claim(&mut transaction, &challenge.token_hash, now).await? {
        return Err(AppError::Unauthorized(EXPIRED));
    }
    let (proven, recovery_codes) = evaluate(
        &mut transaction,
        state,
        &user,
        &challenge,
        request.method,
        &answer,
        origin,
    )
    .await?;
    let Some(proven) = proven else {
        drop(transaction);
        return Err(refuse_answer(state, &user, Some(&challenge), reservation, origin).await?);
    };
    if let Some(left) = proven.recovery_codes_left {
        crate::mfa::service::recovery_code_used(&mut transaction, state, &user, left, origin, now)
            .await?;
    }
    if challenge.purpose == Purpose::Passwordless {
        if !crate::auth::consent::has_accepted(&state.store, &state.config.consent, user.id).await?
        {
            return Err(crate::auth::consent::ask_after_passkey(
                state,
                transaction,
                &user,
                challenge.risk.as_ref(),
                origin,
            )
            .await?);
        }
        return sign_in::open_passwordless_session(
            state,
            transaction,
            user,
            challenge.risk.clone(),
            origin,
        )
        .await;
    }
    let amr: &[&str] = match challenge.purpose {
        // An emailed code confirms a risky sign-in; it is no second factor.
        Purpose::Verification => &["pwd", "otp"],
        _ => &["pwd", proven.method.amr(), "mfa"],
    };
    let subject = Subject::User(user.id);
    let accepted = Accepted {
        login: &user.username.clone(),
        subject: &subject,
        user,
        rehashed: None,
        grant: Grant::new(now, lifetime(state), amr),
        details: json!({
            "second_factor": proven.method.as_str(),
            "passwordless": challenge.purpose == Purpose::Passwordless,
            "recovery_codes_left": proven.recovery_codes_left,
        }),
        risk: challenge.risk.clone(),
    };
    let mut response = sign_in::open_session_in(state, transaction, accepted, origin).await?;
    response.recovery_codes = recovery_codes;
    Ok(response)
}

/// The account a challenge is for; a passwordless one learns it from the passkey.
async fn whose(state: &AppState, challenge: &Challenge, answer: &Answer) -> Result<User, AppError> {
    let mut connection = state.store.read().await?;
    let user_id = match (challenge.user_id, answer) {
        (Some(user_id), _) => Some(user_id),
        (None, Answer::Assertion(assertion)) => {
            match passkeys::asserted_handle(&state.webauthn, assertion) {
                Some(handle) => passkeys::of_handle(&mut connection, handle)
                    .await?
                    .first()
                    .map(|passkey| passkey.user_id),
                None => None,
            }
        }
        (None, Answer::Code(_)) => None,
    };
    let user = match user_id {
        Some(user_id) => user_store::find_by_id(&mut connection, user_id).await?,
        None => None,
    };
    user.filter(User::is_active)
        .ok_or(AppError::Unauthorized(WRONG_SECOND_FACTOR))
}

/// Checks the answer; an enrolment challenge confirms the TOTP it enrolled (and hands out
/// the account's recovery codes).
async fn evaluate(
    transaction: &mut audit::Audited,
    state: &AppState,
    user: &User,
    challenge: &Challenge,
    method: Method,
    answer: &Answer,
    origin: &Origin,
) -> Result<(Option<Proven>, Option<Vec<String>>), AppError> {
    let now = state.now();
    match (challenge.purpose, method, answer) {
        (Purpose::Enrollment, Method::Totp, Answer::Code(code))
            if totp::find(transaction, user.id)
                .await?
                .is_some_and(|row| row.confirmed_at.is_none()) =>
        {
            let enrolled =
                crate::mfa::service::confirm_totp_in(transaction, state, user, code, origin, now)
                    .await?;
            Ok(match enrolled {
                Some(enrolled) => (
                    Some(Proven {
                        method,
                        recovery_codes_left: None,
                    }),
                    enrolled.recovery_codes,
                ),
                None => (None, None),
            })
        }
        (Purpose::Passwordless, Method::Webauthn, Answer::Assertion(assertion)) => {
            let stored = passkeys::of_user(transaction, user.id).await?;
            let ceremony = challenge.ceremony.clone().unwrap_or_default();
            let proven = match passkeys::finish_authentication(
                &state.webauthn,
                assertion,
                ceremony,
                &stored,
                true,
            ) {
                Some((id, passkey)) => {
                    passkeys::record_use(transaction, id, &passkey, now).await?;
                    Some(Proven {
                        method,
                        recovery_codes_left: None,
                    })
                }
                None => None,
            };
            metrics::counter!("ums_mfa_verifications_total", "method" => "webauthn",
                "result" => if proven.is_some() { "success" } else { "failure" })
            .increment(1);
            Ok((proven, None))
        }
        (Purpose::Passwordless, _, _) => Ok((None, None)),
        (Purpose::Verification, Method::EmailCode, Answer::Code(code)) => {
            let expected = challenge
                .ceremony
                .as_ref()
                .and_then(|ceremony| ceremony["code_hash"].as_str())
                .unwrap_or_default();
            let right = email_code::matches(code, expected);
            metrics::counter!("ums_mfa_verifications_total", "method" => "email_code",
                "result" => if right { "success" } else { "failure" })
            .increment(1);
            Ok((
                right.then_some(Proven {
                    method,
                    recovery_codes_left: None,
                }),
                None,
            ))
        }
        (Purpose::Verification, _, _) | (_, Method::EmailCode, _) => Ok((None, None)),
        _ => Ok((
            crate::mfa::service::prove(
                transaction,
                state,
                user.id,
                method,
                answer,
                challenge.ceremony.clone(),
                now,
            )
            .await?,
            None,
        )),
    }
}

/// A passkey answer asked for without an assertion: fresh WebAuthn request options on the
/// same token (an enrolment that just registered a passkey takes this way).
async fn renew_passkey_challenge(
    state: &AppState,
    challenge: &Challenge,
    mfa_token: &str,
) -> Result<AppError, AppError> {
    let mut transaction = state.store.begin().await?;
    let (options, ceremony) = match challenge.user_id {
        Some(user_id) => {
            let stored = passkeys::of_user(&mut transaction, user_id).await?;
            if stored.is_empty() {
                return Err(AppError::field("method", "the account has no passkey"));
            }
            passkeys::start_authentication(&state.webauthn, &stored)?
        }
        None => passkeys::start_discoverable(&state.webauthn)?,
    };
    challenges::set_ceremony(&mut transaction, &challenge.token_hash, ceremony).await?;
    transaction.commit().await?;
    Ok(AppError::SecondStep(Box::new(SecondStep {
        kind: SecondStepKind::MfaRequired,
        mfa_token: mfa_token.to_string(),
        methods: vec![Method::Webauthn.as_str()],
        webauthn: Some(to_value(options)?),
        expires_in: (challenges::LIFETIME / 1000) as u64,
    })))
}

/// A passwordless sign-in's first half: a WebAuthn challenge any passkey of any account can
/// answer (a discoverable credential names its account).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PasskeyChallenge {
    /// Answer it with `POST /api/auth/login/mfa` (`method: "webauthn"`).
    pub mfa_token: String,
    /// The options for `navigator.credentials.get`.
    #[schema(value_type = Object)]
    pub webauthn: Value,
    pub expires_in: u64,
}

#[tracing::instrument(skip_all)]
pub async fn start_passwordless(state: &AppState) -> Result<PasskeyChallenge, AppError> {
    let now = state.now();
    let (options, ceremony) = passkeys::start_discoverable(&state.webauthn)?;
    let mut transaction = state.store.begin().await?;
    let mfa_token = challenges::create(
        &mut transaction,
        NewChallenge {
            purpose: Purpose::Passwordless,
            user_id: None,
            session_id: None,
            ceremony: Some(ceremony),
            risk: None,
        },
        now,
    )
    .await?;
    transaction.commit().await?;
    Ok(PasskeyChallenge {
        mfa_token,
        webauthn: to_value(options)?,
        expires_in: (challenges::LIFETIME / 1000) as u64,
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpRequest {
    pub method: Method,
    #[serde(default)]
    pub code: Option<String>,
    /// For `webauthn`: the assertion answering the `mfa_token` that a first call without
    /// one returned.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub assertion: Option<Value>,
    #[serde(default)]
    pub mfa_token: Option<String>,
}

/// `POST /api/auth/step-up`: the session proves a factor again; its methods gain it and
/// `mfa`, its `auth_time` moves to now, and a new token pair carries both (as will every
/// refresh).
#[tracing::instrument(skip_all)]
pub async fn step_up(
    state: &AppState,
    user: &User,
    session_id: &str,
    request: StepUpRequest,
    origin: &Origin,
) -> Result<TokenPair, AppError> {
    let now = state.now();
    let factors = {
        let mut connection = state.store.read().await?;
        crate::mfa::factors_of(&mut connection, user.id).await?
    };
    if !factors.methods().contains(&request.method) {
        return Err(AppError::field(
            "method",
            "is not a second factor of this account",
        ));
    }
    let challenge = match (request.method, request.assertion.is_some()) {
        (Method::Webauthn, false) => {
            return Err(start_step_up_passkey(state, user, session_id).await?);
        }
        (Method::Webauthn, true) => {
            let token = request.mfa_token.as_deref().unwrap_or_default();
            let mut connection = state.store.read().await?;
            let challenge = challenges::find_live(&mut connection, token, now)
                .await?
                .filter(|challenge| {
                    challenge.purpose == Purpose::StepUp
                        && challenge.user_id == Some(user.id)
                        && challenge.session_id.as_deref() == Some(session_id)
                })
                .ok_or(AppError::Unauthorized(EXPIRED))?;
            Some(challenge)
        }
        _ => None,
    };
    let answer = answer_for(request.method, request.code, request.assertion)?;
    let reservation = count_answer(state, user, origin).await?;
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let ceremony = challenge
        .as_ref()
        .and_then(|challenge| challenge.ceremony.clone());
    let proven = crate::mfa::service::prove(
        &mut transaction,
        state,
        user.id,
        request.method,
        &answer,
        ceremony,
        now,
    )
    .await?;
    let Some(proven) = proven else {
        drop(transaction);
        return Err(refuse_answer(state, user, challenge.as_ref(), reservation, origin).await?);
    };
    let grant = sessions::grant_of(&mut transaction, session_id, now)
        .await?
        .ok_or(AppError::Unauthorized("The session has ended."))?
        .stepped_up(proven.method.amr(), now);
    sessions::record_step_up(&mut transaction, session_id, &grant).await?;
    lockout::clear(&mut transaction, &Subject::User(user.id)).await?;
    if let Some(left) = proven.recovery_codes_left {
        crate::mfa::service::recovery_code_used(&mut transaction, state, user, left, origin, now)
            .await?;
    }
    let tokens =
        sessions::issue_tokens(&mut transaction, state, user, session_id, &grant, now).await?;
    transaction
        .commit(
            Event::new(Action::StepUp, now)
                .actor(Some(user.id))
                .resource("session", session_id)
                .details(json!({"method": proven.method.as_str(), "amr": grant.amr}))
                .origin(origin),
        )
        .await?;
    tokens.sign_off_thread(state).await
}

async fn start_step_up_passkey(
    state: &AppState,
    user: &User,
    session_id: &str,
) -> Result<AppError, AppError> {
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    let stored = passkeys::of_user(&mut transaction, user.id).await?;
    let (options, ceremony) = passkeys::start_authentication(&state.webauthn, &stored)?;
    let mfa_token = challenges::create(
        &mut transaction,
        NewChallenge {
            purpose: Purpose::StepUp,
            user_id: Some(user.id),
            session_id: Some(session_id),
            ceremony: Some(ceremony),
            risk: None,
        },
        now,
    )
    .await?;
    transaction.commit().await?;
    Ok(AppError::SecondStep(Box::new(SecondStep {
        kind: SecondStepKind::MfaRequired,
        mfa_token,
        methods: vec![Method::Webauthn.as_str()],
        webauthn: Some(to_value(options)?),
        expires_in: (challenges::LIFETIME / 1000) as u64,
    })))
}
