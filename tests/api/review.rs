//! Regressions of the security review (issue 14): each test failed on the code the review
//! attacked. Item numbers are the review's.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_problem, spawn_app, spawn_app_with};

/// A login through the trusted proxy at 127.0.0.1 with the given forwarding header lines.
async fn login_through_proxy(
    app: &TestApp,
    header: &str,
    lines: &[&str],
    username: &str,
    password: &str,
) -> reqwest::Response {
    let mut request = app.client.post(app.url("/api/auth/login"));
    for line in lines {
        request = request.header(header, *line);
    }
    request
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
}

/// Item 2: a client's own `X-Forwarded-For` line in front of the proxy's does not choose
/// its address, for blocks or for the audit trail.
#[tokio::test]
async fn a_forged_forwarding_line_does_not_choose_the_client_address() {
    let app = spawn_app_with(&[
        ("UMS_TRUSTED_PROXIES", "127.0.0.1"),
        ("UMS_IP_BLOCK_THRESHOLD", "5"),
    ])
    .await;
    app.register("alice", "alice@lab.org").await;
    let mut statuses = Vec::new();
    for attempt in 0..7 {
        let forged = format!("10.9.{attempt}.1");
        let response = login_through_proxy(
            &app,
            "x-forwarded-for",
            &[forged.as_str(), "198.51.100.20"],
            &format!("guess{attempt}"),
            "wrong password",
        )
        .await;
        statuses.push(response.status().as_u16());
    }
    assert_eq!(statuses, [401, 401, 401, 401, 401, 429, 429]);
    let failures = app.audit_events("auth.login_failed").await;
    assert_eq!(failures.len(), 5);
    assert!(
        failures
            .iter()
            .all(|event| event["actor_ip"] == "198.51.100.20"),
        "{failures:?}"
    );
}

/// Item 2: the standard `Forwarded` header, read when the proxies are said to write it, and
/// IPv6 clients blocked by their /64.
#[tokio::test]
async fn the_forwarded_header_is_read_and_ipv6_clients_are_blocked_by_their_64() {
    let app = spawn_app_with(&[
        ("UMS_TRUSTED_PROXIES", "127.0.0.1"),
        ("UMS_PROXY_HEADER", "forwarded"),
        ("UMS_IP_BLOCK_THRESHOLD", "3"),
    ])
    .await;
    app.register("alice", "alice@lab.org").await;
    for host in 1..=3 {
        let line = format!("for=\"[2001:db8:5:6::{host}]:4711\";proto=https");
        let response = login_through_proxy(
            &app,
            "forwarded",
            &[line.as_str()],
            "alice",
            "wrong password",
        )
        .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    // Another address of the same /64 is blocked too; one of another /64 is not.
    let same_block = login_through_proxy(
        &app,
        "forwarded",
        &["for=\"[2001:db8:5:6:ffff::9]\""],
        "alice",
        PASSWORD,
    )
    .await;
    assert_eq!(same_block.status(), StatusCode::TOO_MANY_REQUESTS);
    let other_block = login_through_proxy(
        &app,
        "forwarded",
        &["for=\"[2001:db8:5:7::1]\""],
        "alice",
        PASSWORD,
    )
    .await;
    assert_eq!(other_block.status(), StatusCode::OK);
    let failure = &app.audit_events("auth.login_failed").await[0];
    assert_eq!(failure["actor_ip"], "2001:db8:5:6::1");
    let block = &app.audit_events("security.ip_blocked").await[0];
    assert_eq!(block["resource_id"], "2001:db8:5:6::/64");
}

/// Item 3: cells a spreadsheet would run as formulas are neutralised in the CSV export.
#[tokio::test]
async fn the_csv_export_neutralises_formulas() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    app.register("alice", "alice@lab.org").await;
    let response = app
        .client
        .post(app.url("/api/auth/login"))
        .header("user-agent", "=HYPERLINK(\"https://evil.example\",\"x\")")
        .header("x-request-id", "@SUM(1+1)")
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let csv = app
        .get(
            "/api/audit-logs?format=csv&action=auth.login",
            Some(&admin.access),
        )
        .await
        .text()
        .await
        .unwrap();
    let alice_line = csv
        .lines()
        .find(|line| line.contains("HYPERLINK"))
        .expect("alice's login");
    assert!(
        alice_line.contains("\"'=HYPERLINK(\"\"https://evil.example\"\",\"\"x\"\")\""),
        "{alice_line}"
    );
    assert!(alice_line.contains(",'@SUM(1+1)"), "{alice_line}");
    assert!(!csv.contains(",=") && !csv.contains(",@"), "{csv}");
}

