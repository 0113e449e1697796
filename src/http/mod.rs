//! The HTTP surface: router, extractors, middleware and the error type.

pub mod body;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod openapi;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, patch, post};
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi;

use openapi::CommonResponses;

use crate::audit::routes as audit;
use crate::auth::routes as auth;
use crate::error::AppError;
use crate::labs::routes as labs;
use crate::state::AppState;
use crate::users::routes as users;

pub const BODY_LIMIT: usize = 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "UMS", description = "User Management Service: identity for the lab portal."),
    paths(
        auth::register, auth::login, auth::refresh, auth::logout, auth::me,
        auth::list_sessions, auth::revoke_session, auth::jwks, auth::forgot_password, auth::reset_password,
        auth::change_password, auth::change_email, auth::verify_email,
        users::list, users::get, users::update, users::replace, users::delete, users::labs, users::unlock,
        labs::list, labs::create, labs::get, labs::update, labs::replace, labs::delete, labs::activate,
        labs::deactivate, labs::members, labs::add_member, labs::remove_member, labs::change_role, labs::access,
        audit::audit_logs, audit::login_attempts,
        health, ready, openapi, metrics,
    ),
    modifiers(&BearerAuth, &UniqueOperationIds, &CommonResponses),
)]
pub struct ApiDoc;

/// Handlers of different modules share names (`list`, `get`); operation ids must be unique,
/// so each is derived from its method and path: `get_api_users_id`.
struct UniqueOperationIds;

impl utoipa::Modify for UniqueOperationIds {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let slug: String = path
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect::<String>()
                .split('_')
                .filter(|part| !part.is_empty())
                .collect::<Vec<_>>()
                .join("_");
            let operations = [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("put", &mut item.put),
                ("patch", &mut item.patch),
                ("delete", &mut item.delete),
            ];
            for (method, operation) in operations {
                if let Some(operation) = operation {
                    operation.operation_id = Some(format!("{method}_{slug}"));
                }
            }
        }
    }
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/api/auth/register", post(auth::register))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/auth/me", get(auth::me))
        .route("/api/auth/sessions", get(auth::list_sessions))
        .route("/api/auth/sessions/{id}", delete(auth::revoke_session))
        .route("/api/auth/forgot-password", post(auth::forgot_password))
        .route("/api/auth/reset-password", post(auth::reset_password))
        .route("/api/auth/change-password", post(auth::change_password))
        .route("/api/auth/change-email", post(auth::change_email))
        .route("/api/auth/verify-email", post(auth::verify_email))
        .route("/.well-known/jwks.json", get(auth::jwks))
        .route("/api/users", get(users::list))
        .route(
            "/api/users/{id}",
            get(users::get)
                .put(users::replace)
                .patch(users::update)
                .delete(users::delete),
        )
        .route("/api/users/{id}/labs", get(users::labs))
        .route("/api/users/{id}/unlock", post(users::unlock))
        .route("/api/labs", get(labs::list).post(labs::create))
        .route(
            "/api/labs/{id}",
            get(labs::get)
                .put(labs::replace)
                .patch(labs::update)
                .delete(labs::delete),
        )
        .route("/api/labs/{id}/activate", post(labs::activate))
        .route("/api/labs/{id}/deactivate", post(labs::deactivate))
        .route(
            "/api/labs/{id}/members",
            get(labs::members).post(labs::add_member),
        )
        .route(
            "/api/labs/{id}/members/{user_id}",
            delete(labs::remove_member),
        )
        .route(
            "/api/labs/{id}/members/{user_id}/role",
            patch(labs::change_role),
        )
        .route("/api/labs/{id}/access", get(labs::access))
        .route("/api/audit-logs", get(audit::audit_logs))
        .route("/api/security/login-attempts", get(audit::login_attempts))
        .route("/api/openapi.json", get(openapi))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let docs = utoipa_swagger_ui::SwaggerUi::new("/api/docs")
        .url("/api/docs/openapi.json", ApiDoc::openapi());
    let docs =
        Router::<AppState>::from(docs).layer(axum::middleware::from_fn(middleware::docs_policy));
    // Layers run outside in: the last added sees the request first.
    let router = api
        .merge(docs)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::timeout,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::rate_limit,
        ))
        .layer(axum::middleware::from_fn(middleware::observe))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(
            middleware::refuse_credentials_in_url,
        ));
    let router = match middleware::cors(&state) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    router
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            middleware::security_headers,
        ))
        .layer(axum::middleware::from_fn(middleware::request_id))
        .with_state(state)
}

async fn not_found() -> AppError {
    AppError::NotFound
}

async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses((status = 200, description = "This OpenAPI 3.1 document")))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::telemetry::render(&state).await,
    )
}

#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process runs")))]
async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok", "checks": {"process": "ok"}}))
}

#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, description = "Ready to serve"), (status = 503, description = "A dependency is down")))]
async fn ready(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let check = tokio::time::timeout(state.config.database_timeout, state.store.check()).await;
    let database = match check {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error),
        Err(_) => Err("timed out".to_string()),
    };
    let redis = match state.limiter.redis_state() {
        None => "not configured",
        Some(true) => "ok",
        Some(false) => "unavailable: limits are local to this instance",
    };
    match database {
        Ok(()) => (
            StatusCode::OK,
            Json(
                json!({"status": "ready", "checks": {"database": "ok", "migrations": "current", "redis": redis}}),
            ),
        ),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({"status": "unavailable", "checks": {"database": "unavailable", "redis": redis}}),
                ),
            )
        }
    }
}
