//! Privacy by design: lab invitations instead of directory probing, member lists that show
//! addresses only to those who manage the lab, and a person's data exported.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, spawn_app};

/// Verifies `address` with the link of the welcome email sent to it.
async fn verify(app: &TestApp, address: &str) {
    let welcome = app.smtp.wait_for(address, "Welcome").await;
    let response = app
        .post(
            "/api/auth/verify-email",
            &json!({"token": welcome.token()}),
            None,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
}

async fn invite(
    app: &TestApp,
    token: &str,
    lab: i64,
    email: &str,
    role: &str,
) -> (StatusCode, Value) {
    let response = app
        .post(
            &format!("/api/labs/{lab}/invitations"),
            &json!({"email": email, "role": role}),
            Some(token),
        )
        .await;
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// `POST /api/invitations/{accept|decline}` with the token of an invitation email.
async fn answer(app: &TestApp, verb: &str, token: &str, access: Option<&str>) -> reqwest::Response {
    app.post(
        &format!("/api/invitations/{verb}"),
        &json!({"token": token}),
        access,
    )
    .await
}

/// A JSON answer of a GET.
async fn read(app: &TestApp, path: &str, access: &str) -> Value {
    app.get(path, Some(access)).await.json().await.unwrap()
}

/// The statuses of a lab's invitations, newest first.
async fn statuses(app: &TestApp, lab: i64, access: &str) -> Vec<String> {
    read(app, &format!("/api/labs/{lab}/invitations"), access)
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|invitation| invitation["status"].as_str().unwrap().to_owned())
        .collect()
}

/// The invitation's answer without what differs by design between two invitations.
fn shape(mut invitation: Value) -> Value {
    for varying in ["id", "email", "created_at", "expires_at"] {
        invitation.as_object_mut().unwrap().remove(varying);
    }
    invitation
}

#[tokio::test]
async fn a_lab_admin_invites_by_address_and_cannot_tell_whether_it_has_an_account() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (boss, boss_tokens) = app.user("boss").await;
    app.add_member(&admin.access, lab, boss, "lab_admin").await;
    let (carol, carol_tokens) = app.user("carol").await;
    verify(&app, "carol@lab.org").await;

    // Adding by id is for system admins: it would tell a lab admin which ids exist.
    let by_id = app
        .post(
            &format!("/api/labs/{lab}/members"),
            &json!({"user_id": carol, "role": "member"}),
            Some(&boss_tokens.access),
        )
        .await;
    assert_problem(by_id, StatusCode::FORBIDDEN).await;

    // An address with an account and one without get the same answer.
    let (known_status, known) =
        invite(&app, &boss_tokens.access, lab, "Carol@Lab.org", "member").await;
    let (unknown_status, unknown) = invite(
        &app,
        &boss_tokens.access,
        lab,
        "nobody@elsewhere.org",
        "member",
    )
    .await;
    assert_eq!(known_status, StatusCode::ACCEPTED);
    assert_eq!(unknown_status, StatusCode::ACCEPTED);
    assert_eq!(shape(known.clone()), shape(unknown.clone()));
    assert_eq!(known["email"], "carol@lab.org", "addresses are normalised");
    assert_eq!(known["status"], "pending");
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM lab_invitations WHERE status = 'pending'")
            .await,
        2
    );
    // Both people get an email; the one without an account is led through registration.
    let to_carol = app
        .smtp
        .wait_for("carol@lab.org", "You are invited to a lab")
        .await;
    assert!(
        to_carol
            .link()
            .starts_with("http://ums.test/invitations/accept?token=")
    );
    assert!(to_carol.text.contains("Lab GEN") && to_carol.text.contains("member"));
    let to_stranger = app
        .smtp
        .wait_for("nobody@elsewhere.org", "You are invited to a lab")
        .await;
    assert!(
        to_stranger
            .link()
            .starts_with("http://ums.test/register?invitation=")
    );
    assert!(
        to_stranger.text.starts_with("Hello,"),
        "a stranger is greeted by no name"
    );
    // The token is stored hashed.
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM lab_invitations WHERE token_hash = '{}'",
            to_carol.token()
        ))
        .await,
        0
    );
    let sent = app.audit_events("lab.invitation_sent").await;
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["user_id"], boss);
    assert_eq!(sent[0]["details"]["invitation_id"], known["id"]);
    assert!(sent[0]["details"].get("email").is_none());

    // Carol accepts, signed in with the invited, verified address.
    let accepted = answer(
        &app,
        "accept",
        &to_carol.token(),
        Some(&carol_tokens.access),
    )
    .await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let member: Value = accepted.json().await.unwrap();
    assert_eq!(member["user"]["id"], carol);
    assert_eq!(member["role"], "member");
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM lab_memberships WHERE lab_id = {lab} AND user_id = {carol} AND role = 'member'"
        ))
        .await,
        1
    );
    let events = app.audit_events("lab.invitation_accepted").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["user_id"], carol);
    assert_eq!(events[0]["resource_id"], format!("{lab}:{carol}"));
    // A link answers once.
    let again = answer(
        &app,
        "accept",
        &to_carol.token(),
        Some(&carol_tokens.access),
    )
    .await;
    assert_problem(again, StatusCode::BAD_REQUEST).await;

    // The lab's list shows both, with their states; a member cannot read it.
    assert_eq!(
        statuses(&app, lab, &boss_tokens.access).await,
        ["pending", "accepted"]
    );
    let as_member = app
        .get(
            &format!("/api/labs/{lab}/invitations"),
            Some(&carol_tokens.access),
        )
        .await;
    assert_problem(as_member, StatusCode::FORBIDDEN).await;

    // Members see names; addresses only those who manage the lab.
    let seen_by_member: Value = read(
        &app,
        &format!("/api/labs/{lab}/members"),
        &carol_tokens.access,
    )
    .await;
    assert_eq!(seen_by_member.as_array().unwrap().len(), 2);
    assert!(seen_by_member.as_array().unwrap().iter().all(|member| {
        member["user"].get("email").is_none() && member["user"]["username"].is_string()
    }));
    let seen_by_boss: Value = read(
        &app,
        &format!("/api/labs/{lab}/members"),
        &boss_tokens.access,
    )
    .await;
    assert!(
        seen_by_boss
            .as_array()
            .unwrap()
            .iter()
            .all(|member| member["user"]["email"].is_string())
    );
}

