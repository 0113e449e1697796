//! The security team's view: the security events of the audit trail (risky and refused
//! sign-ins, challenges, failures, locks, blocks, stuffing alerts), a summary per window, and
//! a live stream of the same events. Read from the database, so every instance behind the
//! load balancer serves the same view.

use crate::audit::ChainKey;
use std::collections::HashMap;

use serde::Serialize;

use crate::audit::query::{EventFilter, EventView};
use crate::clock::{Millis, Timestamp};
use crate::error::AppError;
use crate::paging::{ListQuery, Page};
use crate::state::AppState;
use crate::store::{Connection, Inet};

/// The audit actions the dashboard shows.
pub const SECURITY_ACTIONS: [&str; 8] = [
    "auth.login_failed",
    "auth.mfa_challenged",
    "auth.mfa_failed",
    "security.risky_sign_in",
    "security.risky_sign_in_refused",
    "security.account_locked",
    "security.ip_blocked",
    "security.credential_stuffing_detected",
];

fn actions_clause() -> String {
    let names = SECURITY_ACTIONS
        .iter()
        .map(|action| format!("'{action}'"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("action IN ({names})")
}

/// A security event: an audit event of one of `SECURITY_ACTIONS`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SecurityEvent {
    pub id: i64,
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: Timestamp,
    pub action: String,
    pub success: bool,
    pub user_id: Option<i64>,
    pub ip: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<EventView> for SecurityEvent {
    fn from(event: EventView) -> Self {
        SecurityEvent {
            id: event.id,
            occurred_at: event.occurred_at,
            action: event.action,
            success: event.success,
            user_id: event.user_id,
            ip: event.actor_ip,
            details: event.details,
        }
    }
}

pub async fn events(
    connection: &mut Connection,
    chain_key: &ChainKey,
    params: HashMap<String, String>,
) -> Result<Page<SecurityEvent>, AppError> {
    let mut query = ListQuery::new(params);
    let page = query.page();
    let filter = EventFilter::read(&mut query);
    if let Some(action) = &filter.action
        && !SECURITY_ACTIONS.contains(&action.as_str())
    {
        query.problem(
            "action",
            format!("must be one of {}", SECURITY_ACTIONS.join(", ")),
        );
    }
    query.finish()?;
    let mut conditions = filter.conditions(chain_key);
    conditions.push_fixed(&actions_clause());
    let (events, total) =
        crate::audit::query::page_where(connection, chain_key, &conditions, page).await?;
    Ok(Page::new(
        events.into_iter().map(SecurityEvent::from).collect(),
        total,
        page,
    ))
}

/// The security events recorded after `after_seq`, oldest first (the live stream's poll):
/// (the last seq seen, the events).
pub async fn events_after(
    connection: &mut Connection,
    chain_key: &ChainKey,
    after_seq: i64,
) -> Result<(i64, Vec<SecurityEvent>), AppError> {
    let mut conditions = crate::store::Conditions::new();
    conditions.push("seq > ?", crate::store::SqlValue::Int(after_seq));
    conditions.push_fixed(&actions_clause());
    let rows = crate::audit::query::rows_where(connection, chain_key, &conditions, 100).await?;
    let last = rows
        .iter()
        .map(|row| row.event.seq)
        .max()
        .unwrap_or(after_seq);
    Ok((
        last,
        rows.iter()
            .map(|row| SecurityEvent::from(row.view()))
            .collect(),
    ))
}

pub async fn latest_seq(connection: &mut Connection) -> Result<i64, AppError> {
    Ok(crate::with_db!(connection, |db| sqlx::query_scalar(
        "SELECT COALESCE(MAX(seq), 0) FROM audit_logs"
    )
    .fetch_one(db)
    .await)?)
}

#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub sign_ins: i64,
    pub failed_sign_ins: i64,
    pub risky_sign_ins: i64,
    pub refused: i64,
    pub challenges: i64,
    pub lockouts: i64,
    pub ip_blocks: i64,
    pub stuffing_alerts: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IpCount {
    pub ip: String,
    pub failures: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CountryCount {
    pub country: String,
    pub attempts: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AccountCount {
    pub username: String,
    pub failures: i64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub window_seconds: i64,
    #[schema(value_type = String, format = DateTime)]
    pub from: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub to: Timestamp,
    pub counts: Counts,
    pub top_ips: Vec<IpCount>,
    pub countries: Vec<CountryCount>,
    pub targeted_accounts: Vec<AccountCount>,
}

/// Failed sign-ins in each of the `hours` hours up to `now`, oldest first (the dashboard's
/// chart). Counted here rather than in SQL, which buckets times differently on each database;
/// a flood is capped at half a million rows read.
pub async fn failures_by_hour(
    connection: &mut Connection,
    now: Millis,
    hours: usize,
) -> Result<Vec<i64>, AppError> {
    const HOUR: Millis = 3_600_000;
    let from = now - hours as Millis * HOUR;
    let times: Vec<Timestamp> = crate::with_db!(connection, |db| sqlx::query_scalar(
        "SELECT attempted_at FROM login_attempts WHERE attempted_at > $1 AND NOT success \
         ORDER BY attempted_at DESC LIMIT 500000"
    )
    .bind(Timestamp::from(from))
    .fetch_all(db)
    .await)?;
    let mut buckets = vec![0; hours];
    for time in times {
        let index = ((time.millis() - from - 1).max(0) / HOUR) as usize;
        if let Some(bucket) = buckets.get_mut(index) {
            *bucket += 1;
        }
    }
    Ok(buckets)
}

/// The window of a summary: `window=1h|24h|7d…` (default a day, at most 90 days).
pub fn parse_window(params: &HashMap<String, String>) -> Result<Millis, AppError> {
    match params.get("window") {
        None => Ok(86_400_000),
        Some(value) => crate::config::parse_duration(value)
            .map(|window| window.as_millis() as Millis)
            .filter(|window| *window > 0 && *window <= 90 * 86_400_000)
            .ok_or_else(|| {
                AppError::field(
                    "window",
                    "must be a duration like 1h, 24h or 7d, at most 90d",
                )
            }),
    }
}

pub async fn summary(state: &AppState, window: Millis) -> Result<Summary, AppError> {
    let now = state.now();
    let from = Timestamp::from(now - window);
    let mut connection = state.store.read().await?;
    let (sign_ins, failed_sign_ins): (i64, i64) = crate::with_db!(connection, |db| {
        sqlx::query_as(
            "SELECT COALESCE(SUM(CASE WHEN success THEN 1 ELSE 0 END), 0), \
             COALESCE(SUM(CASE WHEN success THEN 0 ELSE 1 END), 0) \
             FROM login_attempts WHERE attempted_at >= $1",
        )
        .bind(from)
        .fetch_one(db)
        .await
    })?;
    let by_action: Vec<(String, i64)> = crate::with_db!(connection, |db| {
        sqlx::query_as(&format!(
            "SELECT action, COUNT(*) FROM audit_logs WHERE occurred_at >= $1 AND {} \
             GROUP BY action",
            actions_clause()
        ))
        .bind(from)
        .fetch_all(db)
        .await
    })?;
    let count = |name: &str| {
        by_action
            .iter()
            .find(|(action, _)| action == name)
            .map_or(0, |(_, count)| *count)
    };
    let counts = Counts {
        sign_ins,
        failed_sign_ins,
        risky_sign_ins: count("security.risky_sign_in"),
        refused: count("security.risky_sign_in_refused"),
        challenges: count("auth.mfa_challenged"),
        lockouts: count("security.account_locked"),
        ip_blocks: count("security.ip_blocked"),
        stuffing_alerts: count("security.credential_stuffing_detected"),
    };
    let top_ips: Vec<(Inet, i64)> = crate::with_db!(connection, |db| {
        sqlx::query_as(
            "SELECT ip, COUNT(*) FROM login_attempts WHERE attempted_at >= $1 AND NOT success \
             AND ip IS NOT NULL GROUP BY ip ORDER BY COUNT(*) DESC, ip LIMIT 10",
        )
        .bind(from)
        .fetch_all(db)
        .await
    })?;
    let countries: Vec<(String, i64)> = crate::with_db!(connection, |db| {
        sqlx::query_as(
            "SELECT country, COUNT(*) FROM login_attempts WHERE attempted_at >= $1 \
             AND country IS NOT NULL GROUP BY country ORDER BY COUNT(*) DESC, country LIMIT 10",
        )
        .bind(from)
        .fetch_all(db)
        .await
    })?;
    let accounts: Vec<(String, i64)> = crate::with_db!(connection, |db| {
        sqlx::query_as(
            "SELECT CAST(username AS TEXT), COUNT(*) FROM login_attempts \
             WHERE attempted_at >= $1 AND NOT success \
             GROUP BY CAST(username AS TEXT) ORDER BY COUNT(*) DESC, CAST(username AS TEXT) LIMIT 10",
        )
        .bind(from)
        .fetch_all(db)
        .await
    })?;
    Ok(Summary {
        window_seconds: window / 1000,
        from,
        to: Timestamp::from(now),
        counts,
        top_ips: top_ips
            .into_iter()
            .map(|(ip, failures)| IpCount {
                ip: ip.to_string(),
                failures,
            })
            .collect(),
        countries: countries
            .into_iter()
            .map(|(country, attempts)| CountryCount { country, attempts })
            .collect(),
        targeted_accounts: accounts
            .into_iter()
            .map(|(username, failures)| AccountCount { username, failures })
            .collect(),
    })
}
