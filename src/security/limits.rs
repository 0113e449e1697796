//! Shared counters for rate limits, IP blocks and the credential-stuffing detector.
//!
//! In memory by default; with `UMS_REDIS_URL` they live in Redis, so instances behind one
//! load balancer enforce one limit together. If Redis fails, each call falls back to the
//! local counters (the service keeps working, limits become per instance), the failure is
//! logged and shown by `/ready`, and Redis is tried again after a pause. A Redis that is down
//! when the service starts is connected in the background as soon as it answers. Account
//! lockout does not depend on this: its counters live in the database with the login
//! attempts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use redis::aio::ConnectionManager;
use secrecy::ExposeSecret;

use crate::clock::Millis;
use crate::config::Config;

const REDIS_TIMEOUT: Duration = Duration::from_millis(250);
const REDIS_RETRY_AFTER: Millis = 5_000;

/// One attempt to connect, bounded in time.
async fn connect_redis(client: &redis::Client) -> Option<ConnectionManager> {
    let settings = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(REDIS_TIMEOUT))
        .set_response_timeout(Some(REDIS_TIMEOUT))
        .set_number_of_retries(1);
    tokio::time::timeout(
        Duration::from_secs(2),
        ConnectionManager::new_with_config(client.clone(), settings),
    )
    .await
    .ok()?
    .ok()
}

/// A fixed-window hit: how many hits the window holds now and when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub count: i64,
    pub window_ends: Millis,
}

#[derive(Default)]
struct Local {
    windows: HashMap<String, (Millis, i64)>,
    blocks: HashMap<String, Millis>,
    failures: VecDeque<(Millis, String)>,
    alerted_until: Millis,
}

pub struct Limiter {
    local: Mutex<Local>,
    /// Whether `UMS_REDIS_URL` is set at all.
    redis_configured: bool,
    /// The connection, once Redis has answered (at start, or later in the background).
    redis: OnceLock<ConnectionManager>,
    prefix: String,
    redis_down_since: AtomicI64,
    redis_healthy: AtomicBool,
}

/// Counts one hit on each key (ARGV holds each key's window); one round trip for them all.
const HIT_SCRIPT: &str = r"
local counts = {}
for index, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  if count == 1 then redis.call('PEXPIRE', key, ARGV[index]) end
  counts[index] = count
end
return counts";

static HIT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(HIT_SCRIPT));
static STUFFING: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(STUFFING_SCRIPT));

const STUFFING_SCRIPT: &str = r"
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1] - ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1] - ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return {redis.call('ZCARD', KEYS[1]), redis.call('ZCARD', KEYS[2])}";

impl Limiter {
    pub async fn connect(config: &Config) -> Arc<Self> {
        let client = match &config.redis_url {
            None => None,
            Some(url) => match redis::Client::open(url.expose_secret()) {
                Ok(client) => Some(client),
                Err(error) => {
                    tracing::warn!(error = %error, "UMS_REDIS_URL is not usable; using local limits");
                    None
                }
            },
        };
        let limiter = Arc::new(Limiter {
            local: Mutex::new(Local::default()),
            redis_configured: config.redis_url.is_some(),
            redis: OnceLock::new(),
            prefix: config.redis_prefix.clone(),
            redis_down_since: AtomicI64::new(0),
            redis_healthy: AtomicBool::new(false),
        });
        let Some(client) = client else {
            return limiter;
        };
        if let Some(manager) = connect_redis(&client).await {
            limiter.connected(manager);
            return limiter;
        }
        tracing::warn!("Redis is unreachable at start; using local limits until it answers");
        // Keep trying in the background, until it answers or the service stops.
        let weak = Arc::downgrade(&limiter);
        tokio::spawn(async move {
            let mut pause = Duration::from_millis(500);
            loop {
                tokio::time::sleep(pause).await;
                let Some(limiter) = weak.upgrade() else {
                    return;
                };
                if let Some(manager) = connect_redis(&client).await {
                    limiter.connected(manager);
                    tracing::info!("Redis answers; limits are shared from now on");
                    return;
                }
                pause = (pause * 2).min(Duration::from_secs(15));
            }
        });
        limiter
    }

