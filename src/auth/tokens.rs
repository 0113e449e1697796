//! Signing keys and JWTs.
//!
//! Keys live in the database (private parts AES-256-GCM encrypted when `UMS_SECRET_KEY` is
//! set), so every instance on one database signs and verifies with the same set. The newest
//! key signs; older keys keep verifying until the longest token they could have signed has
//! expired. Each key is pinned to its algorithm: a token whose header names another algorithm
//! than its key's is refused, whatever the header says.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use anyhow::{Context, anyhow, bail};
use aws_lc_rs::encoding::AsDer;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::clock::{Millis, Timestamp};
use crate::config::JwtAlgorithm;
use crate::security::sealing::{seal, unseal};
use crate::security::secrets::random_token;
use crate::store::{Connection, Store};

/// The shortest time between two key reloads caused by unknown `kid`s.
const KID_RELOAD_INTERVAL: Millis = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    Refresh,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
    pub typ: TokenType,
    pub sid: String,
    pub is_admin: bool,
    /// The audience (`UMS_JWT_AUDIENCE`), when one is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// How the user proved who they are when the session began (RFC 8176: `pwd`, ...).
    #[serde(default)]
    pub amr: Vec<String>,
    /// When the session began (seconds): a refresh keeps it, so a client can ask for a
    /// recent sign-in.
    #[serde(default)]
    pub auth_time: i64,
}

impl Claims {
    pub fn user_id(&self) -> Option<i64> {
        self.sub.parse().ok()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed or badly signed token")]
    Invalid,
    #[error("token expired")]
    Expired,
    #[error("wrong token type")]
    WrongType,
    #[error("unknown signing key")]
    UnknownKey,
}

struct VerifyingKey {
    algorithm: Algorithm,
    key: DecodingKey,
}

struct KeyRing {
    signing_kid: String,
    signing_algorithm: Algorithm,
    signing_key: EncodingKey,
    verifying: HashMap<String, VerifyingKey>,
    jwks: serde_json::Value,
}

/// The loaded key set, shared by every request; reloaded when another instance rotates.
#[derive(Clone)]
pub struct Keys {
    ring: Arc<RwLock<KeyRing>>,
    issuer: String,
    audience: Option<String>,
    /// When an unknown `kid` last made this instance re-read the keys (milliseconds), so a
    /// stream of tokens with made-up kids cannot turn every request into a key reload.
    last_reload: Arc<std::sync::atomic::AtomicI64>,
    unknown_kid_reloads: Arc<std::sync::atomic::AtomicU64>,
    secret_key: Option<SecretString>,
    /// How long a retired key keeps verifying (the refresh-token lifetime).
    retirement: i64,
}

impl Keys {
    /// Loads the keys, generating the first one of `algorithm` when the database has none.
    pub async fn load_or_create(
        store: &Store,
        algorithm: JwtAlgorithm,
        (issuer, audience): (String, Option<String>),
        secret_key: Option<SecretString>,
        retirement: std::time::Duration,
        now: Millis,
    ) -> anyhow::Result<Self> {
        let retirement = retirement.as_millis() as i64;
        let mut transaction = store.begin().await?;
        let has_signing_key = crate::with_db!(transaction, |db| sqlx::query_scalar::<_, String>(
            "SELECT kid FROM signing_keys WHERE retired_at IS NULL AND algorithm = $1"
        )
        .bind(algorithm.as_str())
        .fetch_optional(db)
        .await)?
        .is_some();
        if !has_signing_key {
            insert_new_key(&mut transaction, algorithm, secret_key.as_ref(), now).await?;
        }
        transaction.commit().await?;
        let ring = load_ring(store, algorithm, secret_key.as_ref(), retirement, now).await?;
        Ok(Keys {
            ring: Arc::new(RwLock::new(ring)),
            issuer,
            audience,
            // The first unknown kid reloads at once: another instance may have rotated
            // between this one's start and its first request.
            last_reload: Arc::new(std::sync::atomic::AtomicI64::new(now - KID_RELOAD_INTERVAL)),
            unknown_kid_reloads: Arc::default(),
            secret_key,
            retirement,
        })
    }

    /// Re-reads the key set, picking up a rotation done by another process.
    pub async fn reload(
        &self,
        store: &Store,
        algorithm: JwtAlgorithm,
        now: Millis,
    ) -> anyhow::Result<()> {
        let ring = load_ring(
            store,
            algorithm,
            self.secret_key.as_ref(),
            self.retirement,
            now,
        )
        .await?;
        *self
            .ring
            .write()
            .map_err(|_| anyhow!("key ring lock poisoned"))? = ring;
        Ok(())
    }

