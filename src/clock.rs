//! Time is passed in, never read deep inside the rules, so expiry and lockout are
//! tested by moving a clock rather than by sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Milliseconds since the Unix epoch: the one time unit the store and the rules use.
pub type Millis = i64;

/// A stored instant, to the millisecond: `timestamptz` on PostgreSQL and INTEGER
/// milliseconds on SQLite (`store/types.rs`); RFC 3339 in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(Millis);

impl Timestamp {
    pub const fn from_millis(millis: Millis) -> Self {
        Timestamp(millis)
    }

    pub const fn millis(self) -> Millis {
        self.0
    }
}

impl From<Millis> for Timestamp {
    fn from(millis: Millis) -> Self {
        Timestamp(millis)
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&to_rfc3339(self.0))
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&to_rfc3339(self.0))
    }
}

#[derive(Clone)]
pub enum Clock {
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A clock that stands still until moved, starting at `start`.
    pub fn manual_at(start: Millis) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(start)))
    }

    pub fn now(&self) -> Millis {
        match self {
            Clock::System => system_millis(),
            Clock::Manual(now) => now.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward; the system clock cannot be moved.
    pub fn advance(&self, by: std::time::Duration) {
        if let Clock::Manual(now) = self {
            now.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
        }
    }
}

fn system_millis() -> Millis {
    chrono::Utc::now().timestamp_millis()
}

/// RFC 3339 UTC with milliseconds, the contract's timestamp format.
pub fn to_rfc3339(millis: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 time (or Unix milliseconds), as given to a `from`/`to` filter.
pub fn parse_time(value: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|time| time.timestamp_millis())
        .ok()
        .or_else(|| value.parse::<i64>().ok())
}

/// Serialises a `Millis` field as an RFC 3339 string (`#[serde(serialize_with = ...)]`).
pub fn serialize_time<S: serde::Serializer>(
    millis: &Millis,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&to_rfc3339(*millis))
}

pub fn serialize_optional_time<S: serde::Serializer>(
    millis: &Option<Millis>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match millis {
        Some(millis) => serializer.serialize_str(&to_rfc3339(*millis)),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_milliseconds_in_utc() {
        assert_eq!(to_rfc3339(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let clock = Clock::manual_at(1_700_000_000_000);
        clock.advance(std::time::Duration::from_secs(60));
        assert_eq!(clock.now(), 1_700_000_060_000);
    }
}
