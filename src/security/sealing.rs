//! Secrets at rest (signing keys, queued email bodies): AES-256-GCM under a key derived from
//! `UMS_SECRET_KEY`, or plainly encoded when no secret key is set.

use anyhow::{anyhow, bail};
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// Sealed text: `plain:<base64>` or, with `UMS_SECRET_KEY`,
/// `aes256gcm:<base64 nonce||ciphertext>` under a key derived from the secret.
pub fn seal(plain: &[u8], secret_key: Option<&SecretString>) -> anyhow::Result<String> {
    let Some(secret_key) = secret_key else {
        return Ok(format!("plain:{}", STANDARD.encode(plain)));
    };
    let key = aead_key(secret_key)?;
    let mut nonce = [0u8; 12];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| anyhow!("random nonce"))?;
    let mut sealed = plain.to_vec();
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key(nonce),
        Aad::empty(),
        &mut sealed,
    )
    .map_err(|_| anyhow!("encrypting key material"))?;
    let mut output = nonce.to_vec();
    output.extend_from_slice(&sealed);
    Ok(format!("aes256gcm:{}", STANDARD.encode(output)))
}

pub fn unseal(stored: &str, secret_key: Option<&SecretString>) -> anyhow::Result<Vec<u8>> {
    if let Some(plain) = stored.strip_prefix("plain:") {
        return Ok(STANDARD.decode(plain)?);
    }
    let Some(sealed) = stored.strip_prefix("aes256gcm:") else {
        bail!("unknown key encoding");
    };
    let secret_key =
        secret_key.ok_or_else(|| anyhow!("the key is encrypted and UMS_SECRET_KEY is not set"))?;
    let mut bytes = STANDARD.decode(sealed)?;
    if bytes.len() < 12 {
        bail!("truncated key material");
    }
    let ciphertext = bytes.split_off(12);
    let nonce: [u8; 12] = bytes.try_into().map_err(|_| anyhow!("bad nonce"))?;
    let mut ciphertext = ciphertext;
    let plain = aead_key(secret_key)?
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut ciphertext,
        )
        .map_err(|_| anyhow!("UMS_SECRET_KEY does not open the stored key"))?;
    Ok(plain.to_vec())
}

fn aead_key(secret_key: &SecretString) -> anyhow::Result<LessSafeKey> {
    let digest = Sha256::digest(secret_key.expose_secret().as_bytes());
    let key = UnboundKey::new(&AES_256_GCM, &digest).map_err(|_| anyhow!("AES key"))?;
    Ok(LessSafeKey::new(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_key_material_opens_only_with_its_secret() {
        let secret = SecretString::from("s3cret".to_string());
        let sealed = seal(b"private bytes", Some(&secret)).unwrap();
        assert!(sealed.starts_with("aes256gcm:"));
        assert!(!sealed.contains("private"));
        assert_eq!(unseal(&sealed, Some(&secret)).unwrap(), b"private bytes");
        let wrong = SecretString::from("other".to_string());
        assert!(unseal(&sealed, Some(&wrong)).is_err());
        assert!(unseal(&sealed, None).is_err());
    }
}
