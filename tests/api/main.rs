//! The black-box API suite: one test binary (each extra binary is a slow extra link).
//! Runs on SQLite, or on PostgreSQL when `UMS_TEST_POSTGRES_URL` is set.

mod audit;
mod auth;
mod auth_cache;
mod defences;
mod email;
mod helpers;
mod isolation;
mod labs;
mod mfa;
mod operations;
mod platform;
mod privacy;
mod replica;
mod review;
mod risk;
mod smtp;
mod storage;
mod tokens;
mod users;
