//! Configuration: every `UMS_*` variable of the contract, parsed once at start.
//!
//! A bad value stops the start with an error that names the variable. Parsing takes a
//! lookup function rather than reading the process environment directly, so tests build
//! configurations without touching global state.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

pub use crate::auth::password::HashCost;
use crate::security::client_ip::ProxyHeader;
use secrecy::SecretString;

#[derive(Debug, thiserror::Error)]
#[error("invalid {variable}: {message}")]
pub struct ConfigError {
    pub variable: &'static str,
    pub message: String,
}

fn invalid(variable: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        variable,
        message: message.into(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    Rs256,
    Es256,
    EdDsa,
}

impl JwtAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
            JwtAlgorithm::EdDsa => "EdDSA",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "RS256" => Some(JwtAlgorithm::Rs256),
            "ES256" => Some(JwtAlgorithm::Es256),
            "EdDSA" => Some(JwtAlgorithm::EdDsa),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct BootstrapAdmin {
    pub username: String,
    pub email: String,
    pub password: SecretString,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: DatabaseUrl,
    pub replica_url: Option<DatabaseUrl>,
    pub redis_url: Option<SecretString>,
    pub bind: SocketAddr,
    pub public_url: String,
    pub smtp_url: Option<SecretString>,
    pub mail_from: String,
    pub jwt_algorithm: JwtAlgorithm,
    pub issuer: String,
    /// `aud` of issued tokens, checked on every token verified (`UMS_JWT_AUDIENCE`).
    pub jwt_audience: Option<String>,
    /// `UMS_ENV=production` refuses to start without `UMS_SECRET_KEY`.
    pub production: bool,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub reset_token_ttl: Duration,
    pub verification_token_ttl: Duration,
    pub secret_key: Option<SecretString>,
    pub cors_origins: Vec<String>,
    pub trusted_proxies: Vec<IpNet>,
    /// The forwarding header the trusted proxies write (`UMS_PROXY_HEADER`).
    pub proxy_header: ProxyHeader,
    pub password_min_length: usize,
    pub hash_cost: HashCost,
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
    pub ip_block_threshold: u32,
    pub ip_block_duration: Duration,
    pub rate_limit_per_minute: u32,
    pub anon_rate_limit_per_minute: u32,
    pub session_rate_per_second: u32,
    /// `UMS_RATE_LIMITS=off` switches the three rate limits off (lockout and IP blocking
    /// stay): for a deployment whose gateway limits already, and for the limiter's benchmark.
    pub rate_limits_enabled: bool,
    pub log_format: LogFormat,
    pub bootstrap_admin: Option<BootstrapAdmin>,
    pub database_timeout: Duration,
    /// `UMS_AUTH_CACHE_ACCOUNTS`: accounts the auth cache holds at most (0: no cache).
    pub auth_cache_capacity: usize,
    pub mail_poll_interval: Duration,
    pub mail_max_attempts: u32,
    pub audit_retention: Duration,
    pub audit_archive_dir: Option<PathBuf>,
    /// Archives older than this are deleted (`UMS_AUDIT_ARCHIVE_RETENTION`, default 7 years).
    pub audit_archive_retention: Duration,
    pub login_attempt_retention: Duration,
    /// How long an asked-for erasure waits, the account disabled, before it is carried out
    /// (`UMS_ERASURE_GRACE`, default 0: at once). An admin can cancel meanwhile.
    pub erasure_grace: Duration,
    /// The browser console's sign-in ends after this long without a request
    /// (`UMS_CONSOLE_IDLE_TIMEOUT`, default 30 minutes) and this long after it began
    /// (`UMS_CONSOLE_MAX_AGE`, default 12 hours).
    pub console_idle_timeout: Duration,
    pub console_max_age: Duration,
    pub redis_prefix: String,
    /// Delays before evaluating a login after 1, 2, 3+ failures of its username.
    pub login_delays: Vec<Duration>,
    pub stuffing_threshold: u32,
    pub stuffing_window: Duration,
    pub request_timeout: Duration,
    /// Password hashes that may wait for a hashing thread; past it, 503 (`UMS_HASH_QUEUE_LIMIT`).
    pub hash_queue_limit: usize,
    /// Registrations and password-reset requests a client IP may make in an hour
    /// (`UMS_ACCOUNT_REQUESTS_PER_HOUR`): each costs a password hash or an email.
    pub account_requests_per_hour: u32,
    pub second_factors: SecondFactors,
    pub risk: Risk,
    pub consent: Consent,
}

/// A database URL whose password never reaches `Debug` output or logs.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_sqlite(&self) -> bool {
        self.0.starts_with("sqlite:")
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        match rest.split_once('@') {
            Some((credentials, host)) => {
                let user = credentials.split(':').next().unwrap_or_default();
                format!("{scheme}://{user}:***@{host}")
            }
            None => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

pub const DEFAULT_SQLITE_PATH: &str = "./data/ums.db";

impl Config {
    /// Reads `.env` (when present) and then the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        // A missing .env is normal; a malformed one is worth refusing.
        if let Err(error) = dotenvy::dotenv()
            && !error.not_found()
        {
            return Err(invalid(".env", error.to_string()));
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let vars = Vars(&lookup);
        let Storage {
            database_url,
            replica_url,
            redis_url,
            redis_prefix,
            database_timeout,
            auth_cache_capacity,
        } = Storage::parse(&vars)?;
        let Web {
            bind,
            public_url,
            cors_origins,
            trusted_proxies,
            proxy_header,
            request_timeout,
        } = Web::parse(&vars)?;
        let Mail {
            smtp_url,
            mail_from,
            mail_poll_interval,
            mail_max_attempts,
        } = Mail::parse(&vars)?;
        let Tokens {
            jwt_algorithm,
            jwt_audience,
            access_token_ttl,
            refresh_token_ttl,
            reset_token_ttl,
            verification_token_ttl,
        } = Tokens::parse(&vars)?;
        let Passwords {
            hash_cost,
            password_min_length,
            hash_queue_limit,
        } = Passwords::parse(&vars)?;
        let Defences {
            lockout_threshold,
            lockout_duration,
            ip_block_threshold,
            ip_block_duration,
            rate_limit_per_minute,
            anon_rate_limit_per_minute,
            session_rate_per_second,
            rate_limits_enabled,
            login_delays,
            stuffing_threshold,
            stuffing_window,
            account_requests_per_hour,
        } = Defences::parse(&vars)?;
        let Operations {
            production,
            secret_key,
            log_format,
            bootstrap_admin,
            audit_retention,
            audit_archive_dir,
            audit_archive_retention,
            login_attempt_retention,
            erasure_grace,
            console_idle_timeout,
            console_max_age,
        } = Operations::parse(&vars)?;
        let second_factors = SecondFactors::parse(&vars, &public_url)?;
        let risk = Risk::parse(&vars)?;
        let consent = Consent::parse(&vars)?;
        Ok(Config {
            database_url,
            replica_url,
            redis_url,
            bind,
            issuer: public_url.clone(),
            jwt_audience,
            production,
            public_url,
            smtp_url,
            mail_from,
            jwt_algorithm,
            access_token_ttl,
            refresh_token_ttl,
            reset_token_ttl,
            verification_token_ttl,
            secret_key,
            cors_origins,
            proxy_header,
            trusted_proxies,
            password_min_length,
            hash_cost,
            lockout_threshold,
            lockout_duration,
            ip_block_threshold,
            ip_block_duration,
            rate_limit_per_minute,
            anon_rate_limit_per_minute,
            session_rate_per_second,
            rate_limits_enabled,
            log_format,
            bootstrap_admin,
            database_timeout,
            auth_cache_capacity,
            mail_poll_interval,
            mail_max_attempts,
            audit_retention,
            audit_archive_dir,
            audit_archive_retention,
            login_attempt_retention,
            erasure_grace,
            console_idle_timeout,
            console_max_age,
            redis_prefix,
            login_delays,
            stuffing_threshold,
            stuffing_window,
            request_timeout,
            hash_queue_limit,
            account_requests_per_hour,
            second_factors,
            risk,
            consent,
        })
    }

    /// The directory a SQLite database file lives in, so it can be created on first start.
    pub fn sqlite_directory(&self) -> Option<PathBuf> {
        let url = self.database_url.expose();
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))?;
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() || path == ":memory:" {
            return None;
        }
        PathBuf::from(path).parent().map(PathBuf::from)
    }
}

