//! HTTP handlers of `/api/audit-logs` and `/api/security/login-attempts` (admins only).

use std::collections::HashMap;

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tokio::sync::mpsc;

use crate::audit::export::{ExportFormat, Exporter};
use crate::audit::query::{self, EventFilter, EventView, LoginAttemptView};
use crate::error::AppError;
use crate::http::body::BodySink;
use crate::http::error::Problem;
use crate::http::extract::AdminUser;
use crate::paging::{ListQuery, Page};
use crate::state::AppState;

#[utoipa::path(get, path = "/api/audit-logs", tag = "audit", security(("bearer" = [])),
    params(("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query), ("user_id" = Option<i64>, Query),
        ("ip" = Option<String>, Query), ("action" = Option<String>, Query), ("resource_type" = Option<String>, Query),
        ("resource_id" = Option<String>, Query), ("success" = Option<bool>, Query), ("from" = Option<String>, Query),
        ("to" = Option<String>, Query), ("format" = Option<String>, Query, description = "json, csv or pdf: an export of the whole filtered set")),
    responses((status = 200, description = "A page, or with `format` an export of the whole filtered set: JSON lines, CSV or PDF",
            content((Page<EventView> = "application/json"), (String = "application/x-ndjson"),
                (String = "text/csv"), (String = "application/pdf"))),
        (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn audit_logs(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    answer(state, params).await
}

/// A page of events, or an export of the whole filtered set: for the API and the console.
pub async fn answer(
    state: AppState,
    params: HashMap<String, String>,
) -> Result<Response, AppError> {
    let format = params.get("format").cloned();
    let mut list = ListQuery::new(params);
    let page = list.page();
    let filter = EventFilter::read(&mut list);
    let format = match format.as_deref() {
        None => None,
        Some(value) => Some(
            ExportFormat::parse(value)
                .ok_or_else(|| AppError::field("format", "must be json, csv or pdf"))?,
        ),
    };
    list.finish()?;
    let Some(format) = format else {
        let mut connection = state.store.reports().await?;
        let (events, total) =
            query::page(&mut connection, state.store.chain_key(), &filter, page).await?;
        return Ok(Json(Page::new(events, total, page)).into_response());
    };
    // Connect before answering, so an unreachable database is a 503, not a truncated file.
    let mut connection = state.store.reports().await?;
    let (sender, mut receiver) = mpsc::channel(8);
    let exporter = Exporter::new(format, &filter.describe(), state.now());
    let chain_key = state.store.chain_key().clone();
    tokio::spawn(async move {
        let mut sink = BodySink(sender);
        if let Err(error) =
            query::export(&mut connection, &chain_key, &filter, exporter, &mut sink).await
        {
            tracing::warn!(error = %error, "audit export stopped");
            let _ = sink
                .0
                .send(Err(std::io::Error::other("export failed")))
                .await;
        }
    });
    let stream = futures_util::stream::poll_fn(move |context| receiver.poll_recv(context));
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(disposition) = HeaderValue::from_str(&format!(
        "attachment; filename=\"audit-log.{}\"",
        format.extension()
    )) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}

#[utoipa::path(get, path = "/api/security/login-attempts", tag = "audit", security(("bearer" = [])),
    params(("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query), ("username" = Option<String>, Query),
        ("ip" = Option<String>, Query), ("success" = Option<bool>, Query), ("from" = Option<String>, Query),
        ("to" = Option<String>, Query)),
    responses((status = 200, body = Page<LoginAttemptView>), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn login_attempts(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Page<LoginAttemptView>>, AppError> {
    let mut connection = state.store.reports().await?;
    Ok(Json(query::login_attempts(&mut connection, params).await?))
}

/// The trail and the login attempts, for admins.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/api/audit-logs", get(audit_logs))
        .route("/api/security/login-attempts", get(login_attempts))
}

#[derive(utoipa::OpenApi)]
#[openapi(paths(audit_logs, login_attempts))]
pub struct Api;
