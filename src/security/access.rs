//! Privileges and grants.
//!
//! Invariant: a principal holds a privilege on a table only through the admin role or a
//! grant to one of its roles on `*`, the table's layer, or the table. Without `SELECT` (or
//! any other privilege) a table does not exist for the principal: errors say "not found".

use std::fmt;

use std::collections::HashMap;

use crate::config::{AccessConfig, GrantConfig};

/// Problems in `[access]`: grants that do not parse (see `server::config_problems`).
pub(crate) fn config_problems(cfg: &AccessConfig) -> Vec<String> {
    cfg.grants
        .iter()
        .enumerate()
        .filter_map(|(i, g)| {
            Grant::parse(g)
                .err()
                .map(|e| format!("access.grants[{i}]: {e}"))
        })
        .collect()
}
use crate::error::{Error, Result};
use crate::security::Principal;
use crate::security::policy::model::{PolicyDoc, TablePolicy};
use crate::storage::{Layer, TableRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Privilege {
    /// Read rows.
    Select,
    /// Append rows.
    Insert,
    /// Change or remove existing rows (update, delete, merge, overwrite).
    Modify,
    /// Create, drop, alter, history, maintenance, policies.
    Manage,
}

impl Privilege {
    pub fn parse(s: &str) -> Option<Privilege> {
        match s.to_ascii_uppercase().as_str() {
            "SELECT" => Some(Privilege::Select),
            "INSERT" => Some(Privilege::Insert),
            "MODIFY" => Some(Privilege::Modify),
            "MANAGE" => Some(Privilege::Manage),
            _ => None,
        }
    }
}

impl fmt::Display for Privilege {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Privilege::Select => "SELECT",
            Privilege::Insert => "INSERT",
            Privilege::Modify => "MODIFY",
            Privilege::Manage => "MANAGE",
        })
    }
}

/// What a grant covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope {
    All,
    Layer(Layer),
    Table(TableRef),
}

impl Scope {
    fn covers(&self, t: &TableRef) -> bool {
        match self {
            Scope::All => true,
            Scope::Layer(l) => *l == t.layer,
            Scope::Table(x) => x == t,
        }
    }

