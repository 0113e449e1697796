//! The audit trail: one way to record an event, used by every capability.
//!
//! An event of a state change is written with the change's own transaction, so neither
//! exists without the other. Events form a hash chain: each stores SHA-256 over the previous
//! event's hash and its own canonical form. The chain head is one row (`audit_chain`) that
//! every writer updates first, which orders concurrent writers (a row lock on PostgreSQL, the
//! single writer connection on SQLite) so the chain never forks.

pub mod archive;
pub mod batch;
pub mod chain_key;
pub mod checkpoint;
pub mod export;
pub mod personal;
pub mod query;
pub mod routes;
pub mod verify;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::types::Json;

pub use chain_key::ChainKey;

use crate::clock::{Millis, Timestamp};
use crate::error::AppError;
use crate::store::{Connection, Inet};

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
    MfaChallenged,
    MfaFailed,
    StepUp,
    TotpEnabled,
    TotpDisabled,
    RecoveryCodesGenerated,
    RecoveryCodeUsed,
    PasskeyAdded,
    PasskeyRenamed,
    PasskeyRemoved,
    MfaReset,
    RiskySignIn,
    RiskySignInRefused,
    NotMeReported,
    InvitationSent,
    InvitationRevoked,
    InvitationAccepted,
    InvitationDeclined,
    DataExported,
    ConsentGiven,
    ErasureRequested,
    ErasureCancelled,
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
            Action::MfaChallenged => "auth.mfa_challenged",
            Action::MfaFailed => "auth.mfa_failed",
            Action::StepUp => "auth.step_up",
            Action::TotpEnabled => "mfa.totp_enabled",
            Action::TotpDisabled => "mfa.totp_disabled",
            Action::RecoveryCodesGenerated => "mfa.recovery_codes_generated",
            Action::RecoveryCodeUsed => "mfa.recovery_code_used",
            Action::PasskeyAdded => "mfa.passkey_added",
            Action::PasskeyRenamed => "mfa.passkey_renamed",
            Action::PasskeyRemoved => "mfa.passkey_removed",
            Action::MfaReset => "mfa.reset",
            Action::RiskySignIn => "security.risky_sign_in",
            Action::RiskySignInRefused => "security.risky_sign_in_refused",
            Action::NotMeReported => "security.not_me_reported",
            Action::InvitationSent => "lab.invitation_sent",
            Action::InvitationRevoked => "lab.invitation_revoked",
            Action::InvitationAccepted => "lab.invitation_accepted",
            Action::InvitationDeclined => "lab.invitation_declined",
            Action::DataExported => "user.data_exported",
            Action::ConsentGiven => "user.consent_given",
            Action::ErasureRequested => "user.erasure_requested",
            Action::ErasureCancelled => "user.erasure_cancelled",
        }
    }
}

/// Who did it and from where: taken from the request by the HTTP layer.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    /// What tells one device from another (`security/devices.rs`); never audited itself.
    pub device: DeviceHints,
}

/// The request headers that tell a device apart: the portal's own device id
/// (`X-UMS-Device-Id`), `Accept-Language`, and the browser's client hints.
#[derive(Debug, Clone, Default)]
pub struct DeviceHints {
    pub device_id: Option<String>,
    pub accept_language: Option<String>,
    /// `Sec-CH-UA` and `Sec-CH-UA-Mobile`, as sent.
    pub client_hints: Option<String>,
    /// `Sec-CH-UA-Platform`.
    pub platform: Option<String>,
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

/// A change and its audit event, committed together or not at all: `begin`, make the change
/// through it (it is a `Connection`), then `commit(event)`. A change with several events
/// `record`s the others on the way.
pub struct Audited {
    transaction: crate::store::Transaction,
    key: ChainKey,
}

impl Audited {
    pub async fn begin(store: &crate::store::Store) -> Result<Self, AppError> {
        Ok(Audited {
            transaction: store.begin().await?,
            key: store.chain_key().clone(),
        })
    }

