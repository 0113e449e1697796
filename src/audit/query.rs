//! Reading the trail: filters, pages, and a row stream for exports of any size.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::types::Json;

use crate::audit::{ChainKey, StoredEvent, personal};
use crate::clock::{Millis, Timestamp};
use crate::error::AppError;
use crate::paging::{ListQuery, PageRequest};
use crate::store::{Conditions, Connection, Inet, SqlValue};

pub const EVENT_COLUMNS: &str = "id, seq, occurred_at, action, success, user_id, actor_ip, user_agent, \
    resource_type, resource_id, lab_id, details, request_id, prev_hash, hash, subject_id, sealed";

/// `EVENT_COLUMNS` and the stored keys of the event's two people, for reads that show events.
const SHOWN_COLUMNS: &str = "id, seq, occurred_at, action, success, user_id, actor_ip, user_agent, \
    resource_type, resource_id, lab_id, details, request_id, prev_hash, hash, subject_id, sealed, \
    (SELECT wrapped_key FROM audit_person_keys k WHERE k.user_id = audit_logs.user_id) AS actor_key, \
    (SELECT wrapped_key FROM audit_person_keys k WHERE k.user_id = audit_logs.subject_id) AS subject_key";

/// The contract's audit event.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: i64,
    #[schema(value_type = String, format = DateTime)]
    pub occurred_at: Timestamp,
    pub action: String,
    pub success: bool,
    pub user_id: Option<i64>,
    pub actor_ip: Option<String>,
    pub user_agent: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub lab_id: Option<i64>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub request_id: Option<String>,
    /// Personal fields of the event were erased with their person (crypto-shredding).
    pub erased: bool,
}

/// An event row with its chain fields.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub id: i64,
    pub event: StoredEvent,
    pub prev_hash: String,
    pub hash: String,
    /// The stored keys of the actor and the subject, when the read asked for them.
    pub person_keys: (Option<Vec<u8>>, Option<Vec<u8>>),
    /// Set by `opened` when a sealed field's person is gone.
    pub erased: bool,
}

/// An `audit_logs` row in the database's own types (`EVENT_COLUMNS`).
#[derive(sqlx::FromRow)]
pub struct EventRecord {
    id: i64,
    seq: i64,
    occurred_at: Timestamp,
    action: String,
    success: bool,
    user_id: Option<i64>,
    actor_ip: Option<Inet>,
    user_agent: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    lab_id: Option<i64>,
    details: Json<serde_json::Value>,
    request_id: Option<String>,
    prev_hash: String,
    hash: String,
    subject_id: Option<i64>,
    sealed: Option<Json<serde_json::Value>>,
    #[sqlx(default)]
    actor_key: Option<Vec<u8>>,
    #[sqlx(default)]
    subject_key: Option<Vec<u8>>,
}

impl From<EventRecord> for EventRow {
    /// The details are hashed in their canonical text (keys in order, no spaces), which is
    /// what `record` wrote and what re-serialising the stored value gives back, whether the
    /// database kept the text (SQLite) or its own binary form (`jsonb`).
    fn from(record: EventRecord) -> Self {
        EventRow {
            id: record.id,
            prev_hash: record.prev_hash,
            hash: record.hash,
            event: StoredEvent {
                seq: record.seq,
                occurred_at: record.occurred_at.millis(),
                action: record.action,
                success: record.success,
                user_id: record.user_id,
                actor_ip: record.actor_ip.map(|ip| ip.to_string()),
                user_agent: record.user_agent,
                resource_type: record.resource_type,
                resource_id: record.resource_id,
                lab_id: record.lab_id,
                details: record.details.0.to_string(),
                request_id: record.request_id,
                subject_id: record.subject_id,
                sealed: record.sealed.map(|Json(sealed)| sealed.to_string()),
            },
            person_keys: (record.actor_key, record.subject_key),
            erased: false,
        }
    }
}

