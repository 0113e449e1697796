//! The rules of second factors: enrolling, proving and removing TOTP, recovery codes and
//! passkeys, and an admin's reset. Each change commits with its audit event and its email.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential, Uuid};

use crate::audit::{self, Action, Event, Origin};
use crate::auth::tokens::Claims;
use crate::clock::Millis;
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::mfa::challenges::{self, NewChallenge, Purpose};
use crate::mfa::passkeys::{self, PasskeyView};
use crate::mfa::{Factors, Method, factors_of, recovery, totp};
use crate::security::sealing;
use crate::state::AppState;
use crate::store::Connection;
use crate::users::User;
use crate::users::store as user_store;

/// An answer to a second-factor challenge.
pub enum Answer {
    Code(String),
    Assertion(Box<PublicKeyCredential>),
}

/// Parses the `code` or `assertion` a method needs from a request.
pub fn answer_for(
    method: Method,
    code: Option<String>,
    assertion: Option<Value>,
) -> Result<Answer, AppError> {
    match method {
        Method::Totp | Method::RecoveryCode | Method::EmailCode => code
            .filter(|code| !code.trim().is_empty() && code.len() <= 64)
            .map(Answer::Code)
            .ok_or_else(|| AppError::field("code", "is required for this method")),
        Method::Webauthn => {
            let assertion = assertion
                .ok_or_else(|| AppError::field("assertion", "is required for webauthn"))?;
            serde_json::from_value(assertion)
                .map(|credential| Answer::Assertion(Box::new(credential)))
                .map_err(|_| AppError::field("assertion", "is not a WebAuthn assertion"))
        }
    }
}

/// A factor proven: which method, and for a recovery code, how many are left.
#[derive(Debug, Clone, Copy)]
pub struct Proven {
    pub method: Method,
    pub recovery_codes_left: Option<i64>,
}

/// Checks `answer` for `user_id` and spends what it used: the TOTP step (a code counts
/// once), the recovery code, the passkey's counter. `ceremony` is the WebAuthn half of the
/// challenge being answered. `Ok(None)` is a wrong answer; nothing is written then.
pub async fn prove(
    connection: &mut Connection,
    state: &AppState,
    user_id: i64,
    method: Method,
    answer: &Answer,
    ceremony: Option<Value>,
    now: Millis,
) -> Result<Option<Proven>, AppError> {
    let proven = Proven {
        method,
        recovery_codes_left: None,
    };
    let accepted = match (method, answer) {
        (Method::Totp, Answer::Code(code)) => {
            prove_totp(connection, state, user_id, code, false, now).await?
        }
        (Method::RecoveryCode, Answer::Code(code)) => {
            if !factors_of(connection, user_id).await?.any() {
                return Ok(None);
            }
            if recovery::spend(connection, user_id, code, now).await? {
                let left = recovery::remaining(connection, user_id).await?;
                return Ok(Some(Proven {
                    method,
                    recovery_codes_left: Some(left),
                }));
            }
            false
        }
        (Method::Webauthn, Answer::Assertion(assertion)) => {
            let Some(ceremony) = ceremony else {
                return Ok(None);
            };
            let stored = passkeys::of_user(connection, user_id).await?;
            match passkeys::finish_authentication(
                &state.webauthn,
                assertion,
                ceremony,
                &stored,
                false,
            ) {
                Some((id, passkey)) => {
                    passkeys::record_use(connection, id, &passkey, now).await?;
                    true
                }
                None => false,
            }
        }
        _ => false,
    };
    metrics::counter!("ums_mfa_verifications_total", "method" => method.as_str(),
        "result" => if accepted { "success" } else { "failure" })
    .increment(1);
    Ok(accepted.then_some(proven))
}

/// A TOTP code for the user's factor: confirmed (or, when `confirming`, still unconfirmed),
/// right for now ±1 step, and for a step later than any used before.
async fn prove_totp(
    connection: &mut Connection,
    state: &AppState,
    user_id: i64,
    code: &str,
    confirming: bool,
    now: Millis,
) -> Result<bool, AppError> {
    let Some(row) = totp::find(connection, user_id).await? else {
        return Ok(false);
    };
    if row.confirmed_at.is_some() == confirming {
        return Ok(false);
    }
    let secret = sealing::unseal(&row.secret_sealed, state.config.secret_key.as_ref())?;
    let Some(step) = totp::matching_step(&secret, code, now) else {
        return Ok(false);
    };
    Ok(totp::spend_step(connection, user_id, step, now).await?)
}

