//! The browser console, served by the binary itself: account pages for everyone at
//! `/account` and the admin console at `/admin`. Pages are rendered on the server from
//! templates compiled into the binary, forms work without JavaScript, and the pages load
//! nothing but the console's own stylesheet and, on the security dashboard, its own small
//! script for live updates (the policy allows nothing from another origin and no inline
//! script). Signing in follows the API's rules (lockout, IP blocks, risk, second factor,
//! consent) because it goes through the same services; the sign-in is a cookie
//! (`session.rs`), and every handler in `pages.rs` is a thin shell around a service call.

pub mod pages;
pub mod session;

use std::sync::LazyLock;

use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use minijinja::Environment;

use crate::state::AppState;

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut environment = Environment::new();
    // Optional values (a notice, an error, the signed-in person) may be left out.
    environment.set_undefined_behavior(minijinja::UndefinedBehavior::Chainable);
    let sources: [(&str, &str); 14] = [
        ("layout.html", include_str!("templates/layout.html")),
        ("login.html", include_str!("templates/login.html")),
        ("step.html", include_str!("templates/step.html")),
        ("account.html", include_str!("templates/account.html")),
        ("users.html", include_str!("templates/users.html")),
        ("audit.html", include_str!("templates/audit.html")),
        ("message.html", include_str!("templates/message.html")),
        ("security.html", include_str!("templates/security.html")),
        ("labs.html", include_str!("templates/labs.html")),
        ("lab.html", include_str!("templates/lab.html")),
        ("totp.html", include_str!("templates/totp.html")),
        ("passkey.html", include_str!("templates/passkey.html")),
        ("pager.html", include_str!("templates/pager.html")),
        ("attempts.html", include_str!("templates/attempts.html")),
    ];
    for (name, source) in sources {
        if let Err(error) = environment.add_template(name, source) {
            tracing::error!(template = name, error = %error, "a console template does not parse");
        }
    }
    environment
});

const STYLESHEET: &str = include_str!("static/console.css");
const DASHBOARD_SCRIPT: &str = include_str!("static/dashboard.js");
const PASSKEYS_SCRIPT: &str = include_str!("static/passkeys.js");

/// Renders `template` with `context` (HTML-escaped by the environment).
pub fn render(
    template: &str,
    status: axum::http::StatusCode,
    context: minijinja::Value,
) -> Response {
    let rendered = TEMPLATES
        .get_template(template)
        .and_then(|template| template.render(context));
    match rendered {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(template, error = %error, "rendering a console page failed");
            (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                Html("<!doctype html><title>Error</title><p>The page could not be shown.</p>"),
            )
                .into_response()
        }
    }
}

/// The console's pages carry their own policy: this origin's stylesheet and scripts (no
/// inline script), forms posted and streams read from this origin, nothing else; and they are
/// never cached.
pub async fn console_policy(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    if response.status().is_client_error() && is_plain_text(&response) {
        response = as_page(response).await;
    }
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; \
             img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn is_plain_text(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|kind| kind.starts_with("text/plain"))
}

/// axum's own refusals before a handler runs (a path whose id is not a number, say) are
/// plain text; the console shows them as one of its pages, saying the same.
async fn as_page(response: Response) -> Response {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), 4096)
        .await
        .unwrap_or_default();
    pages::message(
        None,
        "",
        status,
        "That did not work",
        &String::from_utf8_lossy(&body),
    )
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

async fn dashboard_script() -> Response {
    asset("text/javascript; charset=utf-8", DASHBOARD_SCRIPT)
}

async fn passkeys_script() -> Response {
    asset("text/javascript; charset=utf-8", PASSKEYS_SCRIPT)
}

/// `/account`, `/admin` and the stylesheet.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/console/console.css", get(stylesheet))
        .route("/console/dashboard.js", get(dashboard_script))
        .route("/console/passkeys.js", get(passkeys_script))
        .route(
            "/account/login",
            get(pages::sign_in::login_form).post(pages::sign_in::login),
        )
        .route("/account/login/step", post(pages::sign_in::login_step))
        .route(
            "/account/login/passkey",
            post(pages::sign_in::passkey_login),
        )
        .route("/account/login/enrol", post(pages::sign_in::enrol))
        .route("/account", get(pages::account::account))
        .route("/account/profile", post(pages::account::save_profile))
        .route("/account/password", post(pages::account::change_password))
        .route("/account/email", post(pages::account::change_email))
        .route(
            "/account/sessions/{id}/revoke",
            post(pages::account::revoke_session),
        )
        .route("/account/logout", post(pages::sign_in::logout))
        .route(
            "/account/logout-everywhere",
            post(pages::sign_in::logout_everywhere),
        )
        .route("/account/export", get(pages::account::export))
        .route(
            "/account/devices/{id}/forget",
            post(pages::account::forget_device),
        )
        .route("/account/totp/start", post(pages::factors::start_totp))
        .route("/account/totp/confirm", post(pages::factors::confirm_totp))
        .route("/account/totp/disable", post(pages::factors::disable_totp))
        .route(
            "/account/recovery-codes",
            post(pages::factors::regenerate_recovery_codes),
        )
        .route(
            "/account/passkeys/start",
            post(pages::factors::start_passkey),
        )
        .route(
            "/account/passkeys/finish",
            post(pages::factors::finish_passkey),
        )
        .route(
            "/account/passkeys/{id}/rename",
            post(pages::factors::rename_passkey),
        )
        .route(
            "/account/passkeys/{id}/remove",
            post(pages::factors::remove_passkey),
        )
        .route("/account/step-up", post(pages::factors::step_up))
        .route("/account/delete", post(pages::account::delete_account))
        .route("/admin", get(pages::admin::users))
        .route("/admin/users/{id}/unlock", post(pages::admin::unlock))
        .route("/admin/users/{id}/active", post(pages::admin::set_active))
        .route(
            "/admin/users/{id}/reset-factors",
            post(pages::admin::reset_factors),
        )
        .route("/admin/attempts", get(pages::admin::attempts))
        .route("/admin/audit", get(pages::admin::audit))
        .route("/admin/audit/export", get(pages::admin::audit_export))
        .route(
            "/admin/labs",
            get(pages::labs::labs).post(pages::labs::create_lab),
        )
        .route("/admin/labs/{id}/settings", post(pages::labs::save_lab))
        .route("/admin/labs/{id}", get(pages::labs::lab))
        .route("/admin/labs/{id}/invitations", post(pages::labs::invite))
        .route(
            "/admin/labs/{id}/invitations/{invitation_id}/revoke",
            post(pages::labs::revoke_invitation),
        )
        .route(
            "/admin/labs/{id}/members/{user_id}/role",
            post(pages::labs::change_role),
        )
        .route(
            "/admin/labs/{id}/members/{user_id}/remove",
            post(pages::labs::remove_member),
        )
        .route("/admin/security", get(pages::admin::security))
        .route("/admin/security/stream", get(pages::admin::security_stream))
        .layer(axum::middleware::from_fn(console_policy))
}
