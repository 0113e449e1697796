//! Queries on `labs` and `lab_memberships`. Every membership query names its lab: there is
//! no query here that reads or writes a lab's rows without the lab filter.

use crate::clock::{Millis, Timestamp};
use crate::labs::{Lab, LabCode, LabRole, MemberUser, MemberView};
use crate::paging::PageRequest;
use crate::store::{Conditions, Connection, Db, SqlValue, StoreError, like_pattern};

/// `code` is read as text, as the user columns are (`users::store::user_columns`).
const LAB_COLUMNS: &str = "labs.id, CAST(labs.code AS TEXT) AS code, labs.name, labs.description, \
    labs.is_active, labs.require_mfa, labs.created_at, labs.updated_at";

pub async fn insert(
    connection: &mut Connection,
    code: &LabCode,
    name: &str,
    description: &str,
    now: Millis,
) -> Result<Lab, StoreError> {
    let sql = format!(
        "INSERT INTO labs (code, name, description, is_active, created_at, updated_at) \
         VALUES ($1, $2, $3, TRUE, $4, $4) RETURNING {}",
        LAB_COLUMNS.replace("labs.", "")
    );
    crate::with_db!(connection, |db| sqlx::query_as::<_, Lab>(&sql)
        .bind(code.as_str())
        .bind(name)
        .bind(description)
        .bind(Timestamp::from(now))
        .fetch_one(db)
        .await)
    .map_err(StoreError::from)
}

pub async fn find(connection: &mut Connection, lab_id: i64) -> Result<Option<Lab>, StoreError> {
    let sql = format!("SELECT {LAB_COLUMNS} FROM labs WHERE labs.id = $1");
    Ok(crate::with_db!(connection, |db| sqlx::query_as::<_, Lab>(
        &sql
    )
    .bind(lab_id)
    .fetch_optional(db)
    .await)?)
}

/// The lab and the user's role in it, if the user is a member.
pub async fn membership_in(
    connection: &mut Connection,
    lab_id: i64,
    user_id: i64,
) -> Result<Option<(Lab, LabRole)>, StoreError> {
    let sql = format!(
        "SELECT {LAB_COLUMNS}, lab_memberships.role FROM lab_memberships \
         JOIN labs ON labs.id = lab_memberships.lab_id \
         WHERE lab_memberships.lab_id = $1 AND lab_memberships.user_id = $2"
    );
    #[derive(sqlx::FromRow)]
    struct LabAndRole {
        #[sqlx(flatten)]
        lab: Lab,
        role: String,
    }
    let Some(LabAndRole { lab, role }) =
        crate::with_db!(connection, |db| sqlx::query_as::<_, LabAndRole>(&sql)
            .bind(lab_id)
            .bind(user_id)
            .fetch_optional(db)
            .await)?
    else {
        return Ok(None);
    };
    let role = LabRole::parse(&role)
        .map_err(|e| StoreError::Corrupt(format!("stored role {role}: {e}")))?;
    Ok(Some((lab, role)))
}

pub struct LabFilter {
    /// Only labs this user is a member of (non-admin callers).
    pub member: Option<i64>,
    pub query: Option<String>,
    pub is_active: Option<bool>,
}

pub async fn list(
    connection: &mut Connection,
    filter: &LabFilter,
    page: PageRequest,
) -> Result<(Vec<Lab>, i64), StoreError> {
    let mut conditions = Conditions::new();
    if let Some(user_id) = filter.member {
        conditions.push(
            "labs.id IN (SELECT lab_id FROM lab_memberships WHERE user_id = ?)",
            SqlValue::Int(user_id),
        );
    }
    if let Some(query) = &filter.query {
        conditions.push(
            "(lower(labs.code) LIKE ? ESCAPE '\\' OR lower(labs.name) LIKE ? ESCAPE '\\')",
            SqlValue::Text(like_pattern(query)),
        );
    }
    if let Some(active) = filter.is_active {
        conditions.push("labs.is_active = ?", SqlValue::Flag(active));
    }
    let where_sql = conditions.where_sql();
    let count_sql = format!("SELECT COUNT(*) FROM labs{where_sql}");
    let (total,): (i64,) = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as(&count_sql))
        .fetch_one(db)
        .await)?;
    let items_sql = format!(
        "SELECT {LAB_COLUMNS} FROM labs{where_sql} ORDER BY labs.code LIMIT {} OFFSET {}",
        conditions.next_placeholder(1),
        conditions.next_placeholder(2)
    );
    let items = crate::with_db!(connection, |db| conditions
        .bind(sqlx::query_as::<_, Lab>(&items_sql))
        .bind(page.per_page)
        .bind(page.offset())
        .fetch_all(db)
        .await)?;
    Ok((items, total))
}

