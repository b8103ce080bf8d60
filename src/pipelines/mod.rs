//! Write pipelines: every commit Strata makes goes through [`commit`].

pub(crate) mod commit;
pub(crate) mod maintenance;
pub(crate) mod merge;
pub(crate) mod scd2;
pub(crate) mod schema;
