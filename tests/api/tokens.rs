//! Tokens, sessions and keys: rotation, reuse detection, type confusion, JWKS.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{assert_problem, jwt_parts, spawn_app, spawn_app_with};

#[tokio::test]
async fn tokens_carry_the_contract_claims_and_verify_against_the_jwks() {
    let app = spawn_app().await;
    let user = app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    let (header, claims) = jwt_parts(&tokens.access);
    assert_eq!(header["alg"], "RS256");
    let kid = header["kid"].as_str().unwrap();
    assert_eq!(claims["iss"], "http://ums.test");
    assert_eq!(claims["sub"], user["id"].to_string());
    assert_eq!(claims["typ"], "access");
    assert_eq!(claims["is_admin"], false);
    assert_eq!(
        claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(),
        3600
    );
    assert!(claims["jti"].is_string() && claims["sid"].is_string());
    // The refresh token is opaque: only UMS reads it, so it is not signed.
    assert!(tokens.refresh.starts_with("umsr_") && !tokens.refresh.contains('.'));
    assert!(tokens.refresh.len() >= 5 + 43, "256 random bits");

    let jwks: JwkSet = app
        .get("/.well-known/jwks.json", None)
        .await
        .json()
        .await
        .unwrap();
    let jwk = jwks.find(kid).expect("the signing key is published");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&["http://ums.test"]);
    validation.validate_exp = false;
    let decoded = jsonwebtoken::decode::<Value>(
        &tokens.access,
        &DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    );
    assert!(decoded.is_ok(), "{decoded:?}");
    // Refresh tokens are stored only as hashes, each naming its session.
    assert_eq!(
        app.scalar(&format!(
            "SELECT COUNT(*) FROM refresh_tokens WHERE token_hash = '{}'",
            tokens.refresh
        ))
        .await,
        0
    );
    assert_eq!(app.scalar("SELECT COUNT(*) FROM refresh_tokens").await, 1);
    assert_eq!(
        app.text("SELECT session_id FROM refresh_tokens")
            .await
            .as_deref(),
        claims["sid"].as_str()
    );
}

