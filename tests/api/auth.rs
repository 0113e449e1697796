//! Registration, login and lockout, through the real HTTP server.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn register_returns_the_user_and_records_the_event() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/api/auth/register",
            &json!({"username": "Alice.Smith", "email": " Alice@Lab.ORG ", "password": PASSWORD,
                    "first_name": "Alice", "last_name": "Smith"}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["username"], "Alice.Smith");
    assert_eq!(user["email"], "alice@lab.org");
    assert_eq!(user["first_name"], "Alice");
    assert_eq!(user["is_admin"], false);
    assert_eq!(user["email_verified"], false);
    for field in [
        "id",
        "is_active",
        "is_locked",
        "mfa_enabled",
        "last_login_at",
        "password_changed_at",
        "created_at",
        "updated_at",
    ] {
        assert!(user.get(field).is_some(), "user lacks {field}");
    }
    assert!(user.get("password_hash").is_none());
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));

    let stored = app
        .text("SELECT password_hash FROM users WHERE username = 'Alice.Smith'")
        .await
        .unwrap();
    assert!(stored.starts_with("$argon2id$"), "stored hash is Argon2id");
    let events = app.audit_events("auth.register").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["user_id"], user["id"]);
    assert_eq!(events[0]["resource_type"], "user");
    assert!(!events[0]["details"].to_string().contains(PASSWORD));
}

#[tokio::test]
async fn register_reports_every_invalid_field_and_writes_nothing() {
    let app = spawn_app().await;
    let response = app
        .post(
            "/api/auth/register",
            &json!({"username": "a b", "email": "not-an-email", "password": "short"}),
            None,
        )
        .await;
    let body = assert_problem(response, StatusCode::BAD_REQUEST).await;
    let errors = body["errors"].as_object().unwrap();
    assert!(errors.contains_key("username"));
    assert!(errors.contains_key("email"));
    assert!(errors.contains_key("password"));
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 0);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM audit_logs").await, 0);
}

#[tokio::test]
async fn register_refuses_common_passwords_unknown_fields_and_wrong_types() {
    let app = spawn_app().await;
    let common = app
        .post(
            "/api/auth/register",
            &json!({"username": "alice", "email": "a@lab.org", "password": "iloveyou123"}),
            None,
        )
        .await;
    let body = assert_problem(common, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["errors"]["password"][0], "is too common");

    let unknown = app
        .post(
            "/api/auth/register",
            &json!({"username": "alice", "email": "a@lab.org", "password": PASSWORD, "is_admin": true}),
            None,
        )
        .await;
    let body = assert_problem(unknown, StatusCode::BAD_REQUEST).await;
    assert!(body["errors"]["is_admin"].is_array());

    let wrong_type = app
        .post(
            "/api/auth/register",
            &json!({"username": 42, "email": "a@lab.org", "password": PASSWORD}),
            None,
        )
        .await;
    let body = assert_problem(wrong_type, StatusCode::BAD_REQUEST).await;
    assert!(body["errors"]["username"].is_array());

    let malformed = app
        .client
        .post(app.url("/api/auth/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(malformed, StatusCode::BAD_REQUEST).await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn duplicate_usernames_and_emails_are_409_without_regard_to_case() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let same_name = app
        .post(
            "/api/auth/register",
            &json!({"username": "ALICE", "email": "other@lab.org", "password": PASSWORD}),
            None,
        )
        .await;
    let body = assert_problem(same_name, StatusCode::CONFLICT).await;
    assert!(body["errors"]["username"].is_array());
    let same_email = app
        .post(
            "/api/auth/register",
            &json!({"username": "alice2", "email": "ALICE@lab.org", "password": PASSWORD}),
            None,
        )
        .await;
    let body = assert_problem(same_email, StatusCode::CONFLICT).await;
    assert!(body["errors"]["email"].is_array());
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 1);
}

#[tokio::test]
async fn login_by_username_or_email_returns_tokens_and_the_user_with_labs() {
    let app = spawn_app().await;
    let user = app.register("alice", "alice@lab.org").await;
    for login in ["alice", "ALICE", "Alice@Lab.org"] {
        let response = app.login_response(login, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "login as {login}");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["expires_in"], 3600);
        assert_eq!(body["user"]["id"], user["id"]);
        assert_eq!(body["user"]["labs"], json!([]));
        assert!(body["user"]["last_login_at"].is_string());
    }
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM login_attempts WHERE success")
            .await,
        3
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM sessions").await, 3);
    let events = app.audit_events("auth.login").await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["resource_type"], "session");
    assert_eq!(events[0]["actor_ip"], "127.0.0.1");
}

