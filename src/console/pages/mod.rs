//! The console's pages: each handler checks the sign-in and the form's CSRF token, calls the
//! service the API calls, and renders the outcome (or redirects after a change, so a reload
//! never repeats it). This module holds what they share: the extractors of a signed-in person
//! and of a checked form, and the pages that say what went wrong.

pub mod account;
pub mod admin;
pub mod factors;
pub mod labs;
pub mod sign_in;

use std::collections::HashMap;

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use minijinja::context;

use crate::console::render;
use crate::console::session::{self, ConsoleUser};
use crate::error::AppError;
use crate::state::AppState;

type Fields = Result<Form<HashMap<String, String>>, FormRejection>;

/// A page answered before the handler's own: the sign-in form, or a refusal.
pub struct Early(Box<Response>);

impl From<Response> for Early {
    fn from(response: Response) -> Self {
        Early(Box::new(response))
    }
}

impl IntoResponse for Early {
    fn into_response(self) -> Response {
        *self.0
    }
}

/// A form's fields, or the page that says the form could not be read.
fn fields(form: Fields) -> Result<HashMap<String, String>, Early> {
    form.map(|Form(fields)| fields).map_err(|rejection| {
        Early::from(message(
            None,
            "",
            StatusCode::BAD_REQUEST,
            "The form could not be read",
            &rejection.body_text(),
        ))
    })
}

/// A page that only says something: an error, or what became of a request.
pub(super) fn message(
    me: Option<&ConsoleUser>,
    csrf: &str,
    status: StatusCode,
    title: &str,
    text: &str,
) -> Response {
    let (back, back_label) = match me {
        Some(_) => ("/account", "Back to your account"),
        None => ("/account/login", "Sign in"),
    };
    let failed = status.is_client_error() || status.is_server_error();
    render(
        "message.html",
        status,
        context! {
            title,
            me => me.map(|me| me.user.view(0)),
            csrf,
            error => failed.then_some(text),
            notice => (!failed).then_some(text),
            back,
            back_label,
        },
    )
}