/// Keeps `users.mfa_enabled` (shown on the user) equal to "has a second factor", and drops
/// the recovery codes of an account left with none.
async fn settle(
    connection: &mut Connection,
    user_id: i64,
    now: Millis,
) -> Result<Factors, AppError> {
    let mut factors = factors_of(connection, user_id).await?;
    if !factors.any() && factors.recovery_codes_left > 0 {
        recovery::remove_all(connection, user_id).await?;
        factors.recovery_codes_left = 0;
    }
    user_store::set_mfa_enabled(connection, user_id, factors.any(), now).await?;
    Ok(factors)
}

/// The first factor of an account comes with its recovery codes, shown once.
async fn codes_for_first_factor(
    connection: &mut Connection,
    user_id: i64,
    had_factor: bool,
    now: Millis,
) -> Result<Option<Vec<String>>, AppError> {
    if had_factor {
        return Ok(None);
    }
    let codes = recovery::generate();
    recovery::replace(connection, user_id, &codes, now).await?;
    Ok(Some(codes))
}

/// A change to an account's factors, told to its owner and recorded: the email and the
/// audit event go in the change's own transaction.
async fn announce(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    (kind, details): (EmailKind, Value),
    event: Event,
) -> Result<(), AppError> {
    state
        .outbox
        .enqueue(
            connection,
            user,
            &user.email,
            kind,
            details,
            event.occurred_at,
        )
        .await?;
    audit::record(connection, state.store.chain_key(), event).await
}

/// How recent a sign-in must be to change an account's factors.
pub const RECENT_SIGN_IN: Millis = 10 * 60 * 1000;

/// A change to an account's factors needs a recent sign-in, one that proved a factor when
/// the account has one: a stolen access token alone can neither add a factor (a passkey
/// would outlive a password reset) nor remove one.
pub fn require_recent_sign_in(
    session: &Claims,
    factors: &Factors,
    now: Millis,
) -> Result<(), AppError> {
    let proved = session.amr.iter().any(|method| method == "mfa");
    let recent = signed_in_recently(session, now);
    match (factors.any(), proved, recent) {
        (true, true, true) | (false, _, true) => Ok(()),
        (true, _, _) => Err(AppError::StepUpRequired),
        (false, _, false) => Err(AppError::ReauthenticationRequired),
    }
}

fn signed_in_recently(session: &Claims, now: Millis) -> bool {
    session.auth_time.saturating_mul(1000) >= now - RECENT_SIGN_IN
}

/// Whether the session proved a second factor recently enough to change the factors.
pub fn proved_factor_recently(session: &Claims, now: Millis) -> bool {
    session.amr.iter().any(|method| method == "mfa") && signed_in_recently(session, now)
}

async fn check_recent_sign_in(
    state: &AppState,
    user_id: i64,
    session: &Claims,
) -> Result<Factors, AppError> {
    let factors = {
        let mut connection = state.store.read().await?;
        factors_of(&mut connection, user_id).await?
    };
    require_recent_sign_in(session, &factors, state.now())?;
    Ok(factors)
}

/// A user's second factors as they see them.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MfaStatus {
    /// The account has a second factor.
    pub enabled: bool,
    /// Methods that can prove it (`totp`, `recovery_code`, `webauthn`).
    pub methods: Vec<Method>,
    pub totp: bool,
    /// A TOTP enrolment started and not yet confirmed.
    pub totp_pending: bool,
    pub recovery_codes_left: i64,
    pub passkeys: Vec<PasskeyView>,
}

pub async fn status(state: &AppState, user_id: i64) -> Result<MfaStatus, AppError> {
    let mut connection = state.store.read().await?;
    let factors = factors_of(&mut connection, user_id).await?;
    let pending = totp::find(&mut connection, user_id)
        .await?
        .is_some_and(|row| row.confirmed_at.is_none());
    let passkeys = passkeys::of_user(&mut connection, user_id)
        .await?
        .iter()
        .map(passkeys::StoredPasskey::view)
        .collect();
    Ok(MfaStatus {
        enabled: factors.any(),
        methods: factors.methods(),
        totp: factors.totp,
        totp_pending: pending,
        recovery_codes_left: factors.recovery_codes_left,
        passkeys,
    })
}

