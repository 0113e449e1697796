//! The end of every sign-in, whichever way it came (a password alone, a password and a second
//! factor, a passkey alone): opening the session, and recording a refusal or a lock.

use serde_json::{Value, json};

use crate::audit::{self, Action, Event, Origin};
use crate::auth::sessions::{self, Grant, TokenPair};
use crate::clock::Millis;
use crate::error::AppError;
use crate::mfa::challenges::{self, Challenge};
use crate::security::attempts::Attempt;
use crate::security::lockout::{self, Reservation, Subject};
use crate::security::risk::SignInRisk;
use crate::state::AppState;
use crate::store::Connection;
use crate::users::store as user_store;
use crate::users::{User, UserWithLabs};

pub const BAD_CREDENTIALS: &str = "Invalid username or password.";
pub const WRONG_SECOND_FACTOR: &str = "The second factor was not accepted.";

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LoginResponse {
    #[serde(flatten)]
    pub tokens: TokenPair,
    pub user: UserWithLabs,
    /// Shown once, when this sign-in enrolled the account's first factor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_codes: Option<Vec<String>>,
}

/// A sign-in that passed, and what the session is granted.
pub struct Accepted<'a> {
    pub login: &'a str,
    pub subject: &'a Subject,
    pub user: User,
    /// The fresh Argon2id hash replacing an imported one, when the password was checked.
    pub rehashed: Option<String>,
    pub grant: Grant,
    /// What the `auth.login` event says about how.
    pub details: Value,
    /// The sign-in's risk, when it was weighed.
    pub risk: Option<SignInRisk>,
}

/// Opens the session of an accepted sign-in in its own transaction.
pub async fn open_session(
    state: &AppState,
    accepted: Accepted<'_>,
    origin: &Origin,
) -> Result<LoginResponse, AppError> {
    let transaction = audit::Audited::begin(&state.store).await?;
    open_session_in(state, transaction, accepted, origin).await
}

/// Opens the session of a passwordless sign-in: the passkey was both factors.
pub async fn open_passwordless_session(
    state: &AppState,
    transaction: audit::Audited,
    user: User,
    risk: Option<crate::security::risk::SignInRisk>,
    origin: &Origin,
) -> Result<LoginResponse, AppError> {
    let subject = Subject::User(user.id);
    let accepted = Accepted {
        login: &user.username.clone(),
        subject: &subject,
        user,
        rehashed: None,
        grant: Grant::new(
            state.now(),
            state.config.refresh_token_ttl.as_millis() as i64,
            &["hwk", "mfa"],
        ),
        details: json!({
            "second_factor": "webauthn",
            "passwordless": true,
            "recovery_codes_left": null,
        }),
        risk,
    };
    open_session_in(state, transaction, accepted, origin).await
}

/// Opens the session in `transaction` (which may hold the spending of a challenge or a code):
/// the lockout counter starts again, the session opens with its first token pair, the alert
/// for a new device is queued, and the event recorded, in one commit; the tokens are signed
/// after it.
pub async fn open_session_in(
    state: &AppState,
    mut transaction: audit::Audited,
    accepted: Accepted<'_>,
    origin: &Origin,
) -> Result<LoginResponse, AppError> {
    let Accepted {
        login,
        subject,
        user,
        rehashed,
        grant,
        mut details,
        risk,
    } = accepted;
    let now = state.now();
    lockout::clear(&mut transaction, subject).await?;
    user_store::record_login(&mut transaction, user.id, rehashed.as_deref(), now).await?;
    let place = risk.as_ref().and_then(|risk| risk.place.as_ref());
    // The device is known from now on: the sign-in passed, or was verified.
    let device_id = crate::security::devices::remember(
        &mut transaction,
        user.id,
        origin,
        place.map(|place| place.label()).as_deref(),
        now,
    )
    .await?;
    let whereabouts = sessions::Whereabouts {
        place,
        device_id: Some(device_id),
    };
    let session_id = sessions::open(&mut transaction, user.id, origin, &grant, whereabouts).await?;
    match risk
        .as_ref()
        .filter(|risk| risk.assessment.score > state.config.risk.policy.thresholds.notify_above)
    {
        Some(risk) => {
            crate::auth::adaptive::notify_risky_sign_in(
                &mut transaction,
                state,
                &user,
                risk,
                &session_id,
                origin,
                now,
            )
            .await?
        }
        None => {
            crate::mail::notices::new_sign_in(
                &mut transaction,
                state,
                &user,
                origin,
                &session_id,
                now,
            )
            .await?
        }
    }
    let tokens =
        sessions::issue_tokens(&mut transaction, state, &user, &session_id, &grant, now).await?;
    let attempt = Attempt {
        login,
        user_id: Some(user.id),
        success: true,
        risk: risk.as_ref(),
    };
    crate::security::attempts::record(&mut transaction, attempt, origin, now).await?;
    if let Some(details) = details.as_object_mut() {
        details.insert("rehashed".into(), json!(rehashed.is_some()));
        details.insert("amr".into(), json!(grant.amr));
        if let Some(risk) = &risk {
            details.insert("risk".into(), json!(risk));
        }
    }
    transaction
        .record(
            Event::new(Action::Login, now)
                .actor(Some(user.id))
                .resource("session", &session_id)
                .details(details)
                .origin(origin),
        )
        .await?;
    let labs = user_store::labs_of(&mut transaction, user.id).await?;
    let user = user_store::find_by_id(&mut transaction, user.id)
        .await?
        .ok_or(AppError::Unauthorized(BAD_CREDENTIALS))?;
    transaction.commit_recorded().await?;
    metrics::counter!("ums_logins_total", "result" => "success").increment(1);
    Ok(LoginResponse {
        tokens: tokens.sign_off_thread(state).await?,
        user: UserWithLabs {
            user: user.view(now),
            labs,
        },
        recovery_codes: None,
    })
}

