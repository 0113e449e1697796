//! A person's data, exported (GDPR Art. 15 and 20): everything UMS holds about them, as one
//! JSON document or as a zip of CSV files, one per kind of record.
//!
//! Each kind of record is a `Section`: named columns and rows of JSON values, so the JSON
//! document and the CSV files are two renderings of the same reads. Secrets never appear: a
//! factor is listed by its kind, name and dates, never by its secret, code hashes or keys.
//! The audit events about the person, the one part that grows without bound, are streamed
//! from the database in chain order.

use crate::audit::ChainKey;
use serde::Serialize;
use serde_json::{Map, Value, json};
use sqlx::types::Json;

use crate::audit::export::Exporter;
use crate::audit::query::{self, ChunkSink, EventRow};
use crate::clock::{Millis, Timestamp};
use crate::error::AppError;
use crate::store::{CaseInsensitive, Conditions, Connection, Inet, StoreError};
use crate::users::User;

/// The export's format, named in the document so a reader can tell its version.
pub const FORMAT: &str = "ums-personal-data/1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Zip,
}

impl Format {
    pub fn parse(value: Option<&str>) -> Result<Self, AppError> {
        match value {
            None | Some("json") => Ok(Format::Json),
            Some("zip") => Ok(Format::Zip),
            Some(_) => Err(AppError::field("format", "must be json or zip")),
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Zip => "application/zip",
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Zip => "zip",
        }
    }
}

/// One kind of record: its name (the JSON key, the CSV file's name) and its rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Section {
    pub name: &'static str,
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

impl Section {
    /// A section from serialisable records: their fields are the columns, in order.
    fn of<T: Serialize>(name: &'static str, records: &[T]) -> Result<Self, AppError> {
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        for record in records {
            let Value::Object(fields) =
                serde_json::to_value(record).map_err(anyhow::Error::from)?
            else {
                continue;
            };
            if columns.is_empty() {
                columns = fields.keys().cloned().collect();
            }
            rows.push(fields.into_iter().map(|(_, value)| value).collect());
        }
        Ok(Section {
            name,
            columns,
            rows,
        })
    }

    /// The rows as JSON objects.
    fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|row| {
                    Value::Object(
                        self.columns
                            .iter()
                            .cloned()
                            .zip(row.iter().cloned())
                            .collect::<Map<_, _>>(),
                    )
                })
                .collect(),
        )
    }

    /// The rows as CSV, with a header; text as is, anything else as JSON.
    fn to_csv(&self) -> Vec<u8> {
        let cell = |value: &Value| match value {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let mut bytes = crate::audit::export::csv_line(&self.columns);
        for row in &self.rows {
            bytes.extend(crate::audit::export::csv_line(
                &row.iter().map(cell).collect::<Vec<_>>(),
            ));
        }
        bytes
    }
}

#[derive(Serialize, sqlx::FromRow)]
struct Membership {
    lab_id: i64,
    lab_code: String,
    lab_name: String,
    role: String,
    joined_at: Timestamp,
}

#[derive(Serialize, sqlx::FromRow)]
struct Session {
    id: String,
    ip: Option<Inet>,
    user_agent: Option<String>,
    country: Option<String>,
    amr: String,
    created_at: Timestamp,
    last_used_at: Timestamp,
    expires_at: Timestamp,
    revoked_at: Option<Timestamp>,
}