#[tokio::test]
async fn only_the_invited_verified_address_accepts_and_links_end() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (_, dave_tokens) = app.user("dave").await;
    let (erin, erin_tokens) = app.user("erin").await;

    invite(&app, &admin.access, lab, "erin@lab.org", "viewer").await;
    let to_erin = app
        .smtp
        .wait_for("erin@lab.org", "You are invited to a lab")
        .await;
    // Someone else holding the link cannot take it up.
    let by_dave = answer(&app, "accept", &to_erin.token(), Some(&dave_tokens.access)).await;
    assert_problem(by_dave, StatusCode::FORBIDDEN).await;
    // Nor Erin before she has proven the address.
    let unverified = answer(&app, "accept", &to_erin.token(), Some(&erin_tokens.access)).await;
    assert_problem(unverified, StatusCode::FORBIDDEN).await;
    assert_eq!(app.scalar("SELECT COUNT(*) FROM lab_memberships").await, 0);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM lab_invitations WHERE status = 'pending'")
            .await,
        1,
        "a refused answer leaves the invitation open"
    );
    // Without a sign-in, accepting is refused.
    let anonymous = answer(&app, "accept", &to_erin.token(), None).await;
    assert_problem(anonymous, StatusCode::UNAUTHORIZED).await;

    // A second invitation replaces the first: the first link stops working.
    invite(&app, &admin.access, lab, "erin@lab.org", "member").await;
    let second = app
        .smtp
        .wait_for_nth("erin@lab.org", "You are invited to a lab", 2)
        .await;
    verify(&app, "erin@lab.org").await;
    let stale = answer(&app, "accept", &to_erin.token(), Some(&erin_tokens.access)).await;
    assert_problem(stale, StatusCode::BAD_REQUEST).await;
    // Not into an inactive lab; the invitation waits for it.
    app.post(
        &format!("/api/labs/{lab}/deactivate"),
        &json!({}),
        Some(&admin.access),
    )
    .await;
    let inactive = answer(&app, "accept", &second.token(), Some(&erin_tokens.access)).await;
    assert_problem(inactive, StatusCode::FORBIDDEN).await;
    app.post(
        &format!("/api/labs/{lab}/activate"),
        &json!({}),
        Some(&admin.access),
    )
    .await;

    // Expired: seven days on, the second link is dead too.
    app.clock.advance(Duration::from_secs(7 * 86_400 + 1));
    let erin_tokens = app.login("erin").await;
    let admin = app.login("root").await;
    let expired = answer(&app, "accept", &second.token(), Some(&erin_tokens.access)).await;
    assert_problem(expired, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        statuses(&app, lab, &admin.access).await,
        ["expired", "revoked"]
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM lab_memberships WHERE user_id = {erin}"
        ))
        .await,
        0
    );
}

