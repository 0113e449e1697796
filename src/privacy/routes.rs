//! HTTP handlers of the privacy routes: `GET /api/users/{id}/export`.

use std::collections::HashMap;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::mpsc;

use crate::audit::{Action, Event};
use crate::error::AppError;
use crate::http::body::BodySink;
use crate::http::error::Problem;
use crate::http::extract::{ClientOrigin, SelfOrAdmin};
use crate::privacy::export::{self, Format};
use crate::state::AppState;

#[utoipa::path(get, path = "/api/users/{id}/export", tag = "privacy", security(("bearer" = [])),
    params(("id" = i64, Path),
        ("format" = Option<String>, Query, description = "json (the default) or zip (one CSV file per kind of record)")),
    responses((status = 200, description = "Everything UMS holds about the person (GDPR Art. 15 and 20): \
            profile, memberships, sessions, devices, login attempts, second factors (never their secrets), \
            invitations, and the audit events about them",
            content((Object = "application/json"), (String = "application/zip"))),
        (status = 400, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn export(
    State(state): State<AppState>,
    access: SelfOrAdmin,
    ClientOrigin(origin): ClientOrigin,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, AppError> {
    if let Some(unknown) = params.keys().find(|key| key.as_str() != "format") {
        return Err(AppError::field(unknown, "is not a parameter of this route"));
    }
    let format = Format::parse(params.get("format").map(String::as_str))?;
    let now = state.now();
    let mut connection = state.store.reports().await?;
    let user = crate::users::store::find_by_id(&mut connection, access.target_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let sections = export::sections(&mut connection, &user, now).await?;
    // Recorded before the data leaves: an export that is not audited does not happen.
    crate::audit::Audited::begin(&state.store)
        .await?
        .commit(
            Event::new(Action::DataExported, now)
                .actor(Some(access.caller.user.id))
                .resource("user", user.id)
                .details(json!({"format": format.extension()}))
                .origin(&origin),
        )
        .await?;
    let body = match format {
        Format::Zip => Body::from(
            export::write_zip(&mut connection, user.id, sections, now)
                .await
                .map_err(AppError::Internal)?,
        ),
        Format::Json => {
            let (sender, mut receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
            tokio::spawn(async move {
                let mut sink = BodySink(sender);
                let written =
                    export::write_json(&mut connection, user.id, &sections, now, &mut sink).await;
                if let Err(error) = written {
                    tracing::warn!(error = %error, "personal data export stopped");
                    let _ = sink
                        .0
                        .send(Err(std::io::Error::other("export failed")))
                        .await;
                }
            });
            Body::from_stream(futures_util::stream::poll_fn(move |context| {
                receiver.poll_recv(context)
            }))
        }
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    if let Ok(disposition) = HeaderValue::from_str(&format!(
        "attachment; filename=\"ums-user-{}.{}\"",
        user.id,
        format.extension()
    )) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A person's own data.
pub fn router() -> axum::Router<AppState> {
    axum::Router::new().route("/api/users/{id}/export", axum::routing::get(export))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(export),
    tags((name = "privacy", description = "A person's data: `GET /api/users/{id}/export` returns everything \
        UMS holds about them, as JSON or a zip of CSV files. Lab invitations (tag `labs`) keep the \
        directory from being probed."))
)]
pub struct Api;
