//! HTTP handlers of `/api/users`. Each states its access in its signature.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;

use crate::error::AppError;
use crate::http::body::JsonBody;
use crate::http::error::Problem;
use crate::http::extract::{AdminUser, ApiPath, ClientOrigin, SelfOrAdmin};
use crate::paging::Page;
use crate::state::AppState;
use crate::users::service::{self, UpdateUser};
use crate::users::{Membership, UserView};

#[utoipa::path(get, path = "/api/users", tag = "users", security(("bearer" = [])),
    params(("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query), ("q" = Option<String>, Query),
        ("is_active" = Option<bool>, Query), ("is_admin" = Option<bool>, Query),
        ("locked" = Option<bool>, Query, description = "Only accounts locked (true) or not locked (false) now")),
    responses((status = 200, body = Page<UserView>), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Page<UserView>>, AppError> {
    Ok(Json(service::list(&state, params).await?))
}

#[utoipa::path(get, path = "/api/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    access: SelfOrAdmin,
) -> Result<Json<UserView>, AppError> {
    let user = service::get(&state, access.target_id).await?;
    Ok(Json(user.view(state.now())))
}

#[utoipa::path(patch, path = "/api/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)),
    request_body = UpdateUser,
    responses((status = 200, body = UserView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    access: SelfOrAdmin,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<UpdateUser>,
) -> Result<Json<UserView>, AppError> {
    let user = service::update(
        &state,
        &access.caller.user,
        access.target_id,
        request,
        &origin,
    )
    .await?;
    Ok(Json(user))
}

#[utoipa::path(put, path = "/api/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)),
    request_body = UpdateUser,
    responses((status = 200, body = UserView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn replace(
    state: State<AppState>,
    access: SelfOrAdmin,
    origin: ClientOrigin,
    request: JsonBody<UpdateUser>,
) -> Result<Json<UserView>, AppError> {
    update(state, access, origin, request).await
}

#[utoipa::path(delete, path = "/api/users/{id}", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, AppError> {
    crate::privacy::erasure::ask(
        &state,
        crate::privacy::erasure::Requester::Admin(admin.user.id),
        id,
        &origin,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/users/{id}/labs", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = Vec<Membership>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn labs(
    State(state): State<AppState>,
    access: SelfOrAdmin,
) -> Result<Json<Vec<Membership>>, AppError> {
    Ok(Json(service::labs_of(&state, access.target_id).await?))
}

#[utoipa::path(post, path = "/api/users/{id}/unlock", tag = "users", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = UserView), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn unlock(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<UserView>, AppError> {
    Ok(Json(
        service::unlock(&state, &admin.user, id, &origin).await?,
    ))
}

/// Accounts: the admin's list, one account (its owner or an admin), its labs, an unlock.
pub fn router() -> axum::Router<AppState> {
    use axum::routing;
    axum::Router::new()
        .route("/api/users", routing::get(list))
        .route(
            "/api/users/{id}",
            routing::get(get).put(replace).patch(update).delete(delete),
        )
        .route("/api/users/{id}/labs", routing::get(labs))
        .route("/api/users/{id}/unlock", routing::post(unlock))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(list, get, update, replace, delete, labs, unlock))]
pub struct Api;
