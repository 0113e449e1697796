//! Consent: the terms of service and the privacy notice a person accepts, by version. With
//! `UMS_TERMS_VERSION` / `UMS_PRIVACY_VERSION` set, a registration must accept the versions in
//! force, and a sign-in whose account has not accepted them answers `consent_required` with an
//! `mfa_token`; `POST /api/auth/login/consent` accepts them and the sign-in goes on (to its
//! second factor, when it has one). Each acceptance is kept with its time and address.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{self, Action, Event, Origin};
use crate::auth::sign_in::LoginResponse;
use crate::clock::{Millis, Timestamp};
use crate::config::Consent;
use crate::error::{AppError, FieldCheck, SecondStep, SecondStepKind};
use crate::mfa::challenges::{self, EXPIRED, NewChallenge, Purpose};
use crate::security::lockout::{self, Reservation, Subject};
use crate::security::risk::SignInRisk;
use crate::state::AppState;
use crate::store::{Connection, Inet, StoreError};
use crate::users::User;

/// The versions in force (`GET /api/consents`): what a registration form shows and accepts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CurrentVersions {
    /// The terms of service in force, or null when none is asked.
    pub terms_version: Option<String>,
    /// The privacy notice in force, or null when none is asked.
    pub privacy_version: Option<String>,
}

impl From<&Consent> for CurrentVersions {
    fn from(consent: &Consent) -> Self {
        CurrentVersions {
            terms_version: consent.terms_version.clone(),
            privacy_version: consent.privacy_version.clone(),
        }
    }
}

/// The documents in force, as (document, version).
fn in_force(consent: &Consent) -> impl Iterator<Item = (&'static str, &str)> {
    [
        ("terms", consent.terms_version.as_deref()),
        ("privacy", consent.privacy_version.as_deref()),
    ]
    .into_iter()
    .filter_map(|(document, version)| version.map(|version| (document, version)))
}

/// Checks that a request accepts every version in force: `accept_terms` and `accept_privacy`
/// must name them. A field that is wrong is named, with the version it should be.
pub fn check_accepted(
    consent: &Consent,
    accept_terms: Option<&str>,
    accept_privacy: Option<&str>,
) -> Result<(), AppError> {
    let mut check = FieldCheck::new();
    for (field, in_force, given) in [
        ("accept_terms", &consent.terms_version, accept_terms),
        ("accept_privacy", &consent.privacy_version, accept_privacy),
    ] {
        if let Some(version) = in_force
            && given.map(str::trim) != Some(version.as_str())
        {
            check.add(
                field,
                format!("accept the version in force, \"{version}\", to go on"),
            );
        }
    }
    check.finish()
}

