//! Defences: lockout, IP blocking, progressive delays, rate limits, credential-stuffing
//! detection, knowing who the client really is, and secrets at rest.

pub mod attempts;
pub mod client_ip;
pub mod dashboard;
pub mod devices;
pub mod geoip;
pub mod limits;
pub mod lockout;
pub mod reputation;
pub mod risk;
pub mod routes;
pub mod sealing;
pub mod secrets;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::audit::{self, Action, Event, Origin};
use crate::clock::Millis;
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::security::limits::{Hit, Limiter};
use crate::state::AppState;

/// The delay before evaluating a login for a username that has `failures` failures in a row:
/// none, then the configured steps (100 ms, 500 ms, 2 s), the last repeating. Bounded, and
/// reset by a success, so an attacker cannot slow a real user down for long.
pub fn login_delay(steps: &[Duration], failures: i64) -> Duration {
    if failures <= 0 || steps.is_empty() {
        return Duration::ZERO;
    }
    let index = usize::try_from(failures - 1)
        .unwrap_or(usize::MAX)
        .min(steps.len() - 1);
    steps[index]
}

/// The key an origin's blocks and counters live under (an IPv6 client's /64).
fn ip_key(origin: &Origin) -> String {
    limit_key_of(origin.ip.as_deref())
}

pub fn limit_key_of(ip: Option<&str>) -> String {
    ip.and_then(|ip| ip.parse().ok())
        .map_or_else(|| "unknown".into(), client_ip::limit_key)
}

/// Refuses a blocked client IP on the credential endpoints.
pub async fn check_ip(state: &AppState, origin: &Origin) -> Result<(), AppError> {
    let now = state.now();
    match state
        .limiter
        .blocked_until(&format!("ipblock:{}", ip_key(origin)), now)
        .await
    {
        Some(until) => {
            metrics::counter!("ums_ip_block_refusals_total").increment(1);
            Err(AppError::TooManyRequests {
                retry_after_seconds: ((until - now).max(0) as u64).div_ceil(1000),
            })
        }
        None => Ok(()),
    }
}

/// Counts a registration or a password-reset request against the client's hourly budget of
/// them: each costs a password hash or an email, so a client cannot turn them into a CPU or
/// mail amplifier. Past the budget, 429 until the hour's window ends.
pub async fn count_account_request(state: &AppState, origin: &Origin) -> Result<(), AppError> {
    let now = state.now();
    let hit = state
        .limiter
        .hit(&format!("account:{}", ip_key(origin)), 3_600_000, now)
        .await;
    if hit.count > i64::from(state.config.account_requests_per_hour) {
        metrics::counter!("ums_rate_limited_total", "scope" => "account_requests").increment(1);
        return Err(AppError::TooManyRequests {
            retry_after_seconds: ((hit.window_ends - now).max(0) as u64).div_ceil(1000),
        });
    }
    Ok(())
}

/// The counter of an IP's failed (and in-flight) credential checks.
fn failure_key(ip: &str) -> String {
    format!("ipfail:{ip}")
}

fn ip_window(state: &AppState) -> Millis {
    state.config.ip_block_duration.as_millis() as Millis
}

/// A login attempt counted against its client IP *before* its password is evaluated, so
/// parallel attempts cannot slip past the threshold (the rule the username lockout follows).
/// A success gives the count back; a failure keeps it; an attempt dropped unsettled (its
/// client went away mid-login) gives it back too, since nothing was learnt from it.
#[must_use]
pub struct IpAttempt {
    ip: String,
    hit: Hit,
    window: Millis,
    begun_at: Millis,
    /// The limiter while the attempt is unsettled.
    unsettled: Option<Arc<Limiter>>,
}

/// Counts a login attempt from the client's IP, or refuses it when the attempts already
/// failed and still in flight reach the threshold.
pub async fn begin_ip_attempt(state: &AppState, origin: &Origin) -> Result<IpAttempt, AppError> {
    let now = state.now();
    let ip = ip_key(origin);
    let key = failure_key(&ip);
    let window = ip_window(state);
    let hit = state.limiter.hit(&key, window, now).await;
    if hit.count > i64::from(state.config.ip_block_threshold) {
        // Refused unevaluated, so it does not count; the attempt in flight at the threshold
        // blocks the IP if it fails, and frees the place if it succeeds.
        state
            .limiter
            .give_back(&key, window, hit.window_ends, now)
            .await;
        metrics::counter!("ums_ip_block_refusals_total").increment(1);
        return Err(AppError::TooManyRequests {
            retry_after_seconds: 1,
        });
    }
    Ok(IpAttempt {
        ip,
        hit,
        window,
        begun_at: now,
        unsettled: Some(state.limiter.clone()),
    })
}

