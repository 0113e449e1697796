//! Two-factor sign-in through the real server: TOTP codes computed the way an authenticator
//! app does (from the `otpauth://` URI it scans), recovery codes, passkeys driven by a software
//! authenticator, step-up, the admin and lab policies, and an admin's reset.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use webauthn_authenticator_rs::WebauthnAuthenticator as _;
use webauthn_authenticator_rs::prelude::Url;
use webauthn_authenticator_rs::softpasskey::SoftPasskey;
use webauthn_rs::prelude::{CreationChallengeResponse, RequestChallengeResponse};

use crate::helpers::{PASSWORD, TestApp, assert_problem, jwt_parts, spawn_app_with};

/// Passkeys need a secure origin (https, or localhost): the tests' relying party.
const ORIGIN: &str = "https://ums.test";

async fn spawn() -> TestApp {
    spawn_app_with(&[
        ("UMS_WEBAUTHN_ORIGINS", ORIGIN),
        ("UMS_SECRET_KEY", "a test secret key for sealing"),
    ])
    .await
}

/// An authenticator app: it scans the `otpauth://` URI and shows the code of the moment.
struct App(totp_rs::Totp);

impl App {
    fn scan(uri: &str) -> Self {
        App(totp_rs::Totp::from_url(uri).unwrap())
    }

    fn code(&self, app: &TestApp) -> String {
        self.0.generate((app.clock.now() / 1000) as u64).to_string()
    }
}

