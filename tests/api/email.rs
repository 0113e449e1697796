//! Emailed-link flows and the seven notifications, received by a real SMTP server on loopback.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, assert_problem, spawn_app, spawn_app_with, spawn_second_instance};

const NEW_PASSWORD: &str = "a brand new passphrase";

#[tokio::test]
async fn registration_sends_a_welcome_email_whose_link_verifies_the_address() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let email = app.smtp.wait_for("alice@lab.org", "Welcome").await;
    // The address is not proven yet: the greeting names nobody (security review, item 10).
    assert!(email.text.starts_with("Hello,") && !email.text.contains("alice"));
    assert!(email.html.contains("<html"));
    assert!(
        email
            .link()
            .starts_with("http://ums.test/verify-email?token=")
    );
    assert_eq!(
        app.text("SELECT token_hash FROM email_verification_tokens")
            .await
            .unwrap()
            .len(),
        64
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM email_verification_tokens WHERE token_hash = '{}'",
            email.token()
        ))
        .await,
        0
    );

    let response = app
        .post(
            "/api/auth/verify-email",
            &json!({"token": email.token()}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email_verified"], true);
    assert_eq!(user["email"], "alice@lab.org");
    assert_eq!(app.audit_events("auth.email_verified").await.len(), 1);
    let again = app
        .post(
            "/api/auth/verify-email",
            &json!({"token": email.token()}),
            None,
        )
        .await;
    assert_problem(again, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn forgot_password_answers_the_same_whether_or_not_the_address_exists() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let known = app
        .post(
            "/api/auth/forgot-password",
            &json!({"email": "Alice@lab.org"}),
            None,
        )
        .await;
    let unknown = app
        .post(
            "/api/auth/forgot-password",
            &json!({"email": "nobody@lab.org"}),
            None,
        )
        .await;
    assert_eq!(known.status(), StatusCode::ACCEPTED);
    assert_eq!(unknown.status(), StatusCode::ACCEPTED);
    assert_eq!(known.text().await.unwrap(), unknown.text().await.unwrap());
    let email = app
        .smtp
        .wait_for("alice@lab.org", "Reset your password")
        .await;
    assert!(
        email
            .link()
            .starts_with("http://ums.test/reset-password?token=")
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM password_reset_tokens")
            .await,
        1
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM email_outbox WHERE kind = 'password_reset'")
            .await,
        1
    );
    assert_eq!(
        app.audit_events("auth.password_reset_requested")
            .await
            .len(),
        2
    );
    let bad = app
        .post(
            "/api/auth/forgot-password",
            &json!({"email": "not an address"}),
            None,
        )
        .await;
    assert_problem(bad, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn a_reset_sets_the_password_unlocks_and_ends_every_session() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    for _ in 0..5 {
        app.login_response("alice", "wrong password").await;
    }
    assert_eq!(
        app.login_response("alice", PASSWORD).await.status(),
        StatusCode::LOCKED
    );

    app.post(
        "/api/auth/forgot-password",
        &json!({"email": "alice@lab.org"}),
        None,
    )
    .await;
    let token = app
        .smtp
        .wait_for("alice@lab.org", "Reset your password")
        .await
        .token();
    // A weak password is refused and leaves the token usable.
    let weak = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": token, "new_password": "password"}),
            None,
        )
        .await;
    assert!(
        assert_problem(weak, StatusCode::BAD_REQUEST).await["errors"]["new_password"].is_array()
    );
    let response = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": token, "new_password": NEW_PASSWORD}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    assert_problem(
        app.get("/api/auth/me", Some(&tokens.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(app.refresh(&tokens.refresh).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.login_response("alice", PASSWORD).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.login_response("alice", NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    let notice = app
        .smtp
        .wait_for("alice@lab.org", "Your password was changed")
        .await;
    assert!(notice.text.contains("signed out"));
    let reused = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": token, "new_password": "another fine passphrase"}),
            None,
        )
        .await;
    assert_problem(reused, StatusCode::BAD_REQUEST).await;
    assert_eq!(app.audit_events("auth.password_reset").await.len(), 1);
}

#[tokio::test]
async fn reset_links_expire_and_a_newer_one_voids_the_older() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    app.post(
        "/api/auth/forgot-password",
        &json!({"email": "alice@lab.org"}),
        None,
    )
    .await;
    let first = app
        .smtp
        .wait_for_nth("alice@lab.org", "Reset your password", 1)
        .await
        .token();
    app.clock.advance(Duration::from_secs(301));
    app.post(
        "/api/auth/forgot-password",
        &json!({"email": "alice@lab.org"}),
        None,
    )
    .await;
    let second = app
        .smtp
        .wait_for_nth("alice@lab.org", "Reset your password", 2)
        .await
        .token();
    let voided = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": first, "new_password": NEW_PASSWORD}),
            None,
        )
        .await;
    assert_problem(voided, StatusCode::BAD_REQUEST).await;

    app.clock.advance(Duration::from_secs(24 * 3600 + 1));
    let expired = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": second, "new_password": NEW_PASSWORD}),
            None,
        )
        .await;
    assert_problem(expired, StatusCode::BAD_REQUEST).await;
    let wrong = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": "made-up", "new_password": NEW_PASSWORD}),
            None,
        )
        .await;
    assert_problem(wrong, StatusCode::BAD_REQUEST).await;
    app.login("alice").await;
}

#[tokio::test]
async fn a_token_of_one_kind_is_refused_by_the_other_flow() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let verify_token = app.smtp.wait_for("alice@lab.org", "Welcome").await.token();
    app.post(
        "/api/auth/forgot-password",
        &json!({"email": "alice@lab.org"}),
        None,
    )
    .await;
    let reset_token = app
        .smtp
        .wait_for("alice@lab.org", "Reset your password")
        .await
        .token();
    let crossed = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": verify_token, "new_password": NEW_PASSWORD}),
            None,
        )
        .await;
    assert_problem(crossed, StatusCode::BAD_REQUEST).await;
    let crossed = app
        .post(
            "/api/auth/verify-email",
            &json!({"token": reset_token}),
            None,
        )
        .await;
    assert_problem(crossed, StatusCode::BAD_REQUEST).await;
    // Both still work in their own flow.
    assert_eq!(
        app.post(
            "/api/auth/verify-email",
            &json!({"token": verify_token}),
            None
        )
        .await
        .status(),
        StatusCode::OK
    );
    let reset = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": reset_token, "new_password": NEW_PASSWORD}),
            None,
        )
        .await;
    assert_eq!(reset.status(), StatusCode::OK);
}

