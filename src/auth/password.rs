//! Passwords: the policy, Argon2id hashing, and verification of the Werkzeug hashes that
//! users imported from the Flask original still carry (rehashed to Argon2id on their next
//! successful login).
//!
//! Hashing is CPU-bound for tens of milliseconds, so callers run it on the blocking pool.

use std::collections::HashSet;
use std::sync::LazyLock;

use std::cell::RefCell;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

pub const MAX_PASSWORD_LENGTH: usize = 256;

/// Argon2id cost. OWASP's recommendation (19 MiB, 2 passes, 1 lane) by default; tests lower it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub memory_kib: u32,
    pub iterations: u32,
}

impl Default for HashCost {
    fn default() -> Self {
        HashCost {
            memory_kib: 19_456,
            iterations: 2,
        }
    }
}

/// Django's list of the 20,000 most common passwords (compiled by Royce Williams), lower case.
static COMMON_PASSWORDS: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| include_str!("common-passwords.txt").lines().collect());

/// Checks a new password against the policy; the message is safe to show the user.
pub fn check_policy(
    password: &str,
    min_length: usize,
    username: Option<&str>,
) -> Result<(), String> {
    let length = password.chars().count();
    if length < min_length {
        return Err(format!("must be at least {min_length} characters long"));
    }
    if length > MAX_PASSWORD_LENGTH {
        return Err(format!(
            "must be at most {MAX_PASSWORD_LENGTH} characters long"
        ));
    }
    let lowered = password.to_lowercase();
    if COMMON_PASSWORDS.contains(lowered.as_str()) {
        return Err("is too common".into());
    }
    if username.is_some_and(|username| lowered == username.to_lowercase()) {
        return Err("must not be the username".into());
    }
    Ok(())
}

thread_local! {
    /// Argon2's working memory (19 MiB at the default cost), kept by each hashing thread and
    /// reused: allocating and freeing it per hash grew the process by hundreds of MiB.
    static WORKING_MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs Argon2 `argon2` over `password` and `salt` into `output`, in this thread's memory.
/// Names of the hashing threads (the password module keeps working memory only on them).
pub const THREAD_PREFIX: &str = "ums-hash-";

fn argon2_into(
    argon2: &Argon2<'_>,
    password: &[u8],
    salt: &[u8],
    output: &mut [u8],
) -> anyhow::Result<()> {
    let blocks = argon2.params().block_count();
    // Only the hashing threads keep their memory; a hash made elsewhere (start-up, commands)
    // gives it back at once.
    if !std::thread::current()
        .name()
        .is_some_and(|name| name.starts_with(THREAD_PREFIX))
    {
        let mut memory = vec![Block::default(); blocks];
        return argon2
            .hash_password_into_with_memory(password, salt, output, &mut memory)
            .map_err(|e| anyhow::anyhow!("argon2: {e}"));
    }
    WORKING_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        argon2
            .hash_password_into_with_memory(password, salt, output, &mut memory[..blocks])
            .map_err(|e| anyhow::anyhow!("argon2: {e}"))
    })
}

/// Gives this thread's working memory back (a hashing thread that has been idle a while):
/// an idle service should not hold cores × 19 MiB it may not need for hours.
pub fn release_working_memory() {
    WORKING_MEMORY.with(|memory| *memory.borrow_mut() = Vec::new());
}

#[derive(Clone)]
pub struct PasswordHasherConfig {
    argon2: Argon2<'static>,
    /// A hash of a random password at the configured cost, verified against when the user
    /// does not exist, so an unknown username costs the same time as a wrong password.
    dummy_hash: String,
}

impl PasswordHasherConfig {
    pub fn new(cost: HashCost) -> anyhow::Result<Self> {
        let params = Params::new(cost.memory_kib, cost.iterations, 1, None)
            .map_err(|e| anyhow::anyhow!("argon2 parameters: {e}"))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let mut config = PasswordHasherConfig {
            argon2,
            dummy_hash: String::new(),
        };
        config.dummy_hash =
            config.hash_bytes(crate::security::secrets::random_token().as_bytes())?;
        Ok(config)
    }