/// The variables, read through the lookup; an empty value counts as unset.
struct Vars<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Vars<'_> {
    fn get(&self, name: &str) -> Option<String> {
        (self.0)(name).filter(|value| !value.trim().is_empty())
    }

    fn duration(&self, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(name) {
            Some(value) => parse_duration(&value).ok_or_else(|| {
                invalid(
                    name,
                    format!("`{value}` is not a duration like 45s, 30m, 1h, 30d"),
                )
            }),
            None => Ok(default),
        }
    }

    fn number(&self, name: &'static str, default: u32) -> Result<u32, ConfigError> {
        match self.get(name) {
            Some(value) => value
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid(name, format!("`{value}` is not a positive integer"))),
            None => Ok(default),
        }
    }

    /// A whole number, zero allowed (a weight of 0 switches its signal off).
    fn count(&self, name: &'static str, default: u32) -> Result<u32, ConfigError> {
        match self.get(name) {
            Some(value) => value
                .trim()
                .parse::<u32>()
                .map_err(|_| invalid(name, format!("`{value}` is not a whole number"))),
            None => Ok(default),
        }
    }

    /// `true`/`false` (also `on`/`off`, `1`/`0`, `yes`/`no`).
    fn flag(&self, name: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self
            .get(name)
            .map(|value| value.trim().to_lowercase())
            .as_deref()
        {
            None => Ok(default),
            Some("true" | "on" | "1" | "yes") => Ok(true),
            Some("false" | "off" | "0" | "no") => Ok(false),
            Some(value) => Err(invalid(name, format!("`{value}` is not true or false"))),
        }
    }

    /// A secret URL of one of `schemes` (`redis://`, ...).
    fn secret_url(
        &self,
        name: &'static str,
        schemes: [&str; 2],
    ) -> Result<Option<SecretString>, ConfigError> {
        self.get(name)
            .map(|url| {
                if schemes.iter().any(|scheme| url.starts_with(scheme)) {
                    Ok(SecretString::from(url))
                } else {
                    Err(invalid(
                        name,
                        format!("expected {} or {}", schemes[0], schemes[1]),
                    ))
                }
            })
            .transpose()
    }
}

