//! The store in each database's own types: a schema-4 database upgrades in place, and the
//! database itself refuses what the service would never write.

use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};
use ums::store::Backend;

use crate::helpers::{PASSWORD, TestApp, base_vars, fresh_database, spawn_app, spawn_app_with};

const DAY: i64 = 86_400_000;

fn ums_command(vars: &std::collections::HashMap<String, String>, args: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ums"))
        .env_clear()
        .envs(vars)
        .args(args)
        .output()
        .unwrap();
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// Rows as the schema-4 service wrote them: BIGINT milliseconds, 0/1 flags, details and
/// addresses as text, a plain SHA-256 chain over two months.
async fn write_schema_4_rows(store: &ums::store::Store, start: i64) -> Vec<String> {
    let hasher = ums::auth::password::PasswordHasherConfig::new(ums::config::HashCost {
        memory_kib: 64,
        iterations: 1,
    })
    .unwrap();
    let hash = hasher
        .hash(&secrecy::SecretString::from(PASSWORD.to_string()))
        .unwrap();
    let mut transaction = store.begin().await.unwrap();
    let statements = [
        format!(
            "INSERT INTO users (username, email, password_hash, first_name, is_active, is_admin, \
             email_verified, created_at, updated_at, password_changed_at) \
             VALUES ('Alice', 'alice@lab.org', '{hash}', 'Alice', 1, 1, 1, {start}, {start}, {start})"
        ),
        format!(
            "INSERT INTO users (username, email, password_hash, is_active, failed_login_count, \
             locked_until, created_at, updated_at) \
             VALUES ('bob', 'bob@lab.org', '{hash}', 0, 5, {locked}, {start}, {start})",
            locked = start + 400 * DAY
        ),
        format!(
            "INSERT INTO labs (code, name, description, is_active, created_at, updated_at) \
             VALUES ('GEN', 'Genomics', 'sequencing', 1, {start}, {start})"
        ),
        format!(
            "INSERT INTO lab_memberships (user_id, lab_id, role, created_at, updated_at) \
             VALUES (1, 1, 'lab_admin', {start}, {start}), (2, 1, 'viewer', {start}, {start})"
        ),
        format!(
            "INSERT INTO sessions (id, user_id, ip, user_agent, created_at, last_used_at, expires_at) \
             VALUES ('s-old', 1, '2001:db8::7', 'curl/8', {start}, {start}, {end})",
            end = start + 2 * DAY
        ),
        format!(
            "INSERT INTO login_attempts (username, ip, user_agent, success, attempted_at) \
             VALUES ('alice', '10.0.0.7', 'curl/8', 1, {start}), ('bob', '10.0.0.8', NULL, 0, {start})"
        ),
        format!(
            "INSERT INTO email_outbox (kind, recipient, subject, body, status, attempts, next_attempt_at, \
             created_at, sent_at) VALUES ('welcome', 'alice@lab.org', 'Welcome', NULL, 'sent', 1, \
             {start}, {start}, {start})"
        ),
    ];
    for sql in &statements {
        ums::execute!(transaction, sqlx::query(sql)).unwrap();
    }
    let mut prev_hash = ums::audit::GENESIS_HASH.to_string();
    let mut hashes = Vec::new();
    for index in 0..40 {
        let details = json!({
            "username": "alice",
            "changes": ["email", "first_name"],
            "count": index,
            "nested": {"b": true, "a": null},
        })
        .to_string();
        let event = ums::audit::StoredEvent {
            seq: index + 1,
            occurred_at: start + index * DAY + 123,
            action: "user.updated".into(),
            success: index % 3 != 0,
            user_id: Some(1),
            actor_ip: Some(
                if index % 2 == 0 {
                    "10.0.0.7"
                } else {
                    "2001:db8::7"
                }
                .into(),
            ),
            user_agent: Some("curl/8".into()),
            resource_type: Some("user".into()),
            resource_id: Some("1".into()),
            lab_id: (index % 5 == 0).then_some(1),
            details,
            request_id: Some(format!("r{index}")),
            subject_id: None,
            sealed: None,
        };
        let hash = event.chain_hash(&prev_hash);
        ums::execute!(
            transaction,
            sqlx::query(
                "INSERT INTO audit_logs (seq, occurred_at, action, success, user_id, actor_ip, \
                 user_agent, resource_type, resource_id, lab_id, details, request_id, prev_hash, hash) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(event.seq)
            .bind(event.occurred_at)
            .bind(&event.action)
            .bind(i64::from(event.success))
            .bind(event.user_id)
            .bind(&event.actor_ip)
            .bind(&event.user_agent)
            .bind(&event.resource_type)
            .bind(&event.resource_id)
            .bind(event.lab_id)
            .bind(&event.details)
            .bind(&event.request_id)
            .bind(&prev_hash)
            .bind(&hash)
        )
        .unwrap();
        hashes.push(hash.clone());
        prev_hash = hash;
    }
    ums::execute!(
        transaction,
        sqlx::query("UPDATE audit_chain SET seq = 40, last_hash = $1 WHERE id = 1")
            .bind(&prev_hash)
    )
    .unwrap();
    transaction.commit().await.unwrap();
    hashes
}

#[tokio::test]
async fn a_schema_4_database_upgrades_in_place_with_its_data_and_its_trail() {
    let mut vars = base_vars();
    let database = fresh_database(&mut vars).await;
    let config = ums::config::Config::from_lookup(|name| vars.get(name).cloned()).unwrap();
    let store = ums::store::Store::connect(&config).await.unwrap();
    ums::store::migrate_to(&store, 4).await.unwrap();
    let start = ums::audit::archive::month_start(crate::helpers::test_start()) - 30 * DAY;
    let hashes = write_schema_4_rows(&store, start).await;
    store.close().await;

    let (ok, output) = ums_command(&vars, &["migrate"]);
    assert!(ok, "{output}");
    let (ok, output) = ums_command(&vars, &["audit", "verify"]);
    assert!(ok && output.contains("intact"), "{output}");
    let (ok, output) = ums_command(&vars, &["migrate"]);
    assert!(ok, "a second run changes nothing: {output}");

    let url = vars["UMS_DATABASE_URL"].clone();
    let app = spawn_app_with(&[("UMS_DATABASE_URL", url.as_str())]).await;
    assert_eq!(
        app.scalar("SELECT MAX(version) FROM schema_migrations")
            .await,
        ums::store::SCHEMA_VERSION
    );
    // Every event is kept, in the database's own types now, with its personal fields (the
    // address, the browser, the name in its details) sealed under Alice's key: the chain was
    // re-linked over the sealed forms, once.
    let mut connection = app.state.store.read().await.unwrap();
    type Row = (
        String,
        Option<ums::store::Inet>,
        Option<String>,
        sqlx::types::Json<Value>,
        Option<sqlx::types::Json<Value>>,
    );
    let stored: Vec<Row> = ums::with_db!(connection, |db| sqlx::query_as(
        "SELECT hash, actor_ip, user_agent, details, sealed FROM audit_logs ORDER BY seq"
    )
    .fetch_all(db)
    .await)
    .unwrap();
    drop(connection);
    assert_eq!(stored.len(), 40);
    assert!(stored.iter().zip(&hashes).all(|(row, old)| &row.0 != old));
    assert!(stored.iter().all(|row| row.1.is_none() && row.2.is_none()));
    assert!(stored.iter().all(|row| {
        row.3.0.get("username").is_none()
            && row
                .4
                .as_ref()
                .is_some_and(|sealed| sealed.0.get("actor").is_some())
    }));
    assert_eq!(stored[3].3.0["nested"], json!({"a": null, "b": true}));
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM audit_person_keys WHERE user_id = 1")
            .await,
        1
    );

    // The accounts sign in as before, by either spelling of the name.
    let response = app.login_response("alice", PASSWORD).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["user"]["username"], "Alice");
    assert_eq!(
        body["user"]["created_at"],
        ums::clock::to_rfc3339(start),
        "times keep their millisecond"
    );
    assert_eq!(body["user"]["labs"][0]["code"], "GEN");
    assert_eq!(body["user"]["labs"][0]["role"], "lab_admin");
    let token = body["access_token"].as_str().unwrap().to_string();
    let bob: Value = app
        .get("/api/users/2", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&bob["is_active"], &bob["is_locked"]),
        (&json!(false), &json!(true))
    );
    let events: Value = app
        .get("/api/audit-logs?ip=2001:db8::7&per_page=100", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events["total"], 20, "{events}");
    // Shown opened, as they were written.
    let shown = &events["items"][0];
    assert_eq!(shown["actor_ip"], "2001:db8::7");
    assert_eq!(shown["user_agent"], "curl/8");
    assert_eq!(shown["details"]["username"], "alice");
    assert_eq!(shown["details"]["nested"], json!({"a": null, "b": true}));
    assert_eq!(shown["erased"], false);
    let attempts: Value = app
        .get("/api/security/login-attempts?ip=10.0.0.8", Some(&token))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(attempts["items"][0]["username"], "bob", "{attempts}");
    assert_eq!(attempts["items"][0]["success"], false);

    // The trail goes on from where it stopped, and still verifies whole.
    app.user("carol").await;
    let report = ums::audit::verify::verify(&app.state.store, None)
        .await
        .unwrap();
    assert_eq!(report.finding, None);
    assert!(report.checked > 40);
    if app.state.store.backend() == Backend::Postgres {
        let in_default = app.scalar("SELECT COUNT(*) FROM audit_logs_default").await;
        assert_eq!(in_default, 0, "the events' months kept their partitions");
    }
    drop(database);
}

