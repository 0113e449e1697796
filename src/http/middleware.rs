//! Layers every response passes through: request id, security headers, and the refusal of
//! credentials in URLs (they end up in proxy logs and browser history).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::AppError;
use crate::state::AppState;

pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Echoes a sane client-sent `X-Request-Id`, or makes one.
pub async fn request_id(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(String::from)
        .unwrap_or_else(|| crate::security::secrets::random_token()[..22].to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    // Every line logged while serving the request carries its id, so a failure joins its
    // access-log line.
    let span = tracing::info_span!("request", request_id = %id);
    let mut response = tracing::Instrument::instrument(next.run(request), span).await;
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

const SECURITY_HEADERS: [(HeaderName, &str); 4] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    ),
];

/// The contract's security headers; HSTS only when the client reached us over TLS (directly
/// or as a trusted proxy says with `X-Forwarded-Proto: https`).
pub async fn security_headers(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let over_tls = request.uri().scheme_str() == Some("https") || {
        let from_trusted_proxy = request
            .extensions()
            .get::<ConnectInfo<SocketAddr>>()
            .is_some_and(|ConnectInfo(peer)| {
                state
                    .config
                    .trusted_proxies
                    .iter()
                    .any(|net| net.contains(&peer.ip()))
            });
        from_trusted_proxy
            && request
                .headers()
                .get("x-forwarded-proto")
                .and_then(|value| value.to_str().ok())
                .is_some_and(|proto| proto.eq_ignore_ascii_case("https"))
    };
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in &SECURITY_HEADERS {
        if !headers.contains_key(name) {
            headers.insert(name.clone(), HeaderValue::from_static(value));
        }
    }
    if over_tls {
        headers.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=63072000; includeSubDomains"),
        );
    }
    response
}

const CREDENTIAL_PARAMETERS: [&str; 5] = [
    "access_token",
    "refresh_token",
    "token",
    "id_token",
    "password",
];