/// RFC 8176 `amr` and `auth_time`: how and when the user signed in, carried unchanged by
/// every token of the session, refreshed ones included, and stored with the session.
#[tokio::test]
async fn tokens_say_how_and_when_the_user_signed_in_and_a_refresh_keeps_it() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let signed_in_at = app.clock.now() / 1000;
    let tokens = app.login("alice").await;
    let (_, claims) = jwt_parts(&tokens.access);
    assert_eq!(claims["amr"], json!(["pwd"]));
    assert_eq!(claims["auth_time"], signed_in_at);
    assert_eq!(claims["iat"], signed_in_at);
    assert_eq!(
        app.text("SELECT amr FROM sessions").await.as_deref(),
        Some("pwd")
    );

    app.clock.advance(Duration::from_secs(600));
    let response = app.refresh(&tokens.refresh).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    let (_, refreshed) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(refreshed["iat"], signed_in_at + 600, "a new token");
    assert_eq!(refreshed["auth_time"], signed_in_at, "the same sign-in");
    assert_eq!(refreshed["amr"], json!(["pwd"]));
    assert_eq!(
        app.get("/api/auth/me", Some(body["access_token"].as_str().unwrap()))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn es256_signs_when_configured() {
    let app = spawn_app_with(&[("UMS_JWT_ALGORITHM", "ES256")]).await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    let (header, _) = jwt_parts(&tokens.access);
    assert_eq!(header["alg"], "ES256");
    let jwks: JwkSet = app
        .get("/.well-known/jwks.json", None)
        .await
        .json()
        .await
        .unwrap();
    let jwk = jwks
        .find(header["kid"].as_str().unwrap())
        .expect("the signing key is published");
    let mut validation = Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_issuer(&["http://ums.test"]);
    validation.validate_exp = false;
    let decoded = jsonwebtoken::decode::<Value>(
        &tokens.access,
        &DecodingKey::from_jwk(jwk).unwrap(),
        &validation,
    );
    assert!(decoded.is_ok(), "{decoded:?}");
    let jwks: Value = app
        .get("/.well-known/jwks.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert_eq!(jwks["keys"][0]["crv"], "P-256");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");
    assert_eq!(
        app.get("/api/auth/me", Some(&tokens.access)).await.status(),
        StatusCode::OK
    );
    // A refresh works, and the keys rotate in the same algorithm.
    assert_eq!(app.refresh(&tokens.refresh).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn eddsa_signs_when_configured() {
    let app = spawn_app_with(&[("UMS_JWT_ALGORITHM", "EdDSA")]).await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    let (header, _) = jwt_parts(&tokens.access);
    assert_eq!(header["alg"], "EdDSA");
    let jwks: Value = app
        .get("/.well-known/jwks.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "OKP");
    assert_eq!(jwks["keys"][0]["crv"], "Ed25519");
    assert_eq!(
        app.get("/api/auth/me", Some(&tokens.access)).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn refresh_rotates_and_a_reused_token_revokes_the_whole_family() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let first = app.login("alice").await;
    let response = app.refresh(&first.refresh).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let second: Value = response.json().await.unwrap();
    let second_refresh = second["refresh_token"].as_str().unwrap();
    assert_ne!(second_refresh, first.refresh);
    assert_eq!(app.audit_events("auth.token_refreshed").await.len(), 1);

    // The spent token comes back: reuse. The whole session is revoked.
    assert_problem(app.refresh(&first.refresh).await, StatusCode::UNAUTHORIZED).await;
    assert_problem(app.refresh(second_refresh).await, StatusCode::UNAUTHORIZED).await;
    let second_access = second["access_token"].as_str().unwrap();
    assert_problem(
        app.get("/api/auth/me", Some(second_access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    let reuse = app.audit_events("auth.refresh_token_reused").await;
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0]["success"], false);
}

#[tokio::test]
async fn the_refresh_token_is_also_accepted_as_a_bearer() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    let response = app
        .client
        .post(app.url("/api/auth/refresh"))
        .bearer_auth(&tokens.refresh)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_many_concurrent_refreshes_exactly_one_succeeds() {
    let app = std::sync::Arc::new(spawn_app().await);
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    let refreshes = (0..20).map(|_| {
        let app = app.clone();
        let token = tokens.refresh.clone();
        tokio::spawn(async move { app.refresh(&token).await.status().as_u16() })
    });
    let mut successes = 0;
    for refresh in refreshes {
        if refresh.await.unwrap() == 200 {
            successes += 1;
        }
    }
    assert_eq!(successes, 1);
}

#[tokio::test]
async fn an_access_token_is_refused_as_a_refresh_token_and_vice_versa() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    assert_problem(app.refresh(&tokens.access).await, StatusCode::UNAUTHORIZED).await;
    assert_problem(
        app.get("/api/auth/me", Some(&tokens.refresh)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn alg_none_and_tampered_tokens_are_refused() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    app.register("mallory", "mallory@lab.org").await;
    let tokens = app.login("mallory").await;
    let (header, mut claims) = jwt_parts(&tokens.access);
    let signature = tokens.access.rsplit('.').next().unwrap();
    let encode = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());

    claims["sub"] = json!("1");
    claims["is_admin"] = json!(true);
    let tampered = format!("{}.{}.{}", encode(&header), encode(&claims), signature);
    assert_problem(
        app.get("/api/auth/me", Some(&tampered)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;

    let mut none_header = header.clone();
    none_header["alg"] = json!("none");
    let unsigned = format!("{}.{}.", encode(&none_header), encode(&claims));
    assert_problem(
        app.get("/api/auth/me", Some(&unsigned)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;

    let mut hs_header = header.clone();
    hs_header["alg"] = json!("HS256");
    let confused = format!("{}.{}.{}", encode(&hs_header), encode(&claims), signature);
    assert_problem(
        app.get("/api/auth/me", Some(&confused)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn an_expired_access_token_is_refused_without_leeway() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    app.clock.advance(Duration::from_secs(3600));
    let body = assert_problem(
        app.get("/api/auth/me", Some(&tokens.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("expired"));
}

#[tokio::test]
async fn a_refresh_chain_never_outlives_thirty_days_from_its_login() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let mut refresh = app.login("alice").await.refresh;
    for _ in 0..2 {
        app.clock.advance(Duration::from_secs(14 * 86_400));
        let response = app.refresh(&refresh).await;
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = response.json().await.unwrap();
        refresh = body["refresh_token"].as_str().unwrap().to_string();
    }
    app.clock.advance(Duration::from_secs(2 * 86_400 + 1));
    assert_problem(app.refresh(&refresh).await, StatusCode::UNAUTHORIZED).await;
}

/// Refresh tokens were signed JWTs in earlier versions: one issued then still continues its
/// session once (its signature and expiry checked), and presented again it is a reuse.
#[tokio::test]
async fn a_signed_refresh_token_of_an_earlier_version_still_refreshes_once() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    let (_, access) = jwt_parts(&tokens.access);
    let now = app.clock.now();
    let mut claims: ums::auth::tokens::Claims = serde_json::from_value(access.clone()).unwrap();
    claims.typ = ums::auth::tokens::TokenType::Refresh;
    claims.jti = "an-earlier-jti".into();
    claims.exp = now / 1000 + 86_400;
    let signed = app.state.keys.sign(&claims).unwrap();
    let mut transaction = app.state.store.begin().await.unwrap();
    ums::execute!(
        transaction,
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, session_id, issued_at, expires_at) \
             VALUES ($1, $2, $3, $4)"
        )
        .bind(ums::security::secrets::hash_token("an-earlier-jti"))
        .bind(&claims.sid)
        .bind(ums::clock::Timestamp::from(now))
        .bind(ums::clock::Timestamp::from(now + 86_400_000))
    )
    .unwrap();
    transaction.commit().await.unwrap();

    // Another session's signed token cannot continue this one; an access token is no
    // refresh token.
    let mut elsewhere = claims.clone();
    elsewhere.sid = "another-session".into();
    let forged_session = app.state.keys.sign(&elsewhere).unwrap();
    assert_problem(app.refresh(&forged_session).await, StatusCode::UNAUTHORIZED).await;
    assert_problem(app.refresh(&tokens.access).await, StatusCode::UNAUTHORIZED).await;

    let response = app.refresh(&signed).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert!(body["refresh_token"].as_str().unwrap().starts_with("umsr_"));
    assert_problem(app.refresh(&signed).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(app.audit_events("auth.refresh_token_reused").await.len(), 1);
    assert_problem(
        app.refresh(body["refresh_token"].as_str().unwrap()).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

/// An expired refresh token is dead, not a reuse: the session stays open.
#[tokio::test]
async fn an_expired_refresh_token_does_not_revoke_its_session() {
    let app = spawn_app_with(&[("UMS_REFRESH_TOKEN_TTL", "1h")]).await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    app.clock.advance(Duration::from_secs(3600));
    assert_problem(app.refresh(&tokens.refresh).await, StatusCode::UNAUTHORIZED).await;
    assert!(
        app.audit_events("auth.refresh_token_reused")
            .await
            .is_empty()
    );
    assert_eq!(
        app.scalar("SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn logout_revokes_the_session_and_its_refresh_token() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    let other = app.login("alice").await;
    let response = app
        .post("/api/auth/logout", &json!({}), Some(&tokens.access))
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get("/api/auth/me", Some(&tokens.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(app.refresh(&tokens.refresh).await, StatusCode::UNAUTHORIZED).await;
    // Another login of the same user is untouched.
    assert_eq!(
        app.get("/api/auth/me", Some(&other.access)).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.audit_events("auth.logout").await.len(), 1);
    assert_problem(
        app.post("/api/auth/logout", &json!({}), None).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
}

#[tokio::test]
async fn sessions_are_listed_and_one_can_be_revoked() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    app.register("bob", "bob@lab.org").await;
    let current = app.login("alice").await;
    let other = app.login("alice").await;
    let bob = app.login("bob").await;
    let sessions: Value = app
        .get("/api/auth/sessions", Some(&current.access))
        .await
        .json()
        .await
        .unwrap();
    let sessions = sessions.as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions.iter().filter(|s| s["current"] == true).count(), 1);
    assert_eq!(sessions[0]["ip"], "127.0.0.1");
    assert!(sessions[0]["created_at"].is_string() && sessions[0]["last_used_at"].is_string());

    let (_, other_claims) = jwt_parts(&other.access);
    let other_id = other_claims["sid"].as_str().unwrap();
    let (_, bob_claims) = jwt_parts(&bob.access);
    let bob_id = bob_claims["sid"].as_str().unwrap();
    // Someone else's session is not found, and stays open.
    let foreign = app
        .delete(
            &format!("/api/auth/sessions/{bob_id}"),
            Some(&current.access),
        )
        .await;
    assert_problem(foreign, StatusCode::NOT_FOUND).await;
    assert_eq!(
        app.get("/api/auth/me", Some(&bob.access)).await.status(),
        StatusCode::OK
    );

    let response = app
        .delete(
            &format!("/api/auth/sessions/{other_id}"),
            Some(&current.access),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_problem(
        app.get("/api/auth/me", Some(&other.access)).await,
        StatusCode::UNAUTHORIZED,
    )
    .await;
    assert_problem(app.refresh(&other.refresh).await, StatusCode::UNAUTHORIZED).await;
    assert_eq!(
        app.get("/api/auth/me", Some(&current.access))
            .await
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn rotated_keys_sign_new_tokens_while_old_tokens_stay_valid() {
    let app = spawn_app().await;
    app.register("alice", "alice@lab.org").await;
    let before = app.login("alice").await;
    let (old_header, _) = jwt_parts(&before.access);

    let new_kid = ums::auth::tokens::rotate(
        &app.state.store,
        app.state.config.jwt_algorithm,
        None,
        app.clock.now(),
    )
    .await
    .unwrap();
    assert_ne!(old_header["kid"], new_kid);
    assert_eq!(app.audit_events("key.rotated").await.len(), 1);
    // This instance learns of the rotation (here at once; a running server reloads by itself).
    app.state
        .keys
        .reload(
            &app.state.store,
            app.state.config.jwt_algorithm,
            app.clock.now(),
        )
        .await
        .unwrap();

    let after = app.login("alice").await;
    let (new_header, _) = jwt_parts(&after.access);
    assert_eq!(new_header["kid"], new_kid);
    assert_eq!(
        app.get("/api/auth/me", Some(&before.access)).await.status(),
        StatusCode::OK
    );
    assert_eq!(app.refresh(&before.refresh).await.status(), StatusCode::OK);
    let jwks: Value = app
        .get("/.well-known/jwks.json", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn signing_keys_are_encrypted_at_rest_with_a_secret_key() {
    let app = spawn_app_with(&[("UMS_SECRET_KEY", "a long operator secret")]).await;
    let stored = app
        .text("SELECT private_key FROM signing_keys")
        .await
        .unwrap();
    assert!(stored.starts_with("aes256gcm-v2:"));
    app.register("alice", "alice@lab.org").await;
    let tokens = app.login("alice").await;
    assert_eq!(
        app.get("/api/auth/me", Some(&tokens.access)).await.status(),
        StatusCode::OK
    );
}
