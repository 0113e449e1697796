//! The rules of accounts: admin listing, profile edits without mass assignment, deletion,
//! unlock, and account creation outside registration (system admins, the Flask import).

use std::collections::HashMap;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, Action, Event, Origin};
use crate::auth::password::{PasswordHasherConfig, check_policy, is_supported_hash};
use crate::clock::Millis;
use crate::error::AppError;
use crate::error::FieldCheck;
use crate::paging::{ListQuery, Page};
use crate::state::AppState;
use crate::store::Store;
use crate::users::store::{self as user_store, NewUser};
use crate::users::store::{UserChanges, UserFilter};
use crate::users::{Email, Username, parse_name};
use crate::users::{Membership, User, UserView};

#[derive(Debug, PartialEq, Eq)]
pub enum AdminOutcome {
    Created(i64),
    AlreadyExists(i64),
}

/// Creates a system admin unless a user of that username already exists.
#[tracing::instrument(skip_all)]
pub async fn ensure_admin(
    store: &Store,
    hasher: &PasswordHasherConfig,
    min_length: usize,
    username: &str,
    email: &str,
    password: &SecretString,
    now: Millis,
) -> anyhow::Result<AdminOutcome> {
    let username = Username::parse(username).map_err(|e| anyhow::anyhow!("username {e}"))?;
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("email {e}"))?;
    {
        let mut connection = store.read().await?;
        if let Some(existing) =
            user_store::find_by_username(&mut connection, username.as_str()).await?
        {
            return Ok(AdminOutcome::AlreadyExists(existing.id));
        }
    }
    check_policy(
        password.expose_secret(),
        min_length,
        Some(username.as_str()),
    )
    .map_err(|e| anyhow::anyhow!("password {e}"))?;
    let password_hash = hasher.hash(password)?;
    let mut transaction = audit::Audited::begin(store).await?;
    let user = user_store::insert(
        &mut transaction,
        NewUser {
            username: &username,
            email: &email,
            password_hash: &password_hash,
            first_name: "",
            last_name: "",
            is_admin: true,
            is_active: true,
            email_verified: true,
        },
        now,
    )
    .await?;
    transaction
        .commit(
            Event::new(Action::UserCreated, now)
                .resource("user", user.id)
                .details(
                    json!({"username": user.username, "is_admin": true, "via": "command line"}),
                ),
        )
        .await?;
    Ok(AdminOutcome::Created(user.id))
}

/// One user of the Flask original, as exported from its database.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportedUser {
    pub username: String,
    pub email: String,
    pub password_hash: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub is_active: Option<bool>,
    #[serde(default, deserialize_with = "lenient_bool")]
    pub is_admin: Option<bool>,
}

/// CSV gives booleans as text: accepts true/false, 1/0, yes/no, t/f and empty.
fn lenient_bool<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<bool>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bool(bool),
        Number(i64),
        Text(String),
    }
    match Option::<Raw>::deserialize(deserializer)? {
        None => Ok(None),
        Some(Raw::Bool(value)) => Ok(Some(value)),
        Some(Raw::Number(number)) => Ok(Some(number != 0)),
        Some(Raw::Text(text)) => match text.trim().to_ascii_lowercase().as_str() {
            "" => Ok(None),
            "1" | "true" | "t" | "yes" | "y" => Ok(Some(true)),
            "0" | "false" | "f" | "no" | "n" => Ok(Some(false)),
            other => Err(serde::de::Error::custom(format!(
                "`{other}` is not a boolean"
            ))),
        },
    }
}

/// Reads a JSON array or a CSV file with a header row.
pub fn parse_import(text: &str) -> anyhow::Result<Vec<ImportedUser>> {
    if text.trim_start().starts_with('[') {
        return Ok(serde_json::from_str(text)?);
    }
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    reader
        .deserialize()
        .enumerate()
        .map(|(index, row)| row.map_err(|e| anyhow::anyhow!("CSV row {}: {e}", index + 2)))
        .collect()
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: usize,
    pub skipped_existing: usize,
}

