//! Front ends: thin adapters from protocols to the engine. Nothing below `api` imports it.

pub mod flight;
pub mod rest;
pub mod wire;