    pub fn hash(&self, password: &SecretString) -> anyhow::Result<String> {
        self.hash_bytes(password.expose_secret().as_bytes())
    }

    /// An Argon2id PHC string: `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>`.
    fn hash_bytes(&self, password: &[u8]) -> anyhow::Result<String> {
        let salt = SaltString::generate(&mut OsRng);
        let mut salt_bytes = [0u8; 64];
        let salt_bytes = salt
            .decode_b64(&mut salt_bytes)
            .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
        let mut output = [0u8; 32];
        argon2_into(&self.argon2, password, salt_bytes, &mut output)?;
        let params = self.argon2.params();
        Ok(format!(
            "$argon2id$v=19$m={},t={},p={}${}${}",
            params.m_cost(),
            params.t_cost(),
            params.p_cost(),
            salt.as_str(),
            STANDARD_NO_PAD.encode(output)
        ))
    }

    /// Verifies `password` against `stored` (Argon2 PHC or Werkzeug format); `None` for an
    /// unknown user verifies against the dummy hash and always fails.
    pub fn verify(&self, password: &SecretString, stored: Option<&str>) -> Verification {
        let candidate = password.expose_secret().as_bytes();
        let Some(stored) = stored else {
            let _ = self.verify_argon2(candidate, &self.dummy_hash);
            return Verification::Mismatch;
        };
        if stored.starts_with("$argon2") {
            if !self.verify_argon2(candidate, stored) {
                return Verification::Mismatch;
            }
            match self.is_current(stored) {
                true => Verification::Match,
                false => Verification::MatchNeedsRehash,
            }
        } else {
            match verify_werkzeug(candidate, stored) {
                Some(true) => Verification::MatchNeedsRehash,
                // An unreadable stored hash costs the dummy's time too.
                Some(false) => Verification::Mismatch,
                None => {
                    let _ = self.verify_argon2(candidate, &self.dummy_hash);
                    Verification::Mismatch
                }
            }
        }
    }

    /// Verifies against a stored Argon2 PHC string, at the parameters it names.
    fn verify_argon2(&self, candidate: &[u8], stored: &str) -> bool {
        let Ok(hash) = PasswordHash::new(stored) else {
            return false;
        };
        let (Ok(algorithm), Ok(params), Some(salt), Some(expected)) = (
            Algorithm::try_from(hash.algorithm),
            Params::try_from(&hash),
            hash.salt,
            hash.hash,
        ) else {
            return false;
        };
        let version = hash
            .version
            .and_then(|version| Version::try_from(version).ok())
            .unwrap_or(Version::V0x13);
        let mut salt_bytes = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_bytes) else {
            return false;
        };
        let argon2 = Argon2::new(algorithm, version, params);
        let mut output = vec![0u8; expected.len()];
        argon2_into(&argon2, candidate, salt, &mut output).is_ok()
            && bool::from(output.as_slice().ct_eq(expected.as_bytes()))
    }

    /// Whether a stored Argon2 hash was made at the configured cost.
    fn is_current(&self, stored: &str) -> bool {
        let Ok(hash) = PasswordHash::new(stored) else {
            return false;
        };
        let Ok(params) = Params::try_from(&hash) else {
            return false;
        };
        let configured = self.argon2.params();
        hash.algorithm.as_str() == "argon2id"
            && params.m_cost() == configured.m_cost()
            && params.t_cost() == configured.t_cost()
            && params.p_cost() == configured.p_cost()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    Match,
    MatchNeedsRehash,
    Mismatch,
}

impl Verification {
    pub fn matched(self) -> bool {
        !matches!(self, Verification::Mismatch)
    }
}