/// Item 4: the id of a deleted user (or lab) is never handed out again.
#[tokio::test]
async fn ids_of_deleted_users_and_labs_are_never_reused() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let (bob, _) = app.user("bob").await;
    assert_eq!(
        app.delete(&format!("/api/users/{bob}"), Some(&admin.access))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    let (carol, _) = app.user("carol").await;
    assert!(carol > bob, "carol got id {carol}, bob had {bob}");
    let carol_events: Vec<Value> = app
        .get(
            &format!("/api/audit-logs?user_id={carol}"),
            Some(&admin.access),
        )
        .await
        .json::<Value>()
        .await
        .unwrap()["items"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        carol_events
            .iter()
            .all(|event| !event.to_string().contains("bob")),
        "carol inherited bob's history: {carol_events:?}"
    );

    let lab = app.create_lab(&admin.access, "GEN").await;
    assert_eq!(
        app.delete(&format!("/api/labs/{lab}"), Some(&admin.access))
            .await
            .status(),
        StatusCode::NO_CONTENT
    );
    assert!(app.create_lab(&admin.access, "BIO").await > lab);
}

/// Item 13: only JSON is read, one value of it, and a refused body changes nothing.
#[tokio::test]
async fn bodies_must_be_one_json_value_sent_as_json() {
    let app = spawn_app().await;
    let body = json!({"username": "alice", "email": "alice@lab.org", "password": PASSWORD});
    for content_type in [
        Some("text/plain"),
        None,
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = app
            .client
            .post(app.url("/api/auth/register"))
            .body(body.to_string());
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let problem = assert_problem(
            request.send().await.unwrap(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        )
        .await;
        assert_eq!(problem["status"], 415);
    }
    let twice = format!("{body}{body}");
    for payload in [twice.as_str(), &format!("{body} trailing")] {
        let response = app
            .client
            .post(app.url("/api/auth/register"))
            .header("content-type", "application/json; charset=utf-8")
            .body(payload.to_string())
            .send()
            .await
            .unwrap();
        assert_problem(response, StatusCode::BAD_REQUEST).await;
    }
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 0);
    assert_eq!(app.smtp.messages().len(), 0);
}

