//! Privacy by design: a person's data exported (`export`) and erased (`erasure`). The consent a sign-in asks for is
//! part of signing in (`auth::consent`); lab invitations, which keep the directory from being
//! probed, live with the labs (`labs::invitations`).

pub mod erasure;
pub mod export;
pub mod routes;
