//! Defences: lockout, knowing who the client really is, and secrets at rest.

pub mod client_ip;
pub mod lockout;
pub mod sealing;
