//! Secrets at rest (signing keys, queued email bodies): AES-256-GCM under a key derived from
//! `UMS_SECRET_KEY`, or plainly encoded when no secret key is set.
//!
//! Every use of the secret key gets its own key, derived with HKDF-SHA256 under a distinct
//! context (`derive_key`), so no two purposes ever share key material. Values sealed before
//! (`aes256gcm:`, keyed by the secret's plain SHA-256) still open.

use anyhow::{anyhow, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The contexts the secret key is derived under, one per use.
pub mod purpose {
    pub const SEALING: &str = "ums/seal/v1";
    pub const AUDIT_CHAIN: &str = "ums/audit-chain/v1";
    pub const AUDIT_CHECKPOINT: &str = "ums/audit-checkpoint/v1";
    pub const AUDIT_PERSON_KEYS: &str = "ums/audit-person-keys/v1";
    pub const AUDIT_IP_INDEX: &str = "ums/audit-ip-index/v1";
}

/// A 256-bit key for one `purpose`, derived from the secret key with HKDF-SHA256.
pub fn derive_key(secret_key: &SecretString, purpose: &str) -> [u8; 32] {
    use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
    let salt = Salt::new(HKDF_SHA256, b"ums-secret-key");
    let prk = salt.extract(secret_key.expose_secret().as_bytes());
    let mut key = [0u8; 32];
    // 32 bytes of output from SHA-256's HKDF cannot fail (the limit is 255 × 32).
    if let Ok(okm) = prk.expand(&[purpose.as_bytes()], HkdfLength(32)) {
        let _ = okm.fill(&mut key);
    }
    key
}

struct HkdfLength(usize);

impl aws_lc_rs::hkdf::KeyType for HkdfLength {
    fn len(&self) -> usize {
        self.0
    }
}

/// Sealed text: `plain:<base64>` or, with `UMS_SECRET_KEY`,
/// `aes256gcm-v2:<base64 nonce||ciphertext>` under the sealing key derived from the secret.
pub fn seal(plain: &[u8], secret_key: Option<&SecretString>) -> anyhow::Result<String> {
    let Some(secret_key) = secret_key else {
        return Ok(format!("plain:{}", STANDARD.encode(plain)));
    };
    let output = encrypt(&derive_key(secret_key, purpose::SEALING), b"", plain)?;
    Ok(format!("aes256gcm-v2:{}", STANDARD.encode(output)))
}

pub fn unseal(stored: &str, secret_key: Option<&SecretString>) -> anyhow::Result<Vec<u8>> {
    if let Some(plain) = stored.strip_prefix("plain:") {
        return Ok(STANDARD.decode(plain)?);
    }
    let (sealed, key) = if let Some(sealed) = stored.strip_prefix("aes256gcm-v2:") {
        let secret_key = secret_key
            .ok_or_else(|| anyhow!("the key is encrypted and UMS_SECRET_KEY is not set"))?;
        (sealed, derive_key(secret_key, purpose::SEALING))
    } else if let Some(sealed) = stored.strip_prefix("aes256gcm:") {
        let secret_key = secret_key
            .ok_or_else(|| anyhow!("the key is encrypted and UMS_SECRET_KEY is not set"))?;
        // Sealed before keys were derived per purpose.
        (
            sealed,
            Sha256::digest(secret_key.expose_secret().as_bytes()).into(),
        )
    } else {
        bail!("unknown key encoding");
    };
    decrypt(&key, b"", &STANDARD.decode(sealed)?)
        .map_err(|_| anyhow!("UMS_SECRET_KEY does not open the stored key"))
}

/// AES-256-GCM under `key`, bound to `context` (authenticated, not encrypted): a random
/// nonce, then the ciphertext and its tag.
pub fn encrypt(key: &[u8; 32], context: &[u8], plain: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut nonce = [0u8; 12];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| anyhow!("random nonce"))?;
    let mut sealed = plain.to_vec();
    aead_key(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut sealed,
        )
        .map_err(|_| anyhow!("encrypting"))?;
    let mut output = nonce.to_vec();
    output.extend_from_slice(&sealed);
    Ok(output)
}

/// Opens what `encrypt` sealed under the same key and context.
pub fn decrypt(key: &[u8; 32], context: &[u8], sealed: &[u8]) -> anyhow::Result<Vec<u8>> {
    if sealed.len() < 12 {
        bail!("truncated ciphertext");
    }
    let (nonce, ciphertext) = sealed.split_at(12);
    let nonce: [u8; 12] = nonce.try_into().map_err(|_| anyhow!("bad nonce"))?;
    let mut ciphertext = ciphertext.to_vec();
    let plain = aead_key(key)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(context),
            &mut ciphertext,
        )
        .map_err(|_| anyhow!("the ciphertext does not open under this key"))?;
    Ok(plain.to_vec())
}

fn aead_key(key: &[u8; 32]) -> anyhow::Result<LessSafeKey> {
    let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| anyhow!("AES key"))?;
    Ok(LessSafeKey::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_key_material_opens_only_with_its_secret() {
        let secret = SecretString::from("s3cret".to_string());
        let sealed = seal(b"private bytes", Some(&secret)).unwrap();
        assert!(sealed.starts_with("aes256gcm-v2:"));
        assert!(!sealed.contains("private"));
        assert_eq!(unseal(&sealed, Some(&secret)).unwrap(), b"private bytes");
        let wrong = SecretString::from("other".to_string());
        assert!(unseal(&sealed, Some(&wrong)).is_err());
        assert!(unseal(&sealed, None).is_err());
    }

    #[test]
    fn each_purpose_gets_its_own_key_and_old_seals_still_open() {
        let secret = SecretString::from("s3cret".to_string());
        let sealing = derive_key(&secret, purpose::SEALING);
        assert_ne!(sealing, derive_key(&secret, purpose::AUDIT_CHAIN));
        assert_ne!(sealing, <[u8; 32]>::from(Sha256::digest(b"s3cret")));
        assert_eq!(sealing, derive_key(&secret, purpose::SEALING));
        // A value sealed the old way, under the secret's plain SHA-256.
        let old_key = aead_key(&Sha256::digest(b"s3cret").into()).unwrap();
        let mut sealed = b"older bytes".to_vec();
        old_key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([7; 12]),
                Aad::empty(),
                &mut sealed,
            )
            .unwrap();
        let mut stored = vec![7; 12];
        stored.extend_from_slice(&sealed);
        let stored = format!("aes256gcm:{}", STANDARD.encode(stored));
        assert_eq!(unseal(&stored, Some(&secret)).unwrap(), b"older bytes");
    }
}