/// Starts a TOTP enrolment: a new secret, sealed, not counting until a code confirms it.
#[tracing::instrument(skip_all)]
pub async fn start_totp(
    state: &AppState,
    user: &User,
    session: Option<&Claims>,
) -> Result<totp::Enrollment, AppError> {
    if let Some(session) = session {
        check_recent_sign_in(state, user.id, session).await?;
    }
    let now = state.now();
    let secret = totp::new_secret();
    let enrollment = totp::enrollment(&secret, &user.username)?;
    let sealed = sealing::seal(&secret, state.config.secret_key.as_ref())?;
    let mut transaction = state.store.begin().await?;
    if totp::find(&mut transaction, user.id)
        .await?
        .is_some_and(|row| row.confirmed_at.is_some())
    {
        return Err(AppError::conflict(
            "totp",
            "an authenticator app is enrolled already; disable it first",
        ));
    }
    totp::begin(&mut transaction, user.id, &sealed, now).await?;
    transaction.commit().await?;
    Ok(enrollment)
}

/// What enrolling a factor answers: the recovery codes when it was the account's first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Enrolled {
    /// Shown once: ten single-use codes, for when the factor is lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_codes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passkey: Option<PasskeyView>,
}

/// Confirms a started TOTP enrolment with a code from the app, in the caller's transaction
/// (a signed-in user's own, or a sign-in that had to enrol first). `Ok(None)`: wrong code.
pub async fn confirm_totp_in(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    code: &str,
    origin: &Origin,
    now: Millis,
) -> Result<Option<Enrolled>, AppError> {
    let had_factor = factors_of(connection, user.id).await?.any();
    if !prove_totp(connection, state, user.id, code, true, now).await? {
        return Ok(None);
    }
    let recovery_codes = codes_for_first_factor(connection, user.id, had_factor, now).await?;
    settle(connection, user.id, now).await?;
    announce(
        connection,
        state,
        user,
        (
            EmailKind::FactorAdded,
            json!({"method": Method::Totp.label()}),
        ),
        Event::new(Action::TotpEnabled, now)
            .actor(Some(user.id))
            .resource("user", user.id)
            .details(json!({"recovery_codes_issued": recovery_codes.is_some()}))
            .origin(origin),
    )
    .await?;
    metrics::counter!("ums_mfa_enrollments_total", "method" => "totp").increment(1);
    Ok(Some(Enrolled {
        recovery_codes,
        passkey: None,
    }))
}

