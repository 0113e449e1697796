//! TOTP (RFC 6238): the shared secret, its `otpauth://` URI and QR code, which 30-second
//! step a code belongs to, and the `totp_factors` table.
//!
//! A code is accepted once: the step it matched is stored, and only a later step is accepted
//! after it, in one conditional UPDATE, so two requests racing with one code cannot both win.

use crate::clock::{Millis, Timestamp};
use crate::store::{Connection, StoreError};

pub const STEP_SECONDS: u64 = 30;
const DIGITS: usize = 6;
const ISSUER: &str = "UMS";

/// A fresh 160-bit secret (RFC 4226's recommended length for HMAC-SHA1).
pub fn new_secret() -> Vec<u8> {
    use argon2::password_hash::rand_core::{OsRng, RngCore};
    let mut secret = vec![0u8; 20];
    OsRng.fill_bytes(&mut secret);
    secret
}

fn totp(secret: &[u8], account: &str) -> Result<totp_rs::Totp, totp_rs::TotpError> {
    totp_rs::Builder::new()
        .with_secret(secret.to_vec())
        .with_digits(DIGITS as u8)
        .with_skew(1)
        .with_step_duration(STEP_SECONDS)
        .with_issuer(Some(ISSUER))
        .with_account_name(account.replace(':', "_"))
        .build()
}

/// What an authenticator app needs to enrol: the secret in base32, the `otpauth://` URI and
/// that URI as a QR code (SVG).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Enrollment {
    pub secret: String,
    pub otpauth_uri: String,
    pub qr_svg: String,
}

pub fn enrollment(secret: &[u8], account: &str) -> anyhow::Result<Enrollment> {
    let totp = totp(secret, account).map_err(|error| anyhow::anyhow!("TOTP: {error:?}"))?;
    let otpauth_uri = totp
        .to_url()
        .map_err(|error| anyhow::anyhow!("otpauth URI: {error:?}"))?;
    let qr =
        qrcode::QrCode::with_error_correction_level(otpauth_uri.as_bytes(), qrcode::EcLevel::M)?;
    let qr_svg = qr
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .build();
    Ok(Enrollment {
        secret: totp_rs::Secret::from(secret.to_vec()).to_base32(),
        otpauth_uri,
        qr_svg,
    })
}

/// The time step `code` is right for at `now`, within one step either side (a phone's clock
/// drifts); `None` if it is wrong or malformed. The comparison is constant-time.
pub fn matching_step(secret: &[u8], code: &str, now: Millis) -> Option<u64> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) || now < 0 {
        return None;
    }
    let totp = totp(secret, "").ok()?;
    totp.check(&code, (now / 1000) as u64)
}

/// The code of `secret` at `now` (tests and the enrolment of test users compute it).
pub fn code_at(secret: &[u8], now: Millis) -> Option<String> {
    let totp = totp(secret, "").ok()?;
    Some(totp.generate((now.max(0) / 1000) as u64).to_string())
}

#[derive(Debug, sqlx::FromRow)]
pub struct TotpRow {
    pub secret_sealed: String,
    pub confirmed_at: Option<Timestamp>,
    pub last_used_step: i64,
}

/// Starts (or restarts) an enrolment: a new sealed secret, not yet confirmed. A confirmed
/// factor is never replaced here (the caller refuses first).
pub async fn begin(
    connection: &mut Connection,
    user_id: i64,
    secret_sealed: &str,
    now: Millis,
) -> Result<(), StoreError> {
    crate::execute!(
        connection,
        sqlx::query(
            "INSERT INTO totp_factors (user_id, secret_sealed, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (user_id) DO UPDATE SET secret_sealed = $2, created_at = $3, \
             last_used_step = 0 WHERE totp_factors.confirmed_at IS NULL",
        )
        .bind(user_id)
        .bind(secret_sealed)
        .bind(Timestamp::from(now))
    )?;
    Ok(())
}

pub async fn find(
    connection: &mut Connection,
    user_id: i64,
) -> Result<Option<TotpRow>, StoreError> {
    Ok(crate::with_db!(connection, |db| sqlx::query_as::<
        _,
        TotpRow,
    >(
        "SELECT secret_sealed, confirmed_at, last_used_step FROM totp_factors WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(db)
    .await)?)
}

/// Spends `step` for this user's factor: true only if it is later than every step used
/// before. Confirms an enrolment on its first code.
pub async fn spend_step(
    connection: &mut Connection,
    user_id: i64,
    step: u64,
    now: Millis,
) -> Result<bool, StoreError> {
    let affected = crate::execute!(
        connection,
        sqlx::query(
            "UPDATE totp_factors SET last_used_step = $2, \
             confirmed_at = COALESCE(confirmed_at, $3) \
             WHERE user_id = $1 AND last_used_step < $2",
        )
        .bind(user_id)
        .bind(step as i64)
        .bind(Timestamp::from(now))
    )?;
    Ok(affected == 1)
}

pub async fn remove(connection: &mut Connection, user_id: i64) -> Result<bool, StoreError> {
    let affected = crate::execute!(
        connection,
        sqlx::query("DELETE FROM totp_factors WHERE user_id = $1").bind(user_id)
    )?;
    Ok(affected == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B: the SHA-1 secret "12345678901234567890", 8-digit codes, of which
    /// the last six digits are the 6-digit code.
    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (seconds, eight_digits) in [
            (59_i64, "94287082"),
            (1_111_111_109, "07081804"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
        ] {
            let code = code_at(secret, seconds * 1000).unwrap();
            assert_eq!(code, eight_digits[2..], "at {seconds}");
            assert_eq!(
                matching_step(secret, &code, seconds * 1000),
                Some(seconds as u64 / STEP_SECONDS)
            );
        }
    }

    #[test]
    fn a_code_is_good_one_step_either_side_and_no_further() {
        let secret = new_secret();
        let now = 1_800_000_000_000;
        let code = code_at(&secret, now).unwrap();
        let step = (now / 1000) as u64 / STEP_SECONDS;
        assert_eq!(matching_step(&secret, &code, now + 30_000), Some(step));
        assert_eq!(matching_step(&secret, &code, now - 30_000), Some(step));
        assert_eq!(matching_step(&secret, &code, now + 60_000), None);
        assert_eq!(matching_step(&secret, &code, now - 60_000), None);
        let spaced = format!("{} {}", &code[..3], &code[3..]);
        assert_eq!(matching_step(&secret, &spaced, now), Some(step));
        for bad in ["", "12345", "1234567", "abcdef", "１２３４５６"] {
            assert_eq!(matching_step(&secret, bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn an_enrolment_carries_the_secret_in_uri_and_qr_code() {
        let secret = new_secret();
        let enrollment = enrollment(&secret, "alice").unwrap();
        assert_eq!(
            totp_rs::Secret::try_from_base32(&enrollment.secret)
                .unwrap()
                .as_ref(),
            secret.as_slice()
        );
        assert!(
            enrollment
                .otpauth_uri
                .starts_with("otpauth://totp/UMS:alice?secret="),
            "{}",
            enrollment.otpauth_uri
        );
        assert!(enrollment.otpauth_uri.contains("issuer=UMS"));
        assert!(enrollment.qr_svg.contains("<svg"));
    }
}
