//! Times the cryptographic primitives that bound UMS's throughput, at the configured cost.
//!
//! ```sh
//! cargo run --release --example primitives            # JSON of medians on stdout
//! cargo run --release --example primitives -- hash    # a PHC hash of the password read from stdin
//! ```
//!
//! The Argon2id cost comes from the same configuration as `ums serve`
//! (`UMS_PASSWORD_HASH_MEMORY_KIB`, `UMS_PASSWORD_HASH_ITERATIONS`, default 19456 KiB, 2 passes),
//! and hashing goes through the service's own `PasswordHasherConfig`. The JWT figures time
//! `jsonwebtoken::encode`/`decode` with keys made the way `src/auth/tokens.rs` makes them
//! (RSA-2048 and Ed25519 from aws-lc-rs, PKCS#8), over the service's own `Claims`.
//! `bench/run` uses both modes: `hash` for the seed file, the default for the limits it reports.

use std::io::BufRead;
use std::time::Instant;

use anyhow::{Context, anyhow};
use aws_lc_rs::encoding::AsDer;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::SecretString;
use ums::auth::password::PasswordHasherConfig;
use ums::auth::password::THREAD_PREFIX;
use ums::auth::tokens::{Claims, TokenType};
use ums::config::Config;
use ums::security::secrets::random_token;

fn main() -> anyhow::Result<()> {
    let config = Config::from_env().map_err(|e| anyhow!("{e}"))?;
    let hasher = PasswordHasherConfig::new(config.hash_cost)?;
    match std::env::args().nth(1).as_deref() {
        Some("hash") => {
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            let password = SecretString::from(line.trim_end_matches(['\r', '\n']).to_string());
            println!("{}", hasher.hash(&password)?);
            Ok(())
        }
        None | Some("time") => time_all(&config, &hasher),
        Some(other) => Err(anyhow!("unknown mode {other}; expected `hash` or `time`")),
    }
}

