//! Integration tests: the real server, in process, on 127.0.0.1:0, driven by real clients.
#![allow(unreachable_pub)]

mod auth;
mod cli;
mod flight;
mod harness;
mod query;
mod slt;
mod tables;
mod uploads;