/// Refuses any request that carries a credential in its query string.
pub async fn refuse_credentials_in_url(request: Request, next: Next) -> Response {
    if let Some(query) = request.uri().query() {
        let carries_credential = query.split('&').any(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            CREDENTIAL_PARAMETERS
                .iter()
                .any(|credential| name.eq_ignore_ascii_case(credential))
        });
        if carries_credential {
            return AppError::BadRequest(
                "Credentials are not accepted in the URL; send them in the body or the Authorization header."
                    .into(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The caller's user id, filled in by the `AuthUser` extractor when a request authenticates,
/// so the access log line can name who made it.
#[derive(Debug, Clone, Default)]
pub struct RequestUser(pub std::sync::Arc<std::sync::atomic::AtomicI64>);

impl RequestUser {
    pub fn set(&self, user_id: i64) {
        self.0.store(user_id, std::sync::atomic::Ordering::Relaxed);
    }

    fn get(&self) -> Option<i64> {
        Some(self.0.load(std::sync::atomic::Ordering::Relaxed)).filter(|id| *id > 0)
    }
}

fn request_carries_body(request: &Request) -> bool {
    let headers = request.headers();
    headers.contains_key(axum::http::header::TRANSFER_ENCODING)
        || headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|length| length.trim() != "0")
}

/// The refusals that come before a body is read.
fn refused_unread(status: axum::http::StatusCode) -> bool {
    matches!(
        status.as_u16(),
        401 | 403 | 404 | 405 | 413 | 415 | 423 | 429 | 503
    )
}

/// One access-log line and the HTTP metrics per request, labelled by route template
/// (never the raw path, so ids do not become label values).
pub async fn observe(mut request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|path| path.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let request_id = request
        .extensions()
        .get::<RequestId>()
        .map(|id| id.0.clone())
        .unwrap_or_default();
    let user = RequestUser::default();
    request.extensions_mut().insert(user.clone());
    let carries_body = request_carries_body(&request);
    let mut response = next.run(request).await;
    if carries_body && refused_unread(response.status()) {
        // Refused before its body was read (an extractor's 401/403/404…): the connection
        // cannot carry another request, and saying so spares a keep-alive client from
        // sending its next request into a closing socket.
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    let latency = started.elapsed();
    let status = response.status().as_u16();
    let class = format!("{}xx", status / 100);
    let labels = [
        ("method", method.to_string()),
        ("route", route.clone()),
        ("status", class),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels).record(latency.as_secs_f64());
    tracing::info!(
        target: "ums::access",
        request_id = %request_id,
        method = %method,
        route = %route,
        status,
        latency_ms = latency.as_secs_f64() * 1000.0,
        user_id = user.get(),
        "request"
    );
    response
}

/// The API docs page runs Swagger UI from assets embedded in the binary: it needs scripts,
/// styles and images from this origin, and nothing from anywhere else.
pub async fn docs_policy(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    response
}

/// `/api/users/` reaches `/api/users`: the trailing slash is dropped before routing. The docs
/// UI is left alone, as its asset paths are relative to `/api/docs/`.
pub async fn trim_trailing_slash(mut request: Request, next: Next) -> Response {
    let path = request.uri().path();
    if path.len() > 1 && path.ends_with('/') && !path.starts_with("/api/docs") {
        let trimmed = path.trim_end_matches('/');
        let trimmed = if trimmed.is_empty() { "/" } else { trimmed };
        let rewritten = match request.uri().query() {
            Some(query) => format!("{trimmed}?{query}"),
            None => trimmed.to_string(),
        };
        if let Ok(uri) = rewritten.parse() {
            *request.uri_mut() = uri;
        }
    }
    next.run(request).await
}

/// Rate limits: per authenticated user a minute, per session a second (the velocity check),
/// and per client IP a minute for anonymous calls. Health, readiness, metrics and the docs
/// are exempt. A token verified here is handed on, so `AuthUser` does not verify it again.
pub async fn rate_limit(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    if !state.config.rate_limits_enabled
        || matches!(path, "/health" | "/ready" | "/metrics")
        || path.starts_with("/api/docs")
    {
        return next.run(request).await;
    }
    let now = state.now();
    let config = &state.config;
    // Only a live session counts as signed in: a revoked session's token, however well
    // signed, is limited as an anonymous caller. The account read here is handed on, so
    // `AuthUser` neither verifies the token nor reads the session again.
    let claims = crate::http::extract::bearer_token(request.headers()).and_then(|token| {
        state
            .keys
            .verify(token, crate::auth::tokens::TokenType::Access, now)
            .ok()
    });
    let verified = match claims {
        Some(claims) => crate::auth::sessions::live_session_user(&state, &claims, now)
            .await
            .ok()
            .flatten()
            .map(|user| crate::http::extract::VerifiedAccess { claims, user }),
        None => None,
    };
    let refusal = match &verified {
        Some(verified) => {
            let user_key = format!("user:{}", verified.claims.sub);
            let session_key = format!("session:{}", verified.claims.sid);
            let hits = state
                .limiter
                .hits(&[(&user_key, 60_000), (&session_key, 1000)], now)
                .await;
            let (user, session) = (hits[0], hits[1]);
            if user.count > i64::from(config.rate_limit_per_minute) {
                Some(("user", user.window_ends))
            } else {
                (session.count > i64::from(config.session_rate_per_second))
                    .then_some(("session", session.window_ends))
            }
        }
        None => {
            let ip = crate::security::limit_key_of(
                crate::http::extract::client_address(
                    request.extensions(),
                    request.headers(),
                    &state,
                )
                .as_deref(),
            );
            let hit = state.limiter.hit(&format!("anon:{ip}"), 60_000, now).await;
            (hit.count > i64::from(config.anon_rate_limit_per_minute))
                .then_some(("ip", hit.window_ends))
        }
    };
    if let Some(verified) = verified {
        request.extensions_mut().insert(verified);
    }
    if let Some((scope, window_ends)) = refusal {
        metrics::counter!("ums_rate_limited_total", "scope" => scope).increment(1);
        return AppError::TooManyRequests {
            retry_after_seconds: ((window_ends - now).max(0) as u64).div_ceil(1000),
        }
        .into_response();
    }
    next.run(request).await
}

/// Bounds how long a request may run; past `UMS_REQUEST_TIMEOUT` it is answered 503.
pub async fn timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.config.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!("request timed out");
            AppError::Unavailable.into_response()
        }
    }
}

/// CORS for the configured origins only; without any, no CORS headers are sent at all.
pub fn cors(state: &AppState) -> Option<tower_http::cors::CorsLayer> {
    use axum::http::Method;
    let origins: Vec<HeaderValue> = state
        .config
        .cors_origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    if origins.is_empty() {
        return None;
    }
    Some(
        tower_http::cors::CorsLayer::new()
            .allow_origin(tower_http::cors::AllowOrigin::list(origins))
            .allow_methods([
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::PATCH,
                Method::DELETE,
            ])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                REQUEST_ID.clone(),
            ])
            .expose_headers([REQUEST_ID.clone(), header::RETRY_AFTER])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// Compresses (gzip or brotli, as the client accepts) the answers worth it: over 1 KiB, not an
/// event stream or an archive, and never one that carries a secret (`Cache-Control: no-store`:
/// tokens, codes, exports), where a compressed length could leak it to an attacker who can
/// put text of theirs beside it (BREACH).
pub fn compression()
-> tower_http::compression::CompressionLayer<impl tower_http::compression::Predicate> {
    use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
    let keeps_no_secret = |_: axum::http::StatusCode,
                           _: axum::http::Version,
                           headers: &axum::http::HeaderMap,
                           _: &axum::http::Extensions| {
        !headers
            .get(axum::http::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.contains("no-store"))
    };
    tower_http::compression::CompressionLayer::new()
        .gzip(true)
        .br(true)
        .compress_when(
            SizeAbove::new(1024)
                .and(NotForContentType::SSE)
                .and(NotForContentType::IMAGES)
                .and(NotForContentType::const_new("application/zip"))
                .and(keeps_no_secret),
        )
}
