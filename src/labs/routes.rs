//! HTTP handlers of `/api/labs`. Each states its access in its signature.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;

use crate::audit::Action;
use crate::error::AppError;
use crate::http::body::JsonBody;
use crate::http::error::Problem;
use crate::http::extract::{AdminUser, ApiPath, AuthUser, ClientOrigin};
use crate::labs::access::{LabAccess, ManageMembers, Read};
use crate::labs::invitations::{self, InvitationAnswer, InvitationView, Invite};
use crate::labs::service::{self, AddMember, ChangeRole, CreateLab, UpdateLab};
use crate::labs::{AccessView, LabView, MemberView};
use crate::paging::Page;
use crate::state::AppState;

#[utoipa::path(get, path = "/api/labs", tag = "labs", security(("bearer" = [])),
    params(("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query), ("q" = Option<String>, Query),
        ("is_active" = Option<bool>, Query)),
    responses((status = 200, body = Page<LabView>), (status = 400, body = Problem), (status = 401, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Page<LabView>>, AppError> {
    Ok(Json(service::list(&state, &caller.user, params).await?))
}

#[utoipa::path(post, path = "/api/labs", tag = "labs", security(("bearer" = [])), request_body = CreateLab,
    responses((status = 201, body = LabView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<CreateLab>,
) -> Result<(StatusCode, Json<LabView>), AppError> {
    let lab = service::create(&state, request, &admin.user, &origin).await?;
    Ok((StatusCode::CREATED, Json(lab)))
}

#[utoipa::path(get, path = "/api/labs/{id}", tag = "labs", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 200, body = LabView), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn get(access: LabAccess<Read>) -> Json<LabView> {
    Json(access.lab.view())
}

#[utoipa::path(patch, path = "/api/labs/{id}", tag = "labs", security(("bearer" = [])), params(("id" = i64, Path)),
    request_body = UpdateLab,
    responses((status = 200, body = LabView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
    JsonBody(request): JsonBody<UpdateLab>,
) -> Result<Json<LabView>, AppError> {
    Ok(Json(
        service::update(&state, id, request, &admin.user, &origin).await?,
    ))
}

#[utoipa::path(put, path = "/api/labs/{id}", tag = "labs", security(("bearer" = [])), params(("id" = i64, Path)),
    request_body = UpdateLab,
    responses((status = 200, body = LabView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn replace(
    state: State<AppState>,
    admin: AdminUser,
    origin: ClientOrigin,
    id: ApiPath<i64>,
    request: JsonBody<UpdateLab>,
) -> Result<Json<LabView>, AppError> {
    update(state, admin, origin, id, request).await
}

#[utoipa::path(delete, path = "/api/labs/{id}", tag = "labs", security(("bearer" = [])), params(("id" = i64, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
) -> Result<StatusCode, AppError> {
    service::delete(&state, id, &admin.user, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/labs/{id}/activate", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 200, body = LabView), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn activate(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<LabView>, AppError> {
    Ok(Json(
        service::set_active(&state, id, true, &admin.user, &origin).await?,
    ))
}

#[utoipa::path(post, path = "/api/labs/{id}/deactivate", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 200, body = LabView), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn deactivate(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
) -> Result<Json<LabView>, AppError> {
    Ok(Json(
        service::set_active(&state, id, false, &admin.user, &origin).await?,
    ))
}

#[utoipa::path(get, path = "/api/labs/{id}/members", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 200, body = Vec<MemberView>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn members(
    State(state): State<AppState>,
    access: LabAccess<Read>,
    ClientOrigin(origin): ClientOrigin,
) -> Result<Json<Vec<MemberView>>, AppError> {
    let members = service::members(&state, &access).await?;
    service::log_read(&state, &access, Action::LabMembersRead, &origin).await;
    Ok(Json(members))
}

#[utoipa::path(post, path = "/api/labs/{id}/members", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path)), request_body = AddMember,
    responses((status = 201, body = MemberView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem)))]
pub async fn add_member(
    State(state): State<AppState>,
    access: LabAccess<ManageMembers>,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<AddMember>,
) -> Result<(StatusCode, Json<MemberView>), AppError> {
    let member = service::add_member(&state, &access, request, &origin).await?;
    Ok((StatusCode::CREATED, Json(member)))
}

#[utoipa::path(delete, path = "/api/labs/{id}/members/{user_id}", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path), ("user_id" = i64, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn remove_member(
    State(state): State<AppState>,
    access: LabAccess<ManageMembers>,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(ids): ApiPath<(i64, i64)>,
) -> Result<StatusCode, AppError> {
    service::remove_member(&state, &access, ids.1, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(patch, path = "/api/labs/{id}/members/{user_id}/role", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path), ("user_id" = i64, Path)), request_body = ChangeRole,
    responses((status = 200, body = MemberView), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn change_role(
    State(state): State<AppState>,
    access: LabAccess<ManageMembers>,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(ids): ApiPath<(i64, i64)>,
    JsonBody(request): JsonBody<ChangeRole>,
) -> Result<Json<MemberView>, AppError> {
    Ok(Json(
        service::change_role(&state, &access, ids.1, request, &origin).await?,
    ))
}

#[utoipa::path(get, path = "/api/labs/{id}/access", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 200, body = AccessView), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn access(
    State(state): State<AppState>,
    access: LabAccess<Read>,
    ClientOrigin(origin): ClientOrigin,
) -> Json<AccessView> {
    service::log_read(&state, &access, Action::LabAccessChecked, &origin).await;
    Json(access.view())
}

#[utoipa::path(post, path = "/api/labs/{id}/invitations", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path)), request_body = Invite,
    responses((status = 202, body = InvitationView,
        description = "The invitation is sent; the same answer whether or not an account has the address"),
        (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn invite(
    State(state): State<AppState>,
    access: LabAccess<ManageMembers>,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<Invite>,
) -> Result<(StatusCode, Json<InvitationView>), AppError> {
    let invitation = invitations::invite(&state, &access, request, &origin).await?;
    Ok((StatusCode::ACCEPTED, Json(invitation)))
}

#[utoipa::path(get, path = "/api/labs/{id}/invitations", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 200, body = Vec<InvitationView>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_invitations(
    State(state): State<AppState>,
    access: LabAccess<ManageMembers>,
) -> Result<Json<Vec<InvitationView>>, AppError> {
    Ok(Json(invitations::list(&state, &access).await?))
}

#[utoipa::path(delete, path = "/api/labs/{id}/invitations/{invitation_id}", tag = "labs", security(("bearer" = [])),
    params(("id" = i64, Path), ("invitation_id" = i64, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn revoke_invitation(
    State(state): State<AppState>,
    access: LabAccess<ManageMembers>,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(ids): ApiPath<(i64, i64)>,
) -> Result<StatusCode, AppError> {
    invitations::revoke(&state, &access, ids.1, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/invitations/accept", tag = "labs", security(("bearer" = [])),
    request_body = InvitationAnswer,
    responses((status = 200, body = MemberView, description = "The caller is now a member of the lab"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem)))]
pub async fn accept_invitation(
    State(state): State<AppState>,
    caller: AuthUser,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<InvitationAnswer>,
) -> Result<Json<MemberView>, AppError> {
    Ok(Json(
        invitations::accept(&state, &caller.user, request, &origin).await?,
    ))
}

#[utoipa::path(post, path = "/api/invitations/decline", tag = "labs",
    request_body = InvitationAnswer,
    responses((status = 204), (status = 400, body = Problem)))]
pub async fn decline_invitation(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<InvitationAnswer>,
) -> Result<StatusCode, AppError> {
    invitations::decline(&state, request, &origin).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Labs, their members and roles, and the access check the portal asks before a lab page.
pub fn router() -> axum::Router<AppState> {
    use axum::routing;
    axum::Router::new()
        .route("/api/labs", routing::get(list).post(create))
        .route(
            "/api/labs/{id}",
            routing::get(get).put(replace).patch(update).delete(delete),
        )
        .route("/api/labs/{id}/activate", routing::post(activate))
        .route("/api/labs/{id}/deactivate", routing::post(deactivate))
        .route(
            "/api/labs/{id}/members",
            routing::get(members).post(add_member),
        )
        .route(
            "/api/labs/{id}/members/{user_id}",
            routing::delete(remove_member),
        )
        .route(
            "/api/labs/{id}/members/{user_id}/role",
            routing::patch(change_role),
        )
        .route("/api/labs/{id}/access", routing::get(access))
        .route(
            "/api/labs/{id}/invitations",
            routing::get(list_invitations).post(invite),
        )
        .route(
            "/api/labs/{id}/invitations/{invitation_id}",
            routing::delete(revoke_invitation),
        )
        .route("/api/invitations/accept", routing::post(accept_invitation))
        .route(
            "/api/invitations/decline",
            routing::post(decline_invitation),
        )
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list,
    create,
    get,
    update,
    replace,
    delete,
    activate,
    deactivate,
    members,
    add_member,
    remove_member,
    change_role,
    access,
    invite,
    list_invitations,
    revoke_invitation,
    accept_invitation,
    decline_invitation
))]
pub struct Api;
