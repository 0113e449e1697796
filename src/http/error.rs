//! The one error type. Every failure leaves the service as RFC 9457 problem+json with a
//! stable `code`; the causes of 5xx answers are logged and never sent.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

pub use crate::error::{AppError, FieldErrors};

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Validation(_) | AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized(_) | AppError::SecondStep(_) => StatusCode::UNAUTHORIZED,
            AppError::MfaEnrollmentRequired
            | AppError::PasswordResetRequired
            | AppError::StepUpRequired
            | AppError::ReauthenticationRequired => StatusCode::FORBIDDEN,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::Conflict { .. } => StatusCode::CONFLICT,
            AppError::Locked { .. } => StatusCode::LOCKED,
            AppError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A stable machine-readable code, also the last segment of the problem `type`.
    pub fn code(&self) -> &'static str {
        match self {
            AppError::Validation(_) => "validation_failed",
            AppError::BadRequest(_) => "bad_request",
            AppError::Unauthorized(_) => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound => "not_found",
            AppError::MethodNotAllowed => "method_not_allowed",
            AppError::Conflict { .. } => "conflict",
            AppError::Locked { .. } => "account_locked",
            AppError::TooManyRequests { .. } => "too_many_requests",
            AppError::PayloadTooLarge => "payload_too_large",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::Unavailable => "service_unavailable",
            AppError::SecondStep(step) => step.kind.code(),
            AppError::MfaEnrollmentRequired => "mfa_enrollment_required",
            AppError::StepUpRequired => "step_up_required",
            AppError::ReauthenticationRequired => "reauthentication_required",
            AppError::PasswordResetRequired => "password_reset_required",
            AppError::Internal(_) => "internal_error",
        }
    }

    pub(crate) fn detail(&self) -> String {
        match self {
            AppError::Validation(_) => "The request has invalid fields.".into(),
            AppError::BadRequest(detail) => detail.clone(),
            AppError::Unauthorized(detail) | AppError::Forbidden(detail) => (*detail).into(),
            AppError::NotFound => "The resource does not exist.".into(),
            AppError::MethodNotAllowed => "This method is not allowed here.".into(),
            AppError::Conflict { message, .. } => (*message).into(),
            AppError::Locked { .. } => {
                "The account is locked after repeated failed logins; try again later or reset the password."
                    .into()
            }
            AppError::TooManyRequests { .. } => "Too many requests; slow down.".into(),
            AppError::PayloadTooLarge => "The request body is larger than 1 MiB.".into(),
            AppError::UnsupportedMediaType => {
                "The request body must be JSON (Content-Type: application/json).".into()
            }
            AppError::Unavailable => "The service is temporarily unavailable.".into(),
            AppError::SecondStep(step) => match step.kind {
                crate::error::SecondStepKind::MfaRequired => {
                    "The password was right; prove a second factor with POST /api/auth/login/mfa."
                        .into()
                }
                crate::error::SecondStepKind::VerificationRequired => {
                    "This sign-in looks unusual: confirm it with the code emailed to the account's address, with POST /api/auth/login/mfa (method email_code)."
                        .into()
                }
                crate::error::SecondStepKind::ConsentRequired => {
                    "The password was right; accept the terms and privacy notice in force (GET /api/consents) with POST /api/auth/login/consent."
                        .into()
                }
                crate::error::SecondStepKind::EnrollmentRequired => {
                    "This account must enrol a second factor before signing in: enrol one with the mfa_token under /api/auth/mfa/, then prove it with POST /api/auth/login/mfa."
                        .into()
                }
            },
            AppError::MfaEnrollmentRequired => {
                "A second factor is required here; enrol one under /api/auth/mfa/ first.".into()
            }
            AppError::StepUpRequired => {
                "This needs a recent proof of a second factor: POST /api/auth/step-up first.".into()
            }
            AppError::ReauthenticationRequired => {
                "This needs a recent sign-in: sign in again first.".into()
            }
            AppError::PasswordResetRequired => {
                "A sign-in to this account was reported as not the owner's: reset the password (the link was emailed) before signing in."
                    .into()
            }
            AppError::Internal(_) => "An internal error occurred.".into(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            AppError::Locked {
                retry_after_seconds,
            }
            | AppError::TooManyRequests {
                retry_after_seconds,
            } => Some((*retry_after_seconds).max(1)),
            AppError::Unavailable => Some(5),
            _ => None,
        }
    }
}

/// RFC 9457 problem details.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<FieldErrors>,
    /// With `mfa_required` and `mfa_enrollment_required`: carries the sign-in on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfa_token: Option<String>,
    /// With `mfa_token`: the methods that can take the next step (`totp`,
    /// `recovery_code`, `webauthn`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub methods: Option<Vec<&'static str>>,
    /// With `mfa_token`, when a passkey can answer: the WebAuthn request options
    /// (`navigator.credentials.get`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub webauthn: Option<serde_json::Value>,
    /// With `mfa_token`: seconds it stays valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let AppError::Internal(cause) = &self {
            // One line: the cause chain, never a backtrace (`{:?}` of an anyhow error prints
            // one when RUST_BACKTRACE is set). The request span adds the request id.
            tracing::error!(error = %format!("{cause:#}"), "request failed");
        }
        let errors = match &self {
            AppError::Validation(errors) => Some(errors.clone()),
            AppError::Conflict { field, message } => Some(FieldErrors::from([(
                (*field).to_string(),
                vec![(*message).to_string()],
            )])),
            _ => None,
        };
        let mut problem = Problem {
            problem_type: format!("https://ums.dev/problems/{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.detail(),
            code: self.code().to_string(),
            errors,
            mfa_token: None,
            methods: None,
            webauthn: None,
            expires_in: None,
        };
        if let AppError::SecondStep(step) = self {
            let step = *step;
            problem.mfa_token = Some(step.mfa_token);
            problem.methods = Some(step.methods);
            problem.webauthn = step.webauthn;
            problem.expires_in = Some(step.expires_in);
            return finish_problem(status, problem, None);
        }
        let retry_after = self.retry_after();
        finish_problem(status, problem, retry_after)
    }
}

fn finish_problem(status: StatusCode, problem: Problem, retry_after: Option<u64>) -> Response {
    let carries_token = problem.mfa_token.is_some();
    let mut response = (status, Json(problem)).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if status == StatusCode::UNAUTHORIZED {
        // RFC 6750: a 401 names the scheme that would be accepted.
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"ums\""),
        );
    }
    if carries_token {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
