//! Lab invitations: how a lab admin brings a person into a lab without learning who has an
//! account. The lab admin names an address; the answer is the same whether or not an account
//! has it, and the person (signed in with that address, verified) accepts or declines. An
//! address without an account gets a link that leads through registration first.
//!
//! An invitation is stored as the SHA-256 of its token, is answered once, and lives for
//! `INVITATION_LIFETIME`; a new invitation of the same address to the same lab replaces a
//! pending one. System admins keep adding members directly by id.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::audit::{self, Action, Event, Origin};
use crate::auth::links::{INVALID_LINK, hours};
use crate::clock::{Millis, Timestamp};
use crate::error::{AppError, FieldCheck};
use crate::labs::access::{LabAccess, ManageMembers};
use crate::labs::store as lab_store;
use crate::labs::{LabRole, MemberView};
use crate::mail::EmailKind;
use crate::security::secrets::{hash_token, random_token};
use crate::state::AppState;
use crate::store::{Connection, StoreError};
use crate::users::{Email, User};

/// How long an invitation can be answered.
pub const INVITATION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(7 * 86_400);

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Invite {
    /// The address to invite; whether an account has it is never revealed.
    pub email: String,
    /// `lab_admin`, `member` or `viewer`.
    pub role: String,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvitationAnswer {
    /// The `token` of the link in the invitation email.
    pub token: String,
}

/// An invitation as its lab's admins see it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema, sqlx::FromRow)]
pub struct InvitationView {
    pub id: i64,
    pub lab_id: i64,
    pub email: String,
    pub role: String,
    /// `pending`, `accepted`, `declined`, `revoked` or `expired`.
    pub status: String,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: Timestamp,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub answered_at: Option<Timestamp>,
}

impl InvitationView {
    /// A pending invitation past its time reads as `expired`.
    fn seen_at(mut self, now: Millis) -> Self {
        if self.status == "pending" && self.expires_at.millis() <= now {
            self.status = "expired".into();
        }
        self
    }
}

const COLUMNS: &str = "id, lab_id, email, role, status, created_at, expires_at, answered_at";

/// Invites `request.email` to the lab. The answer, and the work done, are the same whether or
/// not an account has the address; only the email the person receives differs.
#[tracing::instrument(skip_all)]
pub async fn invite(
    state: &AppState,
    access: &LabAccess<ManageMembers>,
    request: Invite,
    origin: &Origin,
) -> Result<InvitationView, AppError> {
    let mut check = FieldCheck::new();
    let email = check.check("email", Email::parse(&request.email));
    let role = check.check("role", LabRole::parse(&request.role));
    let (email, role) = check.finish_with(email.zip(role))?;
    let lab = &access.lab;
    let now = state.now();
    let token = random_token();
    let expires_at = now + INVITATION_LIFETIME.as_millis() as i64;
    let mut transaction = audit::Audited::begin(&state.store).await?;
    if !lab_store::lock(&mut transaction, lab.id).await? {
        return Err(AppError::NotFound);
    }
    crate::execute!(
        &mut transaction,
        sqlx::query(
            "UPDATE lab_invitations SET status = 'revoked', answered_at = $3 \
         WHERE lab_id = $1 AND email = $2 AND status = 'pending'",
        )
        .bind(lab.id)
        .bind(email.as_str())
        .bind(Timestamp::from(now))
    )?;
    let sql = format!(
        "INSERT INTO lab_invitations (lab_id, email, role, token_hash, invited_by, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {COLUMNS}"
    );
    let invitation: InvitationView = crate::with_db!(&mut transaction, |db| sqlx::query_as(&sql)
        .bind(lab.id)
        .bind(email.as_str())
        .bind(role.as_str())
        .bind(hash_token(&token))
        .bind(access.caller.user.id)
        .bind(Timestamp::from(now))
        .bind(Timestamp::from(expires_at))
        .fetch_one(db)
        .await)
    .map_err(StoreError::from)?;
    let account = crate::users::store::find_by_login(&mut transaction, email.as_str())
        .await?
        .filter(|user| user.email.eq_ignore_ascii_case(email.as_str()));
    let details = json!({
        "lab_name": lab.name,
        "role": role.as_str(),
        "has_account": account.is_some(),
        "valid_hours": hours(INVITATION_LIFETIME),
        "link": match account {
            Some(_) => state.outbox.link("invitations/accept", &token),
            None => state.outbox.link("register", &token).replace("?token=", "?invitation="),
        },
        "decline_link": state.outbox.link("invitations/decline", &token),
    });
    match &account {
        Some(user) => {
            state
                .outbox
                .enqueue(
                    &mut transaction,
                    user,
                    email.as_str(),
                    EmailKind::LabInvitation,
                    details,
                    now,
                )
                .await?
        }
        None => {
            state
                .outbox
                .enqueue_to_address(
                    &mut transaction,
                    email.as_str(),
                    EmailKind::LabInvitation,
                    details,
                    now,
                )
                .await?
        }
    }
    transaction
        .commit(
            Event::new(Action::InvitationSent, now)
                .actor(Some(access.caller.user.id))
                .resource("lab", lab.id)
                .lab(lab.id)
                .details(json!({"invitation_id": invitation.id, "role": role.as_str()}))
                .origin(origin),
        )
        .await?;
    Ok(invitation)
}

/// The lab's invitations, newest first, each with its status as of now.
#[tracing::instrument(skip_all)]
pub async fn list(
    state: &AppState,
    access: &LabAccess<ManageMembers>,
) -> Result<Vec<InvitationView>, AppError> {
    let now = state.now();
    let mut connection = state.store.read().await?;
    let sql = format!(
        "SELECT {COLUMNS} FROM lab_invitations WHERE lab_id = $1 ORDER BY created_at DESC, id DESC"
    );
    let invitations: Vec<InvitationView> = crate::with_db!(connection, |db| sqlx::query_as(&sql)
        .bind(access.lab.id)
        .fetch_all(db)
        .await)
    .map_err(StoreError::from)?;
    Ok(invitations
        .into_iter()
        .map(|invitation| invitation.seen_at(now))
        .collect())
}

/// Revokes a pending invitation of the lab: its link stops working.
#[tracing::instrument(skip_all)]
pub async fn revoke(
    state: &AppState,
    access: &LabAccess<ManageMembers>,
    invitation_id: i64,
    origin: &Origin,
) -> Result<(), AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    // One conditional UPDATE: an answer committing meanwhile is not overwritten.
    let revoked: Option<i64> = crate::with_db!(&mut transaction, |db| sqlx::query_scalar(
        "UPDATE lab_invitations SET status = 'revoked', answered_at = $3 \
         WHERE id = $1 AND lab_id = $2 AND status = 'pending' RETURNING id"
    )
    .bind(invitation_id)
    .bind(access.lab.id)
    .bind(Timestamp::from(now))
    .fetch_optional(db)
    .await)
    .map_err(StoreError::from)?;
    if revoked.is_none() {
        let exists: Option<i64> = crate::with_db!(&mut transaction, |db| sqlx::query_scalar(
            "SELECT id FROM lab_invitations WHERE id = $1 AND lab_id = $2"
        )
        .bind(invitation_id)
        .bind(access.lab.id)
        .fetch_optional(db)
        .await)
        .map_err(StoreError::from)?;
        return Err(match exists {
            None => AppError::NotFound,
            Some(_) => AppError::conflict(
                "invitation",
                "the invitation was answered or revoked already",
            ),
        });
    }
    transaction
        .commit(
            Event::new(Action::InvitationRevoked, now)
                .actor(Some(access.caller.user.id))
                .resource("lab", access.lab.id)
                .lab(access.lab.id)
                .details(json!({"invitation_id": invitation_id}))
                .origin(origin),
        )
        .await
}

