//! HTTP handlers of the privacy routes: `GET /api/users/{id}/export`, `DELETE /api/users/me`,
//! `DELETE /api/users/{id}/erasure`.

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
use crate::http::body::JsonBody;
use crate::http::error::Problem;
use crate::http::extract::{AdminUser, ApiPath, AuthUser, ClientOrigin, SelfOrAdmin};
use crate::privacy::erasure::{self, EraseRequest, Erasure};
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
    export_of(
        state,
        access.caller.user.id,
        access.target_id,
        origin,
        params,
    )
    .await
}

/// The export of the person `target_id` (whoever asks was checked): for the API and the
/// console.
pub async fn export_of(
    state: AppState,
    caller_id: i64,
    target_id: i64,
    origin: crate::audit::Origin,
    params: HashMap<String, String>,
) -> Result<Response, AppError> {
    if let Some(unknown) = params.keys().find(|key| key.as_str() != "format") {
        return Err(AppError::field(unknown, "is not a parameter of this route"));
    }
    let format = Format::parse(params.get("format").map(String::as_str))?;
    let now = state.now();
    let mut connection = state.store.reports().await?;
    let user = crate::users::store::find_by_id(&mut connection, target_id)
        .await?
        .ok_or(AppError::NotFound)?;
    let sections = export::sections(&mut connection, &user, now).await?;
    // Recorded before the data leaves: an export that is not audited does not happen.
    crate::audit::Audited::begin(&state.store)
        .await?
        .commit(
            Event::new(Action::DataExported, now)
                .actor(Some(caller_id))
                .resource("user", user.id)
                .details(json!({"format": format.extension()}))
                .origin(&origin),
        )
        .await?;
    let body = match format {
        Format::Zip => Body::from(
            export::write_zip(
                &mut connection,
                state.store.chain_key(),
                user.id,
                sections,
                now,
            )
            .await
            .map_err(AppError::Internal)?,
        ),
        Format::Json => {
            let (sender, mut receiver) = mpsc::channel::<Result<Bytes, std::io::Error>>(8);
            let chain_key = state.store.chain_key().clone();
            tokio::spawn(async move {
                let mut sink = BodySink(sender);
                let written = export::write_json(
                    &mut connection,
                    &chain_key,
                    user.id,
                    &sections,
                    now,
                    &mut sink,
                )
                .await;
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

#[utoipa::path(delete, path = "/api/users/me", tag = "privacy", security(("bearer" = [])),
    request_body = EraseRequest,
    responses((status = 200, body = Erasure, description = "The account and everything about it erased \
            (GDPR Art. 17), or, with UMS_ERASURE_GRACE, disabled now and erased when `erase_after` comes. \
            Its personal fields in the audit trail read as erased; the trail still verifies."),
        (status = 400, body = Problem, description = "The password is wrong"),
        (status = 403, body = Problem, description = "`step_up_required`: the account has a second factor \
            and this session has not proved it in the last 10 minutes (POST /api/auth/step-up)"),
        (status = 409, body = Problem, description = "The last system admin, or the last lab_admin of a lab with members")))]
pub async fn erase_me(
    State(state): State<AppState>,
    auth: AuthUser,
    ClientOrigin(origin): ClientOrigin,
    JsonBody(request): JsonBody<EraseRequest>,
) -> Result<axum::Json<Erasure>, AppError> {
    Ok(axum::Json(
        erasure::erase_self(&state, &auth.user, &auth.claims, request, &origin).await?,
    ))
}

#[utoipa::path(delete, path = "/api/users/{id}/erasure", tag = "privacy", security(("bearer" = [])),
    params(("id" = i64, Path)),
    responses((status = 204, description = "The erasure waiting out its grace period is cancelled; \
            the account stays disabled until an admin activates it"),
        (status = 403, body = Problem), (status = 404, body = Problem, description = "No erasure is pending")))]
pub async fn cancel_erasure(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    ClientOrigin(origin): ClientOrigin,
    ApiPath(id): ApiPath<i64>,
) -> Result<axum::http::StatusCode, AppError> {
    erasure::cancel(&state, &admin.user, id, &origin).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// A person's own data: its export and its erasure.
pub fn router() -> axum::Router<AppState> {
    use axum::routing;
    axum::Router::new()
        .route("/api/users/{id}/export", routing::get(export))
        .route("/api/users/me", routing::delete(erase_me))
        .route("/api/users/{id}/erasure", routing::delete(cancel_erasure))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    paths(export, erase_me, cancel_erasure),
    tags((name = "privacy", description = "A person's data: `GET /api/users/{id}/export` returns everything \
        UMS holds about them, as JSON or a zip of CSV files; `DELETE /api/users/me` erases it. Lab invitations (tag `labs`) keep the \
        directory from being probed."))
)]
pub struct Api;