#[derive(Serialize, sqlx::FromRow)]
struct Device {
    id: i64,
    browser: String,
    os: String,
    first_seen_at: Timestamp,
    last_seen_at: Timestamp,
    last_ip: Option<Inet>,
    last_place: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct LoginAttempt {
    attempted_at: Timestamp,
    username: String,
    ip: Option<Inet>,
    user_agent: Option<String>,
    success: bool,
    risk_score: Option<i32>,
    risk_signals: Option<Json<Value>>,
    country: Option<String>,
}

#[derive(Serialize, sqlx::FromRow)]
struct SecondFactor {
    kind: String,
    name: Option<String>,
    created_at: Timestamp,
    confirmed_or_used_at: Option<Timestamp>,
}

#[derive(Serialize, sqlx::FromRow)]
struct ConsentGiven {
    document: String,
    version: String,
    accepted_at: Timestamp,
    ip: Option<Inet>,
}

#[derive(Serialize, sqlx::FromRow)]
struct Invitation {
    lab_id: i64,
    role: String,
    status: String,
    created_at: Timestamp,
    answered_at: Option<Timestamp>,
}

/// Reads every section but the audit events, in one read transaction's worth of queries.
pub async fn sections(
    connection: &mut Connection,
    user: &User,
    now: Millis,
) -> Result<Vec<Section>, AppError> {
    let id = user.id;
    let profile = Section::of("profile", &[user.view(now)])?;
    let memberships: Vec<Membership> = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT labs.id AS lab_id, CAST(labs.code AS TEXT) AS lab_code, labs.name AS lab_name, \
         lab_memberships.role, lab_memberships.created_at AS joined_at FROM lab_memberships \
         JOIN labs ON labs.id = lab_memberships.lab_id WHERE lab_memberships.user_id = $1 \
         ORDER BY labs.id"
    )
    .bind(id)
    .fetch_all(db)
    .await)
    .map_err(StoreError::from)?;
    let sessions: Vec<Session> = crate::with_db!(connection, |db| {
        sqlx::query_as(
        "SELECT id, ip, user_agent, country, amr, created_at, last_used_at, expires_at, revoked_at \
         FROM sessions WHERE user_id = $1 ORDER BY created_at, id"
    )
    .bind(id)
    .fetch_all(db)
    .await
    })
    .map_err(StoreError::from)?;
    let devices: Vec<Device> = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT id, browser, os, first_seen_at, last_seen_at, last_ip, last_place FROM devices \
         WHERE user_id = $1 ORDER BY id"
    )
    .bind(id)
    .fetch_all(db)
    .await)
    .map_err(StoreError::from)?;
    // Attempts before an account was named by id carry only the name typed.
    let attempts: Vec<LoginAttempt> = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT attempted_at, CAST(username AS TEXT) AS username, ip, user_agent, success, \
         risk_score, risk_signals, country FROM login_attempts \
         WHERE user_id = $1 OR (user_id IS NULL AND (username = $2 OR username = $3)) \
         ORDER BY attempted_at, id"
    )
    .bind(id)
    .bind(CaseInsensitive(&user.username))
    .bind(CaseInsensitive(&user.email))
    .fetch_all(db)
    .await)
    .map_err(StoreError::from)?;
    let factors: Vec<SecondFactor> = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT 'totp' AS kind, CAST(NULL AS TEXT) AS name, created_at, \
           confirmed_at AS confirmed_or_used_at FROM totp_factors WHERE user_id = $1 \
         UNION ALL SELECT 'recovery_code', CAST(NULL AS TEXT), created_at, used_at \
           FROM recovery_codes WHERE user_id = $1 \
         UNION ALL SELECT 'passkey', name, created_at, last_used_at FROM passkeys WHERE user_id = $1 \
         ORDER BY 1, 3"
    )
    .bind(id)
    .fetch_all(db)
    .await)
    .map_err(StoreError::from)?;
    let consents: Vec<ConsentGiven> = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT document, version, accepted_at, ip FROM consents WHERE user_id = $1 \
         ORDER BY accepted_at, id"
    )
    .bind(id)
    .fetch_all(db)
    .await)
    .map_err(StoreError::from)?;
    let invitations: Vec<Invitation> = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT lab_id, role, status, created_at, answered_at FROM lab_invitations \
         WHERE email = $1 ORDER BY created_at, id"
    )
    .bind(user.email.to_lowercase())
    .fetch_all(db)
    .await)
    .map_err(StoreError::from)?;
    Ok(vec![
        profile,
        Section::of("memberships", &memberships)?,
        Section::of("sessions", &sessions)?,
        Section::of("devices", &devices)?,
        Section::of("login_attempts", &attempts)?,
        Section::of("second_factors", &factors)?,
        Section::of("consents", &consents)?,
        Section::of("invitations", &invitations)?,
    ])
}

/// The audit events about the person: what they did (but not what it said about another
/// account), and what others did to their account or memberships. Events with no actor
/// (a stranger's sign-in failing under a name) are left out.
fn events_about(user_id: i64) -> Conditions {
    let mut conditions = Conditions::new();
    // An integer formatted into the clause: nothing of the request's text reaches the SQL.
    conditions.push_fixed(&format!(
        "((user_id = {user_id} AND (resource_type IS NULL OR resource_type <> 'user' \
           OR resource_id = '{user_id}')) \
         OR (user_id IS NOT NULL AND resource_type = 'user' AND resource_id = '{user_id}') \
         OR (user_id IS NOT NULL AND resource_type = 'membership' AND resource_id LIKE '%:{user_id}'))"
    ));
    conditions
}

