//! The read replica (PostgreSQL streaming replication). Lag-tolerant reads (lists, audit
//! queries, exports) go to it, but only when it has replayed every commit the primary had
//! made when the read began: a write acknowledged to anyone, by any instance, is seen by the
//! reads that follow it. A replica that is behind gets a moment to catch up (`CATCH_UP`);
//! one still behind, unreachable or not replicating at all is passed over for the primary.
//!
//! A monitor (`watch`) measures the lag every second for `/ready` and the metrics, and keeps
//! reads off a replica it cannot reach, so they do not each wait for a dead server.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;

/// How long a read waits for the replica to replay up to the primary's position before it
/// goes to the primary instead (streaming replication on a LAN replays within milliseconds).
const CATCH_UP: Duration = Duration::from_millis(50);
const CATCH_UP_POLL: Duration = Duration::from_millis(5);

/// How long the replica may take to hand over a connection and answer before a read gives up
/// on it (a server that stopped answering without closing its sockets).
const REPLICA_ANSWER: Duration = Duration::from_millis(500);

const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

/// Primary positions kept to date the replica's: two minutes of one a second.
const SAMPLES: usize = 120;

/// What the monitor last found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ReplicaStatus {
    /// Not measured yet: reads try it (each checks its position anyway).
    Starting,
    /// Replaying; `lag` is how old the newest primary position it has replayed is.
    Replaying {
        lag: Duration,
    },
    /// It answered, but is not in recovery: a standalone server, never a copy of the primary.
    NotReplicating,
    Unreachable,
}

pub struct Replica {
    pool: PgPool,
    status: Mutex<ReplicaStatus>,
}

/// Why a read went to the primary instead (a label of `ums_replica_reads_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PassedOver {
    /// The replica was behind the read's start even after `CATCH_UP`.
    Behind,
    Down,
}

impl Replica {
    pub fn new(pool: PgPool) -> Self {
        Replica {
            pool,
            status: Mutex::new(ReplicaStatus::Starting),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn status(&self) -> ReplicaStatus {
        *self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn set_status(&self, status: ReplicaStatus) {
        *self
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = status;
    }

    /// A replica connection that has replayed everything the primary had written when this
    /// was called; `None` when the read must go to the primary. Either way it is counted.
    pub async fn caught_up(
        &self,
        primary: &PgPool,
    ) -> Option<sqlx::pool::PoolConnection<sqlx::Postgres>> {
        let caught_up = self.try_caught_up(primary).await;
        let label = match &caught_up {
            Ok(_) => "replica",
            Err(PassedOver::Behind) => "primary_replica_behind",
            Err(PassedOver::Down) => "primary_replica_down",
        };
        metrics::counter!("ums_replica_reads_total", "served_by" => label).increment(1);
        caught_up.ok()
    }

    async fn try_caught_up(
        &self,
        primary: &PgPool,
    ) -> Result<sqlx::pool::PoolConnection<sqlx::Postgres>, PassedOver> {
        if matches!(
            self.status(),
            ReplicaStatus::Unreachable | ReplicaStatus::NotReplicating
        ) {
            return Err(PassedOver::Down);
        }
        // The primary's position first: whatever was acknowledged before this read lies before it.
        let target = primary_position(primary)
            .await
            .map_err(|_| PassedOver::Down)?;
        let wait = async {
            let mut connection = self.pool.acquire().await.ok()?;
            let deadline = Instant::now() + CATCH_UP;
            loop {
                let replayed = sqlx::query_scalar::<_, Option<bool>>(
                    "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn",
                )
                .bind(&target)
                .fetch_one(&mut *connection)
                .await
                .ok()?;
                match replayed {
                    Some(true) => return Some(Ok(connection)),
                    // NULL: not in recovery.
                    None => return Some(Err(PassedOver::Down)),
                    Some(false) if Instant::now() >= deadline => {
                        return Some(Err(PassedOver::Behind));
                    }
                    Some(false) => tokio::time::sleep(CATCH_UP_POLL).await,
                }
            }
        };
        match tokio::time::timeout(REPLICA_ANSWER + CATCH_UP, wait).await {
            Ok(Some(answer)) => answer,
            Ok(None) | Err(_) => Err(PassedOver::Down),
        }
    }
}

async fn primary_position(primary: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar::<_, String>("SELECT pg_current_wal_lsn()::text")
        .fetch_one(primary)
        .await
}

/// A WAL position (`16/B374D848`) as a number.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.split_once('/')?;
    if high.len() > 8 || low.len() > 8 {
        return None;
    }
    let high = u64::from_str_radix(high, 16).ok()?;
    let low = u64::from_str_radix(low, 16).ok()?;
    Some((high << 32) | low)
}

/// Primary positions with the time each was read, to date a replica's position.
#[derive(Default)]
pub struct PositionLog {
    samples: VecDeque<(Instant, u64)>,
}

impl PositionLog {
    pub fn record(&mut self, at: Instant, position: u64) {
        if self.samples.len() == SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at, position));
    }

