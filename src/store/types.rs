//! How the domain's values sit in each database, in that database's own types.
//!
//! | value | PostgreSQL | SQLite |
//! |---|---|---|
//! | `Timestamp` | `timestamptz` | INTEGER Unix milliseconds |
//! | `bool` | `boolean` | INTEGER 0/1 (CHECKed) |
//! | `Json<_>` (audit details) | `jsonb` | TEXT (CHECKed `json_valid`) |
//! | `Inet` | `inet` | TEXT |
//! | `CaseInsensitive` | `citext` | TEXT (the column is `COLLATE NOCASE`) |
//!
//! `bool`, `i64`, `String` and `Json` come with sqlx for both; the three types here are
//! written once for each driver, by delegating to what the driver already does.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::{PgTypeInfo, PgValueRef};
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};
use sqlx::{Database, Decode, Encode, Postgres, Sqlite, Type};

use crate::clock::Timestamp;

type Buffer<'q, DB> = <DB as Database>::ArgumentBuffer<'q>;

impl Type<Postgres> for Timestamp {
    fn type_info() -> PgTypeInfo {
        <DateTime<Utc> as Type<Postgres>>::type_info()
    }
}

impl<'q> Encode<'q, Postgres> for Timestamp {
    fn encode_by_ref(&self, buf: &mut Buffer<'q, Postgres>) -> Result<IsNull, BoxDynError> {
        let time = DateTime::<Utc>::from_timestamp_millis(self.millis())
            .ok_or("a time outside the range of timestamptz")?;
        <DateTime<Utc> as Encode<Postgres>>::encode(time, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Timestamp {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        let time = <DateTime<Utc> as Decode<Postgres>>::decode(value)?;
        Ok(Timestamp::from_millis(time.timestamp_millis()))
    }
}

impl Type<Sqlite> for Timestamp {
    fn type_info() -> SqliteTypeInfo {
        <i64 as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Timestamp {
    fn encode_by_ref(&self, buf: &mut Buffer<'q, Sqlite>) -> Result<IsNull, BoxDynError> {
        <i64 as Encode<Sqlite>>::encode(self.millis(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Timestamp {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Timestamp::from_millis(<i64 as Decode<Sqlite>>::decode(
            value,
        )?))
    }
}

/// An IP address: `inet` on PostgreSQL, its text on SQLite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inet(pub IpAddr);

impl Inet {
    /// The address in `text`, if it is one.
    pub fn parse(text: &str) -> Option<Inet> {
        text.parse().ok().map(Inet)
    }
}

impl serde::Serialize for Inet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

impl std::fmt::Display for Inet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl Type<Postgres> for Inet {
    fn type_info() -> PgTypeInfo {
        <IpAddr as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <IpAddr as Type<Postgres>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Postgres> for Inet {
    fn encode_by_ref(&self, buf: &mut Buffer<'q, Postgres>) -> Result<IsNull, BoxDynError> {
        <IpAddr as Encode<Postgres>>::encode_by_ref(&self.0, buf)
    }
}

impl<'r> Decode<'r, Postgres> for Inet {
    fn decode(value: PgValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(Inet(<IpAddr as Decode<Postgres>>::decode(value)?))
    }
}

impl Type<Sqlite> for Inet {
    fn type_info() -> SqliteTypeInfo {
        <String as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for Inet {
    fn encode_by_ref(&self, buf: &mut Buffer<'q, Sqlite>) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.0.to_string(), buf)
    }
}

impl<'r> Decode<'r, Sqlite> for Inet {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <&str as Decode<Sqlite>>::decode(value)?;
        Ok(Inet(text.parse()?))
    }
}

/// Text bound for a comparison without regard to case: `citext` on PostgreSQL (a `text`
/// parameter would turn `citext = text` into a case-sensitive text comparison), plain text
/// on SQLite, where the column's `NOCASE` collation decides.
#[derive(Debug, Clone, Copy)]
pub struct CaseInsensitive<'a>(pub &'a str);

impl Type<Postgres> for CaseInsensitive<'_> {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_name("citext")
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as Type<Postgres>>::compatible(ty)
    }
}

impl<'q> Encode<'q, Postgres> for CaseInsensitive<'_> {
    fn encode_by_ref(&self, buf: &mut Buffer<'q, Postgres>) -> Result<IsNull, BoxDynError> {
        <&str as Encode<Postgres>>::encode(self.0, buf)
    }
}

impl Type<Sqlite> for CaseInsensitive<'_> {
    fn type_info() -> SqliteTypeInfo {
        <&str as Type<Sqlite>>::type_info()
    }
}

impl<'q> Encode<'q, Sqlite> for CaseInsensitive<'_> {
    fn encode_by_ref(&self, buf: &mut Buffer<'q, Sqlite>) -> Result<IsNull, BoxDynError> {
        <String as Encode<Sqlite>>::encode(self.0.to_string(), buf)
    }
}