/// A refused sign-in: the name typed, the account it named, why, and its risk if weighed.
pub struct Refusal<'a> {
    pub login: &'a str,
    pub user: Option<&'a User>,
    pub reason: &'a str,
    pub risk: Option<&'a SignInRisk>,
}

/// Records a refused sign-in: the attempt (for the security pages) and its audit event.
pub async fn record_failure(
    connection: &mut Connection,
    key: &audit::ChainKey,
    refusal: Refusal<'_>,
    origin: &Origin,
    now: Millis,
) -> Result<(), AppError> {
    let Refusal {
        login,
        user,
        reason,
        risk,
    } = refusal;
    let attempt = Attempt {
        login,
        user_id: user.map(|user| user.id),
        success: false,
        risk,
    };
    crate::security::attempts::record(connection, attempt, origin, now).await?;
    let mut details = json!({"username": login, "reason": reason});
    if let Some(risk) = risk {
        details["risk"] = json!(risk);
    }
    audit::record(
        connection,
        key,
        Event::new(Action::LoginFailed, now)
            .failed()
            .actor(user.map(|user| user.id))
            .resource(
                "user",
                user.map_or_else(|| login.to_string(), |user| user.id.to_string()),
            )
            .details(details)
            .origin(origin),
    )
    .await
}

/// The failure that reached the lockout threshold: the account's notice and the lock's event.
pub async fn record_lock(
    transaction: &mut audit::Audited,
    state: &AppState,
    login: &str,
    user: Option<&User>,
    origin: &Origin,
    now: Millis,
) -> Result<(), AppError> {
    let policy = state.lockout_policy();
    metrics::counter!("ums_lockouts_total").increment(1);
    if let Some(user) = user {
        crate::mail::notices::account_locked(transaction, state, user, now + policy.duration, now)
            .await?;
    }
    transaction
        .record(
            Event::new(Action::AccountLocked, now)
                .actor(user.map(|user| user.id))
                .resource("security", user.map_or(0, |user| user.id))
                .details(json!({
                    "username": login,
                    "locked_until": crate::clock::to_rfc3339(now + policy.duration),
                }))
                .origin(origin),
        )
        .await
}

/// A wrong second factor: counted on the challenge (three kill it) and toward the account's
/// lockout, recorded, and answered like every wrong answer.
pub async fn refuse_answer(
    state: &AppState,
    user: &User,
    challenge: Option<&Challenge>,
    reservation: Reservation,
    origin: &Origin,
) -> Result<AppError, AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    if let Some(challenge) = challenge {
        challenges::count_failure(&mut transaction, &challenge.token_hash).await?;
    }
    let attempt = Attempt {
        login: &user.username,
        user_id: Some(user.id),
        success: false,
        risk: None,
    };
    crate::security::attempts::record(&mut transaction, attempt, origin, now).await?;
    transaction
        .record(
            Event::new(Action::MfaFailed, now)
                .failed()
                .actor(Some(user.id))
                .resource("user", user.id)
                .details(json!({"username": user.username}))
                .origin(origin),
        )
        .await?;
    if reservation.locks_on_failure(state.lockout_policy()) {
        record_lock(
            &mut transaction,
            state,
            &user.username,
            Some(user),
            origin,
            now,
        )
        .await?;
    }
    transaction.commit_recorded().await?;
    metrics::counter!("ums_logins_total", "result" => "failure").increment(1);
    crate::security::credential_failure(state, origin).await?;
    Ok(AppError::Unauthorized(WRONG_SECOND_FACTOR))
}

/// Counts an answer against the account before it is evaluated; a locked account is
/// refused (423) unevaluated.
pub async fn count_answer(
    state: &AppState,
    user: &User,
    origin: &Origin,
) -> Result<Reservation, AppError> {
    reserve_attempt(
        state,
        &Subject::User(user.id),
        &user.username,
        Some(user),
        origin,
    )
    .await
}

/// Reserves an attempt against `subject`'s lockout before anything is evaluated: a locked
/// name is recorded as refused and answered 423 (`Err`), never evaluated.
pub async fn reserve_attempt(
    state: &AppState,
    subject: &Subject,
    login: &str,
    user: Option<&User>,
    origin: &Origin,
) -> Result<Reservation, AppError> {
    let now = state.now();
    let mut transaction = state.store.begin().await?;
    let reservation =
        lockout::reserve(&mut transaction, state.lockout_policy(), subject, now).await?;
    if let Reservation::Locked { until } = reservation {
        let refusal = Refusal {
            login,
            user,
            reason: "locked",
            risk: None,
        };
        record_failure(
            &mut transaction,
            state.store.chain_key(),
            refusal,
            origin,
            now,
        )
        .await?;
        transaction.commit().await?;
        return Err(AppError::Locked {
            retry_after_seconds: ((until - now).max(0) as u64).div_ceil(1000),
        });
    }
    transaction.commit().await?;
    Ok(reservation)
}

/// Begins the transaction of a refused sign-in with its failure recorded (the attempt and
/// its audit event); the caller adds what its refusal adds, then commits.
pub async fn begin_refusal(
    state: &AppState,
    refusal: Refusal<'_>,
    origin: &Origin,
) -> Result<audit::Audited, AppError> {
    let mut transaction = audit::Audited::begin(&state.store).await?;
    record_failure(
        &mut transaction,
        state.store.chain_key(),
        refusal,
        origin,
        state.now(),
    )
    .await?;
    Ok(transaction)
}
