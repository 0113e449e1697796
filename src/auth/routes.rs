//! HTTP handlers of `/api/auth` and the JWKS: parse, call the service, shape the answer.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::auth::adaptive::{NotMeAnswer, NotMeRequest};
use crate::auth::consent::{self, ConsentRequest, CurrentVersions};
use crate::auth::email_change::{self, ChangeEmailRequest, VerifyEmailRequest};
use crate::auth::password_change::{
    self, ChangePasswordRequest, ForgotPasswordRequest, ResetPasswordRequest,
};
use crate::auth::second_factor::{self, PasskeyChallenge, SecondStepRequest, StepUpRequest};
use crate::auth::service::{self, LoginRequest, LoginResponse, RegisterRequest};
use crate::auth::sessions::{self, SessionView, TokenPair};
use crate::error::AppError;
use crate::http::body::{JsonBody, no_store, optional_json};
use crate::http::error::Problem;
use crate::http::extract::{ApiPath, AuthUser, ClientOrigin, CredentialGuard, bearer_token};
use crate::security::devices::DeviceView;
use crate::state::AppState;
use crate::users::{UserView, UserWithLabs};

#[utoipa::path(post, path = "/api/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = UserView), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn register(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<RegisterRequest>,
) -> Result<(StatusCode, Json<UserView>), AppError> {
    let user = service::register(&state, request, &origin).await?;
    Ok((StatusCode::CREATED, Json(user)))
}

#[utoipa::path(post, path = "/api/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 423, body = Problem, headers(("Retry-After" = u64)))))]
pub async fn login(
    State(state): State<AppState>,
    _guard: CredentialGuard,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<LoginRequest>,
) -> Result<Response, AppError> {
    Ok(no_store(service::login(&state, request, &origin).await?))
}

#[utoipa::path(post, path = "/api/auth/login/mfa", tag = "auth", request_body = SecondStepRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = Problem),
        (status = 401, body = Problem, description = "A wrong answer, a dead mfa_token, or (`mfa_required`) fresh WebAuthn options"),
        (status = 423, body = Problem, headers(("Retry-After" = u64)))))]
pub async fn login_mfa(
    State(state): State<AppState>,
    _guard: CredentialGuard,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<SecondStepRequest>,
) -> Result<Response, AppError> {
    Ok(no_store(
        second_factor::complete(&state, request, &origin).await?,
    ))
}

#[utoipa::path(post, path = "/api/auth/login/consent", tag = "auth", request_body = ConsentRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = Problem, description = "A version that is not the one in force"),
        (status = 401, body = Problem, description = "A dead mfa_token, or the next step (`mfa_required`, ...)")))]
pub async fn login_consent(
    State(state): State<AppState>,
    _guard: CredentialGuard,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<ConsentRequest>,
) -> Result<Response, AppError> {
    Ok(no_store(consent::accept(&state, request, &origin).await?))
}

#[utoipa::path(get, path = "/api/consents", tag = "auth",
    responses((status = 200, body = CurrentVersions, description = "The versions in force that registration and sign-in ask to accept")))]
pub async fn consents(State(state): State<AppState>) -> Json<CurrentVersions> {
    Json(CurrentVersions::from(&state.config.consent))
}

#[utoipa::path(post, path = "/api/auth/login/passkey", tag = "auth",
    responses((status = 200, body = PasskeyChallenge)))]
pub async fn login_passkey(
    State(state): State<AppState>,
    _guard: CredentialGuard,
) -> Result<Response, AppError> {
    Ok(no_store(second_factor::start_passwordless(&state).await?))
}

#[utoipa::path(post, path = "/api/auth/step-up", tag = "auth", request_body = StepUpRequest,
    security(("bearer" = [])),
    responses((status = 200, body = TokenPair), (status = 400, body = Problem),
        (status = 401, body = Problem, description = "A wrong answer, or (`mfa_required`) the WebAuthn options to answer"),
        (status = 423, body = Problem, headers(("Retry-After" = u64)))))]
