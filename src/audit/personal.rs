//! Personal data in the audit trail, sealed per person (crypto-shredding).
//!
//! An event's address and browser belong to whoever acted; the names and emails in its
//! details belong to the person it is about. Each is sealed (AES-256-GCM) under a key of its
//! own person (`audit_person_keys`, which goes with the user row), and the chain hashes the
//! sealed form. Erasing a person deletes their key: their fields read as erased for ever,
//! in the table and in every archive, while `ums audit verify` still passes. What describes
//! nobody (the address of a sign-in under an unknown name) stays in the clear, and goes with
//! retention.

use std::collections::{BTreeMap, HashMap};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::audit::ChainKey;
use crate::clock::{Millis, Timestamp};
use crate::error::AppError;
use crate::store::Connection;

/// Detail fields that name or reach a person. The rest of an event's details (ids, roles,
/// reasons, counts) stay readable for ever.
/// (`from` and `to` are an email change's addresses; `risk` holds where a sign-in came from.)
pub const PERSONAL_DETAILS: &[&str] = &[
    "username",
    "email",
    "new_email",
    "from",
    "to",
    "changed",
    "first_name",
    "last_name",
    "risk",
];

/// Whom an event's personal details describe: the account it acts on, else whoever acted.
/// A failed sign-in nobody is behind (an unknown name) carries the typed name as its
/// resource, which may look like an id: it names no account, and its fields stay in the
/// clear until retention takes them.
pub fn subject_of(
    action: &str,
    user_id: Option<i64>,
    resource_type: Option<&str>,
    resource_id: Option<&str>,
) -> Option<i64> {
    match (user_id, resource_type) {
        (None, Some("user")) if action == "auth.login_failed" => None,
        (_, Some("user")) => resource_id.and_then(|id| id.parse().ok()).or(user_id),
        _ => user_id,
    }
}

/// Whose key opens an envelope: the actor's (`user_id`) or the subject's (`subject_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Role {
    Actor,
    Subject,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Actor => "actor",
            Role::Subject => "subject",
        }
    }

    fn context(self, seq: i64) -> Vec<u8> {
        format!("ums-audit/{seq}/{}", self.name()).into_bytes()
    }
}

/// The personal fields of one person in one event, in the clear.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Envelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    actor_ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    details: Map<String, Value>,
}

/// An event's fields as written or read: what is in the clear.
#[derive(Debug, Clone, PartialEq)]
pub struct Clear {
    pub actor_ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Map<String, Value>,
}

/// An event's fields as stored: the personal ones sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub subject_id: Option<i64>,
    pub actor_ip: Option<String>,
    pub user_agent: Option<String>,
    pub details: Map<String, Value>,
    /// `{"actor": base64, "subject": base64}`; `null` for a person already erased.
    pub sealed: Option<Value>,
    /// Whose sealed address this is, and its search tag.
    pub ip_tag: Option<(i64, Vec<u8>)>,
}