/// Statements that write what the service never would; each must be refused by the
/// database itself and change nothing.
const FORBIDDEN: &[&str] = &[
    "UPDATE lab_memberships SET role = 'owner'",
    "UPDATE users SET is_admin = 2",
    "UPDATE labs SET is_active = 7",
    "UPDATE users SET failed_login_count = -1",
    "UPDATE email_outbox SET status = 'lost'",
    "INSERT INTO users (username, email, password_hash, created_at, updated_at) \
     SELECT 'ALICE', 'other@lab.org', password_hash, created_at, updated_at FROM users WHERE id = 1",
    "INSERT INTO users (username, email, password_hash, created_at, updated_at) \
     SELECT 'other', 'ALICE@LAB.ORG', password_hash, created_at, updated_at FROM users WHERE id = 1",
    "INSERT INTO labs (code, name, created_at, updated_at) \
     SELECT 'gen', 'copy', created_at, updated_at FROM labs",
    "INSERT INTO audit_logs (seq, occurred_at, action, success, details, prev_hash, hash) \
     SELECT 999, occurred_at, 'x', success, '[1]', 'p', 'h' FROM audit_logs WHERE seq = 1",
    "UPDATE audit_chain SET id = 2",
    // The one rewrite of the trail (sealing the events of before) is done and cannot recur.
    "UPDATE audit_chain SET rewriting = TRUE",
    "UPDATE audit_chain SET resealed = FALSE",
    "UPDATE sessions SET revoked_reason = 'logout'",
];

