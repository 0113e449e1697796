//! The rules of registration, login, refresh and logout. Handlers call these; these call
//! the store. Each state change commits with its audit event.

use secrecy::SecretString;
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, Action, Event, Origin};
use crate::auth::password::{Verification, check_policy};
use crate::auth::sessions::{self, PresentedRefresh, Spend, TokenPair};
pub use crate::auth::sign_in::LoginResponse;
use crate::auth::sign_in::{self, Accepted, BAD_CREDENTIALS, Refusal};
use crate::auth::tokens::{Claims, TokenError, TokenType};
use crate::error::AppError;
use crate::error::FieldCheck;
use crate::security::lockout::{self, Reservation, Subject};
use crate::security::risk::Action as RiskAction;
use crate::state::AppState;
use crate::users::store::{self as user_store, NewUser};
use crate::users::{Email, User, UserView, UserWithLabs, Username, parse_name};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub username: String,
    pub email: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    /// The terms of service version accepted: required when `UMS_TERMS_VERSION` is set, and
    /// then the one in force (`GET /api/consents`).
    #[serde(default)]
    pub accept_terms: Option<String>,
    /// The privacy notice version accepted: required when `UMS_PRIVACY_VERSION` is set.
    #[serde(default)]
    pub accept_privacy: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Username or email.
    pub username: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
    #[serde(default)]
    pub totp_code: Option<String>,
    /// Accepts the terms of service in force in the same step (else a sign-in whose account
    /// has not accepted them answers `consent_required`).
    #[serde(default)]
    pub accept_terms: Option<String>,
    /// Accepts the privacy notice in force in the same step.
    #[serde(default)]
    pub accept_privacy: Option<String>,
}

/// Validated registration fields, with every field's problem reported at once.
struct Registration {
    username: Username,
    email: Email,
    first_name: String,
    last_name: String,
}

fn validate_registration(
    request: &RegisterRequest,
    min_length: usize,
    consent: &crate::config::Consent,
) -> Result<Registration, AppError> {
    use secrecy::ExposeSecret;
    let mut check = FieldCheck::new();
    if let Err(AppError::Validation(errors)) = crate::auth::consent::check_accepted(
        consent,
        request.accept_terms.as_deref(),
        request.accept_privacy.as_deref(),
    ) {
        for (field, messages) in errors {
            for message in messages {
                check.add(&field, message);
            }
        }
    }
    let username = check.check("username", Username::parse(&request.username));
    let email = check.check("email", Email::parse(&request.email));
    check.check(
        "password",
        check_policy(
            request.password.expose_secret(),
            min_length,
            Some(&request.username),
        ),
    );
    let first_name = check.check(
        "first_name",
        parse_name(request.first_name.as_deref().unwrap_or_default()),
    );
    let last_name = check.check(
        "last_name",
        parse_name(request.last_name.as_deref().unwrap_or_default()),
    );
    let registration = match (username, email, first_name, last_name) {
        (Some(username), Some(email), Some(first_name), Some(last_name)) => Some(Registration {
            username,
            email,
            first_name,
            last_name,
        }),
        _ => None,
    };
    check.finish_with(registration)
}

