//! Who is asking, and what they may touch.
//!
//! - [`auth`] turns a bearer JWT into a [`principal::Principal`]; nothing else creates one.
//! - [`access`] decides privileges (`SELECT`, `INSERT`, `MODIFY`, `MANAGE`) from grants.
//!   Default deny: no grant, no table.
//! - [`policy`] is the read-side enforcement seam: the per-principal DataFusion catalog, the
//!   table wrapper every scan goes through, and the analyzer rule that fails a plan closed if
//!   any scan bypassed them.

pub(crate) mod access;
pub(crate) mod auth;
pub(crate) mod expression;
pub(crate) mod policy;
pub(crate) mod principal;
pub(crate) mod secrets;
pub(crate) mod ticket;

pub use access::{AccessControl, Privilege};
pub use auth::Authenticator;
pub use principal::Principal;