    fn connected(&self, manager: ConnectionManager) {
        let _ = self.redis.set(manager);
        self.redis_healthy.store(true, Ordering::Relaxed);
    }

    /// `None` without Redis; otherwise whether the last call reached it.
    pub fn redis_state(&self) -> Option<bool> {
        self.redis_configured
            .then(|| self.redis.get().is_some() && self.redis_healthy.load(Ordering::Relaxed))
    }

    /// The Redis connection, unless it failed a moment ago.
    fn redis(&self, now: Millis) -> Option<ConnectionManager> {
        let manager = self.redis.get()?;
        let down_since = self.redis_down_since.load(Ordering::Relaxed);
        (down_since == 0 || now - down_since > REDIS_RETRY_AFTER).then(|| manager.clone())
    }

    fn redis_result<T>(
        &self,
        result: Result<Result<T, redis::RedisError>, tokio::time::error::Elapsed>,
        now: Millis,
    ) -> Option<T> {
        match result {
            Ok(Ok(value)) => {
                if !self.redis_healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!("Redis answers again; limits are shared");
                }
                self.redis_down_since.store(0, Ordering::Relaxed);
                Some(value)
            }
            failure => {
                if self.redis_healthy.swap(false, Ordering::Relaxed) {
                    let reason = match failure {
                        Ok(Err(error)) => error.to_string(),
                        _ => "timed out".into(),
                    };
                    tracing::warn!(error = %reason, "Redis failed; falling back to local limits");
                }
                self.redis_down_since.store(now.max(1), Ordering::Relaxed);
                None
            }
        }
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one hit on `key` in the current fixed window of `window` milliseconds.
    pub async fn hit(&self, key: &str, window: Millis, now: Millis) -> Hit {
        self.hits(&[(key, window)], now).await[0]
    }

    /// Counts one hit on each `(key, window)`, in one Redis round trip.
    pub async fn hits(&self, keys: &[(&str, Millis)], now: Millis) -> Vec<Hit> {
        let windows: Vec<(Millis, Millis)> = keys
            .iter()
            .map(|(_, window)| {
                let window = (*window).max(1);
                (now - now.rem_euclid(window), window)
            })
            .collect();
        if let Some(mut redis) = self.redis(now) {
            let mut invocation = HIT.prepare_invoke();
            for ((key, _), (start, window)) in keys.iter().zip(&windows) {
                invocation
                    .key(format!("{}:hit:{key}:{start}", self.prefix))
                    .arg(*window);
            }
            let result = tokio::time::timeout(
                REDIS_TIMEOUT,
                invocation.invoke_async::<Vec<i64>>(&mut redis),
            )
            .await;
            if let Some(counts) = self.redis_result(result, now)
                && counts.len() == keys.len()
            {
                return counts
                    .into_iter()
                    .zip(&windows)
                    .map(|(count, (start, window))| Hit {
                        count,
                        window_ends: start + window,
                    })
                    .collect();
            }
        }
        let mut local = self.local();
        if local.windows.len() > 100_000 {
            local.windows.retain(|_, (ends, _)| *ends > now);
        }
        keys.iter()
            .zip(&windows)
            .map(|((key, _), (start, window))| {
                let window_ends = start + window;
                let entry = local
                    .windows
                    .entry((*key).to_string())
                    .or_insert((window_ends, 0));
                if entry.0 != window_ends {
                    *entry = (window_ends, 0);
                }
                entry.1 += 1;
                Hit {
                    count: entry.1,
                    window_ends,
                }
            })
            .collect()
    }

