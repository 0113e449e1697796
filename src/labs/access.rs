//! `LabAccess<P>`: the Rust form of the seed's `@require_lab_access(lab_id)` and
//! `@lab_admin_required`. A handler that takes `LabAccess<ManageMembers>` cannot run unless
//! the caller, read from the store on this request, may manage that lab's members.
//!
//! Rules: a system admin passes everywhere (404 if the lab does not exist); anyone else
//! needs a membership in an active lab whose role carries the permission, and gets 403
//! otherwise, whether or not the lab exists, so lab ids cannot be probed. A member of a lab
//! that requires a second factor, in a session that did not prove one, gets 403
//! `mfa_enrollment_required` (no factor yet) or `step_up_required`.

use std::marker::PhantomData;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::request::Parts;

use crate::error::AppError;
use crate::http::extract::AuthUser;
use crate::labs::{ALL_PERMISSIONS, AccessView, Lab, LabRole, Permission};
use crate::state::AppState;

pub trait Requirement: Send + Sync {
    const PERMISSION: Permission;
}

/// Any member: viewer, member or lab_admin.
pub struct Read;
/// Members and lab_admins.
pub struct Write;
/// lab_admins.
pub struct ManageMembers;

impl Requirement for Read {
    const PERMISSION: Permission = Permission::Read;
}
impl Requirement for Write {
    const PERMISSION: Permission = Permission::Write;
}
impl Requirement for ManageMembers {
    const PERMISSION: Permission = Permission::ManageMembers;
}

pub struct LabAccess<P: Requirement> {
    pub caller: AuthUser,
    pub lab: Lab,
    /// The caller's role in the lab; `None` for a system admin.
    pub role: Option<LabRole>,
    requirement: PhantomData<P>,
}

impl<P: Requirement> LabAccess<P> {
    pub fn is_system_admin(&self) -> bool {
        self.role.is_none()
    }

    pub fn view(&self) -> AccessView {
        let (role, permissions) = match self.role {
            Some(role) => (role.as_str(), role.permissions()),
            None => ("admin", &ALL_PERMISSIONS[..]),
        };
        AccessView {
            lab_id: self.lab.id,
            role: role.to_string(),
            permissions: permissions.iter().map(|p| p.as_str()).collect(),
        }
    }
}

/// The `{id}` of a lab route.
pub async fn lab_id_from_path(parts: &mut Parts, state: &AppState) -> Result<i64, AppError> {
    let params = RawPathParams::from_request_parts(parts, state)
        .await
        .map_err(|_| AppError::NotFound)?;
    params
        .iter()
        .find(|(name, _)| *name == "id")
        .and_then(|(_, value)| value.parse::<i64>().ok())
        .ok_or(AppError::NotFound)
}

impl<P: Requirement + 'static> FromRequestParts<AppState> for LabAccess<P> {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let caller = AuthUser::from_request_parts(parts, state).await?;
        let lab_id = lab_id_from_path(parts, state).await;
        LabAccess::resolve(state, caller, lab_id).await
    }
}

impl<P: Requirement> LabAccess<P> {
    /// The caller's access of kind `P` to lab `lab_id`, by the rules above (for the API's
    /// extractor and the console's pages).
    pub async fn resolve(
        state: &AppState,
        caller: AuthUser,
        lab_id: Result<i64, AppError>,
    ) -> Result<Self, AppError> {
        if caller.user.is_admin() {
            caller.check_admin_policy(state)?;
            let mut connection = state.store.read().await?;
            let lab = crate::labs::store::find(&mut connection, lab_id?)
                .await?
                .ok_or(AppError::NotFound)?;
            return Ok(LabAccess {
                caller,
                lab,
                role: None,
                requirement: PhantomData,
            });
        }
        let denied = AppError::Forbidden("You do not have this access to the lab.");
        let Ok(lab_id) = lab_id else {
            return Err(denied);
        };
        match membership_in(state, lab_id, caller.user.id).await? {
            // A lab that requires a second factor wants it proven by this session, and says
            // what is missing on every route of the lab (its access check included): a factor
            // to enrol, or this session to step up.
            Some((lab, _))
                if lab.is_active() && lab.require_mfa && !caller.proved_second_factor() =>
            {
                Err(if caller.user.mfa_enabled {
                    AppError::StepUpRequired
                } else {
                    AppError::MfaEnrollmentRequired
                })
            }
            Some((lab, role)) if lab.is_active() && role.allows(P::PERMISSION) => Ok(LabAccess {
                caller,
                lab,
                role: Some(role),
                requirement: PhantomData,
            }),
            _ => Err(denied),
        }
    }
}

/// The lab and the user's role in it, if a member: from the auth cache when it knows, else
/// read and remembered.
async fn membership_in(
    state: &AppState,
    lab_id: i64,
    user_id: i64,
) -> Result<Option<(Lab, LabRole)>, AppError> {
    let cache = state.store.auth_cache();
    if let Some(known) = cache.membership(user_id, lab_id, state.now()) {
        return Ok(known);
    }
    let epoch = cache.epoch();
    let mut connection = state.store.read().await?;
    let found = crate::labs::store::membership_in(&mut connection, lab_id, user_id).await?;
    cache.fill_membership(epoch, user_id, lab_id, found.clone());
    Ok(found)
}
