//! Layers every response passes through: request id, security headers, and the refusal of
//! credentials in URLs (they end up in proxy logs and browser history).

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::AppError;
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
        .unwrap_or_else(|| crate::auth::tokens::random_token()[..22].to_string());
    request.extensions_mut().insert(RequestId(id.clone()));
    let mut response = next.run(request).await;
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
    let response = next.run(request).await;
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
