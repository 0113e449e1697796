//! UMS, the user management service of the lab portal. See ARCHITECTURE.md for the map.
#![forbid(unsafe_code)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod audit;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod console;
pub mod error;
pub mod http;
pub mod labs;
pub mod mail;
pub mod mfa;
pub mod paging;
pub mod privacy;
pub mod security;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod text;
pub mod users;