impl EventRow {
    /// The row with its sealed fields opened, for showing (never for the chain: its hash
    /// covers the sealed form).
    pub fn opened(mut self, chain_key: &ChainKey) -> EventRow {
        let Some(sealed) = self
            .event
            .sealed
            .as_deref()
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
        else {
            return self;
        };
        let unwrap = |person: Option<i64>, stored: &Option<Vec<u8>>| {
            person
                .zip(stored.as_deref())
                .and_then(|(id, stored)| chain_key.unwrap_person_key(id, stored))
        };
        let actor_key = unwrap(self.event.user_id, &self.person_keys.0);
        let subject_key = unwrap(self.event.subject_id, &self.person_keys.1);
        let stored = personal::Clear {
            actor_ip: self.event.actor_ip.take(),
            user_agent: self.event.user_agent.take(),
            details: serde_json::from_str(&self.event.details).unwrap_or_default(),
        };
        let (clear, erased) = personal::open(
            self.event.seq,
            stored,
            Some(&sealed),
            actor_key,
            subject_key,
        );
        self.event.actor_ip = clear.actor_ip;
        self.event.user_agent = clear.user_agent;
        self.event.details = serde_json::Value::Object(clear.details).to_string();
        self.erased = erased;
        self
    }

    pub fn view(&self) -> EventView {
        let event = &self.event;
        EventView {
            id: self.id,
            occurred_at: Timestamp::from(event.occurred_at),
            action: event.action.clone(),
            success: event.success,
            user_id: event.user_id,
            actor_ip: event.actor_ip.clone(),
            user_agent: event.user_agent.clone(),
            resource_type: event.resource_type.clone(),
            resource_id: event.resource_id.clone(),
            lab_id: event.lab_id,
            details: serde_json::from_str(&event.details).unwrap_or(serde_json::Value::Null),
            request_id: event.request_id.clone(),
            erased: self.erased,
        }
    }
}

/// The filters of `/api/audit-logs`, as SQL conditions.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    pub user_id: Option<i64>,
    pub ip: Option<std::net::IpAddr>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub success: Option<bool>,
    pub from: Option<Millis>,
    pub to: Option<Millis>,
}

impl EventFilter {
    /// Reads the filters from a list query, collecting problems for `finish`.
    pub fn read(query: &mut ListQuery) -> Self {
        EventFilter {
            user_id: query.id("user_id"),
            ip: query.ip("ip"),
            action: query.text("action"),
            resource_type: query.text("resource_type"),
            resource_id: query.text("resource_id"),
            success: query.boolean("success"),
            from: query.time("from"),
            to: query.time("to"),
        }
    }

    pub fn conditions(&self, chain_key: &ChainKey) -> Conditions {
        let mut conditions = Conditions::new();
        if let Some(user_id) = self.user_id {
            conditions.push("user_id = ?", SqlValue::Int(user_id));
        }
        if let Some(ip) = self.ip {
            // In the clear, or sealed and found by its tag.
            conditions.push_values(
                "(actor_ip = ? OR seq IN (SELECT seq FROM audit_ip_index WHERE tag = ?))",
                vec![
                    SqlValue::Address(Inet(ip)),
                    SqlValue::Bytes(chain_key.ip_tag(&ip.to_string())),
                ],
            );
        }
        for (column, value) in [
            ("action", &self.action),
            ("resource_type", &self.resource_type),
            ("resource_id", &self.resource_id),
        ] {
            if let Some(value) = value {
                conditions.push(&format!("{column} = ?"), SqlValue::Text(value.clone()));
            }
        }
        if let Some(success) = self.success {
            conditions.push("success = ?", SqlValue::Flag(success));
        }
        if let Some(from) = self.from {
            conditions.push("occurred_at >= ?", SqlValue::Time(from.into()));
        }
        if let Some(to) = self.to {
            conditions.push("occurred_at <= ?", SqlValue::Time(to.into()));
        }
        conditions
    }