/// Another person's address and browser, in an event about this one, are theirs: left out.
fn only_the_persons(user_id: i64) -> impl Fn(EventRow) -> EventRow + Send {
    move |mut row| {
        if row.event.user_id != Some(user_id) {
            row.event.actor_ip = None;
            row.event.user_agent = None;
        }
        row
    }
}

/// Writes the JSON document into `sink`: the sections, then the audit events streamed.
pub async fn write_json(
    connection: &mut Connection,
    chain_key: &ChainKey,
    user_id: i64,
    sections: &[Section],
    exported_at: Millis,
    sink: &mut (impl ChunkSink + Send),
) -> anyhow::Result<()> {
    let mut head = serde_json::to_vec(&json!({
        "format": FORMAT,
        "exported_at": crate::clock::to_rfc3339(exported_at),
        "user_id": user_id,
    }))?;
    head.pop(); // the closing brace: the sections and events follow
    for section in sections {
        head.extend(format!(",\n\"{}\":", section.name).into_bytes());
        head.extend(serde_json::to_vec(&section.to_json())?);
    }
    head.extend(b",\n\"audit_events\":[\n");
    sink.write(head).await?;
    let mut events = JsonArray {
        inner: &mut *sink,
        first: true,
    };
    query::export_where(
        connection,
        chain_key,
        &events_about(user_id),
        Exporter::Json,
        &mut events,
        only_the_persons(user_id),
    )
    .await?;
    sink.write(b"\n]}\n".to_vec()).await
}

/// Turns the audit exporter's JSON lines into the elements of a JSON array.
struct JsonArray<'a, S> {
    inner: &'a mut S,
    first: bool,
}

impl<S: ChunkSink + Send> ChunkSink for JsonArray<'_, S> {
    async fn write(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        let mut out = Vec::with_capacity(bytes.len() + 64);
        for line in bytes
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
        {
            if !std::mem::take(&mut self.first) {
                out.extend(b",\n");
            }
            out.extend(line);
        }
        self.inner.write(out).await
    }
}

/// The zip of CSV files: one per section, `audit_events.csv`, and a README naming the format.
/// Built in memory: a zip's directory comes last, and one person's records are small beside
/// a whole trail's (whose exports stream).
pub async fn write_zip(
    connection: &mut Connection,
    chain_key: &ChainKey,
    user_id: i64,
    sections: Vec<Section>,
    exported_at: Millis,
) -> anyhow::Result<Vec<u8>> {
    let mut events = Vec::new();
    let exporter = Exporter::new(
        crate::audit::export::ExportFormat::Csv,
        "events about the person",
        exported_at,
    );
    query::export_where(
        connection,
        chain_key,
        &events_about(user_id),
        exporter,
        &mut events,
        only_the_persons(user_id),
    )
    .await?;
    let readme = format!(
        "{FORMAT}\nExported at {} for user {user_id}.\nOne CSV file per kind of record; \
         second factors are listed without their secrets.\n",
        crate::clock::to_rfc3339(exported_at)
    );
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("README.txt", options)?;
        zip.write_all(readme.as_bytes())?;
        for section in &sections {
            zip.start_file(format!("{}.csv", section.name), options)?;
            zip.write_all(&section.to_csv())?;
        }
        zip.start_file("audit_events.csv", options)?;
        zip.write_all(&events)?;
        Ok(zip.finish()?.into_inner())
    })
    .await?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Row {
        name: &'static str,
        count: i64,
        note: Option<&'static str>,
    }

    #[test]
    fn a_section_renders_the_same_rows_as_json_and_csv() {
        let section = Section::of(
            "things",
            &[
                Row {
                    name: "a, b",
                    count: 2,
                    note: None,
                },
                Row {
                    name: "=cmd",
                    count: 3,
                    note: Some("x"),
                },
            ],
        )
        .unwrap();
        // Columns in the records' key order (serde_json's maps are sorted).
        assert_eq!(section.columns, ["count", "name", "note"]);
        assert_eq!(
            section.to_json(),
            json!([{"name": "a, b", "count": 2, "note": null}, {"name": "=cmd", "count": 3, "note": "x"}])
        );
        let csv = String::from_utf8(section.to_csv()).unwrap();
        assert_eq!(csv, "count,name,note\r\n2,\"a, b\",\r\n3,'=cmd,x\r\n");
    }

    #[test]
    fn formats_are_json_by_default_and_nothing_else_is_accepted() {
        assert_eq!(Format::parse(None).unwrap(), Format::Json);
        assert_eq!(Format::parse(Some("zip")).unwrap(), Format::Zip);
        assert!(Format::parse(Some("pdf")).is_err());
    }
}
