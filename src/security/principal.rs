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

/// The service principals of the configuration (`[[pipelines.principals]]`): pipelines run
/// as them, webhooks write as them. Subjects are `svc:<name>`, a namespace no token's
/// subject shares; none holds the admin role (checked at start).
#[derive(Debug, Clone, Default)]
pub struct ServicePrincipals(BTreeMap<String, std::sync::Arc<Principal>>);

impl ServicePrincipals {
    pub fn new(configured: &[crate::config::ServicePrincipalConfig]) -> ServicePrincipals {
        ServicePrincipals(
            configured
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        std::sync::Arc::new(Principal {
                            subject: format!("svc:{}", p.name),
                            roles: p.roles.iter().cloned().collect(),
                            claims: p.claims.clone(),
                        }),
                    )
                })
                .collect(),
        )
    }

    /// The service principal `name`, or an error naming the ones there are.
    pub fn get(&self, name: &str) -> crate::error::Result<std::sync::Arc<Principal>> {
        self.0.get(name).cloned().ok_or_else(|| {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            crate::error::Error::invalid(format!(
                "run_as = {:?} is not a service principal of this server ([[pipelines.principals]]: {})",
                name,
                if known.is_empty() {
                    "none declared".to_string()
                } else {
                    known.join(", ")
                }
            ))
        })
    }
}
