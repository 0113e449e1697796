//! The audit trail: one event per action, tamper evidence, queries, exports, retention.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use ums::audit::verify::{Finding, verify};
use ums::store::Backend;

use crate::helpers::{PASSWORD, TestApp, assert_problem, spawn_app};

/// Several users registering and logging in: a trail of a dozen events.
const DAY_MS: i64 = 86_400_000;

async fn busy_app() -> TestApp {
    let app = spawn_app().await;
    for name in ["alice", "bob", "carol", "dave"] {
        app.register(name, &format!("{name}@lab.org")).await;
        app.login(name).await;
        app.login_response(name, "wrong password").await;
    }
    app
}

/// Waits for `child` and reads its peak resident memory (KiB) from the kernel's account of
/// it, as `/usr/bin/time` would, without needing that program.
fn wait_with_peak_memory(child: std::process::Child) -> (std::process::ExitStatus, i64) {
    use std::os::unix::process::ExitStatusExt;
    let mut status = 0;
    // SAFETY: `usage` is plain data the kernel fills in; `child` is ours and not yet waited for.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let waited = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(waited, child.id() as libc::pid_t, "wait4 failed");
    (std::process::ExitStatus::from_raw(status), usage.ru_maxrss)
}

/// The name of the PostgreSQL partition holding the events of `millis`'s month.
fn partition_of(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .unwrap()
        .format("audit_logs_%Y_%m")
        .to_string()
}

/// The first millisecond of a partition's month (`audit_logs_YYYY_MM`).
fn partition_month_start(name: &str) -> i64 {
    let date = chrono::NaiveDate::parse_from_str(
        &format!("{}_01", name.trim_start_matches("audit_logs_")),
        "%Y_%m_%d",
    )
    .unwrap();
    date.and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

/// Lifts the append-only triggers, as someone with raw database access could.
pub(crate) async fn lift_triggers(app: &TestApp) {
    match app.state.store.backend() {
        Backend::Sqlite => {
            app.execute(&[
                "DROP TRIGGER audit_logs_no_update",
                "DROP TRIGGER audit_logs_no_delete",
            ])
            .await
        }
        Backend::Postgres => {
            app.execute(&["ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_append_only"])
                .await
        }
    }
}

/// Runs `ums audit verify` against the app's database: (success, stdout).
fn verify_command(app: &TestApp, extra: &[&str]) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ums"))
        .env_clear()
        .envs(&app.vars)
        .args(["audit", "verify"])
        .args(extra)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
    )
}

#[tokio::test]
async fn an_untouched_trail_verifies() {
    let app = busy_app().await;
    let report = verify(&app.state.store, None).await.unwrap();
    assert_eq!(report.finding, None);
    assert_eq!(
        report.checked as i64,
        app.scalar("SELECT COUNT(*) FROM audit_logs").await
    );
    let (ok, stdout) = verify_command(&app, &[]);
    assert!(ok, "{stdout}");
    assert!(stdout.contains("intact"));
}

#[tokio::test]
async fn the_database_refuses_to_update_or_delete_events() {
    let app = busy_app().await;
    let mut transaction = app.state.store.begin().await.unwrap();
    let update = ums::execute!(
        transaction,
        sqlx::query("UPDATE audit_logs SET details = '{}' WHERE seq = 2")
    );
    assert!(update.is_err(), "UPDATE was allowed");
    drop(transaction);
    let mut transaction = app.state.store.begin().await.unwrap();
    let delete = ums::execute!(
        transaction,
        sqlx::query("DELETE FROM audit_logs WHERE seq = 2")
    );
    assert!(delete.is_err(), "DELETE was allowed");
    drop(transaction);
    if app.state.store.backend() == Backend::Postgres {
        let partition = app
            .text("SELECT tableoid::regclass::text FROM audit_logs WHERE seq = 2")
            .await
            .unwrap();
        assert!(partition.starts_with("audit_logs_20"), "{partition}");
        for table in ["audit_logs", partition.as_str(), "audit_logs_default"] {
            let mut transaction = app.state.store.begin().await.unwrap();
            let truncate = ums::execute!(transaction, sqlx::query(&format!("TRUNCATE {table}")));
            assert!(truncate.is_err(), "TRUNCATE {table} was allowed");
        }
        let mut transaction = app.state.store.begin().await.unwrap();
        let update = ums::execute!(
            transaction,
            sqlx::query(&format!("UPDATE {partition} SET action = 'x'"))
        );
        assert!(update.is_err(), "UPDATE of {partition} was allowed");
    }
    assert_eq!(verify(&app.state.store, None).await.unwrap().finding, None);
}

