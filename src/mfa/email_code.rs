//! The emailed one-time code that confirms a risky sign-in of an account without a second
//! factor: six digits, sent to the verified address, kept only as its hash in the sign-in's
//! challenge (which dies after three wrong answers, like every challenge).

use serde_json::json;

use crate::clock::Millis;
use crate::error::AppError;
use crate::mail::EmailKind;
use crate::security::risk::SignInRisk;
use crate::state::AppState;
use crate::store::Connection;
use crate::users::User;

pub fn new_code() -> String {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    format!("{:06}", OsRng.next_u32() % 1_000_000)
}

/// Whether `code` is the one whose hash is `expected_hash`, compared in constant time.
pub fn matches(code: &str, expected_hash: &str) -> bool {
    use subtle::ConstantTimeEq;
    let typed: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let hash = crate::security::secrets::hash_token(&typed);
    !expected_hash.is_empty() && bool::from(hash.as_bytes().ct_eq(expected_hash.as_bytes()))
}

/// Sends the code, with why it was asked for, in the sign-in's transaction.
pub async fn send(
    connection: &mut Connection,
    state: &AppState,
    user: &User,
    code: &str,
    risk: &SignInRisk,
    now: Millis,
) -> Result<(), AppError> {
    state
        .outbox
        .enqueue(
            connection,
            user,
            &user.email,
            EmailKind::VerificationCode,
            json!({
                "code": code,
                "place": risk.place.as_ref().map(|place| place.label()).unwrap_or_else(|| "unknown".into()),
                "explanation": risk.explanation(),
            }),
            now,
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_match_only_themselves() {
        let code = new_code();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let hash = crate::security::secrets::hash_token(&code);
        assert!(matches(&code, &hash));
        assert!(matches(&format!(" {} {} ", &code[..3], &code[3..]), &hash));
        assert!(!matches("000000x", &hash));
        assert!(!matches(&code, ""));
    }
}
