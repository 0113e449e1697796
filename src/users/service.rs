//! Account creation outside registration: system admins (bootstrap and `ums create-admin`)
//! and the import of the Flask original's users with their Werkzeug hashes.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::audit::{self, Action, Event};
use crate::auth::password::{PasswordHasherConfig, check_policy, is_supported_hash};
use crate::clock::Millis;
use crate::store::Store;
use crate::users::store::{self as user_store, NewUser};
use crate::users::{Email, Username, parse_name};

#[derive(Debug, PartialEq, Eq)]
pub enum AdminOutcome {
    Created(i64),
    AlreadyExists(i64),
}

/// Creates a system admin unless a user of that username already exists.
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
    let mut transaction = store.begin().await?;
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
    audit::record(
        &mut transaction,
        Event::new(Action::UserCreated, now)
            .resource("user", user.id)
            .details(json!({"username": user.username, "is_admin": true, "via": "command line"})),
    )
    .await?;
    transaction.commit().await?;
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
    let mut transaction = store.begin().await?;
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
    audit::record(
        &mut transaction,
        Event::new(Action::UsersImported, now)
            .resource("user", "import")
            .details(
                json!({"imported": report.imported, "skipped_existing": report.skipped_existing}),
            ),
    )
    .await?;
    transaction.commit().await?;
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
