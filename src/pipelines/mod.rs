//! Write pipelines: every commit Strata makes goes through [`commit`].

pub mod commit;
pub mod maintenance;
pub mod merge;
pub mod scd2;
pub mod schema;
