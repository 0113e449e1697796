//! What every request can reach: configuration, the store, keys, the hasher and the clock.

use std::sync::Arc;

use crate::audit::batch::AccessLog;
use crate::auth::password::PasswordHasherConfig;
use crate::auth::tokens::Keys;
use crate::clock::{Clock, Millis};
use crate::config::Config;
use crate::error::AppError;
use crate::mail::Outbox;
use crate::security::lockout::LockoutPolicy;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub keys: Keys,
    pub hasher: PasswordHasherConfig,
    pub clock: Clock,
    pub outbox: Outbox,
    pub access_log: AccessLog,
    pub limiter: std::sync::Arc<crate::security::limits::Limiter>,
    pub hash_pool: crate::auth::hash_pool::HashPool,
    pub verify_floor: Arc<crate::auth::password::VerifyFloor>,
    /// The WebAuthn relying party (passkeys).
    pub webauthn: Arc<webauthn_rs::Webauthn>,
    /// Where addresses are (`UMS_GEOIP_DB`; empty without one).
    pub geoip: crate::security::geoip::GeoIp,
    /// The IP denylists (`UMS_IP_DENYLIST`).
    pub denylist: crate::security::reputation::Denylist,
    /// Turns true when the server begins to stop: long-lived answers (the security stream)
    /// end, so they do not hold the shutdown up.
    pub stopping: Arc<tokio::sync::watch::Sender<bool>>,
}

impl AppState {
    pub fn now(&self) -> Millis {
        self.clock.now()
    }

    pub fn lockout_policy(&self) -> LockoutPolicy {
        LockoutPolicy {
            threshold: i64::from(self.config.lockout_threshold),
            duration: self.config.lockout_duration.as_millis() as i64,
        }
    }

    /// Runs a password hash or verification on the hashing threads (one per core), off
    /// the async workers.
    pub async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PasswordHasherConfig) -> T + Send + 'static,
    ) -> Result<T, AppError> {
        self.hash_pool.run(work).await.map_err(|error| match error {
            crate::auth::hash_pool::HashPoolError::Full => AppError::Unavailable,
            stopped => AppError::Internal(stopped.into()),
        })
    }
}