/// A live invitation found by its token.
struct Live {
    id: i64,
    lab_id: i64,
    email: String,
    role: LabRole,
}

/// The pending, unexpired invitation the token opens, claimed for an answer in this
/// transaction (a conditional UPDATE, so two answers cannot both win).
async fn claim(
    connection: &mut Connection,
    token: &str,
    answer: &str,
    answered_by: Option<i64>,
    now: Millis,
) -> Result<Live, AppError> {
    let row: Option<(i64, i64, String, String)> = crate::with_db!(connection, |db| {
        sqlx::query_as(
            "UPDATE lab_invitations SET status = $2, answered_at = $3, answered_by = $4 \
             WHERE token_hash = $1 AND status = 'pending' AND expires_at > $3 \
             RETURNING id, lab_id, email, role",
        )
        .bind(hash_token(token))
        .bind(answer)
        .bind(Timestamp::from(now))
        .bind(answered_by)
        .fetch_optional(db)
        .await
    })
    .map_err(StoreError::from)?;
    let (id, lab_id, email, role) = row.ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    let role = LabRole::parse(&role)
        .map_err(|_| StoreError::Corrupt(format!("invitation {id} has role {role:?}")))?;
    Ok(Live {
        id,
        lab_id,
        email,
        role,
    })
}

/// Accepts an invitation as the signed-in `user`, who must hold the invited address,
/// verified: the user becomes a member of the lab with the invited role.
#[tracing::instrument(skip_all)]
pub async fn accept(
    state: &AppState,
    user: &User,
    request: InvitationAnswer,
    origin: &Origin,
) -> Result<MemberView, AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    // The lab is locked before the invitation, in the order `invite` takes them.
    let lab_id: Option<i64> = crate::with_db!(&mut transaction, |db| sqlx::query_scalar(
        "SELECT lab_id FROM lab_invitations WHERE token_hash = $1"
    )
    .bind(hash_token(&request.token))
    .fetch_optional(db)
    .await)
    .map_err(StoreError::from)?;
    let lab = match lab_id {
        Some(lab_id) if lab_store::lock(&mut transaction, lab_id).await? => {
            lab_store::find(&mut transaction, lab_id).await?
        }
        _ => None,
    }
    .ok_or_else(|| AppError::BadRequest(INVALID_LINK.into()))?;
    let invitation = claim(
        &mut transaction,
        &request.token,
        "accepted",
        Some(user.id),
        now,
    )
    .await?;
    if !lab.is_active() {
        return Err(AppError::Forbidden(
            "The lab is inactive: the invitation can be accepted once it is active again.",
        ));
    }
    // The invitation went to an address, not to whoever holds the link: only the account
    // that has proven that address may take it up.
    if !user.email.eq_ignore_ascii_case(&invitation.email) {
        return Err(AppError::Forbidden(
            "The invitation was sent to another email address.",
        ));
    }
    if !user.email_verified {
        return Err(AppError::Forbidden(
            "Verify your email address before accepting the invitation.",
        ));
    }
    lab_store::add_member(
        &mut transaction,
        invitation.lab_id,
        user.id,
        invitation.role,
        now,
    )
    .await?;
    let member = lab_store::member(&mut transaction, invitation.lab_id, user.id)
        .await?
        .ok_or(AppError::NotFound)?;
    transaction
        .commit(
            Event::new(Action::InvitationAccepted, now)
                .actor(Some(user.id))
                .resource("membership", format!("{}:{}", invitation.lab_id, user.id))
                .lab(invitation.lab_id)
                .details(json!({
                    "invitation_id": invitation.id,
                    "user_id": user.id,
                    "role": invitation.role.as_str(),
                }))
                .origin(origin),
        )
        .await?;
    Ok(member)
}

