//! Adaptive sign-in: the evidence a login gathers about itself (where the address is, whether
//! a denylist names it, the account's habits and devices, how fast it is being tried), the
//! risk engine's verdict on it (`security/risk.rs`), and the notices a risky sign-in sends.

use serde_json::json;

use crate::audit::{self, Action as AuditAction, Event, Origin};
use crate::clock::{Millis, Timestamp};
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::security::risk::{self, Action, Evidence, Place, SignInRisk};
use crate::state::AppState;
use crate::store::{Connection, Inet};
use crate::users::User;
use sqlx::types::Json;

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
    let started = std::time::Instant::now();
    if cfg!(feature = "bench-unweighed") {
        let nothing = risk::assess(&state.config.risk.policy, &Evidence::default());
        return Ok(SignInRisk {
            assessment: nothing,
            place: None,
        });
    }
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
        let fingerprint = crate::security::devices::fingerprint(origin);
        let history = history(&mut connection, user.id, origin, &fingerprint, now).await?;
        evidence.has_history = !history.hours.is_empty();
        evidence.address_known = history.address_known;
        evidence.known_countries = history.countries;
        evidence.previous = history.last_place;
        evidence.sign_in_hours = history.hours;
        // This attempt is recorded after it is weighed: count it in.
        evidence.recent_attempts = history.recent_attempts + 1;
        evidence.device_known = history.device_known;
    }
    let assessment = risk::assess(&state.config.risk.policy, &evidence);
    metrics::histogram!("ums_sign_in_risk_score").record(f64::from(assessment.score));
    metrics::histogram!("ums_sign_in_risk_seconds").record(started.elapsed().as_secs_f64());
    Ok(SignInRisk { assessment, place })
}

/// What an account's records say about it, for the risk check.
#[derive(Debug, Clone, Default, PartialEq)]
struct History {
    address_known: bool,
    countries: Vec<String>,
    last_place: Option<(Place, Millis)>,
    /// UTC hours of the last 50 sign-ins (empty: the account never signed in).
    hours: Vec<u8>,
    /// Attempts on the account in the last minute.
    recent_attempts: u32,
    device_known: bool,
}

/// How many recent sign-ins the usual-hours habit is learned from.
const HABIT_SIGN_INS: i64 = 50;
/// The window of the rapid-attempts signal.
const RAPID_WINDOW_MS: Millis = 60_000;

/// Reads the account's history in one statement: a login waits on this read, so it is one
/// round trip (one row per recent sign-in, each carrying the account-wide facts).
async fn history(
    connection: &mut Connection,
    user_id: i64,
    origin: &Origin,
    fingerprint: &str,
    now: Millis,
) -> Result<History, AppError> {
    type Row = (
        Option<Timestamp>,
        i64,
        Option<String>,
        Option<Json<Place>>,
        Option<Timestamp>,
        i64,
        bool,
    );
    let rows: Vec<Row> = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT recent.created_at, \
           (SELECT COUNT(*) FROM sessions WHERE user_id = $1 AND ip = $2), \
           (SELECT string_agg(country, ',') FROM (SELECT DISTINCT country FROM sessions \
              WHERE user_id = $1 AND country IS NOT NULL) AS countries), \
           (SELECT place FROM sessions WHERE user_id = $1 AND place IS NOT NULL \
              ORDER BY created_at DESC LIMIT 1), \
           (SELECT created_at FROM sessions WHERE user_id = $1 AND place IS NOT NULL \
              ORDER BY created_at DESC LIMIT 1), \
           (SELECT COUNT(*) FROM login_attempts WHERE user_id = $1 AND attempted_at > $3), \
           EXISTS (SELECT 1 FROM devices WHERE user_id = $1 AND fingerprint = $4) \
         FROM (SELECT 1 AS anchor) AS anchor LEFT JOIN (SELECT created_at FROM sessions \
           WHERE user_id = $1 ORDER BY created_at DESC LIMIT $5) AS recent ON TRUE"
    )
    .bind(user_id)
    .bind(origin.ip.as_deref().and_then(Inet::parse))
    .bind(Timestamp::from(now - RAPID_WINDOW_MS))
    .bind(fingerprint)
    .bind(HABIT_SIGN_INS)
    .fetch_all(db)
    .await)?;
    let Some((_, from_address, countries, last_place, last_place_at, recent, device_known)) =
        rows.first().cloned()
    else {
        return Ok(History::default());
    };
    Ok(History {
        address_known: from_address > 0,
        countries: countries
            .map(|countries| countries.split(',').map(str::to_owned).collect())
            .unwrap_or_default(),
        last_place: last_place
            .zip(last_place_at)
            .map(|(Json(place), at)| (place, at.millis())),
        hours: rows
            .iter()
            .filter_map(|row| row.0)
            .map(|start| (start.millis().rem_euclid(86_400_000) / 3_600_000) as u8)
            .collect(),
        recent_attempts: u32::try_from(recent).unwrap_or(u32::MAX),
        device_known,
    })
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
    let not_me_link = not_me_link(connection, state, user.id, now).await?;
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
                "not_me_link": not_me_link,
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

