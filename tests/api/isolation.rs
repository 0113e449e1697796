//! The tenant-isolation matrix: every lab-scoped route, called by every kind of caller,
//! against their own lab, the other lab, and a lab id that does not exist.
//!
//! `MATRIX` is the one table of expected statuses. A route that is added to the router
//! under `/api/labs/{id}` but not to `MATRIX` fails
//! `every_lab_scoped_route_is_in_the_matrix`, which compares the table with the routes the
//! OpenAPI document lists (and the OpenAPI test of the router keeps that list complete).

use std::collections::BTreeSet;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    GetLab,
    PatchLab,
    PutLab,
    Activate,
    Deactivate,
    Members,
    AddMember,
    RemoveMember,
    ChangeRole,
    Access,
    Invite,
    Invitations,
    RevokeInvitation,
    DeleteLab,
}

/// Expected statuses. Columns, for a call on a lab that exists:
/// system admin, the lab's lab_admin, member, viewer, a member of the other lab (any role),
/// an outsider; then, for a lab id that does not exist: system admin, any non-admin.
#[rustfmt::skip]
const MATRIX: &[(Route, &str, &str, [u16; 8])] = &[
    //                                                    adm  l_adm mem  view other out  | adm? non-adm?
    (Route::GetLab,       "GET",    "/api/labs/{id}",                        [200, 200, 200, 200, 403, 403,  404, 403]),
    (Route::PatchLab,     "PATCH",  "/api/labs/{id}",                        [200, 403, 403, 403, 403, 403,  404, 403]),
    (Route::PutLab,       "PUT",    "/api/labs/{id}",                        [200, 403, 403, 403, 403, 403,  404, 403]),
    (Route::Activate,     "POST",   "/api/labs/{id}/activate",               [200, 403, 403, 403, 403, 403,  404, 403]),
    (Route::Deactivate,   "POST",   "/api/labs/{id}/deactivate",             [200, 403, 403, 403, 403, 403,  404, 403]),
    (Route::Members,      "GET",    "/api/labs/{id}/members",                [200, 200, 200, 200, 403, 403,  404, 403]),
    // Lab admins invite by address instead (adding by id would probe the directory).
    (Route::AddMember,    "POST",   "/api/labs/{id}/members",                [201, 403, 403, 403, 403, 403,  404, 403]),
    (Route::RemoveMember, "DELETE", "/api/labs/{id}/members/{user_id}",      [204, 204, 403, 403, 403, 403,  404, 403]),
    (Route::ChangeRole,   "PATCH",  "/api/labs/{id}/members/{user_id}/role", [200, 200, 403, 403, 403, 403,  404, 403]),
    (Route::Access,       "GET",    "/api/labs/{id}/access",                 [200, 200, 200, 200, 403, 403,  404, 403]),
    (Route::Invite,       "POST",   "/api/labs/{id}/invitations",            [202, 202, 403, 403, 403, 403,  404, 403]),
    (Route::Invitations,  "GET",    "/api/labs/{id}/invitations",            [200, 200, 403, 403, 403, 403,  404, 403]),
    // An invitation id that does not exist: access is decided before the id is looked up.
    (Route::RevokeInvitation, "DELETE", "/api/labs/{id}/invitations/{invitation_id}", [404, 404, 403, 403, 403, 403, 404, 403]),
    // Last: the admin's success removes the lab.
    (Route::DeleteLab,    "DELETE", "/api/labs/{id}",                        [204, 403, 403, 403, 403, 403,  404, 403]),
];

const MISSING_LAB: i64 = 999_999;