/// Median wall time of `runs` calls of `work`, in microseconds (after one warm-up call).
fn median_micros(runs: usize, mut work: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    work()?;
    let mut samples = Vec::with_capacity(runs);
    for _ in 0..runs {
        let start = Instant::now();
        work()?;
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}

fn time_all(config: &Config, hasher: &PasswordHasherConfig) -> anyhow::Result<()> {
    let runs_hash = env_runs("BENCH_HASH_RUNS", 15);
    let runs_sign = env_runs("BENCH_SIGN_RUNS", 300);

    // Timed on threads named like the service's hashing threads (`auth::hash_pool`), which
    // keep and reuse Argon2's working memory, so these are the service's own hash costs.
    let password = SecretString::from("correct horse battery staple".to_string());
    let stored = hasher.hash(&password)?;
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let ready = std::sync::Barrier::new(threads);
    let (argon2_hash, argon2_verify, parallel_per_second) = std::thread::scope(|scope| {
        let single = std::thread::Builder::new()
            .name(format!("{THREAD_PREFIX}bench"))
            .spawn_scoped(scope, || -> anyhow::Result<(f64, f64)> {
                let hash = median_micros(runs_hash, || hasher.hash(&password).map(|_| ()))?;
                let verify = median_micros(runs_hash, || verify(hasher, &password, &stored))?;
                Ok((hash, verify))
            })?
            .join()
            .map_err(|_| anyhow!("the timing thread panicked"))??;
        // The same verification on every core at once: they share caches and memory
        // bandwidth, so this is the machine's measured ceiling for logins.
        let workers = (0..threads)
            .map(|index| {
                let ready = &ready;
                let (password, stored) = (&password, &stored);
                std::thread::Builder::new()
                    .name(format!("{THREAD_PREFIX}bench-{index}"))
                    .spawn_scoped(scope, move || -> anyhow::Result<f64> {
                        verify(hasher, password, stored)?; // warm-up: allocates the memory
                        ready.wait();
                        let start = Instant::now();
                        (0..runs_hash).try_for_each(|_| verify(hasher, password, stored))?;
                        Ok(start.elapsed().as_secs_f64())
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut slowest = 0f64;
        for worker in workers {
            let elapsed = worker
                .join()
                .map_err(|_| anyhow!("a timing thread panicked"))??;
            slowest = slowest.max(elapsed);
        }
        let per_second = (threads * runs_hash) as f64 / slowest;
        anyhow::Ok((single.0, single.1, per_second))
    })?;

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;
    let claims = Claims {
        iss: "http://127.0.0.1:5000".into(),
        sub: "4711".into(),
        iat: now,
        exp: now + 3600,
        jti: random_token(),
        typ: TokenType::Access,
        sid: random_token(),
        is_admin: false,
        aud: None,
        amr: vec!["pwd".into()],
        auth_time: now,
    };

    let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
        .map_err(|_| anyhow!("generating an RSA key"))?;
    let rsa_der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
        rsa.as_der().map_err(|_| anyhow!("encoding the RSA key"))?;
    let rsa_pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        STANDARD.encode(rsa_der.as_ref())
    );
    let rsa_key = EncodingKey::from_rsa_pem(rsa_pem.as_bytes()).context("loading the RSA key")?;
    let (rs256_sign, rs256_verify) = time_jwt(&claims, &rsa_key, Algorithm::RS256, runs_sign)?;

    let ed = aws_lc_rs::signature::Ed25519KeyPair::generate()
        .map_err(|_| anyhow!("generating an Ed25519 key"))?;
    let ed_der = ed
        .to_pkcs8v1()
        .map_err(|_| anyhow!("encoding the Ed25519 key"))?;
    let ed_key = EncodingKey::from_ed_der(ed_der.as_ref());
    let (eddsa_sign, eddsa_verify) = time_jwt(&claims, &ed_key, Algorithm::EdDSA, runs_sign)?;

    let report = serde_json::json!({
        "argon2id": {
            "memory_kib": config.hash_cost.memory_kib,
            "iterations": config.hash_cost.iterations,
            "runs": runs_hash,
            "hash_us": argon2_hash.round(),
            "verify_us": argon2_verify.round(),
            "parallel_threads": threads,
            "parallel_verify_per_s": round1(parallel_per_second),
            "memory": "reused, as on the service's hashing threads",
        },
        "rs256": {"runs": runs_sign, "sign_us": round1(rs256_sign), "verify_us": round1(rs256_verify)},
        "eddsa": {"runs": runs_sign, "sign_us": round1(eddsa_sign), "verify_us": round1(eddsa_verify)},
    });
    println!("{report}");
    Ok(())
}

fn verify(
    hasher: &PasswordHasherConfig,
    password: &SecretString,
    stored: &str,
) -> anyhow::Result<()> {
    if hasher.verify(password, Some(stored)).matched() {
        Ok(())
    } else {
        Err(anyhow!("the password did not verify"))
    }
}

/// Median sign and verify times of one JWT over `claims`.
fn time_jwt(
    claims: &Claims,
    key: &EncodingKey,
    algorithm: Algorithm,
    runs: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut header = Header::new(algorithm);
    header.kid = Some("bench".into());
    header.typ = Some("JWT".into());
    let sign = median_micros(runs, || {
        jsonwebtoken::encode(&header, claims, key)
            .map(|_| ())
            .context("signing")
    })?;
    let token = jsonwebtoken::encode(&header, claims, key)?;
    let decoding = DecodingKey::from_jwk(&Jwk::from_encoding_key(key, algorithm)?)?;
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[&claims.iss]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "iat"]);
    let verify = median_micros(runs, || {
        jsonwebtoken::decode::<Claims>(&token, &decoding, &validation)
            .map(|_| ())
            .context("verifying")
    })?;
    Ok((sign, verify))
}

fn env_runs(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .filter(|runs| *runs > 0)
        .unwrap_or(default)
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}
