//! The system admin's console: users, sign-in attempts, the audit log and the security
//! dashboard.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use minijinja::context;

use super::{
    Admin, AdminForm, explain, form_urlencoded_component, list_query, pager, refused, see_other,
};
use crate::console::render;
use crate::error::AppError;
use crate::http::extract::ClientOrigin;
use crate::state::AppState;

/// `GET /admin`: the users, searched by name or address.
pub async fn users(
    State(state): State<AppState>,
    Admin(me): Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filters = given_filters(&params, &["q", "locked"]);
    let page = match crate::users::service::list(&state, list_query(&filters, &params)).await {
        Ok(page) => page,
        Err(error) => return refused(Some(&me), error),
    };
    let notice = match params.get("done").map(String::as_str) {
        Some("unlocked") => Some("The account was unlocked."),
        Some("active") => Some("The account was changed."),
        Some("reset") => Some("The user's second factors were removed; they were told by email."),
        _ => None,
    };
    render(
        "users.html",
        StatusCode::OK,
        context! {
            title => "Users",
            section => "users",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            pager => pager("/admin", &filters, page.page, page.pages),
            users => page.items,
            total => page.total,
            q => filters.get("q").cloned().unwrap_or_default(),
            locked => filters.get("locked").is_some_and(|locked| locked == "true"),
            notice,
        },
    )
}