/// What a service's refusal says on a page: its problem's text and, for a form, each field's.
fn explain(error: &AppError) -> String {
    match error {
        AppError::Validation(fields) => fields
            .iter()
            .map(|(field, problems)| {
                format!("{}: {}", field.replace('_', " "), problems.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; "),
        AppError::StepUpRequired => "This needs a proof of your second factor from the last ten \
            minutes: Confirm it is you (under Two-factor sign-in on your account page), then try \
            again."
            .into(),
        other => other.detail(),
    }
}

fn refused(me: Option<&ConsoleUser>, error: AppError) -> Response {
    if let AppError::Internal(inner) = &error {
        tracing::error!(error = %format!("{inner:#}"), "a console request failed");
    }
    let csrf = me.map(|me| me.csrf.clone()).unwrap_or_default();
    message(
        me,
        &csrf,
        error.status(),
        "That did not work",
        &explain(&error),
    )
}

/// The signed-in person, or the way to the sign-in page (back here afterwards).
async fn signed_in(
    state: &AppState,
    headers: &HeaderMap,
    here: &str,
) -> Result<ConsoleUser, Early> {
    let secret = session::read_cookie(headers, session::cookie_name(state));
    let found = match secret {
        Some(secret) => session::find(state, &secret)
            .await
            .map_err(|error| Early::from(refused(None, error)))?,
        None => None,
    };
    found.ok_or_else(|| {
        let next = form_urlencoded_component(here);
        Early::from(Redirect::to(&format!("/account/login?next={next}")).into_response())
    })
}

/// The signed-in person of a page (else the way to the sign-in page, back here after).
pub struct Signed(ConsoleUser);

impl FromRequestParts<AppState> for Signed {
    type Rejection = Early;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Early> {
        // After signing in, a page is shown again; a form is not posted again.
        let here = match parts.method {
            axum::http::Method::GET => parts
                .uri
                .path_and_query()
                .map_or("/account", |path| path.as_str()),
            _ => "/account",
        };
        signed_in(state, &parts.headers, here).await.map(Signed)
    }
}

/// A system admin's page, signed in as the admin policy asks (with a proven second factor
/// while `UMS_REQUIRE_MFA_FOR_ADMINS` holds).
pub struct Admin(ConsoleUser);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Early;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Early> {
        let Signed(me) = Signed::from_request_parts(parts, state).await?;
        if !me.user.is_admin() {
            return Err(Early::from(refused(
                Some(&me),
                AppError::Forbidden("The admin console is for system admins."),
            )));
        }
        let proved = me.claims.amr.iter().any(|method| method == "mfa");
        if me
            .user
            .must_have_second_factor(&state.config.second_factors)
            && !proved
        {
            let refusal = if me.user.mfa_enabled {
                AppError::Forbidden(
                    "The admin console needs a session that proved your second factor: Confirm it is you on your account page first.",
                )
            } else {
                AppError::MfaEnrollmentRequired
            };
            return Err(Early::from(refused(Some(&me), refusal)));
        }
        Ok(Admin(me))
    }
}

/// A form posted by the signed-in person, its CSRF token checked (the body comes last).
pub struct SignedForm {
    me: ConsoleUser,
    fields: HashMap<String, String>,
}

impl FromRequest<AppState> for SignedForm {
    type Rejection = Early;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Early> {
        let (mut parts, body) = request.into_parts();
        let Signed(me) = Signed::from_request_parts(&mut parts, state).await?;
        let fields = checked_fields(&me, Request::from_parts(parts, body), state).await?;
        Ok(SignedForm { me, fields })
    }
}

/// As `SignedForm`, for a system admin.
pub struct AdminForm {
    me: ConsoleUser,
    fields: HashMap<String, String>,
}

impl FromRequest<AppState> for AdminForm {
    type Rejection = Early;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Early> {
        let (mut parts, body) = request.into_parts();
        let Admin(me) = Admin::from_request_parts(&mut parts, state).await?;
        let fields = checked_fields(&me, Request::from_parts(parts, body), state).await?;
        Ok(AdminForm { me, fields })
    }
}

/// The fields of `me`'s form, whose CSRF token must be their sign-in's.
async fn checked_fields(
    me: &ConsoleUser,
    request: Request,
    state: &AppState,
) -> Result<HashMap<String, String>, Early> {
    let fields = fields(Form::from_request(request, state).await)?;
    session::check_csrf(&me.csrf, fields.get("csrf").map(String::as_str))
        .map_err(|error| Early::from(refused(Some(me), error)))?;
    Ok(fields)
}

fn form_urlencoded_component(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Where to go after signing in: a path of this console, never another site.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if (next.starts_with("/account") || next.starts_with("/admin"))
                && !next.contains("//")
                && !next.contains('\\')
                && next.bytes().all(|byte| byte.is_ascii_graphic()) =>
        {
            next.to_string()
        }
        _ => "/account".to_string(),
    }
}

/// The links to the pages before and after `page` of a list at `path`, keeping its filters.
fn pager(path: &str, filters: &HashMap<String, String>, page: i64, pages: i64) -> minijinja::Value {
    let link = |to: i64| {
        let mut query: Vec<String> = filters
            .iter()
            .filter(|(name, _)| name.as_str() != "page")
            .map(|(name, value)| format!("{name}={}", form_urlencoded_component(value)))
            .collect();
        query.sort();
        query.push(format!("page={to}"));
        format!("{path}?{}", query.join("&"))
    };
    context! {
        page,
        pages,
        previous => (page > 1).then(|| link(page - 1)),
        next => (page < pages).then(|| link(page + 1)),
    }
}

/// The rows a list page shows at once.
const ROWS_PER_PAGE: i64 = 100;

/// The query of a list page: its filters, the page asked for, and the rows a page shows.
fn list_query(
    filters: &HashMap<String, String>,
    params: &HashMap<String, String>,
) -> HashMap<String, String> {
    let mut query = filters.clone();
    query.insert("per_page".into(), ROWS_PER_PAGE.to_string());
    if let Some(page) = params.get("page").filter(|page| !page.is_empty()) {
        query.insert("page".into(), page.clone());
    }
    query
}

fn see_other(location: &str) -> Response {
    Redirect::to(location).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_signing_in_only_a_page_of_this_console_is_next() {
        assert_eq!(
            safe_next(Some("/admin/audit?action=x")),
            "/admin/audit?action=x"
        );
        for elsewhere in [
            "https://evil.example/account",
            "//evil.example/account",
            "/account/../..//evil",
            "/account\\evil",
            "/account\nSet-Cookie: x",
            "/api/users",
            "",
        ] {
            assert_eq!(safe_next(Some(elsewhere)), "/account", "{elsewhere:?}");
        }
        assert_eq!(safe_next(None), "/account");
    }

    #[test]
    fn a_pager_keeps_the_filters_and_links_only_to_pages_that_exist() {
        let filters = HashMap::from([
            ("username".to_string(), "a&b c".to_string()),
            ("page".to_string(), "2".to_string()),
        ]);
        let middle = pager("/admin/attempts", &filters, 2, 3);
        assert_eq!(
            middle.get_attr("previous").unwrap().as_str(),
            Some("/admin/attempts?username=a%26b%20c&page=1")
        );
        assert_eq!(
            middle.get_attr("next").unwrap().as_str(),
            Some("/admin/attempts?username=a%26b%20c&page=3")
        );
        let only = pager("/admin", &HashMap::new(), 1, 1);
        assert!(only.get_attr("previous").unwrap().is_none());
        assert!(only.get_attr("next").unwrap().is_none());
    }

    #[test]
    fn a_second_steps_answer_is_read_from_its_form() {
        let form = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect()
        };
        let answer =
            factors::answer_of(&form(&[("method", "totp"), ("code", " 123456 ")])).unwrap();
        assert_eq!(answer.method, crate::mfa::Method::Totp);
        assert_eq!(answer.code.as_deref(), Some("123456"));
        assert!(answer.assertion.is_none());
        let passkey = factors::answer_of(&form(&[
            ("method", "webauthn"),
            ("assertion", r#"{"id":"x"}"#),
        ]))
        .unwrap();
        assert_eq!(passkey.assertion, Some(serde_json::json!({"id": "x"})));
        for bad in [
            form(&[("method", "sms"), ("code", "1")]),
            form(&[]),
            form(&[("method", "webauthn"), ("assertion", "{not json")]),
        ] {
            assert!(matches!(
                factors::answer_of(&bad),
                Err(AppError::Validation(_))
            ));
        }
    }
}