    /// Records one more event of the change, before the last one.
    pub async fn record(&mut self, event: Event) -> Result<(), AppError> {
        record(&mut self.transaction, &self.key, event).await
    }

    /// Records the change's event and commits both.
    pub async fn commit(mut self, event: Event) -> Result<(), AppError> {
        record(&mut self.transaction, &self.key, event).await?;
        self.transaction.commit().await?;
        Ok(())
    }

    /// Commits a change whose events are all recorded already.
    pub async fn commit_recorded(self) -> Result<(), AppError> {
        self.transaction.commit().await?;
        Ok(())
    }
}

impl crate::store::AsDb for Audited {
    fn db(&mut self) -> crate::store::Db<'_> {
        self.transaction.db()
    }

    fn changed(&mut self, user_id: i64) {
        self.transaction.changed(user_id)
    }
}

/// Appends an event to the chain inside the caller's transaction.
pub async fn record(
    connection: &mut Connection,
    key: &ChainKey,
    event: Event,
) -> Result<(), AppError> {
    record_batch(connection, key, vec![event]).await
}

/// From this seq on, the chain is an HMAC under the chain key (`audit_chain.keyed_from`, set
/// the first time the service runs with a secret key); before it, plain SHA-256.
pub fn is_keyed_at(keyed_from: Option<i64>, seq: i64) -> bool {
    keyed_from.is_some_and(|from| seq >= from)
}

/// Starts keying the chain at the next event when a secret key is configured; refuses a
/// keyed chain without one (its events could not be written or verified).
pub async fn key_the_chain(store: &crate::store::Store) -> anyhow::Result<()> {
    let mut transaction = store.begin().await?;
    let keyed_from: Option<i64> = crate::with_db!(transaction, |db| sqlx::query_scalar(
        "SELECT keyed_from FROM audit_chain WHERE id = 1"
    )
    .fetch_one(db)
    .await)?;
    match (keyed_from, store.chain_key().is_keyed()) {
        (None, true) => {
            crate::execute!(
                transaction,
                sqlx::query("UPDATE audit_chain SET keyed_from = seq + 1 WHERE id = 1")
            )?;
            transaction.commit().await?;
        }
        (Some(from), false) => anyhow::bail!(
            "the audit chain is keyed from event {from} on; UMS_SECRET_KEY is needed to extend and verify it"
        ),
        _ => {}
    }
    Ok(())
}

/// Columns of an event row as inserted.
const COLUMNS: usize = 16;

/// Rows per INSERT statement (16 parameters each, well under both databases' limits).
const ROWS_PER_INSERT: usize = 100;