/// Declines an invitation. The link alone is enough: it reached the invited address.
#[tracing::instrument(skip_all)]
pub async fn decline(
    state: &AppState,
    request: InvitationAnswer,
    origin: &Origin,
) -> Result<(), AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let invitation = claim(&mut transaction, &request.token, "declined", None, now).await?;
    transaction
        .commit(
            Event::new(Action::InvitationDeclined, now)
                .resource("lab", invitation.lab_id)
                .lab(invitation.lab_id)
                .details(json!({"invitation_id": invitation.id}))
                .origin(origin),
        )
        .await
}

/// How long an invitation is kept after its time ran out: long enough for its lab's admins to
/// see who did not answer, no longer (it names an address that may belong to no member).
pub const KEPT_AFTER_EXPIRY: std::time::Duration = std::time::Duration::from_secs(90 * 86_400);

/// Deletes the invitations whose time ran out more than `KEPT_AFTER_EXPIRY` ago; returns how
/// many.
pub async fn expire(connection: &mut Connection, now: Millis) -> Result<u64, StoreError> {
    let before = now - KEPT_AFTER_EXPIRY.as_millis() as i64;
    Ok(crate::execute!(
        connection,
        sqlx::query("DELETE FROM lab_invitations WHERE expires_at < $1")
            .bind(Timestamp::from(before))
    )?)
}
