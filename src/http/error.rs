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
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
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
            AppError::Internal(_) => "internal_error",
        }
    }

    fn detail(&self) -> String {
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
        let problem = Problem {
            problem_type: format!("https://ums.dev/problems/{}", self.code()),
            title: status.canonical_reason().unwrap_or("Error").to_string(),
            status: status.as_u16(),
            detail: self.detail(),
            code: self.code().to_string(),
            errors,
        };
        let mut response = (status, Json(problem)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if status == StatusCode::UNAUTHORIZED {
            // RFC 6750: a 401 names the scheme that would be accepted.
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"ums\""),
            );
        }
        response
    }
}