pub struct LabChanges {
    pub code: Option<LabCode>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    pub require_mfa: Option<bool>,
}

pub async fn update(
    connection: &mut Connection,
    lab_id: i64,
    changes: &LabChanges,
    now: Millis,
) -> Result<Option<Lab>, StoreError> {
    let sql = format!(
        "UPDATE labs SET code = COALESCE($2, code), name = COALESCE($3, name), \
         description = COALESCE($4, description), is_active = COALESCE($5, is_active), updated_at = $6, \
         require_mfa = COALESCE($7, require_mfa) WHERE id = $1 RETURNING {}",
        LAB_COLUMNS.replace("labs.", "")
    );
    let updated = crate::with_db!(connection, |db| sqlx::query_as::<_, Lab>(&sql)
        .bind(lab_id)
        .bind(changes.code.as_ref().map(LabCode::as_str))
        .bind(changes.name.as_deref())
        .bind(changes.description.as_deref())
        .bind(changes.is_active)
        .bind(Timestamp::from(now))
        .bind(changes.require_mfa)
        .fetch_optional(db)
        .await)?;
    members_changed(connection, lab_id).await?;
    Ok(updated)
}

/// Says that every member of lab `lab_id` changed (for the auth cache, which keeps each
/// account's labs).
async fn members_changed(connection: &mut Connection, lab_id: i64) -> Result<(), StoreError> {
    let members: Vec<i64> = crate::with_db!(connection, |db| sqlx::query_scalar(
        "SELECT user_id FROM lab_memberships WHERE lab_id = $1"
    )
    .bind(lab_id)
    .fetch_all(db)
    .await)?;
    for user_id in members {
        connection.changed(user_id);
    }
    Ok(())
}

/// Deletes a lab and its memberships; returns how many memberships went with it.
pub async fn delete(connection: &mut Connection, lab_id: i64) -> Result<Option<i64>, StoreError> {
    let (members,): (i64,) = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT COUNT(*) FROM lab_memberships WHERE lab_id = $1"
    )
    .bind(lab_id)
    .fetch_one(db)
    .await)?;
    members_changed(connection, lab_id).await?;
    crate::execute!(
        connection,
        sqlx::query("DELETE FROM lab_memberships WHERE lab_id = $1").bind(lab_id)
    )?;
    let deleted = crate::execute!(
        connection,
        sqlx::query("DELETE FROM labs WHERE id = $1").bind(lab_id)
    )?;
    Ok((deleted > 0).then_some(members))
}

/// Takes the lab's row lock for the rest of the transaction, so concurrent membership
/// changes of one lab are ordered and the lab_admin rule holds under races. SQLite needs no
/// lock: its one writer connection already orders every transaction.
pub async fn lock(connection: &mut Connection, lab_id: i64) -> Result<bool, StoreError> {
    const FIND: &str = "SELECT id FROM labs WHERE id = $1";
    let found = match connection.db() {
        Db::Postgres(db) => {
            sqlx::query_scalar::<_, i64>(&format!("{FIND} FOR UPDATE"))
                .bind(lab_id)
                .fetch_optional(db)
                .await?
        }
        Db::Sqlite(db) => {
            sqlx::query_scalar::<_, i64>(FIND)
                .bind(lab_id)
                .fetch_optional(db)
                .await?
        }
    };
    Ok(found.is_some())
}

const MEMBER_SELECT: &str = "SELECT users.id, CAST(users.username AS TEXT) AS username, \
    CAST(users.email AS TEXT) AS email, users.first_name, users.last_name, \
    lab_memberships.role, lab_memberships.created_at FROM lab_memberships \
    JOIN users ON users.id = lab_memberships.user_id WHERE lab_memberships.lab_id = $1";

