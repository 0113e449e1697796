//! Brute-force defences, rate limits and HTTP hardening, alone and across instances (Redis).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_problem, spawn_app_with, spawn_second_instance};

/// A login from `ip`, as announced by the trusted proxy (127.0.0.1) in X-Forwarded-For.
async fn login_from(app: &TestApp, ip: &str, username: &str, password: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-for", ip)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

/// The Redis the shared-limit tests use: `UMS_TEST_REDIS_URL` (they also start a private
/// `redis-server`). Unset, they do not run and say so; `.ci/run` sets it and fails when Redis
/// is down.
fn redis_url() -> Option<String> {
    match std::env::var("UMS_TEST_REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("SKIPPED: this Redis test runs when UMS_TEST_REDIS_URL is set");
            None
        }
    }
}

fn unique_prefix() -> String {
    format!(
        "umstest-{}",
        ums::security::secrets::random_token()[..10].to_lowercase()
    )
}

#[tokio::test]
async fn repeated_failures_from_one_ip_block_it_and_only_it() {
    let app = spawn_app_with(&[
        ("UMS_TRUSTED_PROXIES", "127.0.0.1"),
        ("UMS_IP_BLOCK_THRESHOLD", "5"),
    ])
    .await;
    app.register("alice", "alice@lab.org").await;
    for index in 0..5 {
        let response = login_from(
            &app,
            "198.51.100.7",
            &format!("guess{index}"),
            "wrong password",
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let blocked = login_from(&app, "198.51.100.7", "alice", PASSWORD).await;
    let retry_after: u64 = blocked.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((3500..=3600).contains(&retry_after), "{retry_after}");
    assert_problem(blocked, StatusCode::TOO_MANY_REQUESTS).await;
    // The other credential endpoints refuse it too.
    let forgot = app
        .client
        .post(app.url("/api/auth/forgot-password"))
        .header("x-forwarded-for", "198.51.100.7")
        .json(&json!({"email": "alice@lab.org"}))
        .send()
        .await
        .unwrap();
    assert_eq!(forgot.status(), StatusCode::TOO_MANY_REQUESTS);
    // Another address is not affected.
    assert_eq!(
        login_from(&app, "203.0.113.9", "alice", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
    let events = app.audit_events("security.ip_blocked").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["details"]["ip"], "198.51.100.7");
    // The block ends after its hour.
    app.clock.advance(Duration::from_secs(3601));
    assert_eq!(
        login_from(&app, "198.51.100.7", "alice", PASSWORD)
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn parallel_wrong_passwords_from_one_ip_are_evaluated_no_more_than_the_threshold() {
    let app = spawn_app_with(&[
        ("UMS_TRUSTED_PROXIES", "127.0.0.1"),
        ("UMS_IP_BLOCK_THRESHOLD", "5"),
        ("UMS_PASSWORD_HASH_MEMORY_KIB", "8192"),
    ])
    .await;
    let attempts = (0..30).map(|index| {
        let app = &app;
        async move {
            login_from(
                app,
                "198.51.100.8",
                &format!("guess{index}"),
                "wrong password",
            )
            .await
            .status()
        }
    });
    let statuses = futures_util::future::join_all(attempts).await;
    let unauthorized = statuses
        .iter()
        .filter(|status| **status == StatusCode::UNAUTHORIZED)
        .count();
    let refused = statuses
        .iter()
        .filter(|status| **status == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // Counted before evaluation: exactly the threshold is evaluated, the rest refused.
    assert_eq!((unauthorized, refused), (5, 25), "{statuses:?}");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM login_attempts WHERE NOT success")
            .await,
        5
    );
    assert_eq!(app.audit_events("auth.login_failed").await.len(), 5);
    assert_eq!(app.audit_events("security.ip_blocked").await.len(), 1);
    assert_eq!(
        login_from(&app, "198.51.100.8", "guess0", "wrong password")
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn successful_logins_do_not_count_towards_an_ip_block() {
    let app = spawn_app_with(&[
        ("UMS_TRUSTED_PROXIES", "127.0.0.1"),
        ("UMS_IP_BLOCK_THRESHOLD", "3"),
    ])
    .await;
    app.register("alice", "alice@lab.org").await;
    for _ in 0..2 {
        let response = login_from(&app, "198.51.100.9", "mallory", "wrong password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    for _ in 0..5 {
        let response = login_from(&app, "198.51.100.9", "alice", PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    // The third failure, not the eighth attempt, blocks.
    let third = login_from(&app, "198.51.100.9", "mallory", "wrong password").await;
    assert_eq!(third.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        login_from(&app, "198.51.100.9", "alice", PASSWORD)
            .await
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn a_login_abandoned_by_its_client_does_not_count_against_the_ip() {
    let app = spawn_app_with(&[
        ("UMS_TRUSTED_PROXIES", "127.0.0.1"),
        ("UMS_IP_BLOCK_THRESHOLD", "2"),
        // A slow hash, so the client can leave while its password is being checked.
        ("UMS_PASSWORD_HASH_MEMORY_KIB", "65536"),
        ("UMS_PASSWORD_HASH_ITERATIONS", "8"),
    ])
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(30))
        .build()
        .unwrap();
    let abandoned = impatient
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-for", "198.51.100.10")
        .json(&json!({"username": "mallory", "password": "wrong password"}))
        .send()
        .await;
    assert!(abandoned.is_err(), "the login answered within 30 ms");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Two real failures reach the threshold of 2; the abandoned one was not a third.
    for expected in [StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED] {
        let response = login_from(&app, "198.51.100.10", "mallory", "wrong password").await;
        assert_eq!(response.status(), expected);
    }
    let blocked = login_from(&app, "198.51.100.10", "mallory", "wrong password").await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app_with(&[("UMS_IP_BLOCK_THRESHOLD", "3")]).await;
    for index in 0..3 {
        // A different claimed address each time: all of them are really 127.0.0.1.
        login_from(
            &app,
            &format!("10.9.9.{index}"),
            &format!("guess{index}"),
            "wrong password",
        )
        .await;
    }
    let response = login_from(&app, "10.9.9.200", "anyone", "whatever it is").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let attempts: Value = serde_json::json!(
        app.address("SELECT ip FROM login_attempts ORDER BY id LIMIT 1")
            .await
    );
    assert_eq!(attempts, "127.0.0.1");
}

#[tokio::test]
async fn each_failure_slows_the_next_try_of_that_username_and_a_right_password_still_wins() {
    let app = spawn_app_with(&[("UMS_LOGIN_DELAYS", "100ms,500ms,2s")]).await;
    app.register("alice", "alice@lab.org").await;
    let mut took = Vec::new();
    for _ in 0..4 {
        let started = Instant::now();
        let response = app.login_response("alice", "wrong password").await;
        took.push(started.elapsed());
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    assert!(took[1] >= Duration::from_millis(100), "{took:?}");
    assert!(took[2] >= Duration::from_millis(500), "{took:?}");
    assert!(took[3] >= Duration::from_secs(2), "{took:?}");
    let started = Instant::now();
    assert_eq!(
        app.login_response("alice", PASSWORD).await.status(),
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    // Success resets the count: the next try is fast again, and other users never waited.
    let started = Instant::now();
    app.login("alice").await;
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn credential_stuffing_across_many_accounts_raises_one_alert() {
    let app = spawn_app_with(&[
        ("UMS_TRUSTED_PROXIES", "127.0.0.1"),
        ("UMS_STUFFING_THRESHOLD", "10"),
        ("UMS_STUFFING_WINDOW", "5m"),
    ])
    .await;
    let admin = app.admin("root").await;
    for index in 0..14 {
        let ip = format!("192.0.2.{index}");
        let response = login_from(&app, &ip, &format!("victim{index}"), "leaked-password-1").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let events = app
        .audit_events("security.credential_stuffing_detected")
        .await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["details"]["failures"], 10);
    assert_eq!(events[0]["details"]["usernames"], 10);
    let alert = app.smtp.wait_for("root@admins.org", "Security alert").await;
    assert!(alert.text.contains("10 failed sign-ins"));
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(metrics.contains("ums_credential_stuffing_alerts_total 1"));
    let _ = admin;
}

#[tokio::test]
async fn anonymous_calls_are_limited_per_ip_and_health_is_exempt() {
    let app = spawn_app_with(&[("UMS_ANON_RATE_LIMIT_PER_MINUTE", "5")]).await;
    for _ in 0..5 {
        assert_eq!(
            app.get("/.well-known/jwks.json", None).await.status(),
            StatusCode::OK
        );
    }
    let refused = app.get("/.well-known/jwks.json", None).await;
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS).await;
    for _ in 0..10 {
        assert_eq!(app.get("/health", None).await.status(), StatusCode::OK);
        assert_eq!(app.get("/metrics", None).await.status(), StatusCode::OK);
    }
    app.clock.advance(Duration::from_secs(60));
    assert_eq!(
        app.get("/.well-known/jwks.json", None).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn authenticated_calls_are_limited_per_user_and_per_session_second() {
    let app = spawn_app_with(&[
        ("UMS_RATE_LIMIT_PER_MINUTE", "8"),
        ("UMS_SESSION_RATE_PER_SECOND", "3"),
    ])
    .await;
    // Fixed windows: start just after a minute boundary so the test's few seconds stay in one.
    let into_minute = app.clock.now().rem_euclid(60_000);
    app.clock
        .advance(Duration::from_millis((60_000 - into_minute + 100) as u64));
    let (_, tokens) = app.user("alice").await;
    // The velocity check: more than 3 calls in one second from one session.
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(
                app.get("/api/auth/me", Some(&tokens.access))
                    .await
                    .status()
                    .as_u16(),
            );
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 200, 429]);
    // Next second: the session may go on, until the user's minute is spent (8 calls counted).
    app.clock.advance(Duration::from_secs(1));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        app.clock.advance(Duration::from_millis(300));
        statuses.push(
            app.get("/api/auth/me", Some(&tokens.access))
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429]);
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains(r#"ums_rate_limited_total{scope="session"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"ums_rate_limited_total{scope="user"} 1"#));
}

#[tokio::test]
async fn rate_limits_can_be_switched_off_without_touching_the_ip_block() {
    let app = spawn_app_with(&[
        ("UMS_RATE_LIMITS", "off"),
        ("UMS_SESSION_RATE_PER_SECOND", "1"),
        ("UMS_RATE_LIMIT_PER_MINUTE", "2"),
        ("UMS_ANON_RATE_LIMIT_PER_MINUTE", "2"),
        ("UMS_IP_BLOCK_THRESHOLD", "2"),
    ])
    .await;
    let (_, tokens) = app.user("alice").await;
    for _ in 0..5 {
        let response = app.get("/api/auth/me", Some(&tokens.access)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let jwks = app.get("/.well-known/jwks.json", None).await;
        assert_eq!(jwks.status(), StatusCode::OK);
    }
    for _ in 0..2 {
        let response = login_from(&app, "ignored", "mallory", "wrong password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let blocked = login_from(&app, "ignored", "alice", PASSWORD).await;
    assert_eq!(blocked.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn cors_answers_only_the_configured_origins() {
    let app = spawn_app_with(&[("UMS_CORS_ORIGINS", "https://portal.lab.org")]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/api/auth/login"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://portal.lab.org").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://portal.lab.org"
    );
    assert!(
        allowed.headers()["access-control-allow-methods"]
            .to_str()
            .unwrap()
            .contains("POST")
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let plain = app
        .client
        .get(app.url("/health"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert!(plain.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn two_instances_share_ip_blocks_and_rate_limits_through_redis() {
    let prefix = unique_prefix();
    let Some(redis) = redis_url() else { return };
    let app = spawn_app_with(&[
        ("UMS_REDIS_URL", redis.as_str()),
        ("UMS_REDIS_PREFIX", prefix.as_str()),
        ("UMS_TRUSTED_PROXIES", "127.0.0.1"),
        ("UMS_IP_BLOCK_THRESHOLD", "4"),
        ("UMS_ANON_RATE_LIMIT_PER_MINUTE", "1000"),
    ])
    .await;
    let second = spawn_second_instance(&app).await;
    let ready: Value = app.get("/ready", None).await.json().await.unwrap();
    assert_eq!(ready["checks"]["redis"], "ok");
    app.register("alice", "alice@lab.org").await;
    for index in 0..4 {
        let instance = if index % 2 == 0 { &app } else { &second };
        let response = login_from(
            instance,
            "198.51.100.20",
            &format!("guess{index}"),
            "wrong password",
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    for instance in [&app, &second] {
        let response = login_from(instance, "198.51.100.20", "alice", PASSWORD).await;
        assert_eq!(
            response.status(),
            StatusCode::TOO_MANY_REQUESTS,
            "the block holds on every instance"
        );
    }
    // Lockout is shared through the database: five failures spread over both instances.
    for index in 0..5 {
        let instance = if index % 2 == 0 { &app } else { &second };
        let ip = format!("203.0.113.{index}");
        assert_eq!(
            login_from(instance, &ip, "alice", "wrong password")
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(
        login_from(&second, "203.0.113.99", "alice", PASSWORD)
            .await
            .status(),
        StatusCode::LOCKED
    );
}

#[tokio::test]
async fn the_anonymous_rate_limit_is_one_limit_across_instances_through_redis() {
    let prefix = unique_prefix();
    let Some(redis) = redis_url() else { return };
    let app = spawn_app_with(&[
        ("UMS_REDIS_URL", redis.as_str()),
        ("UMS_REDIS_PREFIX", prefix.as_str()),
        ("UMS_ANON_RATE_LIMIT_PER_MINUTE", "6"),
    ])
    .await;
    let second = spawn_second_instance(&app).await;
    let mut statuses = Vec::new();
    for index in 0..8 {
        let instance = if index % 2 == 0 { &app } else { &second };
        statuses.push(
            instance
                .get("/.well-known/jwks.json", None)
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 429, 429]);
}

/// A private redis-server on a free port, killed on drop.
struct PrivateRedis {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl PrivateRedis {
    fn start() -> Self {
        Self::start_on(free_port())
    }

    fn start_on(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        PrivateRedis { child, port }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn redis_stopping_mid_test_causes_no_errors_and_is_reported() {
    if redis_url().is_none() {
        return;
    }
    let mut redis = PrivateRedis::start();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let app = spawn_app_with(&[
        ("UMS_REDIS_URL", url.as_str()),
        ("UMS_ANON_RATE_LIMIT_PER_MINUTE", "1000"),
    ])
    .await;
    let (_, tokens) = app.user("alice").await;
    assert_eq!(
        app.get("/api/auth/me", Some(&tokens.access)).await.status(),
        StatusCode::OK
    );

    let _ = redis.child.kill();
    let _ = redis.child.wait();
    let mut statuses = Vec::new();
    statuses.push(
        app.get("/api/auth/me", Some(&tokens.access))
            .await
            .status()
            .as_u16(),
    );
    statuses.push(
        app.login_response("alice", "wrong password")
            .await
            .status()
            .as_u16(),
    );
    statuses.push(
        app.login_response("alice", PASSWORD)
            .await
            .status()
            .as_u16(),
    );
    statuses.push(
        app.get("/.well-known/jwks.json", None)
            .await
            .status()
            .as_u16(),
    );
    assert_eq!(statuses, [200, 401, 200, 200]);
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert!(
        body["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{body}"
    );
}

/// Security review, item 18: a Redis that is down when the service starts is connected as
/// soon as it answers, and `/ready` tells the real state meanwhile.
#[tokio::test]
async fn redis_down_at_start_is_connected_when_it_comes_up() {
    if redis_url().is_none() {
        return;
    }
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let app = spawn_app_with(&[
        ("UMS_REDIS_URL", url.as_str()),
        ("UMS_REDIS_PREFIX", "late"),
        ("UMS_ANON_RATE_LIMIT_PER_MINUTE", "1000"),
    ])
    .await;
    let ready: Value = app.get("/ready", None).await.json().await.unwrap();
    assert!(
        ready["checks"]["redis"]
            .as_str()
            .unwrap()
            .starts_with("unavailable"),
        "{ready}"
    );
    let _redis = PrivateRedis::start_on(port);
    let mut state = Value::Null;
    for _ in 0..100 {
        let ready: Value = app.get("/ready", None).await.json().await.unwrap();
        state = ready["checks"]["redis"].clone();
        if state == "ok" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(state, "ok");
    // The counters now live in that Redis.
    app.get("/.well-known/jwks.json", None).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("late:*")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert!(!keys.is_empty());
}