/// Adaptive sign-in: the GeoIP database, the IP denylists, and the risk engine's weights and
/// thresholds (`UMS_RISK_WEIGHT_*`, `UMS_RISK_*_ABOVE`).
#[derive(Debug, Clone, Default)]
pub struct Risk {
    pub geoip_db: Option<PathBuf>,
    pub ip_denylists: Vec<PathBuf>,
    pub policy: crate::security::risk::RiskPolicy,
}

impl Risk {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        use crate::security::risk::{RiskPolicy, Thresholds, Weights};
        let defaults = Weights::default();
        let weight = |name: &'static str, default: u32| vars.count(name, default);
        let weights = Weights {
            new_ip_failure: weight("UMS_RISK_WEIGHT_NEW_IP_FAILURE", defaults.new_ip_failure)?,
            new_country: weight("UMS_RISK_WEIGHT_NEW_COUNTRY", defaults.new_country)?,
            unusual_hour: weight("UMS_RISK_WEIGHT_UNUSUAL_HOUR", defaults.unusual_hour)?,
            rapid_requests: weight("UMS_RISK_WEIGHT_RAPID_REQUESTS", defaults.rapid_requests)?,
            malicious_ip: weight("UMS_RISK_WEIGHT_MALICIOUS_IP", defaults.malicious_ip)?,
            impossible_travel: weight(
                "UMS_RISK_WEIGHT_IMPOSSIBLE_TRAVEL",
                defaults.impossible_travel,
            )?,
            new_device: weight("UMS_RISK_WEIGHT_NEW_DEVICE", defaults.new_device)?,
        };
        let defaults = Thresholds::default();
        let thresholds = Thresholds {
            notify_above: weight("UMS_RISK_NOTIFY_ABOVE", defaults.notify_above)?,
            verify_above: weight("UMS_RISK_VERIFY_ABOVE", defaults.verify_above)?,
            second_factor_above: weight(
                "UMS_RISK_SECOND_FACTOR_ABOVE",
                defaults.second_factor_above,
            )?,
            refuse_above: weight("UMS_RISK_REFUSE_ABOVE", defaults.refuse_above)?,
        };
        if !(thresholds.notify_above <= thresholds.verify_above
            && thresholds.verify_above <= thresholds.second_factor_above
            && thresholds.second_factor_above <= thresholds.refuse_above)
        {
            return Err(invalid(
                "UMS_RISK_REFUSE_ABOVE",
                "the thresholds must rise: notify ≤ verify ≤ second factor ≤ refuse",
            ));
        }
        Ok(Risk {
            geoip_db: vars.get("UMS_GEOIP_DB").map(PathBuf::from),
            ip_denylists: vars
                .get("UMS_IP_DENYLIST")
                .map(|value| split_list(&value).into_iter().map(PathBuf::from).collect())
                .unwrap_or_default(),
            policy: RiskPolicy {
                weights,
                thresholds,
            },
        })
    }
}

/// The documents a person accepts to have an account: the versions in force of the terms of
/// service and of the privacy notice. Unset, nothing is asked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Consent {
    /// `UMS_TERMS_VERSION`.
    pub terms_version: Option<String>,
    /// `UMS_PRIVACY_VERSION`.
    pub privacy_version: Option<String>,
}