/// Appends events, in order, with one claim on the chain head: the batched access log writes
/// hundreds of events for the cost of a few statements.
pub async fn record_batch(
    connection: &mut Connection,
    key: &ChainKey,
    events: Vec<Event>,
) -> Result<(), AppError> {
    if events.is_empty() || cfg!(feature = "bench-unaudited") {
        return Ok(());
    }
    let count = events.len() as i64;
    let (last_seq, prev_hash, keyed_from): (i64, String, Option<i64>) = crate::with_db!(
        connection,
        |db| {
            sqlx::query_as(
            "UPDATE audit_chain SET seq = seq + $1 WHERE id = 1 RETURNING seq, last_hash, keyed_from",
        )
        .bind(count)
        .fetch_one(db)
        .await
        }
    )?;
    let now = events
        .iter()
        .map(|event| event.occurred_at)
        .max()
        .unwrap_or_default();
    let subjects: Vec<Option<i64>> = events
        .iter()
        .map(|event| {
            personal::subject_of(
                event.action.as_str(),
                event.user_id,
                event.resource_type,
                event.resource_id.as_deref(),
            )
        })
        .collect();
    let people: Vec<i64> = events
        .iter()
        .zip(&subjects)
        .flat_map(|(event, subject)| [event.user_id, *subject])
        .flatten()
        .collect();
    let person_keys = personal::keys_of(connection, key, &people, now).await?;
    let head = ChainHead {
        first_seq: last_seq - count + 1,
        prev_hash,
        keyed_from,
    };
    // Sealing and hashing take some 20 µs an event: a batch of the access log's hundreds
    // would hold one of the few async workers for milliseconds, and every request queued on
    // it would wait (the p99 of `/access`). Large batches go to the blocking pool.
    let (rows, ip_tags, prev_hash) = if events.len() >= BLOCKING_BATCH {
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            chain_events(events, subjects, &person_keys, &key, head)
        })
        .await
        .map_err(|error| AppError::Internal(error.into()))??
    } else {
        chain_events(events, subjects, &person_keys, key, head)?
    };
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = format!(
            "INSERT INTO audit_logs (seq, occurred_at, action, success, user_id, actor_ip, user_agent, \
             resource_type, resource_id, lab_id, details, request_id, prev_hash, hash, subject_id, sealed) \
             VALUES {}",
            crate::store::values_list(connection, chunk.len(), COLUMNS)
        );
        let values = chunk
            .iter()
            .map(|(stored, _, _)| {
                let details: &serde_json::value::RawValue =
                    serde_json::from_str(&stored.details)
                        .map_err(|error| AppError::Internal(error.into()))?;
                let sealed: Option<&serde_json::value::RawValue> = stored
                    .sealed
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()
                    .map_err(|error| AppError::Internal(error.into()))?;
                Ok((
                    stored.actor_ip.as_deref().and_then(Inet::parse),
                    details,
                    sealed,
                ))
            })
            .collect::<Result<Vec<_>, AppError>>()?;
        crate::execute!(connection, {
            let mut query = sqlx::query(&sql);
            for ((stored, prev, hash), (actor_ip, details, sealed)) in chunk.iter().zip(&values) {
                query = query
                    .bind(stored.seq)
                    .bind(Timestamp::from(stored.occurred_at))
                    .bind(&stored.action)
                    .bind(stored.success)
                    .bind(stored.user_id)
                    .bind(*actor_ip)
                    .bind(&stored.user_agent)
                    .bind(&stored.resource_type)
                    .bind(&stored.resource_id)
                    .bind(stored.lab_id)
                    .bind(Json(*details))
                    .bind(&stored.request_id)
                    .bind(prev)
                    .bind(hash)
                    .bind(stored.subject_id)
                    .bind(sealed.map(Json));
            }
            query
        })?;
    }
    personal::index_addresses(connection, &ip_tags).await?;
    crate::execute!(
        connection,
        sqlx::query("UPDATE audit_chain SET last_hash = $1 WHERE id = 1").bind(&prev_hash)
    )?;
    // Counted when written; a rolled-back transaction over-counts, which a counter tolerates.
    metrics::counter!("ums_audit_events_total").increment(count as u64);
    Ok(())
}

/// The chain's head as a batch finds it: the seq its first event takes, the hash it links to,
/// and from which seq the links are keyed.
struct ChainHead {
    first_seq: i64,
    prev_hash: String,
    keyed_from: Option<i64>,
}

/// An event row to insert, with the hash it links to and its own.
type ChainedRow = (StoredEvent, String, String);

/// An address to index for a person's export and erasure: (seq, person, tag).
type AddressTag = (i64, i64, Vec<u8>);

/// Batches from this size are sealed and chained on the blocking pool.
const BLOCKING_BATCH: usize = 32;

