//! The rules of labs and memberships. Each change commits with its audit event.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::audit::{self, Action, Event, Origin};
use crate::error::AppError;
use crate::error::FieldCheck;
use crate::labs::access::{LabAccess, Requirement};
use crate::labs::store::{self as lab_store, LabChanges, LabFilter};
use crate::labs::{LabCode, LabRole, LabView, MemberView, parse_description, parse_lab_name};
use crate::paging::{ListQuery, Page};
use crate::state::AppState;
use crate::users::User;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateLab {
    pub code: String,
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateLab {
    pub code: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    /// Members without a second factor are refused the lab's routes.
    pub require_mfa: Option<bool>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    pub user_id: i64,
    pub role: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangeRole {
    pub role: String,
}

fn parse_role(value: &str) -> Result<LabRole, AppError> {
    LabRole::parse(value).map_err(|message| AppError::field("role", message))
}

#[tracing::instrument(skip_all)]
pub async fn create(
    state: &AppState,
    request: CreateLab,
    actor: &User,
    origin: &Origin,
) -> Result<LabView, AppError> {
    let mut check = FieldCheck::new();
    let code = check.check("code", LabCode::parse(&request.code));
    let name = check.check("name", parse_lab_name(&request.name));
    let description = check.check(
        "description",
        parse_description(request.description.as_deref().unwrap_or_default()),
    );
    let (code, name, description) = check.finish_with(
        code.zip(name)
            .zip(description)
            .map(|((code, name), description)| (code, name, description)),
    )?;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let lab = lab_store::insert(&mut transaction, &code, &name, &description, now).await?;
    transaction
        .commit(
            Event::new(Action::LabCreated, now)
                .actor(Some(actor.id))
                .resource("lab", lab.id)
                .lab(lab.id)
                .details(json!({"code": lab.code, "name": lab.name}))
                .origin(origin),
        )
        .await?;
    Ok(lab.view())
}

#[tracing::instrument(skip_all)]
pub async fn list(
    state: &AppState,
    caller: &User,
    params: HashMap<String, String>,
) -> Result<Page<LabView>, AppError> {
    let mut query = ListQuery::new(params);
    let page = query.page();
    let filter = LabFilter {
        member: (!caller.is_admin()).then_some(caller.id),
        query: query.text("q"),
        is_active: query.boolean("is_active"),
    };
    query.finish()?;
    let mut connection = state.store.reports().await?;
    let (labs, total) = lab_store::list(&mut connection, &filter, page).await?;
    Ok(Page::new(
        labs.iter().map(|lab| lab.view()).collect(),
        total,
        page,
    ))
}

#[tracing::instrument(skip_all)]
pub async fn update(
    state: &AppState,
    lab_id: i64,
    request: UpdateLab,
    actor: &User,
    origin: &Origin,
) -> Result<LabView, AppError> {
    let mut check = FieldCheck::new();
    let changes = LabChanges {
        code: request
            .code
            .as_deref()
            .and_then(|code| check.check("code", LabCode::parse(code))),
        name: request
            .name
            .as_deref()
            .and_then(|name| check.check("name", parse_lab_name(name))),
        description: request
            .description
            .as_deref()
            .and_then(|text| check.check("description", parse_description(text))),
        is_active: request.is_active,
        require_mfa: request.require_mfa,
    };
    check.finish()?;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let before = lab_store::find(&mut transaction, lab_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let after = lab_store::update(&mut transaction, lab_id, &changes, now)
        .await?
        .ok_or(AppError::NotFound)?;
    let mut changed = Map::new();
    let pairs: [(&str, Value, Value); 5] = [
        ("code", json!(before.code), json!(after.code)),
        ("name", json!(before.name), json!(after.name)),
        (
            "description",
            json!(before.description),
            json!(after.description),
        ),
        (
            "is_active",
            json!(before.is_active()),
            json!(after.is_active()),
        ),
        (
            "require_mfa",
            json!(before.require_mfa),
            json!(after.require_mfa),
        ),
    ];
    for (field, old, new) in pairs {
        if old != new {
            changed.insert(field.to_string(), json!({"from": old, "to": new}));
        }
    }
    transaction
        .commit(
            Event::new(Action::LabUpdated, now)
                .actor(Some(actor.id))
                .resource("lab", lab_id)
                .lab(lab_id)
                .details(json!({"changed": changed}))
                .origin(origin),
        )
        .await?;
    Ok(after.view())
}

#[tracing::instrument(skip_all)]
pub async fn set_active(
    state: &AppState,
    lab_id: i64,
    active: bool,
    actor: &User,
    origin: &Origin,
) -> Result<LabView, AppError> {
    let now = state.now();
    let changes = LabChanges {
        code: None,
        name: None,
        description: None,
        is_active: Some(active),
        require_mfa: None,
    };
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let lab = lab_store::update(&mut transaction, lab_id, &changes, now)
        .await?
        .ok_or(AppError::NotFound)?;
    let action = if active {
        Action::LabActivated
    } else {
        Action::LabDeactivated
    };
    transaction
        .commit(
            Event::new(action, now)
                .actor(Some(actor.id))
                .resource("lab", lab_id)
                .lab(lab_id)
                .details(json!({"code": lab.code}))
                .origin(origin),
        )
        .await?;
    Ok(lab.view())
}

#[tracing::instrument(skip_all)]
pub async fn delete(
    state: &AppState,
    lab_id: i64,
    actor: &User,
    origin: &Origin,
) -> Result<(), AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let lab = lab_store::find(&mut transaction, lab_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let members = lab_store::delete(&mut transaction, lab_id)
        .await?
        .ok_or(AppError::NotFound)?;
    transaction
        .commit(
            Event::new(Action::LabDeleted, now)
                .actor(Some(actor.id))
                .resource("lab", lab_id)
                .lab(lab_id)
                .details(
                    json!({"code": lab.code, "name": lab.name, "memberships_removed": members}),
                )
                .origin(origin),
        )
        .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn members<P: Requirement>(
    state: &AppState,
    access: &LabAccess<P>,
) -> Result<Vec<MemberView>, AppError> {
    let mut connection = state.store.read().await?;
    let mut members = lab_store::members(&mut connection, access.lab.id).await?;
    // Members see who is in their lab; addresses only those who manage it.
    if !access.is_system_admin() && access.role != Some(LabRole::LabAdmin) {
        for member in &mut members {
            member.user.email = None;
        }
    }
    Ok(members)
}

/// Refuses a change that would leave a lab with members but no lab_admin, unless a
/// system admin makes it. Runs inside the change's transaction, after the change.
async fn keep_a_lab_admin<P: Requirement>(
    transaction: &mut crate::store::Connection,
    access: &LabAccess<P>,
) -> Result<(), AppError> {
    if access.is_system_admin() {
        return Ok(());
    }
    let (members, admins) = lab_store::admin_balance(transaction, access.lab.id).await?;
    if members > 0 && admins == 0 {
        return Err(AppError::conflict(
            "role",
            "a lab keeps at least one lab_admin while it has members",
        ));
    }
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn add_member<P: Requirement>(
    state: &AppState,
    access: &LabAccess<P>,
    request: AddMember,
    origin: &Origin,
) -> Result<MemberView, AppError> {
    // Adding by id would tell a lab admin which ids exist (and then their addresses): lab
    // admins invite by address instead.
    if !access.is_system_admin() {
        return Err(AppError::Forbidden(
            "Lab admins invite members by email address (POST /api/labs/{id}/invitations).",
        ));
    }
    let role = parse_role(&request.role)?;
    let lab_id = access.lab.id;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    if !lab_store::lock(&mut transaction, lab_id).await? {
        return Err(AppError::NotFound);
    }
    if crate::users::store::find_by_id(&mut transaction, request.user_id)
        .await?
        .is_none()
    {
        return Err(AppError::field("user_id", "no user has this id"));
    }
    lab_store::add_member(&mut transaction, lab_id, request.user_id, role, now).await?;
    let member = lab_store::member(&mut transaction, lab_id, request.user_id)
        .await?
        .ok_or(AppError::NotFound)?;
    transaction
        .commit(
            Event::new(Action::MemberAdded, now)
                .actor(Some(access.caller.user.id))
                .resource("membership", format!("{lab_id}:{}", request.user_id))
                .lab(lab_id)
                .details(json!({"user_id": request.user_id, "role": role.as_str()}))
                .origin(origin),
        )
        .await?;
    Ok(member)
}

#[tracing::instrument(skip_all)]
pub async fn remove_member<P: Requirement>(
    state: &AppState,
    access: &LabAccess<P>,
    user_id: i64,
    origin: &Origin,
) -> Result<(), AppError> {
    let lab_id = access.lab.id;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    lab_store::lock(&mut transaction, lab_id).await?;
    let role = lab_store::remove_member(&mut transaction, lab_id, user_id)
        .await?
        .ok_or(AppError::NotFound)?;
    keep_a_lab_admin(&mut transaction, access).await?;
    transaction
        .commit(
            Event::new(Action::MemberRemoved, now)
                .actor(Some(access.caller.user.id))
                .resource("membership", format!("{lab_id}:{user_id}"))
                .lab(lab_id)
                .details(json!({"user_id": user_id, "role": role}))
                .origin(origin),
        )
        .await?;
    Ok(())
}

#[tracing::instrument(skip_all)]
pub async fn change_role<P: Requirement>(
    state: &AppState,
    access: &LabAccess<P>,
    user_id: i64,
    request: ChangeRole,
    origin: &Origin,
) -> Result<MemberView, AppError> {
    let role = parse_role(&request.role)?;
    let lab_id = access.lab.id;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    lab_store::lock(&mut transaction, lab_id).await?;
    let previous = lab_store::set_role(&mut transaction, lab_id, user_id, role, now)
        .await?
        .ok_or(AppError::NotFound)?;
    keep_a_lab_admin(&mut transaction, access).await?;
    if previous != role.as_str() {
        // A role change is a credential event: links emailed before it are void.
        crate::users::store::void_emailed_links(&mut transaction, user_id).await?;
    }
    let member = lab_store::member(&mut transaction, lab_id, user_id)
        .await?
        .ok_or(AppError::NotFound)?;
    transaction
        .commit(
            Event::new(Action::MemberRoleUpdated, now)
                .actor(Some(access.caller.user.id))
                .resource("membership", format!("{lab_id}:{user_id}"))
                .lab(lab_id)
                .details(
                    json!({"user_id": user_id, "role": {"from": previous, "to": role.as_str()}}),
                )
                .origin(origin),
        )
        .await?;
    Ok(member)
}

/// Records a read of lab data in the batched access log (off the request path).
#[tracing::instrument(skip_all)]
pub async fn log_read<P: Requirement>(
    state: &AppState,
    access: &LabAccess<P>,
    action: Action,
    origin: &Origin,
) {
    let role = access.role.map_or("admin", LabRole::as_str);
    state
        .access_log
        .record(
            Event::new(action, state.now())
                .actor(Some(access.caller.user.id))
                .resource("lab", access.lab.id)
                .lab(access.lab.id)
                .details(json!({"role": role}))
                .origin(origin),
        )
        .await;
}