impl IpAttempt {
    pub async fn succeeded(mut self, state: &AppState) {
        if let Some(limiter) = self.unsettled.take() {
            limiter
                .give_back(
                    &failure_key(&self.ip),
                    self.window,
                    self.hit.window_ends,
                    state.now(),
                )
                .await;
        }
    }

    pub async fn failed(mut self, state: &AppState, origin: &Origin) -> Result<(), AppError> {
        self.unsettled = None;
        block_at_threshold(state, origin, &self.ip, self.hit).await
    }
}

impl Drop for IpAttempt {
    fn drop(&mut self) {
        let Some(limiter) = self.unsettled.take() else {
            return;
        };
        let (key, window, ends, now) = (
            failure_key(&self.ip),
            self.window,
            self.hit.window_ends,
            self.begun_at,
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { limiter.give_back(&key, window, ends, now).await });
        }
    }
}

/// Counts a failed credential check from the client's IP (a wrong current password, a
/// forged reset link); at the threshold, blocks the IP.
pub async fn credential_failure(state: &AppState, origin: &Origin) -> Result<(), AppError> {
    let now = state.now();
    let ip = ip_key(origin);
    let hit = state
        .limiter
        .hit(&failure_key(&ip), ip_window(state), now)
        .await;
    block_at_threshold(state, origin, &ip, hit).await
}

/// The failure that reaches the threshold blocks the IP and records the block.
async fn block_at_threshold(
    state: &AppState,
    origin: &Origin,
    ip: &str,
    hit: Hit,
) -> Result<(), AppError> {
    if hit.count != i64::from(state.config.ip_block_threshold) {
        return Ok(());
    }
    let now = state.now();
    let until = now + ip_window(state);
    state
        .limiter
        .block(&format!("ipblock:{ip}"), until, now)
        .await;
    metrics::counter!("ums_ip_blocks_total").increment(1);
    let mut transaction = state.store.begin().await?;
    audit::record(
        &mut transaction,
        state.store.chain_key(),
        Event::new(Action::IpBlocked, now)
            .failed()
            .resource("security", ip)
            .details(json!({"ip": ip, "failures": hit.count, "blocked_until": crate::clock::to_rfc3339(until)}))
            .origin(origin),
    )
    .await?;
    transaction.commit().await?;
    Ok(())
}

/// Feeds a failed login to the stuffing detector: many failures over many usernames in the
/// window raise one alert a window (audit event, metric, email to every active admin).
pub async fn watch_for_stuffing(
    state: &AppState,
    username: &str,
    origin: &Origin,
) -> Result<(), AppError> {
    let now = state.now();
    let config = &state.config;
    let window = config.stuffing_window.as_millis() as Millis;
    let (failures, usernames) = state.limiter.record_failure(username, window, now).await;
    let threshold = i64::from(config.stuffing_threshold);
    if failures < threshold
        || usernames < (threshold / 2).max(2)
        || !state.limiter.claim_alert(window, now).await
    {
        return Ok(());
    }
    metrics::counter!("ums_credential_stuffing_alerts_total").increment(1);
    tracing::warn!(failures, usernames, "credential stuffing suspected");
    let mut transaction = state.store.begin().await?;
    audit::record(
        &mut transaction,
        state.store.chain_key(),
        Event::new(Action::CredentialStuffingDetected, now)
            .failed()
            .resource("security", "login")
            .details(json!({"failures": failures, "usernames": usernames, "window_seconds": window / 1000}))
            .origin(origin),
    )
    .await?;
    let admins = crate::users::store::active_admins(&mut transaction).await?;
    for admin in &admins {
        state
            .outbox
            .enqueue(
                &mut transaction,
                admin,
                &admin.email,
                EmailKind::SecurityAlert,
                json!({"failures": failures, "usernames": usernames, "window_minutes": window / 60_000}),
                now,
            )
            .await?;
    }
    transaction.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_failures_and_stop_growing() {
        let steps = [
            Duration::from_millis(100),
            Duration::from_millis(500),
            Duration::from_secs(2),
        ];
        let delays: Vec<_> = (0..6)
            .map(|failures| login_delay(&steps, failures).as_millis())
            .collect();
        assert_eq!(delays, [0, 100, 500, 2000, 2000, 2000]);
        assert_eq!(login_delay(&[], 3), Duration::ZERO);
    }
}
