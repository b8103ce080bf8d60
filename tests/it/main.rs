//! Integration tests: the real server, in process, on 127.0.0.1:0, driven by real clients.
#![allow(unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

mod auth;
mod backfill;
mod browser;
mod cache;
mod cli;
mod cluster;
mod commits;
mod connectors;
mod console;
mod faults;
mod flight;
mod flows;
mod flows_kinds;
mod harness;
mod lifecycle;
mod lineage;
mod maintenance;
mod merge;
mod openlineage;
mod ops;
mod packaging;
mod planner;
mod python;
mod quality;
mod query;
mod rls;
mod rls_writes;
mod s3;
mod scd2;
mod scheduler;
mod scheduling;
mod slt;
mod tables;
mod uploads;
mod webhooks;
