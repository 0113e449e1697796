//! Passkeys (WebAuthn, through webauthn-rs): the relying party, the ceremonies' two halves,
//! and the `passkeys` table.
//!
//! A user's passkeys share one random user handle (a UUID, never the user id), which a
//! discoverable credential hands back at a passwordless sign-in to say whose it is.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use sqlx::types::Json;
use webauthn_rs::prelude::{
    CreationChallengeResponse, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential,
    RequestChallengeResponse, Uuid,
};
use webauthn_rs::{Webauthn, WebauthnBuilder};

use crate::clock::{Millis, Timestamp};
use crate::config::SecondFactors;
use crate::store::{Connection, StoreError};

/// The relying party, built once from the configuration.
pub fn relying_party(config: &SecondFactors) -> anyhow::Result<Webauthn> {
    let (first, others) = config
        .webauthn_origins
        .split_first()
        .ok_or_else(|| anyhow::anyhow!("UMS_WEBAUTHN_ORIGINS names no origin"))?;
    let mut builder = WebauthnBuilder::new(&config.webauthn_rp_id, first)?.rp_name("UMS");
    for origin in others {
        builder = builder.append_allowed_origin(origin);
    }
    Ok(builder.build()?)
}

/// A passkey as its owner sees it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PasskeyView {
    pub id: i64,
    pub name: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_used_at: Option<Timestamp>,
}

#[derive(sqlx::FromRow)]
pub struct StoredPasskey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub credential: Json<Passkey>,
    pub created_at: Timestamp,
    pub last_used_at: Option<Timestamp>,
}

impl StoredPasskey {
    pub fn view(&self) -> PasskeyView {
        PasskeyView {
            id: self.id,
            name: self.name.clone(),
            created_at: self.created_at,
            last_used_at: self.last_used_at,
        }
    }
}

pub fn credential_id_text(id: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(id)
}

/// A passkey's name: trimmed, 1 to 64 characters, no control characters.
pub fn parse_name(name: &str) -> Result<String, &'static str> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 {
        return Err("must be 1 to 64 characters");
    }
    if crate::text::has_control_character(name) {
        return Err("must not contain control characters");
    }
    Ok(name.to_string())
}

pub fn ceremony_value(state: &impl Serialize) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(state)?)
}

pub fn start_registration(
    webauthn: &Webauthn,
    handle: Uuid,
    username: &str,
    display_name: &str,
    existing: &[StoredPasskey],
) -> anyhow::Result<(CreationChallengeResponse, PasskeyRegistration)> {
    let exclude = existing
        .iter()
        .map(|stored| stored.credential.0.cred_id().clone())
        .collect::<Vec<_>>();
    let (mut options, state) = webauthn.start_passkey_registration(
        handle,
        username,
        display_name,
        (!exclude.is_empty()).then_some(exclude),
    )?;
    // A passkey also signs in without a password, which takes a discoverable credential
    // (webauthn-rs asks for none by default). "Preferred" still lets a security key without
    // room for one register, as a second factor only. (webauthn-rs does not re-export the
    // requirement's type; its serde name sets it.)
    if let Some(selection) = options.public_key.authenticator_selection.as_mut() {
        selection.resident_key = Some(serde_json::from_value(serde_json::json!("preferred"))?);
    }
    Ok((options, state))
}

pub fn finish_registration(
    webauthn: &Webauthn,
    credential: &RegisterPublicKeyCredential,
    ceremony: serde_json::Value,
) -> Result<Passkey, String> {
    let state: PasskeyRegistration = serde_json::from_value(ceremony)
        .map_err(|_| "the registration state is unreadable".to_string())?;
    webauthn
        .finish_passkey_registration(credential, &state)
        .map_err(|error| error.to_string())
}

pub fn start_authentication(
    webauthn: &Webauthn,
    passkeys: &[StoredPasskey],
) -> anyhow::Result<(RequestChallengeResponse, serde_json::Value)> {
    let credentials: Vec<Passkey> = passkeys.iter().map(|p| p.credential.0.clone()).collect();
    let (options, state) = webauthn.start_passkey_authentication(&credentials)?;
    Ok((options, ceremony_value(&state)?))
}

pub fn start_discoverable(
    webauthn: &Webauthn,
) -> anyhow::Result<(RequestChallengeResponse, serde_json::Value)> {
    let (options, state) = webauthn.start_discoverable_authentication()?;
    Ok((options, ceremony_value(&state)?))
}