/// Imports users in one transaction: every row is checked first, and one bad row imports
/// nothing. Users that already exist (by username or email) are skipped and counted.
#[tracing::instrument(skip_all)]
pub async fn import_users(
    store: &Store,
    users: Vec<ImportedUser>,
    now: Millis,
    mut progress: impl FnMut(usize, usize),
) -> anyhow::Result<ImportReport> {
    let total = users.len();
    let mut checked = Vec::with_capacity(total);
    for (index, user) in users.iter().enumerate() {
        let row = index + 1;
        let username = Username::parse(&user.username)
            .map_err(|e| anyhow::anyhow!("user {row}: username {e}"))?;
        let email =
            Email::parse(&user.email).map_err(|e| anyhow::anyhow!("user {row}: email {e}"))?;
        if !is_supported_hash(&user.password_hash) {
            anyhow::bail!(
                "user {row} ({}): password_hash is not a Werkzeug or Argon2 hash",
                user.username
            );
        }
        let first_name = parse_name(user.first_name.as_deref().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("user {row}: first_name {e}"))?;
        let last_name = parse_name(user.last_name.as_deref().unwrap_or_default())
            .map_err(|e| anyhow::anyhow!("user {row}: last_name {e}"))?;
        checked.push((username, email, first_name, last_name, user));
    }
    let mut report = ImportReport::default();
    let mut transaction = audit::Audited::begin(store).await?;
    for (index, (username, email, first_name, last_name, user)) in checked.iter().enumerate() {
        let exists = {
            let by_name = user_store::find_by_login(&mut transaction, username.as_str()).await?;
            let by_email = user_store::find_by_login(&mut transaction, email.as_str()).await?;
            by_name.is_some() || by_email.is_some()
        };
        if exists {
            report.skipped_existing += 1;
        } else {
            user_store::insert(
                &mut transaction,
                NewUser {
                    username,
                    email,
                    password_hash: &user.password_hash,
                    first_name,
                    last_name,
                    is_admin: user.is_admin.unwrap_or(false),
                    is_active: user.is_active.unwrap_or(true),
                    email_verified: false,
                },
                now,
            )
            .await?;
            report.imported += 1;
        }
        progress(index + 1, total);
    }
    transaction.commit(Event::new(Action::UsersImported, now)
            .resource("user", "import")
            .details(
                json!({"imported": report.imported, "skipped_existing": report.skipped_existing}),
            )).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_imports_read_the_same_fields() {
        let csv = "username,email,password_hash,first_name,last_name,is_active,is_admin\n\
                   alice,Alice@Lab.org,pbkdf2:sha256:1000$s$00ff,Alice,Smith,1,false\n\
                   bob,bob@lab.org,scrypt:16:8:1$s$00ff,,,,\n";
        let users = parse_import(csv).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users[0].is_active, Some(true));
        assert_eq!(users[0].is_admin, Some(false));
        assert_eq!(users[1].is_active, None);
        let json = r#"[{"username": "carol", "email": "c@lab.org", "password_hash": "x$y$00", "is_admin": true}]"#;
        let users = parse_import(json).unwrap();
        assert_eq!(users[0].is_admin, Some(true));
        assert!(parse_import("username,email\nx,y\n").is_err());
    }
}

/// The body of `PUT`/`PATCH /api/users/{id}`. The owner may change the names; the rest is
/// for system admins only.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub username: Option<String>,
    pub email: Option<String>,
    pub is_active: Option<bool>,
    pub is_admin: Option<bool>,
    /// The owner may switch off new sign-in alerts.
    pub new_login_alerts: Option<bool>,
}