impl Consent {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let version = |name: &'static str| -> Result<Option<String>, ConfigError> {
            match vars.get(name).map(|value| value.trim().to_string()) {
                None => Ok(None),
                Some(value) if value.is_empty() => Ok(None),
                Some(value)
                    if value.len() <= 64
                        && value
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) =>
                {
                    Ok(Some(value))
                }
                Some(_) => Err(invalid(
                    name,
                    "must be a version of at most 64 letters, digits, '.', '-' or '_'",
                )),
            }
        };
        Ok(Consent {
            terms_version: version("UMS_TERMS_VERSION")?,
            privacy_version: version("UMS_PRIVACY_VERSION")?,
        })
    }
}

/// Second factors: whether system admins must have one, and the WebAuthn relying party
/// (its id, a domain, and the origins a browser may assert from).
#[derive(Debug, Clone)]
pub struct SecondFactors {
    /// `UMS_REQUIRE_MFA_FOR_ADMINS` (default on).
    pub require_for_admins: bool,
    /// `UMS_WEBAUTHN_RP_ID`: by default the host of `UMS_PUBLIC_URL`.
    pub webauthn_rp_id: String,
    /// `UMS_WEBAUTHN_ORIGINS`: by default the origin of `UMS_PUBLIC_URL`.
    pub webauthn_origins: Vec<webauthn_rs::prelude::Url>,
}

impl SecondFactors {
    fn parse(vars: &Vars, public_url: &str) -> Result<Self, ConfigError> {
        use webauthn_rs::prelude::Url;
        let origins = match vars.get("UMS_WEBAUTHN_ORIGINS") {
            Some(value) => split_list(&value),
            None => vec![default_webauthn_origin(public_url)],
        };
        let webauthn_origins = origins
            .iter()
            .map(|origin| {
                Url::parse(origin)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https") && url.domain().is_some())
                    .ok_or_else(|| {
                        invalid(
                            "UMS_WEBAUTHN_ORIGINS",
                            format!("`{origin}` is not an http(s) origin with a domain name (WebAuthn refuses IP addresses)"),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let webauthn_rp_id = match vars.get("UMS_WEBAUTHN_RP_ID") {
            Some(value) => value.trim().to_lowercase(),
            None => webauthn_origins
                .first()
                .and_then(|url| url.host_str())
                .unwrap_or("localhost")
                .to_string(),
        };
        // The relying party id must be the origins' host or a registrable suffix of it.
        for origin in &webauthn_origins {
            let host = origin.host_str().unwrap_or_default();
            if !(host == webauthn_rp_id || host.ends_with(&format!(".{webauthn_rp_id}"))) {
                return Err(invalid(
                    "UMS_WEBAUTHN_RP_ID",
                    format!(
                        "`{webauthn_rp_id}` is not the host of the origin {origin} or a parent domain of it"
                    ),
                ));
            }
        }
        Ok(SecondFactors {
            require_for_admins: vars.flag("UMS_REQUIRE_MFA_FOR_ADMINS", true)?,
            webauthn_rp_id,
            webauthn_origins,
        })
    }
}

/// The public URL as a WebAuthn origin. WebAuthn refuses IP addresses, so the zero-setup
/// default (`http://127.0.0.1:5000`) becomes `http://localhost:5000`, where browsers allow
/// passkeys over plain HTTP.
fn default_webauthn_origin(public_url: &str) -> String {
    use webauthn_rs::prelude::Url;
    match Url::parse(public_url) {
        Ok(mut url) if url.domain().is_none() => {
            let _ = url.set_host(Some("localhost"));
            url.origin().ascii_serialization()
        }
        Ok(url) => url.origin().ascii_serialization(),
        Err(_) => public_url.to_string(),
    }
}

/// Where the data lives: the databases and the shared counters.
struct Storage {
    database_url: DatabaseUrl,
    replica_url: Option<DatabaseUrl>,
    redis_url: Option<SecretString>,
    redis_prefix: String,
    database_timeout: Duration,
    auth_cache_capacity: usize,
}

impl Storage {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Storage {
            database_url: match vars.get("UMS_DATABASE_URL") {
                Some(url) => parse_database_url("UMS_DATABASE_URL", &url)?,
                None => DatabaseUrl::new(format!("sqlite://{DEFAULT_SQLITE_PATH}")),
            },
            replica_url: vars
                .get("UMS_DATABASE_REPLICA_URL")
                .map(|url| parse_database_url("UMS_DATABASE_REPLICA_URL", &url))
                .transpose()?,
            redis_url: vars.secret_url("UMS_REDIS_URL", ["redis://", "rediss://"])?,
            redis_prefix: vars.get("UMS_REDIS_PREFIX").unwrap_or_else(|| "ums".into()),
            database_timeout: vars.duration("UMS_DATABASE_TIMEOUT", Duration::from_secs(3))?,
            auth_cache_capacity: vars.count("UMS_AUTH_CACHE_ACCOUNTS", 20_000)? as usize,
        })
    }
}

/// How the service is reached: its address, its public URL, who may call it from a browser,
/// which proxies' forwarding headers are believed.
struct Web {
    bind: SocketAddr,
    public_url: String,
    cors_origins: Vec<String>,
    trusted_proxies: Vec<IpNet>,
    proxy_header: ProxyHeader,
    request_timeout: Duration,
}

impl Web {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let bind = match vars.get("UMS_BIND") {
            Some(value) => value
                .parse()
                .map_err(|_| invalid("UMS_BIND", format!("`{value}` is not host:port")))?,
            None => SocketAddr::from(([127, 0, 0, 1], 5000)),
        };
        let public_url = vars
            .get("UMS_PUBLIC_URL")
            .unwrap_or_else(|| format!("http://{bind}"))
            .trim_end_matches('/')
            .to_string();
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            return Err(invalid(
                "UMS_PUBLIC_URL",
                "expected an http:// or https:// URL",
            ));
        }
        let cors_origins = vars
            .get("UMS_CORS_ORIGINS")
            .map(|value| split_list(&value))
            .unwrap_or_default();
        for origin in &cors_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(invalid(
                    "UMS_CORS_ORIGINS",
                    format!("`{origin}` is not an http(s) origin"),
                ));
            }
        }
        let trusted_proxies = vars
            .get("UMS_TRUSTED_PROXIES")
            .map(|value| {
                split_list(&value)
                    .iter()
                    .map(|entry| parse_network(entry))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        invalid("UMS_TRUSTED_PROXIES", "expected addresses or CIDR ranges")
                    })
            })
            .transpose()?
            .unwrap_or_default();
        let proxy_header = match vars.get("UMS_PROXY_HEADER") {
            Some(value) => ProxyHeader::parse(&value).ok_or_else(|| {
                invalid("UMS_PROXY_HEADER", "expected x-forwarded-for or forwarded")
            })?,
            None => ProxyHeader::XForwardedFor,
        };
        Ok(Web {
            bind,
            public_url,
            cors_origins,
            trusted_proxies,
            proxy_header,
            request_timeout: vars.duration("UMS_REQUEST_TIMEOUT", Duration::from_secs(30))?,
        })
    }
}