/// Seals the personal fields of event `seq` under the keys `key_of` gives (a person without
/// one is gone: their fields are dropped, and read as erased).
pub fn seal(
    seq: i64,
    user_id: Option<i64>,
    subject_id: Option<i64>,
    clear: Clear,
    chain_key: &ChainKey,
    key_of: impl Fn(i64) -> Option<[u8; 32]>,
) -> anyhow::Result<Stored> {
    let Clear {
        mut actor_ip,
        mut user_agent,
        mut details,
    } = clear;
    let mut envelopes: BTreeMap<Role, Envelope> = BTreeMap::new();
    let owner = |person: Option<i64>| match person {
        Some(id) if Some(id) == user_id => Some(Role::Actor),
        Some(_) => Some(Role::Subject),
        None => None,
    };
    let mut ip_owner = None;
    if let Some(role) = owner(user_id.or(subject_id))
        && (actor_ip.is_some() || user_agent.is_some())
    {
        let envelope = envelopes.entry(role).or_default();
        envelope.actor_ip = actor_ip.take();
        envelope.user_agent = user_agent.take();
        ip_owner = envelope.actor_ip.as_ref().map(|ip| (role, ip.clone()));
    }
    if let Some(role) = owner(subject_id) {
        let personal: Map<String, Value> = PERSONAL_DETAILS
            .iter()
            .filter_map(|name| details.remove(*name).map(|value| (name.to_string(), value)))
            .collect();
        if !personal.is_empty() {
            envelopes.entry(role).or_default().details = personal;
        }
    }
    if envelopes.is_empty() {
        return Ok(Stored {
            subject_id: None,
            actor_ip,
            user_agent,
            details,
            sealed: None,
            ip_tag: None,
        });
    }
    let person = |role: Role| match role {
        Role::Actor => user_id,
        Role::Subject => subject_id,
    };
    let mut sealed = Map::new();
    let mut ip_tag = None;
    for (role, envelope) in envelopes {
        let key = person(role).and_then(&key_of);
        let value = match key {
            Some(key) => {
                let plain = serde_json::to_vec(&envelope)?;
                let ciphertext =
                    crate::security::sealing::encrypt(&key, &role.context(seq), &plain)?;
                if let Some((ip_role, ip)) = &ip_owner
                    && *ip_role == role
                {
                    ip_tag = person(role).map(|id| (id, chain_key.ip_tag(ip)));
                }
                Value::String(STANDARD.encode(ciphertext))
            }
            None => Value::Null,
        };
        sealed.insert(role.name().to_string(), value);
    }
    Ok(Stored {
        subject_id,
        actor_ip,
        user_agent,
        details,
        sealed: Some(Value::Object(sealed)),
        ip_tag,
    })
}

/// Opens the envelopes whose keys are given; returns the fields in the clear and whether any
/// were erased.
pub fn open(
    seq: i64,
    stored: Clear,
    sealed: Option<&Value>,
    actor_key: Option<[u8; 32]>,
    subject_key: Option<[u8; 32]>,
) -> (Clear, bool) {
    let mut clear = stored;
    let Some(Value::Object(envelopes)) = sealed else {
        return (clear, false);
    };
    let mut erased = false;
    for (name, value) in envelopes {
        let (role, key) = match name.as_str() {
            "actor" => (Role::Actor, actor_key),
            _ => (Role::Subject, subject_key),
        };
        let envelope = value
            .as_str()
            .zip(key)
            .and_then(|(text, key)| {
                let bytes = STANDARD.decode(text).ok()?;
                crate::security::sealing::decrypt(&key, &role.context(seq), &bytes).ok()
            })
            .and_then(|plain| serde_json::from_slice::<Envelope>(&plain).ok());
        match envelope {
            Some(envelope) => {
                clear.actor_ip = clear.actor_ip.or(envelope.actor_ip);
                clear.user_agent = clear.user_agent.or(envelope.user_agent);
                clear.details.extend(envelope.details);
            }
            None => erased = true,
        }
    }
    (clear, erased)
}

/// The keys of `people`, made for those who have none yet; a person without a user row
/// (erased) gets none.
pub async fn keys_of(
    connection: &mut Connection,
    chain_key: &ChainKey,
    people: &[i64],
    now: Millis,
) -> Result<HashMap<i64, [u8; 32]>, AppError> {
    let mut people = people.to_vec();
    people.sort_unstable();
    people.dedup();
    let mut keys = stored_keys(connection, chain_key, &people).await?;
    let missing: Vec<i64> = people
        .iter()
        .copied()
        .filter(|id| !keys.contains_key(id))
        .collect();
    if missing.is_empty() {
        return Ok(keys);
    }
    for &user_id in &missing {
        let mut key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut key)
            .map_err(|_| AppError::Internal(anyhow::anyhow!("random key")))?;
        let wrapped = chain_key
            .wrap_person_key(user_id, &key)
            .map_err(AppError::Internal)?;
        crate::execute!(
            connection,
            sqlx::query(
                "INSERT INTO audit_person_keys (user_id, wrapped_key, created_at) \
                 SELECT id, $2, $3 FROM users WHERE id = $1 ON CONFLICT (user_id) DO NOTHING"
            )
            .bind(user_id)
            .bind(wrapped)
            .bind(Timestamp::from(now))
        )?;
    }
    // Another writer may have made one first: theirs is the key.
    keys.extend(stored_keys(connection, chain_key, &missing).await?);
    Ok(keys)
}

