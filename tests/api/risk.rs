//! Adaptive sign-in through the real server: a small MaxMind database written by the test,
//! client addresses set through a trusted proxy's X-Forwarded-For, the clock moved by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Serialize;
use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, assert_problem, jwt_parts, spawn_app, spawn_app_with};

const PARIS: &str = "81.1.2.3";
const TOKYO: &str = "126.4.5.6";
const LISTED: &str = "203.0.113.9";
const FIREFOX: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const SAFARI: &str = "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 Version/17.5 Safari/605.1.15";

#[derive(Serialize)]
struct Names {
    names: BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
struct Country {
    iso_code: &'static str,
    names: BTreeMap<&'static str, &'static str>,
}

#[derive(Serialize)]
struct Location {
    latitude: f64,
    longitude: f64,
    accuracy_radius: u16,
}

#[derive(Serialize)]
struct City {
    city: Names,
    country: Country,
    location: Location,
}

fn city(name: &'static str, code: &'static str, country: &'static str, at: (f64, f64)) -> City {
    City {
        city: Names {
            names: [("en", name)].into(),
        },
        country: Country {
            iso_code: code,
            names: [("en", country)].into(),
        },
        location: Location {
            latitude: at.0,
            longitude: at.1,
            accuracy_radius: 20,
        },
    }
}

/// A GeoLite2-City-shaped database: 81.0.0.0/8 in Paris, 126.0.0.0/8 in Tokyo.
fn geoip_database(path: &std::path::Path) {
    let mut writer = mmdb_writer::Writer::new("GeoLite2-City");
    writer
        .insert(
            "81.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
            &city("Paris", "FR", "France", (48.8566, 2.3522)),
        )
        .unwrap();
    writer
        .insert(
            "126.0.0.0/8".parse::<ipnet::IpNet>().unwrap(),
            &city("Tokyo", "JP", "Japan", (35.6762, 139.6503)),
        )
        .unwrap();
    std::fs::write(path, writer.to_bytes().unwrap()).unwrap();
}

struct RiskApp {
    app: TestApp,
    directory: tempfile::TempDir,
}

async fn spawn_with_geoip() -> RiskApp {
    let directory = tempfile::tempdir().unwrap();
    let geoip = directory.path().join("city.mmdb");
    geoip_database(&geoip);
    let denylist = directory.path().join("drop.txt");
    std::fs::write(&denylist, "; Spamhaus DROP\n203.0.113.0/24 ; SBL1\n").unwrap();
    let app = spawn_app_with(&[
        ("UMS_TRUSTED_PROXIES", "127.0.0.1"),
        ("UMS_GEOIP_DB", geoip.to_str().unwrap()),
        ("UMS_IP_DENYLIST", denylist.to_str().unwrap()),
        // A weight set by configuration: a new device alone is worth a notice.
        ("UMS_RISK_WEIGHT_NEW_DEVICE", "40"),
    ])
    .await;
    RiskApp { app, directory }
}

async fn login_from(app: &TestApp, username: &str, ip: &str, agent: &str) -> reqwest::Response {
    app.client
        .post(app.url("/api/auth/login"))
        .header("x-forwarded-for", ip)
        .header("user-agent", agent)
        .json(&json!({"username": username, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
}

/// The last login attempt of `username`: (score, signal kinds, country).
async fn last_attempt(app: &TestApp, username: &str) -> (i64, Vec<String>, Option<String>) {
    let score = app
        .scalar(&format!(
            "SELECT CAST(risk_score AS BIGINT) FROM login_attempts WHERE username = '{username}' \
             ORDER BY id DESC LIMIT 1"
        ))
        .await;
    let signals = app
        .text(&format!(
            "SELECT CAST(risk_signals AS TEXT) FROM login_attempts WHERE username = '{username}' \
             ORDER BY id DESC LIMIT 1"
        ))
        .await
        .unwrap_or_default();
    let signals: Vec<Value> = serde_json::from_str(&signals).unwrap_or_default();
    let country = app
        .text(&format!(
            "SELECT country FROM login_attempts WHERE username = '{username}' \
             ORDER BY id DESC LIMIT 1"
        ))
        .await;
    (
        score,
        signals
            .iter()
            .map(|signal| signal["kind"].as_str().unwrap().to_string())
            .collect(),
        country,
    )
}

#[tokio::test]
async fn a_sign_in_is_weighed_explained_and_acted_on() {
    let RiskApp { app, directory } = spawn_with_geoip().await;
    let ready: Value = app.get("/ready", None).await.json().await.unwrap();
    assert_eq!(ready["checks"]["geoip"], "ok");
    let admin = app.admin("root").await;
    app.register("alice", "alice@lab.org").await;

    // A first sign-in has no habits to break.
    let first = login_from(&app, "alice", PARIS, FIREFOX).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(
        last_attempt(&app, "alice").await,
        (0, vec![], Some("FR".into()))
    );

    // Forty minutes later from Tokyo, same browser: a new country (30) and a trip no
    // airliner makes (60) score 90: more than the password is asked, and as alice has no
    // second factor, a code by email.
    app.clock.advance(Duration::from_secs(40 * 60));
    let challenged = login_from(&app, "alice", TOKYO, FIREFOX).await;
    let body = assert_problem(challenged, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "verification_required");
    assert_eq!(body["methods"], json!(["email_code"]));
    let email = app
        .smtp
        .wait_for("alice@lab.org", "Your sign-in code")
        .await;
    assert!(
        email.text.contains("new country: Japan (+30)"),
        "{}",
        email.text
    );
    assert!(
        email
            .text
            .contains("km from the sign-in 40 minutes earlier in Paris, France (+60)"),
        "{}",
        email.text
    );
    let code = email
        .text
        .lines()
        .map(str::trim)
        .find(|line| line.len() == 6 && line.bytes().all(|b| b.is_ascii_digit()))
        .unwrap()
        .to_string();
    let events = app.audit_events("auth.mfa_challenged").await;
    let risk = &events.last().unwrap()["details"]["risk"];
    assert_eq!(risk["score"], 90);
    assert_eq!(risk["action"], "second_factor");
    let wrong = app
        .post(
            "/api/auth/login/mfa",
            &json!({"mfa_token": body["mfa_token"], "method": "email_code", "code": "000000"}),
            None,
        )
        .await;
    assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
    let verified = app
        .client
        .post(app.url("/api/auth/login/mfa"))
        .header("x-forwarded-for", TOKYO)
        .header("user-agent", FIREFOX)
        .json(&json!({"mfa_token": body["mfa_token"], "method": "email_code", "code": code}))
        .send()
        .await
        .unwrap();
    assert_eq!(verified.status(), StatusCode::OK);
    let verified: Value = verified.json().await.unwrap();
    let access = verified["access_token"].as_str().unwrap().to_string();
    let (_, claims) = jwt_parts(&access);
    assert_eq!(
        claims["amr"],
        json!(["pwd", "otp"]),
        "an emailed code is no second factor"
    );
    // The explanation is stored with the attempt and the audit event, and the notice says it.
    let (score, kinds, country) = last_attempt(&app, "alice").await;
    assert_eq!(score, 90);
    assert_eq!(kinds, ["new_country", "impossible_travel"]);
    assert_eq!(country.as_deref(), Some("JP"));
    let login = app.audit_events("auth.login").await;
    assert_eq!(login.last().unwrap()["details"]["risk"]["score"], 90);
    let notice = app
        .smtp
        .wait_for("alice@lab.org", "Unusual sign-in to your account")
        .await;
    assert!(
        notice.text.contains("Where:   Tokyo, Japan"),
        "{}",
        notice.text
    );
    assert_eq!(app.audit_events("security.risky_sign_in").await.len(), 1);

    // Devices: both sign-ins came from one browser, last seen in Tokyo.
    let devices: Value = app
        .client
        .get(app.url("/api/auth/devices"))
        .bearer_auth(&access)
        .header("user-agent", FIREFOX)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(devices.as_array().unwrap().len(), 1, "{devices}");
    assert_eq!(devices[0]["browser"], "Firefox");
    assert_eq!(devices[0]["os"], "Linux");
    assert_eq!(devices[0]["last_place"], "Tokyo, Japan");
    assert_eq!(devices[0]["current"], true);

    // A new device alone scores 40 (its configured weight): a notice, and nothing more.
    app.clock.advance(Duration::from_secs(14 * 3600));
    let safari = login_from(&app, "alice", TOKYO, SAFARI).await;
    assert_eq!(safari.status(), StatusCode::OK);
    let safari: Value = safari.json().await.unwrap();
    let access = safari["access_token"].as_str().unwrap().to_string();
    assert_eq!(last_attempt(&app, "alice").await.1, ["new_device"]);
    app.smtp
        .wait_for_nth("alice@lab.org", "Unusual sign-in to your account", 2)
        .await;
    let device_id = devices[0]["id"].as_i64().unwrap();
    let forgotten = app
        .delete(&format!("/api/auth/devices/{device_id}"), Some(&access))
        .await;
    assert_eq!(forgotten.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.delete(&format!("/api/auth/devices/{device_id}"), Some(&access))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );

    // Past 90 the right password is refused like a wrong one; the user is told, the admins
    // alerted. Bob signed in from Paris; minutes later Tokyo on a new device: 30 + 60 + 40.
    app.register("bob", "bob@lab.org").await;
    assert_eq!(
        login_from(&app, "bob", PARIS, FIREFOX).await.status(),
        StatusCode::OK
    );
    app.clock.advance(Duration::from_secs(5 * 60));
    let refused = login_from(&app, "bob", TOKYO, SAFARI).await;
    let body = assert_problem(refused, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["detail"], "Invalid username or password.");
    let blocked = app
        .smtp
        .wait_for("bob@lab.org", "A risky sign-in to your account was blocked")
        .await;
    assert!(blocked.text.contains("risk 130"), "{}", blocked.text);
    app.smtp
        .wait_for(
            "root@admins.org",
            "Security alert: a risky sign-in was refused",
        )
        .await;
    let refusals = app.audit_events("security.risky_sign_in_refused").await;
    assert_eq!(refusals[0]["details"]["risk"]["score"], 130);
    let failed = app.audit_events("auth.login_failed").await;
    assert_eq!(failed.last().unwrap()["details"]["reason"], "risk");
    drop(admin);

    // A denylisted address is refused before any password is looked at.
    let denied = login_from(&app, "alice", LISTED, FIREFOX).await;
    let body = assert_problem(denied, StatusCode::FORBIDDEN).await;
    assert!(body["detail"].as_str().unwrap().contains("denylist"));
    let (score, kinds, _) = last_attempt(&app, "alice").await;
    assert_eq!((score, kinds), (100, vec!["malicious_ip".to_string()]));
    // The list is read again when its file changes.
    let next = directory.path().join("next.txt");
    std::fs::write(&next, "198.51.100.0/24\n").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&next)
        .unwrap()
        .set_modified(later)
        .unwrap();
    std::fs::rename(&next, directory.path().join("drop.txt")).unwrap();
    assert_eq!(
        login_from(&app, "alice", "198.51.100.7", FIREFOX)
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_ne!(
        login_from(&app, "alice", LISTED, FIREFOX).await.status(),
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn without_a_geoip_database_the_geographic_signals_are_off_and_ready_says_so() {
    let app = spawn_app().await;
    let ready: Value = app.get("/ready", None).await.json().await.unwrap();
    assert!(
        ready["checks"]["geoip"]
            .as_str()
            .unwrap()
            .starts_with("not configured"),
        "{ready}"
    );
    app.register("carol", "carol@lab.org").await;
    app.login("carol").await;
    app.clock.advance(Duration::from_secs(60));
    // Sign-ins still work and are weighed, without places.
    let tokens = app.login("carol").await;
    assert!(tokens.body["access_token"].is_string());
    assert_eq!(
        app.scalar(
            "SELECT COUNT(*) FROM login_attempts WHERE username = 'carol' \
             AND risk_score IS NOT NULL AND country IS NULL"
        )
        .await,
        2
    );
}

/// The token of the first `name?token=` link in a text part.
fn link_token(text: &str, name: &str) -> String {
    let marker = format!("{name}?token=");
    let start = text.find(&marker).unwrap() + marker.len();
    text[start..]
        .split(|c: char| c.is_whitespace() || c == ')')
        .next()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn this_wasnt_me_ends_every_session_and_asks_for_a_new_password() {
    let app = spawn_app().await;
    app.register("dora", "dora@lab.org").await;
    let first = login_from(&app, "dora", "127.0.0.1", FIREFOX).await;
    assert_eq!(first.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    let stranger = login_from(&app, "dora", "127.0.0.1", SAFARI).await;
    assert_eq!(stranger.status(), StatusCode::OK);
    let stranger: Value = stranger.json().await.unwrap();
    let alert = app
        .smtp
        .wait_for("dora@lab.org", "New sign-in to your account")
        .await;
    assert!(
        alert
            .text
            .contains("This wasn't me: http://ums.test/not-me?token=")
    );
    let token = link_token(&alert.text, "not-me");

    let reported = app
        .post("/api/auth/not-me", &json!({"token": token}), None)
        .await;
    assert_eq!(reported.status(), StatusCode::OK);
    let body: Value = reported.json().await.unwrap();
    assert_eq!(body["sessions_ended"], 2);
    for session in [&first, &stranger] {
        let me = app
            .get("/api/auth/me", session["access_token"].as_str())
            .await;
        assert_problem(me, StatusCode::UNAUTHORIZED).await;
    }
    // The password alone no longer signs in: it must be reset first, by the link emailed.
    let refused = app.login_response("dora", PASSWORD).await;
    let body = assert_problem(refused, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "password_reset_required");
    let again = app
        .post("/api/auth/not-me", &json!({"token": token}), None)
        .await;
    assert_problem(again, StatusCode::BAD_REQUEST).await;
    let reset_email = app
        .smtp
        .wait_for("dora@lab.org", "Reset your password")
        .await;
    let reset = app
        .post(
            "/api/auth/reset-password",
            &json!({"token": reset_email.token(), "new_password": "a fresh start of a password"}),
            None,
        )
        .await;
    assert_eq!(reset.status(), StatusCode::OK);
    let signed_in = app
        .login_response("dora", "a fresh start of a password")
        .await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let events = app.audit_events("security.not_me_reported").await;
    assert_eq!(events[0]["details"]["sessions_ended"], 2);
}

#[tokio::test]
async fn the_security_dashboard_lists_sums_and_streams_events() {
    let RiskApp {
        app,
        directory: _directory,
    } = spawn_with_geoip().await;
    let admin = app.admin("root").await;
    let (_, user) = app.user("erin").await;
    assert_eq!(
        login_from(&app, "alice_unknown", PARIS, FIREFOX)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    app.register("alice", "alice@lab.org").await;
    assert_eq!(
        login_from(&app, "alice", PARIS, FIREFOX).await.status(),
        StatusCode::OK
    );
    for _ in 0..2 {
        let wrong = app
            .client
            .post(app.url("/api/auth/login"))
            .header("x-forwarded-for", TOKYO)
            .json(&json!({"username": "alice", "password": "not her password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    }
    app.clock.advance(Duration::from_secs(10 * 60));
    let challenged = login_from(&app, "alice", TOKYO, FIREFOX).await;
    assert_problem(challenged, StatusCode::UNAUTHORIZED).await;

    let page: Value = app
        .get("/api/security/events?per_page=50", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "auth.login_failed")
            .count(),
        3,
        "{actions:?}"
    );
    assert!(actions.contains(&"auth.mfa_challenged"));
    assert!(
        !actions.contains(&"auth.login"),
        "sign-ins that passed are not security events"
    );
    let challenges: Value = app
        .get(
            "/api/security/events?action=auth.mfa_challenged",
            Some(&admin.access),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(challenges["total"], 1);
    assert_eq!(challenges["items"][0]["details"]["risk"]["score"], 90);
    assert_eq!(challenges["items"][0]["ip"], TOKYO);
    let bad = app
        .get(
            "/api/security/events?action=user.created",
            Some(&admin.access),
        )
        .await;
    assert_problem(bad, StatusCode::BAD_REQUEST).await;
    let not_admin = app.get("/api/security/events", Some(&user.access)).await;
    assert_problem(not_admin, StatusCode::FORBIDDEN).await;

    let summary: Value = app
        .get("/api/security/summary?window=1h", Some(&admin.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(summary["window_seconds"], 3600);
    assert_eq!(summary["counts"]["failed_sign_ins"], 3, "{summary}");
    assert_eq!(summary["counts"]["challenges"], 1);
    assert_eq!(summary["top_ips"][0], json!({"ip": TOKYO, "failures": 2}));
    assert_eq!(
        summary["targeted_accounts"][0],
        json!({"username": "alice", "failures": 2})
    );
    let countries: Vec<&str> = summary["countries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["country"].as_str().unwrap())
        .collect();
    assert!(
        countries.contains(&"JP") && countries.contains(&"FR"),
        "{summary}"
    );
    assert_problem(
        app.get("/api/security/summary?window=forever", Some(&admin.access))
            .await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    // The attempts carry their explanation.
    let attempts: Value = app
        .get(
            "/api/security/login-attempts?username=alice",
            Some(&admin.access),
        )
        .await
        .json()
        .await
        .unwrap();
    let failed = &attempts["items"][1];
    assert_eq!(failed["country"], "JP");
    assert_eq!(
        failed["risk_signals"][0]["kind"], "new_ip_failure",
        "{attempts}"
    );

    // The live stream: an event recorded after connecting arrives as `event: security`.
    let mut stream = app
        .client
        .get(app.url("/api/security/stream"))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), StatusCode::OK);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let wrong = app.login_response("erin", "not erin's password").await;
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let mut received = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !received.contains("auth.login_failed") {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("the stream delivers the event within 10 s")
            .unwrap()
            .unwrap();
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(received.contains("event: security"), "{received}");
    assert!(received.contains("\"username\":\"erin\""), "{received}");
}

#[tokio::test]
async fn habits_are_learned_and_rapid_attempts_noticed_each_signal_alone() {
    let RiskApp {
        app,
        directory: _directory,
    } = spawn_with_geoip().await;
    app.register("hana", "hana@lab.org").await;
    // Ten sign-ins around noon UTC, a day apart, from one place and browser: her habits.
    let day = Duration::from_secs(86_400);
    let now = app.clock.now();
    let noon = now - now.rem_euclid(86_400_000) + 12 * 3_600_000;
    app.clock
        .advance(Duration::from_millis((noon + 86_400_000 - now) as u64));
    for _ in 0..10 {
        assert_eq!(
            login_from(&app, "hana", PARIS, FIREFOX).await.status(),
            StatusCode::OK
        );
        app.clock.advance(day);
    }
    assert_eq!(last_attempt(&app, "hana").await.0, 0);
    // At 18:00 UTC, six hours from any usual hour: that signal alone (15), no action.
    app.clock.advance(Duration::from_secs(6 * 3600));
    assert_eq!(
        login_from(&app, "hana", PARIS, FIREFOX).await.status(),
        StatusCode::OK
    );
    let (score, kinds, _) = last_attempt(&app, "hana").await;
    assert_eq!((score, kinds), (15, vec!["unusual_hour".to_string()]));
    // Back at noon: five attempts within a minute make the fifth rapid (25) alone.
    app.clock.advance(Duration::from_secs(18 * 3600));
    for attempt in 1..=5 {
        assert_eq!(
            login_from(&app, "hana", PARIS, FIREFOX).await.status(),
            StatusCode::OK
        );
        let (score, kinds, _) = last_attempt(&app, "hana").await;
        if attempt < 5 {
            assert_eq!(score, 0, "attempt {attempt}");
        } else {
            assert_eq!((score, kinds), (25, vec!["rapid_requests".to_string()]));
        }
    }
}
