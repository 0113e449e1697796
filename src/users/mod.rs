//! Users: the account record, its validated fields, and the queries that read and write it.

pub mod routes;
pub mod service;
pub mod store;

use serde::Serialize;

use crate::clock::{Millis, Timestamp};

/// A username: 3–64 letters, digits, `.`, `_`, `-`. Unique without regard to case, shown as
/// entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let length = value.chars().count();
        if !(3..=64).contains(&length) {
            return Err("must be 3 to 64 characters long");
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err("may contain only letters, digits, '.', '_' and '-'");
        }
        Ok(Username(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address, normalised to lower case once, here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let value = value.trim().to_lowercase();
        if value.len() > 254 {
            return Err("must be at most 254 characters long");
        }
        let Some((local, domain)) = value.split_once('@') else {
            return Err("must be an email address");
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.chars().any(|c| {
                c.is_whitespace()
                    || c.is_control()
                    || matches!(c, '<' | '>' | '"' | '@' | ',' | ';')
            });
        if !(local_ok && domain_ok) {
            return Err("must be an email address");
        }
        Ok(Email(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A first or last name: free text, bounded so a profile cannot carry a novel.
pub fn parse_name(value: &str) -> Result<String, &'static str> {
    let value = value.trim();
    if value.chars().count() > 150 {
        return Err("must be at most 150 characters long");
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    if value.chars().any(is_invisible_format_character) {
        return Err("must not contain invisible or direction-changing characters");
    }
    if looks_like_a_link(value) {
        return Err("must not contain a web address, an email address or markup");
    }
    Ok(value.to_string())
}

/// Characters that change how the text around them is shown without being seen: the bidi
/// embeddings, overrides and isolates (U+202E turns "moc.live" into "evil.com"), zero-width
/// joiners and marks, the byte-order mark.
pub fn is_invisible_format_character(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
        | '\u{061C}' | '\u{FEFF}')
}

/// A name is shown in emails and pages: it must not smuggle in something a reader would
/// follow (a URL, an address) or a tag.
fn looks_like_a_link(value: &str) -> bool {
    let lower = value.to_lowercase();
    ["://", "www.", "@", "/", "\\", "<", ">"]
        .iter()
        .any(|marker| lower.contains(marker))
}

/// The account as stored. `password_hash` never leaves this crate: `UserView` is what is
/// serialised.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub first_name: String,
    pub last_name: String,
    pub is_active: bool,
    pub is_admin: bool,
    pub email_verified: bool,
    pub failed_login_count: i64,
    pub locked_until: Option<Timestamp>,
    pub last_login_at: Option<Timestamp>,
    pub password_changed_at: Option<Timestamp>,
    pub mfa_enabled: bool,
    pub new_login_alerts: bool,
    /// Set by "This wasn't me": no sign-in until the password is reset.
    pub password_reset_required: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl User {
    /// Whether the account must have a second factor: a system admin while
    /// `UMS_REQUIRE_MFA_FOR_ADMINS` holds (the one statement of that policy).
    pub fn must_have_second_factor(&self, policy: &crate::config::SecondFactors) -> bool {
        self.is_admin && policy.require_for_admins
    }

    pub fn is_active(&self) -> bool {
        self.is_active
    }

    pub fn is_admin(&self) -> bool {
        self.is_admin
    }

    pub fn is_locked(&self, now: Millis) -> bool {
        self.locked_until.is_some_and(|until| until.millis() > now)
    }

    pub fn view(&self, now: Millis) -> UserView {
        UserView {
            id: self.id,
            username: self.username.clone(),
            email: self.email.clone(),
            first_name: self.first_name.clone(),
            last_name: self.last_name.clone(),
            is_active: self.is_active(),
            is_admin: self.is_admin(),
            email_verified: self.email_verified,
            is_locked: self.is_locked(now),
            mfa_enabled: self.mfa_enabled,
            new_login_alerts: self.new_login_alerts,
            last_login_at: self.last_login_at,
            password_changed_at: self.password_changed_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// The contract's user object.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserView {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub is_active: bool,
    pub is_admin: bool,
    pub email_verified: bool,
    pub is_locked: bool,
    pub mfa_enabled: bool,
    /// Whether a sign-in from a new device or address sends an alert (the user may opt out).
    pub new_login_alerts: bool,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_login_at: Option<Timestamp>,
    #[schema(value_type = Option<String>, format = DateTime)]
    pub password_changed_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A lab as it appears in a user's list of labs.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Membership {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub role: String,
    pub is_active: bool,
}

/// The user object with its labs, as login and `/me` return it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserWithLabs {
    #[serde(flatten)]
    pub user: UserView,
    pub labs: Vec<Membership>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_no_links_markup_or_direction_tricks() {
        for name in ["Zoë", "O'Brien", "Jean-Luc", "St. John", "José María", "李"] {
            assert!(parse_name(name).is_ok(), "{name}");
        }
        for name in [
            "team. URGENT: sign in at https://evil.example/login",
            "www.evil.example",
            "help@evil.example",
            "<b>Admin</b>",
            "alice\u{202E}moc.live",
            "zero\u{200B}width",
        ] {
            assert!(parse_name(name).is_err(), "{name:?}");
        }
    }

    #[test]
    fn usernames_follow_the_contract() {
        assert!(Username::parse("ab").is_err());
        assert!(Username::parse("alice.o_neil-2").is_ok());
        assert!(Username::parse(&"a".repeat(64)).is_ok());
        assert!(Username::parse(&"a".repeat(65)).is_err());
        assert!(Username::parse("alice smith").is_err());
        assert!(Username::parse("alice@lab").is_err());
        assert!(Username::parse("ålice").is_err());
    }

    #[test]
    fn emails_are_normalised_to_lower_case() {
        assert_eq!(
            Email::parse(" Alice@Lab.ORG ").unwrap().as_str(),
            "alice@lab.org"
        );
        for bad in [
            "alice",
            "alice@",
            "@lab.org",
            "alice@lab",
            "a b@lab.org",
            "alice@lab..org",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad} should be refused");
        }
    }
}
