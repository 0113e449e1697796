//! The audit trail: one way to record an event, used by every capability.
//!
//! An event of a state change is written with the change's own transaction, so neither
//! exists without the other. Events form a hash chain: each stores SHA-256 over the previous
//! event's hash and its own canonical form. The chain head is one row (`audit_chain`) that
//! every writer updates first, which orders concurrent writers (a row lock on PostgreSQL, the
//! single writer connection on SQLite) so the chain never forks.

pub mod archive;
pub mod batch;
pub mod export;
pub mod query;
pub mod routes;
pub mod verify;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::clock::Millis;
use crate::http::AppError;
use crate::store::{Connection, flag};

/// Every action the service records, in one place.
// One variant per dotted action; `as_str` is the stored name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Register,
    Login,
    LoginFailed,
    TokenRefreshed,
    RefreshTokenReused,
    Logout,
    SessionRevoked,
    PasswordResetRequested,
    PasswordReset,
    PasswordChanged,
    EmailChangeRequested,
    EmailChanged,
    EmailVerified,
    AccountLocked,
    UserCreated,
    UsersImported,
    UserUpdated,
    UserDeleted,
    UserUnlocked,
    LabCreated,
    LabUpdated,
    LabDeleted,
    LabActivated,
    LabDeactivated,
    MemberAdded,
    MemberRemoved,
    MemberRoleUpdated,
    LabAccessChecked,
    LabMembersRead,
    IpBlocked,
    CredentialStuffingDetected,
    KeyRotated,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Register => "auth.register",
            Action::Login => "auth.login",
            Action::LoginFailed => "auth.login_failed",
            Action::TokenRefreshed => "auth.token_refreshed",
            Action::RefreshTokenReused => "auth.refresh_token_reused",
            Action::Logout => "auth.logout",
            Action::SessionRevoked => "auth.session_revoked",
            Action::PasswordResetRequested => "auth.password_reset_requested",
            Action::PasswordReset => "auth.password_reset",
            Action::PasswordChanged => "auth.password_changed",
            Action::EmailChangeRequested => "auth.email_change_requested",
            Action::EmailChanged => "auth.email_changed",
            Action::EmailVerified => "auth.email_verified",
            Action::AccountLocked => "security.account_locked",
            Action::UserCreated => "user.created",
            Action::UsersImported => "user.imported",
            Action::UserUpdated => "user.updated",
            Action::UserDeleted => "user.deleted",
            Action::UserUnlocked => "user.unlocked",
            Action::LabCreated => "lab.created",
            Action::LabUpdated => "lab.updated",
            Action::LabDeleted => "lab.deleted",
            Action::LabActivated => "lab.activated",
            Action::LabDeactivated => "lab.deactivated",
            Action::MemberAdded => "lab.member_added",
            Action::MemberRemoved => "lab.member_removed",
            Action::MemberRoleUpdated => "lab.member_role_updated",
            Action::LabAccessChecked => "lab.access_checked",
            Action::LabMembersRead => "lab.members_read",
            Action::IpBlocked => "security.ip_blocked",
            Action::CredentialStuffingDetected => "security.credential_stuffing_detected",
            Action::KeyRotated => "key.rotated",
        }
    }
}

/// Who did it and from where: taken from the request by the HTTP layer.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Event {
    pub action: Action,
    pub success: bool,
    pub occurred_at: Millis,
    pub user_id: Option<i64>,
    pub resource_type: Option<&'static str>,
    pub resource_id: Option<String>,
    pub lab_id: Option<i64>,
    pub details: Value,
    pub origin: Origin,
}

impl Event {
    pub fn new(action: Action, now: Millis) -> Self {
        Event {
            action,
            success: true,
            occurred_at: now,
            user_id: None,
            resource_type: None,
            resource_id: None,
            lab_id: None,
            details: json!({}),
            origin: Origin::default(),
        }
    }

    pub fn failed(mut self) -> Self {
        self.success = false;
        self
    }

    pub fn actor(mut self, user_id: Option<i64>) -> Self {
        self.user_id = user_id;
        self
    }

    pub fn resource(mut self, resource_type: &'static str, id: impl ToString) -> Self {
        self.resource_type = Some(resource_type);
        self.resource_id = Some(id.to_string());
        self
    }

    pub fn lab(mut self, lab_id: i64) -> Self {
        self.lab_id = Some(lab_id);
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }

    pub fn origin(mut self, origin: &Origin) -> Self {
        self.origin = origin.clone();
        self
    }
}

pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Appends an event to the chain inside the caller's transaction.
pub async fn record(connection: &mut Connection, event: Event) -> Result<(), AppError> {
    record_batch(connection, vec![event]).await
}

/// Rows per INSERT statement (14 parameters each, well under both databases' limits).
const ROWS_PER_INSERT: usize = 100;

