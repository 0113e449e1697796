//! What every request can reach: configuration, the store, keys, the hasher and the clock.

use std::sync::Arc;

use crate::audit::batch::AccessLog;
use crate::auth::password::PasswordHasherConfig;
use crate::auth::tokens::Keys;
use crate::clock::{Clock, Millis};
use crate::config::Config;
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
    pub hash_permits: std::sync::Arc<tokio::sync::Semaphore>,
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

    /// Runs a password hash or verification on the blocking pool, off the async workers,
    /// at most one per core at a time: more would only queue in the CPU, and each running
    /// hash holds its 19 MiB (which the allocator of each extra thread would keep).
    pub async fn hashing<T: Send + 'static>(
        &self,
        work: impl FnOnce(&PasswordHasherConfig) -> T + Send + 'static,
    ) -> anyhow::Result<T> {
        let _permit = self.hash_permits.acquire().await?;
        let hasher = self.hasher.clone();
        Ok(tokio::task::spawn_blocking(move || work(&hasher)).await?)
    }
}