/// Checks an assertion against the ceremony; on success, the passkey it used (its counter
/// moved on), ready to be stored.
pub fn finish_authentication(
    webauthn: &Webauthn,
    assertion: &PublicKeyCredential,
    ceremony: serde_json::Value,
    passkeys: &[StoredPasskey],
    discoverable: bool,
) -> Option<(i64, Passkey)> {
    let used_id = assertion.get_credential_id();
    let stored = passkeys
        .iter()
        .find(|stored| stored.credential.0.cred_id().as_slice() == used_id)?;
    let result = if discoverable {
        let state: DiscoverableAuthentication = serde_json::from_value(ceremony).ok()?;
        webauthn
            .finish_discoverable_authentication_v2(assertion, state, &stored.credential.0)
            .ok()?
    } else {
        let state: PasskeyAuthentication = serde_json::from_value(ceremony).ok()?;
        webauthn
            .finish_passkey_authentication(assertion, &state)
            .ok()?
    };
    let mut passkey = stored.credential.0.clone();
    passkey.update_credential(&result);
    Some((stored.id, passkey))
}

/// The user handle a discoverable assertion names.
pub fn asserted_handle(webauthn: &Webauthn, assertion: &PublicKeyCredential) -> Option<Uuid> {
    webauthn
        .identify_discoverable_authentication(assertion)
        .ok()
        .map(|(handle, _)| handle)
}

const COLUMNS: &str = "id, user_id, name, credential, created_at, last_used_at";

pub async fn of_user(
    connection: &mut Connection,
    user_id: i64,
) -> Result<Vec<StoredPasskey>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM passkeys WHERE user_id = $1 ORDER BY id");
    Ok(crate::with_db!(connection, |db| sqlx::query_as::<
        _,
        StoredPasskey,
    >(&sql)
    .bind(user_id)
    .fetch_all(db)
    .await)?)
}

pub async fn of_handle(
    connection: &mut Connection,
    handle: Uuid,
) -> Result<Vec<StoredPasskey>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM passkeys WHERE user_handle = $1 ORDER BY id");
    Ok(crate::with_db!(connection, |db| sqlx::query_as::<
        _,
        StoredPasskey,
    >(&sql)
    .bind(handle)
    .fetch_all(db)
    .await)?)
}

/// The user's handle, if any passkey was registered before.
pub async fn handle_of(
    connection: &mut Connection,
    user_id: i64,
) -> Result<Option<Uuid>, StoreError> {
    Ok(crate::with_db!(connection, |db| sqlx::query_scalar(
        "SELECT user_handle FROM passkeys WHERE user_id = $1 LIMIT 1"
    )
    .bind(user_id)
    .fetch_optional(db)
    .await)?)
}

pub async fn insert(
    connection: &mut Connection,
    user_id: i64,
    handle: Uuid,
    name: &str,
    passkey: &Passkey,
    now: Millis,
) -> Result<PasskeyView, StoreError> {
    let id: i64 = crate::with_db!(connection, |db| {
        sqlx::query_scalar(
        "INSERT INTO passkeys (user_id, credential_id, user_handle, name, credential, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
    )
    .bind(user_id)
    .bind(credential_id_text(passkey.cred_id()))
    .bind(handle)
    .bind(name)
    .bind(Json(passkey))
    .bind(Timestamp::from(now))
    .fetch_one(db)
    .await
    })?;
    Ok(PasskeyView {
        id,
        name: name.to_string(),
        created_at: Timestamp::from(now),
        last_used_at: None,
    })
}

/// Stores the passkey after a use: its counter and backup state, and when.
pub async fn record_use(
    connection: &mut Connection,
    id: i64,
    passkey: &Passkey,
    now: Millis,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query("UPDATE passkeys SET credential = $2, last_used_at = $3 WHERE id = $1")
            .bind(id)
            .bind(Json(passkey))
            .bind(Timestamp::from(now))
    )?;
    Ok(())
}

pub async fn rename(
    connection: &mut Connection,
    user_id: i64,
    id: i64,
    name: &str,
) -> Result<bool, StoreError> {
    let affected = crate::execute!(
        connection,
        sqlx::query("UPDATE passkeys SET name = $3 WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id)
            .bind(name)
    )?;
    Ok(affected == 1)
}

pub async fn remove(
    connection: &mut Connection,
    user_id: i64,
    id: i64,
) -> Result<Option<String>, StoreError> {
    Ok(crate::with_db!(connection, |db| sqlx::query_scalar(
        "DELETE FROM passkeys WHERE id = $1 AND user_id = $2 RETURNING name"
    )
    .bind(id)
    .bind(user_id)
    .fetch_optional(db)
    .await)?)
}

pub async fn remove_all(connection: &mut Connection, user_id: i64) -> Result<u64, StoreError> {
    Ok(crate::execute!(
        connection,
        sqlx::query("DELETE FROM passkeys WHERE user_id = $1").bind(user_id)
    )?)
}