/// Records the search tags of sealed addresses: (seq, whose, tag).
pub async fn index_addresses(
    connection: &mut Connection,
    tags: &[(i64, i64, Vec<u8>)],
) -> Result<(), AppError> {
    for chunk in tags.chunks(100) {
        let sql = format!(
            "INSERT INTO audit_ip_index (seq, user_id, tag) VALUES {}",
            crate::store::values_list(connection, chunk.len(), 3)
        );
        crate::execute!(connection, {
            let mut query = sqlx::query(&sql);
            for (seq, user_id, tag) in chunk {
                query = query.bind(*seq).bind(*user_id).bind(tag.as_slice());
            }
            query
        })?;
    }
    Ok(())
}

async fn stored_keys(
    connection: &mut Connection,
    chain_key: &ChainKey,
    people: &[i64],
) -> Result<HashMap<i64, [u8; 32]>, AppError> {
    if people.is_empty() {
        return Ok(HashMap::new());
    }
    let placeholders: Vec<String> = (1..=people.len()).map(|n| format!("${n}")).collect();
    let sql = format!(
        "SELECT user_id, wrapped_key FROM audit_person_keys WHERE user_id IN ({})",
        placeholders.join(", ")
    );
    let rows: Vec<(i64, Vec<u8>)> = crate::with_db!(connection, |db| {
        let mut query = sqlx::query_as(&sql);
        for id in people {
            query = query.bind(*id);
        }
        query.fetch_all(db).await
    })?;
    Ok(rows
        .into_iter()
        .filter_map(|(user_id, wrapped)| {
            chain_key
                .unwrap_person_key(user_id, &wrapped)
                .map(|key| (user_id, key))
        })
        .collect())
}