    fn covers_layer(&self, layer: Layer) -> bool {
        match self {
            Scope::All => true,
            Scope::Layer(l) => *l == layer,
            Scope::Table(_) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Grant {
    pub role: String,
    pub privilege: Privilege,
    pub scope: Scope,
}

impl Grant {
    pub(crate) fn parse(g: &GrantConfig) -> Result<Grant> {
        let privilege = Privilege::parse(&g.privilege).ok_or_else(|| {
            Error::invalid(format!(
                "unknown privilege {:?} (SELECT, INSERT, MODIFY, MANAGE)",
                g.privilege
            ))
        })?;
        if g.role.trim().is_empty() {
            return Err(Error::invalid("grant without a role"));
        }
        let scope = if g.on == "*" {
            Scope::All
        } else if let Some(layer) = Layer::parse(&g.on) {
            Scope::Layer(layer)
        } else {
            Scope::Table(TableRef::parse(&g.on)?)
        };
        Ok(Grant {
            role: g.role.clone(),
            privilege,
            scope,
        })
    }
}

/// Decides privileges, and holds the row filters and column masks in force.
#[derive(Debug)]
pub struct AccessControl {
    admin_role: String,
    bypass_role: String,
    operator_role: String,
    grants: Vec<Grant>,
    tables: HashMap<TableRef, TablePolicy>,
    version: u64,
}

impl AccessControl {
    /// Configuration grants only (no run-time policies).
    pub fn new(admin_role: impl Into<String>, cfg: &AccessConfig) -> Result<AccessControl> {
        AccessControl::from_doc(
            admin_role.into(),
            cfg.bypass_role.clone(),
            cfg,
            &PolicyDoc::default(),
        )
    }

    /// Configuration grants plus the policy document.
    pub fn from_doc(
        admin_role: String,
        bypass_role: String,
        cfg: &AccessConfig,
        doc: &PolicyDoc,
    ) -> Result<AccessControl> {
        let mut grants = Vec::new();
        for g in cfg.grants.iter().chain(doc.grants.iter()) {
            grants.push(Grant::parse(g)?);
        }
        let mut tables = HashMap::new();
        for (name, policy) in &doc.tables {
            if !policy.is_empty() {
                tables.insert(TableRef::parse(name)?, policy.clone());
            }
        }
        Ok(AccessControl {
            admin_role,
            bypass_role,
            operator_role: cfg.operator_role.clone(),
            grants,
            tables,
            version: doc.version,
        })
    }

    /// Version of the policy document in force.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Row filters and masks of `t`, if any.
    pub fn table_policy(&self, t: &TableRef) -> Option<&TablePolicy> {
        self.tables.get(t.governing().as_ref())
    }

    /// Whether `p` reads raw rows and values (the explicit bypass role; admins are filtered
    /// like everyone else unless they also hold it).
    pub fn bypasses_policies(&self, p: &Principal) -> bool {
        !self.bypass_role.is_empty() && p.has_role(&self.bypass_role)
    }

    pub fn is_admin(&self, p: &Principal) -> bool {
        p.has_role(&self.admin_role)
    }

    /// Server-wide counters (`/metrics`): the admin and operator roles only. The counters sum
    /// over every principal's queries (rows served, bytes, cache hits), so another tenant's
    /// activity would show in them.
    pub fn check_observe(&self, p: &Principal) -> Result<()> {
        if self.is_admin(p) || (!self.operator_role.is_empty() && p.has_role(&self.operator_role)) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "metrics need the {} or {} role",
                self.operator_role, self.admin_role
            )))
        }
    }

    pub fn allows(&self, p: &Principal, privilege: Privilege, t: &TableRef) -> bool {
        let t = t.governing();
        let t = t.as_ref();
        self.is_admin(p)
            || self
                .grants
                .iter()
                .any(|g| g.privilege == privilege && p.has_role(&g.role) && g.scope.covers(t))
    }

    /// Where `p` may SELECT: every scope of its SELECT grants (`[All]` for admins). The
    /// `system` schema turns these into the row filter of its records.
    pub(crate) fn select_scopes(&self, p: &Principal) -> Vec<Scope> {
        if self.is_admin(p) {
            return vec![Scope::All];
        }
        self.grants
            .iter()
            .filter(|g| g.privilege == Privilege::Select && p.has_role(&g.role))
            .map(|g| g.scope.clone())
            .collect()
    }

    /// Privileges that apply to every table of a layer (creating tables needs `MANAGE` here).
    pub fn allows_layer(&self, p: &Principal, privilege: Privilege, layer: Layer) -> bool {
        self.is_admin(p)
            || self.grants.iter().any(|g| {
                g.privilege == privilege && p.has_role(&g.role) && g.scope.covers_layer(layer)
            })
    }

    /// The layers `p` may not MANAGE. Failure samples (rows of user tables kept in run
    /// records and `system.*` results) show only to principals who manage every layer they
    /// come from: the one rule, used by the run API and by the `system` schema's mask.
    pub(crate) fn unmanaged_layers(&self, p: &Principal) -> Vec<Layer> {
        Layer::ALL
            .iter()
            .copied()
            .filter(|l| !self.allows_layer(p, Privilege::Manage, *l))
            .collect()
    }

    /// Whether `t` exists for `p` at all (any privilege on it).
    pub fn is_visible(&self, p: &Principal, t: &TableRef) -> bool {
        let t = t.governing();
        let t = t.as_ref();
        self.is_admin(p)
            || self
                .grants
                .iter()
                .any(|g| p.has_role(&g.role) && g.scope.covers(t))
    }

    /// `Ok` if `p` holds `privilege` on `t`; `NotFound` if `t` is invisible to `p`, else
    /// `PermissionDenied`.
    pub fn check(&self, p: &Principal, privilege: Privilege, t: &TableRef) -> Result<()> {
        if self.allows(p, privilege, t) {
            Ok(())
        } else if self.is_visible(p, t) {
            Err(Error::PermissionDenied(format!(
                "{privilege} on {t} is not granted"
            )))
        } else {
            Err(Error::NotFound(format!("table {t} not found")))
        }
    }

    pub fn check_layer(&self, p: &Principal, privilege: Privilege, layer: Layer) -> Result<()> {
        if self.allows_layer(p, privilege, layer) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{privilege} on layer {layer} is not granted"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn principal(roles: &[&str]) -> Principal {
        Principal {
            subject: "u".into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            claims: Default::default(),
        }
    }

    #[test]
    fn default_deny_and_scopes() {
        let cfg = AccessConfig {
            bypass_role: String::new(),
            operator_role: "operator".into(),
            grants: vec![
                GrantConfig {
                    role: "analyst".into(),
                    privilege: "SELECT".into(),
                    on: "gold".into(),
                },
                GrantConfig {
                    role: "loader".into(),
                    privilege: "insert".into(),
                    on: "bronze.raw".into(),
                },
            ],
        };
        let ac = AccessControl::new("admin", &cfg).unwrap();
        let gold = TableRef::parse("gold.orders").unwrap();
        let raw = TableRef::parse("bronze.raw").unwrap();
        let nobody = principal(&[]);
        assert!(!ac.is_visible(&nobody, &gold));
        assert_eq!(
            ac.check(&nobody, Privilege::Select, &gold)
                .unwrap_err()
                .kind(),
            ErrorKind::NotFound
        );
        let analyst = principal(&["analyst"]);
        assert!(ac.allows(&analyst, Privilege::Select, &gold));
        assert_eq!(
            ac.check(&analyst, Privilege::Insert, &gold)
                .unwrap_err()
                .kind(),
            ErrorKind::PermissionDenied
        );
        assert!(!ac.is_visible(&analyst, &raw));
        let loader = principal(&["loader"]);
        assert!(ac.allows(&loader, Privilege::Insert, &raw));
        assert!(!ac.allows(&loader, Privilege::Select, &raw));
        assert!(ac.allows(&principal(&["admin"]), Privilege::Manage, &raw));
    }
}
