//! Labs in the console: each person's labs, and a lab's members and invitations for its
//! lab admins and system admins.

use std::collections::HashMap;

use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use minijinja::context;

use super::{AdminForm, Early, Signed, SignedForm, refused, see_other};
use crate::console::render;
use crate::console::session::ConsoleUser;
use crate::error::AppError;
use crate::http::extract::ClientOrigin;
use crate::labs::access::{LabAccess, ManageMembers};
use crate::state::AppState;

/// The signed-in person's access to manage lab `lab_id`, by the API's rules (a system admin
/// everywhere; a lab_admin of an active lab; else refused, whether or not the lab exists).
async fn manage_lab(
    state: &AppState,
    me: ConsoleUser,
    lab_id: i64,
) -> Result<(ConsoleUser, LabAccess<ManageMembers>), Early> {
    let caller = crate::http::extract::AuthUser {
        user: me.user.clone(),
        claims: me.claims.clone(),
    };
    match LabAccess::resolve(state, caller, Ok(lab_id)).await {
        Ok(access) => Ok((me, access)),
        Err(error) => Err(Early::from(refused(Some(&me), error))),
    }
}

/// A form posted about a lab its sender manages: the CSRF token checked, the access resolved
/// by the API's rules.
pub struct LabForm {
    me: ConsoleUser,
    access: LabAccess<ManageMembers>,
    fields: HashMap<String, String>,
}

impl FromRequest<AppState> for LabForm {
    type Rejection = Early;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Early> {
        let (mut parts, body) = request.into_parts();
        let lab_id = crate::labs::access::lab_id_from_path(&mut parts, state).await;
        let SignedForm { me, fields } =
            SignedForm::from_request(Request::from_parts(parts, body), state).await?;
        let lab_id = lab_id.map_err(|error| Early::from(refused(Some(&me), error)))?;
        let (me, access) = manage_lab(state, me, lab_id).await?;
        Ok(LabForm { me, access, fields })
    }
}

/// `GET /admin/labs`: every lab for a system admin, the person's own for anyone else; the
/// ones they manage link to their page.
pub async fn labs(State(state): State<AppState>, Signed(me): Signed) -> Response {
    let params = HashMap::from([("per_page".to_string(), "100".to_string())]);
    let page = match crate::labs::service::list(&state, &me.user, params).await {
        Ok(page) => page,
        Err(error) => return refused(Some(&me), error),
    };
    let roles: HashMap<i64, String> = {
        let memberships = match state.store.read().await {
            Ok(mut connection) => crate::users::store::labs_of(&mut connection, me.user.id)
                .await
                .map_err(AppError::from),
            Err(error) => Err(error.into()),
        };
        match memberships {
            Ok(memberships) => memberships
                .into_iter()
                .map(|membership| (membership.id, membership.role))
                .collect(),
            Err(error) => return refused(Some(&me), error),
        }
    };
    let labs: Vec<minijinja::Value> = page
        .items
        .into_iter()
        .map(|lab| {
            let role = roles.get(&lab.id).cloned();
            let manage = me.user.is_admin() || role.as_deref() == Some("lab_admin");
            context! {
                id => lab.id,
                code => lab.code,
                name => lab.name,
                is_active => lab.is_active,
                role => role.unwrap_or_else(|| "system admin".into()),
                manage,
            }
        })
        .collect();
    render(
        "labs.html",
        StatusCode::OK,
        context! {
            title => "Labs",
            section => "labs",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            labs,
        },
    )
}