    /// A one-line description for export headers.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(user_id) = self.user_id {
            parts.push(format!("user_id={user_id}"));
        }
        if let Some(ip) = self.ip {
            parts.push(format!("ip={ip}"));
        }
        for (name, value) in [
            ("action", &self.action),
            ("resource_type", &self.resource_type),
            ("resource_id", &self.resource_id),
        ] {
            if let Some(value) = value {
                parts.push(format!("{name}={value}"));
            }
        }
        if let Some(success) = self.success {
            parts.push(format!("success={success}"));
        }
        if let Some(from) = self.from {
            parts.push(format!("from={}", crate::clock::to_rfc3339(from)));
        }
        if let Some(to) = self.to {
            parts.push(format!("to={}", crate::clock::to_rfc3339(to)));
        }
        if parts.is_empty() {
            "all events".into()
        } else {
            parts.join(", ")
        }
    }
}

pub async fn page(
    connection: &mut Connection,
    chain_key: &ChainKey,
    filter: &EventFilter,
    page: PageRequest,
) -> Result<(Vec<EventView>, i64), AppError> {
    page_where(connection, chain_key, &filter.conditions(chain_key), page).await
}

/// The events of `conditions`, oldest first, at most `limit`.
pub async fn rows_where(
    connection: &mut Connection,
    chain_key: &ChainKey,
    conditions: &Conditions,
    limit: i64,
) -> Result<Vec<EventRow>, AppError> {
    let sql = format!(
        "SELECT {SHOWN_COLUMNS} FROM audit_logs{} ORDER BY seq LIMIT {}",
        conditions.where_sql(),
        conditions.next_placeholder(1)
    );
    let rows = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as::<_, EventRecord>(&sql))
        .bind(limit)
        .fetch_all(db)
        .await)?;
    Ok(rows
        .into_iter()
        .map(|row| EventRow::from(row).opened(chain_key))
        .collect())
}

/// A page of the events of `conditions`, newest first, and their number.
pub async fn page_where(
    connection: &mut Connection,
    chain_key: &ChainKey,
    conditions: &Conditions,
    page: PageRequest,
) -> Result<(Vec<EventView>, i64), AppError> {
    let where_sql = conditions.where_sql();
    let (total,): (i64,) = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as(&format!(
            "SELECT COUNT(*) FROM audit_logs{where_sql}"
        )))
        .fetch_one(db)
        .await)?;
    let sql = format!(
        "SELECT {SHOWN_COLUMNS} FROM audit_logs{where_sql} ORDER BY seq DESC LIMIT {} OFFSET {}",
        conditions.next_placeholder(1),
        conditions.next_placeholder(2)
    );
    let rows = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as::<_, EventRecord>(&sql))
        .bind(page.per_page)
        .bind(page.offset())
        .fetch_all(db)
        .await)?;
    let events = rows
        .into_iter()
        .map(|record| EventRow::from(record).opened(chain_key).view())
        .collect();
    Ok((events, total))
}

/// Where an export's bytes go: an HTTP body channel or a file.
pub trait ChunkSink {
    fn write(
        &mut self,
        bytes: Vec<u8>,
    ) -> impl std::future::Future<Output = anyhow::Result<()>> + Send;
}

/// Chunks collected in memory (an export small enough to hold, or one that must be whole
/// before it is sent, as a zip's entry is).
impl ChunkSink for Vec<u8> {
    async fn write(&mut self, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.extend(bytes);
        Ok(())
    }
}

const EXPORT_CHUNK: usize = 64 * 1024;

/// Streams every matching event, in chain order, through `exporter` into `sink` in chunks of
/// about 64 KiB: memory stays bounded whatever the number of events.
pub async fn export(
    connection: &mut Connection,
    chain_key: &ChainKey,
    filter: &EventFilter,
    exporter: crate::audit::export::Exporter,
    sink: &mut impl ChunkSink,
) -> anyhow::Result<u64> {
    let conditions = filter.conditions(chain_key);
    export_where(connection, chain_key, &conditions, exporter, sink, |row| {
        row
    })
    .await
}

