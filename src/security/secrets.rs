//! Random secrets and how they are kept: 256 random bits, URL-safe, stored only as their
//! SHA-256 (a random value of that size needs no salt or slow hash).

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// 256 random bits, URL-safe: refresh-token ids, session ids, reset and verification tokens.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Tokens are stored only as their SHA-256; 256 random bits need no salt or slow hash.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_tokens_carry_256_bits_and_never_repeat() {
        let a = random_token();
        assert_eq!(URL_SAFE_NO_PAD.decode(&a).unwrap().len(), 32);
        assert_ne!(a, random_token());
        assert_eq!(hash_token(&a).len(), 64);
    }
}