struct Caller {
    name: String,
    token: String,
    /// The lab the caller belongs to, and its role there.
    lab: Option<(usize, &'static str)>,
    is_admin: bool,
}

struct World {
    app: TestApp,
    admin_token: String,
    callers: Vec<Caller>,
    labs: [i64; 2],
    /// Per lab: the viewer's user id (the target of member routes) and the outsider's.
    viewers: [i64; 2],
    outsider: i64,
}

async fn world() -> World {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let labs = [
        app.create_lab(&admin.access, "LAB-A").await,
        app.create_lab(&admin.access, "LAB-B").await,
    ];
    let mut callers = vec![Caller {
        name: "admin".into(),
        token: admin.access.clone(),
        lab: None,
        is_admin: true,
    }];
    let mut viewers = [0; 2];
    for (index, lab_id) in labs.iter().enumerate() {
        for role in ["lab_admin", "member", "viewer"] {
            let name = format!("{}_{}", ["a", "b"][index], role.replace('_', ""));
            let (id, tokens) = app.user(&name).await;
            app.add_member(&admin.access, *lab_id, id, role).await;
            if role == "viewer" {
                viewers[index] = id;
            }
            callers.push(Caller {
                name,
                token: tokens.access,
                lab: Some((index, role)),
                is_admin: false,
            });
        }
    }
    let (outsider, tokens) = app.user("outsider").await;
    callers.push(Caller {
        name: "outsider".into(),
        token: tokens.access,
        lab: None,
        is_admin: false,
    });
    World {
        app,
        admin_token: admin.access,
        callers,
        labs,
        viewers,
        outsider,
    }
}

fn expected(row: &[u16; 8], caller: &Caller, target: Option<usize>) -> u16 {
    match target {
        None if caller.is_admin => row[6],
        None => row[7],
        Some(_) if caller.is_admin => row[0],
        Some(lab) => match caller.lab {
            Some((own, role)) if own == lab => match role {
                "lab_admin" => row[1],
                "member" => row[2],
                _ => row[3],
            },
            Some(_) => row[4],
            None => row[5],
        },
    }
}

impl World {
    async fn call(
        &self,
        route: Route,
        method: &str,
        path: &str,
        token: &str,
        lab_id: i64,
        lab: Option<usize>,
    ) -> u16 {
        let viewer = lab.map_or(self.viewers[0], |index| self.viewers[index]);
        let path = path
            .replace("{id}", &lab_id.to_string())
            .replace("{user_id}", &viewer.to_string())
            .replace("{invitation_id}", "999999");
        let body = match route {
            Route::PatchLab | Route::PutLab => json!({"description": "unchanged"}),
            Route::AddMember => json!({"user_id": self.outsider, "role": "viewer"}),
            Route::ChangeRole => json!({"role": "viewer"}),
            Route::Invite => json!({"email": "invitee@lab.org", "role": "viewer"}),
            _ => json!({}),
        };
        let app = &self.app;
        let response = match method {
            "GET" => app.get(&path, Some(token)).await,
            "POST" => app.post(&path, &body, Some(token)).await,
            "PATCH" => app.patch(&path, &body, Some(token)).await,
            "PUT" => app.put(&path, &body, Some(token)).await,
            "DELETE" => app.delete(&path, Some(token)).await,
            other => panic!("no method {other}"),
        };
        response.status().as_u16()
    }