    /// How far behind a replica that has replayed up to `replayed` is at `now`: the age of the
    /// newest primary position it has reached (none reached: older than the log).
    pub fn lag(&self, replayed: u64, now: Instant) -> Duration {
        let reached = self
            .samples
            .iter()
            .rev()
            .find(|(_, position)| *position <= replayed);
        match (reached, self.samples.front()) {
            (Some((at, _)), _) => now.saturating_duration_since(*at),
            (None, Some((oldest, _))) => now.saturating_duration_since(*oldest),
            (None, None) => Duration::ZERO,
        }
    }
}

/// Measures the replica every second until the process ends.
pub async fn watch(replica: std::sync::Arc<Replica>, primary: PgPool) {
    let mut log = PositionLog::default();
    loop {
        if let Some(position) = primary_position(&primary)
            .await
            .ok()
            .and_then(|text| parse_lsn(&text))
        {
            log.record(Instant::now(), position);
        }
        let read = tokio::time::timeout(
            REPLICA_ANSWER,
            sqlx::query_as::<_, (bool, Option<String>)>(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text",
            )
            .fetch_one(replica.pool()),
        )
        .await;
        let status = match read {
            Ok(Ok((true, Some(replayed)))) => match parse_lsn(&replayed) {
                Some(replayed) => ReplicaStatus::Replaying {
                    lag: log.lag(replayed, Instant::now()),
                },
                None => ReplicaStatus::Unreachable,
            },
            Ok(Ok(_)) => ReplicaStatus::NotReplicating,
            Ok(Err(_)) | Err(_) => ReplicaStatus::Unreachable,
        };
        if status != replica.status() {
            match status {
                ReplicaStatus::Replaying { .. } => tracing::info!("the read replica serves"),
                other => tracing::warn!(status = ?other, "the read replica is passed over"),
            }
        }
        let lag = match status {
            ReplicaStatus::Replaying { lag } => lag.as_secs_f64(),
            _ => f64::NAN,
        };
        metrics::gauge!("ums_replica_lag_seconds").set(lag);
        replica.set_status(status);
        tokio::time::sleep(MONITOR_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_as_postgresql_writes_them() {
        assert_eq!(parse_lsn("0/0"), Some(0));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(parse_lsn("0/1"), Some(1));
        for bad in ["", "/", "16", "16/", "/B3", "x/1", "1/123456789"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
    }

    #[test]
    fn lag_is_the_age_of_the_newest_primary_position_replayed() {
        let start = Instant::now();
        let mut log = PositionLog::default();
        for (second, position) in [(0, 100), (1, 200), (2, 300), (3, 300)] {
            log.record(start + Duration::from_secs(second), position);
        }
        let now = start + Duration::from_secs(3);
        // Caught up with the newest: no lag, even though the primary wrote nothing since.
        assert_eq!(log.lag(300, now), Duration::ZERO);
        // Between two positions: as old as the older one it passed.
        assert_eq!(log.lag(250, now), Duration::from_secs(2));
        // Behind everything logged: at least as old as the log.
        assert_eq!(log.lag(50, now), Duration::from_secs(3));
        assert_eq!(PositionLog::default().lag(0, now), Duration::ZERO);
    }

    #[test]
    fn the_log_keeps_two_minutes() {
        let start = Instant::now();
        let mut log = PositionLog::default();
        for second in 0..(SAMPLES as u64 + 10) {
            log.record(start + Duration::from_secs(second), second);
        }
        assert_eq!(log.samples.len(), SAMPLES);
        assert_eq!(log.samples.front().map(|(_, position)| *position), Some(10));
    }
}
