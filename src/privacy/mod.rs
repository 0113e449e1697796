//! Privacy by design: a person's data exported (`export`). Lab invitations, which keep the
//! directory from being probed, live with the labs (`labs::invitations`).

pub mod export;
pub mod routes;