/// Werkzeug's `method$salt$hex`, where method is `pbkdf2:sha256[:iterations]` or
/// `scrypt[:n:r:p]`. `None` when the text is not such a hash.
fn verify_werkzeug(candidate: &[u8], stored: &str) -> Option<bool> {
    let mut parts = stored.splitn(3, '$');
    let (method, salt, expected_hex) = (parts.next()?, parts.next()?, parts.next()?);
    let expected = hex::decode(expected_hex).ok()?;
    let mut method_parts = method.split(':');
    let derived = match method_parts.next()? {
        "pbkdf2" => {
            if method_parts.next()? != "sha256" {
                return None;
            }
            let iterations: u32 = match method_parts.next() {
                Some(text) => text.parse().ok()?,
                None => 600_000,
            };
            if iterations == 0 || iterations > 10_000_000 {
                return None;
            }
            let mut output = vec![0u8; expected.len()];
            pbkdf2::pbkdf2_hmac::<sha2::Sha256>(
                candidate,
                salt.as_bytes(),
                iterations,
                &mut output,
            );
            output
        }
        "scrypt" => {
            let n: u64 = method_parts.next().unwrap_or("32768").parse().ok()?;
            let r: u32 = method_parts.next().unwrap_or("8").parse().ok()?;
            let p: u32 = method_parts.next().unwrap_or("1").parse().ok()?;
            if !n.is_power_of_two() || n < 2 {
                return None;
            }
            let params =
                scrypt::Params::new(n.trailing_zeros() as u8, r, p, expected.len()).ok()?;
            let mut output = vec![0u8; expected.len()];
            scrypt::scrypt(candidate, salt.as_bytes(), &params, &mut output).ok()?;
            output
        }
        _ => return None,
    };
    if expected.is_empty() {
        return None;
    }
    Some(bool::from(derived.ct_eq(&expected)))
}

/// The least time a login's password check takes, whatever the account: the cost of the
/// slowest imported (Werkzeug) hash still stored. Without it an imported account answered a
/// wrong password in 88 ms against 18 ms for others, and so could be told apart from an
/// unknown name. Zero once no imported hash is left (each is rehashed at its first login).
#[derive(Debug, Default)]
pub struct VerifyFloor {
    micros: std::sync::atomic::AtomicU64,
}

impl VerifyFloor {
    pub fn get(&self) -> std::time::Duration {
        std::time::Duration::from_micros(self.micros.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn set(&self, floor: std::time::Duration) {
        let micros = u64::try_from(floor.as_micros()).unwrap_or(u64::MAX);
        self.micros
            .store(micros, std::sync::atomic::Ordering::Relaxed);
        metrics::gauge!("ums_login_verify_floor_seconds").set(floor.as_secs_f64());
    }

    /// Waits (without holding a thread) until the check begun at `started` has taken the
    /// floor's time.
    pub async fn pad(&self, started: std::time::Instant) {
        let floor = self.get();
        let elapsed = started.elapsed();
        if elapsed < floor {
            tokio::time::sleep(floor - elapsed).await;
        }
    }
}

/// The Werkzeug methods (`pbkdf2:sha256:600000`, `scrypt:32768:8:1`) among stored hashes.
pub fn legacy_methods<'a>(hashes: impl Iterator<Item = &'a str>) -> HashSet<String> {
    hashes
        .filter(|stored| !stored.starts_with("$argon2"))
        .filter_map(|stored| stored.split('$').next())
        .map(String::from)
        .collect()
}

/// How long checking a wrong password against a hash of `method` takes here.
pub fn time_legacy_method(method: &str) -> std::time::Duration {
    let sample = format!("{method}$floorsalt${}", "00".repeat(32));
    let started = std::time::Instant::now();
    let _ = verify_werkzeug(b"not the password", &sample);
    started.elapsed()
}

/// Recognises a hash `ums import-users` may load: Argon2 PHC or a Werkzeug format.
pub fn is_supported_hash(stored: &str) -> bool {
    if stored.starts_with("$argon2") {
        return PasswordHash::new(stored).is_ok();
    }
    let mut parts = stored.splitn(3, '$');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(method), Some(_), Some(hex_digest))
            if (method.starts_with("pbkdf2:sha256") || method.starts_with("scrypt"))
                && hex::decode(hex_digest).is_ok_and(|bytes| !bytes.is_empty())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> PasswordHasherConfig {
        PasswordHasherConfig::new(HashCost {
            memory_kib: 64,
            iterations: 1,
        })
        .unwrap()
    }

    fn secret(text: &str) -> SecretString {
        SecretString::from(text.to_string())
    }