#[tracing::instrument(skip_all)]
pub async fn register(
    state: &AppState,
    request: RegisterRequest,
    origin: &Origin,
) -> Result<UserView, AppError> {
    let fields = validate_registration(
        &request,
        state.config.password_min_length,
        &state.config.consent,
    )?;
    crate::security::count_account_request(state, origin).await?;
    // A taken name or address is answered before any hashing: a duplicate costs no CPU. The
    // insert below still checks, for two registrations racing for one name.
    {
        let mut connection = state.store.read().await?;
        if user_store::find_by_username(&mut connection, fields.username.as_str())
            .await?
            .is_some()
        {
            return Err(AppError::conflict(
                "username",
                "a user with this username already exists",
            ));
        }
        if user_store::find_by_login(&mut connection, fields.email.as_str())
            .await?
            .is_some_and(|user| user.email == fields.email.as_str())
        {
            return Err(AppError::conflict(
                "email",
                "a user with this email already exists",
            ));
        }
    }
    let password = request.password;
    let password_hash = state
        .hashing(move |hasher| hasher.hash(&password))
        .await??;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let user = user_store::insert(
        &mut transaction,
        NewUser {
            username: &fields.username,
            email: &fields.email,
            password_hash: &password_hash,
            first_name: &fields.first_name,
            last_name: &fields.last_name,
            is_admin: false,
            is_active: true,
            email_verified: false,
        },
        now,
    )
    .await?;
    crate::auth::email_change::send_verification(
        &mut transaction,
        state,
        &user,
        &user.email,
        crate::mail::EmailKind::Welcome,
        now,
    )
    .await?;
    let consent = crate::auth::consent::record(
        &mut transaction,
        &state.config.consent,
        user.id,
        origin,
        now,
    )
    .await?;
    transaction
        .commit(
            Event::new(Action::Register, now)
                .actor(Some(user.id))
                .resource("user", user.id)
                .details(
                    json!({"username": user.username, "email": user.email, "consent": consent}),
                )
                .origin(origin),
        )
        .await?;
    Ok(user.view(now))
}

/// A login, in its steps: find the account, slow a failing name down, count the attempt
/// (refusing a locked name unevaluated), check the password in constant time, then either
/// refuse or open a session.
#[tracing::instrument(skip_all)]
pub async fn login(
    state: &AppState,
    request: LoginRequest,
    origin: &Origin,
) -> Result<LoginResponse, AppError> {
    let login = parse_login(&request.username)?;
    // Versions offered with the login are checked before anything is counted: a stale one is
    // a 400 that leaves the account's lockout count as it was.
    if request.accept_terms.is_some() || request.accept_privacy.is_some() {
        crate::auth::consent::check_accepted(
            &state.config.consent,
            request.accept_terms.as_deref(),
            request.accept_privacy.as_deref(),
        )?;
    }
    if crate::auth::adaptive::denylisted(state, origin).is_some() {
        return Err(refuse_denylisted(state, &login, origin).await?);
    }
    let user = {
        let mut connection = state.store.read().await?;
        user_store::find_by_login(&mut connection, &login).await?
    };
    let subject = match &user {
        Some(user) => Subject::User(user.id),
        None => Subject::UnknownName(login.to_lowercase()),
    };
    slow_down_failing_name(state, &subject, user.as_ref()).await?;
    let ip_attempt = crate::security::begin_ip_attempt(state, origin).await?;
    let (reservation, ip_attempt) =
        count_attempt(state, &login, &subject, user.as_ref(), origin, ip_attempt).await?;

    let stored_hash = user.as_ref().map(|user| user.password_hash.clone());
    let password = request.password;
    let rehash_password = password.clone();
    let started = std::time::Instant::now();
    let verification = state
        .hashing(move |hasher| hasher.verify(&password, stored_hash.as_deref()))
        .await?;
    // Every answer takes at least the slowest imported hash's time (see `VerifyFloor`).
    state.verify_floor.pad(started).await;

    let user = match (user, verification.matched()) {
        (Some(user), true) if user.is_active() => user,
        (user, matched) => {
            let attempt = FailedLogin {
                login: &login,
                subject: &subject,
                user: user.as_ref(),
                password_matched: matched,
                reservation,
            };
            return Err(refuse(state, attempt, origin, ip_attempt).await?);
        }
    };
    let rehashed = match verification {
        Verification::MatchNeedsRehash => Some(
            state
                .hashing(move |hasher| hasher.hash(&rehash_password))
                .await??,
        ),
        _ => None,
    };
    if user.password_reset_required {
        return Err(refuse_until_reset(state, &login, &user, origin, ip_attempt).await?);
    }
    let risk = crate::auth::adaptive::assess(state, Some(&user), origin, false).await?;
    if risk.assessment.action == RiskAction::Refuse {
        return Err(refuse_risky(state, &login, &user, &risk, origin, ip_attempt).await?);
    }
    let consent = &state.config.consent;
    if !crate::auth::consent::has_accepted(&state.store, consent, user.id).await? {
        if request.accept_terms.is_none() && request.accept_privacy.is_none() {
            let asked = crate::auth::consent::ask(
                state,
                &user,
                &subject,
                reservation,
                rehashed.as_deref(),
                &risk,
                origin,
            )
            .await?;
            ip_attempt.succeeded(state).await;
            return Err(asked);
        }
        // Accepted in the login itself (the versions were checked before the password):
        // recorded at once, whatever the steps after.
        let transaction = audit::Audited::begin(&state.store).await?;
        crate::auth::consent::given(transaction, consent, user.id, origin, state.now()).await?;
    }
    let accepted = PasswordAccepted {
        login: &login,
        subject: &subject,
        user,
        rehashed,
        risk,
        totp_code: request.totp_code,
        reservation,
    };
    continue_sign_in(state, accepted, origin, ip_attempt).await
}

