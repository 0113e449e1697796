//! `spawn_app()`: the real server on a random loopback port, on a fresh database: a temporary
//! SQLite file, or, when `UMS_TEST_POSTGRES_URL` is set, a new PostgreSQL database that is
//! dropped when the test ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};

use reqwest::{Response, StatusCode};
use serde_json::{Value, json};
use ums::clock::Clock;
use ums::config::Config;
use ums::startup::Application;
use ums::state::AppState;

use crate::smtp::SmtpSink;

pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub clock: Clock,
    pub state: AppState,
    pub smtp: SmtpSink,
    /// The configuration the app was started with (to start a second instance beside it).
    pub vars: HashMap<String, String>,
    _database: TestDatabase,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub enum TestDatabase {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    /// Another app's database, owned (and dropped) by that app.
    Borrowed,
    Postgres {
        admin_url: String,
        name: String,
    },
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let TestDatabase::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Drop runs outside any runtime guarantee: use a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    if let Ok(pool) = sqlx::PgPool::connect(&admin_url).await {
                        let _ = sqlx::query(&format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        ))
                        .execute(&pool)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

/// The variables of a test configuration: fast hashing, a random port.
pub fn base_vars() -> HashMap<String, String> {
    [
        ("UMS_BIND", "127.0.0.1:0"),
        ("UMS_PASSWORD_HASH_MEMORY_KIB", "64"),
        ("UMS_PASSWORD_HASH_ITERATIONS", "1"),
        ("UMS_PUBLIC_URL", "http://ums.test"),
        // Every test runs from 127.0.0.1 at full speed: the defences that would throttle
        // that are off here and switched on by the tests of the defences themselves.
        ("UMS_RATE_LIMIT_PER_MINUTE", "1000000"),
        ("UMS_ANON_RATE_LIMIT_PER_MINUTE", "1000000"),
        ("UMS_SESSION_RATE_PER_SECOND", "1000000"),
        ("UMS_IP_BLOCK_THRESHOLD", "1000000"),
        ("UMS_STUFFING_THRESHOLD", "1000000"),
        ("UMS_ACCOUNT_REQUESTS_PER_HOUR", "1000000"),
        ("UMS_LOGIN_DELAYS", "none"),
        // Most tests sign admins in with a password alone; the policy has its own tests.
        ("UMS_REQUIRE_MFA_FOR_ADMINS", "false"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub async fn fresh_database(vars: &mut HashMap<String, String>) -> TestDatabase {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    match std::env::var("UMS_TEST_POSTGRES_URL") {
        Ok(admin_url) if !admin_url.is_empty() => {
            let name = format!(
                "ums_test_{}_{}_{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::SeqCst),
                ums::security::secrets::random_token()[..8]
                    .to_lowercase()
                    .replace(['-', '_'], "x")
            );
            let pool = sqlx::PgPool::connect(&admin_url)
                .await
                .expect("UMS_TEST_POSTGRES_URL is set but PostgreSQL is not reachable");
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
            let base = admin_url
                .rsplit_once('/')
                .map(|(base, _)| base)
                .unwrap_or(&admin_url);
            vars.insert("UMS_DATABASE_URL".into(), format!("{base}/{name}"));
            TestDatabase::Postgres { admin_url, name }
        }
        _ => {
            let directory = tempfile::tempdir().unwrap();
            let path = directory.path().join("ums.db");
            vars.insert(
                "UMS_DATABASE_URL".into(),
                format!("sqlite://{}", path.display()),
            );
            TestDatabase::Sqlite(directory)
        }
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(&[]).await
}

/// Spawns the app with extra configuration variables, a fresh database and its own SMTP sink.
pub async fn spawn_app_with(extra: &[(&str, &str)]) -> TestApp {
    let mut vars = base_vars();
    let database = fresh_database(&mut vars).await;
    let smtp = SmtpSink::start().await;
    vars.insert(
        "UMS_SMTP_URL".into(),
        format!("smtp://127.0.0.1:{}", smtp.port),
    );
    vars.insert("UMS_MAIL_POLL_INTERVAL".into(), "50ms".into());
    for (name, value) in extra {
        vars.insert(name.to_string(), value.to_string());
    }
    launch(vars, database, smtp, Clock::manual_at(test_start())).await
}

/// The moment every test's clock starts at: `UMS_TEST_NOW` (RFC 3339) when set, so the whole
/// suite can be run on a chosen date (`.ci/run` runs it on the hard ones: month ends, leap
/// days, the last second of a year), else the current time.
pub fn test_start() -> i64 {
    match std::env::var("UMS_TEST_NOW") {
        Ok(value) if !value.is_empty() => chrono::DateTime::parse_from_rfc3339(&value)
            .unwrap_or_else(|error| panic!("UMS_TEST_NOW={value} is not RFC 3339: {error}"))
            .timestamp_millis(),
        _ => chrono::Utc::now().timestamp_millis(),
    }
}

/// A second instance on the same database and SMTP server as `app` (its own sink handle
/// receives nothing; read `app.smtp`).
pub async fn spawn_second_instance(app: &TestApp) -> TestApp {
    spawn_second_instance_with(app, &[]).await
}

/// A second instance as above, with some variables of its own.
pub async fn spawn_second_instance_with(app: &TestApp, extra: &[(&str, &str)]) -> TestApp {
    let smtp = SmtpSink::start().await;
    let mut vars = app.vars.clone();
    for (name, value) in extra {
        vars.insert(name.to_string(), value.to_string());
    }
    launch(vars, TestDatabase::Borrowed, smtp, app.clock.clone()).await
}

async fn launch(
    vars: HashMap<String, String>,
    database: TestDatabase,
    smtp: SmtpSink,
    clock: Clock,
) -> TestApp {
    let config = Config::from_lookup(|name| vars.get(name).cloned()).expect("test configuration");
    let application = Application::build(config, clock.clone())
        .await
        .expect("the app builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let state = application.state().clone();
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(application.run_until(async {
        let _ = stopped.await;
    }));
    TestApp {
        address,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap(),
        clock,
        state,
        smtp,
        vars,
        _database: database,
        shutdown: Some(shutdown),
        server: Some(server),
    }
}

/// A successful login's tokens.
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub body: Value,
}

impl TestApp {
    /// Shuts the server down gracefully and waits until it has stopped.
    pub async fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap().unwrap();
        }
    }

    /// A fresh connection to the app's database (usable after `stop`).
    pub async fn reopen_store(&self) -> ums::store::Store {
        let config = Config::from_lookup(|name| self.vars.get(name).cloned()).unwrap();
        ums::store::Store::connect(&config).await.unwrap()
    }

    /// Runs statements directly against the database, as an attacker with database access
    /// (or a test arranging rows) would.
    pub async fn execute(&self, statements: &[&str]) {
        let mut transaction = self.state.store.begin().await.unwrap();
        for sql in statements {
            ums::execute!(transaction, sqlx::raw_sql(sql)).unwrap();
        }
        transaction.commit().await.unwrap();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    pub async fn post(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut request = self.client.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.client.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn delete_with(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut request = self.client.delete(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> Response {
        let mut request = self.client.delete(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn register(&self, username: &str, email: &str) -> Value {
        let response = self
            .post(
                "/api/auth/register",
                &json!({"username": username, "email": email, "password": PASSWORD}),
                None,
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "registering {username}"
        );
        response.json().await.unwrap()
    }

    pub async fn login_response(&self, username: &str, password: &str) -> Response {
        self.post(
            "/api/auth/login",
            &json!({"username": username, "password": password}),
            None,
        )
        .await
    }

    pub async fn login(&self, username: &str) -> Tokens {
        let response = self.login_response(username, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::OK, "logging in {username}");
        let body: Value = response.json().await.unwrap();
        Tokens {
            access: body["access_token"].as_str().unwrap().to_string(),
            refresh: body["refresh_token"].as_str().unwrap().to_string(),
            body,
        }
    }

    pub async fn refresh(&self, refresh_token: &str) -> Response {
        self.post(
            "/api/auth/refresh",
            &json!({"refresh_token": refresh_token}),
            None,
        )
        .await
    }

    /// A SQL expression of the time `millis` (an expression in Unix milliseconds) in this
    /// database's own type, for rows a test writes by hand.
    pub fn time_sql(&self, millis: &str) -> String {
        match self.state.store.backend() {
            ums::store::Backend::Postgres => {
                format!("(TIMESTAMPTZ 'epoch' + ({millis}) * INTERVAL '1 millisecond')")
            }
            ums::store::Backend::Sqlite => format!("({millis})"),
        }
    }

    /// A single integer from SQL run directly against the database.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let mut connection = self.state.store.read().await.unwrap();
        ums::with_db!(connection, |db| sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(db)
            .await)
        .unwrap()
    }

    pub async fn text(&self, sql: &str) -> Option<String> {
        let mut connection = self.state.store.read().await.unwrap();
        ums::with_db!(connection, |db| sqlx::query_scalar::<_, Option<String>>(
            sql
        )
        .fetch_one(db)
        .await)
        .unwrap()
    }

    /// An IP address column (`inet` or text), as text.
    pub async fn address(&self, sql: &str) -> Option<String> {
        let mut connection = self.state.store.read().await.unwrap();
        ums::with_db!(connection, |db| sqlx::query_scalar::<
            _,
            Option<ums::store::Inet>,
        >(sql)
        .fetch_one(db)
        .await)
        .unwrap()
        .map(|address| address.to_string())
    }

    /// The audit events of one action, oldest first, as (success, user_id, resource_id, details).
    /// The events of `action`, oldest first, with their sealed personal fields opened (as the
    /// audit API shows them).
    pub async fn audit_events(&self, action: &str) -> Vec<Value> {
        let mut conditions = ums::store::Conditions::new();
        conditions.push("action = ?", ums::store::SqlValue::Text(action.to_string()));
        let mut connection = self.state.store.read().await.unwrap();
        let rows = ums::audit::query::rows_where(
            &mut connection,
            self.state.store.chain_key(),
            &conditions,
            10_000,
        )
        .await
        .unwrap();
        rows.into_iter()
            .map(|row| {
                let event = row.event;
                json!({
                    "success": event.success,
                    "user_id": event.user_id,
                    "resource_type": event.resource_type,
                    "resource_id": event.resource_id,
                    "details": serde_json::from_str::<Value>(&event.details).unwrap(),
                    "actor_ip": event.actor_ip,
                    "request_id": event.request_id,
                    "erased": row.erased,
                })
            })
            .collect()
    }
}

/// Asserts a problem+json answer of `status`, returning its body.
pub async fn assert_problem(response: Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16());
    assert!(body["type"].is_string() && body["title"].is_string() && body["detail"].is_string());
    body
}

/// Decodes a JWT's header and claims without verifying them.
pub fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine;
    let decode = |part: &str| -> Value {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(part)
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    };
    let mut parts = token.split('.');
    (decode(parts.next().unwrap()), decode(parts.next().unwrap()))
}

impl TestApp {
    pub async fn patch(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut request = self.client.patch(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    pub async fn put(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let mut request = self.client.put(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// A system admin, created the way `ums create-admin` does, and logged in.
    pub async fn admin(&self, username: &str) -> Tokens {
        let outcome = ums::users::service::ensure_admin(
            &self.state.store,
            &self.state.hasher,
            8,
            username,
            &format!("{username}@admins.org"),
            &secrecy::SecretString::from(PASSWORD.to_string()),
            self.clock.now(),
        )
        .await
        .unwrap();
        assert!(matches!(
            outcome,
            ums::users::service::AdminOutcome::Created(_)
        ));
        self.login(username).await
    }

    /// Registers and logs in a user; returns (id, tokens).
    pub async fn user(&self, username: &str) -> (i64, Tokens) {
        let user = self
            .register(username, &format!("{username}@lab.org"))
            .await;
        (user["id"].as_i64().unwrap(), self.login(username).await)
    }

    pub async fn create_lab(&self, admin_token: &str, code: &str) -> i64 {
        let response = self
            .post(
                "/api/labs",
                &json!({"code": code, "name": format!("Lab {code}")}),
                Some(admin_token),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "creating lab {code}"
        );
        let lab: Value = response.json().await.unwrap();
        lab["id"].as_i64().unwrap()
    }

    pub async fn add_member(&self, token: &str, lab_id: i64, user_id: i64, role: &str) {
        let response = self
            .post(
                &format!("/api/labs/{lab_id}/members"),
                &json!({"user_id": user_id, "role": role}),
                Some(token),
            )
            .await;
        assert_eq!(
            response.status(),
            StatusCode::CREATED,
            "adding {user_id} to {lab_id} as {role}"
        );
    }

    /// The rows a refused call must leave as they were.
    pub async fn lab_rows(&self) -> String {
        let mut connection = self.state.store.read().await.unwrap();
        let labs: Vec<(i64, String, String, String, bool)> = ums::with_db!(connection, |db| {
            sqlx::query_as("SELECT id, code, name, description, is_active FROM labs ORDER BY id")
                .fetch_all(db)
                .await
        })
        .unwrap();
        let members: Vec<(i64, i64, String)> = ums::with_db!(connection, |db| sqlx::query_as(
            "SELECT lab_id, user_id, role FROM lab_memberships ORDER BY lab_id, user_id",
        )
        .fetch_all(db)
        .await)
        .unwrap();
        let mut text = String::new();
        for (id, code, name, description, is_active) in labs {
            text += &format!("lab {id} {code} {name} {description} {is_active}\n");
        }
        for (lab_id, user_id, role) in members {
            text += &format!("member {lab_id} {user_id} {role}\n");
        }
        text
    }
}
