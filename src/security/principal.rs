//! The authenticated caller.

use std::collections::{BTreeMap, BTreeSet};

/// A verified identity: created only by [`crate::security::auth::Authenticator`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub subject: String,
    /// The token's `roles` claim.
    pub roles: BTreeSet<String>,
    /// Every other claim, usable as an attribute in policies. Never logged.
    pub claims: BTreeMap<String, serde_json::Value>,
}

impl Principal {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.contains(role)
    }
}