async fn snapshot(app: &TestApp) -> Vec<i64> {
    let mut counts = Vec::new();
    for sql in [
        "SELECT COUNT(*) FROM users",
        "SELECT COUNT(*) FROM users WHERE is_admin",
        "SELECT COUNT(*) FROM labs",
        "SELECT COUNT(*) FROM lab_memberships WHERE role = 'member'",
        "SELECT COUNT(*) FROM audit_logs",
        "SELECT COUNT(*) FROM email_outbox",
        "SELECT COUNT(*) FROM users WHERE failed_login_count >= 0",
        "SELECT COUNT(*) FROM sessions WHERE revoked_reason IS NULL",
    ] {
        counts.push(app.scalar(sql).await);
    }
    counts
}

#[tokio::test]
async fn the_database_refuses_a_bad_role_flag_state_or_duplicate_written_by_hand() {
    let app = spawn_app().await;
    let (alice, _) = app.user("alice").await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    app.add_member(&admin.access, lab, alice, "member").await;
    let before = snapshot(&app).await;
    assert!(before.iter().all(|count| *count > 0), "{before:?}");
    for sql in FORBIDDEN {
        let mut transaction = app.state.store.begin().await.unwrap();
        let outcome = ums::execute!(transaction, sqlx::query(sql));
        assert!(outcome.is_err(), "the database took: {sql}");
    }
    assert_eq!(snapshot(&app).await, before);
}