/// A sign-in past its password (and its consent): what the account and the risk still ask
/// for before a session opens.
pub struct PasswordAccepted<'a> {
    pub login: &'a str,
    pub subject: &'a Subject,
    pub user: User,
    pub rehashed: Option<String>,
    pub risk: crate::security::risk::SignInRisk,
    /// The login body's `totp_code`: the one-step form.
    pub totp_code: Option<String>,
    pub reservation: crate::security::lockout::Reservation,
}

/// Goes on from a right password: a second step when the account has a factor, must enrol
/// one, or the risk asks for the emailed code; else the session opens.
pub async fn continue_sign_in(
    state: &AppState,
    accepted: PasswordAccepted<'_>,
    origin: &Origin,
    ip_attempt: crate::security::IpAttempt,
) -> Result<LoginResponse, AppError> {
    let PasswordAccepted {
        login,
        subject,
        user,
        rehashed,
        risk,
        totp_code,
        reservation,
    } = accepted;
    let factors = {
        let mut connection = state.store.read().await?;
        crate::mfa::factors_of(&mut connection, user.id).await?
    };
    let must_enrol = user.must_have_second_factor(&state.config.second_factors);
    if factors.any()
        || must_enrol
        || crate::auth::adaptive::wants_verification(risk.assessment.action)
    {
        let step = crate::auth::second_factor::PasswordStep {
            login,
            subject,
            user,
            factors,
            totp_code,
            reservation,
            rehashed,
            risk,
        };
        return crate::auth::second_factor::after_password(state, step, origin, ip_attempt).await;
    }
    let lifetime = state.config.refresh_token_ttl.as_millis() as i64;
    let accepted = Accepted {
        login,
        subject,
        user,
        rehashed,
        grant: sessions::Grant::password(state.now(), lifetime),
        details: json!({}),
        risk: Some(risk),
    };
    let response = sign_in::open_session(state, accepted, origin).await?;
    ip_attempt.succeeded(state).await;
    Ok(response)
}

fn parse_login(username: &str) -> Result<String, AppError> {
    let login = username.trim().to_string();
    if login.is_empty() || login.len() > 254 {
        return Err(AppError::field(
            "username",
            "must be a username or an email address",
        ));
    }
    Ok(login)
}

/// Progressive delay: slows the next try of a failing username, without holding a thread or
/// a connection. A locked account answers at once (it will not be evaluated anyway).
async fn slow_down_failing_name(
    state: &AppState,
    subject: &Subject,
    user: Option<&User>,
) -> Result<(), AppError> {
    let failures = {
        let mut connection = state.store.read().await?;
        lockout::current_failures(&mut connection, subject, user).await?
    };
    let delay = crate::security::login_delay(&state.config.login_delays, failures);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    Ok(())
}