/// `GET /admin/labs/{id}`: a lab's members and invitations, for whoever manages it.
pub async fn lab(
    State(state): State<AppState>,
    Signed(me): Signed,
    Path(lab_id): Path<i64>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let (me, access) = match manage_lab(&state, me, lab_id).await {
        Ok(found) => found,
        Err(page) => return page.into_response(),
    };
    let members = crate::labs::service::members(&state, &access).await;
    let invitations = crate::labs::invitations::list(&state, &access).await;
    let (members, invitations) = match members.and_then(|members| Ok((members, invitations?))) {
        Ok(found) => found,
        Err(error) => return refused(Some(&me), error),
    };
    let notice = match params.get("done").map(String::as_str) {
        Some("invited") => Some("The invitation was sent."),
        Some("revoked") => Some("The invitation was revoked."),
        Some("role") => Some("The role was changed."),
        Some("removed") => Some("The member was removed from the lab."),
        Some("created") => Some("The lab was created."),
        Some("saved") => Some("The lab's settings were saved."),
        _ => None,
    };
    render(
        "lab.html",
        StatusCode::OK,
        context! {
            title => format!("Lab {}", access.lab.code),
            section => "labs",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            lab => access.lab.view(),
            members,
            invitations,
            roles => ["lab_admin", "member", "viewer"],
            notice,
        },
    )
}

/// `POST /admin/labs`: a new lab (system admins), and on to its page.
pub async fn create_lab(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    AdminForm { me, fields }: AdminForm,
) -> Response {
    let field = |name: &str| fields.get(name).cloned().unwrap_or_default();
    let request = crate::labs::service::CreateLab {
        code: field("code"),
        name: field("name"),
        description: Some(field("description")),
    };
    match crate::labs::service::create(&state, request, &me.user, &origin).await {
        Ok(lab) => back_to_lab(lab.id, "created"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/labs/{id}/settings`: a lab's name, description, and whether it is active and
/// requires a second factor of its members (system admins, as through the API).
pub async fn save_lab(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(lab_id): Path<i64>,
    AdminForm { me, fields }: AdminForm,
) -> Response {
    // An unticked box is not sent: the form always holds every setting.
    let request = crate::labs::service::UpdateLab {
        name: fields.get("name").cloned(),
        description: fields.get("description").cloned(),
        is_active: Some(fields.contains_key("is_active")),
        require_mfa: Some(fields.contains_key("require_mfa")),
        ..Default::default()
    };
    match crate::labs::service::update(&state, lab_id, request, &me.user, &origin).await {
        Ok(_) => back_to_lab(lab_id, "saved"),
        Err(error) => refused(Some(&me), error),
    }
}

/// After a change to lab `lab_id`: back to its page, saying what was done.
fn back_to_lab(lab_id: i64, done: &str) -> Response {
    see_other(&format!("/admin/labs/{lab_id}?done={done}"))
}

/// `POST /admin/labs/{id}/invitations`: invites an address, as through the API.
pub async fn invite(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    LabForm { me, access, fields }: LabForm,
) -> Response {
    let lab_id = access.lab.id;
    let request = crate::labs::invitations::Invite {
        email: fields.get("email").cloned().unwrap_or_default(),
        role: fields.get("role").cloned().unwrap_or_default(),
    };
    match crate::labs::invitations::invite(&state, &access, request, &origin).await {
        Ok(_) => back_to_lab(lab_id, "invited"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/labs/{id}/invitations/{invitation_id}/revoke`.
pub async fn revoke_invitation(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path((_, invitation_id)): Path<(i64, i64)>,
    LabForm { me, access, .. }: LabForm,
) -> Response {
    let lab_id = access.lab.id;
    match crate::labs::invitations::revoke(&state, &access, invitation_id, &origin).await {
        Ok(()) => back_to_lab(lab_id, "revoked"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/labs/{id}/members/{user_id}/role`.
pub async fn change_role(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path((_, user_id)): Path<(i64, i64)>,
    LabForm { me, access, fields }: LabForm,
) -> Response {
    let lab_id = access.lab.id;
    let request = crate::labs::service::ChangeRole {
        role: fields.get("role").cloned().unwrap_or_default(),
    };
    match crate::labs::service::change_role(&state, &access, user_id, request, &origin).await {
        Ok(_) => back_to_lab(lab_id, "role"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/labs/{id}/members/{user_id}/remove`.
pub async fn remove_member(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path((_, user_id)): Path<(i64, i64)>,
    LabForm { me, access, .. }: LabForm,
) -> Response {
    let lab_id = access.lab.id;
    match crate::labs::service::remove_member(&state, &access, user_id, &origin).await {
        Ok(()) => back_to_lab(lab_id, "removed"),
        Err(error) => refused(Some(&me), error),
    }
}