#[tokio::test]
async fn postgresql_columns_carry_native_types() {
    let app = spawn_app().await;
    if app.state.store.backend() != Backend::Postgres {
        eprintln!("SKIPPED: PostgreSQL types (UMS_TEST_POSTGRES_URL is not set)");
        return;
    }
    let mut connection = app.state.store.read().await.unwrap();
    let columns: Vec<(String, String, String)> = ums::with_db!(connection, |db| sqlx::query_as(
        "SELECT table_name::TEXT, column_name::TEXT, udt_name::TEXT FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name NOT LIKE 'audit_logs_%'"
    )
    .fetch_all(db)
    .await)
    .unwrap();
    drop(connection);
    let type_of = |table: &str, column: &str| {
        columns
            .iter()
            .find(|(t, c, _)| t == table && c == column)
            .map(|(_, _, udt)| udt.as_str())
            .unwrap_or_else(|| panic!("no column {table}.{column}"))
    };
    for (table, column, expected) in [
        ("users", "username", "citext"),
        ("users", "email", "citext"),
        ("users", "is_admin", "bool"),
        ("users", "locked_until", "timestamptz"),
        ("users", "created_at", "timestamptz"),
        ("labs", "code", "citext"),
        ("labs", "is_active", "bool"),
        ("lab_memberships", "created_at", "timestamptz"),
        ("sessions", "ip", "inet"),
        ("sessions", "expires_at", "timestamptz"),
        ("refresh_tokens", "spent_at", "timestamptz"),
        ("login_attempts", "ip", "inet"),
        ("login_attempts", "success", "bool"),
        ("audit_logs", "occurred_at", "timestamptz"),
        ("audit_logs", "details", "jsonb"),
        ("audit_logs", "actor_ip", "inet"),
        ("audit_logs", "success", "bool"),
        ("audit_logs", "sealed", "jsonb"),
        ("audit_person_keys", "wrapped_key", "bytea"),
        ("audit_ip_index", "tag", "bytea"),
        ("users", "erase_after", "timestamptz"),
        ("email_outbox", "next_attempt_at", "timestamptz"),
        ("signing_keys", "created_at", "timestamptz"),
    ] {
        assert_eq!(type_of(table, column), expected, "{table}.{column}");
    }
    // No column is left holding a time as a number of milliseconds.
    let numeric_times: Vec<_> = columns
        .iter()
        .filter(|(table, column, udt)| {
            table != "schema_migrations"
                && (column.ends_with("_at") || column.ends_with("_until"))
                && udt != "timestamptz"
        })
        .collect();
    assert!(numeric_times.is_empty(), "{numeric_times:?}");
    // The details and the sealed envelopes are queryable with the JSON operators (bob's name
    // is in his envelope, not in the details).
    let (bob, _) = app.user("bob").await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM audit_logs WHERE user_id = {bob} AND action = 'auth.register' \
             AND details ? 'consent' AND NOT details ? 'username' AND sealed ? 'actor'"
        ))
        .await,
        1,
        "bob's registration"
    );
}
