//! The one error type of the service's rules: what a store, a service or a handler can
//! answer. `http/error.rs` turns it into problem+json, in one place.

use std::collections::BTreeMap;

/// Problems of a request's fields, by field name: every problem at once, not the first.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

/// Collects the problems of every field (a body, a query, a profile change), then answers
/// them all in one 400: the one collector the rules and the web layer share.
#[derive(Debug, Default)]
pub struct FieldCheck {
    errors: FieldErrors,
}

impl FieldCheck {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value of `result`, or `None` with its problem noted under `field`.
    pub fn check<T, E: ToString>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        result
            .map_err(|message| self.add(field, message.to_string()))
            .ok()
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .entry(field.to_string())
            .or_default()
            .push(message.into());
    }

    /// `value` (built from the checked fields) when nothing was noted, else the 400 with
    /// every problem.
    pub fn finish_with<T>(self, value: Option<T>) -> Result<T, AppError> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(AppError::Validation(self.errors)),
        }
    }

    /// `Ok` when nothing was noted, else the 400 with every problem.
    pub fn finish(self) -> Result<(), AppError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(AppError::Validation(self.errors))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("validation failed")]
    Validation(FieldErrors),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("unauthorized: {0}")]
    Unauthorized(&'static str),
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("conflict on {field}")]
    Conflict {
        field: &'static str,
        message: &'static str,
    },
    #[error("account locked")]
    Locked { retry_after_seconds: u64 },
    #[error("too many requests")]
    TooManyRequests { retry_after_seconds: u64 },
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("service unavailable")]
    Unavailable,
    /// A right password, and one more step to take: a second factor, or a first enrolment.
    #[error("{} ", .0.kind.code())]
    SecondStep(Box<SecondStep>),
    /// A lab (or the admin policy) requires a second factor that the account lacks.
    #[error("second factor enrolment required")]
    MfaEnrollmentRequired,
    /// The session must prove a second factor again (`POST /api/auth/step-up`) first.
    #[error("step-up required")]
    StepUpRequired,
    /// "This wasn't me" was reported: no sign-in until the password is reset.
    #[error("password reset required")]
    PasswordResetRequired,
    /// The change needs a recent sign-in: sign in again first.
    #[error("reauthentication required")]
    ReauthenticationRequired,
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// What a sign-in that needs one more step answers: the `mfa_token` that carries it on, the
/// methods that can take it, and, when a passkey can, the WebAuthn request options.
#[derive(Debug)]
pub struct SecondStep {
    pub kind: SecondStepKind,
    pub mfa_token: String,
    pub methods: Vec<&'static str>,
    pub webauthn: Option<serde_json::Value>,
    pub expires_in: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecondStepKind {
    /// Prove a second factor (`POST /api/auth/login/mfa`).
    MfaRequired,
    /// Enrol a first factor with the token, then prove it.
    EnrollmentRequired,
    /// A risky sign-in: answer with the code emailed to the verified address.
    VerificationRequired,
    /// Accept the terms or privacy notice in force (`POST /api/auth/login/consent`).
    ConsentRequired,
}

impl SecondStepKind {
    pub fn code(self) -> &'static str {
        match self {
            SecondStepKind::MfaRequired => "mfa_required",
            SecondStepKind::EnrollmentRequired => "mfa_enrollment_required",
            SecondStepKind::VerificationRequired => "verification_required",
            SecondStepKind::ConsentRequired => "consent_required",
        }
    }
}

impl AppError {
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let mut errors = FieldErrors::new();
        errors.insert(field.to_string(), vec![message.into()]);
        AppError::Validation(errors)
    }

    pub fn conflict(field: &'static str, message: &'static str) -> Self {
        AppError::Conflict { field, message }
    }
}

/// The rules' reading of a storage error: the database away is a 503 to retry, a collision on
/// a key the caller chose is a 409 naming the field, anything else an internal error
/// (logged, never shown).
impl From<crate::store::StoreError> for AppError {
    fn from(error: crate::store::StoreError) -> Self {
        use crate::store::{StoreError, UniqueKey};
        match error {
            StoreError::Database(error) if crate::store::is_unavailable(&error) => {
                tracing::warn!(error = %error, "database unavailable");
                AppError::Unavailable
            }
            StoreError::Database(error) => AppError::Internal(anyhow::Error::new(error)),
            StoreError::Duplicate(UniqueKey::Username) => {
                AppError::conflict("username", "a user with this username already exists")
            }
            StoreError::Duplicate(UniqueKey::Email) => {
                AppError::conflict("email", "a user with this email already exists")
            }
            StoreError::Duplicate(UniqueKey::LabCode) => {
                AppError::conflict("code", "a lab with this code already exists")
            }
            StoreError::Duplicate(UniqueKey::Membership) => {
                AppError::conflict("user_id", "the user is already a member of this lab")
            }
            StoreError::Duplicate(UniqueKey::PasskeyCredential) => {
                AppError::conflict("credential", "this passkey is registered already")
            }
            error @ (StoreError::Duplicate(UniqueKey::Other) | StoreError::Corrupt(_)) => {
                AppError::Internal(anyhow::Error::new(error))
            }
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        crate::store::StoreError::from(error).into()
    }
}
