//! The HTTP surface: router, extractors, middleware and the error type.

pub mod body;
pub mod error;
pub mod extract;
pub mod middleware;
pub mod openapi;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use utoipa::OpenApi;

use openapi::CommonResponses;

use crate::audit::routes as audit;
use crate::auth::routes as auth;
use crate::error::AppError;
use crate::labs::routes as labs;
use crate::mfa::routes as mfa;
use crate::privacy::routes as privacy;
use crate::security::routes as security;
use crate::state::AppState;
use crate::users::routes as users;

pub const BODY_LIMIT: usize = 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "UMS",
        description = "User Management Service: identity for the lab portal."
    ),
    paths(health, ready, openapi, metrics)
)]
struct OperationsApi;

/// The OpenAPI document: each capability's paths, the operations' own, and the answers and
/// conventions every operation shares.
pub fn api_document() -> utoipa::openapi::OpenApi {
    use utoipa::Modify;
    let mut document = OperationsApi::openapi();
    for part in [
        auth::Api::openapi(),
        users::Api::openapi(),
        labs::Api::openapi(),
        audit::Api::openapi(),
        mfa::Api::openapi(),
        security::Api::openapi(),
        privacy::Api::openapi(),
    ] {
        document.merge(part);
    }
    BearerAuth.modify(&mut document);
    UniqueOperationIds.modify(&mut document);
    CommonResponses.modify(&mut document);
    document
}

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
        .merge(auth::router())
        .merge(users::router())
        .merge(labs::router())
        .merge(audit::router())
        .merge(mfa::router())
        .merge(security::router())
        .merge(privacy::router())
        .merge(crate::console::router())
        .route("/api/openapi.json", get(openapi))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/ready", get(ready))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed);
    let docs = utoipa_swagger_ui::SwaggerUi::new("/api/docs")
        .url("/api/docs/openapi.json", api_document());
    let docs =
        Router::<AppState>::from(docs).layer(axum::middleware::from_fn(middleware::docs_policy));
    // Layers run outside in: the last added sees the request first.
    let router = api
        .merge(docs)
        .layer(middleware::compression())
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
    Json(api_document())
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
    use crate::security::geoip::GeoIpStatus;
    let geoip = match state.geoip.status() {
        GeoIpStatus::Off => "not configured: the geographic risk signals are off",
        GeoIpStatus::Loaded => "ok",
        GeoIpStatus::Unreadable => "unreadable: the geographic risk signals are off",
    };
    let auth_cache = match state.store.auth_cache().is_serving() {
        true => "ok",
        false => "off: waiting for its notification channel; every request reads the database",
    };
    use crate::store::replica::ReplicaStatus;
    let replica = match state.store.replica().map(|replica| replica.status()) {
        None => "not configured".to_string(),
        Some(ReplicaStatus::Starting) => "starting: not measured yet".to_string(),
        Some(ReplicaStatus::Replaying { lag }) => format!(
            "ok: {:.1} s behind the primary; a read goes to it once it has replayed all that \
             was committed before the read",
            lag.as_secs_f64()
        ),
        Some(ReplicaStatus::NotReplicating) => {
            "not in recovery (not a replica): reads go to the primary".to_string()
        }
        Some(ReplicaStatus::Unreachable) => "unreachable: reads go to the primary".to_string(),
    };
    match database {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "checks": {
                "database": "ok", "migrations": "current", "redis": redis, "geoip": geoip,
                "auth_cache": auth_cache, "replica": replica,
            }})),
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
