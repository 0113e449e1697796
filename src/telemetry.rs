//! Metrics (Prometheus text at `/metrics`) and logging setup.
//!
//! Counters are bumped where things happen (`metrics::counter!` in the capabilities);
//! gauges that are really database facts (outbox, sessions, pool) are read when scraped.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;
use crate::state::AppState;

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder once; every app in the process shares it.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("http_request_duration_seconds".into()),
                    &LATENCY_BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            metrics::describe_counter!(
                "http_requests_total",
                "HTTP requests by method, route template and status class"
            );
            metrics::describe_histogram!("http_request_duration_seconds", "HTTP request latency");
            metrics::describe_counter!(
                "ums_logins_total",
                "Login attempts by result (success, failure, locked)"
            );
            metrics::describe_counter!(
                "ums_lockouts_total",
                "Accounts (or unknown usernames) locked"
            );
            metrics::describe_counter!(
                "ums_tokens_issued_total",
                "Access and refresh tokens signed"
            );
            metrics::describe_counter!("ums_tokens_refreshed_total", "Successful refreshes");
            metrics::describe_counter!("ums_audit_events_total", "Audit events written");
            metrics::describe_counter!(
                "ums_emails_total",
                "Emails delivered or given up, by result"
            );
            metrics::describe_counter!(
                "ums_db_stranded_transactions_total",
                "SQLite writer connections closed because they came back inside a transaction"
            );
            metrics::describe_histogram!(
                "ums_sign_in_risk_seconds",
                "Time a sign-in's risk evaluation takes (its reads and the rules)"
            );
            Some(handle)
        })
        .as_ref()
}

/// Renders `/metrics`: the recorded series plus gauges read from the database now.
pub async fn render(state: &AppState) -> String {
    prometheus();
    let now = state.now();
    if let Ok(counts) = crate::mail::outbox::counts(state).await {
        for (status, value) in [
            ("queued", counts.queued),
            ("sending", counts.sending),
            ("sent", counts.sent),
            ("failed", counts.failed),
        ] {
            metrics::gauge!("ums_email_outbox", "status" => status).set(value as f64);
        }
    }
    if let Ok(mut connection) = state.store.read().await {
        let sessions: Result<(i64,), _> = crate::with_db!(connection, |db| sqlx::query_as(
            "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > $1",
        )
        .bind(crate::clock::Timestamp::from(now))
        .fetch_one(db)
        .await);
        if let Ok((sessions,)) = sessions {
            metrics::gauge!("ums_active_sessions").set(sessions as f64);
        }
    }
    for (pool, size, idle) in state.store.pool_stats() {
        metrics::gauge!("ums_db_pool_connections", "pool" => pool, "state" => "idle")
            .set(idle as f64);
        metrics::gauge!("ums_db_pool_connections", "pool" => pool, "state" => "in_use")
            .set(size.saturating_sub(idle as u32) as f64);
    }
    let cache = state.store.auth_cache();
    metrics::gauge!("ums_auth_cache_accounts").set(cache.len() as f64);
    metrics::gauge!("ums_auth_cache_serving").set(if cache.is_serving() { 1.0 } else { 0.0 });
    metrics::gauge!("ums_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    prometheus()
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

pub fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