    /// Takes back one hit counted by `hit(key, window, ..)` that ended in `window_ends`
    /// (a no-op once that window is over).
    pub async fn give_back(&self, key: &str, window: Millis, window_ends: Millis, now: Millis) {
        let start = window_ends - window.max(1);
        if let Some(mut redis) = self.redis(now) {
            let command = redis::cmd("DECR")
                .arg(format!("{}:hit:{key}:{start}", self.prefix))
                .to_owned();
            let result =
                tokio::time::timeout(REDIS_TIMEOUT, command.query_async::<i64>(&mut redis)).await;
            if self.redis_result(result, now).is_some() {
                return;
            }
        }
        if let Some(entry) = self.local().windows.get_mut(key)
            && entry.0 == window_ends
            && entry.1 > 0
        {
            entry.1 -= 1;
        }
    }

    pub async fn block(&self, key: &str, until: Millis, now: Millis) {
        if let Some(mut redis) = self.redis(now) {
            let redis_key = format!("{}:block:{key}", self.prefix);
            let command = redis::cmd("SET")
                .arg(redis_key)
                .arg(until)
                .arg("PX")
                .arg((until - now).max(1))
                .to_owned();
            let result =
                tokio::time::timeout(REDIS_TIMEOUT, command.query_async::<()>(&mut redis)).await;
            if self.redis_result(result, now).is_some() {
                return;
            }
        }
        self.local().blocks.insert(key.to_string(), until);
    }

    pub async fn blocked_until(&self, key: &str, now: Millis) -> Option<Millis> {
        if let Some(mut redis) = self.redis(now) {
            let redis_key = format!("{}:block:{key}", self.prefix);
            let command = redis::cmd("GET").arg(redis_key).to_owned();
            let result = tokio::time::timeout(
                REDIS_TIMEOUT,
                command.query_async::<Option<i64>>(&mut redis),
            )
            .await;
            if let Some(until) = self.redis_result(result, now) {
                return until.filter(|until| *until > now);
            }
        }
        let mut local = self.local();
        match local.blocks.get(key) {
            Some(until) if *until > now => Some(*until),
            Some(_) => {
                local.blocks.remove(key);
                None
            }
            None => None,
        }
    }

    /// Records a failed login for the stuffing detector; returns (failures, distinct usernames)
    /// in the sliding window ending now.
    pub async fn record_failure(&self, username: &str, window: Millis, now: Millis) -> (i64, i64) {
        if let Some(mut redis) = self.redis(now) {
            let mut invocation = STUFFING.key(format!("{}:stuffing:failures", self.prefix));
            invocation
                .key(format!("{}:stuffing:usernames", self.prefix))
                .arg(now)
                .arg(window)
                .arg(crate::security::secrets::random_token())
                .arg(username.to_lowercase());
            let result = tokio::time::timeout(
                REDIS_TIMEOUT,
                invocation.invoke_async::<(i64, i64)>(&mut redis),
            )
            .await;
            if let Some(counts) = self.redis_result(result, now) {
                return counts;
            }
        }
        let mut local = self.local();
        local.failures.push_back((now, username.to_lowercase()));
        while local
            .failures
            .front()
            .is_some_and(|(at, _)| *at <= now - window)
        {
            local.failures.pop_front();
        }
        let distinct = local
            .failures
            .iter()
            .map(|(_, name)| name.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        (local.failures.len() as i64, distinct as i64)
    }

    /// True once per window: the caller that gets it raises the alert.
    pub async fn claim_alert(&self, window: Millis, now: Millis) -> bool {
        if let Some(mut redis) = self.redis(now) {
            let command = redis::cmd("SET")
                .arg(format!("{}:stuffing:alerted", self.prefix))
                .arg(now)
                .arg("NX")
                .arg("PX")
                .arg(window)
                .to_owned();
            let result = tokio::time::timeout(
                REDIS_TIMEOUT,
                command.query_async::<Option<String>>(&mut redis),
            )
            .await;
            if let Some(set) = self.redis_result(result, now) {
                return set.is_some();
            }
        }
        let mut local = self.local();
        if local.alerted_until > now {
            return false;
        }
        local.alerted_until = now + window;
        true
    }
}