    /// Puts back what a successful call changed, so every cell starts from the same rows.
    async fn restore(&self, route: Route, lab_id: i64, lab: usize) {
        let app = &self.app;
        let admin = Some(self.admin_token.as_str());
        match route {
            Route::Deactivate => {
                app.post(&format!("/api/labs/{lab_id}/activate"), &json!({}), admin)
                    .await;
            }
            Route::AddMember => {
                app.delete(
                    &format!("/api/labs/{lab_id}/members/{}", self.outsider),
                    admin,
                )
                .await;
            }
            Route::RemoveMember => {
                app.add_member(&self.admin_token, lab_id, self.viewers[lab], "viewer")
                    .await
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn every_lab_scoped_route_refuses_every_caller_outside_its_lab() {
    let world = world().await;
    // Descriptions start as "", so the admin's first PATCH changes them; settle them first.
    for lab_id in world.labs {
        world
            .app
            .patch(
                &format!("/api/labs/{lab_id}"),
                &json!({"description": "unchanged"}),
                Some(&world.admin_token),
            )
            .await;
    }
    let mut failures = Vec::new();
    let mut cells = 0;
    for (route, method, path, row) in MATRIX {
        for caller in &world.callers {
            let targets = [
                (world.labs[0], Some(0)),
                (world.labs[1], Some(1)),
                (MISSING_LAB, None),
            ];
            for (lab_id, lab) in targets {
                let before = world.app.lab_rows().await;
                let status = world
                    .call(*route, method, path, &caller.token, lab_id, lab)
                    .await;
                let want = expected(row, caller, lab);
                cells += 1;
                if status != want {
                    failures.push(format!(
                        "{method} {path} by {} on {lab:?}: got {status}, want {want}",
                        caller.name
                    ));
                }
                if status >= 400 && world.app.lab_rows().await != before {
                    failures.push(format!(
                        "{method} {path} by {} on {lab:?} was refused but changed rows",
                        caller.name
                    ));
                }
                if (200..300).contains(&status)
                    && let Some(lab) = lab
                    && *route != Route::DeleteLab
                {
                    world.restore(*route, lab_id, lab).await;
                }
            }
        }
    }
    assert_eq!(cells, MATRIX.len() * 8 * 3);
    assert!(
        failures.is_empty(),
        "{} of {cells} cells failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_lab_scoped_route_is_in_the_matrix() {
    let app = spawn_app().await;
    let document: Value = app
        .get("/api/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        if path.starts_with("/api/labs/{id}") {
            for method in operations.as_object().unwrap().keys() {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let in_matrix: BTreeSet<_> = MATRIX
        .iter()
        .map(|(_, method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(
        documented, in_matrix,
        "a lab-scoped route is missing from MATRIX (or MATRIX names one that is gone)"
    );
}

#[tokio::test]
async fn a_deactivated_lab_refuses_its_members_until_activated() {
    let world = world().await;
    let lab = world.labs[0];
    let member = world.callers.iter().find(|c| c.name == "a_member").unwrap();
    let app = &world.app;
    let response = app
        .post(
            &format!("/api/labs/{lab}/deactivate"),
            &json!({}),
            Some(&world.admin_token),
        )
        .await;
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["is_active"], false);
    for path in [
        format!("/api/labs/{lab}"),
        format!("/api/labs/{lab}/access"),
        format!("/api/labs/{lab}/members"),
    ] {
        assert_eq!(
            app.get(&path, Some(&member.token)).await.status(),
            StatusCode::FORBIDDEN,
            "{path}"
        );
        assert_eq!(
            app.get(&path, Some(&world.admin_token)).await.status(),
            StatusCode::OK,
            "{path} for admin"
        );
    }
    app.post(
        &format!("/api/labs/{lab}/activate"),
        &json!({}),
        Some(&world.admin_token),
    )
    .await;
    let access: Value = app
        .get(&format!("/api/labs/{lab}/access"), Some(&member.token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        access,
        json!({"lab_id": lab, "role": "member", "permissions": ["read", "write"]})
    );
    assert_eq!(app.audit_events("lab.deactivated").await.len(), 1);
    assert_eq!(app.audit_events("lab.activated").await.len(), 1);
}

#[tokio::test]
async fn the_access_check_names_role_and_permissions() {
    let world = world().await;
    let lab = world.labs[1];
    let app = &world.app;
    for (caller, role, permissions) in [
        (
            "b_labadmin",
            "lab_admin",
            json!(["read", "write", "manage_members"]),
        ),
        ("b_member", "member", json!(["read", "write"])),
        ("b_viewer", "viewer", json!(["read"])),
        ("admin", "admin", json!(["read", "write", "manage_members"])),
    ] {
        let token = &world
            .callers
            .iter()
            .find(|c| c.name == caller)
            .unwrap()
            .token;
        let body: Value = app
            .get(&format!("/api/labs/{lab}/access"), Some(token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            body,
            json!({"lab_id": lab, "role": role, "permissions": permissions}),
            "{caller}"
        );
    }
}