#[tokio::test]
async fn an_edited_event_is_named() {
    let app = busy_app().await;
    lift_triggers(&app).await;
    app.execute(&["UPDATE audit_logs SET details = '{\"username\":\"mallory\"}' WHERE seq = 5"])
        .await;
    let id = app.scalar("SELECT id FROM audit_logs WHERE seq = 5").await;
    let report = verify(&app.state.store, None).await.unwrap();
    assert_eq!(report.finding, Some(Finding::Edited { seq: 5, id }));
    assert_eq!(report.checked, 4);
    let (ok, stdout) = verify_command(&app, &[]);
    assert!(!ok);
    assert!(
        stdout.contains("event seq 5") && stdout.contains("edited"),
        "{stdout}"
    );
}

#[tokio::test]
async fn a_deleted_event_is_named() {
    let app = busy_app().await;
    lift_triggers(&app).await;
    let next_id = app.scalar("SELECT id FROM audit_logs WHERE seq = 7").await;
    app.execute(&["DELETE FROM audit_logs WHERE seq = 6"]).await;
    let report = verify(&app.state.store, None).await.unwrap();
    assert_eq!(
        report.finding,
        Some(Finding::Deleted {
            from: 6,
            to: 6,
            next_id: Some(next_id)
        })
    );
    let (ok, stdout) = verify_command(&app, &[]);
    assert!(!ok && stdout.contains("seq 6..=6 were deleted"), "{stdout}");
}

#[tokio::test]
async fn events_cut_from_the_end_are_noticed() {
    let app = busy_app().await;
    lift_triggers(&app).await;
    let last = app.scalar("SELECT MAX(seq) FROM audit_logs").await;
    app.execute(&[&format!("DELETE FROM audit_logs WHERE seq >= {}", last - 1)])
        .await;
    let report = verify(&app.state.store, None).await.unwrap();
    assert_eq!(
        report.finding,
        Some(Finding::Deleted {
            from: last - 1,
            to: last,
            next_id: None
        })
    );
}

#[tokio::test]
async fn swapped_events_are_named() {
    let app = busy_app().await;
    lift_triggers(&app).await;
    app.execute(&[
        "UPDATE audit_logs SET seq = -3 WHERE seq = 3",
        "UPDATE audit_logs SET seq = 3 WHERE seq = 4",
        "UPDATE audit_logs SET seq = 4 WHERE seq = -3",
    ])
    .await;
    let id = app.scalar("SELECT id FROM audit_logs WHERE seq = 3").await;
    let report = verify(&app.state.store, None).await.unwrap();
    assert_eq!(
        report.finding,
        Some(Finding::InsertedOrReordered { seq: 3, id })
    );
    let (ok, stdout) = verify_command(&app, &[]);
    assert!(!ok && stdout.contains("inserted or reordered"), "{stdout}");
}