/// Appends events, in order, with one claim on the chain head: the batched access log writes
/// hundreds of events for the cost of a few statements.
pub async fn record_batch(connection: &mut Connection, events: Vec<Event>) -> Result<(), AppError> {
    if events.is_empty() || cfg!(feature = "bench-unaudited") {
        return Ok(());
    }
    let count = events.len() as i64;
    let head =
        sqlx::query("UPDATE audit_chain SET seq = seq + $1 WHERE id = 1 RETURNING seq, last_hash")
            .bind(count)
            .fetch_one(&mut *connection)
            .await?;
    let last_seq: i64 = head.try_get("seq")?;
    let mut prev_hash: String = head.try_get("last_hash")?;
    let mut rows = Vec::with_capacity(events.len());
    for (offset, event) in events.into_iter().enumerate() {
        let stored = StoredEvent {
            seq: last_seq - count + 1 + offset as i64,
            occurred_at: event.occurred_at,
            action: event.action.as_str().to_string(),
            success: event.success,
            user_id: event.user_id,
            actor_ip: event.origin.ip,
            user_agent: event.origin.user_agent,
            resource_type: event.resource_type.map(String::from),
            resource_id: event.resource_id,
            lab_id: event.lab_id,
            details: event.details.to_string(),
            request_id: event.origin.request_id,
        };
        let hash = stored.chain_hash(&prev_hash);
        rows.push((
            stored,
            std::mem::replace(&mut prev_hash, hash.clone()),
            hash,
        ));
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let placeholders: Vec<String> = (0..chunk.len())
            .map(|row| {
                let first = row * 14;
                let columns: Vec<String> = (1..=14)
                    .map(|column| format!("${}", first + column))
                    .collect();
                format!("({})", columns.join(", "))
            })
            .collect();
        let sql = format!(
            "INSERT INTO audit_logs (seq, occurred_at, action, success, user_id, actor_ip, user_agent, \
             resource_type, resource_id, lab_id, details, request_id, prev_hash, hash) VALUES {}",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for (stored, prev, hash) in chunk {
            query = query
                .bind(stored.seq)
                .bind(stored.occurred_at)
                .bind(&stored.action)
                .bind(flag(stored.success))
                .bind(stored.user_id)
                .bind(&stored.actor_ip)
                .bind(&stored.user_agent)
                .bind(&stored.resource_type)
                .bind(&stored.resource_id)
                .bind(stored.lab_id)
                .bind(&stored.details)
                .bind(&stored.request_id)
                .bind(prev)
                .bind(hash);
        }
        query.execute(&mut *connection).await?;
    }
    sqlx::query("UPDATE audit_chain SET last_hash = $1 WHERE id = 1")
        .bind(&prev_hash)
        .execute(&mut *connection)
        .await?;
    // Counted when written; a rolled-back transaction over-counts, which a counter tolerates.
    metrics::counter!("ums_audit_events_total").increment(count as u64);
    Ok(())
}

/// An event as stored: the fields the chain hash covers.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub seq: i64,
    pub occurred_at: Millis,
    pub action: String,
    pub success: bool,
    pub user_id: Option<i64>,
    pub actor_ip: Option<String>,
    pub user_agent: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub lab_id: Option<i64>,
    pub details: String,
    pub request_id: Option<String>,
}

impl StoredEvent {
    /// SHA-256 over the previous hash and a canonical JSON array of the fields, in a fixed
    /// order (an array, so no key ordering question arises).
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        let canonical = json!([
            self.seq,
            self.occurred_at,
            self.action,
            self.success,
            self.user_id,
            self.actor_ip,
            self.user_agent,
            self.resource_type,
            self.resource_id,
            self.lab_id,
            self.details,
            self.request_id,
        ]);
        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        hasher.update(canonical.to_string().as_bytes());
        hex::encode(hasher.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> StoredEvent {
        StoredEvent {
            seq: 1,
            occurred_at: 1_700_000_000_000,
            action: "auth.login".into(),
            success: true,
            user_id: Some(7),
            actor_ip: Some("10.0.0.1".into()),
            user_agent: None,
            resource_type: Some("session".into()),
            resource_id: Some("abc".into()),
            lab_id: None,
            details: "{}".into(),
            request_id: None,
        }
    }

    #[test]
    fn the_hash_covers_every_field_and_the_previous_hash() {
        let original = event().chain_hash(GENESIS_HASH);
        assert_eq!(original, event().chain_hash(GENESIS_HASH));
        let mut edited = event();
        edited.details = r#"{"x":1}"#.into();
        assert_ne!(edited.chain_hash(GENESIS_HASH), original);
        let mut moved = event();
        moved.seq = 2;
        assert_ne!(moved.chain_hash(GENESIS_HASH), original);
        assert_ne!(event().chain_hash(&original), original);
    }
}
