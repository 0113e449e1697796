//! Labs (the tenants), their memberships and roles, and the access check that every
//! lab-scoped route declares in its signature (`access::LabAccess`).

pub mod access;
pub mod invitations;
pub mod routes;
pub mod service;
pub mod store;

use serde::Serialize;

use crate::clock::Timestamp;

/// A lab code: 2–32 letters, digits, `_`, `-`; unique without regard to case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabCode(String);

impl LabCode {
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        let value = value.trim();
        let length = value.chars().count();
        if !(2..=32).contains(&length) {
            return Err("must be 2 to 32 characters long");
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        {
            return Err("may contain only letters, digits, '_' and '-'");
        }
        Ok(LabCode(value.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn parse_lab_name(value: &str) -> Result<String, &'static str> {
    let value = value.trim();
    if value.is_empty() {
        return Err("must not be empty");
    }
    if value.chars().count() > 200 {
        return Err("must be at most 200 characters long");
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(value.to_string())
}

pub fn parse_description(value: &str) -> Result<String, &'static str> {
    if value.chars().count() > 2000 {
        return Err("must be at most 2000 characters long");
    }
    Ok(value.trim().to_string())
}

/// A role within one lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LabRole {
    Viewer,
    Member,
    LabAdmin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    Read,
    Write,
    ManageMembers,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::Write => "write",
            Permission::ManageMembers => "manage_members",
        }
    }
}

pub const ALL_PERMISSIONS: [Permission; 3] = [
    Permission::Read,
    Permission::Write,
    Permission::ManageMembers,
];

impl LabRole {
    pub fn parse(value: &str) -> Result<Self, &'static str> {
        match value {
            "viewer" => Ok(LabRole::Viewer),
            "member" => Ok(LabRole::Member),
            "lab_admin" => Ok(LabRole::LabAdmin),
            _ => Err("must be one of lab_admin, member, viewer"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LabRole::Viewer => "viewer",
            LabRole::Member => "member",
            LabRole::LabAdmin => "lab_admin",
        }
    }

    pub fn permissions(self) -> &'static [Permission] {
        match self {
            LabRole::Viewer => &ALL_PERMISSIONS[..1],
            LabRole::Member => &ALL_PERMISSIONS[..2],
            LabRole::LabAdmin => &ALL_PERMISSIONS,
        }
    }

    pub fn allows(self, permission: Permission) -> bool {
        self.permissions().contains(&permission)
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Lab {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub description: String,
    pub is_active: bool,
    /// Members without a second factor are refused the lab's routes.
    pub require_mfa: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Lab {
    pub fn is_active(&self) -> bool {
        self.is_active
    }

    pub fn view(&self) -> LabView {
        LabView {
            id: self.id,
            code: self.code.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            is_active: self.is_active(),
            require_mfa: self.require_mfa,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// The contract's lab object.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct LabView {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub description: String,
    pub is_active: bool,
    /// Members need a second factor to use the lab (set by system admins).
    pub require_mfa: bool,
    #[schema(value_type = String, format = DateTime)]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: Timestamp,
}

/// A member in a lab's member list.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberView {
    pub user: MemberUser,
    pub role: String,
    #[schema(value_type = String, format = DateTime)]
    pub joined_at: Timestamp,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberUser {
    pub id: i64,
    pub username: String,
    /// Shown to the lab's admins and to system admins only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub first_name: String,
    pub last_name: String,
}

/// The answer of `GET /api/labs/{id}/access`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct AccessView {
    pub lab_id: i64,
    pub role: String,
    pub permissions: Vec<&'static str>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_carry_the_contract_permissions() {
        let names = |role: LabRole| {
            role.permissions()
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(LabRole::Viewer), ["read"]);
        assert_eq!(names(LabRole::Member), ["read", "write"]);
        assert_eq!(
            names(LabRole::LabAdmin),
            ["read", "write", "manage_members"]
        );
        assert!(!LabRole::Member.allows(Permission::ManageMembers));
        assert!(LabRole::parse("owner").is_err());
    }

    #[test]
    fn lab_codes_follow_the_contract() {
        assert!(LabCode::parse("a").is_err());
        assert!(LabCode::parse("GEN-lab_2").is_ok());
        assert!(LabCode::parse(&"x".repeat(33)).is_err());
        assert!(LabCode::parse("lab.one").is_err());
    }
}
