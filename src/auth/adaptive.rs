//! Adaptive sign-in: the evidence a login gathers about itself (where the address is, whether
//! a denylist names it, the account's habits and devices, how fast it is being tried), the
//! risk engine's verdict on it (`security/risk.rs`), and the notices a risky sign-in sends.

use serde_json::json;

use crate::audit::{self, Action as AuditAction, Event, Origin};
use crate::clock::Millis;
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::security::risk::{self, Action, Evidence, SignInRisk};
use crate::state::AppState;
use crate::store::Connection;
use crate::users::User;

/// The denylist naming the caller's address, if one does.
pub fn denylisted(state: &AppState, origin: &Origin) -> Option<String> {
    let address = origin.ip.as_deref()?.parse().ok()?;
    state.denylist.listing(address)
}

/// Weighs a sign-in of `user` (or of a name that matches no account).
pub async fn assess(
    state: &AppState,
    user: Option<&User>,
    origin: &Origin,
    password_failed: bool,
) -> Result<SignInRisk, AppError> {
    let now = state.now();
    let address = origin.ip.as_deref().and_then(|ip| ip.parse().ok());
    let place = address.and_then(|address| state.geoip.locate(address));
    let mut evidence = Evidence {
        now,
        password_failed,
        place: place.clone(),
        listed_in: address.and_then(|address| state.denylist.listing(address)),
        ..Evidence::default()
    };
    if let Some(user) = user {
        let mut connection = state.store.read().await?;
        let history =
            crate::auth::sessions::history(&mut connection, user.id, origin.ip.as_deref()).await?;
        evidence.has_history = history.any;
        evidence.address_known = history.address_known;
        evidence.known_countries = history.countries;
        evidence.previous = history.last_place;
        evidence.sign_in_hours = history.hours;
        // This attempt is recorded after it is weighed: count it in.
        evidence.recent_attempts =
            crate::security::attempts::recent_for_user(&mut connection, user.id, now - 60_000)
                .await? as u32
                + 1;
        evidence.device_known = crate::security::devices::is_known(
            &mut connection,
            user.id,
            &crate::security::devices::fingerprint(origin),
        )
        .await?;
    }
    let assessment = risk::assess(&state.config.risk.policy, &evidence);
    metrics::histogram!("ums_sign_in_risk_score").record(f64::from(assessment.score));
    Ok(SignInRisk { assessment, place })
}

/// The notice of a sign-in that went through but scored high enough to tell the user: what
/// made it risky, in words (the "new sign-in" email, explained), with its audit event.
pub async fn notify_risky_sign_in(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    risk: &SignInRisk,
    session_id: &str,
    origin: &Origin,
    now: Millis,
) -> Result<(), AppError> {
    state
        .outbox
        .enqueue(
            connection,
            user,
            &user.email,
            EmailKind::RiskySignIn,
            json!({
                "ip": origin.ip.as_deref().unwrap_or("unknown"),
                "device": crate::mail::describe_device(origin.user_agent.as_deref()),
                "place": risk.place.as_ref().map(|place| place.label()).unwrap_or_else(|| "unknown".into()),
                "score": risk.assessment.score,
                "explanation": risk.explanation(),
            }),
            now,
        )
        .await?;
    audit::record(
        connection,
        state.store.chain_key(),
        Event::new(AuditAction::RiskySignIn, now)
            .actor(Some(user.id))
            .resource("session", session_id)
            .details(json!({"risk": risk}))
            .origin(origin),
    )
    .await
}

/// A sign-in refused for its risk (the password was right): the user is told to change the
/// password, the system admins are alerted, and the event recorded.
pub async fn refuse_risky_sign_in(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    risk: &SignInRisk,
    origin: &Origin,
    now: Millis,
) -> Result<(), AppError> {
    let details = json!({
        "ip": origin.ip.as_deref().unwrap_or("unknown"),
        "place": risk.place.as_ref().map(|place| place.label()).unwrap_or_else(|| "unknown".into()),
        "score": risk.assessment.score,
        "explanation": risk.explanation(),
        "account": user.username,
    });
    state
        .outbox
        .enqueue(
            connection,
            user,
            &user.email,
            EmailKind::SignInBlocked,
            details.clone(),
            now,
        )
        .await?;
    for admin in crate::users::store::active_admins(connection).await? {
        state
            .outbox
            .enqueue(
                connection,
                &admin,
                &admin.email,
                EmailKind::RiskAlert,
                details.clone(),
                now,
            )
            .await?;
    }
    audit::record(
        connection,
        state.store.chain_key(),
        Event::new(AuditAction::RiskySignInRefused, now)
            .failed()
            .actor(Some(user.id))
            .resource("security", user.id)
            .details(json!({"risk": risk}))
            .origin(origin),
    )
    .await
}

/// Whether the verdict asks for more than the password: an emailed code, or (for an account
/// with one) the second factor, which answers every verdict short of a refusal.
pub fn wants_verification(action: Action) -> bool {
    matches!(action, Action::VerifyByEmail | Action::SecondFactor)
}