/// Seals the personal fields of the events written before sealing existed, once (`ums
/// migrate` and every start run it; it is a no-op when done, and the database refuses a
/// second rewrite). The whole trail is verified first (archives and signed checkpoints
/// included), so the rewrite never launders an edit; the chain is then re-linked over the
/// sealed forms, and a signed checkpoint marks the re-linking (the earlier ones past its
/// start named the old hashes). Events already in archive files keep their form.
pub async fn reseal_existing(
    store: &crate::store::Store,
    archive_dir: Option<&std::path::Path>,
    now: Millis,
) -> anyhow::Result<u64> {
    use crate::audit::query::{EVENT_COLUMNS, EventRecord, EventRow};

    let chain_key = store.chain_key().clone();
    let mut transaction = store.begin().await?;
    // Claims the chain head: no event is written meanwhile.
    let (resealed, archived_through, archived_hash, keyed_from): (bool, i64, String, Option<i64>) =
        crate::with_db!(transaction, |db| sqlx::query_as(
            "UPDATE audit_chain SET rewriting = NOT resealed WHERE id = 1 \
             RETURNING resealed, archived_through, archived_hash, keyed_from"
        )
        .fetch_one(db)
        .await)?;
    if resealed {
        drop(transaction);
        finish_relink(store, archive_dir, now).await?;
        return Ok(0);
    }
    let report = crate::audit::verify::verify(store, archive_dir).await?;
    if let Some(finding) = report.finding {
        anyhow::bail!(
            "the audit trail does not verify ({finding}); its personal fields cannot be sealed \
             until that is resolved (see `ums audit verify`)"
        );
    }
    let mut running = archived_hash;
    let mut rewritten = 0;
    let mut after = archived_through;
    let sql =
        format!("SELECT {EVENT_COLUMNS} FROM audit_logs WHERE seq > $1 ORDER BY seq LIMIT 500");
    loop {
        let batch: Vec<EventRecord> = crate::with_db!(transaction, |db| sqlx::query_as(&sql)
            .bind(after)
            .fetch_all(db)
            .await)?;
        if batch.is_empty() {
            break;
        }
        let rows: Vec<EventRow> = batch.into_iter().map(EventRow::from).collect();
        let people: Vec<i64> = rows
            .iter()
            .filter(|row| row.event.sealed.is_none())
            .flat_map(|row| {
                let event = &row.event;
                [
                    event.user_id,
                    subject_of(
                        &event.action,
                        event.user_id,
                        event.resource_type.as_deref(),
                        event.resource_id.as_deref(),
                    ),
                ]
            })
            .flatten()
            .collect();
        let keys = keys_of(&mut transaction, &chain_key, &people, now).await?;
        let mut tags = Vec::new();
        for row in rows {
            after = row.event.seq;
            let mut event = row.event;
            if event.sealed.is_none() {
                let subject_id = subject_of(
                    &event.action,
                    event.user_id,
                    event.resource_type.as_deref(),
                    event.resource_id.as_deref(),
                );
                let clear = Clear {
                    actor_ip: event.actor_ip.take(),
                    user_agent: event.user_agent.take(),
                    details: serde_json::from_str(&event.details).unwrap_or_default(),
                };
                let stored = seal(
                    event.seq,
                    event.user_id,
                    subject_id,
                    clear,
                    &chain_key,
                    |id| keys.get(&id).copied(),
                )?;
                if let Some((person, tag)) = stored.ip_tag {
                    tags.push((event.seq, person, tag));
                }
                event.actor_ip = stored.actor_ip;
                event.user_agent = stored.user_agent;
                event.details = Value::Object(stored.details).to_string();
                event.subject_id = stored.subject_id;
                event.sealed = stored.sealed.map(|sealed| sealed.to_string());
            }
            let hash = if crate::audit::is_keyed_at(keyed_from, event.seq) {
                event
                    .keyed_chain_hash(&running, &chain_key)
                    .ok_or_else(|| {
                        anyhow::anyhow!("the audit chain is keyed and UMS_SECRET_KEY is not set")
                    })?
            } else {
                event.chain_hash(&running)
            };
            if hash != row.hash || running != row.prev_hash {
                let details: &serde_json::value::RawValue = serde_json::from_str(&event.details)?;
                let sealed: Option<&serde_json::value::RawValue> = event
                    .sealed
                    .as_deref()
                    .map(serde_json::from_str)
                    .transpose()?;
                crate::execute!(
                    transaction,
                    sqlx::query(
                        "UPDATE audit_logs SET actor_ip = $3, user_agent = $4, details = $5, \
                         subject_id = $6, sealed = $7, prev_hash = $8, hash = $9 \
                         WHERE seq = $1 AND occurred_at = $2"
                    )
                    .bind(event.seq)
                    .bind(Timestamp::from(event.occurred_at))
                    .bind(
                        event
                            .actor_ip
                            .as_deref()
                            .and_then(crate::store::Inet::parse)
                    )
                    .bind(&event.user_agent)
                    .bind(sqlx::types::Json(details))
                    .bind(event.subject_id)
                    .bind(sealed.map(sqlx::types::Json))
                    .bind(&running)
                    .bind(&hash)
                )?;
                rewritten += 1;
            }
            running = hash;
        }
        index_addresses(&mut transaction, &tags).await?;
    }
    crate::execute!(
        transaction,
        sqlx::query(
            "UPDATE audit_chain SET last_hash = $1, rewriting = FALSE, resealed = TRUE, \
             relink_pending = $2 WHERE id = 1"
        )
        .bind(&running)
        .bind((rewritten > 0).then_some(archived_through + 1))
    )?;
    transaction.commit().await?;
    if rewritten > 0 {
        tracing::info!(
            events = rewritten,
            "audit events' personal fields sealed; chain re-linked"
        );
    }
    finish_relink(store, archive_dir, now).await?;
    Ok(rewritten)
}

