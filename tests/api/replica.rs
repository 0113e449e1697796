//! The read replica's routing, on PostgreSQL. Lists and audit queries may go to a replica,
//! but a replica that is not replicating or cannot be reached is passed over for the primary:
//! every read still answers, with what was just written, and `/ready` says why. A real
//! streaming replica serving reads is exercised by the topology test (tests/topology).

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::*;

async fn ready_replica_check(app: &TestApp, expected: &str) -> Value {
    for _ in 0..60 {
        let response = app.get("/ready", None).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        if body["checks"]["replica"]
            .as_str()
            .is_some_and(|check| check.starts_with(expected))
        {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("/ready never reported the replica as {expected:?}");
}

fn reads_served_by(metrics: &str, served_by: &str) -> u64 {
    let series = format!("ums_replica_reads_total{{served_by=\"{served_by}\"}} ");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&series))
        .map(|value| value.trim().parse().unwrap())
        .unwrap_or(0)
}

#[tokio::test]
async fn reads_go_to_the_primary_when_the_replica_is_not_one_or_is_down() {
    let app = spawn_app().await;
    if app.state.store.backend() != ums::store::Backend::Postgres {
        return;
    }
    let admin = app.admin("root").await;
    let primary_url = app.vars["UMS_DATABASE_URL"].clone();
    let cases = [
        // The primary's own database: it answers, but replays nothing.
        (primary_url.as_str(), "not in recovery"),
        // Nothing listens on port 1.
        ("postgres://postgres@127.0.0.1:1/ums", "unreachable"),
    ];
    for (round, (replica_url, expected)) in cases.into_iter().enumerate() {
        let instance =
            spawn_second_instance_with(&app, &[("UMS_DATABASE_REPLICA_URL", replica_url)]).await;
        // Written through this instance, listed by it at once.
        let username = format!("fresh{round}");
        instance
            .register(&username, &format!("{username}@lab.org"))
            .await;
        let started = std::time::Instant::now();
        let listed = instance
            .get(&format!("/api/users?q={username}"), Some(&admin.access))
            .await;
        assert_eq!(listed.status(), StatusCode::OK);
        let listed: Value = listed.json().await.unwrap();
        assert_eq!(listed["items"][0]["username"], username, "{listed}");
        let audit = instance
            .get(
                "/api/audit-logs?action=user_registered",
                Some(&admin.access),
            )
            .await;
        assert_eq!(audit.status(), StatusCode::OK);
        // Passed over without waiting out the database timeout.
        assert!(started.elapsed() < Duration::from_secs(3));

        let ready = ready_replica_check(&instance, expected).await;
        assert_eq!(ready["status"], "ready");
        assert!(
            ready["checks"]["replica"]
                .as_str()
                .unwrap()
                .ends_with("reads go to the primary"),
            "{ready}"
        );
    }
    let metrics = app.get("/metrics", None).await.text().await.unwrap();
    assert!(
        reads_served_by(&metrics, "primary_replica_down") >= 4,
        "{metrics}"
    );
    assert_eq!(reads_served_by(&metrics, "replica"), 0);
    // Without a replica, `/ready` says so.
    let ready: Value = app.get("/ready", None).await.json().await.unwrap();
    assert_eq!(ready["checks"]["replica"], "not configured");
}
