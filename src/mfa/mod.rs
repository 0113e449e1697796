//! Second factors: TOTP, recovery codes and passkeys. What a user has enrolled, how each is
//! enrolled, proven and removed, and the challenges that carry a sign-in from its password
//! to its second step. The sign-in flows themselves (login, step-up, passwordless) live in
//! `auth/second_factor.rs` and call `prove` here.

pub mod challenges;
pub mod email_code;
pub mod passkeys;
pub mod recovery;
pub mod routes;
pub mod service;
pub mod totp;

use serde::{Deserialize, Serialize};

use crate::store::{Connection, StoreError};

/// A way to prove a second factor (the contract's `methods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    Totp,
    RecoveryCode,
    Webauthn,
    /// A one-time code emailed to the verified address: how a risky sign-in without a second
    /// factor confirms itself (not a second factor).
    EmailCode,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Totp => "totp",
            Method::RecoveryCode => "recovery_code",
            Method::Webauthn => "webauthn",
            Method::EmailCode => "email_code",
        }
    }

    /// Its RFC 8176 method: a one-time password (a TOTP or recovery code), or a
    /// hardware-bound key (a passkey, with its user verification).
    pub fn amr(self) -> &'static str {
        match self {
            Method::Totp | Method::RecoveryCode | Method::EmailCode => "otp",
            Method::Webauthn => "hwk",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Method::Totp => "an authenticator app (TOTP)",
            Method::RecoveryCode => "recovery codes",
            Method::Webauthn => "a passkey",
            Method::EmailCode => "a code by email",
        }
    }
}

/// What a user has enrolled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Factors {
    /// A confirmed TOTP authenticator.
    pub totp: bool,
    pub passkeys: i64,
    pub recovery_codes_left: i64,
}

impl Factors {
    /// Whether the account has a second factor (recovery codes back one up; alone they
    /// are none).
    pub fn any(&self) -> bool {
        self.totp || self.passkeys > 0
    }

    /// The methods that can prove a second factor now.
    pub fn methods(&self) -> Vec<Method> {
        let mut methods = Vec::new();
        if self.totp {
            methods.push(Method::Totp);
        }
        if self.any() && self.recovery_codes_left > 0 {
            methods.push(Method::RecoveryCode);
        }
        if self.passkeys > 0 {
            methods.push(Method::Webauthn);
        }
        methods
    }
}

pub async fn factors_of(connection: &mut Connection, user_id: i64) -> Result<Factors, StoreError> {
    let (totp, passkeys, recovery_codes_left): (i64, i64, i64) =
        crate::with_db!(connection, |db| sqlx::query_as(
            "SELECT \
             (SELECT COUNT(*) FROM totp_factors WHERE user_id = $1 AND confirmed_at IS NOT NULL), \
             (SELECT COUNT(*) FROM passkeys WHERE user_id = $1), \
             (SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL)",
        )
        .bind(user_id)
        .fetch_one(db)
        .await)?;
    Ok(Factors {
        totp: totp > 0,
        passkeys,
        recovery_codes_left,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovery_codes_alone_are_no_second_factor() {
        let codes_only = Factors {
            recovery_codes_left: 10,
            ..Factors::default()
        };
        assert!(!codes_only.any());
        assert!(codes_only.methods().is_empty());
        let totp = Factors {
            totp: true,
            recovery_codes_left: 3,
            ..Factors::default()
        };
        assert_eq!(totp.methods(), [Method::Totp, Method::RecoveryCode]);
        let passkey_used_up_codes = Factors {
            passkeys: 2,
            ..Factors::default()
        };
        assert_eq!(passkey_used_up_codes.methods(), [Method::Webauthn]);
    }

    #[test]
    fn methods_name_their_rfc_8176_values() {
        assert_eq!(Method::Totp.amr(), "otp");
        assert_eq!(Method::RecoveryCode.amr(), "otp");
        assert_eq!(Method::Webauthn.amr(), "hwk");
    }
}
