//! The one error type of the service's rules: what a store, a service or a handler can
//! answer. `http/error.rs` turns it into problem+json, in one place.

use std::collections::BTreeMap;

/// Problems of a request's fields, by field name: every problem at once, not the first.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

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
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
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
