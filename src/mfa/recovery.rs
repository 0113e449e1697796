//! Recovery codes: ten single-use codes shown once, kept only as their SHA-256, for the day
//! the phone or the passkey is lost. Each carries 80 random bits, so a plain hash is enough
//! (like the service's other random tokens), and a lookup by hash compares nothing itself.

use crate::clock::{Millis, Timestamp};
use crate::security::secrets::hash_token;
use crate::store::{Connection, StoreError};

pub const COUNT: usize = 10;
/// 32 symbols, without the look-alikes 0/o and 1/l: five bits each.
const ALPHABET: &[u8; 32] = b"abcdefghijkmnpqrstuvwxyz23456789";
const SYMBOLS: usize = 16;

/// Ten new codes, `xxxx-xxxx-xxxx-xxxx`.
pub fn generate() -> Vec<String> {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    (0..COUNT)
        .map(|_| {
            let mut bytes = [0u8; SYMBOLS];
            OsRng.fill_bytes(&mut bytes);
            let symbols: Vec<char> = bytes
                .iter()
                .map(|byte| ALPHABET[(byte & 31) as usize] as char)
                .collect();
            symbols
                .chunks(4)
                .map(|group| group.iter().collect::<String>())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// A typed code as stored: lower case, without spaces or dashes.
pub fn normalize(code: &str) -> String {
    code.chars()
        .filter(|c| !c.is_whitespace() && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether `code` could be a recovery code at all (and not a six-digit TOTP code).
pub fn looks_like_one(code: &str) -> bool {
    let code = normalize(code);
    code.len() == SYMBOLS && code.bytes().all(|b| ALPHABET.contains(&b))
}

/// Replaces the user's codes with `codes` (voiding every old one).
pub async fn replace(
    connection: &mut Connection,
    user_id: i64,
    codes: &[String],
    now: Millis,
) -> Result<(), StoreError> {
    remove_all(connection, user_id).await?;
    for code in codes {
        crate::execute!(
            connection,
            sqlx::query(
                "INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
            )
            .bind(user_id)
            .bind(hash_token(&normalize(code)))
            .bind(Timestamp::from(now))
        )?;
    }
    Ok(())
}

/// Spends one code: true if it was the user's and unused (exactly one of two racing uses wins).
pub async fn spend(
    connection: &mut Connection,
    user_id: i64,
    code: &str,
    now: Millis,
) -> Result<bool, StoreError> {
    let affected = crate::execute!(
        connection,
        sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(user_id)
        .bind(hash_token(&normalize(code)))
        .bind(Timestamp::from(now))
    )?;
    Ok(affected == 1)
}

pub async fn remaining(connection: &mut Connection, user_id: i64) -> Result<i64, StoreError> {
    Ok(crate::with_db!(connection, |db| sqlx::query_scalar(
        "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(user_id)
    .fetch_one(db)
    .await)?)
}

pub async fn remove_all(connection: &mut Connection, user_id: i64) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1").bind(user_id)
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ten_distinct_codes_of_eighty_bits_that_survive_retyping() {
        let codes = generate();
        assert_eq!(codes.len(), COUNT);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), COUNT);
        for code in &codes {
            assert_eq!(code.len(), 19, "{code}");
            assert!(looks_like_one(code), "{code}");
            let retyped = code.to_uppercase().replace('-', " ");
            assert_eq!(normalize(&retyped), normalize(code));
        }
        assert!(!looks_like_one("123456"));
        assert!(!looks_like_one("abcd-efgh-jkmn-pqr0"), "0 is not a symbol");
    }
}