    /// Re-reads the keys for a token signed by a key this instance does not know (another
    /// instance may have rotated), at most once in `KID_RELOAD_INTERVAL`; false when it was
    /// too soon to try again.
    pub async fn reload_for_unknown_kid(
        &self,
        store: &Store,
        algorithm: JwtAlgorithm,
        now: Millis,
    ) -> anyhow::Result<bool> {
        use std::sync::atomic::Ordering;
        let last = self.last_reload.load(Ordering::Relaxed);
        if now - last < KID_RELOAD_INTERVAL
            || self
                .last_reload
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return Ok(false);
        }
        metrics::counter!("ums_key_reloads_total", "cause" => "unknown_kid").increment(1);
        self.unknown_kid_reloads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.reload(store, algorithm, now).await?;
        Ok(true)
    }

    /// How many times an unknown kid made this key set reload.
    pub fn unknown_kid_reloads(&self) -> u64 {
        self.unknown_kid_reloads
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn audience(&self) -> Option<&str> {
        self.audience.as_deref()
    }

    pub fn jwks(&self) -> serde_json::Value {
        self.ring
            .read()
            .map(|ring| ring.jwks.clone())
            .unwrap_or_else(|_| serde_json::json!({"keys": []}))
    }

    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        let ring = self
            .ring
            .read()
            .map_err(|_| anyhow!("key ring lock poisoned"))?;
        let mut header = Header::new(ring.signing_algorithm);
        header.kid = Some(ring.signing_kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &ring.signing_key).context("signing a token")
    }

    /// Verifies signature, issuer, expiry (against `now`, no leeway) and type.
    pub fn verify(
        &self,
        token: &str,
        expected: TokenType,
        now: Millis,
    ) -> Result<Claims, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid)?;
        let kid = header.kid.ok_or(TokenError::Invalid)?;
        let ring = self.ring.read().map_err(|_| TokenError::Invalid)?;
        let key = ring.verifying.get(&kid).ok_or(TokenError::UnknownKey)?;
        if header.alg != key.algorithm {
            return Err(TokenError::Invalid);
        }
        let mut validation = Validation::new(key.algorithm);
        validation.leeway = 0;
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_issuer(&[&self.issuer]);
        match &self.audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.set_required_spec_claims(&["exp", "iss", "sub", "iat", "aud"]);
            }
            None => {
                validation.validate_aud = false;
                validation.set_required_spec_claims(&["exp", "iss", "sub", "iat"]);
            }
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|_| TokenError::Invalid)?
            .claims;
        if claims.exp * 1000 <= now {
            return Err(TokenError::Expired);
        }
        if claims.typ != expected {
            return Err(TokenError::WrongType);
        }
        Ok(claims)
    }
}

/// `ums keys rotate`: a new key signs from now on; the old ones retire but keep verifying.
pub async fn rotate(
    store: &Store,
    algorithm: JwtAlgorithm,
    secret_key: Option<&SecretString>,
    now: Millis,
) -> anyhow::Result<String> {
    let mut transaction = crate::audit::Audited::begin(store).await?;
    crate::execute!(
        &mut transaction,
        sqlx::query("UPDATE signing_keys SET retired_at = $1 WHERE retired_at IS NULL")
            .bind(Timestamp::from(now))
    )?;
    let kid = insert_new_key(&mut transaction, algorithm, secret_key, now).await?;
    transaction
        .commit(
            crate::audit::Event::new(crate::audit::Action::KeyRotated, now)
                .resource("key", &kid)
                .details(serde_json::json!({"algorithm": algorithm.as_str()})),
        )
        .await?;
    Ok(kid)
}

async fn insert_new_key(
    connection: &mut Connection,
    algorithm: JwtAlgorithm,
    secret_key: Option<&SecretString>,
    now: Millis,
) -> anyhow::Result<String> {
    let kid = random_token()[..16].to_string();
    let (private_der, jwt_algorithm) = generate_key(algorithm)?;
    let encoding_key = encoding_key(algorithm, &private_der)?;
    let mut jwk =
        Jwk::from_encoding_key(&encoding_key, jwt_algorithm).context("building the JWK")?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    crate::execute!(
        connection,
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_key, public_jwk, created_at) \
         VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&kid)
        .bind(algorithm.as_str())
        .bind(seal(&private_der, secret_key)?)
        .bind(serde_json::to_string(&jwk)?)
        .bind(Timestamp::from(now))
    )?;
    Ok(kid)
}

fn generate_key(algorithm: JwtAlgorithm) -> anyhow::Result<(Vec<u8>, Algorithm)> {
    match algorithm {
        JwtAlgorithm::Rs256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| anyhow!("generating an RSA key"))?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                pair.as_der().map_err(|_| anyhow!("encoding the RSA key"))?;
            Ok((der.as_ref().to_vec(), Algorithm::RS256))
        }
        JwtAlgorithm::Es256 => {
            use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .map_err(|_| anyhow!("generating a P-256 key"))?;
            let der = pair
                .to_pkcs8v1()
                .map_err(|_| anyhow!("encoding the P-256 key"))?;
            Ok((der.as_ref().to_vec(), Algorithm::ES256))
        }
        JwtAlgorithm::EdDsa => {
            let pair = aws_lc_rs::signature::Ed25519KeyPair::generate()
                .map_err(|_| anyhow!("generating an Ed25519 key"))?;
            let der = pair
                .to_pkcs8v1()
                .map_err(|_| anyhow!("encoding the Ed25519 key"))?;
            Ok((der.as_ref().to_vec(), Algorithm::EdDSA))
        }
    }
}

