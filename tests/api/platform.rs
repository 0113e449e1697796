//! The service around the routes: headers, limits, health, configuration and commands.

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{
    PASSWORD, assert_problem, base_vars, fresh_database, spawn_app, spawn_app_with,
};

#[tokio::test]
async fn every_response_carries_a_request_id_and_the_security_headers() {
    let app = spawn_app().await;
    for response in [
        app.get("/health", None).await,
        app.get("/api/auth/me", None).await,
        app.get("/no/such/route", None).await,
    ] {
        let headers = response.headers();
        assert!(!headers["x-request-id"].is_empty());
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
        assert!(headers.get("server").is_none());
        assert!(
            headers.get("strict-transport-security").is_none(),
            "plain HTTP gets no HSTS"
        );
    }
    let echoed = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-123")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-123");
}

#[tokio::test]
async fn the_request_id_reaches_the_audit_event() {
    let app = spawn_app().await;
    app.client
        .post(app.url("/api/auth/register"))
        .header("x-request-id", "req-42")
        .json(&json!({"username": "alice", "email": "a@lab.org", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        app.audit_events("auth.register").await[0]["request_id"],
        "req-42"
    );
}

#[tokio::test]
async fn hsts_is_sent_when_a_trusted_proxy_says_https() {
    let app = spawn_app_with(&[("UMS_TRUSTED_PROXIES", "127.0.0.1")]).await;
    let response = app
        .client
        .get(app.url("/health"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
}

#[tokio::test]
async fn a_token_in_the_url_is_refused() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    let response = app
        .get(
            &format!("/api/auth/me?access_token={}", tokens.access),
            None,
        )
        .await;
    assert_problem(response, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn a_body_over_one_mebibyte_is_413() {
    let app = spawn_app().await;
    let big =
        json!({"username": "a".repeat(1024 * 1024), "email": "a@lab.org", "password": PASSWORD});
    let response = app.post("/api/auth/register", &big, None).await;
    assert_problem(response, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 0);
}

#[tokio::test]
async fn a_trailing_slash_reaches_the_same_route() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    assert_eq!(
        app.get("/api/auth/me/", Some(&tokens.access))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_routes_are_problem_404s() {
    let app = spawn_app().await;
    assert_problem(app.get("/api/nothing", None).await, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn health_and_ready_report_their_checks() {
    let app = spawn_app().await;
    let health = app.get("/health", None).await;
    assert_eq!(health.status(), StatusCode::OK);
    let ready = app.get("/ready", None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["migrations"], "current");
}

#[tokio::test]
async fn the_openapi_document_lists_the_auth_routes() {
    let app = spawn_app().await;
    let document: Value = app
        .get("/api/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/auth/register",
        "/api/auth/login",
        "/api/auth/refresh",
        "/api/auth/sessions/{id}",
        "/.well-known/jwks.json",
    ] {
        assert!(
            document["paths"].get(path).is_some(),
            "{path} is documented"
        );
    }
}

#[tokio::test]
async fn the_bootstrap_admin_is_created_at_start_once() {
    let app = spawn_app_with(&[
        ("UMS_BOOTSTRAP_ADMIN_USERNAME", "root"),
        ("UMS_BOOTSTRAP_ADMIN_EMAIL", "root@lab.org"),
        ("UMS_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD),
    ])
    .await;
    let tokens = app.login("root").await;
    assert_eq!(tokens.body["user"]["is_admin"], true);
    let (_, claims) = crate::helpers::jwt_parts(&tokens.access);
    assert_eq!(claims["is_admin"], true);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 1);
}

fn ums() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ums"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn a_bad_configuration_value_stops_the_start_and_names_the_variable() {
    let directory = tempfile::tempdir().unwrap();
    let output = ums()
        .current_dir(directory.path())
        .env("UMS_JWT_ALGORITHM", "HS256")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("UMS_JWT_ALGORITHM"), "{stderr}");
}

#[tokio::test]
async fn imported_werkzeug_users_log_in_and_are_rehashed_to_argon2id() {
    let mut vars = base_vars();
    let _database = fresh_database(&mut vars).await;
    let directory = tempfile::tempdir().unwrap();
    let file = directory.path().join("users.csv");
    // Made by Werkzeug 3.1.9 for "secret-password".
    std::fs::write(
        &file,
        "username,email,password_hash,first_name,last_name,is_active,is_admin\n\
         olduser,Old@Lab.org,pbkdf2:sha256:1000$VQyqSJpr$993a0057c9c86bbea6216e80f3904e3b6ef68443ba88d348c53305c44dbdc979,Old,User,1,0\n\
         scryptuser,s@lab.org,scrypt:1024:8:1$8KY5ZkoJ$5a8e53064cc9ffc3bafb08b9a0a39a328ec75a00dd0d23ceac93a61b5ceddbb5d3363851ec1a002d2f227980bbd7cc4e4fb716f18ee929bc42a9c0c7480c405d,,,,\n",
    )
    .unwrap();
    let output = ums()
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
    assert!(String::from_utf8_lossy(&output.stdout).contains("imported 2 users"));

    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut app = spawn_app_with(&extra).await;
    for login in ["olduser", "scryptuser"] {
        let before = app
            .text(&format!(
                "SELECT password_hash FROM users WHERE username = '{login}'"
            ))
            .await
            .unwrap();
        assert!(!before.starts_with("$argon2"));
        assert_eq!(
            app.login_response(login, "wrong-password").await.status(),
            StatusCode::UNAUTHORIZED
        );
        let response = app.login_response(login, "secret-password").await;
        assert_eq!(response.status(), StatusCode::OK, "{login} logs in");
        let after = app
            .text(&format!(
                "SELECT password_hash FROM users WHERE username = '{login}'"
            ))
            .await
            .unwrap();
        assert!(after.starts_with("$argon2id$"), "{login} was rehashed");
        assert_eq!(
            app.login_response(login, "secret-password").await.status(),
            StatusCode::OK
        );
    }
    // Importing again skips the existing users. The server stops first: its workers' writes
    // would otherwise contend with the command's for the SQLite file on a loaded machine.
    app.stop().await;
    let output = ums()
        .envs(&vars)
        .arg("import-users")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("skipped 2"),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn create_admin_reads_the_password_from_stdin() {
    let mut vars = base_vars();
    let _database = fresh_database(&mut vars).await;
    let mut child = ums()
        .envs(&vars)
        .args([
            "create-admin",
            "--username",
            "chief",
            "--email",
            "chief@lab.org",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let extra: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let app = spawn_app_with(&extra).await;
    assert_eq!(app.login("chief").await.body["user"]["is_admin"], true);

    let again = ums()
        .envs(&vars)
        .args([
            "create-admin",
            "--username",
            "chief",
            "--email",
            "chief@lab.org",
        ])
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert!(!again.status.success());
}

#[tokio::test]
async fn migrations_refuse_a_database_newer_than_the_binary() {
    let app = spawn_app().await;
    {
        let mut transaction = app.state.store.begin().await.unwrap();
        ums::execute!(
            transaction,
            sqlx::query(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)",
            )
        )
        .unwrap();
        transaction.commit().await.unwrap();
    }
    let error = ums::store::migrate(&app.state.store).await.unwrap_err();
    assert!(error.to_string().contains("newer"), "{error}");
    assert_eq!(
        app.get("/ready", None).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn an_existing_trail_survives_the_upgrade_to_monthly_partitions() {
    let mut vars = crate::helpers::base_vars();
    let _database = crate::helpers::fresh_database(&mut vars).await;
    let config = ums::config::Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let store = ums::store::Store::connect(&config).await.unwrap();
    ums::store::migrate_to(&store, 3).await.unwrap();
    // Events of two months, written by the schema before partitioning.
    let day = 86_400_000;
    let start = ums::audit::archive::month_start(crate::helpers::test_start()) - 40 * day;
    // Written as the code of that schema wrote them: plain SHA-256 links.
    let mut transaction = store.begin().await.unwrap();
    let mut prev_hash = ums::audit::GENESIS_HASH.to_string();
    for index in 0..50 {
        let event = ums::audit::StoredEvent {
            seq: index + 1,
            occurred_at: start + index * day,
            action: "auth.login".into(),
            success: true,
            user_id: None,
            actor_ip: None,
            user_agent: None,
            resource_type: Some("session".into()),
            resource_id: Some(format!("s{index}")),
            lab_id: None,
            details: "{}".into(),
            request_id: None,
            subject_id: None,
            sealed: None,
        };
        let hash = event.chain_hash(&prev_hash);
        // Schema 3 has BIGINT milliseconds, a 0/1 flag and the details as text.
        ums::execute!(transaction, sqlx::query(
            "INSERT INTO audit_logs (seq, occurred_at, action, success, resource_type, resource_id, details, prev_hash, hash) \
             VALUES ($1, $2, $3, 1, $4, $5, $6, $7, $8)",
        )
        .bind(event.seq)
        .bind(event.occurred_at)
        .bind(&event.action)
        .bind(&event.resource_type)
        .bind(&event.resource_id)
        .bind(&event.details)
        .bind(&prev_hash)
        .bind(&hash))
        .unwrap();
        prev_hash = hash;
    }
    ums::execute!(
        transaction,
        sqlx::query("UPDATE audit_chain SET seq = 50, last_hash = $1 WHERE id = 1")
            .bind(&prev_hash)
    )
    .unwrap();
    transaction.commit().await.unwrap();

    assert_eq!(
        ums::store::migrate(&store).await.unwrap(),
        [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]
    );
    let mut connection = store.read().await.unwrap();
    let count: i64 = ums::with_db!(connection, |db| sqlx::query_scalar(
        "SELECT COUNT(*) FROM audit_logs"
    )
    .fetch_one(db)
    .await)
    .unwrap();
    assert_eq!(count, 50);
    if store.backend() == ums::store::Backend::Postgres {
        // A partition for each month with events, for the database's current month and the
        // next (the migration prepares them), and the default partition.
        let month = |millis: i64| {
            chrono::DateTime::from_timestamp_millis(millis)
                .unwrap()
                .format("audit_logs_%Y_%m")
                .to_string()
        };
        let database_now: i64 = ums::with_db!(connection, |db| sqlx::query_scalar(
            "SELECT (extract(epoch FROM now()) * 1000)::BIGINT"
        )
        .fetch_one(db)
        .await)
        .unwrap();
        let mut expected: std::collections::BTreeSet<String> =
            (0..50).map(|index| month(start + index * day)).collect();
        expected.insert(month(database_now));
        expected.insert(month(
            ums::audit::archive::month_start(database_now) + 32 * day,
        ));
        expected.insert("audit_logs_default".into());
        let partitions: Vec<String> = ums::with_db!(connection, |db| sqlx::query_scalar(
            "SELECT child.relname::TEXT FROM pg_inherits \
             JOIN pg_class child ON child.oid = pg_inherits.inhrelid \
             WHERE pg_inherits.inhparent = 'audit_logs'::regclass",
        )
        .fetch_all(db)
        .await)
        .unwrap();
        let partitions: std::collections::BTreeSet<String> = partitions.into_iter().collect();
        assert_eq!(partitions, expected);
        let in_default: i64 = ums::with_db!(connection, |db| sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_logs_default"
        )
        .fetch_one(db)
        .await)
        .unwrap();
        assert_eq!(in_default, 0);
    }
    drop(connection);
    let report = ums::audit::verify::verify(&store, None).await.unwrap();
    assert_eq!((report.finding, report.checked), (None, 50));
    // The chain goes on where it stopped.
    let mut transaction = store.begin().await.unwrap();
    ums::audit::record(
        &mut transaction,
        store.chain_key(),
        ums::audit::Event::new(ums::audit::Action::Logout, start + 50 * day),
    )
    .await
    .unwrap();
    transaction.commit().await.unwrap();
    let report = ums::audit::verify::verify(&store, None).await.unwrap();
    assert_eq!((report.finding, report.checked), (None, 51));
    store.close().await;
}
