//! Defences around credentials: lockout, and knowing who the client really is.

pub mod client_ip;
pub mod lockout;