#[tracing::instrument(skip_all)]
pub async fn confirm_totp(
    state: &AppState,
    user: &User,
    code: &str,
    origin: &Origin,
) -> Result<Enrolled, AppError> {
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    let pending = totp::find(&mut transaction, user.id).await?;
    match pending {
        None => {
            return Err(AppError::field(
                "code",
                "no enrolment is under way; start one with POST /api/auth/mfa/totp/enroll",
            ));
        }
        Some(row) if row.confirmed_at.is_some() => {
            return Err(AppError::conflict(
                "totp",
                "the authenticator app is confirmed already",
            ));
        }
        Some(_) => {}
    }
    let enrolled = confirm_totp_in(&mut transaction, state, user, code, origin, now)
        .await?
        .ok_or_else(|| AppError::field("code", "is not the app's current code"))?;
    transaction.commit().await?;
    Ok(enrolled)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisableTotpRequest {
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    /// A current code of the app, or a recovery code.
    pub code: String,
}

/// Refuses to take the last factor of an admin while admins must have one.
fn keep_admins_factor(state: &AppState, user: &User, after: &Factors) -> Result<(), AppError> {
    if user.must_have_second_factor(&state.config.second_factors) && !after.any() {
        return Err(AppError::conflict(
            "factor",
            "administrators must keep a second factor (UMS_REQUIRE_MFA_FOR_ADMINS); add another first",
        ));
    }
    Ok(())
}

/// Removes the TOTP factor, with the password and a code (of the app or a recovery code).
#[tracing::instrument(skip_all)]
pub async fn disable_totp(
    state: &AppState,
    user: &User,
    session: &Claims,
    request: DisableTotpRequest,
    origin: &Origin,
) -> Result<(), AppError> {
    check_recent_sign_in(state, user.id, session).await?;
    crate::auth::password_change::confirm_password(
        state,
        user,
        request.password,
        "password",
        origin,
    )
    .await?;
    let before = {
        let mut connection = state.store.read().await?;
        factors_of(&mut connection, user.id).await?
    };
    if !before.totp {
        return Err(AppError::NotFound);
    }
    let after = Factors {
        totp: false,
        ..before.clone()
    };
    keep_admins_factor(state, user, &after)?;
    let method = if recovery::looks_like_one(&request.code) {
        Method::RecoveryCode
    } else {
        Method::Totp
    };
    // The code is a second factor answered like any other: counted toward the lockout.
    let reservation = crate::auth::sign_in::count_answer(state, user, origin).await?;
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    let answer = Answer::Code(request.code);
    if prove(&mut transaction, state, user.id, method, &answer, None, now)
        .await?
        .is_none()
    {
        drop(transaction);
        return Err(
            crate::auth::sign_in::refuse_answer(state, user, None, reservation, origin).await?,
        );
    }
    crate::security::lockout::clear(
        &mut transaction,
        &crate::security::lockout::Subject::User(user.id),
    )
    .await?;
    totp::remove(&mut transaction, user.id).await?;
    settle(&mut transaction, user.id, now).await?;
    announce(
        &mut transaction,
        state,
        user,
        (
            EmailKind::FactorRemoved,
            json!({"method": Method::Totp.label(), "by_admin": false}),
        ),
        Event::new(Action::TotpDisabled, now)
            .actor(Some(user.id))
            .resource("user", user.id)
            .details(json!({"proven_with": method.as_str()}))
            .origin(origin),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegenerateCodesRequest {
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecoveryCodes {
    /// Shown once: ten single-use codes; every earlier code is void.
    pub recovery_codes: Vec<String>,
}

/// A new set of recovery codes, voiding the old one.
#[tracing::instrument(skip_all)]
pub async fn regenerate_recovery_codes(
    state: &AppState,
    user: &User,
    session: &Claims,
    request: RegenerateCodesRequest,
    origin: &Origin,
) -> Result<RecoveryCodes, AppError> {
    check_recent_sign_in(state, user.id, session).await?;
    crate::auth::password_change::confirm_password(
        state,
        user,
        request.password,
        "password",
        origin,
    )
    .await?;
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    if !factors_of(&mut transaction, user.id).await?.any() {
        return Err(AppError::conflict(
            "factor",
            "recovery codes back up a second factor; enrol one first",
        ));
    }
    let codes = recovery::generate();
    recovery::replace(&mut transaction, user.id, &codes, now).await?;
    announce(
        &mut transaction,
        state,
        user,
        (
            EmailKind::FactorAdded,
            json!({"method": "a new set of recovery codes (the old ones no longer work)"}),
        ),
        Event::new(Action::RecoveryCodesGenerated, now)
            .actor(Some(user.id))
            .resource("user", user.id)
            .origin(origin),
    )
    .await?;
    transaction.commit().await?;
    Ok(RecoveryCodes {
        recovery_codes: codes,
    })
}

/// Queues the notice of a recovery code used to sign in (or step up), in the caller's
/// transaction, with its audit event.
pub async fn recovery_code_used(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    left: i64,
    origin: &Origin,
    now: Millis,
) -> Result<(), AppError> {
    announce(
        connection,
        state,
        user,
        (EmailKind::RecoveryCodeUsed, json!({"remaining": left})),
        Event::new(Action::RecoveryCodeUsed, now)
            .actor(Some(user.id))
            .resource("user", user.id)
            .details(json!({"remaining": left}))
            .origin(origin),
    )
    .await
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PasskeyRegistrationStart {
    /// Finishes the registration (`registration_token` of the finish call); five minutes.
    pub registration_token: String,
    /// The options for `navigator.credentials.create`.
    #[schema(value_type = Object)]
    pub webauthn: Value,
}

/// Starts a passkey registration for `user`.
#[tracing::instrument(skip_all)]
pub async fn start_passkey_registration(
    state: &AppState,
    user: &User,
    session: Option<&Claims>,
) -> Result<PasskeyRegistrationStart, AppError> {
    if let Some(session) = session {
        check_recent_sign_in(state, user.id, session).await?;
    }
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    let existing = passkeys::of_user(&mut transaction, user.id).await?;
    let handle = match passkeys::handle_of(&mut transaction, user.id).await? {
        Some(handle) => handle,
        None => random_handle(),
    };
    let display_name = format!("{} {}", user.first_name, user.last_name);
    let display_name = match display_name.trim() {
        "" => user.username.as_str(),
        name => name,
    };
    let (options, registration) = passkeys::start_registration(
        &state.webauthn,
        handle,
        &user.username,
        display_name,
        &existing,
    )?;
    let ceremony = json!({"handle": handle, "state": passkeys::ceremony_value(&registration)?});
    let token = challenges::create(
        &mut transaction,
        NewChallenge {
            purpose: Purpose::PasskeyRegistration,
            user_id: Some(user.id),
            session_id: None,
            ceremony: Some(ceremony),
            risk: None,
        },
        now,
    )
    .await?;
    transaction.commit().await?;
    Ok(PasskeyRegistrationStart {
        registration_token: token,
        webauthn: serde_json::to_value(options).map_err(anyhow::Error::from)?,
    })
}

/// A random (version 4) UUID.
fn random_handle() -> Uuid {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    Uuid::from_bytes(bytes)
}

/// The account of a sign-in that must enrol a factor first (its `mfa_token`).
pub async fn enrolling_user(state: &AppState, mfa_token: &str) -> Result<User, AppError> {
    let now = state.now();
    let mut connection = state.store.read().await?;
    let challenge = challenges::find_live(&mut connection, mfa_token, now)
        .await?
        .filter(|challenge| challenge.purpose == Purpose::Enrollment)
        .ok_or(AppError::Unauthorized(
            "The mfa_token is unknown, used or expired; sign in again.",
        ))?;
    let user = user_store::find_by_id(&mut connection, challenge.user_id.unwrap_or_default())
        .await?
        .filter(User::is_active)
        .ok_or(AppError::Unauthorized("The account is not active."))?;
    // The token enrols the first factor only; more take a signed-in session.
    if factors_of(&mut connection, user.id).await?.any() {
        return Err(AppError::Unauthorized(
            "The account has a second factor now: finish signing in with it.",
        ));
    }
    Ok(user)
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishPasskeyRegistration {
    pub registration_token: String,
    /// What the user calls it ("YubiKey", "Work laptop"); 1 to 64 characters.
    #[serde(default)]
    pub name: Option<String>,
    /// The `PublicKeyCredential` that `navigator.credentials.create` returned, as JSON.
    #[schema(value_type = Object)]
    pub credential: Value,
}

/// Finishes a registration: the passkey is stored, and with an account's first factor come
/// its recovery codes.
#[tracing::instrument(skip_all)]
pub async fn finish_passkey_registration(
    state: &AppState,
    request: FinishPasskeyRegistration,
    origin: &Origin,
) -> Result<Enrolled, AppError> {
    let mut check = crate::error::FieldCheck::new();
    let name = check.check(
        "name",
        passkeys::parse_name(request.name.as_deref().unwrap_or("Passkey")),
    );
    let credential = check.check(
        "credential",
        serde_json::from_value::<RegisterPublicKeyCredential>(request.credential)
            .map_err(|_| "is not a WebAuthn registration response"),
    );
    let (name, credential) = check.finish_with(name.zip(credential))?;
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    let challenge = challenges::find_live(&mut transaction, &request.registration_token, now)
        .await?
        .filter(|challenge| challenge.purpose == Purpose::PasskeyRegistration)
        .ok_or_else(|| {
            AppError::field(
                "registration_token",
                "is unknown, used or expired; start again",
            )
        })?;
    let user_id = challenge.user_id.unwrap_or_default();
    let user = user_store::find_by_id(&mut transaction, user_id)
        .await?
        .filter(User::is_active)
        .ok_or(AppError::Unauthorized("The account is not active."))?;
    let ceremony = challenge.ceremony.clone().unwrap_or_default();
    let handle: Uuid = serde_json::from_value(ceremony["handle"].clone())
        .map_err(|error| AppError::Internal(error.into()))?;
    let passkey = match passkeys::finish_registration(
        &state.webauthn,
        &credential,
        ceremony["state"].clone(),
    ) {
        Ok(passkey) => passkey,
        Err(reason) => {
            challenges::count_failure(&mut transaction, &challenge.token_hash).await?;
            transaction.commit().await?;
            return Err(AppError::field(
                "credential",
                format!("was not accepted: {reason}"),
            ));
        }
    };
    if !challenges::spend(&mut transaction, &challenge.token_hash, now).await? {
        return Err(AppError::field("registration_token", "was used already"));
    }
    let had_factor = factors_of(&mut transaction, user.id).await?.any();
    let view = passkeys::insert(&mut transaction, user.id, handle, &name, &passkey, now).await?;
    let recovery_codes = codes_for_first_factor(&mut transaction, user.id, had_factor, now).await?;
    settle(&mut transaction, user.id, now).await?;
    announce(
        &mut transaction,
        state,
        &user,
        (
            EmailKind::FactorAdded,
            json!({"method": format!("{} named \"{}\"", Method::Webauthn.label(), name)}),
        ),
        Event::new(Action::PasskeyAdded, now)
            .actor(Some(user.id))
            .resource("user", user.id)
            .details(json!({"passkey_id": view.id, "name": name}))
            .origin(origin),
    )
    .await?;
    transaction.commit().await?;
    metrics::counter!("ums_mfa_enrollments_total", "method" => "webauthn").increment(1);
    Ok(Enrolled {
        recovery_codes,
        passkey: Some(view),
    })
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RenamePasskey {
    pub name: String,
}

#[tracing::instrument(skip_all)]
pub async fn rename_passkey(
    state: &AppState,
    user: &User,
    passkey_id: i64,
    request: RenamePasskey,
    origin: &Origin,
) -> Result<(), AppError> {
    let name =
        passkeys::parse_name(&request.name).map_err(|message| AppError::field("name", message))?;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    if !passkeys::rename(&mut transaction, user.id, passkey_id, &name).await? {
        return Err(AppError::NotFound);
    }
    transaction
        .commit(
            Event::new(Action::PasskeyRenamed, now)
                .actor(Some(user.id))
                .resource("user", user.id)
                .details(json!({"passkey_id": passkey_id, "name": name}))
                .origin(origin),
        )
        .await?;
    Ok(())
}

/// Removes a passkey, from a recent sign-in that proved a factor.
#[tracing::instrument(skip_all)]
pub async fn remove_passkey(
    state: &AppState,
    user: &User,
    session: &Claims,
    passkey_id: i64,
    origin: &Origin,
) -> Result<(), AppError> {
    check_recent_sign_in(state, user.id, session).await?;
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    let Some(name) = passkeys::remove(&mut transaction, user.id, passkey_id).await? else {
        return Err(AppError::NotFound);
    };
    let after = settle(&mut transaction, user.id, now).await?;
    keep_admins_factor(state, user, &after)?;
    let method = format!("{} named \"{}\"", Method::Webauthn.label(), name);
    announce(
        &mut transaction,
        state,
        user,
        (
            EmailKind::FactorRemoved,
            json!({"method": method, "by_admin": false}),
        ),
        Event::new(Action::PasskeyRemoved, now)
            .actor(Some(user.id))
            .resource("user", user.id)
            .details(json!({"passkey_id": passkey_id, "name": name}))
            .origin(origin),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// An admin removes every factor of a user who lost them (the user is told by email), from
/// the admin's own recent sign-in. The user's sessions end; the user signs in with the
/// password alone afterwards, and may enrol again.
#[tracing::instrument(skip_all)]
pub async fn reset(
    state: &AppState,
    admin: &User,
    admin_session: &Claims,
    user_id: i64,
    origin: &Origin,
) -> Result<(), AppError> {
    check_recent_sign_in(state, admin.id, admin_session).await?;
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    let user = user_store::find_by_id(&mut transaction, user_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let before = factors_of(&mut transaction, user.id).await?;
    let had_totp = totp::remove(&mut transaction, user.id).await?;
    let passkeys_removed = passkeys::remove_all(&mut transaction, user.id).await?;
    recovery::remove_all(&mut transaction, user.id).await?;
    challenges::remove_for_user(&mut transaction, user.id).await?;
    settle(&mut transaction, user.id, now).await?;
    let sessions_ended = if user.id == admin.id {
        0
    } else {
        crate::auth::sessions::revoke_all(&mut transaction, user.id, "mfa_reset", None, now).await?
    };
    if before.any() {
        state
            .outbox
            .enqueue(
                &mut transaction,
                &user,
                &user.email,
                EmailKind::FactorRemoved,
                json!({"method": "every second factor", "by_admin": true}),
                now,
            )
            .await?;
    }
    audit::record(
        &mut transaction,
        state.store.chain_key(),
        Event::new(Action::MfaReset, now)
            .actor(Some(admin.id))
            .resource("user", user.id)
            .details(json!({
                "totp": had_totp,
                "passkeys": passkeys_removed,
                "recovery_codes": before.recovery_codes_left,
                "sessions_ended": sessions_ended,
            }))
            .origin(origin),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}