/// Writes the signed checkpoint of a re-linking that has none yet (a crash may have come
/// between the two), then marks it written.
async fn finish_relink(
    store: &crate::store::Store,
    archive_dir: Option<&std::path::Path>,
    now: Millis,
) -> anyhow::Result<()> {
    let pending: Option<i64> = {
        let mut connection = store.read().await?;
        crate::with_db!(connection, |db| sqlx::query_scalar(
            "SELECT relink_pending FROM audit_chain WHERE id = 1"
        )
        .fetch_one(db)
        .await)?
    };
    let Some(from) = pending else {
        return Ok(());
    };
    crate::audit::checkpoint::write_relinked(store, archive_dir, now, from).await?;
    let mut connection = store.write().await?;
    crate::execute!(
        connection,
        sqlx::query("UPDATE audit_chain SET relink_pending = NULL WHERE id = 1")
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn clear() -> Clear {
        Clear {
            actor_ip: Some("192.0.2.7".into()),
            user_agent: Some("Firefox".into()),
            details: json!({"username": "alice", "email": "a@example.org", "role": "member"})
                .as_object()
                .cloned()
                .unwrap(),
        }
    }

    const ADMIN: i64 = 1;
    const ALICE: i64 = 7;

    fn key(id: i64) -> Option<[u8; 32]> {
        Some([id as u8; 32])
    }

    #[test]
    fn an_admins_act_on_a_person_seals_the_address_for_the_admin_and_the_names_for_the_person() {
        let stored = seal(
            5,
            Some(ADMIN),
            Some(ALICE),
            clear(),
            &ChainKey::default(),
            key,
        )
        .unwrap();
        assert_eq!(stored.actor_ip, None);
        assert_eq!(stored.user_agent, None);
        assert_eq!(
            stored.details,
            json!({"role": "member"}).as_object().cloned().unwrap()
        );
        let text = stored.sealed.as_ref().unwrap().to_string();
        assert!(!text.contains("alice") && !text.contains("192.0.2.7"));
        assert_eq!(stored.ip_tag.as_ref().unwrap().0, ADMIN);

        let as_stored = Clear {
            actor_ip: None,
            user_agent: None,
            details: stored.details.clone(),
        };
        let (opened, erased) = open(
            5,
            as_stored.clone(),
            stored.sealed.as_ref(),
            key(ADMIN),
            key(ALICE),
        );
        assert_eq!((opened, erased), (clear(), false));

        // Alice erased: her names are gone, the admin's address stays.
        let (opened, erased) = open(
            5,
            as_stored.clone(),
            stored.sealed.as_ref(),
            key(ADMIN),
            None,
        );
        assert!(erased);
        assert_eq!(opened.actor_ip.as_deref(), Some("192.0.2.7"));
        assert_eq!(opened.details.get("username"), None);

        // An envelope moved to another event does not open.
        let (_, erased) = open(6, as_stored, stored.sealed.as_ref(), key(ADMIN), key(ALICE));
        assert!(erased);
    }

    #[test]
    fn what_describes_nobody_stays_in_the_clear_and_an_erased_person_gets_nothing_stored() {
        let anonymous = seal(1, None, None, clear(), &ChainKey::default(), key).unwrap();
        assert_eq!(anonymous.sealed, None);
        assert_eq!(anonymous.actor_ip.as_deref(), Some("192.0.2.7"));

        let gone = seal(
            1,
            Some(ALICE),
            Some(ALICE),
            clear(),
            &ChainKey::default(),
            |_| None,
        )
        .unwrap();
        assert_eq!(gone.sealed, Some(json!({"actor": null})));
        assert_eq!(gone.actor_ip, None);
        assert_eq!(gone.ip_tag, None);
        assert!(!gone.details.contains_key("username"));
    }

    #[test]
    fn the_subject_is_the_account_acted_on_else_the_actor() {
        let updated = "user.updated";
        assert_eq!(
            subject_of(updated, Some(1), Some("user"), Some("7")),
            Some(7)
        );
        assert_eq!(
            subject_of("lab.updated", Some(1), Some("lab"), Some("3")),
            Some(1)
        );
        let locked = "security.account_locked";
        assert_eq!(subject_of(locked, None, Some("security"), Some("0")), None);
        let created = "user.created";
        assert_eq!(
            subject_of(created, None, Some("user"), Some("12")),
            Some(12)
        );
        let imported = "user.imported";
        assert_eq!(
            subject_of(imported, None, Some("user"), Some("import")),
            None
        );
        let failed = "auth.login_failed";
        assert_eq!(
            subject_of(failed, None, Some("user"), Some("12")),
            None,
            "a typed name"
        );
    }
}