#[tokio::test]
async fn invitations_are_declined_revoked_and_checked() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let other = app.create_lab(&admin.access, "OTHER").await;
    let (boss, boss_tokens) = app.user("boss").await;
    app.add_member(&admin.access, lab, boss, "lab_admin").await;

    // Bad input changes nothing.
    let (status, body) = invite(&app, &boss_tokens.access, lab, "not an address", "owner").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"]["email"].is_array() && body["errors"]["role"].is_array());
    assert_eq!(app.scalar("SELECT COUNT(*) FROM lab_invitations").await, 0);
    // A lab admin of one lab cannot invite to another.
    let (status, _) = invite(&app, &boss_tokens.access, other, "x@lab.org", "member").await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Declined by the link alone.
    invite(&app, &boss_tokens.access, lab, "frank@lab.org", "member").await;
    let to_frank = app
        .smtp
        .wait_for("frank@lab.org", "You are invited to a lab")
        .await;
    let declined = answer(&app, "decline", &to_frank.token(), None).await;
    assert_eq!(declined.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.audit_events("lab.invitation_declined").await.len(), 1);
    let twice = answer(&app, "decline", &to_frank.token(), None).await;
    assert_problem(twice, StatusCode::BAD_REQUEST).await;

    // Revoked by the lab admin: the link no longer works; revoking again is a conflict.
    let (_, pending) = invite(&app, &boss_tokens.access, lab, "gina@lab.org", "viewer").await;
    let to_gina = app
        .smtp
        .wait_for("gina@lab.org", "You are invited to a lab")
        .await;
    let id = pending["id"].as_i64().unwrap();
    let from_other_lab = app
        .delete(
            &format!("/api/labs/{other}/invitations/{id}"),
            Some(&admin.access),
        )
        .await;
    assert_problem(from_other_lab, StatusCode::NOT_FOUND).await;
    let revoked = app
        .delete(
            &format!("/api/labs/{lab}/invitations/{id}"),
            Some(&boss_tokens.access),
        )
        .await;
    assert_eq!(revoked.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.audit_events("lab.invitation_revoked").await.len(), 1);
    let again = app
        .delete(
            &format!("/api/labs/{lab}/invitations/{id}"),
            Some(&boss_tokens.access),
        )
        .await;
    assert_problem(again, StatusCode::CONFLICT).await;
    let decline_revoked = answer(&app, "decline", &to_gina.token(), None).await;
    assert_problem(decline_revoked, StatusCode::BAD_REQUEST).await;

    // Ended invitations are purged 90 days after their time ran out.
    assert_eq!(app.scalar("SELECT COUNT(*) FROM lab_invitations").await, 2);
    app.clock.advance(Duration::from_secs(98 * 86_400));
    ums::audit::archive::expire(&app.state.store, app.clock.now() - 1, app.clock.now())
        .await
        .unwrap();
    assert_eq!(app.scalar("SELECT COUNT(*) FROM lab_invitations").await, 0);
}