/// Whether the account has accepted every version in force. With none in force (the
/// default) a login pays nothing for it: no connection is taken.
pub async fn has_accepted(
    store: &crate::store::Store,
    consent: &Consent,
    user_id: i64,
) -> Result<bool, StoreError> {
    let mut documents = in_force(consent).peekable();
    if documents.peek().is_none() {
        return Ok(true);
    }
    let mut connection = store.read().await?;
    for (document, version) in documents {
        let found: Option<i64> = crate::with_db!(connection, |db| sqlx::query_scalar(
            "SELECT id FROM consents WHERE user_id = $1 AND document = $2 AND version = $3"
        )
        .bind(user_id)
        .bind(document)
        .bind(version)
        .fetch_optional(db)
        .await)?;
        if found.is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Records the acceptance of every version in force (an acceptance already kept stays as it
/// was); returns the versions, for the audit event.
pub async fn record(
    connection: &mut Connection,
    consent: &Consent,
    user_id: i64,
    origin: &Origin,
    now: Millis,
) -> Result<serde_json::Value, StoreError> {
    for (document, version) in in_force(consent) {
        crate::execute!(connection, sqlx::query(
            "INSERT INTO consents (user_id, document, version, accepted_at, ip) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id, document, version) DO NOTHING",
        )
        .bind(user_id)
        .bind(document)
        .bind(version)
        .bind(Timestamp::from(now))
        .bind(origin.ip.as_deref().and_then(Inet::parse))
        )?;
    }
    Ok(json!(CurrentVersions::from(consent)))
}

/// Records the acceptance of the versions in force with its audit event, and commits.
pub async fn given(
    mut transaction: audit::Audited,
    consent: &Consent,
    user_id: i64,
    origin: &Origin,
    now: Millis,
) -> Result<(), AppError> {
    let versions = record(&mut transaction, consent, user_id, origin, now).await?;
    transaction
        .commit(
            Event::new(Action::ConsentGiven, now)
                .actor(Some(user_id))
                .resource("user", user_id)
                .details(json!({"versions": versions}))
                .origin(origin),
        )
        .await
}

/// A sign-in whose password was right, waiting for consent: the attempt is given back to the
/// lockout (it was no failure), an imported hash is upgraded, and the challenge that carries
/// the sign-in on is answered as `consent_required`.
pub async fn ask(
    state: &AppState,
    user: &User,
    subject: &Subject,
    reservation: Reservation,
    rehashed: Option<&str>,
    risk: &SignInRisk,
    origin: &Origin,
) -> Result<AppError, AppError> {
    let mut transaction = audit::Audited::begin(&state.store).await?;
    lockout::release(
        &mut transaction,
        state.lockout_policy(),
        subject,
        reservation,
    )
    .await?;
    if let Some(rehashed) = rehashed {
        crate::users::store::replace_password_hash(&mut transaction, user.id, rehashed).await?;
    }
    consent_step(state, transaction, user, Some(risk), None, origin).await
}

/// What a consent challenge records of the sign-in it holds up, when that was no password.
const SIGNED_IN_WITH: &str = "signed_in_with";
const PASSKEY: &str = "passkey";

/// A passwordless sign-in (its passkey verified, in `transaction`) waiting for consent: the
/// challenge remembers that the passkey was proven, so accepting opens the session at once.
pub async fn ask_after_passkey(
    state: &AppState,
    transaction: audit::Audited,
    user: &User,
    risk: Option<&SignInRisk>,
    origin: &Origin,
) -> Result<AppError, AppError> {
    let ceremony = json!({ SIGNED_IN_WITH: PASSKEY });
    consent_step(state, transaction, user, risk, Some(ceremony), origin).await
}

/// The challenge that carries a sign-in on past its consent, answered as `consent_required`.
async fn consent_step(
    state: &AppState,
    mut transaction: audit::Audited,
    user: &User,
    risk: Option<&SignInRisk>,
    ceremony: Option<serde_json::Value>,
    origin: &Origin,
) -> Result<AppError, AppError> {
    let now = state.now();
    let mfa_token = challenges::create(
        &mut transaction,
        NewChallenge {
            purpose: Purpose::Consent,
            user_id: Some(user.id),
            session_id: None,
            ceremony,
            risk,
        },
        now,
    )
    .await?;
    transaction
        .commit(
            Event::new(Action::MfaChallenged, now)
                .actor(Some(user.id))
                .resource("user", user.id)
                .details(json!({
                    "step": SecondStepKind::ConsentRequired.code(),
                    "versions": CurrentVersions::from(&state.config.consent),
                }))
                .origin(origin),
        )
        .await?;
    metrics::counter!("ums_logins_total", "result" => "consent_required").increment(1);
    Ok(AppError::SecondStep(Box::new(SecondStep {
        kind: SecondStepKind::ConsentRequired,
        mfa_token,
        methods: vec!["consent"],
        webauthn: None,
        expires_in: (challenges::LIFETIME / 1000) as u64,
    })))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentRequest {
    /// From the `consent_required` answer of the login.
    pub mfa_token: String,
    /// The terms of service version accepted: the one in force (`GET /api/consents`).
    #[serde(default)]
    pub accept_terms: Option<String>,
    /// The privacy notice version accepted: the one in force.
    #[serde(default)]
    pub accept_privacy: Option<String>,
}

/// `POST /api/auth/login/consent`: the person accepts the versions in force, and the sign-in
/// goes on as it would have after its password.
#[tracing::instrument(skip_all)]
pub async fn accept(
    state: &AppState,
    request: ConsentRequest,
    origin: &Origin,
) -> Result<LoginResponse, AppError> {
    let now = state.now();
    let consent = &state.config.consent;
    let (challenge, user) = {
        let mut connection = state.store.read().await?;
        let challenge = challenges::find_live(&mut connection, &request.mfa_token, now)
            .await?
            .filter(|challenge| challenge.purpose == Purpose::Consent)
            .ok_or(AppError::Unauthorized(EXPIRED))?;
        let user = match challenge.user_id {
            Some(id) => crate::users::store::find_by_id(&mut connection, id).await?,
            None => None,
        }
        .filter(User::is_active)
        .ok_or(AppError::Unauthorized(EXPIRED))?;
        (challenge, user)
    };
    check_accepted(
        consent,
        request.accept_terms.as_deref(),
        request.accept_privacy.as_deref(),
    )?;
    let ip_attempt = crate::security::begin_ip_attempt(state, origin).await?;
    let mut transaction = audit::Audited::begin(&state.store).await?;
    if !challenges::claim(&mut transaction, &challenge.token_hash, now).await? {
        return Err(AppError::Unauthorized(EXPIRED));
    }
    given(transaction, consent, user.id, origin, now).await?;
    let signed_in_with = challenge
        .ceremony
        .as_ref()
        .and_then(|ceremony| ceremony.get(SIGNED_IN_WITH))
        .and_then(serde_json::Value::as_str);
    if signed_in_with == Some(PASSKEY) {
        let transaction = audit::Audited::begin(&state.store).await?;
        let response = crate::auth::sign_in::open_passwordless_session(
            state,
            transaction,
            user,
            challenge.risk.clone(),
            origin,
        )
        .await?;
        ip_attempt.succeeded(state).await;
        return Ok(response);
    }
    let risk = challenge
        .risk
        .clone()
        .ok_or_else(|| anyhow::anyhow!("a consent challenge without its sign-in's risk"))?;
    let login = user.username.clone();
    let subject = Subject::User(user.id);
    super::service::continue_sign_in(
        state,
        super::service::PasswordAccepted {
            login: &login,
            subject: &subject,
            user,
            rehashed: None,
            risk,
            totp_code: None,
            reservation: Reservation::Released,
        },
        origin,
        ip_attempt,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consent(terms: Option<&str>, privacy: Option<&str>) -> Consent {
        Consent {
            terms_version: terms.map(str::to_owned),
            privacy_version: privacy.map(str::to_owned),
        }
    }

    #[test]
    fn only_the_versions_in_force_are_asked_and_each_must_match() {
        let nothing = consent(None, None);
        assert!(check_accepted(&nothing, None, None).is_ok());
        let both = consent(Some("2026-01"), Some("3"));
        assert!(check_accepted(&both, Some("2026-01"), Some(" 3 ")).is_ok());
        let AppError::Validation(errors) =
            check_accepted(&both, Some("2025-12"), None).unwrap_err()
        else {
            panic!("a validation error");
        };
        assert!(errors.contains_key("accept_terms") && errors.contains_key("accept_privacy"));
        let terms_only = consent(Some("1"), None);
        assert!(check_accepted(&terms_only, Some("1"), Some("anything")).is_ok());
        assert_eq!(in_force(&terms_only).collect::<Vec<_>>(), [("terms", "1")]);
    }
}
