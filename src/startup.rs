//! Building and running the service: connect, migrate, load keys, bootstrap the admin, bind.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::ServiceExt;
use tokio::net::TcpListener;
use tower::Layer;

use crate::auth::password::PasswordHasherConfig;
use crate::auth::tokens::Keys;
use crate::clock::Clock;
use crate::config::Config;
use crate::state::AppState;
use crate::store::Store;
use crate::users::service::{AdminOutcome, ensure_admin};

/// How long in-flight requests may run after a shutdown signal.
const DRAIN_LIMIT: Duration = Duration::from_secs(7);

pub struct Application {
    listener: TcpListener,
    state: AppState,
    access_events: tokio::sync::mpsc::Receiver<crate::audit::Event>,
}

impl Application {
    /// Everything up to a bound listener; `run_until_stopped` then serves.
    pub async fn build(config: Config, clock: Clock) -> anyhow::Result<Self> {
        let (state, access_events) = prepare_with_access_log(config, clock).await?;
        // The month's audit partition exists before the first request can write an event:
        // an event that came first would land in the default partition, and the month's
        // partition could then never be created.
        crate::audit::archive::prepare_partitions(&state.store, state.now())
            .await
            .context("preparing this month's audit partition")?;
        crate::auth::service::measure_verify_floor(&state)
            .await
            .context("timing the imported password hashes")?;
        let listener = TcpListener::bind(state.config.bind)
            .await
            .with_context(|| format!("binding {}", state.config.bind))?;
        Ok(Application {
            listener,
            state,
            access_events,
        })
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .map(|address| address.port())
            .unwrap_or_default()
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` completes, then finishes in-flight requests.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Application {
            listener,
            state,
            access_events,
        } = self;
        let key_refresher = tokio::spawn(refresh_keys(state.clone()));
        let cache_listener = tokio::spawn(crate::store::auth_cache::listen(state.store.clone()));
        let replica_monitor = match (state.store.replica(), state.store.postgres_pool()) {
            (Some(replica), Some(primary)) => Some(tokio::spawn(crate::store::replica::watch(
                replica.clone(),
                primary,
            ))),
            _ => None,
        };
        let (stop_workers, workers_stopped) = tokio::sync::watch::channel(false);
        let transport = crate::mail::outbox::Transport::from_config(&state.config)?;
        let mail_worker = tokio::spawn(crate::mail::outbox::run(
            state.clone(),
            transport,
            workers_stopped.clone(),
        ));
        let access_writer = tokio::spawn(crate::audit::batch::run(
            state.store.clone(),
            access_events,
            workers_stopped.clone(),
        ));
        let maintenance = tokio::spawn(maintain(state.clone(), workers_stopped));
        let app = axum::middleware::from_fn(crate::http::middleware::trim_trailing_slash)
            .layer(crate::http::router(state.clone()));
        let service = ServiceExt::<axum::extract::Request>::into_make_service_with_connect_info::<
            SocketAddr,
        >(app);
        tracing::info!(address = %listener.local_addr()?, "ums listening");
        if cfg!(feature = "bench-unweighed") {
            tracing::warn!(
                "built with bench-unweighed: sign-ins are NOT weighed for risk (benchmark only)"
            );
        }
        if cfg!(feature = "bench-unaudited") {
            tracing::warn!(
                "built with bench-unaudited: NO audit events are written (benchmark only)"
            );
        }
        // Stop accepting on the signal, let in-flight requests finish, but not forever: the
        // contract gives the whole shutdown 10 seconds.
        let (stopping, mut stopped_accepting) = tokio::sync::watch::channel(false);
        let streams_stopping = state.stopping.clone();
        let server = axum::serve(listener, service).with_graceful_shutdown(async move {
            shutdown.await;
            streams_stopping.send_replace(true);
            let _ = stopping.send(true);
        });
        let drain_limit = async move {
            let _ = stopped_accepting.wait_for(|stopping| *stopping).await;
            tokio::time::sleep(DRAIN_LIMIT).await;
        };
        tokio::select! {
            served = std::future::IntoFuture::into_future(server) => served.context("serving HTTP")?,
            () = drain_limit => tracing::warn!("in-flight requests did not finish in time; stopping anyway"),
        }
        key_refresher.abort();
        cache_listener.abort();
        if let Some(monitor) = replica_monitor {
            monitor.abort();
        }
        let _ = stop_workers.send(true);
        for (name, worker) in [
            ("email", mail_worker),
            ("access log", access_writer),
            ("maintenance", maintenance),
        ] {
            if tokio::time::timeout(Duration::from_secs(5), worker)
                .await
                .is_err()
            {
                tracing::warn!(worker = name, "a worker did not stop within 5 seconds");
            }
        }
        state.store.close().await;
        tracing::info!("ums stopped");
        Ok(())
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }
}

/// Connects, migrates, and readies keys and the bootstrap admin (for commands, which read no
/// lab data: the access log's receiver is dropped).
pub async fn prepare(config: Config, clock: Clock) -> anyhow::Result<AppState> {
    Ok(prepare_with_access_log(config, clock).await?.0)
}

async fn prepare_with_access_log(
    config: Config,
    clock: Clock,
) -> anyhow::Result<(AppState, tokio::sync::mpsc::Receiver<crate::audit::Event>)> {
    // Counters bumped before the recorder exists would be lost.
    crate::telemetry::prometheus();
    let store = Store::connect(&config).await?;
    let applied = crate::store::migrate(&store).await?;
    crate::audit::key_the_chain(&store)
        .await
        .context("keying the audit chain")?;
    crate::audit::personal::reseal_existing(
        &store,
        config.audit_archive_dir.as_deref(),
        clock.now(),
    )
    .await
    .context("sealing the personal fields of the audit trail")?;
    if !applied.is_empty() {
        tracing::info!(?applied, "migrations applied");
    }
    let hasher = PasswordHasherConfig::new(config.hash_cost)?;
    let keys = Keys::load_or_create(
        &store,
        config.jwt_algorithm,
        (config.issuer.clone(), config.jwt_audience.clone()),
        config.secret_key.clone(),
        config.refresh_token_ttl,
        clock.now(),
    )
    .await
    .context("loading signing keys")?;
    if let Some(admin) = &config.bootstrap_admin {
        let outcome = ensure_admin(
            &store,
            &hasher,
            config.password_min_length,
            &admin.username,
            &admin.email,
            &admin.password,
            clock.now(),
        )
        .await
        .context("creating the bootstrap admin (UMS_BOOTSTRAP_ADMIN_*)")?;
        if let AdminOutcome::Created(id) = outcome {
            tracing::info!(user_id = id, username = %admin.username, "bootstrap admin created");
        }
    }
    let outbox = crate::mail::Outbox::new(config.public_url.clone(), config.secret_key.clone());
    let (access_log, access_events) = crate::audit::batch::AccessLog::new();
    let hash_pool = crate::auth::hash_pool::HashPool::start(
        hasher.clone(),
        std::thread::available_parallelism().map_or(2, usize::from),
        config.hash_queue_limit,
    )?;
    let limiter = crate::security::limits::Limiter::connect(&config).await;
    let webauthn = Arc::new(crate::mfa::passkeys::relying_party(&config.second_factors)?);
    let geoip = crate::security::geoip::GeoIp::open(config.risk.geoip_db.clone())?;
    let denylist = crate::security::reputation::Denylist::open(&config.risk.ip_denylists)?;
    let state = AppState {
        webauthn,
        geoip,
        denylist,
        stopping: Arc::new(tokio::sync::watch::channel(false).0),
        config: Arc::new(config),
        store,
        keys,
        hasher,
        clock,
        outbox,
        access_log,
        limiter,
        hash_pool,
        verify_floor: Arc::default(),
    };
    Ok((state, access_events))
}

/// Picks up keys rotated by `ums keys rotate` or another instance.
async fn refresh_keys(state: AppState) {
    let mut interval = tokio::time::interval(Duration::from_secs(60));
    interval.tick().await;
    loop {
        interval.tick().await;
        if let Err(error) = state
            .keys
            .reload(&state.store, state.config.jwt_algorithm, state.now())
            .await
        {
            tracing::warn!(error = %error, "reloading signing keys failed");
        }
    }
}

/// Hourly upkeep: expire login attempts and spent rows, and archive old audit events when
/// `UMS_AUDIT_ARCHIVE_DIR` is set.
async fn maintain(state: AppState, mut stopped: tokio::sync::watch::Receiver<bool>) {
    let mut first = true;
    loop {
        let now = state.now();
        // `Application::build` has just timed them; from then on, hourly (imports and first
        // logins change what is stored).
        if !std::mem::take(&mut first)
            && let Err(error) = crate::auth::service::measure_verify_floor(&state).await
        {
            tracing::warn!(error = %error, "timing the imported password hashes failed");
        }
        if let Err(error) = crate::audit::archive::prepare_partitions(&state.store, now).await {
            tracing::warn!(error = %error, "preparing audit partitions failed");
        }
        let attempts_before = now - state.config.login_attempt_retention.as_millis() as i64;
        if let Err(error) = crate::audit::archive::expire(&state.store, attempts_before, now).await
        {
            tracing::warn!(error = %error, "expiring old rows failed");
        }
        if let Err(error) = crate::privacy::erasure::erase_due(&state, now).await {
            tracing::warn!(error = %error, "carrying out due erasures failed");
        }
        let directory = state.config.audit_archive_dir.as_deref();
        if let Err(error) = crate::audit::checkpoint::write(&state.store, directory, now).await {
            tracing::warn!(error = %format!("{error:#}"), "writing an audit checkpoint failed");
        }
        if let Some(directory) = &state.config.audit_archive_dir {
            let cutoff = now - state.config.audit_retention.as_millis() as i64;
            match crate::audit::archive::archive(&state.store, directory, cutoff).await {
                Ok(report) if report.events > 0 => {
                    tracing::info!(events = report.events, "audit events archived")
                }
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(error = %format!("{error:#}"), "archiving audit events failed")
                }
            }
            let before = now - state.config.audit_archive_retention.as_millis() as i64;
            match crate::audit::archive::delete_expired_archives(&state.store, directory, before)
                .await
            {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::info!(
                        files = deleted.len(),
                        "audit archives past retention deleted"
                    )
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(
                    error = %format!("{error:#}"),
                    "deleting audit archives past retention failed"
                ),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stopped.changed() => return,
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
