//! HTTP handlers of `/api/auth/mfa/...` (a user's own factors) and an admin's reset of a
//! user's factors.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use crate::auth::tokens::Claims;
use crate::error::AppError;
use crate::http::body::{JsonBody, no_store};
use crate::http::error::Problem;
use crate::http::extract::{AdminUser, ApiPath, AuthUser, ClientOrigin, MaybeAuthUser};
use crate::mfa::passkeys::PasskeyView;
use crate::mfa::service::{
    self, DisableTotpRequest, Enrolled, FinishPasskeyRegistration, MfaStatus,
    PasskeyRegistrationStart, RecoveryCodes, RegenerateCodesRequest, RenamePasskey,
};
use crate::mfa::totp::Enrollment;
use crate::state::AppState;
use crate::users::User;

#[utoipa::path(get, path = "/api/auth/mfa", tag = "mfa", security(("bearer" = [])),
    responses((status = 200, body = MfaStatus), (status = 401, body = Problem)))]
pub async fn status(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<MfaStatus>, AppError> {
    Ok(Json(service::status(&state, caller.user.id).await?))
}

/// The body of an enrolment start: empty for a signed-in user; with the `mfa_token` of a
/// sign-in answered `mfa_enrollment_required`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    #[serde(default)]
    pub mfa_token: Option<String>,
}

/// Who enrols: the signed-in caller (with the session's claims), or the account of an
/// enrolment `mfa_token`.
async fn enrolling(
    state: &AppState,
    caller: Option<AuthUser>,
    request: &EnrollRequest,
) -> Result<(User, Option<Claims>), AppError> {
    match (caller, request.mfa_token.as_deref()) {
        (Some(caller), _) => Ok((caller.user, Some(caller.claims))),
        (None, Some(token)) => Ok((service::enrolling_user(state, token).await?, None)),
        (None, None) => Err(AppError::Unauthorized(
            "Missing bearer token (or the mfa_token of a sign-in that must enrol).",
        )),
    }
}

#[utoipa::path(post, path = "/api/auth/mfa/totp/enroll", tag = "mfa", request_body = EnrollRequest,
    security(("bearer" = []), ()),
    responses((status = 200, body = Enrollment), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem)))]
pub async fn enroll_totp(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    request: axum::extract::Request,
) -> Result<Response, AppError> {
    let request: EnrollRequest = crate::http::body::optional_json(request, &state).await?;
    let (user, session) = enrolling(&state, caller, &request).await?;
    Ok(no_store(
        service::start_totp(&state, &user, session.as_ref()).await?,
    ))
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmTotpRequest {
    /// The app's current six-digit code.
    pub code: String,
}

#[utoipa::path(post, path = "/api/auth/mfa/totp/confirm", tag = "mfa", request_body = ConfirmTotpRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Enrolled), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 409, body = Problem)))]
pub async fn confirm_totp(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<ConfirmTotpRequest>,
) -> Result<Response, AppError> {
    Ok(no_store(
        service::confirm_totp(&state, &caller.user, &request.code, &origin).await?,
    ))
}

#[utoipa::path(post, path = "/api/auth/mfa/totp/disable", tag = "mfa", request_body = DisableTotpRequest,
    security(("bearer" = [])),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 423, body = Problem)))]
pub async fn disable_totp(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<DisableTotpRequest>,
) -> Result<StatusCode, AppError> {
    service::disable_totp(&state, &caller.user, &caller.claims, request, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/auth/mfa/recovery-codes", tag = "mfa", request_body = RegenerateCodesRequest,
    security(("bearer" = [])),
    responses((status = 200, body = RecoveryCodes), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem)))]