struct Mail {
    smtp_url: Option<SecretString>,
    mail_from: String,
    mail_poll_interval: Duration,
    mail_max_attempts: u32,
}

impl Mail {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let mail_from = vars
            .get("UMS_MAIL_FROM")
            .unwrap_or_else(|| "UMS <no-reply@localhost>".into());
        parse_mailbox(&mail_from)
            .ok_or_else(|| invalid("UMS_MAIL_FROM", "expected addr@host or Name <addr@host>"))?;
        Ok(Mail {
            smtp_url: vars.secret_url("UMS_SMTP_URL", ["smtp://", "smtps://"])?,
            mail_from,
            mail_poll_interval: vars.duration("UMS_MAIL_POLL_INTERVAL", Duration::from_secs(1))?,
            mail_max_attempts: vars.number("UMS_MAIL_MAX_ATTEMPTS", 100)?,
        })
    }
}

/// Issued tokens and emailed links: their algorithm, audience and lifetimes.
struct Tokens {
    jwt_algorithm: JwtAlgorithm,
    jwt_audience: Option<String>,
    access_token_ttl: Duration,
    refresh_token_ttl: Duration,
    reset_token_ttl: Duration,
    verification_token_ttl: Duration,
}

impl Tokens {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Tokens {
            jwt_algorithm: match vars.get("UMS_JWT_ALGORITHM") {
                Some(value) => JwtAlgorithm::parse(&value).ok_or_else(|| {
                    invalid("UMS_JWT_ALGORITHM", "expected RS256, ES256 or EdDSA")
                })?,
                None => JwtAlgorithm::Rs256,
            },
            jwt_audience: vars
                .get("UMS_JWT_AUDIENCE")
                .map(|value| value.trim().to_string()),
            access_token_ttl: vars.duration("UMS_ACCESS_TOKEN_TTL", Duration::from_secs(3600))?,
            refresh_token_ttl: vars
                .duration("UMS_REFRESH_TOKEN_TTL", Duration::from_secs(30 * 86_400))?,
            reset_token_ttl: vars.duration("UMS_RESET_TOKEN_TTL", Duration::from_secs(86_400))?,
            verification_token_ttl: vars.duration(
                "UMS_VERIFICATION_TOKEN_TTL",
                Duration::from_secs(2 * 86_400),
            )?,
        })
    }
}