/// Counts the attempt against the name before anything is evaluated; a locked name is
/// refused here (423), recorded, and never evaluated.
async fn count_attempt(
    state: &AppState,
    login: &str,
    subject: &Subject,
    user: Option<&User>,
    origin: &Origin,
    ip_attempt: crate::security::IpAttempt,
) -> Result<(Reservation, crate::security::IpAttempt), AppError> {
    match sign_in::reserve_attempt(state, subject, login, user, origin).await {
        Ok(reservation) => Ok((reservation, ip_attempt)),
        Err(locked @ AppError::Locked { .. }) => {
            metrics::counter!("ums_logins_total", "result" => "locked").increment(1);
            ip_attempt.failed(state, origin).await?;
            Err(locked)
        }
        Err(error) => Err(error),
    }
}

/// A login that will be refused, and what is known about it.
struct FailedLogin<'a> {
    login: &'a str,
    subject: &'a Subject,
    user: Option<&'a User>,
    /// The password was right but the account is inactive.
    password_matched: bool,
    reservation: Reservation,
}

/// Records a refused login (and the lock it may cause, with its notice) and gives the one
/// answer every refusal gets, whatever its reason.
async fn refuse(
    state: &AppState,
    attempt: FailedLogin<'_>,
    origin: &Origin,
    ip_attempt: crate::security::IpAttempt,
) -> Result<AppError, AppError> {
    let FailedLogin {
        login,
        subject,
        user,
        password_matched,
        reservation,
    } = attempt;
    let policy = state.lockout_policy();
    let now = state.now();
    let reason = if password_matched {
        "inactive"
    } else {
        "invalid_credentials"
    };
    let risk = match password_matched {
        false => Some(crate::auth::adaptive::assess(state, user, origin, true).await?),
        true => None,
    };
    let refusal = Refusal {
        login,
        user,
        reason,
        risk: risk.as_ref(),
    };
    let mut transaction = sign_in::begin_refusal(state, refusal, origin).await?;
    if password_matched {
        // The password was right: the account is disabled, not under attack.
        lockout::clear(&mut transaction, subject).await?;
    }
    metrics::counter!("ums_logins_total", "result" => "failure").increment(1);
    if !password_matched && reservation.locks_on_failure(policy) {
        sign_in::record_lock(&mut transaction, state, login, user, origin, now).await?;
    }
    transaction.commit_recorded().await?;
    if password_matched {
        ip_attempt.succeeded(state).await;
    } else {
        ip_attempt.failed(state, origin).await?;
        crate::security::watch_for_stuffing(state, login, origin).await?;
    }
    Ok(AppError::Unauthorized(BAD_CREDENTIALS))
}

/// The right password of an account whose owner reported a sign-in as not theirs: no
/// session until the password is reset.
async fn refuse_until_reset(
    state: &AppState,
    login: &str,
    user: &User,
    origin: &Origin,
    ip_attempt: crate::security::IpAttempt,
) -> Result<AppError, AppError> {
    sign_in::begin_refusal(
        state,
        Refusal {
            login,
            user: Some(user),
            reason: "password_reset_required",
            risk: None,
        },
        origin,
    )
    .await?
    .commit_recorded()
    .await?;
    ip_attempt.succeeded(state).await;
    Ok(AppError::PasswordResetRequired)
}

/// A sign-in from an address a denylist names: refused before any account is looked up or
/// any password checked, and recorded.
async fn refuse_denylisted(
    state: &AppState,
    login: &str,
    origin: &Origin,
) -> Result<AppError, AppError> {
    // No password was looked at: only the address is weighed.
    let risk = crate::auth::adaptive::assess(state, None, origin, false).await?;
    sign_in::begin_refusal(
        state,
        Refusal {
            login,
            user: None,
            reason: "denylisted",
            risk: Some(&risk),
        },
        origin,
    )
    .await?
    .commit_recorded()
    .await?;
    metrics::counter!("ums_logins_total", "result" => "denylisted").increment(1);
    Ok(AppError::Forbidden(
        "Sign-in from this address is refused (it is on an IP denylist).",
    ))
}

