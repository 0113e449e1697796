//! The audit trail's keys, all derived from `UMS_SECRET_KEY`: links are an HMAC under one,
//! checkpoints are signed with another, the per-person keys of personal fields are sealed
//! under a third and sealed addresses are tagged for search under a fourth. The store carries
//! them (it writes and reads the trail), so this depends on nothing else here.

/// The key of the chain's HMAC, derived from `UMS_SECRET_KEY` (its own HKDF context). With a
/// key, nobody who can only write to the database can recompute the chain after an edit.
/// Without a secret key the chain is plain SHA-256 (and `serve` warns at start).
#[derive(Clone, Default)]
pub struct ChainKey(Option<ChainKeys>);

/// The chain's links and its checkpoints are signed under keys of their own.
#[derive(Clone)]
struct ChainKeys {
    links: [u8; 32],
    checkpoints: [u8; 32],
    person_keys: [u8; 32],
    ip_index: [u8; 32],
}

/// The first byte of a stored person key: how it is kept.
const PERSON_KEY_PLAIN: u8 = 0;
const PERSON_KEY_SEALED: u8 = 1;

impl ChainKey {
    pub fn from_secret(secret_key: Option<&secrecy::SecretString>) -> Self {
        use crate::security::sealing::{derive_key, purpose};
        ChainKey(secret_key.map(|secret| ChainKeys {
            links: derive_key(secret, purpose::AUDIT_CHAIN),
            checkpoints: derive_key(secret, purpose::AUDIT_CHECKPOINT),
            person_keys: derive_key(secret, purpose::AUDIT_PERSON_KEYS),
            ip_index: derive_key(secret, purpose::AUDIT_IP_INDEX),
        }))
    }

    /// A person's key as stored: sealed under the secret key, bound to the person, or (with
    /// no secret key, as in development) as it is. Erasure deletes it either way.
    pub fn wrap_person_key(&self, user_id: i64, key: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
        let Some(keys) = &self.0 else {
            return Ok([&[PERSON_KEY_PLAIN][..], key].concat());
        };
        let sealed =
            crate::security::sealing::encrypt(&keys.person_keys, &user_id.to_be_bytes(), key)?;
        Ok([&[PERSON_KEY_SEALED][..], &sealed].concat())
    }

    /// The person's key, or `None` when it does not open (another secret key, or damaged).
    pub fn unwrap_person_key(&self, user_id: i64, stored: &[u8]) -> Option<[u8; 32]> {
        let (&kind, rest) = stored.split_first()?;
        let key = match (kind, &self.0) {
            (PERSON_KEY_PLAIN, _) => rest.to_vec(),
            (PERSON_KEY_SEALED, Some(keys)) => {
                crate::security::sealing::decrypt(&keys.person_keys, &user_id.to_be_bytes(), rest)
                    .ok()?
            }
            _ => return None,
        };
        key.try_into().ok()
    }

    /// The search tag of a sealed address: an HMAC under its own key (plain SHA-256 without
    /// a secret key), cut to 16 bytes.
    pub fn ip_tag(&self, ip: &str) -> Vec<u8> {
        use aws_lc_rs::hmac;
        use sha2::Digest;
        let full: Vec<u8> = match &self.0 {
            Some(keys) => hmac::sign(
                &hmac::Key::new(hmac::HMAC_SHA256, &keys.ip_index),
                ip.as_bytes(),
            )
            .as_ref()
            .to_vec(),
            None => sha2::Sha256::digest(ip.as_bytes()).to_vec(),
        };
        full[..16].to_vec()
    }

    pub fn is_keyed(&self) -> bool {
        self.0.is_some()
    }

    /// HMAC-SHA256 of `parts` under the links key (`checkpoint: false`) or the checkpoint
    /// key; `None` without a secret key.
    pub fn sign(&self, checkpoint: bool, parts: &[&[u8]]) -> Option<String> {
        use aws_lc_rs::hmac;
        let keys = self.0.as_ref()?;
        let key = if checkpoint {
            &keys.checkpoints
        } else {
            &keys.links
        };
        let mut context = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
        for part in parts {
            context.update(part);
        }
        Some(hex::encode(context.sign().as_ref()))
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_keyed() {
            "ChainKey(keyed)"
        } else {
            "ChainKey(unkeyed)"
        })
    }
}