struct Passwords {
    hash_cost: HashCost,
    password_min_length: usize,
    hash_queue_limit: usize,
}

impl Passwords {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let defaults = HashCost::default();
        let hash_cost = HashCost {
            memory_kib: vars.number("UMS_PASSWORD_HASH_MEMORY_KIB", defaults.memory_kib)?,
            iterations: vars.number("UMS_PASSWORD_HASH_ITERATIONS", defaults.iterations)?,
        };
        if hash_cost.memory_kib < 8 {
            return Err(invalid("UMS_PASSWORD_HASH_MEMORY_KIB", "at least 8"));
        }
        let password_min_length = vars.number("UMS_PASSWORD_MIN_LENGTH", 8)? as usize;
        if password_min_length > crate::auth::password::MAX_PASSWORD_LENGTH {
            return Err(invalid("UMS_PASSWORD_MIN_LENGTH", "at most 256"));
        }
        Ok(Passwords {
            hash_cost,
            password_min_length,
            hash_queue_limit: vars.number("UMS_HASH_QUEUE_LIMIT", 64)? as usize,
        })
    }
}

/// Lockout, IP blocks, rate limits, progressive delays, stuffing detection.
struct Defences {
    lockout_threshold: u32,
    lockout_duration: Duration,
    ip_block_threshold: u32,
    ip_block_duration: Duration,
    rate_limit_per_minute: u32,
    anon_rate_limit_per_minute: u32,
    session_rate_per_second: u32,
    rate_limits_enabled: bool,
    login_delays: Vec<Duration>,
    stuffing_threshold: u32,
    stuffing_window: Duration,
    account_requests_per_hour: u32,
}

impl Defences {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let rate_limits_enabled = match vars.get("UMS_RATE_LIMITS").map(|v| v.trim().to_lowercase())
        {
            None => true,
            Some(value) if value == "on" => true,
            Some(value) if value == "off" => false,
            Some(value) => {
                return Err(invalid(
                    "UMS_RATE_LIMITS",
                    format!("`{value}` is not on or off"),
                ));
            }
        };
        let login_delays = match vars.get("UMS_LOGIN_DELAYS").as_deref().map(str::trim) {
            None => vec![
                Duration::from_millis(100),
                Duration::from_millis(500),
                Duration::from_secs(2),
            ],
            Some("none") => Vec::new(),
            Some(list) => split_list(list)
                .iter()
                .map(|step| parse_duration(step).filter(|delay| *delay <= Duration::from_secs(10)))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    invalid(
                        "UMS_LOGIN_DELAYS",
                        "expected durations up to 10s, like 100ms,500ms,2s, or none",
                    )
                })?,
        };
        Ok(Defences {
            lockout_threshold: vars.number("UMS_LOCKOUT_THRESHOLD", 5)?,
            lockout_duration: vars
                .duration("UMS_LOCKOUT_DURATION", Duration::from_secs(30 * 60))?,
            ip_block_threshold: vars.number("UMS_IP_BLOCK_THRESHOLD", 20)?,
            ip_block_duration: vars.duration("UMS_IP_BLOCK_DURATION", Duration::from_secs(3600))?,
            rate_limit_per_minute: vars.number("UMS_RATE_LIMIT_PER_MINUTE", 1000)?,
            anon_rate_limit_per_minute: vars.number("UMS_ANON_RATE_LIMIT_PER_MINUTE", 300)?,
            session_rate_per_second: vars.number("UMS_SESSION_RATE_PER_SECOND", 10)?,
            rate_limits_enabled,
            login_delays,
            stuffing_threshold: vars.number("UMS_STUFFING_THRESHOLD", 50)?,
            stuffing_window: vars.duration("UMS_STUFFING_WINDOW", Duration::from_secs(300))?,
            account_requests_per_hour: vars.number("UMS_ACCOUNT_REQUESTS_PER_HOUR", 30)?,
        })
    }
}