#[tokio::test]
async fn a_wrong_password_and_an_unknown_user_get_the_same_answer() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let wrong = app.login_response("alice", "not the password").await;
    let wrong = assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
    let unknown = app.login_response("nobody", "not the password").await;
    let unknown = assert_problem(unknown, StatusCode::UNAUTHORIZED).await;
    assert_eq!(wrong, unknown);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM login_attempts WHERE NOT success")
            .await,
        2
    );
    let failures = app.audit_events("auth.login_failed").await;
    assert_eq!(failures.len(), 2);
    assert_eq!(failures[0]["success"], false);
    assert_eq!(failures[0]["details"]["reason"], "invalid_credentials");
}

/// With the real Argon2id cost, an unknown user must cost a hash too. A lower bound only:
/// without the dummy hash the unknown path would be about 15 times faster; the fastest of
/// four tries must be at least a third of the wrong-password path's (noise only adds time).
#[tokio::test]
async fn login_with_unknown_user_costs_the_same_as_a_wrong_password() {
    let app = spawn_app_with(&[
        ("UMS_PASSWORD_HASH_MEMORY_KIB", "19456"),
        ("UMS_PASSWORD_HASH_ITERATIONS", "2"),
    ])
    .await;
    app.register("alice", "alice@lab.org").await;
    // The welcome email sent first, so no writer is busy with it while the logins are timed.
    app.smtp.wait_for("alice@lab.org", "Welcome").await;
    async fn timed(app: &crate::helpers::TestApp, login: &str) -> Duration {
        let start = std::time::Instant::now();
        let response = app.login_response(login, "wrong password!").await;
        let elapsed = start.elapsed();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        elapsed
    }
    // Interleaved, so a busy machine slows both alike; the fastest of each is compared (four
    // attempts, below the lockout threshold).
    let (mut known, mut unknown) = (Duration::MAX, Duration::MAX);
    for _ in 0..4 {
        known = known.min(timed(&app, "alice").await);
        unknown = unknown.min(timed(&app, "nobody-here").await);
    }
    assert!(
        unknown * 3 >= known,
        "unknown {unknown:?} vs known {known:?}"
    );
}

#[tokio::test]
async fn five_failures_lock_the_account_until_the_lock_expires() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    for _ in 0..5 {
        let response = app.login_response("alice", "wrong password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = app.login_response("alice", PASSWORD).await;
    let retry_after: u64 = locked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1700..=1800).contains(&retry_after),
        "retry after {retry_after}"
    );
    assert_problem(locked, StatusCode::LOCKED).await;
    assert_eq!(app.audit_events("security.account_locked").await.len(), 1);

    // Failures during the lock do not extend it.
    app.clock.advance(Duration::from_secs(20 * 60));
    let during = app.login_response("alice", "wrong again").await;
    assert_eq!(during.status(), StatusCode::LOCKED);
    app.clock.advance(Duration::from_secs(10 * 60 + 1));
    let after = app.login_response("alice", PASSWORD).await;
    assert_eq!(after.status(), StatusCode::OK);
    assert_eq!(app.scalar("SELECT failed_login_count FROM users").await, 0);
}

#[tokio::test]
async fn a_successful_login_resets_the_failure_counter() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    for _ in 0..4 {
        app.login_response("alice", "wrong password").await;
    }
    app.login("alice").await;
    for _ in 0..4 {
        let response = app.login_response("alice", "wrong password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    app.login("alice").await;
}

#[tokio::test]
async fn unknown_usernames_lock_like_real_ones() {
    let app = spawn_app().await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            app.login_response("ghost", "whatever it is")
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 423]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_wrong_passwords_are_all_counted_and_at_most_five_evaluated() {
    let app = std::sync::Arc::new(spawn_app().await);
    app.register("alice", "alice@lab.org").await;
    let attempts = (0..100).map(|_| {
        let app = app.clone();
        tokio::spawn(async move {
            app.login_response("alice", "wrong password")
                .await
                .status()
                .as_u16()
        })
    });
    let mut statuses = Vec::new();
    for attempt in attempts {
        statuses.push(attempt.await.unwrap());
    }
    let unauthorized = statuses.iter().filter(|s| **s == 401).count();
    let locked = statuses.iter().filter(|s| **s == 423).count();
    assert!(unauthorized <= 5, "{unauthorized} were evaluated");
    assert_eq!(unauthorized + locked, 100);
    assert_eq!(
        app.scalar("SELECT failed_login_count FROM users").await,
        100
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM login_attempts").await, 100);
    assert_eq!(
        app.login_response("alice", PASSWORD).await.status(),
        StatusCode::LOCKED
    );
}

#[tokio::test]
async fn me_returns_the_caller_and_requires_a_token() {
    let app = spawn_app().await;
    let user = app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    let me: Value = app
        .get("/api/auth/me", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["id"], user["id"]);
    assert_eq!(me["labs"], json!([]));
    assert_problem(
        app.get("/api/auth/me", None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(
        app.get("/api/auth/me", Some("garbage")).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}