pub async fn step_up(
    State(state): State<AppState>,
    caller: AuthUser,
    _guard: CredentialGuard,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<StepUpRequest>,
) -> Result<Response, AppError> {
    Ok(no_store(
        second_factor::step_up(&state, &caller.user, &caller.claims.sid, request, &origin).await?,
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[serde(default)]
    pub refresh_token: Option<String>,
}

/// The refresh token from the body, or else from the `Authorization: Bearer` header.
pub struct RefreshToken(pub String);

impl axum::extract::FromRequest<AppState> for RefreshToken {
    type Rejection = AppError;

    async fn from_request(
        request: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, AppError> {
        let from_header = bearer_token(request.headers()).map(String::from);
        let body: RefreshRequest = optional_json(request, state).await?;
        body.refresh_token
            .or(from_header)
            .map(RefreshToken)
            .ok_or(AppError::Unauthorized("Missing refresh token."))
    }
}

#[utoipa::path(post, path = "/api/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenPair), (status = 401, body = Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    RefreshToken(token): RefreshToken,
) -> Result<Response, AppError> {
    Ok(no_store(service::refresh(&state, &token, &origin).await?))
}

#[utoipa::path(post, path = "/api/auth/logout", tag = "auth", request_body = RefreshRequest,
    security(("bearer" = [])), responses((status = 204), (status = 401, body = Problem)))]
pub async fn logout(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientOrigin(origin): ClientOrigin,
    request: axum::extract::Request,
) -> Result<StatusCode, AppError> {
    let request: RefreshRequest = optional_json(request, &state).await?;
    service::logout(
        &state,
        &caller.claims,
        request.refresh_token.as_deref(),
        &origin,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/auth/me", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = UserWithLabs), (status = 401, body = Problem)))]
pub async fn me(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<UserWithLabs>, AppError> {
    Ok(Json(service::me(&state, &caller.user).await?))
}

#[utoipa::path(get, path = "/api/auth/sessions", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Vec<SessionView>), (status = 401, body = Problem)))]
pub async fn list_sessions(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<Vec<SessionView>>, AppError> {
    let mut connection = state.store.read().await?;
    let list = sessions::list_open(
        &mut connection,
        caller.user.id,
        &caller.claims.sid,
        state.now(),
    )
    .await?;
    Ok(Json(list))
}

#[utoipa::path(delete, path = "/api/auth/sessions/{id}", tag = "auth", security(("bearer" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_session(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<String>,
) -> Result<StatusCode, AppError> {
    service::revoke_session(&state, caller.user.id, &id, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/auth/not-me", tag = "auth", request_body = NotMeRequest,
    responses((status = 200, body = NotMeAnswer), (status = 400, body = Problem)))]
pub async fn not_me(
    State(state): State<AppState>,
    _guard: CredentialGuard,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<NotMeRequest>,
) -> Result<Json<NotMeAnswer>, AppError> {
    Ok(Json(
        crate::auth::adaptive::report_not_me(&state, request, &origin).await?,
    ))
}

#[utoipa::path(get, path = "/api/auth/devices", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = Vec<DeviceView>), (status = 401, body = Problem)))]
pub async fn list_devices(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientOrigin(origin): ClientOrigin,
) -> Result<Json<Vec<DeviceView>>, AppError> {
    let mut connection = state.store.read().await?;
    let current = crate::security::devices::fingerprint(&origin);
    Ok(Json(
        crate::security::devices::list(&mut connection, caller.user.id, &current).await?,
    ))
}

#[utoipa::path(delete, path = "/api/auth/devices/{id}", tag = "auth", security(("bearer" = [])),
    params(("id" = i64, Path)), responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn forget_device(
    State(state): State<AppState>,
    caller: AuthUser,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, AppError> {
    let mut connection = state.store.begin().await?;
    if !crate::security::devices::forget(&mut connection, caller.user.id, id).await? {
        return Err(AppError::NotFound);
    }
    connection.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "The public signing keys (JWK Set)")))]
pub async fn jwks(State(state): State<AppState>) -> Response {
    let mut response = Json(state.keys.jwks()).into_response();
    response.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

/// A short acknowledgement for calls whose effect is an email.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Acknowledgement {
    pub detail: &'static str,
}

#[utoipa::path(post, path = "/api/auth/forgot-password", tag = "auth", request_body = ForgotPasswordRequest,
    responses((status = 202, body = Acknowledgement), (status = 400, body = Problem)))]
pub async fn forgot_password(
    State(state): State<AppState>,
    _guard: CredentialGuard,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<ForgotPasswordRequest>,
) -> Result<(StatusCode, Json<Acknowledgement>), AppError> {
    password_change::forgot_password(&state, request, &origin).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Acknowledgement {
            detail: "If the address belongs to an account, a reset link is on its way.",
        }),
    ))
}