/// Running it: the environment, the secret key, logs, the first admin, retention.
struct Operations {
    production: bool,
    secret_key: Option<SecretString>,
    log_format: LogFormat,
    bootstrap_admin: Option<BootstrapAdmin>,
    audit_retention: Duration,
    audit_archive_dir: Option<PathBuf>,
    audit_archive_retention: Duration,
    login_attempt_retention: Duration,
    erasure_grace: Duration,
    console_idle_timeout: Duration,
    console_max_age: Duration,
}

impl Operations {
    fn parse(vars: &Vars) -> Result<Self, ConfigError> {
        let production = match vars.get("UMS_ENV").map(|value| value.trim().to_lowercase()) {
            None => false,
            Some(value) if value == "production" => true,
            Some(value) if matches!(value.as_str(), "development" | "test" | "staging") => false,
            Some(value) => {
                return Err(invalid(
                    "UMS_ENV",
                    format!("`{value}` is not production, staging, development or test"),
                ));
            }
        };
        let secret_key = vars.get("UMS_SECRET_KEY").map(SecretString::from);
        if production && secret_key.is_none() {
            return Err(invalid(
                "UMS_SECRET_KEY",
                "is required when UMS_ENV is production: signing keys would be stored unencrypted and the audit chain unkeyed",
            ));
        }
        let log_format = match vars.get("UMS_LOG_FORMAT").as_deref() {
            None | Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(invalid("UMS_LOG_FORMAT", "expected json or pretty")),
        };
        let bootstrap_admin = match (
            vars.get("UMS_BOOTSTRAP_ADMIN_USERNAME"),
            vars.get("UMS_BOOTSTRAP_ADMIN_EMAIL"),
            vars.get("UMS_BOOTSTRAP_ADMIN_PASSWORD"),
        ) {
            (None, None, None) => None,
            (Some(username), Some(email), Some(password)) => Some(BootstrapAdmin {
                username,
                email,
                password: SecretString::from(password),
            }),
            _ => {
                return Err(invalid(
                    "UMS_BOOTSTRAP_ADMIN_USERNAME",
                    "set UMS_BOOTSTRAP_ADMIN_USERNAME, _EMAIL and _PASSWORD together",
                ));
            }
        };
        Ok(Operations {
            production,
            secret_key,
            log_format,
            bootstrap_admin,
            audit_retention: vars
                .duration("UMS_AUDIT_RETENTION", Duration::from_secs(90 * 86_400))?,
            audit_archive_dir: vars.get("UMS_AUDIT_ARCHIVE_DIR").map(PathBuf::from),
            audit_archive_retention: vars.duration(
                "UMS_AUDIT_ARCHIVE_RETENTION",
                Duration::from_secs(7 * 366 * 86_400),
            )?,
            login_attempt_retention: vars.duration(
                "UMS_LOGIN_ATTEMPT_RETENTION",
                Duration::from_secs(90 * 86_400),
            )?,
            erasure_grace: vars.duration("UMS_ERASURE_GRACE", Duration::ZERO)?,
            console_idle_timeout: vars
                .duration("UMS_CONSOLE_IDLE_TIMEOUT", Duration::from_secs(30 * 60))?,
            console_max_age: vars
                .duration("UMS_CONSOLE_MAX_AGE", Duration::from_secs(12 * 3600))?,
        })
    }
}

fn parse_database_url(variable: &'static str, url: &str) -> Result<DatabaseUrl, ConfigError> {
    let supported = ["sqlite:", "postgres://", "postgresql://"];
    if supported.iter().any(|prefix| url.starts_with(prefix)) {
        Ok(DatabaseUrl::new(url))
    } else {
        Err(invalid(
            variable,
            "expected a sqlite:, postgres:// or postgresql:// URL",
        ))
    }
}

fn split_list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(String::from)
        .collect()
}

fn parse_network(entry: &str) -> Option<IpNet> {
    entry
        .parse::<IpNet>()
        .ok()
        .or_else(|| entry.parse::<IpAddr>().ok().map(IpNet::from))
}

/// `45s`, `30m`, `1h`, `30d` (and `250ms`); a bare number is seconds.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let (digits, unit) = match value.find(|c: char| !c.is_ascii_digit()) {
        Some(index) => value.split_at(index),
        None => (value, "s"),
    };
    let amount: u64 = digits.parse().ok()?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    amount
        .checked_mul(millis)
        .filter(|total| *total > 0)
        .map(Duration::from_millis)
}

