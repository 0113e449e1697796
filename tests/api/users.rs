//! `/api/users`: listing, profile edits without mass assignment, deactivation, deletion, unlock.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, spawn_app};

#[tokio::test]
async fn admins_list_users_with_pages_and_filters() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    for index in 0..25 {
        app.register(
            &format!("user{index:02}"),
            &format!("user{index:02}@lab.org"),
        )
        .await;
    }
    let page: Value = app
        .get("/api/users?per_page=10&page=3", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"], 26);
    assert_eq!(page["pages"], 3);
    assert_eq!(page["page"], 3);
    assert_eq!(page["per_page"], 10);
    assert_eq!(page["items"].as_array().unwrap().len(), 6);

    let clamped: Value = app
        .get("/api/users?per_page=5000", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(clamped["per_page"], 100);
    assert_eq!(clamped["items"].as_array().unwrap().len(), 26);

    let past_the_end: Value = app
        .get("/api/users?page=9", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(past_the_end["items"], json!([]));
    assert_eq!(past_the_end["total"], 26);

    for bad in [
        "page=0",
        "per_page=0",
        "page=-1",
        "page=two",
        "is_active=maybe",
    ] {
        let response = app
            .get(&format!("/api/users?{bad}"), Some(&admin.access))
            .await;
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }

    let search: Value = app
        .get("/api/users?q=USER1", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(search["total"], 10);
    let admins: Value = app
        .get("/api/users?is_admin=true", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(admins["total"], 1);
    assert_eq!(admins["items"][0]["username"], "root");
    // LIKE wildcards in q are literal.
    let literal: Value = app
        .get("/api/users?q=%25", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(literal["total"], 0);

    let user = app.login("user00").await;
    assert_problem(
        app.get("/api/users", Some(&user.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn a_user_edits_its_own_names_and_nothing_else() {
    let app = spawn_app().await;
    let (id, tokens) = app.user("alice").await;
    let (other_id, _) = app.user("bob").await;
    let path = format!("/api/users/{id}");

    let response = app
        .patch(
            &path,
            &json!({"first_name": "Alice", "last_name": "Smith"}),
            Some(&tokens.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(
        (user["first_name"].as_str(), user["last_name"].as_str()),
        (Some("Alice"), Some("Smith"))
    );
    let events = app.audit_events("user.updated").await;
    assert_eq!(
        events[0]["details"]["changed"]["first_name"],
        json!({"from": "", "to": "Alice"})
    );

    for admin_field in [
        json!({"is_admin": true}),
        json!({"email": "x@lab.org"}),
        json!({"first_name": "A", "is_active": false}),
    ] {
        let response = app.patch(&path, &admin_field, Some(&tokens.access)).await;
        assert_problem(response, StatusCode::FORBIDDEN).await;
    }
    let unchanged: Value = app
        .get(&path, Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(unchanged["is_admin"], false);
    assert_eq!(unchanged["first_name"], "Alice");
    assert_eq!(unchanged["email"], "alice@lab.org");
    assert_eq!(app.audit_events("user.updated").await.len(), 1);

    // Someone else's account: neither readable nor writable; a missing one looks the same.
    assert_problem(
        app.get(&format!("/api/users/{other_id}"), Some(&tokens.access))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    assert_problem(
        app.get("/api/users/424242", Some(&tokens.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let response = app
        .put(
            &format!("/api/users/{other_id}"),
            &json!({"first_name": "Eve"}),
            Some(&tokens.access),
        )
        .await;
    assert_problem(response, StatusCode::FORBIDDEN).await;
    let bad = app
        .patch(
            &path,
            &json!({"first_name": "x".repeat(151)}),
            Some(&tokens.access),
        )
        .await;
    assert_problem(bad, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn admins_change_username_email_and_flags_with_duplicates_refused() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let (id, _) = app.user("alice").await;
    app.user("bob").await;
    let path = format!("/api/users/{id}");
    let response = app
        .put(
            &path,
            &json!({"username": "alice2", "email": "New@Lab.org", "is_admin": true}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["username"], "alice2");
    assert_eq!(user["email"], "new@lab.org");
    assert_eq!(user["is_admin"], true);

    let taken = app
        .patch(&path, &json!({"username": "BOB"}), Some(&admin.access))
        .await;
    assert_problem(taken, StatusCode::CONFLICT).await;
    let taken = app
        .patch(&path, &json!({"email": "bob@lab.org"}), Some(&admin.access))
        .await;
    assert_problem(taken, StatusCode::CONFLICT).await;
    assert_problem(
        app.get("/api/users/424242", Some(&admin.access)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_problem(
        app.get("/api/users/abc", Some(&admin.access)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn deactivating_a_user_ends_its_sessions_at_once() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let (id, tokens) = app.user("alice").await;
    let response = app
        .patch(
            &format!("/api/users/{id}"),
            &json!({"is_active": false}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_problem(
        app.get("/api/auth/me", Some(&tokens.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(app.refresh(&tokens.refresh).await, StatusCode::UNAUTHORIZED).await;
    assert_problem(
        app.login_response("alice", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND user_id <> 1")
            .await,
        0
    );

    app.patch(
        &format!("/api/users/{id}"),
        &json!({"is_active": true}),
        Some(&admin.access),
    )
    .await;
    app.login("alice").await;
}

#[tokio::test]
async fn deleting_a_user_removes_it_with_its_sessions_and_memberships() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let (id, tokens) = app.user("alice").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    app.add_member(&admin.access, lab, id, "member").await;

    assert_problem(
        app.delete(&format!("/api/users/{id}"), Some(&tokens.access))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let response = app
        .delete(&format!("/api/users/{id}"), Some(&admin.access))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get("/api/auth/me", Some(&tokens.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(app.refresh(&tokens.refresh).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.scalar(&format!("SELECT COUNT(*) FROM users WHERE id = {id}"))
            .await,
        0
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM lab_memberships").await, 0);
    let events = app.audit_events("user.deleted").await;
    assert_eq!(events.len(), 1);
    // The event keeps that she was erased, and by whom; not who she was.
    assert_eq!(
        events[0]["details"],
        json!({"erased": true, "requested_by": "admin"})
    );
    assert_eq!(events[0]["erased"], false);
    assert_problem(
        app.delete(&format!("/api/users/{id}"), Some(&admin.access))
            .await,
        StatusCode::NOT_FOUND,
    )
    .await;
}

#[tokio::test]
async fn the_last_active_admin_cannot_be_removed() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let root_id = admin.body["user"]["id"].as_i64().unwrap();
    for change in [json!({"is_admin": false}), json!({"is_active": false})] {
        let response = app
            .patch(
                &format!("/api/users/{root_id}"),
                &change,
                Some(&admin.access),
            )
            .await;
        assert_problem(response, StatusCode::CONFLICT).await;
    }
    assert_problem(
        app.delete(&format!("/api/users/{root_id}"), Some(&admin.access))
            .await,
        StatusCode::CONFLICT,
    )
    .await;
    app.admin("second").await;
    let response = app
        .patch(
            &format!("/api/users/{root_id}"),
            &json!({"is_admin": false}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    // Demoted a moment ago, the old token no longer opens admin routes.
    assert_problem(
        app.get("/api/users", Some(&admin.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn an_admin_unlocks_a_locked_account() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let (id, _) = app.user("alice").await;
    for _ in 0..5 {
        app.login_response("alice", "wrong password").await;
    }
    assert_eq!(
        app.login_response("alice", PASSWORD).await.status(),
        StatusCode::LOCKED
    );
    let locked: Value = app
        .get(&format!("/api/users/{id}"), Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(locked["is_locked"], true);
    let names_when = |locked: bool| {
        let app = &app;
        let access = admin.access.clone();
        async move {
            let page: Value = app
                .get(&format!("/api/users?locked={locked}"), Some(&access))
                .await
                .json()
                .await
                .unwrap();
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|user| user["username"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names_when(true).await, ["alice"]);
    assert!(!names_when(false).await.contains(&"alice".to_string()));

    let response = app
        .post(
            &format!("/api/users/{id}/unlock"),
            &json!({}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["is_locked"], false);
    assert_eq!(
        app.audit_events("user.unlocked").await[0]["details"]["was_locked"],
        true
    );
    assert!(names_when(true).await.is_empty());
    assert!(names_when(false).await.contains(&"alice".to_string()));
    app.login("alice").await;
    let (_, other) = app.user("bob").await;
    let refused = app
        .post(
            &format!("/api/users/{id}/unlock"),
            &json!({}),
            Some(&other.access),
        )
        .await;
    assert_problem(refused, StatusCode::FORBIDDEN).await;
}

#[tokio::test]
async fn a_users_labs_are_listed_for_itself_and_admins() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let (id, tokens) = app.user("alice").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    app.add_member(&admin.access, lab, id, "viewer").await;
    let expected =
        json!([{"id": lab, "code": "GEN", "name": "Lab GEN", "role": "viewer", "is_active": true}]);
    for token in [&tokens.access, &admin.access] {
        let labs: Value = app
            .get(&format!("/api/users/{id}/labs"), Some(token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(labs, expected);
    }
    let me: Value = app
        .get("/api/auth/me", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["labs"], expected);
    assert_eq!(app.login("alice").await.body["user"]["labs"], expected);
}