/// `export` of the events of `conditions`, each passed through `shape` first.
pub async fn export_where(
    connection: &mut Connection,
    chain_key: &ChainKey,
    conditions: &Conditions,
    mut exporter: crate::audit::export::Exporter,
    sink: &mut impl ChunkSink,
    shape: impl Fn(EventRow) -> EventRow,
) -> anyhow::Result<u64> {
    use futures_util::TryStreamExt;
    let sql = format!(
        "SELECT {SHOWN_COLUMNS} FROM audit_logs{} ORDER BY seq",
        conditions.where_sql()
    );
    let mut rows = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as::<_, EventRecord>(&sql))
        .fetch(db));
    let mut buffer = exporter.begin();
    let mut count = 0;
    while let Some(row) = rows.try_next().await? {
        buffer.extend(exporter.event(&shape(EventRow::from(row).opened(chain_key))));
        count += 1;
        if buffer.len() >= EXPORT_CHUNK {
            sink.write(std::mem::take(&mut buffer)).await?;
        }
    }
    buffer.extend(exporter.finish());
    sink.write(buffer).await?;
    Ok(count)
}

/// A login attempt as the contract shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LoginAttemptView {
    pub id: i64,
    pub username: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub success: bool,
    #[schema(value_type = String, format = DateTime)]
    pub attempted_at: Timestamp,
    /// The sign-in's risk score, when it was weighed.
    pub risk_score: Option<i32>,
    /// The signals that made the score, each with its weight and explanation.
    #[schema(value_type = Option<Vec<Object>>)]
    pub risk_signals: Option<serde_json::Value>,
    /// Where the address is (ISO country code), when GeoIP knows.
    pub country: Option<String>,
}

#[derive(sqlx::FromRow)]
struct LoginAttemptRecord {
    id: i64,
    username: String,
    ip: Option<Inet>,
    user_agent: Option<String>,
    success: bool,
    attempted_at: Timestamp,
    risk_score: Option<i32>,
    risk_signals: Option<Json<serde_json::Value>>,
    country: Option<String>,
}

pub async fn login_attempts(
    connection: &mut Connection,
    params: HashMap<String, String>,
) -> Result<crate::paging::Page<LoginAttemptView>, AppError> {
    let mut query = ListQuery::new(params);
    let page = query.page();
    let mut conditions = Conditions::new();
    if let Some(username) = query.text("username") {
        conditions.push("username = ?", SqlValue::Folded(username));
    }
    if let Some(ip) = query.ip("ip") {
        conditions.push("ip = ?", SqlValue::Address(Inet(ip)));
    }
    if let Some(success) = query.boolean("success") {
        conditions.push("success = ?", SqlValue::Flag(success));
    }
    if let Some(from) = query.time("from") {
        conditions.push("attempted_at >= ?", SqlValue::Time(from.into()));
    }
    if let Some(to) = query.time("to") {
        conditions.push("attempted_at <= ?", SqlValue::Time(to.into()));
    }
    query.finish()?;
    let where_sql = conditions.where_sql();
    let (total,): (i64,) = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as(&format!(
            "SELECT COUNT(*) FROM login_attempts{where_sql}"
        )))
        .fetch_one(db)
        .await)?;
    let sql = format!(
        "SELECT id, CAST(username AS TEXT) AS username, ip, user_agent, success, attempted_at, \
         risk_score, risk_signals, country FROM login_attempts{where_sql} \
         ORDER BY id DESC LIMIT {} OFFSET {}",
        conditions.next_placeholder(1),
        conditions.next_placeholder(2)
    );
    let rows = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as::<_, LoginAttemptRecord>(&sql))
        .bind(page.per_page)
        .bind(page.offset())
        .fetch_all(db)
        .await)?;
    let items = rows
        .into_iter()
        .map(|row| LoginAttemptView {
            id: row.id,
            username: row.username,
            ip: row.ip.map(|ip| ip.to_string()),
            user_agent: row.user_agent,
            success: row.success,
            attempted_at: row.attempted_at,
            risk_score: row.risk_score,
            risk_signals: row.risk_signals.map(|Json(signals)| signals),
            country: row.country,
        })
        .collect();
    Ok(crate::paging::Page::new(items, total, page))
}