/// A right password whose sign-in scored past the refusal threshold: refused with the one
/// answer every refusal gets (an attacker learns nothing of the password), while the user is
/// told and the admins alerted.
async fn refuse_risky(
    state: &AppState,
    login: &str,
    user: &User,
    risk: &crate::security::risk::SignInRisk,
    origin: &Origin,
    ip_attempt: crate::security::IpAttempt,
) -> Result<AppError, AppError> {
    let now = state.now();
    let mut transaction = sign_in::begin_refusal(
        state,
        Refusal {
            login,
            user: Some(user),
            reason: "risk",
            risk: Some(risk),
        },
        origin,
    )
    .await?;
    crate::auth::adaptive::refuse_risky_sign_in(&mut transaction, state, user, risk, origin, now)
        .await?;
    transaction.commit_recorded().await?;
    metrics::counter!("ums_logins_total", "result" => "risk_refused").increment(1);
    ip_attempt.failed(state, origin).await?;
    Ok(AppError::Unauthorized(BAD_CREDENTIALS))
}

/// A presented refresh token: an opaque one as it is; a signed (JWT) one of an earlier version,
/// once its signature, type and expiry are checked.
async fn presented_refresh_token(
    state: &AppState,
    token: &str,
) -> Result<PresentedRefresh, AppError> {
    if token.starts_with(sessions::REFRESH_TOKEN_PREFIX) {
        return Ok(PresentedRefresh::opaque(token));
    }
    let now = state.now();
    let claims = match state.keys.verify(token, TokenType::Refresh, now) {
        Err(TokenError::UnknownKey) => {
            state
                .keys
                .reload(&state.store, state.config.jwt_algorithm, now)
                .await?;
            state.keys.verify(token, TokenType::Refresh, now)
        }
        other => other,
    }?;
    Ok(PresentedRefresh::signed(&claims))
}

#[tracing::instrument(skip_all)]
pub async fn refresh(
    state: &AppState,
    refresh_token: &str,
    origin: &Origin,
) -> Result<TokenPair, AppError> {
    let presented = presented_refresh_token(state, refresh_token).await?;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    match sessions::spend_refresh_token(&mut transaction, &presented, now).await? {
        Spend::Spent {
            session_id,
            user_id,
            grant,
        } => {
            let user = user_store::find_by_id(&mut transaction, user_id)
                .await?
                .filter(User::is_active)
                .ok_or(AppError::Unauthorized("The session has ended."))?;
            let tokens =
                sessions::issue_tokens(&mut transaction, state, &user, &session_id, &grant, now)
                    .await?;
            transaction
                .commit(
                    Event::new(Action::TokenRefreshed, now)
                        .actor(Some(user.id))
                        .resource("session", &session_id)
                        .origin(origin),
                )
                .await?;
            metrics::counter!("ums_tokens_refreshed_total").increment(1);
            tokens.sign_off_thread(state).await
        }
        Spend::Reused {
            session_id,
            user_id,
        } => {
            transaction
                .commit(
                    Event::new(Action::RefreshTokenReused, now)
                        .failed()
                        .actor(Some(user_id))
                        .resource("session", &session_id)
                        .details(json!({"revoked": "session"}))
                        .origin(origin),
                )
                .await?;
            Err(AppError::Unauthorized(
                "The refresh token was already used; the session is revoked.",
            ))
        }
        Spend::Dead => Err(AppError::Unauthorized("The session has ended.")),
    }
}