#[tokio::test]
async fn changing_the_password_ends_the_other_sessions_only() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let current = app.login("alice").await;
    let other = app.login("alice").await;
    let wrong = app
        .post(
            "/api/auth/change-password",
            &json!({"current_password": "not it at all", "new_password": NEW_PASSWORD}),
            Some(&current.access),
        )
        .await;
    assert!(
        assert_problem(wrong, StatusCode::BAD_REQUEST).await["errors"]["current_password"]
            .is_array()
    );
    let response = app
        .post(
            "/api/auth/change-password",
            &json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
            Some(&current.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        app.get("/api/auth/me", Some(&current.access))
            .await
            .status(),
        StatusCode::OK
    );
    assert_problem(
        app.get("/api/auth/me", Some(&other.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(app.refresh(&other.refresh).await, StatusCode::UNAUTHORIZED).await;
    app.smtp
        .wait_for("alice@lab.org", "Your password was changed")
        .await;
    assert_eq!(
        app.login_response("alice", NEW_PASSWORD).await.status(),
        StatusCode::OK
    );
    let anonymous = app
        .post(
            "/api/auth/change-password",
            &json!({"current_password": PASSWORD, "new_password": NEW_PASSWORD}),
            None,
        )
        .await;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await;
}

#[tokio::test]
async fn changing_the_email_verifies_the_new_address_and_tells_the_old_one() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    app.register("bob", "bob@lab.org").await;
    let tokens = app.login("alice").await;
    let taken = app
        .post(
            "/api/auth/change-email",
            &json!({"new_email": "BOB@lab.org", "password": PASSWORD}),
            Some(&tokens.access),
        )
        .await;
    assert_problem(taken, StatusCode::CONFLICT).await;
    let wrong = app
        .post(
            "/api/auth/change-email",
            &json!({"new_email": "new@lab.org", "password": "not it at all"}),
            Some(&tokens.access),
        )
        .await;
    assert_problem(wrong, StatusCode::BAD_REQUEST).await;

    let response = app
        .post(
            "/api/auth/change-email",
            &json!({"new_email": "New@Lab.org", "password": PASSWORD}),
            Some(&tokens.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let verification = app
        .smtp
        .wait_for("new@lab.org", "Verify your email address")
        .await;
    // Until verified, the account keeps its address.
    let me: Value = app
        .get("/api/auth/me", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email"], "alice@lab.org");

    let response = app
        .post(
            "/api/auth/verify-email",
            &json!({"token": verification.token()}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "new@lab.org");
    assert_eq!(user["email_verified"], true);
    let notice = app
        .smtp
        .wait_for("alice@lab.org", "Your email address was changed")
        .await;
    assert!(notice.text.contains("new@lab.org"));
    assert_eq!(
        app.login_response("new@lab.org", PASSWORD).await.status(),
        StatusCode::OK
    );
    let event = &app.audit_events("auth.email_changed").await[0];
    assert_eq!(
        event["details"],
        json!({"from": "alice@lab.org", "to": "new@lab.org"})
    );
}

#[tokio::test]
async fn a_lock_sends_one_notice_with_the_unlock_time_and_no_token() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    for _ in 0..12 {
        app.login_response("alice", "wrong password").await;
    }
    let notice = app
        .smtp
        .wait_for("alice@lab.org", "Your account was locked")
        .await;
    let unlocks_at = ums::clock::to_rfc3339(app.clock.now() + 30 * 60 * 1000);
    assert!(notice.text.contains(&unlocks_at), "{}", notice.text);
    assert!(notice.text.contains("http://ums.test/forgot-password"));
    assert!(!notice.text.contains("token="));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.smtp
            .messages_to("alice@lab.org")
            .iter()
            .filter(|m| m.subject.contains("locked"))
            .count(),
        1
    );
    // Unknown usernames lock too, but nobody is mailed.
    for _ in 0..6 {
        app.login_response("ghost@lab.org", "wrong password").await;
    }
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM email_outbox WHERE kind = 'account_locked'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_sign_in_from_a_new_device_sends_an_alert_unless_opted_out() {
    let app = spawn_app().await;
    let (id, first) = app.user("alice").await;
    app.login("alice").await; // the same device again: no alert
    let phone = |app: &crate::helpers::TestApp| {
        app.client
            .post(app.url("/api/auth/login"))
            .header("user-agent", "Phone/1.0")
            .json(&json!({"username": "alice", "password": PASSWORD}))
            .send()
    };
    assert_eq!(phone(&app).await.unwrap().status(), StatusCode::OK);
    let alert = app
        .smtp
        .wait_for("alice@lab.org", "New sign-in to your account")
        .await;
    assert!(
        alert.text.contains("Phone/1.0") && alert.text.contains("127.0.0.1"),
        "{}",
        alert.text
    );
    phone(&app).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM email_outbox WHERE kind = 'new_login'")
            .await,
        1
    );

    let response = app
        .patch(
            &format!("/api/users/{id}"),
            &json!({"new_login_alerts": false}),
            Some(&first.access),
        )
        .await;
    assert_eq!(
        response.json::<Value>().await.unwrap()["new_login_alerts"],
        false
    );
    app.client
        .post(app.url("/api/auth/login"))
        .header("user-agent", "Tablet/2.0")
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM email_outbox WHERE kind = 'new_login'")
            .await,
        1
    );
}

#[tokio::test]
async fn mail_queued_while_the_smtp_server_is_down_arrives_once_when_it_returns() {
    let mut app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    app.smtp.wait_for("alice@lab.org", "Welcome").await;
    app.smtp.stop();
    let response = app
        .post(
            "/api/auth/forgot-password",
            &json!({"email": "alice@lab.org"}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    // The worker tries, fails, and keeps the message queued with its error.
    for _ in 0..200 {
        if app.scalar("SELECT COUNT(*) FROM email_outbox WHERE kind = 'password_reset' AND attempts >= 1 AND status = 'queued'").await == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        app.text("SELECT last_error FROM email_outbox WHERE kind = 'password_reset'")
            .await
            .is_some()
    );
    let counts = ums::mail::outbox::counts(&app.state).await.unwrap();
    assert_eq!(counts.queued, 1);

    app.smtp.restart().await;
    app.clock.advance(Duration::from_secs(61));
    let email = app
        .smtp
        .wait_for("alice@lab.org", "Reset your password")
        .await;
    assert!(email.link().contains("reset-password?token="));
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.clock.advance(Duration::from_secs(120));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.smtp
            .messages_to("alice@lab.org")
            .iter()
            .filter(|m| m.subject.contains("Reset"))
            .count(),
        1
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM email_outbox WHERE status = 'sent' AND body IS NULL")
            .await,
        2
    );
}

#[tokio::test]
async fn a_message_that_keeps_failing_is_kept_and_marked_failed() {
    let mut app = spawn_app_with(&[("UMS_MAIL_MAX_ATTEMPTS", "3")]).await;
    app.smtp.stop();
    app.register("alice", "alice@lab.org").await;
    for _ in 0..300 {
        if app
            .scalar("SELECT COUNT(*) FROM email_outbox WHERE status = 'failed'")
            .await
            == 1
        {
            break;
        }
        app.clock.advance(Duration::from_secs(61));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.scalar("SELECT attempts FROM email_outbox WHERE kind = 'welcome'")
            .await,
        3
    );
    assert_eq!(
        app.text("SELECT status FROM email_outbox").await.as_deref(),
        Some("failed")
    );
    assert_eq!(
        ums::mail::outbox::counts(&app.state).await.unwrap().failed,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_never_send_the_same_email_twice() {
    let app = spawn_app().await;
    let second = spawn_second_instance(&app).await;
    for index in 0..15 {
        let instance = if index % 2 == 0 { &app } else { &second };
        instance
            .register(&format!("user{index}"), &format!("user{index}@lab.org"))
            .await;
    }
    for index in 0..15 {
        app.smtp
            .wait_for(&format!("user{index}@lab.org"), "Welcome")
            .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.smtp.messages().len(), 15);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM email_outbox WHERE status = 'sent'")
            .await,
        15
    );
}

/// Security review, item 1: a pending email change must not survive account recovery.
#[tokio::test]
async fn a_credential_event_voids_every_emailed_link_issued_before_it() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    // An attacker who knows the password asks to move the account to their own address...
    let attacker = app.login("alice").await;
    let response = app
        .post(
            "/api/auth/change-email",
            &json!({"new_email": "mallory@evil.example", "password": PASSWORD}),
            Some(&attacker.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let hijack = app
        .smtp
        .wait_for("mallory@evil.example", "Verify your email address")
        .await;
    // ...and the owner recovers the account by a reset.
    app.post(
        "/api/auth/forgot-password",
        &json!({"email": "alice@lab.org"}),
        None,
    )
    .await;
    let reset = app
        .smtp
        .wait_for("alice@lab.org", "Reset your password")
        .await;
    let response = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": reset.token(), "new_password": NEW_PASSWORD}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    let response = app
        .post(
            "/api/auth/verify-email",
            &json!({"token": hijack.token()}),
            None,
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        app.text("SELECT email FROM users WHERE username = 'alice'")
            .await
            .as_deref(),
        Some("alice@lab.org")
    );
    assert!(app.audit_events("auth.email_changed").await.is_empty());

    // The same holds for a reset link outstanding when the password is changed.
    app.clock.advance(Duration::from_secs(3600));
    app.post(
        "/api/auth/forgot-password",
        &json!({"email": "alice@lab.org"}),
        None,
    )
    .await;
    let stale_reset = app
        .smtp
        .wait_for_nth("alice@lab.org", "Reset your password", 2)
        .await;
    let owner: Value = app
        .login_response("alice", NEW_PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let response = app
        .post(
            "/api/auth/change-password",
            &json!({"current_password": NEW_PASSWORD, "new_password": "yet another passphrase"}),
            owner["access_token"].as_str(),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let response = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": stale_reset.token(), "new_password": "the attacker's choice"}),
            None,
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
}
