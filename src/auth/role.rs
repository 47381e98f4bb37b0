//! Roles: what a principal may do. Each role includes the ones before it; the route table
//! (`http::openapi::Routes`) names the role every `/api/v1` operation needs and
//! `require_role` enforces it.

use serde::{Deserialize, Serialize};

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every `GET` (lists, export, stats, history) and the WebSocket.
    Viewer,
    /// Also creates and changes customers and orders, imports customers, resends SMS.
    Staff,
    /// Also deletes customers and orders.
    Admin,
}

impl Role {
    pub const ALL: [Self; 3] = [Self::Viewer, Self::Staff, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Staff => "staff",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The highest role a claim's value names: a string, or an array of strings; other
    /// values and unknown names count for nothing.
    pub fn highest_in(claim: &serde_json::Value) -> Option<Self> {
        match claim {
            serde_json::Value::String(s) => Self::parse(s),
            serde_json::Value::Array(items) => items
                .iter()
                .filter_map(|v| v.as_str().and_then(Self::parse))
                .max(),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a sign-in learned about an identity that decides its role later (a session keeps
/// them, so that its role follows the settings in force at each request).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoleFacts {
    /// The issuer said `email_verified: true`.
    pub email_verified: bool,
    /// The highest role named by `auth.oidc.role_claim`.
    pub claimed: Option<Role>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_are_ordered_and_claims_read() {
        assert!(Role::Viewer < Role::Staff && Role::Staff < Role::Admin);
        assert_eq!(Role::highest_in(&json!("staff")), Some(Role::Staff));
        assert_eq!(
            Role::highest_in(&json!(["viewer", "admin", "x"])),
            Some(Role::Admin)
        );
        assert_eq!(Role::highest_in(&json!(["Admin", 3])), None);
        assert_eq!(Role::highest_in(&json!({"admin": true})), None);
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
    }
}
