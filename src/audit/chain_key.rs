//! The audit chain's key: links are an HMAC under it, checkpoints are signed with another.
//! The store carries it (it writes and checks the chain), so it depends on nothing else here.

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
}

impl ChainKey {
    pub fn from_secret(secret_key: Option<&secrecy::SecretString>) -> Self {
        use crate::security::sealing::{derive_key, purpose};
        ChainKey(secret_key.map(|secret| ChainKeys {
            links: derive_key(secret, purpose::AUDIT_CHAIN),
            checkpoints: derive_key(secret, purpose::AUDIT_CHECKPOINT),
        }))
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