#[derive(sqlx::FromRow)]
struct MemberRow {
    id: i64,
    username: String,
    email: String,
    first_name: String,
    last_name: String,
    role: String,
    created_at: Timestamp,
}

impl From<MemberRow> for MemberView {
    fn from(row: MemberRow) -> Self {
        MemberView {
            user: MemberUser {
                id: row.id,
                username: row.username,
                email: Some(row.email),
                first_name: row.first_name,
                last_name: row.last_name,
            },
            role: row.role,
            joined_at: row.created_at,
        }
    }
}

pub async fn members(
    connection: &mut Connection,
    lab_id: i64,
) -> Result<Vec<MemberView>, StoreError> {
    let sql = format!("{MEMBER_SELECT} ORDER BY users.username");
    let rows = crate::with_db!(connection, |db| sqlx::query_as::<_, MemberRow>(&sql)
        .bind(lab_id)
        .fetch_all(db)
        .await)?;
    Ok(rows.into_iter().map(MemberView::from).collect())
}

pub async fn member(
    connection: &mut Connection,
    lab_id: i64,
    user_id: i64,
) -> Result<Option<MemberView>, StoreError> {
    let sql = format!("{MEMBER_SELECT} AND lab_memberships.user_id = $2");
    let row = crate::with_db!(connection, |db| sqlx::query_as::<_, MemberRow>(&sql)
        .bind(lab_id)
        .bind(user_id)
        .fetch_optional(db)
        .await)?;
    Ok(row.map(MemberView::from))
}

pub async fn add_member(
    connection: &mut Connection,
    lab_id: i64,
    user_id: i64,
    role: LabRole,
    now: Millis,
) -> Result<(), StoreError> {
    crate::execute!(connection, sqlx::query(
        "INSERT INTO lab_memberships (user_id, lab_id, role, created_at, updated_at) VALUES ($1, $2, $3, $4, $4)",
    )
    .bind(user_id)
    .bind(lab_id)
    .bind(role.as_str())
    .bind(Timestamp::from(now))
    )?;
    connection.changed(user_id);
    Ok(())
}

/// Removes a member; returns the role they had, or `None` if they were not a member.
pub async fn remove_member(
    connection: &mut Connection,
    lab_id: i64,
    user_id: i64,
) -> Result<Option<String>, StoreError> {
    let removed = crate::with_db!(connection, |db| sqlx::query_scalar(
        "DELETE FROM lab_memberships WHERE lab_id = $1 AND user_id = $2 RETURNING role",
    )
    .bind(lab_id)
    .bind(user_id)
    .fetch_optional(db)
    .await)?;
    connection.changed(user_id);
    Ok(removed)
}

/// Changes a member's role; returns the previous role, or `None` if not a member.
pub async fn set_role(
    connection: &mut Connection,
    lab_id: i64,
    user_id: i64,
    role: LabRole,
    now: Millis,
) -> Result<Option<String>, StoreError> {
    let previous: Option<String> = crate::with_db!(connection, |db| sqlx::query_scalar(
        "SELECT role FROM lab_memberships WHERE lab_id = $1 AND user_id = $2"
    )
    .bind(lab_id)
    .bind(user_id)
    .fetch_optional(db)
    .await)?;
    let Some(previous) = previous else {
        return Ok(None);
    };
    crate::execute!(connection, sqlx::query(
        "UPDATE lab_memberships SET role = $3, updated_at = $4 WHERE lab_id = $1 AND user_id = $2",
    )
    .bind(lab_id)
    .bind(user_id)
    .bind(role.as_str())
    .bind(Timestamp::from(now))
    )?;
    connection.changed(user_id);
    Ok(Some(previous))
}

/// (members, lab_admins) of a lab.
pub async fn admin_balance(
    connection: &mut Connection,
    lab_id: i64,
) -> Result<(i64, i64), StoreError> {
    let (members, admins): (i64, i64) = crate::with_db!(connection, |db| sqlx::query_as(
        "SELECT COUNT(*), COALESCE(SUM(CASE WHEN role = 'lab_admin' THEN 1 ELSE 0 END), 0) \
         FROM lab_memberships WHERE lab_id = $1",
    )
    .bind(lab_id)
    .fetch_one(db)
    .await)?;
    Ok((members, admins))
}