fn encoding_key(algorithm: JwtAlgorithm, private_der: &[u8]) -> anyhow::Result<EncodingKey> {
    match algorithm {
        // jsonwebtoken reads RSA keys as PKCS#1; its PEM reader unwraps our PKCS#8.
        JwtAlgorithm::Rs256 => {
            let pem = format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
                STANDARD.encode(private_der)
            );
            EncodingKey::from_rsa_pem(pem.as_bytes()).context("loading an RSA key")
        }
        JwtAlgorithm::Es256 => Ok(EncodingKey::from_ec_der(private_der)),
        JwtAlgorithm::EdDsa => Ok(EncodingKey::from_ed_der(private_der)),
    }
}

async fn load_ring(
    store: &Store,
    algorithm: JwtAlgorithm,
    secret_key: Option<&SecretString>,
    retirement: i64,
    now: Millis,
) -> anyhow::Result<KeyRing> {
    let mut connection = store.read().await?;
    #[derive(sqlx::FromRow)]
    struct KeyRow {
        kid: String,
        algorithm: String,
        private_key: String,
        public_jwk: String,
        retired_at: Option<Timestamp>,
    }
    let rows = crate::with_db!(connection, |db| sqlx::query_as::<_, KeyRow>(
        "SELECT kid, algorithm, private_key, public_jwk, retired_at FROM signing_keys \
         WHERE retired_at IS NULL OR retired_at > $1 ORDER BY created_at DESC, kid",
    )
    .bind(Timestamp::from(now - retirement))
    .fetch_all(db)
    .await)?;
    let mut verifying = HashMap::new();
    let mut public = Vec::new();
    let mut signing = None;
    for row in rows {
        let KeyRow {
            kid,
            algorithm: key_algorithm,
            private_key: sealed,
            public_jwk,
            retired_at,
        } = row;
        let jwk: Jwk = serde_json::from_str(&public_jwk)?;
        let jwt_algorithm = match JwtAlgorithm::parse(&key_algorithm) {
            Some(JwtAlgorithm::Rs256) => Algorithm::RS256,
            Some(JwtAlgorithm::Es256) => Algorithm::ES256,
            Some(JwtAlgorithm::EdDsa) => Algorithm::EdDSA,
            None => bail!("signing key {kid} has an unknown algorithm {key_algorithm}"),
        };
        if retired_at.is_none() && signing.is_none() && key_algorithm == algorithm.as_str() {
            let der = unseal(&sealed, secret_key)
                .with_context(|| format!("opening signing key {kid}"))?;
            signing = Some((kid.clone(), jwt_algorithm, encoding_key(algorithm, &der)?));
        }
        verifying.insert(
            kid,
            VerifyingKey {
                algorithm: jwt_algorithm,
                key: DecodingKey::from_jwk(&jwk).context("loading a public key")?,
            },
        );
        public.push(jwk);
    }
    let (signing_kid, signing_algorithm, signing_key) =
        signing.ok_or_else(|| anyhow!("no signing key for {}", algorithm.as_str()))?;
    Ok(KeyRing {
        signing_kid,
        signing_algorithm,
        signing_key,
        verifying,
        jwks: serde_json::to_value(JwkSet { keys: public })?,
    })
}

/// A token that does not verify is a 401 that says why, without saying more.
impl From<TokenError> for crate::error::AppError {
    fn from(error: TokenError) -> Self {
        crate::error::AppError::Unauthorized(match error {
            TokenError::Expired => "The token has expired.",
            TokenError::WrongType => "The token is of the wrong type.",
            TokenError::Invalid | TokenError::UnknownKey => "The token is invalid.",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_makes_keys_that_sign_and_publish() {
        for algorithm in [
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
            JwtAlgorithm::EdDsa,
        ] {
            let (der, jwt_algorithm) = generate_key(algorithm).unwrap();
            let key = encoding_key(algorithm, &der).unwrap();
            let jwk = Jwk::from_encoding_key(&key, jwt_algorithm).unwrap();
            let decoding = DecodingKey::from_jwk(&jwk).unwrap();
            let token = jsonwebtoken::encode(
                &Header::new(jwt_algorithm),
                &serde_json::json!({"sub": "1", "exp": 4_000_000_000i64}),
                &key,
            )
            .unwrap();
            let mut validation = Validation::new(jwt_algorithm);
            validation.set_required_spec_claims(&["sub"]);
            assert!(
                jsonwebtoken::decode::<serde_json::Value>(&token, &decoding, &validation).is_ok()
            );
        }
    }
}