/// Splits `Name <addr@host>` or `addr@host` into (name, address).
pub fn parse_mailbox(value: &str) -> Option<(Option<String>, String)> {
    let value = value.trim();
    let (name, address) = match value.split_once('<') {
        Some((name, rest)) => {
            let address = rest.strip_suffix('>')?;
            let name = name.trim().trim_matches('"');
            ((!name.is_empty()).then(|| name.to_string()), address.trim())
        }
        None => (None, value),
    };
    let (local, domain) = address.split_once('@')?;
    if local.is_empty() || domain.is_empty() || address.contains(char::is_whitespace) {
        return None;
    }
    Some((name, address.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn defaults_need_no_setup() {
        let config = config(&[]).unwrap();
        assert!(config.database_url.is_sqlite());
        assert_eq!(config.bind.to_string(), "127.0.0.1:5000");
        assert_eq!(config.jwt_algorithm, JwtAlgorithm::Rs256);
        assert_eq!(config.lockout_threshold, 5);
        assert_eq!(config.access_token_ttl, Duration::from_secs(3600));
        assert_eq!(config.sqlite_directory(), Some(PathBuf::from("./data")));
        assert!(config.rate_limits_enabled);
        let factors = &config.second_factors;
        assert!(factors.require_for_admins);
        assert_eq!(factors.webauthn_rp_id, "localhost");
        assert_eq!(
            factors.webauthn_origins[0].as_str(),
            "http://localhost:5000/"
        );
    }

    #[test]
    fn the_webauthn_relying_party_follows_the_public_url_or_its_own_variables() {
        let defaulted = config(&[("UMS_PUBLIC_URL", "https://id.lab.example")]).unwrap();
        assert_eq!(defaulted.second_factors.webauthn_rp_id, "id.lab.example");
        let configured = config(&[
            ("UMS_PUBLIC_URL", "https://id.lab.example"),
            ("UMS_WEBAUTHN_RP_ID", "lab.example"),
            (
                "UMS_WEBAUTHN_ORIGINS",
                "https://id.lab.example, https://portal.lab.example",
            ),
            ("UMS_REQUIRE_MFA_FOR_ADMINS", "false"),
        ])
        .unwrap();
        assert_eq!(configured.second_factors.webauthn_rp_id, "lab.example");
        assert_eq!(configured.second_factors.webauthn_origins.len(), 2);
        assert!(!configured.second_factors.require_for_admins);
        for (name, value) in [
            ("UMS_WEBAUTHN_RP_ID", "other.example"),
            ("UMS_WEBAUTHN_ORIGINS", "https://10.0.0.1"),
            ("UMS_WEBAUTHN_ORIGINS", "ftp://lab.example"),
            ("UMS_REQUIRE_MFA_FOR_ADMINS", "sometimes"),
        ] {
            let error = config(&[("UMS_PUBLIC_URL", "https://id.lab.example"), (name, value)])
                .unwrap_err()
                .to_string();
            assert!(
                error.contains(name) || error.contains("UMS_WEBAUTHN_RP_ID"),
                "{name}={value}: {error}"
            );
        }
    }

    #[test]
    fn rate_limits_switch_off_only_when_asked() {
        assert!(
            !config(&[("UMS_RATE_LIMITS", "OFF")])
                .unwrap()
                .rate_limits_enabled
        );
        assert!(
            config(&[("UMS_RATE_LIMITS", "on")])
                .unwrap()
                .rate_limits_enabled
        );
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (name, value) in [
            ("UMS_JWT_ALGORITHM", "HS256"),
            ("UMS_ACCESS_TOKEN_TTL", "an hour"),
            ("UMS_BIND", "localhost"),
            ("UMS_TRUSTED_PROXIES", "10.0.0.0/99"),
            ("UMS_MAIL_FROM", "nobody"),
            ("UMS_LOCKOUT_THRESHOLD", "0"),
            ("UMS_DATABASE_URL", "mysql://x"),
            ("UMS_RATE_LIMITS", "no"),
        ] {
            let error = config(&[(name, value)]).unwrap_err();
            assert_eq!(error.variable, name);
            assert!(error.to_string().contains(name));
        }
    }

    #[test]
    fn durations_take_the_contract_units() {
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("30d"), Some(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("10"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5w"), None);
        assert_eq!(parse_duration("0s"), None);
    }

    #[test]
    fn database_password_is_redacted_in_debug() {
        let url = DatabaseUrl::new("postgres://ums:hunter2@db:5432/ums");
        assert_eq!(format!("{url:?}"), "postgres://ums:***@db:5432/ums");
    }

    #[test]
    fn mailboxes_parse_with_and_without_a_name() {
        assert_eq!(
            parse_mailbox("UMS <no-reply@lab.org>"),
            Some((Some("UMS".into()), "no-reply@lab.org".into()))
        );
        assert_eq!(parse_mailbox("a@b.c"), Some((None, "a@b.c".into())));
    }
}