#[utoipa::path(post, path = "/api/auth/reset-password", tag = "auth", request_body = ResetPasswordRequest,
    responses((status = 200, body = Acknowledgement), (status = 400, body = Problem)))]
pub async fn reset_password(
    State(state): State<AppState>,
    _guard: CredentialGuard,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<ResetPasswordRequest>,
) -> Result<Json<Acknowledgement>, AppError> {
    password_change::reset_password(&state, request, &origin).await?;
    Ok(Json(Acknowledgement {
        detail: "The password was reset; sign in with the new password.",
    }))
}

#[utoipa::path(post, path = "/api/auth/change-password", tag = "auth", request_body = ChangePasswordRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Acknowledgement), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn change_password(
    State(state): State<AppState>,
    caller: AuthUser,
    _guard: CredentialGuard,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<ChangePasswordRequest>,
) -> Result<Json<Acknowledgement>, AppError> {
    password_change::change_password(&state, &caller.user, &caller.claims.sid, request, &origin)
        .await?;
    Ok(Json(Acknowledgement {
        detail: "The password was changed; other sessions were signed out.",
    }))
}

#[utoipa::path(post, path = "/api/auth/change-email", tag = "auth", request_body = ChangeEmailRequest,
    security(("bearer" = [])),
    responses((status = 202, body = Acknowledgement), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 409, body = Problem)))]
pub async fn change_email(
    State(state): State<AppState>,
    caller: AuthUser,
    _guard: CredentialGuard,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<ChangeEmailRequest>,
) -> Result<(StatusCode, Json<Acknowledgement>), AppError> {
    email_change::change_email(&state, &caller.user, request, &origin).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Acknowledgement {
            detail: "A verification link was sent to the new address.",
        }),
    ))
}

#[utoipa::path(post, path = "/api/auth/verify-email", tag = "auth", request_body = VerifyEmailRequest,
    responses((status = 200, body = UserView), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn verify_email(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<VerifyEmailRequest>,
) -> Result<Json<UserView>, AppError> {
    Ok(Json(
        email_change::verify_email(&state, request, &origin).await?,
    ))
}

/// Sign-up, sign-in, sessions, the signing keys and the emailed-link flows.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{delete, get, post};
    axum::Router::new()
        .route("/api/auth/register", post(register))
        .route("/api/auth/login", post(login))
        .route("/api/auth/login/mfa", post(login_mfa))
        .route("/api/auth/login/consent", post(login_consent))
        .route("/api/consents", get(consents))
        .route("/api/auth/login/passkey", post(login_passkey))
        .route("/api/auth/step-up", post(step_up))
        .route("/api/auth/refresh", post(refresh))
        .route("/api/auth/logout", post(logout))
        .route("/api/auth/me", get(me))
        .route("/api/auth/sessions", get(list_sessions))
        .route("/api/auth/sessions/{id}", delete(revoke_session))
        .route("/api/auth/forgot-password", post(forgot_password))
        .route("/api/auth/reset-password", post(reset_password))
        .route("/api/auth/change-password", post(change_password))
        .route("/api/auth/change-email", post(change_email))
        .route("/api/auth/verify-email", post(verify_email))
        .route("/api/auth/not-me", post(not_me))
        .route("/api/auth/devices", get(list_devices))
        .route("/api/auth/devices/{id}", delete(forget_device))
        .route("/.well-known/jwks.json", get(jwks))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    tags((name = "auth", description = "Sign-up, sign-in, sessions and the emailed-link flows. \
Two-step sign-in: `POST /api/auth/login` answers an account with a second factor `401` with \
`code: mfa_required`, an `mfa_token` (five minutes, single use, three wrong answers kill it), the `methods` \
and, for passkeys, the WebAuthn request options; `POST /api/auth/login/mfa` with the token and a TOTP code, \
a recovery code or a WebAuthn assertion answers the token pair. `totp_code` in the login body does both in \
one step. `POST /api/auth/login/passkey` starts a passwordless passkey sign-in, finished the same way. \
`POST /api/auth/step-up` proves a factor again in a signed-in session; tokens carry `amr` and `auth_time`.")),
    paths(
    register,
    login,
    login_mfa,
    login_consent,
    consents,
    login_passkey,
    step_up,
    refresh,
    logout,
    me,
    list_sessions,
    revoke_session,
    not_me,
    list_devices,
    forget_device,
    jwks,
    forgot_password,
    reset_password,
    change_password,
    change_email,
    verify_email
))]
pub struct Api;