/// Seals each event's personal fields and links it to the one before: the rows to insert,
/// the address tags to index, and the new head's hash. Plain CPU work, no I/O.
fn chain_events(
    events: Vec<Event>,
    subjects: Vec<Option<i64>>,
    person_keys: &std::collections::HashMap<i64, [u8; 32]>,
    key: &ChainKey,
    mut head: ChainHead,
) -> Result<(Vec<ChainedRow>, Vec<AddressTag>, String), AppError> {
    let mut rows = Vec::with_capacity(events.len());
    let mut ip_tags = Vec::new();
    for (offset, (event, subject_id)) in events.into_iter().zip(subjects).enumerate() {
        let seq = head.first_seq + offset as i64;
        let clear = personal::Clear {
            // Stored as an address (`inet`), so kept as the address's own text.
            actor_ip: event
                .origin
                .ip
                .as_deref()
                .and_then(Inet::parse)
                .map(|ip| ip.to_string()),
            user_agent: event.origin.user_agent,
            details: match event.details {
                Value::Object(details) => details,
                _ => serde_json::Map::new(),
            },
        };
        let sealed = personal::seal(seq, event.user_id, subject_id, clear, key, |person| {
            person_keys.get(&person).copied()
        })
        .map_err(AppError::Internal)?;
        if let Some((person, tag)) = sealed.ip_tag {
            ip_tags.push((seq, person, tag));
        }
        let stored = StoredEvent {
            seq,
            occurred_at: event.occurred_at,
            action: event.action.as_str().to_string(),
            success: event.success,
            user_id: event.user_id,
            actor_ip: sealed.actor_ip,
            user_agent: sealed.user_agent,
            resource_type: event.resource_type.map(String::from),
            resource_id: event.resource_id,
            lab_id: event.lab_id,
            details: Value::Object(sealed.details).to_string(),
            request_id: event.origin.request_id,
            subject_id: sealed.subject_id,
            sealed: sealed.sealed.map(|sealed| sealed.to_string()),
        };
        let hash = if is_keyed_at(head.keyed_from, stored.seq) {
            stored
                .keyed_chain_hash(&head.prev_hash, key)
                .ok_or_else(|| {
                    AppError::Internal(anyhow::anyhow!(
                        "the audit chain is keyed and UMS_SECRET_KEY is not set"
                    ))
                })?
        } else {
            stored.chain_hash(&head.prev_hash)
        };
        rows.push((
            stored,
            std::mem::replace(&mut head.prev_hash, hash.clone()),
            hash,
        ));
    }
    Ok((rows, ip_tags, head.prev_hash))
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
    /// The person the sealed details describe, and the sealed envelopes (`audit/personal.rs`)
    /// in their canonical text.
    pub subject_id: Option<i64>,
    pub sealed: Option<String>,
}

impl StoredEvent {
    /// SHA-256 over the previous hash and a canonical JSON array of the fields, in a fixed
    /// order (an array, so no key ordering question arises).
    pub fn chain_hash(&self, prev_hash: &str) -> String {
        let mut hasher = Sha256::new();
        hasher.update(prev_hash.as_bytes());
        hasher.update(self.canonical().as_bytes());
        hex::encode(hasher.finalize())
    }

    /// HMAC-SHA256 under the chain key over the same input; `None` without a key.
    pub fn keyed_chain_hash(&self, prev_hash: &str, key: &ChainKey) -> Option<String> {
        key.sign(false, &[prev_hash.as_bytes(), self.canonical().as_bytes()])
    }

    /// A canonical JSON array of the fields, in a fixed order (an array, so no key ordering
    /// question arises). An event with sealed fields adds its subject and envelopes; one
    /// without keeps the form events had before sealing existed.
    fn canonical(&self) -> String {
        let mut fields = json!([
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
        if let (Some(sealed), Value::Array(fields)) = (&self.sealed, &mut fields) {
            fields.push(json!(self.subject_id));
            fields.push(Value::String(sealed.clone()));
        }
        fields.to_string()
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
            subject_id: None,
            sealed: None,
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
        let mut sealed = event();
        sealed.sealed = Some(r#"{"actor":"AAAA"}"#.into());
        let with_envelope = sealed.chain_hash(GENESIS_HASH);
        assert_ne!(with_envelope, original);
        sealed.subject_id = Some(9);
        assert_ne!(sealed.chain_hash(GENESIS_HASH), with_envelope);
    }
}