#[tokio::test]
async fn a_person_exports_everything_held_about_them_as_json_or_a_zip_of_csv() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (alice, alice_tokens) = app.user("alice").await;
    let (bob, bob_tokens) = app.user("bob").await;
    app.add_member(&admin.access, lab, alice, "member").await;
    app.login_response("alice", "wrong password").await;
    invite(&app, &admin.access, lab, "alice@lab.org", "viewer").await;

    let response = app
        .get(
            &format!("/api/users/{alice}/export"),
            Some(&alice_tokens.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(&format!("ums-user-{alice}.json"))
    );
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["format"], "ums-personal-data/1");
    assert_eq!(document["user_id"], alice);
    assert_eq!(document["profile"][0]["username"], "alice");
    assert_eq!(document["profile"][0]["email"], "alice@lab.org");
    assert_eq!(document["memberships"][0]["lab_code"], "GEN");
    assert_eq!(document["memberships"][0]["role"], "member");
    // One sign-in, one failed attempt.
    assert_eq!(document["sessions"].as_array().unwrap().len(), 1);
    let attempts = document["login_attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts
            .iter()
            .filter(|attempt| attempt["success"] == false)
            .count(),
        1
    );
    assert_eq!(document["invitations"][0]["role"], "viewer");
    assert_eq!(document["devices"].as_array().unwrap().len(), 1);
    assert!(document["second_factors"].as_array().unwrap().is_empty());
    let actions: Vec<&str> = document["audit_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"auth.register"), "{actions:?}");
    assert!(actions.contains(&"auth.login"));
    assert!(actions.contains(&"lab.member_added") && actions.contains(&"auth.login_failed"));
    // An event another person caused about this one keeps none of that person's address.
    let added = document["audit_events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|event| event["action"] == "lab.member_added")
        .unwrap();
    assert!(added["actor_ip"].is_null() && added["user_agent"].is_null());
    assert_ne!(added["user_id"], alice);
    // Nothing about another person, and no secret of any kind.
    let text = document.to_string();
    assert!(!text.contains("bob"));
    assert!(!text.contains("password_hash") && !text.contains("token_hash"));
    let exported = app.audit_events("user.data_exported").await;
    assert_eq!(exported.len(), 1);
    assert_eq!(exported[0]["user_id"], alice);
    assert_eq!(exported[0]["resource_id"], alice.to_string());

    // The same records as a zip of CSV files.
    let response = app
        .get(
            &format!("/api/users/{alice}/export?format=zip"),
            Some(&admin.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/zip");
    let bytes = response.bytes().await.unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).unwrap();
    let mut names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "README.txt",
            "audit_events.csv",
            "consents.csv",
            "devices.csv",
            "invitations.csv",
            "login_attempts.csv",
            "memberships.csv",
            "profile.csv",
            "second_factors.csv",
            "sessions.csv",
        ]
    );
    let mut profile = String::new();
    std::io::Read::read_to_string(&mut archive.by_name("profile.csv").unwrap(), &mut profile)
        .unwrap();
    let mut lines = profile.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert!(header.contains(&"username") && header.contains(&"email"));
    assert!(lines.next().unwrap().contains("alice@lab.org"));
    let mut events = String::new();
    std::io::Read::read_to_string(
        &mut archive.by_name("audit_events.csv").unwrap(),
        &mut events,
    )
    .unwrap();
    assert!(events.contains("auth.register"));

    // Another person's export is refused and recorded nowhere; bad formats change nothing.
    let refused = app
        .get(
            &format!("/api/users/{alice}/export"),
            Some(&bob_tokens.access),
        )
        .await;
    assert_problem(refused, StatusCode::FORBIDDEN).await;
    let bad = app
        .get(
            &format!("/api/users/{bob}/export?format=pdf"),
            Some(&bob_tokens.access),
        )
        .await;
    assert_problem(bad, StatusCode::BAD_REQUEST).await;
    assert_eq!(app.audit_events("user.data_exported").await.len(), 2);
}

#[tokio::test]
async fn sessions_links_and_devices_are_purged_each_past_its_own_window() {
    let app = crate::helpers::spawn_app_with(&[
        ("UMS_REFRESH_TOKEN_TTL", "7d"),
        ("UMS_VERIFICATION_TOKEN_TTL", "1d"),
    ])
    .await;
    let (alice, _) = app.user("alice").await;
    let count = |table: &'static str| {
        let app = &app;
        async move {
            app.scalar(&format!(
                "SELECT COUNT(*) FROM {table} WHERE user_id = {alice}"
            ))
            .await
        }
    };
    let purge = || async {
        let now = app.clock.now();
        ums::audit::archive::expire(&app.state.store, now - 400 * 86_400_000, now)
            .await
            .unwrap();
    };
    assert_eq!(count("sessions").await, 1);
    assert_eq!(count("devices").await, 1);
    assert_eq!(count("email_verification_tokens").await, 1);

    // The verification link expired after a day; 30 days later it is gone, the rest kept.
    app.clock.advance(Duration::from_secs(29 * 86_400));
    purge().await;
    assert_eq!(count("email_verification_tokens").await, 1);
    app.clock.advance(Duration::from_secs(3 * 86_400));
    purge().await;
    assert_eq!(count("email_verification_tokens").await, 0);
    assert_eq!(count("sessions").await, 1);

    // The session ended after 7 days: kept 90 days more (the sign-in history).
    app.clock
        .advance(Duration::from_secs((7 + 90 - 32 - 1) * 86_400));
    purge().await;
    assert_eq!(count("sessions").await, 1);
    app.clock.advance(Duration::from_secs(2 * 86_400));
    purge().await;
    assert_eq!(count("sessions").await, 0);
    assert_eq!(count("devices").await, 1);

    // A device unseen for a year is forgotten.
    app.clock.advance(Duration::from_secs((365 - 98) * 86_400));
    purge().await;
    assert_eq!(count("devices").await, 1);
    app.clock.advance(Duration::from_secs(2 * 86_400));
    purge().await;
    assert_eq!(count("devices").await, 0);
    assert_eq!(
        app.scalar(&format!("SELECT COUNT(*) FROM users WHERE id = {alice}"))
            .await,
        1,
        "the account itself stays"
    );
}