impl UpdateUser {
    fn admin_only_fields(&self) -> Vec<&'static str> {
        [
            ("username", self.username.is_some()),
            ("email", self.email.is_some()),
            ("is_active", self.is_active.is_some()),
            ("is_admin", self.is_admin.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
        .collect()
    }

    fn parse(&self) -> Result<UserChanges, AppError> {
        let mut check = FieldCheck::new();
        let username = check.check(
            "username",
            self.username.as_deref().map(Username::parse).transpose(),
        );
        let email = check.check("email", self.email.as_deref().map(Email::parse).transpose());
        let first_name = check.check(
            "first_name",
            self.first_name.as_deref().map(parse_name).transpose(),
        );
        let last_name = check.check(
            "last_name",
            self.last_name.as_deref().map(parse_name).transpose(),
        );
        let changes = match (username, email, first_name, last_name) {
            (Some(username), Some(email), Some(first_name), Some(last_name)) => Some(UserChanges {
                username,
                email,
                first_name,
                last_name,
                is_active: self.is_active,
                is_admin: self.is_admin,
                new_login_alerts: self.new_login_alerts,
            }),
            _ => None,
        };
        check.finish_with(changes)
    }
}

#[tracing::instrument(skip_all)]
pub async fn list(
    state: &AppState,
    params: HashMap<String, String>,
) -> Result<Page<UserView>, AppError> {
    let mut query = ListQuery::new(params);
    let page = query.page();
    let now = state.now();
    let filter = UserFilter {
        query: query.text("q"),
        is_active: query.boolean("is_active"),
        is_admin: query.boolean("is_admin"),
        locked: query
            .boolean("locked")
            .map(|locked| (locked, crate::clock::Timestamp::from(now))),
    };
    query.finish()?;
    let mut connection = state.store.reports().await?;
    let (users, total) = user_store::list(&mut connection, &filter, page).await?;
    Ok(Page::new(
        users.iter().map(|user| user.view(now)).collect(),
        total,
        page,
    ))
}

#[tracing::instrument(skip_all)]
pub async fn get(state: &AppState, user_id: i64) -> Result<User, AppError> {
    let mut connection = state.store.read().await?;
    user_store::find_by_id(&mut connection, user_id)
        .await?
        .ok_or(AppError::NotFound)
}

/// Refuses to leave the service without an active system admin.
pub(crate) async fn keep_an_admin(
    connection: &mut crate::store::Connection,
    target: &User,
) -> Result<(), AppError> {
    if target.is_admin()
        && target.is_active()
        && user_store::other_active_admins(connection, target.id).await? == 0
    {
        return Err(AppError::conflict(
            "is_admin",
            "the last active system admin cannot be removed",
        ));
    }
    Ok(())
}

/// An admin's change that voids the account's outstanding emailed links: a new address, a
/// deactivation, a change of system role.
fn is_credential_event(before: &User, after: &User) -> bool {
    before.email != after.email
        || (before.is_active() && !after.is_active())
        || before.is_admin() != after.is_admin()
}

#[tracing::instrument(skip_all)]
pub async fn update(
    state: &AppState,
    caller: &User,
    target_id: i64,
    request: UpdateUser,
    origin: &Origin,
) -> Result<UserView, AppError> {
    if !caller.is_admin() && !request.admin_only_fields().is_empty() {
        return Err(AppError::Forbidden(
            "Only administrators may change username, email, is_active or is_admin.",
        ));
    }
    let changes = request.parse()?;
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let before = user_store::find_by_id(&mut transaction, target_id)
        .await?
        .ok_or(AppError::NotFound)?;
    if changes.is_admin == Some(false) || changes.is_active == Some(false) {
        keep_an_admin(&mut transaction, &before).await?;
    }
    let email_changed = changes
        .email
        .as_ref()
        .is_some_and(|email| email.as_str() != before.email);
    let after = user_store::update(
        &mut transaction,
        target_id,
        &changes,
        email_changed.then_some(false),
        now,
    )
    .await?
    .ok_or(AppError::NotFound)?;
    if before.is_active() && !after.is_active() {
        crate::auth::sessions::revoke_all(&mut transaction, target_id, "deactivated", None, now)
            .await?;
    }
    if is_credential_event(&before, &after) {
        user_store::void_emailed_links(&mut transaction, target_id).await?;
    }
    let mut changed = serde_json::Map::new();
    let pairs: [(&str, Value, Value); 6] = [
        ("username", json!(before.username), json!(after.username)),
        ("email", json!(before.email), json!(after.email)),
        (
            "first_name",
            json!(before.first_name),
            json!(after.first_name),
        ),
        ("last_name", json!(before.last_name), json!(after.last_name)),
        (
            "is_active",
            json!(before.is_active()),
            json!(after.is_active()),
        ),
        (
            "is_admin",
            json!(before.is_admin()),
            json!(after.is_admin()),
        ),
    ];
    for (field, old, new) in pairs {
        if old != new {
            changed.insert(field.to_string(), json!({"from": old, "to": new}));
        }
    }
    transaction
        .commit(
            Event::new(Action::UserUpdated, now)
                .actor(Some(caller.id))
                .resource("user", target_id)
                .details(json!({"changed": changed}))
                .origin(origin),
        )
        .await?;
    Ok(after.view(now))
}

#[tracing::instrument(skip_all)]
pub async fn unlock(
    state: &AppState,
    caller: &User,
    target_id: i64,
    origin: &Origin,
) -> Result<UserView, AppError> {
    let now = state.now();
    let mut transaction = audit::Audited::begin(&state.store).await?;
    let target = user_store::find_by_id(&mut transaction, target_id)
        .await?
        .ok_or(AppError::NotFound)?;
    crate::security::lockout::clear(
        &mut transaction,
        &crate::security::lockout::Subject::User(target_id),
    )
    .await?;
    transaction.record(Event::new(Action::UserUnlocked, now)
            .actor(Some(caller.id))
            .resource("user", target_id)
            .details(json!({"was_locked": target.is_locked(now), "failed_login_count": target.failed_login_count}))
            .origin(origin)).await?;
    let user = user_store::find_by_id(&mut transaction, target_id)
        .await?
        .ok_or(AppError::NotFound)?;
    transaction.commit_recorded().await?;
    Ok(user.view(now))
}

#[tracing::instrument(skip_all)]
pub async fn labs_of(state: &AppState, user_id: i64) -> Result<Vec<Membership>, AppError> {
    let mut connection = state.store.read().await?;
    if user_store::find_by_id(&mut connection, user_id)
        .await?
        .is_none()
    {
        return Err(AppError::NotFound);
    }
    Ok(user_store::labs_of(&mut connection, user_id).await?)
}
