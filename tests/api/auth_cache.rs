//! The auth cache (`store/auth_cache.rs`): the account behind a session is served from memory,
//! and every change to the account or its sessions takes effect at once on this instance, on
//! another instance through PostgreSQL's notifications, and while the notification channel is
//! down the cache stands aside.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, TestApp, assert_problem, spawn_app, spawn_app_with, spawn_second_instance,
};

/// The cache serves (on PostgreSQL, once its channel listens).
async fn wait_until_serving(app: &TestApp) {
    for _ in 0..100 {
        if app.state.store.auth_cache().is_serving() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the auth cache never started serving");
}

/// `/me` with `token` until an answer comes from the cache (the first fills it; on another
/// instance, the notifications of the sign-in's own writes may still be arriving and empty it
/// again): that answer.
async fn cached_me(app: &TestApp, token: &str) -> Value {
    for _ in 0..40 {
        let hits = app.state.store.auth_cache().hits();
        let response = app.get("/api/auth/me", Some(token)).await;
        assert_eq!(response.status(), StatusCode::OK);
        if app.state.store.auth_cache().hits() > hits {
            return response.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no answer came from the cache");
}

/// `/me` with `token` until `done` holds of its answer, for at most two seconds (a notification
/// is delivered when its change commits, a moment later on another instance): the last answer.
async fn me_until(
    app: &TestApp,
    token: &str,
    done: impl Fn(StatusCode, &Value) -> bool,
) -> (StatusCode, Value) {
    let mut answer = (StatusCode::OK, Value::Null);
    for _ in 0..40 {
        let response = app.get("/api/auth/me", Some(token)).await;
        let status = response.status();
        answer = (status, response.json().await.unwrap_or(Value::Null));
        if done(answer.0, &answer.1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answer
}

#[tokio::test]
async fn every_change_to_a_cached_account_or_session_takes_effect_at_once() {
    let app = spawn_app().await;
    wait_until_serving(&app).await;
    let admin = app.admin("root").await;
    let (alice, tokens) = app.user("alice").await;
    let other = app.login("alice").await;
    assert_eq!(cached_me(&app, &tokens.access).await["first_name"], "");
    assert!(
        !app.state.store.auth_cache().is_empty(),
        "the account is cached"
    );

    // A change of the profile is seen by the next request.
    let renamed = app
        .patch(
            &format!("/api/users/{alice}"),
            &json!({"first_name": "Alice"}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    assert_eq!(cached_me(&app, &tokens.access).await["first_name"], "Alice");

    // Locked by five wrong passwords: the signed-in session sees it.
    for _ in 0..5 {
        app.login_response("alice", "wrong password").await;
    }
    assert_eq!(cached_me(&app, &tokens.access).await["is_locked"], true);
    app.post(
        &format!("/api/users/{alice}/unlock"),
        &json!({}),
        Some(&admin.access),
    )
    .await;
    assert_eq!(cached_me(&app, &tokens.access).await["is_locked"], false);

    // A session signed out is refused at once; the account's other session goes on.
    cached_me(&app, &other.access).await;
    let out = app
        .post("/api/auth/logout", &json!({}), Some(&other.access))
        .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get("/api/auth/me", Some(&other.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    cached_me(&app, &tokens.access).await;

    // Made an admin, the account may use admin routes at once; deactivated, nothing.
    assert_problem(
        app.get("/api/users", Some(&tokens.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
    let promoted = app
        .patch(
            &format!("/api/users/{alice}"),
            &json!({"is_admin": true}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(promoted.status(), StatusCode::OK);
    assert_eq!(
        app.get("/api/users", Some(&tokens.access)).await.status(),
        StatusCode::OK
    );
    let deactivated = app
        .patch(
            &format!("/api/users/{alice}"),
            &json!({"is_active": false}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(deactivated.status(), StatusCode::OK);
    assert_problem(
        app.get("/api/auth/me", Some(&tokens.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn a_password_change_ends_the_other_cached_sessions_at_once() {
    let app = spawn_app().await;
    wait_until_serving(&app).await;
    let (_, tokens) = app.user("alice").await;
    let other = app.login("alice").await;
    cached_me(&app, &other.access).await;
    let changed = app
        .post(
            "/api/auth/change-password",
            &json!({"current_password": PASSWORD, "new_password": "An0ther-Good-Passphrase"}),
            Some(&tokens.access),
        )
        .await;
    assert!(changed.status().is_success(), "{}", changed.status());
    assert_problem(
        app.get("/api/auth/me", Some(&other.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

/// PostgreSQL: a second instance learns of the first one's changes through `LISTEN`, and of
/// changes made by hand in the database too.
#[tokio::test]
async fn another_instances_cache_learns_of_changes_through_notifications() {
    let app = spawn_app().await;
    if app.state.store.backend() != ums::store::Backend::Postgres {
        return;
    }
    let second = spawn_second_instance(&app).await;
    wait_until_serving(&second).await;
    let (alice, tokens) = app.user("alice").await;
    cached_me(&second, &tokens.access).await;

    app.execute(&[&format!(
        "UPDATE users SET first_name = 'By hand' WHERE id = {alice}"
    )])
    .await;
    let (_, seen) = me_until(&second, &tokens.access, |_, me| {
        me["first_name"] == "By hand"
    })
    .await;
    assert_eq!(seen["first_name"], "By hand");

    // A role changed and a lab deactivated on the first instance reach the second's cache.
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    app.post(
        &format!("/api/labs/{lab}/members"),
        &json!({"user_id": alice, "role": "member"}),
        Some(&admin.access),
    )
    .await;
    let access_on_second = || async {
        let response = second
            .get(&format!("/api/labs/{lab}/access"), Some(&tokens.access))
            .await;
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    };
    assert_eq!(access_on_second().await.1["role"], "member");
    assert_eq!(access_on_second().await.1["role"], "member");
    app.patch(
        &format!("/api/labs/{lab}/members/{alice}/role"),
        &json!({"role": "viewer"}),
        Some(&admin.access),
    )
    .await;
    let mut seen = access_on_second().await;
    for _ in 0..40 {
        if seen.1["role"] == "viewer" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = access_on_second().await;
    }
    assert_eq!(seen.1["role"], "viewer");
    app.patch(
        &format!("/api/labs/{lab}"),
        &json!({"is_active": false}),
        Some(&admin.access),
    )
    .await;
    for _ in 0..40 {
        seen = access_on_second().await;
        if seen.0 == StatusCode::FORBIDDEN {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(seen.0, StatusCode::FORBIDDEN);

    let out = app
        .post("/api/auth/logout", &json!({}), Some(&tokens.access))
        .await;
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let (status, _) = me_until(&second, &tokens.access, |status, _| {
        status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// PostgreSQL: a change that notifies no one (triggers off for that connection) stays unseen
/// while the cache serves; when the channel drops, the cache is emptied and bypassed, so the
/// change is seen, and it serves again once listening.
#[tokio::test]
async fn when_the_notification_channel_drops_the_cache_is_emptied_and_bypassed() {
    let app = spawn_app().await;
    if app.state.store.backend() != ums::store::Backend::Postgres {
        return;
    }
    wait_until_serving(&app).await;
    let (alice, tokens) = app.user("alice").await;
    cached_me(&app, &tokens.access).await;
    app.execute(&[
        "SET session_replication_role = replica",
        &format!("UPDATE users SET first_name = 'Silent' WHERE id = {alice}"),
        "SET session_replication_role = DEFAULT",
    ])
    .await;
    let me: Value = app
        .get("/api/auth/me", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        me["first_name"], "",
        "served from the cache: nothing told it"
    );

    app.execute(&["SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%'"])
        .await;
    let (_, seen) = me_until(&app, &tokens.access, |_, me| me["first_name"] == "Silent").await;
    assert_eq!(seen["first_name"], "Silent");
    wait_until_serving(&app).await;
    let ready: Value = app.get("/ready", None).await.json().await.unwrap();
    assert_eq!(ready["checks"]["auth_cache"], "ok");
}

/// The labs of a cached account follow every change at once: membership, role, the lab's
/// state and policy, its deletion.
#[tokio::test]
async fn a_cached_membership_follows_every_change_of_the_lab_and_the_role() {
    let app = spawn_app().await;
    wait_until_serving(&app).await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (alice, tokens) = app.user("alice").await;
    let access = |expected: StatusCode| {
        let (app, token) = (&app, tokens.access.clone());
        // Until an answer comes from the cache (this instance's own notifications may still
        // be arriving, on PostgreSQL): that answer.
        async move {
            for _ in 0..40 {
                let hits = app.state.store.auth_cache().lab_hits();
                let response = app
                    .get(&format!("/api/labs/{lab}/access"), Some(&token))
                    .await;
                assert_eq!(response.status(), expected);
                if app.state.store.auth_cache().lab_hits() > hits {
                    return response.json::<Value>().await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            panic!("no answer came from the cache");
        }
    };
    let lab_codes = || {
        let (app, token) = (&app, tokens.access.clone());
        async move {
            let mut me = cached_me(app, &token).await;
            for _ in 0..40 {
                let hits = app.state.store.auth_cache().lab_hits();
                me = app
                    .get("/api/auth/me", Some(&token))
                    .await
                    .json()
                    .await
                    .unwrap();
                if app.state.store.auth_cache().lab_hits() > hits {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            me["labs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|lab| lab["code"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    access(StatusCode::FORBIDDEN).await;
    assert!(lab_codes().await.is_empty());

    let added = app
        .post(
            &format!("/api/labs/{lab}/members"),
            &json!({"user_id": alice, "role": "member"}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(added.status(), StatusCode::CREATED);
    assert_eq!(access(StatusCode::OK).await["role"], "member");
    assert_eq!(lab_codes().await, ["GEN"]);

    let demoted = app
        .patch(
            &format!("/api/labs/{lab}/members/{alice}/role"),
            &json!({"role": "viewer"}),
            Some(&admin.access),
        )
        .await;
    assert!(demoted.status().is_success(), "{}", demoted.status());
    assert_eq!(access(StatusCode::OK).await["role"], "viewer");

    let changed = |body: Value| {
        let app = &app;
        let token = admin.access.clone();
        async move {
            let response = app
                .patch(&format!("/api/labs/{lab}"), &body, Some(&token))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
        }
    };
    changed(json!({"is_active": false})).await;
    access(StatusCode::FORBIDDEN).await;
    changed(json!({"is_active": true, "require_mfa": true})).await;
    assert_eq!(
        access(StatusCode::FORBIDDEN).await["code"],
        "mfa_enrollment_required"
    );
    changed(json!({"require_mfa": false})).await;
    access(StatusCode::OK).await;

    let deleted = app
        .delete(&format!("/api/labs/{lab}"), Some(&admin.access))
        .await;
    assert!(deleted.status().is_success(), "{}", deleted.status());
    assert!(lab_codes().await.is_empty());
    let gone = app
        .get(&format!("/api/labs/{lab}/access"), Some(&tokens.access))
        .await;
    assert_eq!(gone.status(), StatusCode::FORBIDDEN);
}

/// `UMS_AUTH_CACHE_ACCOUNTS=0` switches the cache off: every request reads the database, and
/// answers the same (what the benchmark's A/B of the cache compares).
#[tokio::test]
async fn a_capacity_of_zero_caches_nothing() {
    let app = spawn_app_with(&[("UMS_AUTH_CACHE_ACCOUNTS", "0")]).await;
    let (alice, tokens) = app.user("alice").await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    app.add_member(&admin.access, lab, alice, "member").await;
    for _ in 0..5 {
        let me = app.get("/api/auth/me", Some(&tokens.access)).await;
        assert_eq!(me.status(), StatusCode::OK);
        let me: Value = me.json().await.unwrap();
        assert_eq!(me["labs"][0]["id"], lab, "{me}");
        assert_eq!(me["labs"][0]["role"], "member", "{me}");
        let access = app
            .get(&format!("/api/labs/{lab}/access"), Some(&tokens.access))
            .await;
        assert_eq!(access.status(), StatusCode::OK);
    }
    let cache = app.state.store.auth_cache();
    assert_eq!((cache.hits(), cache.lab_hits(), cache.len()), (0, 0, 0));
}