#[tokio::test]
async fn the_terms_in_force_are_accepted_at_registration_and_asked_again_when_they_change() {
    let app = crate::helpers::spawn_app_with(&[
        ("UMS_TERMS_VERSION", "2026-01"),
        ("UMS_PRIVACY_VERSION", "3"),
    ])
    .await;
    let current: Value = app.get("/api/consents", None).await.json().await.unwrap();
    assert_eq!(
        current,
        json!({"terms_version": "2026-01", "privacy_version": "3"})
    );

    // Registration refuses without the versions in force, naming each field.
    let register = |accept: Value| {
        let mut body = json!({"username": "alice", "email": "alice@lab.org", "password": crate::helpers::PASSWORD});
        body.as_object_mut()
            .unwrap()
            .extend(accept.as_object().unwrap().clone());
        let app = &app;
        async move { app.post("/api/auth/register", &body, None).await }
    };
    let refused = assert_problem(register(json!({})).await, StatusCode::BAD_REQUEST).await;
    assert!(refused["errors"]["accept_terms"].is_array());
    assert!(refused["errors"]["accept_privacy"].is_array());
    let stale = register(json!({"accept_terms": "2025-12", "accept_privacy": "3"})).await;
    let stale = assert_problem(stale, StatusCode::BAD_REQUEST).await;
    assert!(
        stale["errors"]["accept_terms"].is_array()
            && stale["errors"].get("accept_privacy").is_none()
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM users").await, 0);
    let created = register(json!({"accept_terms": "2026-01", "accept_privacy": "3"})).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM consents WHERE ip IS NOT NULL")
            .await,
        2,
        "each acceptance is kept with its address"
    );
    let registered = app.audit_events("auth.register").await;
    assert_eq!(
        registered[0]["details"]["consent"],
        json!({"terms_version": "2026-01", "privacy_version": "3"})
    );
    app.login("alice").await;

    // New terms: the sign-in answers consent_required, with a token, and opens no session.
    let renewed =
        crate::helpers::spawn_second_instance_with(&app, &[("UMS_TERMS_VERSION", "2026-06")]).await;
    let sessions_before = app.scalar("SELECT COUNT(*) FROM sessions").await;
    let asked = renewed
        .login_response("alice", crate::helpers::PASSWORD)
        .await;
    let asked = assert_problem(asked, StatusCode::UNAUTHORIZED).await;
    assert_eq!(asked["code"], "consent_required");
    assert_eq!(asked["methods"], json!(["consent"]));
    let token = asked["mfa_token"].as_str().unwrap().to_owned();
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM sessions").await,
        sessions_before
    );
    // A stale version is refused and keeps the token usable.
    let stale = renewed
        .post(
            "/api/auth/login/consent",
            &json!({"mfa_token": token, "accept_terms": "2026-01", "accept_privacy": "3"}),
            None,
        )
        .await;
    assert_problem(stale, StatusCode::BAD_REQUEST).await;
    let accepted = renewed
        .post(
            "/api/auth/login/consent",
            &json!({"mfa_token": token, "accept_terms": "2026-06", "accept_privacy": "3"}),
            None,
        )
        .await;
    assert_eq!(accepted.status(), StatusCode::OK);
    let body: Value = accepted.json().await.unwrap();
    assert!(body["access_token"].is_string() && body["refresh_token"].is_string());
    assert_eq!(
        app.scalar(
            "SELECT COUNT(*) FROM consents WHERE document = 'terms' AND version = '2026-06'"
        )
        .await,
        1
    );
    assert_eq!(app.audit_events("user.consent_given").await.len(), 1);
    let again = renewed
        .post(
            "/api/auth/login/consent",
            &json!({"mfa_token": token, "accept_terms": "2026-06", "accept_privacy": "3"}),
            None,
        )
        .await;
    assert_problem(again, StatusCode::UNAUTHORIZED).await;
    // Accepted once, not asked again.
    renewed.login("alice").await;
    // A stale version offered with the password is refused before anything is counted.
    let offered = renewed
        .post(
            "/api/auth/login",
            &json!({"username": "alice", "password": crate::helpers::PASSWORD,
                    "accept_terms": "2026-01", "accept_privacy": "3"}),
            None,
        )
        .await;
    assert_problem(offered, StatusCode::BAD_REQUEST).await;
    assert_eq!(
        app.scalar("SELECT failed_login_count FROM users WHERE username = 'alice'")
            .await,
        0
    );

    // The one-step form: the versions in the login body itself.
    let newest =
        crate::helpers::spawn_second_instance_with(&app, &[("UMS_TERMS_VERSION", "2027")]).await;
    let one_step = newest
        .post(
            "/api/auth/login",
            &json!({"username": "alice", "password": crate::helpers::PASSWORD,
                    "accept_terms": "2027", "accept_privacy": "3"}),
            None,
        )
        .await;
    assert_eq!(one_step.status(), StatusCode::OK);
    assert_eq!(app.audit_events("user.consent_given").await.len(), 2);
    // The export lists every acceptance.
    let alice = created_id(&app).await;
    let tokens = newest.login("alice").await;
    let document = read(
        &newest,
        &format!("/api/users/{alice}/export"),
        &tokens.access,
    )
    .await;
    let versions: Vec<&str> = document["consents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|consent| consent["version"].as_str().unwrap())
        .collect();
    assert_eq!(versions, ["2026-01", "3", "2026-06", "2027"]);
}

