//! `/api/labs`: creation, listing, updates, deletion, members and the lab_admin rule.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_problem, spawn_app};

#[tokio::test]
async fn admins_create_labs_with_unique_codes() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let response = app
        .post(
            "/api/labs",
            &json!({"code": "GEN-1", "name": "Genomics", "description": "Sequencing"}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let lab: Value = response.json().await.unwrap();
    assert_eq!(lab["code"], "GEN-1");
    assert_eq!(lab["is_active"], true);
    assert!(lab["created_at"].is_string() && lab["updated_at"].is_string());
    let event = &app.audit_events("lab.created").await[0];
    assert_eq!(event["resource_id"], lab["id"].to_string());

    let duplicate = app
        .post(
            "/api/labs",
            &json!({"code": "gen-1", "name": "Again"}),
            Some(&admin.access),
        )
        .await;
    assert_problem(duplicate, StatusCode::CONFLICT).await;
    let invalid = app
        .post(
            "/api/labs",
            &json!({"code": "x", "name": ""}),
            Some(&admin.access),
        )
        .await;
    let body = assert_problem(invalid, StatusCode::BAD_REQUEST).await;
    assert!(body["errors"]["code"].is_array() && body["errors"]["name"].is_array());
    let (_, user) = app.user("alice").await;
    let refused = app
        .post(
            "/api/labs",
            &json!({"code": "OWN", "name": "Mine"}),
            Some(&user.access),
        )
        .await;
    assert_problem(refused, StatusCode::FORBIDDEN).await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM labs").await, 1);
}

#[tokio::test]
async fn lab_lists_show_everything_to_admins_and_own_labs_to_others() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let (alice, tokens) = app.user("alice").await;
    for code in ["AA", "BB", "CC"] {
        app.create_lab(&admin.access, code).await;
    }
    let bb: Value = app
        .get("/api/labs?q=bb", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    let bb_id = bb["items"][0]["id"].as_i64().unwrap();
    app.add_member(&admin.access, bb_id, alice, "member").await;

    let all: Value = app
        .get("/api/labs", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["total"], 3);
    let own: Value = app
        .get("/api/labs", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(own["total"], 1);
    assert_eq!(own["items"][0]["code"], "BB");
    let empty: Value = app
        .get("/api/labs?q=zz", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (empty["total"].as_i64(), empty["pages"].as_i64()),
        (Some(0), Some(0))
    );
    assert_problem(
        app.get("/api/labs?page=0", Some(&admin.access)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
}

#[tokio::test]
async fn admins_update_labs_and_the_event_says_what_changed() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let response = app
        .patch(
            &format!("/api/labs/{lab}"),
            &json!({"name": "Genetics"}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["name"], "Genetics");
    let event = &app.audit_events("lab.updated").await[0];
    assert_eq!(
        event["details"]["changed"],
        json!({"name": {"from": "Lab GEN", "to": "Genetics"}})
    );
    let unknown = app
        .patch(
            &format!("/api/labs/{lab}"),
            &json!({"owner": 1}),
            Some(&admin.access),
        )
        .await;
    assert_problem(unknown, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn deleting_a_lab_takes_its_memberships_with_it() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (alice, tokens) = app.user("alice").await;
    let (bob, _) = app.user("bob").await;
    app.add_member(&admin.access, lab, alice, "lab_admin").await;
    app.add_member(&admin.access, lab, bob, "member").await;
    let response = app
        .delete(&format!("/api/labs/{lab}"), Some(&admin.access))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM lab_memberships").await, 0);
    assert_eq!(
        app.audit_events("lab.deleted").await[0]["details"]["memberships_removed"],
        2
    );
    let labs: Value = app
        .get("/api/auth/me", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(labs["labs"], json!([]));
    assert_problem(
        app.get(&format!("/api/labs/{lab}"), Some(&admin.access))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn lab_admins_manage_members_and_each_change_is_audited() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (boss, boss_tokens) = app.user("boss").await;
    let (carol, _) = app.user("carol").await;
    app.add_member(&admin.access, lab, boss, "lab_admin").await;

    // A lab admin invites by address (tests/api/privacy.rs); adding by id is the system
    // admin's.
    let by_lab_admin = app
        .post(
            &format!("/api/labs/{lab}/members"),
            &json!({"user_id": carol, "role": "viewer"}),
            Some(&boss_tokens.access),
        )
        .await;
    assert_problem(by_lab_admin, StatusCode::FORBIDDEN).await;
    let response = app
        .post(
            &format!("/api/labs/{lab}/members"),
            &json!({"user_id": carol, "role": "viewer"}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let member: Value = response.json().await.unwrap();
    assert_eq!(member["user"]["username"], "carol");
    assert_eq!(member["role"], "viewer");
    assert!(member["joined_at"].is_string());
    assert!(member["user"].get("password_hash").is_none());

    let duplicate = app
        .post(
            &format!("/api/labs/{lab}/members"),
            &json!({"user_id": carol, "role": "member"}),
            Some(&admin.access),
        )
        .await;
    assert_problem(duplicate, StatusCode::CONFLICT).await;
    let bad_role = app
        .post(
            &format!("/api/labs/{lab}/members"),
            &json!({"user_id": carol, "role": "owner"}),
            Some(&admin.access),
        )
        .await;
    assert!(assert_problem(bad_role, StatusCode::BAD_REQUEST).await["errors"]["role"].is_array());
    let nobody = app
        .post(
            &format!("/api/labs/{lab}/members"),
            &json!({"user_id": 424242, "role": "member"}),
            Some(&admin.access),
        )
        .await;
    assert_problem(nobody, StatusCode::BAD_REQUEST).await;

    let response = app
        .patch(
            &format!("/api/labs/{lab}/members/{carol}/role"),
            &json!({"role": "member"}),
            Some(&boss_tokens.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap()["role"], "member");
    let members: Value = app
        .get(
            &format!("/api/labs/{lab}/members"),
            Some(&boss_tokens.access),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(members.as_array().unwrap().len(), 2);

    let response = app
        .delete(
            &format!("/api/labs/{lab}/members/{carol}"),
            Some(&boss_tokens.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.delete(
            &format!("/api/labs/{lab}/members/{carol}"),
            Some(&boss_tokens.access),
        )
        .await,
        StatusCode::NOT_FOUND,
    )
    .await;

    let added = &app.audit_events("lab.member_added").await;
    assert_eq!(added.len(), 2);
    assert_eq!(added[1]["resource_type"], "membership");
    assert_eq!(
        added[1]["details"],
        json!({"user_id": carol, "role": "viewer"})
    );
    let role = &app.audit_events("lab.member_role_updated").await[0];
    assert_eq!(
        role["details"]["role"],
        json!({"from": "viewer", "to": "member"})
    );
    assert_eq!(app.audit_events("lab.member_removed").await.len(), 1);
}

#[tokio::test]
async fn a_lab_keeps_a_lab_admin_unless_a_system_admin_acts() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (boss, boss_tokens) = app.user("boss").await;
    let (carol, _) = app.user("carol").await;
    app.add_member(&admin.access, lab, boss, "lab_admin").await;
    app.add_member(&admin.access, lab, carol, "member").await;

    let demote = app
        .patch(
            &format!("/api/labs/{lab}/members/{boss}/role"),
            &json!({"role": "member"}),
            Some(&boss_tokens.access),
        )
        .await;
    assert_problem(demote, StatusCode::CONFLICT).await;
    let leave = app
        .delete(
            &format!("/api/labs/{lab}/members/{boss}"),
            Some(&boss_tokens.access),
        )
        .await;
    assert_problem(leave, StatusCode::CONFLICT).await;
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM lab_memberships WHERE role = 'lab_admin'")
            .await,
        1
    );

    let by_admin = app
        .patch(
            &format!("/api/labs/{lab}/members/{boss}/role"),
            &json!({"role": "member"}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(by_admin.status(), StatusCode::OK);
    // Demoted a moment ago, the boss's token no longer manages members.
    let (dave, _) = app.user("dave").await;
    let refused = app
        .post(
            &format!("/api/labs/{lab}/members"),
            &json!({"user_id": dave, "role": "viewer"}),
            Some(&boss_tokens.access),
        )
        .await;
    assert_problem(refused, StatusCode::FORBIDDEN).await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM lab_memberships").await, 2);
}