#[tokio::test]
async fn an_inserted_event_is_named() {
    let app = busy_app().await;
    lift_triggers(&app).await;
    // Make room after seq 2 and slip in a forged event with a self-consistent hash.
    let last = app.scalar("SELECT MAX(seq) FROM audit_logs").await;
    for seq in (3..=last).rev() {
        app.execute(&[&format!(
            "UPDATE audit_logs SET seq = {} WHERE seq = {seq}",
            seq + 1
        )])
        .await;
    }
    let prev = app
        .text("SELECT hash FROM audit_logs WHERE seq = 2")
        .await
        .unwrap();
    let forged = ums::audit::StoredEvent {
        seq: 3,
        occurred_at: 1,
        action: "user.updated".into(),
        success: true,
        user_id: Some(1),
        actor_ip: None,
        user_agent: None,
        resource_type: Some("user".into()),
        resource_id: Some("1".into()),
        lab_id: None,
        details: "{}".into(),
        request_id: None,
        subject_id: None,
        sealed: None,
    };
    let hash = forged.chain_hash(&prev);
    app.execute(&[&format!(
        "INSERT INTO audit_logs (seq, occurred_at, action, success, user_id, resource_type, resource_id, details, prev_hash, hash) \
         VALUES (3, {}, 'user.updated', TRUE, 1, 'user', '1', '{{}}', '{prev}', '{hash}')",
        app.time_sql("1")
    )])
    .await;
    let id = app.scalar("SELECT id FROM audit_logs WHERE seq = 4").await;
    let report = verify(&app.state.store, None).await.unwrap();
    assert_eq!(
        report.finding,
        Some(Finding::InsertedOrReordered { seq: 4, id })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_leave_an_intact_chain() {
    let app = std::sync::Arc::new(spawn_app().await);
    for index in 0..5 {
        app.register(&format!("user{index}"), &format!("user{index}@lab.org"))
            .await;
    }
    let logins = (0..40).map(|index| {
        let app = app.clone();
        tokio::spawn(async move {
            let name = format!("user{}", index % 5);
            let password = if index % 3 == 0 {
                "wrong password"
            } else {
                PASSWORD
            };
            app.login_response(&name, password).await.status()
        })
    });
    for login in logins {
        login.await.unwrap();
    }
    let report = verify(&app.state.store, None).await.unwrap();
    assert_eq!(report.finding, None);
    assert!(report.checked >= 45);
    let seqs = app
        .scalar("SELECT COUNT(DISTINCT seq) FROM audit_logs")
        .await;
    assert_eq!(seqs, app.scalar("SELECT MAX(seq) FROM audit_logs").await);
}

#[tokio::test]
async fn admins_page_and_filter_the_trail() {
    let app = busy_app().await;
    let admin = app.admin("root").await;
    let page: Value = app
        .get("/api/audit-logs?per_page=5", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
    let total = page["total"].as_i64().unwrap();
    assert_eq!(total, app.scalar("SELECT COUNT(*) FROM audit_logs").await);
    let newest = &page["items"][0];
    for field in [
        "id",
        "occurred_at",
        "action",
        "success",
        "user_id",
        "actor_ip",
        "user_agent",
        "resource_type",
        "resource_id",
        "lab_id",
        "details",
        "request_id",
    ] {
        assert!(newest.get(field).is_some(), "event lacks {field}");
    }
    assert!(newest["details"].is_object());

    let failures: Value = app
        .get(
            "/api/audit-logs?action=auth.login_failed",
            Some(&admin.access),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failures["total"], 4);
    let failed: Value = app
        .get("/api/audit-logs?success=false", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed["total"], 4);
    let alice_id = app
        .scalar("SELECT id FROM users WHERE username = 'alice'")
        .await;
    let alice: Value = app
        .get(
            &format!("/api/audit-logs?user_id={alice_id}&resource_type=session"),
            Some(&admin.access),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(alice["total"], 1);
    let future = ums::clock::to_rfc3339(app.clock.now() + 60_000);
    let none: Value = app
        .get(
            &format!("/api/audit-logs?from={future}"),
            Some(&admin.access),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(none["total"], 0);
    assert_problem(
        app.get("/api/audit-logs?from=yesterday", Some(&admin.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert_problem(
        app.get("/api/audit-logs?format=xml", Some(&admin.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let user = app.login("alice").await;
    assert_problem(
        app.get("/api/audit-logs", Some(&user.access)).await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn csv_and_json_exports_carry_the_whole_filtered_set() {
    let app = busy_app().await;
    let admin = app.admin("root").await;
    let response = app
        .get(
            "/api/audit-logs?format=csv&action=auth.login",
            Some(&admin.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let text = response.text().await.unwrap();
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    assert_eq!(reader.headers().unwrap().iter().next(), Some("id"));
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    let logins = app
        .scalar("SELECT COUNT(*) FROM audit_logs WHERE action = 'auth.login'")
        .await;
    assert_eq!(rows.len() as i64, logins);

    let page: Value = app
        .get(
            "/api/audit-logs?action=auth.login&per_page=100",
            Some(&admin.access),
        )
        .await
        .json()
        .await
        .unwrap();
    let mut from_page: Vec<Value> = page["items"].as_array().unwrap().clone();
    from_page.sort_by_key(|event| event["id"].as_i64());
    for (row, event) in rows.iter().zip(&from_page) {
        assert_eq!(row[0], event["id"].to_string());
        assert_eq!(&row[1], event["occurred_at"].as_str().unwrap());
        assert_eq!(&row[2], "auth.login");
        assert_eq!(
            serde_json::from_str::<Value>(&row[10]).unwrap(),
            event["details"]
        );
    }

    let json_lines = app
        .get(
            "/api/audit-logs?format=json&action=auth.login",
            Some(&admin.access),
        )
        .await;
    assert_eq!(json_lines.headers()["content-type"], "application/x-ndjson");
    let events: Vec<Value> = json_lines
        .text()
        .await
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(events, from_page);
}

#[tokio::test]
async fn the_pdf_export_is_a_readable_report() {
    let app = busy_app().await;
    let admin = app.admin("root").await;
    let response = app
        .get("/api/audit-logs?format=pdf", Some(&admin.access))
        .await;
    assert_eq!(response.headers()["content-type"], "application/pdf");
    let bytes = response.bytes().await.unwrap();
    // Read as a PDF reader would: parse the document and extract each page's text.
    let document = lopdf::Document::load_mem(&bytes).expect("a well-formed PDF");
    let pages: Vec<u32> = document.get_pages().keys().copied().collect();
    assert!(!pages.is_empty());
    let text = document.extract_text(&pages).expect("the pages' text");
    assert!(text.contains("UMS audit log"));
    assert!(text.contains("Filter: all events"));
    assert!(text.contains("Page 1"));
    assert!(text.contains("auth.login_failed") && text.contains("auth.register"));
    assert_eq!(text.matches("auth.register").count(), 4);
}

#[tokio::test]
async fn a_hundred_thousand_event_export_streams_in_bounded_memory() {
    let app = spawn_app().await;
    app.execute(&[&format!(
        "INSERT INTO audit_logs (seq, occurred_at, action, success, user_id, details, prev_hash, hash) \
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 100000) \
         SELECT i, {}, 'bulk.event', TRUE, i, '{{\"note\":\"padding padding padding padding padding padding\"}}', 'x', 'y' FROM n",
        app.time_sql("1700000000000 + i")
    )])
    .await;
    let directory = tempfile::tempdir().unwrap();
    let export = |extra: &[&str], name: &str| {
        let output_path = directory.path().join(name);
        let child = Command::new(env!("CARGO_BIN_EXE_ums"))
            .args(["audit", "export", "--format", "csv", "--output"])
            .arg(&output_path)
            .args(extra)
            .env_clear()
            .envs(&app.vars)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (status, peak_kib) = wait_with_peak_memory(child);
        assert!(status.success(), "the export failed: {status}");
        (output_path, peak_kib)
    };
    // The same command exporting nothing: what the process holds anyway (its code, the
    // runtime, the pool), which depends on the build, not on the export.
    let (_, baseline_kib) = export(&["--action", "no.such.event"], "empty.csv");
    let (output_path, peak_kib) = export(&[], "export.csv");
    let size = std::fs::metadata(&output_path).unwrap().len();
    let lines = std::fs::read_to_string(&output_path)
        .unwrap()
        .lines()
        .count();
    assert_eq!(lines, 100_001);
    // The file is ~12 MB; the process must not have held it (or the rows) in memory.
    assert!(size > 10_000_000, "export is {size} bytes");
    let grown_kib = peak_kib.saturating_sub(baseline_kib);
    assert!(
        grown_kib < 8_000,
        "peak RSS {peak_kib} KiB ({grown_kib} KiB more than exporting nothing) for a {size}-byte export"
    );
}

#[tokio::test]
async fn old_events_move_to_monthly_archives_that_still_verify() {
    let app = busy_app().await;
    let before = app.scalar("SELECT COUNT(*) FROM audit_logs").await;
    let partitions = "SELECT COUNT(*) FROM pg_inherits WHERE inhparent = 'audit_logs'::regclass";
    let postgres = app.state.store.backend() == Backend::Postgres;
    let partitions_before = if postgres {
        app.scalar(partitions).await
    } else {
        0
    };
    // Ninety days later the month of these events is not yet past the window in full...
    app.clock.advance(Duration::from_secs(90 * 86_400));
    let directory = tempfile::tempdir().unwrap();
    let cutoff = app.clock.now() - 90 * 86_400 * 1000;
    let early = ums::audit::archive::archive(&app.state.store, directory.path(), cutoff)
        .await
        .unwrap();
    assert_eq!(
        early.events, 0,
        "a month is archived only once it is all past the window"
    );
    // ...32 days on it is (whatever day it was), and it leaves whole.
    app.clock.advance(Duration::from_secs(32 * 86_400));
    app.register("recent", "recent@lab.org").await;
    let cutoff = app.clock.now() - 90 * 86_400 * 1000;
    let report = ums::audit::archive::archive(&app.state.store, directory.path(), cutoff)
        .await
        .unwrap();
    assert_eq!(report.events as i64, before);
    assert_eq!(report.files.len(), 1);
    if postgres {
        // The month left by dropping its partition, not by deleting rows. The partition of
        // the month after it, prepared ahead and still empty, may be past the window too
        // (when the events came on a month's last days) and then leaves with it; no month
        // that is not all past the window does.
        let events_month = partition_of(app.clock.now() - 122 * 86_400 * 1000);
        assert!(
            report.dropped_partitions.contains(&events_month),
            "{report:?}"
        );
        let window_start = ums::audit::archive::month_start(cutoff);
        for name in &report.dropped_partitions {
            let month_end = partition_month_start(name) + 31 * 86_400 * 1000;
            assert!(
                ums::audit::archive::month_start(month_end) <= window_start,
                "{name} is not all past the window: {report:?}"
            );
        }
        // (The early run may have dropped empty months before the events' month, such as
        // those the migration prepared when the database's clock is behind the test's.)
        let dropped = early.dropped_partitions.len() + report.dropped_partitions.len();
        assert_eq!(
            app.scalar(partitions).await,
            partitions_before - dropped as i64
        );
    } else {
        assert!(report.dropped_partitions.is_empty());
    }
    assert!(
        report.files[0]
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .starts_with("audit-")
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM audit_logs").await, 1);

    assert_eq!(verify(&app.state.store, None).await.unwrap().finding, None);
    let with_archive = verify(&app.state.store, Some(directory.path()))
        .await
        .unwrap();
    assert_eq!(with_archive.finding, None);
    assert_eq!(with_archive.checked as i64, before + 1);
    let archive_dir = directory.path().to_str().unwrap();
    let (ok, stdout) = verify_command(&app, &["--archive", archive_dir]);
    assert!(ok, "{stdout}");
    // Archiving again moves nothing and duplicates nothing.
    let again = ums::audit::archive::archive(&app.state.store, directory.path(), cutoff)
        .await
        .unwrap();
    assert_eq!(again.events, 0);

    // Tamper with an archived event: the archive check names it.
    let path = &report.files[0];
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::MultiGzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut text,
    )
    .unwrap();
    let edited = text.replacen("\"success\":true", "\"success\":false", 1);
    assert_ne!(edited, text);
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::default(),
    );
    std::io::Write::write_all(&mut encoder, edited.as_bytes()).unwrap();
    encoder.finish().unwrap();
    let (ok, stdout) = verify_command(&app, &["--archive", archive_dir]);
    assert!(!ok && stdout.contains("edited"), "{stdout}");
}

#[tokio::test]
async fn lab_reads_are_logged_in_batches_and_flushed_at_shutdown() {
    let mut app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (alice, tokens) = app.user("alice").await;
    app.add_member(&admin.access, lab, alice, "viewer").await;
    for _ in 0..3 {
        assert_eq!(
            app.get(&format!("/api/labs/{lab}/access"), Some(&tokens.access))
                .await
                .status(),
            StatusCode::OK
        );
    }
    let members = app
        .get(&format!("/api/labs/{lab}/members"), Some(&tokens.access))
        .await;
    assert_eq!(
        members.status(),
        StatusCode::OK,
        "{:?}",
        members.text().await
    );
    app.stop().await;
    let store = app.reopen_store().await;
    let mut connection = store.read().await.unwrap();
    let (checks,): (i64,) = ums::with_db!(connection, |db| sqlx::query_as("SELECT COUNT(*) FROM audit_logs WHERE action = 'lab.access_checked' AND lab_id = $1 AND user_id = $2")
        .bind(lab)
        .bind(alice)
        .fetch_one(db)
        .await)
        .unwrap();
    assert_eq!(checks, 3);
    let (reads,): (i64,) = ums::with_db!(connection, |db| sqlx::query_as(
        "SELECT COUNT(*) FROM audit_logs WHERE action = 'lab.members_read'"
    )
    .fetch_one(db)
    .await)
    .unwrap();
    assert_eq!(reads, 1);
    drop(connection);
    assert_eq!(verify(&store, None).await.unwrap().finding, None);
}

#[tokio::test]
async fn admins_read_login_attempts_with_filters() {
    let app = busy_app().await;
    let admin = app.admin("root").await;
    let all: Value = app
        .get("/api/security/login-attempts", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(all["total"], 9);
    let failed: Value = app
        .get(
            "/api/security/login-attempts?success=false&username=ALICE",
            Some(&admin.access),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(failed["total"], 1);
    let item = &failed["items"][0];
    assert_eq!(item["username"], "alice");
    assert_eq!(item["ip"], "127.0.0.1");
    assert_eq!(item["success"], false);
    assert!(item["attempted_at"].is_string() && item["id"].is_number());
    assert_problem(
        app.get("/api/security/login-attempts?page=0", Some(&admin.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // Addresses are stored as addresses: a filter that is not one is a 400 naming it (on
    // PostgreSQL it could not even be compared with an `inet` column), and an address finds
    // its attempts.
    for path in [
        "/api/security/login-attempts?ip=127.0.0",
        "/api/audit-logs?ip=localhost",
    ] {
        let problem = assert_problem(
            app.get(path, Some(&admin.access)).await,
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(
            problem["errors"]["ip"],
            json!(["must be an IP address"]),
            "{path}"
        );
    }
    let total_of = |path: &'static str| {
        let app = &app;
        let token = admin.access.clone();
        async move {
            let page: Value = app.get(path, Some(&token)).await.json().await.unwrap();
            page["total"].as_i64().unwrap()
        }
    };
    let failures = total_of("/api/security/login-attempts?success=false").await;
    assert!(failures > 0);
    assert_eq!(
        total_of("/api/security/login-attempts?success=false&ip=127.0.0.1").await,
        failures
    );
    assert_eq!(
        total_of("/api/security/login-attempts?success=false&ip=10.9.9.9").await,
        0
    );
    let user = app.login("bob").await;
    assert_problem(
        app.get("/api/security/login-attempts", Some(&user.access))
            .await,
        StatusCode::FORBIDDEN,
    )
    .await;
}

#[tokio::test]
async fn each_change_writes_exactly_one_event_with_its_actor_and_target() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let admin_id = admin.body["user"]["id"].as_i64().unwrap();
    let (alice, tokens) = app.user("alice").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    app.add_member(&admin.access, lab, alice, "member").await;
    app.patch(
        &format!("/api/labs/{lab}/members/{alice}/role"),
        &json!({"role": "viewer"}),
        Some(&admin.access),
    )
    .await;
    app.patch(
        &format!("/api/labs/{lab}"),
        &json!({"name": "Genetics"}),
        Some(&admin.access),
    )
    .await;
    app.patch(
        &format!("/api/users/{alice}"),
        &json!({"first_name": "Alice"}),
        Some(&tokens.access),
    )
    .await;
    app.delete(
        &format!("/api/labs/{lab}/members/{alice}"),
        Some(&admin.access),
    )
    .await;
    app.post("/api/auth/logout", &json!({}), Some(&tokens.access))
        .await;
    app.delete(&format!("/api/labs/{lab}"), Some(&admin.access))
        .await;
    app.delete(&format!("/api/users/{alice}"), Some(&admin.access))
        .await;
    let alice_text = alice.to_string();
    let lab_text = lab.to_string();
    let membership = format!("{lab}:{alice}");
    let expected: [(&str, i64, &str, &str); 9] = [
        ("auth.register", alice, "user", &alice_text),
        ("lab.created", admin_id, "lab", &lab_text),
        ("lab.member_added", admin_id, "membership", &membership),
        (
            "lab.member_role_updated",
            admin_id,
            "membership",
            &membership,
        ),
        ("lab.updated", admin_id, "lab", &lab_text),
        ("user.updated", alice, "user", &alice_text),
        ("lab.member_removed", admin_id, "membership", &membership),
        ("lab.deleted", admin_id, "lab", &lab_text),
        ("user.deleted", admin_id, "user", &alice_text),
    ];
    for (action, actor, resource_type, resource_id) in expected {
        let events = app.audit_events(action).await;
        assert_eq!(events.len(), 1, "{action}");
        assert_eq!(events[0]["user_id"], actor, "{action} actor");
        assert_eq!(events[0]["resource_type"], resource_type, "{action}");
        assert_eq!(events[0]["resource_id"], resource_id, "{action}");
        // Alice is erased at the end: the address of what she did went with her key.
        if actor == alice {
            assert_eq!(events[0]["actor_ip"], Value::Null, "{action}");
            assert_eq!(events[0]["erased"], true, "{action}");
        } else {
            assert_eq!(events[0]["actor_ip"], "127.0.0.1", "{action}");
        }
        assert!(events[0]["request_id"].is_string(), "{action}");
    }
    assert_eq!(app.audit_events("auth.logout").await.len(), 1);
    let lab_events = app
        .scalar(&format!(
            "SELECT COUNT(*) FROM audit_logs WHERE lab_id = {lab}"
        ))
        .await;
    assert_eq!(lab_events, 6);
    let secrets = app.scalar(&format!("SELECT COUNT(*) FROM audit_logs WHERE CAST(details AS TEXT) LIKE '%{PASSWORD}%' OR CAST(details AS TEXT) LIKE '%argon2%'")).await;
    assert_eq!(secrets, 0);
}

#[tokio::test]
async fn archives_past_their_retention_leave_and_the_rest_still_verifies() {
    let app = busy_app().await;
    let directory = tempfile::tempdir().unwrap();
    let archive = |cutoff: i64| {
        let store = app.state.store.clone();
        let path = directory.path().to_path_buf();
        async move {
            ums::audit::archive::archive(&store, &path, cutoff)
                .await
                .unwrap()
        }
    };
    // Two months archived, a month apart at least.
    app.clock.advance(Duration::from_secs(122 * 86_400));
    app.register("second", "second@lab.org").await;
    let second_month = app.clock.now();
    assert_eq!(archive(app.clock.now() - 90 * DAY_MS).await.files.len(), 1);
    app.clock.advance(Duration::from_secs(125 * 86_400));
    app.register("third", "third@lab.org").await;
    let report = archive(app.clock.now() - 90 * DAY_MS).await;
    assert_eq!(report.files.len(), 1);
    let kept = report.files[0].clone();
    // The third account's events are still in the table; the second's are in the kept file.
    let third_seq = app
        .scalar("SELECT MIN(seq) FROM audit_logs WHERE action = 'auth.register'")
        .await;

    // The first month is past its retention, the second is not.
    let deleted = ums::audit::archive::delete_expired_archives(
        &app.state.store,
        directory.path(),
        second_month,
    )
    .await
    .unwrap();
    assert_eq!(deleted.len(), 1);
    assert!(!deleted[0].exists() && kept.exists());
    let retained_from = app
        .scalar("SELECT retained_from FROM audit_chain WHERE id = 1")
        .await;
    assert!(
        retained_from > 1 && retained_from < third_seq,
        "{retained_from}"
    );
    let report = verify(&app.state.store, Some(directory.path()))
        .await
        .unwrap();
    assert_eq!(report.finding, None);
    // Nothing more is past it; running again deletes nothing.
    let again = ums::audit::archive::delete_expired_archives(
        &app.state.store,
        directory.path(),
        second_month,
    )
    .await
    .unwrap();
    assert!(again.is_empty());

    // A retained archive removed out of turn is found.
    std::fs::remove_file(&kept).unwrap();
    let report = verify(&app.state.store, Some(directory.path()))
        .await
        .unwrap();
    assert!(report.finding.is_some(), "{report:?}");
}

/// A large batch (the access log's) is sealed and chained off the async workers; its events
/// take consecutive places in the chain, and the chain verifies after it.
#[tokio::test]
async fn a_large_batch_links_in_order_and_verifies() {
    use ums::audit::{Action, Event, Origin};
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (alice, _) = app.user("alice").await;
    let before = app.scalar("SELECT COUNT(*) FROM audit_logs").await;
    let origin = Origin {
        ip: Some("203.0.113.9".into()),
        user_agent: Some("batch-test".into()),
        ..Origin::default()
    };
    let events: Vec<Event> = (0..100)
        .map(|_| {
            Event::new(Action::LabAccessChecked, app.clock.now())
                .actor(Some(alice))
                .resource("lab", lab)
                .lab(lab)
                .details(json!({"role": "member"}))
                .origin(&origin)
        })
        .collect();
    let store = &app.state.store;
    let mut transaction = store.begin().await.unwrap();
    ums::audit::record_batch(&mut transaction, store.chain_key(), events)
        .await
        .unwrap();
    transaction.commit().await.unwrap();

    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM audit_logs").await,
        before + 100
    );
    assert_eq!(
        app.scalar(
            "SELECT MAX(seq) - MIN(seq) + 1 FROM audit_logs WHERE action = 'lab.access_checked'"
        )
        .await,
        100
    );
    assert_eq!(verify(store, None).await.unwrap().finding, None);
}