/// Item 14: every missing or invalid field is named at once.
#[tokio::test]
async fn every_bad_field_is_named_at_once() {
    let app = spawn_app().await;
    let problem = assert_problem(
        app.post("/api/auth/register", &json!({}), None).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let mut fields: Vec<&str> = problem["errors"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort();
    assert_eq!(fields, ["email", "password", "username"], "{problem}");

    let problem = assert_problem(
        app.post(
            "/api/auth/register",
            &json!({"username": 7, "email": "alice@lab.org", "password": true, "extra": 1}),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let errors = &problem["errors"];
    assert!(errors["username"].is_array() && errors["password"].is_array());
    assert_eq!(errors["extra"], json!(["unknown field"]));
    assert!(errors.get("email").is_none(), "{problem}");
}

/// Item 15: a problem's `status` is the response's.
#[tokio::test]
async fn a_405_says_405_in_its_body() {
    let app = spawn_app().await;
    let response = app
        .client
        .delete(app.url("/api/auth/login"))
        .send()
        .await
        .unwrap();
    let problem = assert_problem(response, StatusCode::METHOD_NOT_ALLOWED).await;
    assert_eq!(problem["status"], 405);
    assert_eq!(problem["code"], "method_not_allowed");
}

/// Item 16: control characters are refused as 400 before they reach a database (a NUL was
/// a 500 on PostgreSQL).
#[tokio::test]
async fn control_characters_are_refused_before_the_database() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let problem = assert_problem(
        app.post(
            "/api/auth/login",
            &json!({"username": "al\u{0}ice", "password": PASSWORD}),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(problem["errors"]["username"].is_array(), "{problem}");
    assert_problem(
        app.post(
            "/api/auth/forgot-password",
            &json!({"email": "a\u{0}@lab.org"}),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let problem = assert_problem(
        app.get("/api/users?q=al%00ice", Some(&admin.access)).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(problem["errors"]["q"].is_array(), "{problem}");
    assert_problem(
        app.get("/api/audit-logs?action=a%1Bb", Some(&admin.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_eq!(app.audit_events("auth.login_failed").await.len(), 0);
}

/// Item 17: connections the database ended (an operator's shutdown, a restart) are 503 with
/// `Retry-After`, not 500.
#[tokio::test]
async fn connections_ended_by_the_database_are_503() {
    let app = spawn_app().await;
    if app.state.store.backend() != ums::store::Backend::Postgres {
        return; // SQLite has no server to end a connection.
    }
    let (_, tokens) = app.user("alice").await;
    // Fill the pool with open connections, then end them all from the server side.
    let burst = futures_util::future::join_all(
        (0..8).map(|_| app.get("/api/auth/me", Some(&tokens.access))),
    )
    .await;
    assert!(
        burst
            .iter()
            .all(|response| response.status() == StatusCode::OK)
    );
    app.execute(&["SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()"])
        .await;
    let statuses: Vec<u16> = futures_util::future::join_all(
        (0..8).map(|_| app.get("/api/auth/me", Some(&tokens.access))),
    )
    .await
    .iter()
    .map(|response| response.status().as_u16())
    .collect();
    assert!(
        statuses.iter().all(|status| [200, 503].contains(status)),
        "{statuses:?}"
    );
}

/// Item 8: a signed but revoked access token does not lift its bearer out of the anonymous
/// per-IP limit.
#[tokio::test]
async fn a_revoked_token_is_limited_as_an_anonymous_caller() {
    let app = spawn_app_with(&[("UMS_ANON_RATE_LIMIT_PER_MINUTE", "4")]).await;
    let (_, tokens) = app.user("alice").await;
    let logout = app
        .post("/api/auth/logout", &json!({}), Some(&tokens.access))
        .await;
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            app.get("/.well-known/jwks.json", Some(&tokens.access))
                .await
                .status()
                .as_u16(),
        );
    }
    // Registration and login were two anonymous calls of the four this minute.
    assert_eq!(statuses, [200, 200, 429, 429]);
}

/// Item 7: forty reset requests for one address are one email, and its link stays usable;
/// the same for a repeated email change to one address.
#[tokio::test]
async fn repeated_link_requests_send_one_email_a_few_minutes() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    for _ in 0..40 {
        let response = app
            .post(
                "/api/auth/forgot-password",
                &json!({"email": "alice@lab.org"}),
                None,
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    app.smtp
        .wait_for("alice@lab.org", "Reset your password")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let resets = |app: &TestApp| {
        app.smtp
            .messages_to("alice@lab.org")
            .into_iter()
            .filter(|message| message.subject.contains("Reset your password"))
            .count()
    };
    assert_eq!(resets(&app), 1);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM password_reset_tokens")
            .await,
        1
    );
    assert_eq!(
        app.audit_events("auth.password_reset_requested")
            .await
            .len(),
        40
    );
    // Minutes later, another request sends another link.
    app.clock.advance(std::time::Duration::from_secs(301));
    app.post(
        "/api/auth/forgot-password",
        &json!({"email": "alice@lab.org"}),
        None,
    )
    .await;
    app.smtp
        .wait_for_nth("alice@lab.org", "Reset your password", 2)
        .await;

    let tokens = app.login("alice").await;
    for _ in 0..5 {
        let response = app
            .post(
                "/api/auth/change-email",
                &json!({"new_email": "new@lab.org", "password": PASSWORD}),
                Some(&tokens.access),
            )
            .await;
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    app.smtp
        .wait_for("new@lab.org", "Verify your email address")
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(app.smtp.messages_to("new@lab.org").len(), 1);
}

/// Item 5: a duplicate registration costs no hash; the hash queue is bounded and sheds load
/// with 503 and `Retry-After`; registrations and reset requests count against a per-IP
/// budget.
#[tokio::test]
async fn registration_cannot_be_turned_into_a_cpu_or_mail_amplifier() {
    let app = spawn_app_with(&[
        ("UMS_HASH_QUEUE_LIMIT", "1"),
        ("UMS_PASSWORD_HASH_MEMORY_KIB", "65536"),
        ("UMS_PASSWORD_HASH_ITERATIONS", "2"),
    ])
    .await;
    app.register("alice", "alice@lab.org").await;
    let before = app.state.hash_pool.jobs_run();
    for body in [
        json!({"username": "ALICE", "email": "other@lab.org", "password": PASSWORD}),
        json!({"username": "other", "email": "Alice@lab.org", "password": PASSWORD}),
    ] {
        assert_problem(
            app.post("/api/auth/register", &body, None).await,
            StatusCode::CONFLICT,
        )
        .await;
    }
    assert_eq!(
        app.state.hash_pool.jobs_run(),
        before,
        "a duplicate was hashed"
    );

    // Twelve at once against two hashing threads and a queue of one: some are shed.
    let bodies: Vec<Value> = (0..12)
        .map(|index| json!({"username": format!("user{index}"), "email": format!("user{index}@lab.org"), "password": PASSWORD}))
        .collect();
    let responses = futures_util::future::join_all(
        bodies
            .iter()
            .map(|body| app.post("/api/auth/register", body, None)),
    )
    .await;
    let mut created = 0;
    let mut shed = 0;
    for response in responses {
        match response.status() {
            StatusCode::CREATED => created += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(response.headers().contains_key("retry-after"));
                shed += 1;
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert!(shed > 0 && created > 0, "{created} created, {shed} shed");
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 1 + created);

    // The per-IP budget of registrations and reset requests.
    let limited = spawn_app_with(&[("UMS_ACCOUNT_REQUESTS_PER_HOUR", "3")]).await;
    let mut statuses = Vec::new();
    for index in 0..2 {
        statuses.push(
            limited
                .post(
                    "/api/auth/register",
                    &json!({"username": format!("person{index}"), "email": format!("u{index}@lab.org"), "password": PASSWORD}),
                    None,
                )
                .await
                .status()
                .as_u16(),
        );
    }
    for _ in 0..2 {
        statuses.push(
            limited
                .post(
                    "/api/auth/forgot-password",
                    &json!({"email": "u0@lab.org"}),
                    None,
                )
                .await
                .status()
                .as_u16(),
        );
    }
    assert_eq!(statuses, [201, 201, 202, 429]);
    limited.clock.advance(std::time::Duration::from_secs(3600));
    assert_eq!(
        limited
            .post(
                "/api/auth/forgot-password",
                &json!({"email": "u0@lab.org"}),
                None,
            )
            .await
            .status(),
        StatusCode::ACCEPTED
    );
}

/// Item 12: tokens name their audience and are refused by a service of another audience.
#[tokio::test]
async fn tokens_carry_and_check_their_audience() {
    let app = spawn_app_with(&[("UMS_JWT_AUDIENCE", "lab-portal")]).await;
    let (_, tokens) = app.user("alice").await;
    let (_, claims) = crate::helpers::jwt_parts(&tokens.access);
    assert_eq!(claims["aud"], "lab-portal");
    assert_eq!(
        app.get("/api/auth/me", Some(&tokens.access)).await.status(),
        StatusCode::OK
    );
    // Same database and keys, another audience: the signature is good, the audience is not.
    let other =
        crate::helpers::spawn_second_instance_with(&app, &[("UMS_JWT_AUDIENCE", "billing")]).await;
    assert_problem(
        other.get("/api/auth/me", Some(&tokens.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

/// Item 12: tokens naming a key nobody has cost one key reload in ten seconds, not one each.
#[tokio::test]
async fn made_up_key_ids_do_not_reload_the_keys_on_every_request() {
    use base64::Engine;
    let app = spawn_app().await;
    let (_, tokens) = app.user("alice").await;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut parts = tokens.access.split('.');
    let (header, body, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut header: Value = serde_json::from_slice(&engine.decode(header).unwrap()).unwrap();
    let before = app.state.keys.unknown_kid_reloads();
    app.clock.advance(std::time::Duration::from_secs(11));
    for index in 0..20 {
        header["kid"] = json!(format!("made-up-{index}"));
        let forged = format!("{}.{body}.{signature}", engine.encode(header.to_string()));
        assert_problem(
            app.get("/api/users", Some(&forged)).await,
            StatusCode::UNAUTHORIZED,
        )
        .await;
    }
    assert_eq!(app.state.keys.unknown_kid_reloads() - before, 1);
}

/// Item 12: a production deployment without a secret key does not start.
#[test]
fn production_refuses_to_start_without_a_secret_key() {
    let directory = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ums"))
        .env_clear()
        .current_dir(directory.path())
        .env("UMS_ENV", "production")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("UMS_SECRET_KEY"), "{stderr}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ums"))
        .env_clear()
        .current_dir(directory.path())
        .env("UMS_ENV", "production")
        .env("UMS_SECRET_KEY", "a long random secret for this test")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Item 10: mail to an address nobody has proven carries no text its requester chose, and
/// names cannot carry links or direction overrides.
#[tokio::test]
async fn mail_to_an_unproven_address_carries_no_chosen_text() {
    let app = spawn_app().await;
    let problem = assert_problem(
        app.post(
            "/api/auth/register",
            &json!({"username": "team", "email": "victim@lab.org", "password": PASSWORD,
                    "first_name": "URGENT: sign in at https://evil.example/login",
                    "last_name": "\u{202E}nimda"}),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(
        problem["errors"]["first_name"].is_array() && problem["errors"]["last_name"].is_array()
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 0);

    app.post(
        "/api/auth/register",
        &json!({"username": "URGENT-call-555-0100", "email": "victim@lab.org",
                "password": PASSWORD, "first_name": "Wire the money today"}),
        None,
    )
    .await;
    let welcome = app.smtp.wait_for("victim@lab.org", "Welcome").await;
    for part in [&welcome.text, &welcome.html] {
        assert!(!part.contains("URGENT") && !part.contains("Wire"), "{part}");
    }
    assert!(welcome.text.starts_with("Hello,"), "{}", welcome.text);
    // Once the address is proven, the account's own names are used again.
    app.post(
        "/api/auth/verify-email",
        &json!({"token": welcome.token()}),
        None,
    )
    .await;
    app.post(
        "/api/auth/forgot-password",
        &json!({"email": "victim@lab.org"}),
        None,
    )
    .await;
    let reset = app
        .smtp
        .wait_for("victim@lab.org", "Reset your password")
        .await;
    assert!(
        reset.text.contains("Hello Wire the money today,"),
        "{}",
        reset.text
    );

    // A sign-in alert names the device by its user agent, which the signing-in client wrote:
    // nothing in it to follow.
    for agent in [
        "Firefox/128.0",
        "URGENT call us at https://evil.example/help",
    ] {
        let response = app
            .client
            .post(app.url("/api/auth/login"))
            .header("user-agent", agent)
            .json(&json!({"username": "victim@lab.org", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    let alert = app
        .smtp
        .wait_for("victim@lab.org", "New sign-in to your account")
        .await;
    for part in [&alert.text, &alert.html] {
        assert!(!part.contains("evil.example"), "{part}");
    }
    assert!(alert.text.contains("URGENT call us at"), "{}", alert.text);
}

/// Item 20: the document lists what the service answers (problems with their content type,
/// the export formats), and a 401 names the scheme it wants.
#[tokio::test]
async fn the_openapi_document_lists_every_answer() {
    let app = spawn_app().await;
    let document: Value = app
        .get("/api/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    let register = &document["paths"]["/api/auth/register"]["post"]["responses"];
    for status in ["201", "400", "409", "413", "415", "429", "503"] {
        assert!(register[status].is_object(), "register lacks {status}");
    }
    assert!(register["400"]["content"]["application/problem+json"].is_object());
    let me = &document["paths"]["/api/auth/me"]["get"]["responses"];
    assert!(me["401"].is_object() && me["429"].is_object());
    let export = &document["paths"]["/api/audit-logs"]["get"]["responses"]["200"]["content"];
    for content_type in [
        "application/json",
        "application/x-ndjson",
        "text/csv",
        "application/pdf",
    ] {
        assert!(
            export[content_type].is_object(),
            "export lacks {content_type}"
        );
    }
    let response = app.get("/api/auth/me", None).await;
    assert_eq!(
        response.headers()["www-authenticate"],
        "Bearer realm=\"ums\""
    );
    assert_problem(response, StatusCode::UNAUTHORIZED).await;
}

/// Item 9: an imported (Werkzeug) account cannot be told from another by the time a wrong
/// password takes: every check takes at least the slowest imported hash's time.
#[tokio::test]
async fn imported_accounts_cost_the_same_time_as_any_other() {
    let mut vars = crate::helpers::base_vars();
    let _database = crate::helpers::fresh_database(&mut vars).await;
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("users.csv");
    std::fs::write(
        &file,
        format!(
            "username,email,password_hash\nolduser,old@lab.org,pbkdf2:sha256:200000$saltsalt${}\n",
            "ab".repeat(32)
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ums"))
        .env_clear()
        .envs(&vars)
        .arg("import-users")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = spawn_app_with(&extra).await;
    app.register("alice", "alice@lab.org").await;
    let floor = app.state.verify_floor.get().as_secs_f64();
    assert!(floor > 0.0, "no floor with an imported hash stored");
    for login in ["alice", "nobody-here", "olduser"] {
        let started = std::time::Instant::now();
        let response = app.login_response(login, "wrong password").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let took = started.elapsed().as_secs_f64();
        assert!(took >= floor * 0.99, "{login}: {took} s, floor {floor} s");
    }
}

/// Rewrites the trail as someone with database access but not the secret key could: lifts
/// the append-only triggers, edits the first event and recomputes every link after it with
/// the published algorithm (plain SHA-256), down to the chain head.
async fn rewrite_the_trail(app: &TestApp, downgrade: bool) {
    crate::audit::lift_triggers(app).await;
    let mut transaction = app.state.store.begin().await.unwrap();
    let sql = format!(
        "SELECT {} FROM audit_logs ORDER BY seq",
        ums::audit::query::EVENT_COLUMNS
    );
    let rows = ums::with_db!(transaction, |db| sqlx::query_as::<
        _,
        ums::audit::query::EventRecord,
    >(&sql)
    .fetch_all(db)
    .await)
    .unwrap();
    let mut prev_hash = ums::audit::GENESIS_HASH.to_string();
    for (index, row) in rows.into_iter().enumerate() {
        let mut row = ums::audit::query::EventRow::from(row);
        if index == 0 {
            row.event.details = "{\"note\":\"nothing happened\"}".into();
        }
        let hash = row.event.chain_hash(&prev_hash);
        let details: Value = serde_json::from_str(&row.event.details).unwrap();
        ums::execute!(
            transaction,
            sqlx::query(
                "UPDATE audit_logs SET details = $1, prev_hash = $2, hash = $3 WHERE seq = $4"
            )
            .bind(sqlx::types::Json(&details))
            .bind(&prev_hash)
            .bind(&hash)
            .bind(row.event.seq)
        )
        .unwrap();
        prev_hash = hash;
    }
    let downgrade_sql = if downgrade { ", keyed_from = NULL" } else { "" };
    ums::execute!(
        transaction,
        sqlx::query(&format!(
            "UPDATE audit_chain SET last_hash = $1{downgrade_sql} WHERE id = 1"
        ))
        .bind(&prev_hash)
    )
    .unwrap();
    transaction.commit().await.unwrap();
}

/// Item 6: with a secret key the chain is an HMAC, so recomputing it after an edit needs
/// the key; and signed checkpoints kept outside the database catch even a chain rewritten
/// whole and downgraded to plain SHA-256.
#[tokio::test]
async fn the_audit_chain_cannot_be_recomputed_without_the_key() {
    let secret = ("UMS_SECRET_KEY", "a long random secret for the audit tests");
    let app = spawn_app_with(&[secret]).await;
    app.user("alice").await;
    app.user("bob").await;
    let report = ums::audit::verify::verify(&app.state.store, None)
        .await
        .unwrap();
    assert_eq!(report.finding, None);
    assert!(report.checked >= 4);
    rewrite_the_trail(&app, false).await;
    let report = ums::audit::verify::verify(&app.state.store, None)
        .await
        .unwrap();
    assert!(
        matches!(
            report.finding,
            Some(ums::audit::verify::Finding::Edited { seq: 1, .. })
        ),
        "{report:?}"
    );

    // Downgraded to an unkeyed chain, it verifies on its own, but not against the checkpoint.
    let app = spawn_app_with(&[secret]).await;
    app.user("alice").await;
    let directory = tempfile::tempdir().unwrap();
    ums::audit::checkpoint::write(&app.state.store, Some(directory.path()), app.clock.now())
        .await
        .unwrap();
    app.user("bob").await;
    assert_eq!(
        ums::audit::verify::verify(&app.state.store, Some(directory.path()))
            .await
            .unwrap()
            .finding,
        None
    );
    rewrite_the_trail(&app, true).await;
    assert_eq!(
        ums::audit::verify::verify(&app.state.store, None)
            .await
            .unwrap()
            .finding,
        None,
        "the downgraded chain is consistent in itself"
    );
    let report = ums::audit::verify::verify(&app.state.store, Some(directory.path()))
        .await
        .unwrap();
    assert!(
        matches!(
            report.finding,
            Some(ums::audit::verify::Finding::CheckpointMismatch { .. })
        ),
        "{report:?}"
    );

    // A checkpoint line edited by hand does not verify.
    let path = directory.path().join(ums::audit::checkpoint::FILE_NAME);
    let text = std::fs::read_to_string(&path).unwrap();
    let edited: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let mut forged = edited.clone();
    forged["seq"] = json!(edited["seq"].as_i64().unwrap() - 1);
    std::fs::write(&path, format!("{forged}\n")).unwrap();
    let report = ums::audit::verify::verify(&app.state.store, Some(directory.path()))
        .await
        .unwrap();
    assert_eq!(
        report.finding,
        Some(ums::audit::verify::Finding::CheckpointForged { line: 1 })
    );
}

/// Item 6: a trail written before the chain was keyed stays verifiable; keying starts at
/// the next event.
#[tokio::test]
async fn an_unkeyed_trail_is_keyed_from_the_next_event_on() {
    let app = spawn_app().await;
    app.user("alice").await;
    let before = app.scalar("SELECT seq FROM audit_chain").await;
    let mut vars: Vec<(&str, &str)> = app
        .vars
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    vars.push(("UMS_SECRET_KEY", "a long random secret for the audit tests"));
    let keyed = crate::helpers::spawn_second_instance_with(&app, &vars).await;
    assert_eq!(
        app.scalar("SELECT keyed_from FROM audit_chain").await,
        before + 1
    );
    keyed.user("bob").await;
    let report = ums::audit::verify::verify(&keyed.state.store, None)
        .await
        .unwrap();
    assert_eq!(report.finding, None);
    assert!(report.checked as i64 > before);
    // The unkeyed instance may no longer extend it.
    let config = ums::config::Config::from_lookup(|name| app.vars.get(name).cloned()).unwrap();
    assert!(
        ums::startup::Application::build(config, ums::clock::Clock::System)
            .await
            .is_err()
    );
}

/// Item 6: on PostgreSQL `serve` runs as a role that owns nothing (the README's grants), with
/// `migrate` run by the owner; that role cannot lift the trail's protections.
#[tokio::test]
async fn serve_runs_as_a_role_that_cannot_lift_the_trail_protections() {
    let Ok(admin_url) = std::env::var("UMS_TEST_POSTGRES_URL") else {
        return; // The roles are PostgreSQL's.
    };
    if admin_url.is_empty() {
        return;
    }
    let mut vars = crate::helpers::base_vars();
    let _database = crate::helpers::fresh_database(&mut vars).await;
    let owner_url = vars["UMS_DATABASE_URL"].clone();
    // The owner migrates...
    let config = ums::config::Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let store = ums::store::Store::connect(&config).await.unwrap();
    ums::store::migrate(&store).await.unwrap();
    store.close().await;
    // ...and grants the service's role what the README says.
    let role = format!(
        "ums_app_{}",
        ums::security::secrets::random_token()[..8]
            .to_lowercase()
            .replace(['-', '_'], "x")
    );
    let owner = sqlx::PgPool::connect(&owner_url).await.unwrap();
    for statement in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"),
        format!("GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {role}"),
        format!("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO {role}"),
    ] {
        sqlx::query(&statement).execute(&owner).await.unwrap();
    }
    let (base, name) = owner_url.rsplit_once('/').unwrap();
    let app_url = base.replacen("postgres@", &format!("{role}@"), 1) + "/" + name;
    let extra: Vec<(String, String)> = vars
        .iter()
        .map(|(key, value)| {
            let value = if key == "UMS_DATABASE_URL" {
                app_url.clone()
            } else {
                value.clone()
            };
            (key.clone(), value)
        })
        .collect();
    let extra: Vec<(&str, &str)> = extra
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    {
        let app = spawn_app_with(&extra).await;
        let (_, tokens) = app.user("alice").await;
        assert_eq!(
            app.get("/api/auth/me", Some(&tokens.access)).await.status(),
            StatusCode::OK
        );
        assert!(app.audit_events("auth.login").await.len() == 1);
        // Partitions are prepared through the owner's functions.
        ums::audit::archive::prepare_partitions(
            &app.state.store,
            app.clock.now() + 90 * 86_400_000,
        )
        .await
        .unwrap();
        // The service's own credentials cannot lift the protections.
        for attack in [
            "ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_append_only",
            "TRUNCATE audit_logs",
            "UPDATE audit_logs SET details = '{}'",
            "DROP TABLE audit_logs_default",
        ] {
            let mut transaction = app.state.store.begin().await.unwrap();
            let refused = ums::execute!(transaction, sqlx::query(attack));
            assert!(refused.is_err(), "the service's role could: {attack}");
        }
    }
    sqlx::query(&format!("DROP OWNED BY {role}"))
        .execute(&owner)
        .await
        .unwrap();
    owner.close().await;
    let cluster = sqlx::PgPool::connect(&admin_url).await.unwrap();
    // Connections of the role may linger a moment after the app stops.
    for _ in 0..50 {
        if sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
            .execute(&cluster)
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
