//! Authentication: registration, login, tokens, sessions, passwords and the emailed-link
//! flows (reset, change and verification).

pub mod adaptive;
pub mod consent;
pub mod email_change;
pub mod hash_pool;
pub mod links;
pub mod password;
pub mod password_change;
pub mod routes;
pub mod second_factor;
pub mod service;
pub mod sessions;
pub mod sign_in;
pub mod tokens;
