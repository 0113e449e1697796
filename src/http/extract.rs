//! Extractors: who is calling, from where, and the parsed body. A handler states what it
//! needs in its signature (`AuthUser`, `AdminUser`), so it cannot forget a check.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::{AUTHORIZATION, USER_AGENT};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::audit::{DeviceHints, Origin};
use crate::auth::tokens::{Claims, TokenError, TokenType};
use crate::error::AppError;
use crate::http::middleware::RequestId;
use crate::security::client_ip::client_ip;
use crate::state::AppState;
use crate::users::User;

/// Where a request came from: client IP (proxy-aware), user agent and request id.
#[derive(Debug, Clone)]
pub struct ClientOrigin(pub Origin);

impl FromRequestParts<AppState> for ClientOrigin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let ip = client_address(&parts.extensions, &parts.headers, state);
        let user_agent = parts
            .headers
            .get(USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(512).collect());
        let request_id = parts.extensions.get::<RequestId>().map(|id| id.0.clone());
        let header = |name: &str, limit: usize| {
            parts
                .headers
                .get(name)
                .and_then(|value| value.to_str().ok())
                .filter(|value| !crate::text::has_control_character(value))
                .map(|value| value.chars().take(limit).collect::<String>())
        };
        let client_hints = match (header("sec-ch-ua", 256), header("sec-ch-ua-mobile", 8)) {
            (None, None) => None,
            (brands, mobile) => Some(format!(
                "{};{}",
                brands.unwrap_or_default(),
                mobile.unwrap_or_default()
            )),
        };
        let device = DeviceHints {
            device_id: header("x-ums-device-id", 128),
            accept_language: header("accept-language", 128),
            client_hints,
            platform: header("sec-ch-ua-platform", 64),
        };
        Ok(ClientOrigin(Origin {
            ip,
            user_agent,
            request_id,
            device,
        }))
    }
}

/// The client's address (see `security::client_ip`), if the connection carries one.
pub fn client_address(
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
    state: &AppState,
) -> Option<String> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(peer)| {
            let config = &state.config;
            client_ip(
                peer.ip(),
                headers,
                config.proxy_header,
                &config.trusted_proxies,
            )
            .to_string()
        })
}

/// An access token verified by the rate limiter for this request, and the account of its
/// live session.
#[derive(Debug, Clone)]
pub struct VerifiedAccess {
    pub claims: Claims,
    pub user: User,
}

/// The bearer token of the `Authorization` header, if any.
pub fn bearer_token(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A caller with a valid access token whose session is live and whose account is active.
/// The account is read from the store on every request, never trusted from the token.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: User,
    pub claims: Claims,
}

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token =
            bearer_token(&parts.headers).ok_or(AppError::Unauthorized("Missing bearer token."))?;
        let now = state.now();
        let (claims, user) = match parts.extensions.get::<VerifiedAccess>().cloned() {
            Some(VerifiedAccess { claims, user }) => (claims, user),
            None => {
                let claims = verify_access_token(state, token, now).await?;
                let user = crate::auth::sessions::live_session_user(state, &claims, now)
                    .await?
                    .ok_or(AppError::Unauthorized("The session has ended."))?;
                (claims, user)
            }
        };
        if let Some(slot) = parts
            .extensions
            .get::<crate::http::middleware::RequestUser>()
        {
            slot.set(user.id);
        }
        Ok(AuthUser { user, claims })
    }
}

impl AuthUser {
    /// The session proved a second factor (its `amr` says `mfa`).
    pub fn proved_second_factor(&self) -> bool {
        self.claims.amr.iter().any(|method| method == "mfa")
    }

    /// While admins must have a second factor (`UMS_REQUIRE_MFA_FOR_ADMINS`), an admin acts
    /// as one only in a session that proved it: not a user promoted in a password-only
    /// session, nor a session older than the policy.
    pub fn check_admin_policy(&self, state: &AppState) -> Result<(), AppError> {
        if self
            .user
            .must_have_second_factor(&state.config.second_factors)
            && !self.proved_second_factor()
        {
            return Err(if self.user.mfa_enabled {
                AppError::StepUpRequired
            } else {
                AppError::MfaEnrollmentRequired
            });
        }
        Ok(())
    }
}

pub(crate) async fn verify_access_token(
    state: &AppState,
    token: &str,
    now: i64,
) -> Result<Claims, AppError> {
    match state.keys.verify(token, TokenType::Access, now) {
        Ok(claims) => Ok(claims),
        // Another instance may have rotated keys since this one loaded them; a made-up kid
        // gets one reload in ten seconds, not one a request.
        Err(TokenError::UnknownKey) => {
            let algorithm = state.config.jwt_algorithm;
            if !state
                .keys
                .reload_for_unknown_kid(&state.store, algorithm, now)
                .await?
            {
                return Err(AppError::from(TokenError::UnknownKey));
            }
            state
                .keys
                .verify(token, TokenType::Access, now)
                .map_err(AppError::from)
        }
        Err(error) => Err(AppError::from(error)),
    }
}

/// The caller when the request carries a bearer token (which must then be valid), else
/// `None`: for routes that also accept another proof (an enrolment's `mfa_token`).
pub struct MaybeAuthUser(pub Option<AuthUser>);

impl FromRequestParts<AppState> for MaybeAuthUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        if parts.headers.get(AUTHORIZATION).is_none() {
            return Ok(MaybeAuthUser(None));
        }
        Ok(MaybeAuthUser(Some(
            AuthUser::from_request_parts(parts, state).await?,
        )))
    }
}

/// A system administrator (`is_admin`), checked against the store on every request; while
/// `UMS_REQUIRE_MFA_FOR_ADMINS` holds, in a session that proved a second factor.
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let caller = AuthUser::from_request_parts(parts, state).await?;
        if !caller.user.is_admin() {
            return Err(AppError::Forbidden("Administrator rights are required."));
        }
        caller.check_admin_policy(state)?;
        Ok(AdminUser(caller))
    }
}

/// Path parameters; one that does not parse (a word where an id goes) is a 404 problem.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(value)| ApiPath(value))
            .map_err(|_| AppError::NotFound)
    }
}

/// The user `{id}` of a route, reachable by that user and by system admins. Anyone else gets
/// 403 whether or not the user exists.
pub struct SelfOrAdmin {
    pub caller: AuthUser,
    pub target_id: i64,
}

impl FromRequestParts<AppState> for SelfOrAdmin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let caller = AuthUser::from_request_parts(parts, state).await?;
        let target = ApiPath::<i64>::from_request_parts(parts, state).await;
        match target {
            Ok(ApiPath(target_id)) if caller.user.id == target_id => {
                Ok(SelfOrAdmin { caller, target_id })
            }
            Ok(ApiPath(target_id)) if caller.user.is_admin() => {
                caller.check_admin_policy(state)?;
                Ok(SelfOrAdmin { caller, target_id })
            }
            Err(error) if caller.user.is_admin() => Err(error),
            _ => Err(AppError::Forbidden("You may only act on your own account.")),
        }
    }
}

/// Declares a credential endpoint: a client IP blocked for repeated failures gets 429 here,
/// before any credential is looked at.
pub struct CredentialGuard;

impl FromRequestParts<AppState> for CredentialGuard {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let ClientOrigin(origin) = ClientOrigin::from_request_parts(parts, state).await?;
        crate::security::check_ip(state, &origin).await?;
        Ok(CredentialGuard)
    }
}
