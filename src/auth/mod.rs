//! Authentication: registration, login, tokens, sessions and passwords.

pub mod password;
pub mod routes;
pub mod service;
pub mod sessions;
pub mod tokens;