async fn created_id(app: &TestApp) -> i64 {
    app.scalar("SELECT id FROM users WHERE username = 'alice'")
        .await
}

/// Rows that still name or point at the person, table by table (each must be 0 once erased).
async fn traces_of(app: &TestApp, id: i64, username: &str, email: &str) -> Vec<(String, i64)> {
    let mut traces = Vec::new();
    for (table, sql) in [
        (
            "users",
            format!("SELECT COUNT(*) FROM users WHERE id = {id}"),
        ),
        (
            "sessions",
            format!("SELECT COUNT(*) FROM sessions WHERE user_id = {id}"),
        ),
        (
            "lab_memberships",
            format!("SELECT COUNT(*) FROM lab_memberships WHERE user_id = {id}"),
        ),
        (
            "devices",
            format!("SELECT COUNT(*) FROM devices WHERE user_id = {id}"),
        ),
        (
            "login_attempts",
            format!(
                "SELECT COUNT(*) FROM login_attempts WHERE user_id = {id} OR lower(username) IN ('{username}', '{email}')"
            ),
        ),
        (
            "lab_invitations",
            format!("SELECT COUNT(*) FROM lab_invitations WHERE email = '{email}'"),
        ),
        (
            "email_outbox",
            format!("SELECT COUNT(*) FROM email_outbox WHERE lower(recipient) = '{email}'"),
        ),
        (
            "audit_person_keys",
            format!("SELECT COUNT(*) FROM audit_person_keys WHERE user_id = {id}"),
        ),
        (
            "audit_ip_index",
            format!("SELECT COUNT(*) FROM audit_ip_index WHERE user_id = {id}"),
        ),
        (
            "audit_logs in the clear",
            format!(
                "SELECT COUNT(*) FROM audit_logs WHERE CAST(details AS TEXT) LIKE '%{username}%' \
             OR CAST(details AS TEXT) LIKE '%{email}%' OR (user_id = {id} AND actor_ip IS NOT NULL)"
            ),
        ),
    ] {
        traces.push((table.to_string(), app.scalar(&sql).await));
    }
    traces
}

