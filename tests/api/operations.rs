//! Operability: metrics, the OpenAPI document against the router, the embedded docs UI,
//! structured logs without secrets, graceful shutdown under load, `.env.example`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, base_vars, fresh_database, spawn_app};
use crate::smtp::SmtpSink;

/// The value of one series in a Prometheus text exposition (0 when absent).
fn series(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|line| {
            line.starts_with(name_and_labels) && line[name_and_labels.len()..].starts_with(' ')
        })
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_move_with_the_flows_that_should_move_them() {
    let app = spawn_app().await;
    let before = app.get("/metrics", None).await.text().await.unwrap();
    let (id, tokens) = app.user("alice").await;
    app.login_response("alice", "wrong password").await;
    app.refresh(&tokens.refresh).await;
    app.get("/api/auth/me", Some(&tokens.access)).await;
    app.get(&format!("/api/users/{id}"), Some(&tokens.access))
        .await;
    app.smtp.wait_for("alice@lab.org", "Welcome").await;
    // The receiver has the message a moment before the outbox settles it and counts it sent.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let response = app.get("/metrics", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = response.text().await.unwrap();
        if series(&text, r#"ums_emails_total{result="sent"}"#) >= 1.0
            || tokio::time::Instant::now() > deadline
        {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let moved = |series_name: &str| series(&after, series_name) - series(&before, series_name);
    assert_eq!(
        moved(r#"http_requests_total{method="GET",route="/api/auth/me",status="2xx"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"http_requests_total{method="POST",route="/api/auth/login",status="4xx"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"http_requests_total{method="GET",route="/api/users/{id}",status="2xx"}"#),
        1.0
    );
    assert_eq!(moved(r#"ums_logins_total{result="success"}"#), 1.0);
    assert_eq!(moved(r#"ums_logins_total{result="failure"}"#), 1.0);
    assert_eq!(moved(r#"ums_tokens_refreshed_total"#), 1.0);
    assert_eq!(moved(r#"ums_tokens_issued_total{type="access"}"#), 2.0);
    assert!(moved("ums_audit_events_total") >= 4.0);
    assert!(series(&after, r#"ums_emails_total{result="sent"}"#) >= 1.0);
    assert_eq!(series(&after, "ums_active_sessions"), 1.0);
    assert!(after.contains(r#"ums_email_outbox{status="sent"}"#));
    assert!(after.contains("http_request_duration_seconds_bucket{"));
    assert!(after.contains("ums_build_info{version="));
    assert!(after.contains("ums_db_pool_connections{"));
    // Route templates only: no series carries a raw id.
    assert!(
        !after.contains(&format!("/api/users/{id}\"")),
        "a raw path became a label"
    );
}

/// `(METHOD, path)` of every `.route(...)` call in the routers' source: the web layer's own
/// and each capability's.
fn routed() -> BTreeSet<(String, String)> {
    let source = [
        include_str!("../../src/http/mod.rs"),
        include_str!("../../src/auth/routes.rs"),
        include_str!("../../src/users/routes.rs"),
        include_str!("../../src/labs/routes.rs"),
        include_str!("../../src/audit/routes.rs"),
        include_str!("../../src/mfa/routes.rs"),
        include_str!("../../src/security/routes.rs"),
        include_str!("../../src/privacy/routes.rs"),
    ]
    .concat();
    let mut routes = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let path = chunk.split('"').nth(1).unwrap().to_string();
        let mut depth = 1;
        let call: String = chunk
            .chars()
            .take_while(|c| {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                depth > 0
            })
            .collect();
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = call.contains(&format!(" {method}("))
                || call.contains(&format!(".{method}("))
                || call.contains(&format!("::{method}("))
                || call.contains(&format!("\n{method}("));
            if called {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_route_the_router_serves_is_in_the_openapi_document() {
    let app = spawn_app().await;
    let document: Value = app
        .get("/api/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(document["openapi"], "3.1.0");
    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed = routed();
    assert!(
        routed.len() >= 35,
        "found only {} routes in the router source",
        routed.len()
    );
    let undocumented: Vec<_> = routed.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from the OpenAPI document: {undocumented:?}"
    );
    let unrouted: Vec<_> = documented.difference(&routed).collect();
    assert!(
        unrouted.is_empty(),
        "documented routes the router does not serve: {unrouted:?}"
    );
    // Every documented operation answers (not 404/405) at its path.
    for (method, path) in &documented {
        let concrete = path.replace("{id}", "1").replace("{user_id}", "1");
        let request = app
            .client
            .request(method.parse().unwrap(), app.url(&concrete));
        let status = request.send().await.unwrap().status();
        assert!(
            status != StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {status}"
        );
    }
    assert!(document["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn the_docs_ui_loads_from_the_service_alone() {
    let app = spawn_app().await;
    let page = app.get("/api/docs/", None).await;
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(csp.contains("script-src 'self'") && !csp.contains("http"));
    let html = page.text().await.unwrap();
    assert!(html.contains("swagger"));
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for piece in html.split(attribute).skip(1) {
            let target = piece.split('"').next().unwrap();
            assert!(
                !target.starts_with("http"),
                "the page loads {target} from elsewhere"
            );
            assets.push(target.trim_start_matches("./").to_string());
        }
    }
    assert!(assets.len() >= 3, "{assets:?}");
    for asset in assets {
        let response = app.get(&format!("/api/docs/{asset}"), None).await;
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        let body = response.bytes().await.unwrap();
        assert!(!body.is_empty(), "{asset}");
    }
    let initializer = app
        .get("/api/docs/swagger-initializer.js", None)
        .await
        .text()
        .await
        .unwrap();
    assert!(initializer.contains("/api/docs/openapi.json"));
    let document: Value = app
        .get("/api/docs/openapi.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert!(document["paths"]["/api/auth/login"].is_object());
}

/// A `ums serve` process with JSON logs, its stderr collected, on a random port.
struct Server {
    child: Child,
    address: String,
    log: Arc<Mutex<Vec<String>>>,
    vars: std::collections::HashMap<String, String>,
}

impl Server {
    fn start(vars: std::collections::HashMap<String, String>) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ums"))
            .env_clear()
            .envs(&vars)
            .env("UMS_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (address_sender, address_receiver) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<Value>(&line)
                    && entry["message"] == "ums listening"
                {
                    let _ = address_sender
                        .send(entry["address"].as_str().unwrap_or_default().to_string());
                }
                lines.lock().unwrap().push(line);
            }
        });
        let address = address_receiver
            .recv_timeout(Duration::from_secs(20))
            .expect("the server starts");
        Server {
            child,
            address: format!("http://{address}"),
            log,
            vars,
        }
    }

    /// Sends SIGTERM and waits (without blocking the runtime) for the process to exit.
    async fn terminate(&mut self) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        // SAFETY: signals a child process of ours that has not been reaped.
        let sent = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(sent, 0, "SIGTERM could not be sent");
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "the server did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

async fn server_with_smtp() -> (Server, SmtpSink, crate::helpers::TestDatabase) {
    let smtp = SmtpSink::start().await;
    let mut vars = base_vars();
    let database = fresh_database(&mut vars).await;
    vars.insert(
        "UMS_SMTP_URL".into(),
        format!("smtp://127.0.0.1:{}", smtp.port),
    );
    vars.insert("UMS_MAIL_POLL_INTERVAL".into(), "50ms".into());
    vars.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    (Server::start(vars), smtp, database)
}

#[tokio::test]
async fn logs_are_json_lines_and_never_carry_a_secret() {
    let (mut server, smtp, _database) = server_with_smtp().await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.address);
    let new_password = "an entirely new passphrase";
    client
        .post(url("/api/auth/register"))
        .json(&json!({"username": "alice", "email": "alice@lab.org", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let login: Value = client
        .post(url("/api/auth/login"))
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = login["access_token"].as_str().unwrap().to_string();
    let refresh = login["refresh_token"].as_str().unwrap().to_string();
    let refreshed: Value = client
        .post(url("/api/auth/refresh"))
        .json(&json!({"refresh_token": refresh}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    client
        .get(url("/api/auth/me"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    client
        .post(url("/api/auth/login"))
        .json(&json!({"username": "alice", "password": "a wrong password"}))
        .send()
        .await
        .unwrap();
    client
        .post(url("/api/auth/forgot-password"))
        .json(&json!({"email": "alice@lab.org"}))
        .send()
        .await
        .unwrap();
    let reset = smtp.wait_for("alice@lab.org", "Reset your password").await;
    let response = client
        .post(url("/api/auth/reset-password"))
        .json(&json!({"token": reset.token(), "new_password": new_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let verify_token = smtp.wait_for("alice@lab.org", "Welcome").await.token();
    let (status, _) = server.terminate().await;
    assert!(status.success());

    let log = server.log.lock().unwrap().clone();
    assert!(log.len() > 8);
    let secrets = [
        PASSWORD.to_string(),
        new_password.to_string(),
        access.clone(),
        refresh.clone(),
        refreshed["access_token"].as_str().unwrap().to_string(),
        reset.token(),
        verify_token,
        "$argon2".to_string(),
        "token=".to_string(),
    ];
    let mut access_lines = 0;
    let mut with_user = 0;
    for line in &log {
        let entry: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not a JSON line: {line}"));
        for secret in &secrets {
            assert!(
                !line.contains(secret.as_str()),
                "a secret reached the log: {line}"
            );
        }
        if entry["target"] == "ums::access" {
            access_lines += 1;
            for field in ["request_id", "method", "route", "status", "latency_ms"] {
                assert!(
                    entry.get(field).is_some(),
                    "access line lacks {field}: {line}"
                );
            }
            if entry["user_id"].is_number() {
                with_user += 1;
            }
        }
    }
    assert!(access_lines >= 7, "{access_lines} access lines");
    assert!(with_user >= 1, "no access line named its user");
    let _ = &server.vars;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_no_accepted_request_event_or_email() {
    let (mut server, _smtp, _database) = server_with_smtp().await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let outcomes: Arc<Mutex<BTreeMap<String, u16>>> = Arc::default();
    let mut workers = Vec::new();
    for worker in 0..8 {
        let client = client.clone();
        let outcomes = outcomes.clone();
        let base = server.address.clone();
        workers.push(tokio::spawn(async move {
            for index in 0..1000 {
                let name = format!("load{worker}x{index}");
                let request = client
                    .post(format!("{base}/api/auth/register"))
                    .json(&json!({"username": name, "email": format!("{name}@lab.org"), "password": PASSWORD}))
                    .send()
                    .await;
                match request {
                    Ok(response) => {
                        outcomes.lock().unwrap().insert(name, response.status().as_u16());
                    }
                    // Refused once the server stopped accepting: never accepted, so not a failure.
                    Err(_) => break,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, took) = server.terminate().await;
    for worker in workers {
        worker.await.unwrap();
    }
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    let outcomes = outcomes.lock().unwrap().clone();
    let created: Vec<_> = outcomes
        .iter()
        .filter(|(_, status)| **status == 201)
        .map(|(name, _)| name.clone())
        .collect();
    let failed: Vec<_> = outcomes
        .iter()
        .filter(|(_, status)| **status != 201)
        .collect();
    assert!(failed.is_empty(), "accepted requests failed: {failed:?}");
    assert!(
        created.len() >= 5,
        "only {} registrations before the signal",
        created.len()
    );

    let config = ums::config::Config::from_lookup(|name| server.vars.get(name).cloned()).unwrap();
    let store = ums::store::Store::connect(&config).await.unwrap();
    let count = |sql: &'static str| {
        let store = store.clone();
        async move {
            let mut connection = store.read().await.unwrap();
            let (n,): (i64,) =
                ums::with_db!(connection, |db| sqlx::query_as(sql).fetch_one(db).await).unwrap();
            n
        }
    };
    assert_eq!(
        count("SELECT COUNT(*) FROM users").await,
        created.len() as i64
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM audit_logs WHERE action = 'auth.register'").await,
        created.len() as i64
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM email_outbox WHERE kind = 'welcome'").await,
        created.len() as i64
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM email_outbox WHERE status = 'sending'").await,
        0,
        "a claimed email was not handed back"
    );
}

#[test]
fn the_env_example_lists_every_variable() {
    let example = include_str!("../../.env.example");
    let config = include_str!("../../src/config.rs");
    let mut missing = Vec::new();
    for piece in config.split("\"UMS_").skip(1) {
        let name = format!("UMS_{}", piece.split('"').next().unwrap());
        if !example.contains(&format!("{name}=")) && !missing.contains(&name) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), ".env.example lacks {missing:?}");
}

/// Security review, item 19: a 5xx is one log line with its cause chain and its request id,
/// not a backtrace of several kilobytes, even with RUST_BACKTRACE set.
#[tokio::test]
async fn a_failure_is_logged_as_one_line_with_its_cause_and_request_id() {
    let mut vars = crate::helpers::base_vars();
    let _database = crate::helpers::fresh_database(&mut vars).await;
    vars.insert("PATH".into(), std::env::var("PATH").unwrap_or_default());
    vars.insert("RUST_BACKTRACE".into(), "1".into());
    let mut server = Server::start(vars);
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.address);
    client
        .post(url("/api/auth/register"))
        .json(&json!({"username": "alice", "email": "alice@lab.org", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    let login: Value = client
        .post(url("/api/auth/login"))
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Break the database under the running service.
    let config = ums::config::Config::from_lookup(|name| server.vars.get(name).cloned()).unwrap();
    let store = ums::store::Store::connect(&config).await.unwrap();
    let mut transaction = store.begin().await.unwrap();
    ums::execute!(transaction, sqlx::query("DROP TABLE lab_memberships")).unwrap();
    transaction.commit().await.unwrap();
    store.close().await;
    let response = client
        .get(url("/api/auth/me"))
        .bearer_auth(login["access_token"].as_str().unwrap())
        .header("x-request-id", "failing-request-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body = response.text().await.unwrap();
    assert!(!body.contains("lab_memberships"), "{body}");
    server.terminate().await;
    let log = server.log.lock().unwrap().clone();
    let failures: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("request failed"))
        .collect();
    assert_eq!(failures.len(), 1, "{log:#?}");
    let line = failures[0];
    let entry: Value = serde_json::from_str(line).expect("one JSON line");
    assert_eq!(entry["span"]["request_id"], "failing-request-1", "{line}");
    assert!(
        entry["error"].as_str().unwrap().contains("lab_memberships"),
        "{line}"
    );
    assert!(line.len() < 1500, "{} bytes: {line}", line.len());
    assert!(
        !line.contains("backtrace") && !line.contains(".rs:"),
        "{line}"
    );
}

/// A request refused before its body is read leaves a connection that cannot carry another
/// request: the answer says `Connection: close`, so a keep-alive client does not send its
/// next request into a closing socket (seen from httpx as a dropped connection).
#[tokio::test]
async fn a_refusal_before_the_body_is_read_closes_the_connection_openly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let (_, tokens) = app.user("alice").await;
    let address = app
        .url("/")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let body = r#"{"name": "x"}"#;
    let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
    let request = format!(
        "PATCH /api/labs/1 HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        tokens.access,
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&response).contains("\r\n\r\n") {
        let read = stream.read(&mut buffer).await.unwrap();
        assert!(read > 0, "the server closed without an answer");
        response.extend_from_slice(&buffer[..read]);
    }
    let head = String::from_utf8_lossy(&response).to_lowercase();
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    // A read body keeps the connection: a 200 answer says nothing of closing.
    let ok = app.get("/api/auth/me", Some(&tokens.access)).await;
    assert!(ok.headers().get("connection").is_none());
}

/// Large answers are compressed for clients that accept it; small ones, and any that carries
/// a secret (`Cache-Control: no-store`), are not.
#[tokio::test]
async fn large_answers_are_compressed_and_secrets_never_are() {
    use std::io::Read;
    let app = spawn_app().await;
    let plain = app.get("/api/openapi.json", None).await;
    assert!(plain.headers().get("content-encoding").is_none());
    let plain = plain.bytes().await.unwrap();
    assert!(plain.len() > 1024);

    let gzipped = app
        .client
        .get(app.url("/api/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.status(), StatusCode::OK);
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    let compressed = gzipped.bytes().await.unwrap();
    assert!(
        compressed.len() * 3 < plain.len(),
        "{} of {}",
        compressed.len(),
        plain.len()
    );
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(&compressed[..])
        .read_to_end(&mut inflated)
        .unwrap();
    assert_eq!(inflated, plain);

    let brotli = app
        .client
        .get(app.url("/api/openapi.json"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(brotli.headers()["content-encoding"], "br");

    // A token answer, however long, goes out as it is.
    let (_, _) = app.user("alice").await;
    let login = app
        .client
        .post(app.url("/api/auth/login"))
        .header("accept-encoding", "gzip, br")
        .json(&json!({"username": "alice", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(login.headers()["cache-control"], "no-store");
    assert!(login.headers().get("content-encoding").is_none());
    let bytes = login.bytes().await.unwrap();
    assert!(
        bytes.len() > 1024,
        "large enough to be compressed but for its secret"
    );
    let body: Value = serde_json::from_slice(&bytes).unwrap();
    assert!(body["access_token"].is_string());
    // Nor a small one.
    let health = app
        .client
        .get(app.url("/health"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(health.headers().get("content-encoding").is_none());
}