/// How long a "This wasn't me" link works.
const NOT_ME_LIFETIME: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

/// A "This wasn't me" link for a sign-in notice.
pub async fn not_me_link(
    connection: &mut Connection,
    state: &AppState,
    user_id: i64,
    now: Millis,
) -> Result<String, AppError> {
    let token = crate::auth::links::issue(
        connection,
        crate::auth::links::Link::NotMe,
        user_id,
        None,
        now,
        NOT_ME_LIFETIME,
    )
    .await?;
    Ok(state.outbox.link("not-me", &token))
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotMeRequest {
    /// The `token` of the link in the sign-in notice.
    pub token: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NotMeAnswer {
    pub detail: &'static str,
    pub sessions_ended: u64,
}

/// "This wasn't me": every session of the account ends (the stranger's among them), no sign-in
/// is possible until the password is reset, and a reset link is emailed at once.
#[tracing::instrument(skip_all)]
pub async fn report_not_me(
    state: &AppState,
    request: NotMeRequest,
    origin: &Origin,
) -> Result<NotMeAnswer, AppError> {
    use crate::auth::links::{self, INVALID_LINK, Link};
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let (link_id, user_id, _) =
        links::find_live(&mut transaction, Link::NotMe, &request.token, now)
            .await?
            .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    if !links::spend(&mut transaction, Link::NotMe, link_id, now).await? {
        return Err(AppError::BadRequest(INVALID_LINK.into()));
    }
    let user = crate::users::store::find_by_id(&mut transaction, user_id)
        .await?
        .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    let sessions_ended =
        crate::auth::sessions::revoke_all(&mut transaction, user.id, "not_me", None, now).await?;
    crate::users::store::require_password_reset(&mut transaction, user.id, now).await?;
    crate::users::store::void_emailed_links(&mut transaction, user.id).await?;
    crate::mfa::challenges::remove_for_user(&mut transaction, user.id).await?;
    crate::auth::password_change::send_reset_link(&mut transaction, state, &user, now).await?;
    transaction
        .commit(
            Event::new(AuditAction::NotMeReported, now)
                .actor(Some(user.id))
                .resource("user", user.id)
                .details(json!({"sessions_ended": sessions_ended}))
                .origin(origin),
        )
        .await?;
    Ok(NotMeAnswer {
        detail: "Every session was signed out. Choose a new password with the link just emailed before signing in again.",
        sessions_ended,
    })
}

/// Whether the verdict asks for more than the password: an emailed code, or (for an account
/// with one) the second factor, which answers every verdict short of a refusal.
pub fn wants_verification(action: Action) -> bool {
    matches!(action, Action::VerifyByEmail | Action::SecondFactor)
}