/// Ends the caller's session, and the session of `refresh_token` too when it is the caller's.
#[tracing::instrument(skip_all)]
pub async fn logout(
    state: &AppState,
    caller: &Claims,
    refresh_token: Option<&str>,
    origin: &Origin,
) -> Result<(), AppError> {
    let user_id = caller
        .user_id()
        .ok_or(AppError::Unauthorized("The token is invalid."))?;
    let other_session = match refresh_token {
        Some(token) => {
            let presented = presented_refresh_token(state, token).await?;
            let found = {
                let mut connection = state.store.read().await?;
                sessions::find_refresh_token(&mut connection, &presented).await?
            };
            let found = found.ok_or(AppError::Unauthorized("The refresh token is unknown."))?;
            if found.user_id != user_id {
                return Err(AppError::Forbidden(
                    "The refresh token belongs to another user.",
                ));
            }
            (found.session_id != caller.sid).then_some(found.session_id)
        }
        None => None,
    };
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    for session_id in std::iter::once(&caller.sid).chain(other_session.as_ref()) {
        sessions::revoke(&mut transaction, session_id, "logout", now).await?;
        transaction
            .record(
                Event::new(Action::Logout, now)
                    .actor(Some(user_id))
                    .resource("session", session_id)
                    .origin(origin),
            )
            .await?;
    }
    transaction.commit_recorded().await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn me(state: &AppState, user: &User) -> Result<UserWithLabs, AppError> {
    let cache = state.store.auth_cache();
    let labs = match cache.labs(user.id, state.now()) {
        Some(labs) => labs,
        None => {
            let epoch = cache.epoch();
            let mut connection = state.store.read().await?;
            let labs = user_store::labs_of(&mut connection, user.id).await?;
            cache.fill_labs(epoch, user.id, &labs);
            labs
        }
    };
    Ok(UserWithLabs {
        user: user.view(state.now()),
        labs,
    })
}

#[tracing::instrument(skip_all)]
pub async fn revoke_session(
    state: &AppState,
    user_id: i64,
    session_id: &str,
    origin: &Origin,
) -> Result<(), AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    if !sessions::revoke_own(&mut transaction, user_id, session_id, now).await? {
        return Err(AppError::NotFound);
    }
    transaction
        .commit(
            Event::new(Action::SessionRevoked, now)
                .actor(Some(user_id))
                .resource("session", session_id)
                .origin(origin),
        )
        .await?;
    Ok(())
}

/// Signs the account out of every session (the console's "Sign out everywhere").
#[tracing::instrument(skip_all)]
pub async fn logout_everywhere(
    state: &AppState,
    user: &User,
    origin: &Origin,
) -> Result<(), AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let revoked = sessions::revoke_all(&mut transaction, user.id, "logout", None, now).await?;
    transaction
        .commit(
            Event::new(Action::Logout, now)
                .actor(Some(user.id))
                .resource("user", user.id)
                .details(json!({"sessions_ended": revoked, "everywhere": true}))
                .origin(origin),
        )
        .await
}

/// Sets the login floor to the time the slowest imported hash method still stored takes to
/// check (zero when none is left). At start and hourly, so imports and first logins move it.
#[tracing::instrument(skip_all)]
pub async fn measure_verify_floor(state: &AppState) -> Result<(), AppError> {
    let hashes: Vec<String> = {
        let mut connection = state.store.read().await?;
        crate::with_db!(connection, |db| sqlx::query_scalar(
            "SELECT password_hash FROM users WHERE password_hash NOT LIKE '$argon2%'",
        )
        .fetch_all(db)
        .await)?
    };
    let methods = crate::auth::password::legacy_methods(hashes.iter().map(String::as_str));
    let floor = if methods.is_empty() {
        std::time::Duration::ZERO
    } else {
        state
            .hashing(move |_| {
                methods
                    .iter()
                    .map(|method| crate::auth::password::time_legacy_method(method))
                    .max()
                    .unwrap_or_default()
            })
            .await?
    };
    state.verify_floor.set(floor);
    Ok(())
}
