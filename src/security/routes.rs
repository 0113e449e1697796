//! HTTP handlers of the security dashboard (`/api/security/events`, `/summary`, `/stream`),
//! admins only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};

use crate::error::AppError;
use crate::http::error::Problem;
use crate::http::extract::AdminUser;
use crate::paging::Page;
use crate::security::dashboard::{self, SecurityEvent, Summary};
use crate::state::AppState;

#[utoipa::path(get, path = "/api/security/events", tag = "security", security(("bearer" = [])),
    params(("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query),
        ("action" = Option<String>, Query, description = "one of the security actions"),
        ("user_id" = Option<i64>, Query), ("ip" = Option<String>, Query),
        ("from" = Option<String>, Query), ("to" = Option<String>, Query)),
    responses((status = 200, body = Page<SecurityEvent>), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn events(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Page<SecurityEvent>>, AppError> {
    let mut connection = state.store.read().await?;
    Ok(Json(
        dashboard::events(&mut connection, state.store.chain_key(), params).await?,
    ))
}

#[utoipa::path(get, path = "/api/security/summary", tag = "security", security(("bearer" = [])),
    params(("window" = Option<String>, Query, description = "a duration: 1h, 24h (default), 7d")),
    responses((status = 200, body = Summary), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn summary(
    State(state): State<AppState>,
    _admin: AdminUser,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Summary>, AppError> {
    let window = dashboard::parse_window(&params)?;
    Ok(Json(dashboard::summary(&state, window).await?))
}

/// How often the stream looks for new events.
const POLL: Duration = Duration::from_millis(500);

#[utoipa::path(get, path = "/api/security/stream", tag = "security", security(("bearer" = [])),
    responses((status = 200, content_type = "text/event-stream",
        description = "Server-Sent Events: `event: security`, `data:` a security event as in /events"),
        (status = 403, body = Problem)))]
pub async fn stream(
    State(state): State<AppState>,
    _admin: AdminUser,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, AppError> {
    live_events(state).await
}

/// The security events from now on, as Server-Sent Events (for the API and the console).
pub async fn live_events(
    state: AppState,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>>, AppError> {
    let start = {
        let mut connection = state.store.read().await?;
        dashboard::latest_seq(&mut connection).await?
    };
    let stopping = state.stopping.subscribe();
    let events = futures_util::stream::unfold(
        (state, start, stopping, Vec::<SecurityEvent>::new()),
        |(state, mut after, mut stopping, mut pending)| async move {
            loop {
                if let Some(event) = pending.pop() {
                    let frame = Event::default()
                        .event("security")
                        .id(event.id.to_string())
                        .json_data(&event)
                        .unwrap_or_else(|_| Event::default().comment("unserialisable event"));
                    return Some((Ok(frame), (state, after, stopping, pending)));
                }
                // The server is stopping: end the stream so the shutdown is not held up.
                if *stopping.borrow() {
                    return None;
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = stopping.changed() => return None,
                }
                let found = match state.store.read().await {
                    Ok(mut connection) => {
                        dashboard::events_after(&mut connection, state.store.chain_key(), after)
                            .await
                    }
                    Err(error) => Err(error.into()),
                };
                match found {
                    Ok((last, mut events)) => {
                        after = last;
                        events.reverse();
                        pending = events;
                    }
                    Err(error) => tracing::warn!(error = %error, "security stream poll failed"),
                }
            }
        },
    );
    Ok(Sse::new(futures_util::StreamExt::boxed(events)).keep_alive(KeepAlive::default()))
}

/// The security dashboard's routes.
pub fn router() -> axum::Router<AppState> {
    use axum::routing::get;
    axum::Router::new()
        .route("/api/security/events", get(events))
        .route("/api/security/summary", get(summary))
        .route("/api/security/stream", get(stream))
}

#[derive(utoipa::OpenApi)]
#[openapi(
    tags((name = "security", description = "The security dashboard: risky and refused sign-ins, \
challenges, failures, locks, blocks and stuffing alerts from the audit trail; a summary per window; \
and a live Server-Sent Events stream of the same events.")),
    paths(events, summary, stream)
)]
pub struct Api;