#[tokio::test]
async fn a_person_erases_their_account_and_the_audit_trail_still_verifies() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let other_lab = app.create_lab(&admin.access, "CHEM").await;
    let (dora, dora_tokens) = app.user("dora").await;
    app.add_member(&admin.access, lab, dora, "member").await;
    app.login_response("dora", "wrong password").await;
    let renamed = app
        .patch(
            &format!("/api/users/{dora}"),
            &json!({"first_name": "Dorothea"}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    invite(&app, &admin.access, other_lab, "dora@lab.org", "viewer").await;
    app.smtp
        .wait_for("dora@lab.org", "You are invited to a lab")
        .await;

    // Before: the trail holds her name and address sealed, never in the clear, and shows them.
    let before = traces_of(&app, dora, "dora", "dora@lab.org").await;
    assert!(
        before.iter().all(|(table, count)| match table.as_str() {
            "audit_logs in the clear" => *count == 0,
            "email_outbox" => true,
            _ => *count > 0,
        }),
        "{before:?}"
    );
    let shown = read(
        &app,
        &format!("/api/audit-logs?user_id={dora}&action=auth.register"),
        &admin.access,
    )
    .await;
    assert_eq!(shown["items"][0]["details"]["username"], "dora", "{shown}");
    assert_eq!(shown["items"][0]["actor_ip"], "127.0.0.1");
    assert_eq!(shown["items"][0]["erased"], false);
    let by_address = read(
        &app,
        &format!("/api/audit-logs?ip=127.0.0.1&user_id={dora}"),
        &admin.access,
    )
    .await;
    assert!(
        by_address["total"].as_i64().unwrap() >= 3,
        "sealed addresses are found by their tag: {by_address}"
    );

    // A wrong password erases nothing.
    let refused = app
        .delete_with(
            "/api/users/me",
            &json!({"password": "not it"}),
            Some(&dora_tokens.access),
        )
        .await;
    let problem = assert_problem(refused, StatusCode::BAD_REQUEST).await;
    assert!(problem["errors"]["password"].is_array(), "{problem}");
    assert_eq!(traces_of(&app, dora, "dora", "dora@lab.org").await, before);

    let erased = app
        .delete_with(
            "/api/users/me",
            &json!({"password": crate::helpers::PASSWORD}),
            Some(&dora_tokens.access),
        )
        .await;
    assert_eq!(erased.status(), StatusCode::OK);
    let body: Value = erased.json().await.unwrap();
    assert_eq!(body, json!({"status": "erased", "erase_after": null}));

    // Gone from every table; her token no longer works.
    let after = traces_of(&app, dora, "dora", "dora@lab.org").await;
    assert!(after.iter().all(|(_, count)| *count == 0), "{after:?}");
    let me = app.get("/api/auth/me", Some(&dora_tokens.access)).await;
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED);

    // The events stay, their personal fields erased; the admin's own address stays his.
    let shown = read(
        &app,
        &format!("/api/audit-logs?user_id={dora}&per_page=100"),
        &admin.access,
    )
    .await;
    let events = shown["items"].as_array().unwrap();
    assert!(events.len() >= 4, "{shown}");
    for event in events {
        assert_eq!(event["erased"], true, "{event}");
        assert_eq!(event["actor_ip"], Value::Null);
        assert_eq!(event["user_agent"], Value::Null);
        assert!(event["details"].get("username").is_none(), "{event}");
    }
    let renamed = app.audit_events("user.updated").await;
    let renamed = renamed.last().unwrap();
    assert_eq!(renamed["erased"], true);
    assert_eq!(
        renamed["actor_ip"], "127.0.0.1",
        "the admin's address is not hers"
    );
    assert!(renamed["details"].get("changed").is_none(), "{renamed}");
    let deleted = app.audit_events("user.deleted").await;
    assert_eq!(
        deleted.last().unwrap()["details"],
        json!({"erased": true, "requested_by": "self"})
    );
    let by_address = read(
        &app,
        &format!("/api/audit-logs?ip=127.0.0.1&user_id={dora}"),
        &admin.access,
    )
    .await;
    assert_eq!(by_address["total"], 0, "her tags went with her key");

    let report = ums::audit::verify::verify(&app.state.store, None)
        .await
        .unwrap();
    assert_eq!(report.finding, None);
}