/// Enrols an authenticator app for the bearer of `token`; returns it and the recovery codes.
async fn enrol_totp(app: &TestApp, token: &str) -> (App, Vec<String>) {
    let response = app
        .post("/api/auth/mfa/totp/enroll", &json!({}), Some(token))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let enrollment: Value = response.json().await.unwrap();
    let phone = App::scan(enrollment["otpauth_uri"].as_str().unwrap());
    let code = phone.code(app);
    let response = app
        .post(
            "/api/auth/mfa/totp/confirm",
            &json!({"code": code}),
            Some(token),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let codes = body["recovery_codes"]
        .as_array()
        .map(|codes| {
            codes
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    // The code just used cannot be used again: later steps take the next one.
    app.clock.advance(Duration::from_secs(30));
    (phone, codes)
}

/// The password step of a user with a second factor: its `mfa_required` problem.
async fn password_step(app: &TestApp, username: &str) -> Value {
    let response = app.login_response(username, PASSWORD).await;
    let body = assert_problem(response, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "mfa_required", "{body}");
    body
}

async fn second_step(app: &TestApp, body: Value) -> reqwest::Response {
    app.post("/api/auth/login/mfa", &body, None).await
}

/// Steps the session of `token` up with the app's code; returns the new access token.
async fn step_up(app: &TestApp, token: &str, phone: &App) -> String {
    let response = app
        .post(
            "/api/auth/step-up",
            &json!({"method": "totp", "code": phone.code(app)}),
            Some(token),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    app.clock.advance(Duration::from_secs(30));
    let body: Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

/// A Prometheus series' value (0 when absent).
fn series(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn amr(token: &str) -> Vec<String> {
    let (_, claims) = jwt_parts(token);
    serde_json::from_value(claims["amr"].clone()).unwrap()
}

#[tokio::test]
async fn a_totp_factor_is_enrolled_confirmed_and_asked_for_after_the_password() {
    let app = spawn().await;
    let (user_id, tokens) = app.user("alice").await;

    let response = app
        .post(
            "/api/auth/mfa/totp/enroll",
            &json!({}),
            Some(&tokens.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let enrollment: Value = response.json().await.unwrap();
    let uri = enrollment["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/UMS:alice?"), "{uri}");
    assert!(enrollment["qr_svg"].as_str().unwrap().contains("<svg"));
    let secret = enrollment["secret"].as_str().unwrap();
    // The secret is sealed at rest (AES-256-GCM under UMS_SECRET_KEY).
    let stored = app
        .text("SELECT secret_sealed FROM totp_factors")
        .await
        .unwrap();
    assert!(stored.starts_with("aes256gcm-v2:"), "{stored}");
    assert!(!stored.contains(secret));
    // Unconfirmed, it does not count yet.
    app.login("alice").await;
    let phone = App::scan(uri);

    let wrong = app
        .post(
            "/api/auth/mfa/totp/confirm",
            &json!({"code": "000000"}),
            Some(&tokens.access),
        )
        .await;
    let body = assert_problem(wrong, StatusCode::BAD_REQUEST).await;
    assert!(body["errors"]["code"].is_array());
    let confirmed = app
        .post(
            "/api/auth/mfa/totp/confirm",
            &json!({"code": phone.code(&app)}),
            Some(&tokens.access),
        )
        .await;
    assert_eq!(confirmed.status(), StatusCode::OK);
    let codes: Value = confirmed.json().await.unwrap();
    assert_eq!(codes["recovery_codes"].as_array().unwrap().len(), 10);
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = {user_id}"
        ))
        .await,
        10
    );
    let email = app
        .smtp
        .wait_for("alice@lab.org", "A second factor was added")
        .await;
    assert!(email.text.contains("authenticator app"));
    let me: Value = app
        .get("/api/auth/me", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["mfa_enabled"], true);

    // The password alone now answers mfa_required, with a token and the methods.
    let challenge = password_step(&app, "alice").await;
    assert_eq!(challenge["methods"], json!(["totp", "recovery_code"]));
    let mfa_token = challenge["mfa_token"].as_str().unwrap().to_string();
    assert!(challenge["expires_in"].as_u64().unwrap() > 0);
    // The code that confirmed the enrolment is spent: the same code in the same window fails.
    let replay = second_step(
        &app,
        json!({"mfa_token": mfa_token, "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_problem(replay, StatusCode::UNAUTHORIZED).await;
    app.clock.advance(Duration::from_secs(30));

    let signed_in = second_step(
        &app,
        json!({"mfa_token": mfa_token, "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let body: Value = signed_in.json().await.unwrap();
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(amr(access), ["pwd", "otp", "mfa"]);
    let (_, claims) = jwt_parts(access);
    assert_eq!(claims["auth_time"], app.clock.now() / 1000);
    // The token is single use (a fresh code of the next step changes nothing).
    app.clock.advance(Duration::from_secs(30));
    let again = second_step(
        &app,
        json!({"mfa_token": mfa_token, "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_problem(again, StatusCode::UNAUTHORIZED).await;

    // One step still works: the code in the login body.
    app.clock.advance(Duration::from_secs(30));
    let one_step = app
        .post(
            "/api/auth/login",
            &json!({"username": "alice", "password": PASSWORD, "totp_code": phone.code(&app)}),
            None,
        )
        .await;
    assert_eq!(one_step.status(), StatusCode::OK);
    let body: Value = one_step.json().await.unwrap();
    assert_eq!(
        amr(body["access_token"].as_str().unwrap()),
        ["pwd", "otp", "mfa"]
    );

    let enabled = app.audit_events("mfa.totp_enabled").await;
    assert_eq!(enabled.len(), 1);
    assert_eq!(enabled[0]["user_id"], user_id);
    assert_eq!(app.audit_events("auth.mfa_challenged").await.len(), 1);
    let logins = app.audit_events("auth.login").await;
    assert_eq!(
        logins.last().unwrap()["details"]["amr"],
        json!(["pwd", "otp", "mfa"])
    );
}

#[tokio::test]
async fn wrong_codes_kill_the_token_and_count_toward_the_lockout() {
    let app = spawn_app_with(&[
        ("UMS_WEBAUTHN_ORIGINS", ORIGIN),
        ("UMS_LOCKOUT_THRESHOLD", "5"),
    ])
    .await;
    let (user_id, tokens) = app.user("bob").await;
    let (phone, _) = enrol_totp(&app, &tokens.access).await;

    // The password, then three wrong codes.
    let challenge = password_step(&app, "bob").await;
    let mfa_token = challenge["mfa_token"].as_str().unwrap();
    for _ in 0..3 {
        let wrong = second_step(
            &app,
            json!({"mfa_token": mfa_token, "method": "totp", "code": "123456"}),
        )
        .await;
        let body = assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body["code"], "unauthorized");
    }
    // Three wrong answers killed the token: even the right code is refused now.
    let dead = second_step(
        &app,
        json!({"mfa_token": mfa_token, "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_problem(dead, StatusCode::UNAUTHORIZED).await;
    // The right password counted nothing; the three wrong codes did.
    assert_eq!(
        app.scalar(&format!(
            "SELECT failed_login_count FROM users WHERE id = {user_id}"
        ))
        .await,
        3
    );
    let failures = app.audit_events("auth.mfa_failed").await;
    assert_eq!(failures.len(), 3);
    assert_eq!(failures[0]["success"], false);

    // Signing in again does not clear them: the fifth wrong code locks the account, and
    // says so by email; then even the right code is refused unevaluated.
    let challenge = password_step(&app, "bob").await;
    let mfa_token = challenge["mfa_token"].as_str().unwrap();
    for _ in 0..2 {
        let wrong = second_step(
            &app,
            json!({"mfa_token": mfa_token, "method": "totp", "code": "123456"}),
        )
        .await;
        assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
    }
    app.smtp
        .wait_for("bob@lab.org", "Your account was locked")
        .await;
    assert_eq!(app.audit_events("security.account_locked").await.len(), 1);
    let challenge_after_lock = app.login_response("bob", PASSWORD).await;
    assert_problem(challenge_after_lock, StatusCode::LOCKED).await;
}

#[tokio::test]
async fn recovery_codes_sign_in_once_each_and_a_new_set_voids_the_old() {
    let app = spawn().await;
    let (user_id, tokens) = app.user("carol").await;
    let (_, codes) = enrol_totp(&app, &tokens.access).await;
    assert_eq!(codes.len(), 10);
    // Stored only hashed.
    let stored = app
        .text("SELECT code_hash FROM recovery_codes ORDER BY id LIMIT 1")
        .await
        .unwrap();
    assert_eq!(stored.len(), 64);

    let challenge = password_step(&app, "carol").await;
    let typed = codes[0].to_uppercase().replace('-', " ");
    let signed_in = second_step(
        &app,
        json!({"mfa_token": challenge["mfa_token"], "method": "recovery_code", "code": typed}),
    )
    .await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let body: Value = signed_in.json().await.unwrap();
    let mfa_access = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(amr(&mfa_access), ["pwd", "otp", "mfa"]);
    let email = app
        .smtp
        .wait_for("carol@lab.org", "A recovery code was used")
        .await;
    assert!(email.text.contains("9 unused codes"), "{}", email.text);
    let used = app.audit_events("mfa.recovery_code_used").await;
    assert_eq!(used[0]["details"]["remaining"], 9);

    let challenge = password_step(&app, "carol").await;
    let reused = second_step(
        &app,
        json!({"mfa_token": challenge["mfa_token"], "method": "recovery_code", "code": codes[0]}),
    )
    .await;
    assert_problem(reused, StatusCode::UNAUTHORIZED).await;

    // A new set takes a session that proved a factor: the password-only one cannot.
    let not_proven = app
        .post(
            "/api/auth/mfa/recovery-codes",
            &json!({"password": PASSWORD}),
            Some(&tokens.access),
        )
        .await;
    let body = assert_problem(not_proven, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "step_up_required");
    let wrong_password = app
        .post(
            "/api/auth/mfa/recovery-codes",
            &json!({"password": "not the password"}),
            Some(&mfa_access),
        )
        .await;
    assert_problem(wrong_password, StatusCode::BAD_REQUEST).await;
    let regenerated = app
        .post(
            "/api/auth/mfa/recovery-codes",
            &json!({"password": PASSWORD}),
            Some(&mfa_access),
        )
        .await;
    assert_eq!(regenerated.status(), StatusCode::OK);
    assert_eq!(regenerated.headers()["cache-control"], "no-store");
    app.smtp
        .wait_for("carol@lab.org", "A second factor was added")
        .await;
    let fresh: Value = regenerated.json().await.unwrap();
    assert_eq!(fresh["recovery_codes"].as_array().unwrap().len(), 10);
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = {user_id} AND used_at IS NULL"
        ))
        .await,
        10
    );
    let challenge = password_step(&app, "carol").await;
    let voided = second_step(
        &app,
        json!({"mfa_token": challenge["mfa_token"], "method": "recovery_code", "code": codes[1]}),
    )
    .await;
    assert_problem(voided, StatusCode::UNAUTHORIZED).await;
    let fresh_code = fresh["recovery_codes"][0].as_str().unwrap();
    let challenge = password_step(&app, "carol").await;
    let accepted = second_step(
        &app,
        json!({"mfa_token": challenge["mfa_token"], "method": "recovery_code", "code": fresh_code}),
    )
    .await;
    assert_eq!(accepted.status(), StatusCode::OK);
}

#[tokio::test]
async fn disabling_totp_takes_the_password_and_a_code() {
    let app = spawn().await;
    let (user_id, tokens) = app.user("dave").await;
    let (phone, _) = enrol_totp(&app, &tokens.access).await;
    // The session signed in with the password alone: it proves the factor first.
    let unproven = app
        .post(
            "/api/auth/mfa/totp/disable",
            &json!({"password": PASSWORD, "code": phone.code(&app)}),
            Some(&tokens.access),
        )
        .await;
    let body = assert_problem(unproven, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "step_up_required");
    let access = step_up(&app, &tokens.access, &phone).await;

    let wrong_password = app
        .post(
            "/api/auth/mfa/totp/disable",
            &json!({"password": "nope nope nope", "code": phone.code(&app)}),
            Some(&access),
        )
        .await;
    let body = assert_problem(wrong_password, StatusCode::BAD_REQUEST).await;
    assert!(body["errors"]["password"].is_array());
    // A wrong code is a wrong second factor: refused and counted toward the lockout.
    let wrong_code = app
        .post(
            "/api/auth/mfa/totp/disable",
            &json!({"password": PASSWORD, "code": "000000"}),
            Some(&access),
        )
        .await;
    assert_problem(wrong_code, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT failed_login_count FROM users WHERE id = {user_id}"
        ))
        .await,
        1
    );
    assert_eq!(app.audit_events("auth.mfa_failed").await.len(), 1);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM totp_factors").await, 1);

    let disabled = app
        .post(
            "/api/auth/mfa/totp/disable",
            &json!({"password": PASSWORD, "code": phone.code(&app)}),
            Some(&access),
        )
        .await;
    assert_eq!(disabled.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM totp_factors").await, 0);
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = {user_id}"
        ))
        .await,
        0,
        "codes back up a factor; none is left"
    );
    app.smtp
        .wait_for("dave@lab.org", "A second factor was removed")
        .await;
    assert_eq!(app.audit_events("mfa.totp_disabled").await.len(), 1);
    // The password alone signs in again.
    let tokens = app.login("dave").await;
    assert_eq!(amr(&tokens.access), ["pwd"]);
    assert_eq!(tokens.body["user"]["mfa_enabled"], false);
}

/// Registers a passkey held by `authenticator` for the bearer of `token`; returns the
/// finish call's body and the user handle the options named.
async fn register_passkey(
    app: &TestApp,
    authenticator: &mut SoftPasskey,
    token: Option<&str>,
    start_body: Value,
    name: &str,
) -> (Value, String) {
    let start = app
        .post("/api/auth/mfa/passkeys/register/start", &start_body, token)
        .await;
    assert_eq!(start.status(), StatusCode::OK);
    let start: Value = start.json().await.unwrap();
    let user_handle = start["webauthn"]["publicKey"]["user"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let options: CreationChallengeResponse =
        serde_json::from_value(start["webauthn"].clone()).unwrap();
    let credential = authenticator
        .do_registration(Url::parse(ORIGIN).unwrap(), options)
        .unwrap();
    let finish = app
        .post(
            "/api/auth/mfa/passkeys/register/finish",
            &json!({
                "registration_token": start["registration_token"],
                "name": name,
                "credential": credential,
            }),
            None,
        )
        .await;
    assert_eq!(finish.status(), StatusCode::CREATED);
    (finish.json().await.unwrap(), user_handle)
}

/// Answers WebAuthn request options with the software passkey.
fn assert_with(authenticator: &mut SoftPasskey, options: &Value) -> Value {
    let options: RequestChallengeResponse = serde_json::from_value(options.clone()).unwrap();
    let assertion = authenticator
        .do_authentication(Url::parse(ORIGIN).unwrap(), options)
        .unwrap();
    serde_json::to_value(assertion).unwrap()
}

fn soft_passkey() -> SoftPasskey {
    // `true`: the soft key reports user verification (a PIN or a fingerprint), which
    // passkeys require.
    SoftPasskey::new(true)
}

#[tokio::test]
async fn a_passkey_is_a_second_factor_and_signs_in_alone() {
    let app = spawn().await;
    let (user_id, tokens) = app.user("erin").await;
    let mut authenticator = soft_passkey();
    let (finished, user_handle) = register_passkey(
        &app,
        &mut authenticator,
        Some(&tokens.access),
        json!({}),
        "Work laptop",
    )
    .await;
    assert_eq!(finished["passkey"]["name"], "Work laptop");
    assert_eq!(finished["recovery_codes"].as_array().unwrap().len(), 10);
    let passkey_id = finished["passkey"]["id"].as_i64().unwrap();
    app.smtp
        .wait_for("erin@lab.org", "A second factor was added")
        .await;
    assert_eq!(app.audit_events("mfa.passkey_added").await.len(), 1);
    let listed: Value = app
        .get("/api/auth/mfa/passkeys", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["id"], passkey_id);
    let renamed = app
        .patch(
            &format!("/api/auth/mfa/passkeys/{passkey_id}"),
            &json!({"name": "YubiKey 5"}),
            Some(&tokens.access),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::NO_CONTENT);
    let status: Value = app
        .get("/api/auth/mfa", Some(&tokens.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["passkeys"][0]["name"], "YubiKey 5");
    assert_eq!(status["methods"], json!(["recovery_code", "webauthn"]));

    // As the second factor: the login's answer carries the WebAuthn request options.
    let challenge = password_step(&app, "erin").await;
    assert!(
        challenge["methods"]
            .as_array()
            .unwrap()
            .contains(&json!("webauthn"))
    );
    let assertion = assert_with(&mut authenticator, &challenge["webauthn"]);
    let signed_in = second_step(
        &app,
        json!({"mfa_token": challenge["mfa_token"], "method": "webauthn", "assertion": assertion}),
    )
    .await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let body: Value = signed_in.json().await.unwrap();
    assert_eq!(
        amr(body["access_token"].as_str().unwrap()),
        ["pwd", "hwk", "mfa"]
    );
    let spent = second_step(
        &app,
        json!({"mfa_token": challenge["mfa_token"], "method": "webauthn", "assertion": assertion}),
    )
    .await;
    assert_problem(spent, StatusCode::UNAUTHORIZED).await;
    // An assertion is good once: replaying it on a new challenge fails too.
    let challenge = password_step(&app, "erin").await;
    let replayed = second_step(
        &app,
        json!({"mfa_token": challenge["mfa_token"], "method": "webauthn", "assertion": assertion}),
    )
    .await;
    assert_problem(replayed, StatusCode::UNAUTHORIZED).await;

    // Alone, with no name and no password: a discoverable credential names its account.
    // The soft key keeps no resident credentials, so the test plays the browser's part: it
    // points the key at its credential and hands back the user handle (which is not
    // signed, exactly as a resident-key authenticator returns it).
    let start = app.post("/api/auth/login/passkey", &json!({}), None).await;
    assert_eq!(start.status(), StatusCode::OK);
    let start: Value = start.json().await.unwrap();
    let credential_id = app
        .text("SELECT credential_id FROM passkeys")
        .await
        .unwrap();
    let mut options = start["webauthn"].clone();
    assert_eq!(options["publicKey"]["allowCredentials"], json!([]));
    options["publicKey"]["allowCredentials"] = json!([{"type": "public-key", "id": credential_id}]);
    let mut assertion = assert_with(&mut authenticator, &options);
    assertion["response"]["userHandle"] = json!(user_handle);
    let passwordless = second_step(
        &app,
        json!({"mfa_token": start["mfa_token"], "method": "webauthn", "assertion": assertion}),
    )
    .await;
    assert_eq!(passwordless.status(), StatusCode::OK);
    let body: Value = passwordless.json().await.unwrap();
    assert_eq!(body["user"]["id"], user_id);
    let access = body["access_token"].as_str().unwrap().to_string();
    assert_eq!(amr(&access), ["hwk", "mfa"]);

    // Removing a factor takes a session that proved one: the password-only session of
    // before cannot; the passkey's can.
    let refused = app
        .delete(
            &format!("/api/auth/mfa/passkeys/{passkey_id}"),
            Some(&tokens.access),
        )
        .await;
    let body = assert_problem(refused, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "step_up_required");
    let removed = app
        .delete(
            &format!("/api/auth/mfa/passkeys/{passkey_id}"),
            Some(&access),
        )
        .await;
    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.scalar("SELECT COUNT(*) FROM passkeys").await, 0);
    app.smtp
        .wait_for("erin@lab.org", "A second factor was removed")
        .await;
    assert_eq!(app.audit_events("mfa.passkey_removed").await.len(), 1);
}

#[tokio::test]
async fn step_up_raises_a_sessions_assurance_and_refreshes_keep_it() {
    let app = spawn().await;
    let (_, tokens) = app.user("frank").await;
    let (phone, _) = enrol_totp(&app, &tokens.access).await;
    assert_eq!(amr(&tokens.access), ["pwd"]);

    let wrong = app
        .post(
            "/api/auth/step-up",
            &json!({"method": "totp", "code": "000000"}),
            Some(&tokens.access),
        )
        .await;
    assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
    app.clock.advance(Duration::from_secs(600));
    let stepped = app
        .post(
            "/api/auth/step-up",
            &json!({"method": "totp", "code": phone.code(&app)}),
            Some(&tokens.access),
        )
        .await;
    assert_eq!(stepped.status(), StatusCode::OK);
    let pair: Value = stepped.json().await.unwrap();
    let access = pair["access_token"].as_str().unwrap();
    assert_eq!(amr(access), ["pwd", "otp", "mfa"]);
    let (_, claims) = jwt_parts(access);
    assert_eq!(claims["auth_time"], app.clock.now() / 1000);
    assert_eq!(claims["sid"], jwt_parts(&tokens.access).1["sid"]);

    // The session keeps it: a refresh carries it along. The refresh token issued before the
    // step-up was retired by it (one stolen earlier is not raised with the session).
    let refreshed: Value = app
        .refresh(pair["refresh_token"].as_str().unwrap())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        amr(refreshed["access_token"].as_str().unwrap()),
        ["pwd", "otp", "mfa"]
    );
    assert_problem(app.refresh(&tokens.refresh).await, StatusCode::UNAUTHORIZED).await;
    let events = app.audit_events("auth.step_up").await;
    assert_eq!(events[0]["details"]["method"], "totp");
    assert_eq!(app.audit_events("auth.mfa_failed").await.len(), 1);
}

#[tokio::test]
async fn an_admin_without_a_factor_must_enrol_one_to_sign_in() {
    let app = spawn_app_with(&[
        ("UMS_WEBAUTHN_ORIGINS", ORIGIN),
        ("UMS_REQUIRE_MFA_FOR_ADMINS", "true"),
    ])
    .await;
    ums::users::service::ensure_admin(
        &app.state.store,
        &app.state.hasher,
        8,
        "root",
        "root@admins.org",
        &secrecy::SecretString::from(PASSWORD.to_string()),
        app.clock.now(),
    )
    .await
    .unwrap();

    let response = app.login_response("root", PASSWORD).await;
    let body = assert_problem(response, StatusCode::UNAUTHORIZED).await;
    assert_eq!(body["code"], "mfa_enrollment_required");
    assert_eq!(body["methods"], json!(["totp", "webauthn"]));
    assert!(body.get("access_token").is_none());
    let mfa_token = body["mfa_token"].as_str().unwrap();

    // The token enrols (no bearer token exists yet) and the first code both confirms the
    // app and finishes the sign-in, with the recovery codes.
    let enrollment: Value = app
        .post(
            "/api/auth/mfa/totp/enroll",
            &json!({"mfa_token": mfa_token}),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    let phone = App::scan(enrollment["otpauth_uri"].as_str().unwrap());
    let signed_in = second_step(
        &app,
        json!({"mfa_token": mfa_token, "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let body: Value = signed_in.json().await.unwrap();
    assert_eq!(body["recovery_codes"].as_array().unwrap().len(), 10);
    assert_eq!(body["user"]["mfa_enabled"], true);
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(amr(access), ["pwd", "otp", "mfa"]);

    // An admin keeps a factor while the policy holds.
    app.clock.advance(Duration::from_secs(30));
    let keep = app
        .post(
            "/api/auth/mfa/totp/disable",
            &json!({"password": PASSWORD, "code": phone.code(&app)}),
            Some(access),
        )
        .await;
    assert_problem(keep, StatusCode::CONFLICT).await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM totp_factors").await, 1);
    // The next sign-in asks for the factor.
    password_step(&app, "root").await;

    // Admin rights need a session that proved a factor: a user promoted while signed in with
    // a password alone cannot use them.
    let (ops_id, ops) = app.user("ops").await;
    let promoted = app
        .patch(
            &format!("/api/users/{ops_id}"),
            &json!({"is_admin": true}),
            Some(access),
        )
        .await;
    assert_eq!(promoted.status(), StatusCode::OK);
    let refused = app.get("/api/users", Some(&ops.access)).await;
    let body = assert_problem(refused, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "mfa_enrollment_required");
    assert_eq!(
        app.get("/api/users", Some(access)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_lab_that_requires_a_factor_refuses_members_without_one() {
    let app = spawn().await;
    let admin = app.admin("root").await;
    let lab_id = app.create_lab(&admin.access, "GEN").await;
    let (member_id, member) = app.user("gina").await;
    app.add_member(&admin.access, lab_id, member_id, "member")
        .await;
    assert_eq!(
        app.get(&format!("/api/labs/{lab_id}/access"), Some(&member.access))
            .await
            .status(),
        StatusCode::OK
    );

    let set = app
        .patch(
            &format!("/api/labs/{lab_id}"),
            &json!({"require_mfa": true}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(set.status(), StatusCode::OK);
    let lab: Value = set.json().await.unwrap();
    assert_eq!(lab["require_mfa"], true);
    let updated = app.audit_events("lab.updated").await;
    assert_eq!(
        updated.last().unwrap()["details"]["changed"]["require_mfa"],
        json!({"from": false, "to": true})
    );
    // Only system admins set it: a lab admin cannot.
    let (boss_id, boss) = app.user("hank").await;
    app.add_member(&admin.access, lab_id, boss_id, "lab_admin")
        .await;
    let refused = app
        .patch(
            &format!("/api/labs/{lab_id}"),
            &json!({"require_mfa": false}),
            Some(&boss.access),
        )
        .await;
    assert_problem(refused, StatusCode::FORBIDDEN).await;

    for path in [
        format!("/api/labs/{lab_id}/access"),
        format!("/api/labs/{lab_id}"),
    ] {
        let response = app.get(&path, Some(&member.access)).await;
        let body = assert_problem(response, StatusCode::FORBIDDEN).await;
        assert_eq!(body["code"], "mfa_enrollment_required", "{path}");
    }
    // Enrolling is not enough for this password-only session: it must prove the factor.
    let (phone, _) = enrol_totp(&app, &member.access).await;
    let response = app
        .get(&format!("/api/labs/{lab_id}/access"), Some(&member.access))
        .await;
    let body = assert_problem(response, StatusCode::FORBIDDEN).await;
    assert_eq!(body["code"], "step_up_required");
    let stepped = step_up(&app, &member.access, &phone).await;
    let access: Value = app
        .get(&format!("/api/labs/{lab_id}/access"), Some(&stepped))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(access["role"], "member");
}

#[tokio::test]
async fn an_admin_resets_a_users_factors_audited_and_emailed() {
    let app = spawn().await;
    let admin = app.admin("root").await;
    let (user_id, tokens) = app.user("ivy").await;
    let (phone, _) = enrol_totp(&app, &tokens.access).await;
    // A second factor is added from a session that proved the first.
    let mut authenticator = soft_passkey();
    let unproven = app
        .post(
            "/api/auth/mfa/passkeys/register/start",
            &json!({}),
            Some(&tokens.access),
        )
        .await;
    assert_problem(unproven, StatusCode::FORBIDDEN).await;
    let stepped = step_up(&app, &tokens.access, &phone).await;
    register_passkey(&app, &mut authenticator, Some(&stepped), json!({}), "Phone").await;

    let (_, other) = app.user("jack").await;
    let refused = app
        .delete(&format!("/api/users/{user_id}/mfa"), Some(&other.access))
        .await;
    assert_problem(refused, StatusCode::FORBIDDEN).await;
    let reset = app
        .delete(&format!("/api/users/{user_id}/mfa"), Some(&admin.access))
        .await;
    assert_eq!(reset.status(), StatusCode::NO_CONTENT);
    for table in ["totp_factors", "passkeys", "recovery_codes"] {
        assert_eq!(
            app.scalar(&format!(
                "SELECT COUNT(*) FROM {table} WHERE user_id = {user_id}"
            ))
            .await,
            0,
            "{table}"
        );
    }
    let email = app
        .smtp
        .wait_for("ivy@lab.org", "A second factor was removed")
        .await;
    assert!(
        email.text.contains("An administrator removed"),
        "{}",
        email.text
    );
    let events = app.audit_events("mfa.reset").await;
    assert_eq!(events[0]["resource_id"], user_id.to_string());
    assert_eq!(events[0]["details"]["passkeys"], 1);
    assert_eq!(events[0]["details"]["totp"], true);
    assert_eq!(events[0]["details"]["sessions_ended"], 1);
    // The user's sessions ended with the factors.
    assert_problem(
        app.get("/api/auth/me", Some(&stepped)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let tokens = app.login("ivy").await;
    assert_eq!(amr(&tokens.access), ["pwd"]);
}

#[tokio::test]
async fn second_factor_requests_with_bad_input_get_a_problem_and_change_nothing() {
    let app = spawn().await;
    let (_, tokens) = app.user("kate").await;
    let (phone, _) = enrol_totp(&app, &tokens.access).await;
    let challenge = password_step(&app, "kate").await;
    let mfa_token = challenge["mfa_token"].as_str().unwrap();
    for (body, field) in [
        (json!({"mfa_token": mfa_token, "method": "totp"}), "code"),
        (
            json!({"mfa_token": mfa_token, "method": "webauthn", "assertion": {"id": 1}}),
            "assertion",
        ),
    ] {
        let response = second_step(&app, body).await;
        let problem = assert_problem(response, StatusCode::BAD_REQUEST).await;
        assert!(problem["errors"][field].is_array(), "{problem}");
    }
    let unknown_method = second_step(
        &app,
        json!({"mfa_token": mfa_token, "method": "sms", "code": "123456"}),
    )
    .await;
    assert_problem(unknown_method, StatusCode::BAD_REQUEST).await;
    let made_up = second_step(
        &app,
        json!({"mfa_token": "made-up", "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_problem(made_up, StatusCode::UNAUTHORIZED).await;
    // None of it counted or spent the token: the right code still signs in.
    assert_eq!(
        app.scalar("SELECT failed_login_count FROM users WHERE username = 'kate'")
            .await,
        0
    );
    assert_eq!(
        app.scalar("SELECT CAST(COALESCE(MAX(failures), 0) AS BIGINT) FROM mfa_challenges")
            .await,
        0
    );
    let signed_in = second_step(
        &app,
        json!({"mfa_token": mfa_token, "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let bad_name = app
        .patch(
            "/api/auth/mfa/passkeys/1",
            &json!({"name": ""}),
            Some(&tokens.access),
        )
        .await;
    assert_problem(bad_name, StatusCode::BAD_REQUEST).await;
}

#[tokio::test]
async fn an_admin_may_enrol_a_passkey_as_the_first_factor_while_signing_in() {
    let app = spawn_app_with(&[
        ("UMS_WEBAUTHN_ORIGINS", ORIGIN),
        ("UMS_REQUIRE_MFA_FOR_ADMINS", "true"),
    ])
    .await;
    ums::users::service::ensure_admin(
        &app.state.store,
        &app.state.hasher,
        8,
        "root",
        "root@admins.org",
        &secrecy::SecretString::from(PASSWORD.to_string()),
        app.clock.now(),
    )
    .await
    .unwrap();
    let body = assert_problem(
        app.login_response("root", PASSWORD).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let mfa_token = body["mfa_token"].as_str().unwrap().to_string();
    let before = app.get("/metrics", None).await.text().await.unwrap();
    let mut authenticator = soft_passkey();
    let (finished, _) = register_passkey(
        &app,
        &mut authenticator,
        None,
        json!({"mfa_token": mfa_token}),
        "Admin key",
    )
    .await;
    assert_eq!(finished["recovery_codes"].as_array().unwrap().len(), 10);

    // The same token now asks for the passkey: first its request options, then the answer.
    let options = second_step(&app, json!({"mfa_token": mfa_token, "method": "webauthn"})).await;
    let options = assert_problem(options, StatusCode::UNAUTHORIZED).await;
    assert_eq!(options["code"], "mfa_required");
    assert_eq!(options["mfa_token"], mfa_token.as_str());
    let assertion = assert_with(&mut authenticator, &options["webauthn"]);
    let signed_in = second_step(
        &app,
        json!({"mfa_token": mfa_token, "method": "webauthn", "assertion": assertion}),
    )
    .await;
    assert_eq!(signed_in.status(), StatusCode::OK);
    let body: Value = signed_in.json().await.unwrap();
    assert_eq!(
        amr(body["access_token"].as_str().unwrap()),
        ["pwd", "hwk", "mfa"]
    );
    // A made-up enrolment token enrols nothing.
    let refused = app
        .post(
            "/api/auth/mfa/totp/enroll",
            &json!({"mfa_token": "made-up"}),
            None,
        )
        .await;
    assert_problem(refused, StatusCode::UNAUTHORIZED).await;
    let after = app.get("/metrics", None).await.text().await.unwrap();
    let moved = |name: &str| series(&after, name) - series(&before, name);
    assert_eq!(
        moved(r#"ums_mfa_verifications_total{method="webauthn",result="success"}"#),
        1.0
    );
    assert_eq!(
        moved(r#"ums_mfa_enrollments_total{method="webauthn"}"#),
        1.0
    );
}

#[tokio::test]
async fn a_token_answers_only_its_own_step_and_every_wrong_code_counts() {
    let app = spawn().await;
    let (user_id, tokens) = app.user("liam").await;
    // A passkey registration token is no sign-in token, and a sign-in token enrols nothing.
    let registration: Value = app
        .post(
            "/api/auth/mfa/passkeys/register/start",
            &json!({}),
            Some(&tokens.access),
        )
        .await
        .json()
        .await
        .unwrap();
    let (phone, _) = enrol_totp(&app, &tokens.access).await;
    let confused = second_step(
        &app,
        json!({"mfa_token": registration["registration_token"], "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_problem(confused, StatusCode::UNAUTHORIZED).await;
    let challenge = password_step(&app, "liam").await;
    let enrol_with_login_token = app
        .post(
            "/api/auth/mfa/totp/enroll",
            &json!({"mfa_token": challenge["mfa_token"]}),
            None,
        )
        .await;
    assert_problem(enrol_with_login_token, StatusCode::UNAUTHORIZED).await;

    // A wrong code in the one-step login counts like a wrong password.
    let one_step = app
        .post(
            "/api/auth/login",
            &json!({"username": "liam", "password": PASSWORD, "totp_code": "000000"}),
            None,
        )
        .await;
    assert_problem(one_step, StatusCode::UNAUTHORIZED).await;
    // So does a wrong step-up.
    let wrong = app
        .post(
            "/api/auth/step-up",
            &json!({"method": "totp", "code": "000000"}),
            Some(&tokens.access),
        )
        .await;
    assert_problem(wrong, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.scalar(&format!(
            "SELECT failed_login_count FROM users WHERE id = {user_id}"
        ))
        .await,
        2
    );
    // A deactivated account's pending sign-in does not finish.
    app.execute(&[&format!(
        "UPDATE users SET is_active = {} WHERE id = {user_id}",
        app_false(&app)
    )])
    .await;
    let inactive = second_step(
        &app,
        json!({"mfa_token": challenge["mfa_token"], "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_problem(inactive, StatusCode::UNAUTHORIZED).await;
}

/// `false` in this database's boolean column.
fn app_false(app: &TestApp) -> &'static str {
    match app.state.store.backend() {
        ums::store::Backend::Postgres => "false",
        _ => "0",
    }
}

#[tokio::test]
async fn erasing_an_account_with_a_factor_takes_a_recent_proof_of_it() {
    let app = spawn().await;
    let (fay, tokens) = app.user("fay").await;
    let (phone, _) = enrol_totp(&app, &tokens.access).await;
    let body = password_step(&app, "fay").await;
    let response = second_step(
        &app,
        json!({"mfa_token": body["mfa_token"], "method": "totp", "code": phone.code(&app)}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    app.clock.advance(Duration::from_secs(30));
    let signed_in: Value = response.json().await.unwrap();
    let access = signed_in["access_token"].as_str().unwrap().to_string();

    // Eleven minutes on, the password alone is not enough.
    app.clock.advance(Duration::from_secs(11 * 60));
    let refused = app
        .delete_with(
            "/api/users/me",
            &json!({"password": PASSWORD}),
            Some(&access),
        )
        .await;
    let problem = assert_problem(refused, StatusCode::FORBIDDEN).await;
    assert_eq!(problem["code"], "step_up_required", "{problem}");
    let still = format!("SELECT COUNT(*) FROM totp_factors WHERE user_id = {fay}");
    assert_eq!(app.scalar(&still).await, 1);

    // With the factor proved again, the account and its factors go.
    let raised = step_up(&app, &access, &phone).await;
    let erased = app
        .delete_with(
            "/api/users/me",
            &json!({"password": PASSWORD}),
            Some(&raised),
        )
        .await;
    assert_eq!(erased.status(), StatusCode::OK);
    assert_eq!(app.scalar(&still).await, 0);
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = {fay}"
        ))
        .await,
        0
    );
    let report = ums::audit::verify::verify(&app.state.store, None)
        .await
        .unwrap();
    assert_eq!(report.finding, None);
}

#[tokio::test]
async fn a_passwordless_sign_in_asks_for_new_terms_and_then_opens_its_session() {
    let app = spawn().await;
    let (user_id, tokens) = app.user("gus").await;
    let mut authenticator = soft_passkey();
    let (_, user_handle) = register_passkey(
        &app,
        &mut authenticator,
        Some(&tokens.access),
        json!({}),
        "Laptop",
    )
    .await;
    // New terms come into force.
    let renewed =
        crate::helpers::spawn_second_instance_with(&app, &[("UMS_TERMS_VERSION", "2")]).await;
    let start: Value = renewed
        .post("/api/auth/login/passkey", &json!({}), None)
        .await
        .json()
        .await
        .unwrap();
    let credential_id = app
        .text("SELECT credential_id FROM passkeys")
        .await
        .unwrap();
    let mut options = start["webauthn"].clone();
    options["publicKey"]["allowCredentials"] = json!([{"type": "public-key", "id": credential_id}]);
    let mut assertion = assert_with(&mut authenticator, &options);
    assertion["response"]["userHandle"] = json!(user_handle);
    let answer = renewed
        .post(
            "/api/auth/login/mfa",
            &json!({"mfa_token": start["mfa_token"], "method": "webauthn", "assertion": assertion}),
            None,
        )
        .await;
    let asked = assert_problem(answer, StatusCode::UNAUTHORIZED).await;
    assert_eq!(asked["code"], "consent_required", "{asked}");
    assert_eq!(asked["methods"], json!(["consent"]));
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND user_id = {user_id}"
        ))
        .await,
        1,
        "no session opens before the consent"
    );

    let wrong = renewed
        .post(
            "/api/auth/login/consent",
            &json!({"mfa_token": asked["mfa_token"], "accept_terms": "1"}),
            None,
        )
        .await;
    assert_problem(wrong, StatusCode::BAD_REQUEST).await;
    let accepted = renewed
        .post(
            "/api/auth/login/consent",
            &json!({"mfa_token": asked["mfa_token"], "accept_terms": "2"}),
            None,
        )
        .await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let body: Value = accepted.json().await.unwrap();
    assert_eq!(body["user"]["id"], user_id);
    // The passkey was both factors: no second step after the consent.
    assert_eq!(amr(body["access_token"].as_str().unwrap()), ["hwk", "mfa"]);
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM consents WHERE user_id = {user_id} AND document = 'terms' AND version = '2'"
        ))
        .await,
        1
    );
    let spent = renewed
        .post(
            "/api/auth/login/consent",
            &json!({"mfa_token": asked["mfa_token"], "accept_terms": "2"}),
            None,
        )
        .await;
    assert_problem(spent, StatusCode::UNAUTHORIZED).await;
}