pub async fn regenerate_recovery_codes(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<RegenerateCodesRequest>,
) -> Result<Response, AppError> {
    Ok(no_store(
        service::regenerate_recovery_codes(&state, &caller.user, &caller.claims, request, &origin)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/auth/mfa/passkeys/register/start", tag = "mfa", request_body = EnrollRequest,
    security(("bearer" = []), ()),
    responses((status = 200, body = PasskeyRegistrationStart), (status = 401, body = Problem),
        (status = 403, body = Problem)))]
pub async fn start_passkey_registration(
    State(state): State<AppState>,
    MaybeAuthUser(caller): MaybeAuthUser,
    request: axum::extract::Request,
) -> Result<axum::response::Response, AppError> {
    let request: EnrollRequest = crate::http::body::optional_json(request, &state).await?;
    let (user, session) = enrolling(&state, caller, &request).await?;
    // It carries the registration token: never cached, never compressed.
    Ok(no_store(
        service::start_passkey_registration(&state, &user, session.as_ref()).await?,
    ))
}

#[utoipa::path(post, path = "/api/auth/mfa/passkeys/register/finish", tag = "mfa",
    request_body = FinishPasskeyRegistration,
    responses((status = 201, body = Enrolled), (status = 400, body = Problem), (status = 409, body = Problem)))]
pub async fn finish_passkey_registration(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<FinishPasskeyRegistration>,
) -> Result<(StatusCode, Response), AppError> {
    let enrolled = service::finish_passkey_registration(&state, request, &origin).await?;
    Ok((StatusCode::CREATED, no_store(enrolled)))
}

#[utoipa::path(get, path = "/api/auth/mfa/passkeys", tag = "mfa", security(("bearer" = [])),
    responses((status = 200, body = Vec<PasskeyView>), (status = 401, body = Problem)))]
pub async fn list_passkeys(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<Vec<PasskeyView>>, AppError> {
    Ok(Json(
        service::status(&state, caller.user.id).await?.passkeys,
    ))
}

#[utoipa::path(patch, path = "/api/auth/mfa/passkeys/{id}", tag = "mfa", request_body = RenamePasskey,
    security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 204), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn rename_passkey(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
    JsonBody(request): JsonBody<RenamePasskey>,
) -> Result<StatusCode, AppError> {
    service::rename_passkey(&state, &caller.user, id, request, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/auth/mfa/passkeys/{id}", tag = "mfa",
    security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn remove_passkey(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, AppError> {
    service::remove_passkey(&state, &caller.user, &caller.claims, id, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(delete, path = "/api/users/{id}/mfa", tag = "mfa", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn reset(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, AppError> {
    service::reset(&state, &admin.user, &admin.claims, id, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A user's factors, and the admin's reset.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, patch, post};
    axum::Router::new()
        .route("/api/auth/mfa", get(status))
        .route("/api/auth/mfa/totp/enroll", post(enroll_totp))
        .route("/api/auth/mfa/totp/confirm", post(confirm_totp))
        .route("/api/auth/mfa/totp/disable", post(disable_totp))
        .route(
            "/api/auth/mfa/recovery-codes",
            post(regenerate_recovery_codes),
        )
        .route(
            "/api/auth/mfa/passkeys/register/start",
            post(start_passkey_registration),
        )
        .route(
            "/api/auth/mfa/passkeys/register/finish",
            post(finish_passkey_registration),
        )
        .route("/api/auth/mfa/passkeys", get(list_passkeys))
        .route(
            "/api/auth/mfa/passkeys/{id}",
            patch(rename_passkey).delete(remove_passkey),
        )
        .route("/api/users/{id}/mfa", axum::routing::delete(reset))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    tags((name = "mfa", description = "Second factors. TOTP: `totp/enroll` (secret, otpauth URI, QR code as SVG) then \
`totp/confirm` with the app's code; the account's first factor comes with ten single-use recovery codes, \
shown once (`recovery-codes` makes a new set). Passkeys: `passkeys/register/start` (options for \
`navigator.credentials.create`) then `passkeys/register/finish`. An admin who must enrol before signing in \
passes the login's `mfa_token` in the body instead of a bearer token.")),
    paths(
    status,
    enroll_totp,
    confirm_totp,
    disable_totp,
    regenerate_recovery_codes,
    start_passkey_registration,
    finish_passkey_registration,
    list_passkeys,
    rename_passkey,
    remove_passkey,
    reset
))]
pub struct Api;