#[tokio::test]
async fn an_erasure_waits_out_its_grace_period_and_an_admin_can_cancel_it() {
    let app = crate::helpers::spawn_app_with(&[("UMS_ERASURE_GRACE", "7d")]).await;
    let admin = app.admin("root").await;
    let (erin, erin_tokens) = app.user("erin").await;

    let asked = app
        .delete_with(
            "/api/users/me",
            &json!({"password": crate::helpers::PASSWORD}),
            Some(&erin_tokens.access),
        )
        .await;
    assert_eq!(asked.status(), StatusCode::OK);
    let body: Value = asked.json().await.unwrap();
    assert_eq!(body["status"], "scheduled");
    assert_eq!(
        body["erase_after"],
        ums::clock::to_rfc3339(app.clock.now() + 7 * 86_400_000)
    );
    // Disabled at once: no sign-in, no session.
    assert_eq!(
        app.login_response("erin", crate::helpers::PASSWORD)
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/auth/me", Some(&erin_tokens.access))
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(app.audit_events("user.erasure_requested").await.len(), 1);

    // An admin cancels; the time passes and nothing is erased.
    let cancelled = app
        .delete(&format!("/api/users/{erin}/erasure"), Some(&admin.access))
        .await;
    assert_eq!(cancelled.status(), StatusCode::NO_CONTENT);
    let again = app
        .delete(&format!("/api/users/{erin}/erasure"), Some(&admin.access))
        .await;
    assert_problem(again, StatusCode::NOT_FOUND).await;
    app.clock.advance(Duration::from_secs(8 * 86_400));
    assert_eq!(
        ums::privacy::erasure::erase_due(&app.state, app.clock.now())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        app.scalar(&format!("SELECT COUNT(*) FROM users WHERE id = {erin}"))
            .await,
        1
    );
    assert_eq!(app.audit_events("user.erasure_cancelled").await.len(), 1);

    // An admin's delete waits too, and is carried out when its time comes, not a second before.
    let admin = app.login("root").await;
    // (Activating the account cancels a pending erasure as well.)
    let deleted = app
        .delete(&format!("/api/users/{erin}"), Some(&admin.access))
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    let activated = app
        .patch(
            &format!("/api/users/{erin}"),
            &json!({"is_active": true}),
            Some(&admin.access),
        )
        .await;
    assert_eq!(activated.status(), StatusCode::OK);
    let pending =
        format!("SELECT COUNT(*) FROM users WHERE id = {erin} AND erase_after IS NOT NULL");
    assert_eq!(app.scalar(&pending).await, 0);
    let deleted = app
        .delete(&format!("/api/users/{erin}"), Some(&admin.access))
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    app.clock.advance(Duration::from_secs(7 * 86_400 - 1));
    assert_eq!(
        ums::privacy::erasure::erase_due(&app.state, app.clock.now())
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        app.scalar(&format!("SELECT COUNT(*) FROM users WHERE id = {erin}"))
            .await,
        1
    );
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(
        ums::privacy::erasure::erase_due(&app.state, app.clock.now())
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        app.scalar(&format!("SELECT COUNT(*) FROM users WHERE id = {erin}"))
            .await,
        0
    );
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM audit_person_keys WHERE user_id = {erin}"
        ))
        .await,
        0
    );
    let deleted = app.audit_events("user.deleted").await;
    assert_eq!(
        deleted.last().unwrap()["details"],
        json!({"erased": true, "requested_by": "grace_period_ended"})
    );
    let report = ums::audit::verify::verify(&app.state.store, None)
        .await
        .unwrap();
    assert_eq!(report.finding, None);
}

#[tokio::test]
async fn the_last_lab_admin_of_a_lab_with_members_cannot_leave_by_erasure() {
    let app = spawn_app().await;
    let admin = app.admin("root").await;
    let lab = app.create_lab(&admin.access, "GEN").await;
    let (boss, boss_tokens) = app.user("boss").await;
    let (member, _) = app.user("member").await;
    app.add_member(&admin.access, lab, boss, "lab_admin").await;
    app.add_member(&admin.access, lab, member, "member").await;
    let refused = app
        .delete_with(
            "/api/users/me",
            &json!({"password": crate::helpers::PASSWORD}),
            Some(&boss_tokens.access),
        )
        .await;
    assert_problem(refused, StatusCode::CONFLICT).await;
    assert_eq!(
        app.scalar(&format!("SELECT COUNT(*) FROM users WHERE id = {boss}"))
            .await,
        1
    );
    assert!(app.audit_events("user.deleted").await.is_empty());
    // A system admin may: the lab is theirs to look after.
    let deleted = app
        .delete(&format!("/api/users/{boss}"), Some(&admin.access))
        .await;
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        app.scalar(&format!("SELECT COUNT(*) FROM users WHERE id = {boss}"))
            .await,
        0
    );
}