/// `POST /admin/users/{id}/unlock`.
pub async fn unlock(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<i64>,
    AdminForm { me, .. }: AdminForm,
) -> Response {
    match crate::users::service::unlock(&state, &me.user, id, &origin).await {
        Ok(_) => see_other("/admin?done=unlocked"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/users/{id}/active`: deactivates (its sessions end) or activates an account,
/// as an admin's `PATCH /api/users/{id}` does.
pub async fn set_active(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<i64>,
    AdminForm { me, fields }: AdminForm,
) -> Response {
    let request = crate::users::service::UpdateUser {
        is_active: Some(fields.get("active").map(String::as_str) == Some("true")),
        ..Default::default()
    };
    match crate::users::service::update(&state, &me.user, id, request, &origin).await {
        Ok(_) => see_other("/admin?done=active"),
        Err(error) => refused(Some(&me), error),
    }
}

/// `POST /admin/users/{id}/reset-factors`: removes every second factor of a user who lost
/// them (they are told by email), from the admin's recent sign-in.
pub async fn reset_factors(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    Path(id): Path<i64>,
    AdminForm { me, .. }: AdminForm,
) -> Response {
    match crate::mfa::service::reset(&state, &me.user, &me.claims, id, &origin).await {
        Ok(()) => see_other("/admin?done=reset"),
        Err(error) => refused(Some(&me), error),
    }
}

/// The filters of a list page that are among `names` and not left empty.
fn given_filters(params: &HashMap<String, String>, names: &[&str]) -> HashMap<String, String> {
    params
        .iter()
        .filter(|(name, value)| names.contains(&name.as_str()) && !value.is_empty())
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The sign-in attempt filters the console offers.
const ATTEMPT_FILTERS: [&str; 3] = ["username", "ip", "success"];

/// `GET /admin/attempts`: sign-in attempts, newest first, with the API's filters.
pub async fn attempts(
    State(state): State<AppState>,
    Admin(me): Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filters = given_filters(&params, &ATTEMPT_FILTERS);
    let query = list_query(&filters, &params);
    let found = match state.store.reports().await {
        Ok(mut connection) => crate::audit::query::login_attempts(&mut connection, query).await,
        Err(error) => Err(error.into()),
    };
    let (attempts, total, pages, error) = match found {
        Ok(page) => {
            let pages = pager("/admin/attempts", &filters, page.page, page.pages);
            (page.items, page.total, pages, None)
        }
        Err(error) => (
            Vec::new(),
            0,
            minijinja::Value::UNDEFINED,
            Some(explain(&error)),
        ),
    };
    render(
        "attempts.html",
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        context! {
            title => "Sign-in attempts",
            section => "attempts",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            attempts,
            total,
            pager => pages,
            filters,
            error,
        },
    )
}

/// The audit filters the console offers, as given (empty ones left out).
const AUDIT_FILTERS: [&str; 4] = ["action", "user_id", "ip", "success"];

/// `GET /admin/audit`: the trail, newest first, with the API's filters.
pub async fn audit(
    State(state): State<AppState>,
    Admin(me): Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let filters = given_filters(&params, &AUDIT_FILTERS);
    let query: String = AUDIT_FILTERS
        .iter()
        .filter_map(|name| {
            filters
                .get(*name)
                .map(|value| format!("&{name}={}", form_urlencoded_component(value)))
        })
        .collect();
    let mut list = crate::paging::ListQuery::new(list_query(&filters, &params));
    let page = list.page();
    let filter = crate::audit::query::EventFilter::read(&mut list);
    let events = match list.finish() {
        Ok(()) => match state.store.reports().await {
            Ok(mut connection) => {
                crate::audit::query::page(&mut connection, state.store.chain_key(), &filter, page)
                    .await
            }
            Err(error) => Err(error.into()),
        },
        Err(error) => Err(error),
    };
    let (events, total, pages, error) = match events {
        Ok((events, total)) => {
            let pages = (total + page.per_page - 1) / page.per_page;
            let pages = pager("/admin/audit", &filters, page.page, pages.max(1));
            (events, total, pages, None)
        }
        Err(error) => (
            Vec::new(),
            0,
            minijinja::Value::UNDEFINED,
            Some(explain(&error)),
        ),
    };
    // The details are shown as their JSON text.
    let events: Vec<serde_json::Value> = events
        .into_iter()
        .filter_map(|event| serde_json::to_value(event).ok())
        .map(|mut event| {
            event["details"] = serde_json::Value::String(event["details"].to_string());
            event
        })
        .collect();
    render(
        "audit.html",
        if error.is_some() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::OK
        },
        context! {
            title => "Audit log",
            section => "audit",
            me => me.user.view(state.now()),
            csrf => me.csrf.clone(),
            events,
            total,
            pager => pages,
            filters,
            query,
            error,
        },
    )
}

/// `GET /admin/audit/export?format=csv|json|pdf&...`: the API's export of the filtered set.
pub async fn audit_export(
    State(state): State<AppState>,
    Admin(me): Admin,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    if !params.contains_key("format") {
        let error = AppError::field("format", "must be json, csv or pdf");
        return refused(Some(&me), error);
    }
    match crate::audit::routes::answer(state.clone(), params).await {
        Ok(mut response) => {
            let extension = match response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|value| value.to_str().ok())
            {
                Some(kind) if kind.starts_with("text/csv") => "csv",
                Some(kind) if kind.starts_with("application/pdf") => "pdf",
                _ => "jsonl",
            };
            if let Ok(disposition) =
                HeaderValue::from_str(&format!("attachment; filename=\"ums-audit.{extension}\""))
            {
                response
                    .headers_mut()
                    .insert(header::CONTENT_DISPOSITION, disposition);
            }
            response
        }
        Err(error) => refused(Some(&me), error),
    }
}

/// `GET /admin/security`: the last day's security at a glance (counts, failures per hour,
/// the addresses and names tried most, the security events), updated live by the page's
/// script from `/admin/security/stream`.
pub async fn security(State(state): State<AppState>, Admin(me): Admin) -> Response {
    const DAY: crate::clock::Millis = 86_400_000;
    let now = state.now();
    let summary = match crate::security::dashboard::summary(&state, DAY).await {
        Ok(summary) => summary,
        Err(error) => return refused(Some(&me), error),
    };
    let locked = HashMap::from([
        ("locked".to_string(), "true".to_string()),
        ("per_page".to_string(), "1".to_string()),
    ]);
    let locked_now = match crate::users::service::list(&state, locked).await {
        Ok(page) => page.total,
        Err(error) => return refused(Some(&me), error),
    };
    let outbox = match crate::mail::outbox::counts(&state).await {
        Ok(counts) => counts,
        Err(error) => return refused(Some(&me), AppError::Internal(error)),
    };
    let read = async {
        let mut connection = state.store.read().await?;
        let hourly = crate::security::dashboard::failures_by_hour(&mut connection, now, 24).await?;
        let params = HashMap::from([("per_page".to_string(), "50".to_string())]);
        let events =
            crate::security::dashboard::events(&mut connection, state.store.chain_key(), params)
                .await?;
        Ok::<_, AppError>((hourly, events))
    };
    let (hourly, events) = match read.await {
        Ok(read) => read,
        Err(error) => return refused(Some(&me), error),
    };
    let events: Vec<serde_json::Value> = events
        .items
        .into_iter()
        .filter_map(|event| serde_json::to_value(event).ok())
        .map(|mut event| {
            event["details"] = serde_json::Value::String(event["details"].to_string());
            event
        })
        .collect();
    render(
        "security.html",
        StatusCode::OK,
        context! {
            title => "Security",
            section => "security",
            me => me.user.view(now),
            csrf => me.csrf.clone(),
            counts => summary.counts,
            top_ips => summary.top_ips,
            accounts => summary.targeted_accounts,
            outbox,
            locked_now,
            chart => bar_chart(&hourly, now),
            events,
        },
    )
}

/// The bars of the failures-per-hour chart, drawn on the server as SVG.
fn bar_chart(hourly: &[i64], now: crate::clock::Millis) -> minijinja::Value {
    const WIDTH: usize = 480;
    const HEIGHT: i64 = 120;
    let bar_width = WIDTH / hourly.len().max(1);
    let max = hourly.iter().copied().max().unwrap_or(0).max(1);
    let hours = hourly.len() as i64;
    let bars: Vec<minijinja::Value> = hourly
        .iter()
        .enumerate()
        .map(|(index, count)| {
            let height = count * HEIGHT / max;
            let hours_ago = hours - index as i64;
            let start = crate::clock::to_rfc3339(now - hours_ago * 3_600_000);
            context! {
                x => index * bar_width,
                y => HEIGHT - height,
                height,
                count,
                label => format!("the hour from {}", &start[..16.min(start.len())]),
            }
        })
        .collect();
    context! {
        width => WIDTH,
        height => HEIGHT,
        bar_width => bar_width.saturating_sub(2).max(1),
        max,
        bars,
    }
}

/// `GET /admin/security/stream`: the security events from now on, as Server-Sent Events.
pub async fn security_stream(State(state): State<AppState>, Admin(me): Admin) -> Response {
    match crate::security::routes::live_events(state).await {
        Ok(stream) => stream.into_response(),
        Err(error) => refused(Some(&me), error),
    }
}