    #[test]
    fn policy_refuses_short_long_common_and_username_passwords() {
        assert!(check_policy("short", 8, None).is_err());
        assert!(check_policy(&"x".repeat(257), 8, None).is_err());
        assert_eq!(
            check_policy("password1", 8, None).unwrap_err(),
            "is too common"
        );
        assert_eq!(
            check_policy("Qwertyuiop", 8, None).unwrap_err(),
            "is too common"
        );
        assert!(check_policy("alice.smith", 8, Some("Alice.Smith")).is_err());
        assert!(check_policy("correct horse battery", 8, Some("alice")).is_ok());
    }

    #[test]
    fn the_embedded_list_holds_at_least_ten_thousand_passwords() {
        assert!(COMMON_PASSWORDS.len() >= 10_000);
    }

    #[test]
    fn argon2_hashes_verify_and_wrong_passwords_do_not() {
        let hasher = cheap();
        let hash = hasher.hash(&secret("correct horse")).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert_eq!(
            hasher.verify(&secret("correct horse"), Some(&hash)),
            Verification::Match
        );
        assert_eq!(
            hasher.verify(&secret("wrong horse"), Some(&hash)),
            Verification::Mismatch
        );
        assert_eq!(
            hasher.verify(&secret("correct horse"), None),
            Verification::Mismatch
        );
    }

    #[test]
    fn our_phc_strings_agree_with_the_reference_implementation() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        let hasher = cheap();
        let ours = hasher.hash(&secret("correct horse")).unwrap();
        let reference = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(64, 1, 1, None).unwrap(),
        );
        assert!(
            reference
                .verify_password(b"correct horse", &PasswordHash::new(&ours).unwrap())
                .is_ok()
        );
        let salt = SaltString::generate(&mut OsRng);
        let theirs = reference
            .hash_password(b"correct horse", &salt)
            .unwrap()
            .to_string();
        assert_eq!(
            hasher.verify(&secret("correct horse"), Some(&theirs)),
            Verification::Match
        );
        assert_eq!(
            hasher.verify(&secret("correct horsf"), Some(&theirs)),
            Verification::Mismatch
        );
    }

    #[test]
    fn a_hash_at_another_cost_asks_for_a_rehash() {
        let old = PasswordHasherConfig::new(HashCost {
            memory_kib: 32,
            iterations: 1,
        })
        .unwrap();
        let hash = old.hash(&secret("correct horse")).unwrap();
        assert_eq!(
            cheap().verify(&secret("correct horse"), Some(&hash)),
            Verification::MatchNeedsRehash
        );
    }

    // Both made by Werkzeug 3.1.9's generate_password_hash("secret-password", method=...).
    const WERKZEUG_PBKDF2: &str = "pbkdf2:sha256:1000$VQyqSJpr$993a0057c9c86bbea6216e80f3904e3b6ef68443ba88d348c53305c44dbdc979";
    const WERKZEUG_SCRYPT: &str = "scrypt:1024:8:1$8KY5ZkoJ$5a8e53064cc9ffc3bafb08b9a0a39a328ec75a00dd0d23ceac93a61b5ceddbb5d3363851ec1a002d2f227980bbd7cc4e4fb716f18ee929bc42a9c0c7480c405d";

    #[test]
    fn werkzeug_hashes_verify_and_ask_for_a_rehash() {
        let hasher = cheap();
        for stored in [WERKZEUG_PBKDF2, WERKZEUG_SCRYPT] {
            assert!(is_supported_hash(stored));
            assert_eq!(
                hasher.verify(&secret("secret-password"), Some(stored)),
                Verification::MatchNeedsRehash
            );
            assert_eq!(
                hasher.verify(&secret("secret-passwore"), Some(stored)),
                Verification::Mismatch
            );
        }
    }

    #[test]
    fn garbage_hashes_never_match() {
        let hasher = cheap();
        for stored in ["", "plain", "md5$x$abcd", "pbkdf2:sha256:0$s$00"] {
            assert_eq!(
                hasher.verify(&secret(""), Some(stored)),
                Verification::Mismatch
            );
        }
        assert!(!is_supported_hash("plain"));
    }
}
