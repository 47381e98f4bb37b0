//! duka: orders, SMS notifications and live updates for businesses that take orders.
//!
//! `build` starts everything (the Repository actor, the HTTP server) inside the current
//! actix system and hands back a running `Duka`; `main.rs` and the tests both use it.

pub mod auth;
pub mod config;
pub mod domain;
pub mod http;
pub mod live;
pub mod metrics;
pub mod sms;
pub mod store;

use actix::{Actor, Addr};
use actix_web::{App, HttpServer, web};
use config::{Settings, SmsProviderKind};
use domain::money::Currency;
use domain::notification::NotifyOn;
use std::net::SocketAddr;
use std::time::Duration;
use store::Repository;
use store::repository::Listen;
use store::writes::WriteConfig;

/// A running service.
pub struct Duka {
    pub addr: SocketAddr,
    pub repo: Addr<Repository>,
    /// `None` when SMS is disabled.
    pub sms: Option<Addr<sms::SmsDispatcher>>,
    pub live: live::Live,
    /// The token generated at first start (token mode with no `auth.tokens`).
    pub generated_token: Option<String>,
    server: actix_web::dev::Server,
    sms_drain: Duration,
}

impl Duka {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A handle to stop the service.
    pub fn handle(&self) -> DukaHandle {
        DukaHandle {
            server: self.server.handle(),
            hub: self.live.hub.clone(),
        }
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM or `handle().stop()`), then lets
    /// the SMS sends in flight finish (within `sms_drain`); queued messages stay queued.
    pub async fn run(self) -> std::io::Result<()> {
        let result = self.server.await;
        if let Some(sms) = self.sms
            && tokio::time::timeout(self.sms_drain, sms.send(sms::Drain))
                .await
                .is_err()
        {
            tracing::warn!("stopped with SMS sends in flight; they are retried after their lease");
        }
        result
    }
}

/// Stops a running `Duka` (from another task or thread).
#[derive(Clone)]
pub struct DukaHandle {
    server: actix_web::dev::ServerHandle,
    hub: Addr<live::hub::Hub>,
}

impl DukaHandle {
    /// Graceful: WebSockets are closed with 1001, the server stops accepting and finishes
    /// the requests in flight (up to 10 s), then the SMS sends in flight may finish (see
    /// `Duka::run`). Not graceful: everything stops at once, as in a crash. The commands are
    /// sent before this returns; the future only waits for the stop.
    pub fn stop(&self, graceful: bool) -> impl std::future::Future<Output = ()> + use<> {
        if graceful {
            self.hub.do_send(live::hub::Shutdown);
        }
        self.server.stop(graceful)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Opens the database and applies pending migrations.
pub async fn migrate(settings: &Settings) -> Result<(), StartError> {
    let db = store::connect(&settings.database)
        .await
        .map_err(StartError)?;
    store::migrate(&db).await.map_err(StartError)
}

fn write_config(settings: &Settings) -> WriteConfig {
    let sms = &settings.sms;
    let provider = match sms.provider {
        SmsProviderKind::Log => "log",
        SmsProviderKind::Africastalking => "africastalking",
    };
    let every = [
        NotifyOn::Created,
        NotifyOn::Confirmed,
        NotifyOn::Shipped,
        NotifyOn::Delivered,
        NotifyOn::Cancelled,
    ];
    WriteConfig {
        sms_provider: sms.enabled.then(|| provider.to_string()),
        notify_on: sms.notify_on.clone(),
        templates: every
            .into_iter()
            .map(|on| (on, settings.template(on)))
            .collect(),
        max_attempts: i32::try_from(sms.max_attempts).unwrap_or(i32::MAX),
    }
}

/// Starts the service on `settings.http.bind` (port 0 picks a free one).
pub async fn build(settings: Settings) -> Result<Duka, StartError> {
    settings.validate().map_err(|e| StartError(e.to_string()))?;
    let db = store::connect(&settings.database)
        .await
        .map_err(StartError)?;
    if settings.database.migrate_on_start {
        store::migrate(&db).await.map_err(StartError)?;
    }

    // The issuer is asked before anything starts: a wrong issuer stops the start at once.
    let mut generated_token = None;
    let mode = match settings.auth.mode {
        config::AuthMode::Token => {
            let mut tokens = settings.auth.tokens.clone();
            if tokens.is_empty() {
                let (token, _) = auth::token::load_or_create(&settings.data_dir).map_err(|e| {
                    StartError(format!(
                        "cannot keep the API token in {}: {e}",
                        settings.data_dir.display()
                    ))
                })?;
                tokens.push(token.clone());
                generated_token = Some(token);
            }
            auth::Mode::Token(auth::token::TokenAuth::new(&tokens))
        }
        config::AuthMode::Oidc => auth::Mode::Oidc(std::sync::Arc::new(
            auth::oidc::OidcAuth::discover(&settings.auth.oidc)
                .await
                .map_err(|e| StartError(e.to_string()))?,
        )),
    };
    let retention = live::retention(&settings);
    let cutoff = domain::time::Timestamp::now()
        .plus_millis(-i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    match store::writes::prune_events(&db, cutoff).await {
        Ok(n) if n > 0 => tracing::info!(removed = n, "old events pruned"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not prune old events"),
    }
    let latest_seq = store::reads::latest_seq(&db)
        .await
        .map_err(|e| StartError(format!("cannot read the event log: {e}")))?;

    let repo = Repository::new(db, write_config(&settings)).start();
    // First listener, before anything can write: the hub must see every commit after
    // `latest_seq`.
    let live = live::Live::start(&settings, repo.clone(), latest_seq);
    let live_data = web::Data::new(live.clone());
    let session_key =
        auth::session::SessionKey::load(&settings.auth.session_key, &settings.data_dir).map_err(
            |e| {
                StartError(format!(
                    "cannot keep the session key in {}: {e}",
                    settings.data_dir.display()
                ))
            },
        )?;
    let sessions = auth::session::Sessions::new(
        session_key,
        repo.clone(),
        std::time::Duration::from_secs(u64::from(settings.auth.session_ttl_hours) * 3600),
    );
    let authenticator = web::Data::new(auth::Authenticator::new(
        mode,
        sessions,
        &settings.http.rate_limit,
    ));

    let sms = if settings.sms.enabled {
        let provider = sms::provider_from(&settings.sms).map_err(StartError)?;
        let dispatcher =
            sms::SmsDispatcher::new(repo.clone(), provider, (&settings.sms).into()).start();
        repo.do_send(Listen(dispatcher.clone().recipient()));
        Some(dispatcher)
    } else {
        None
    };
    let webhook = web::Data::new(http::webhooks::DeliveryWebhook::new(
        &settings.sms.africastalking.webhook_secret,
    ));
    let state = web::Data::new(http::AppState {
        repo: repo.clone(),
        region: settings.region(),
        currency: Currency::parse(&settings.orders.default_currency)
            .map_err(|e| StartError(format!("orders.default_currency: {e}")))?,
        timezone: settings.timezone(),
    });

    // Installed before serving so that the first scrape already sees every described metric.
    metrics::handle();
    let cors_origins = settings.http.cors_allowed_origins.clone();

    let bind = settings
        .bind_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(webhook.clone())
            .app_data(live_data.clone())
            .configure(|cfg| http::configure(cfg, authenticator.clone()))
            .wrap(http::security::cors(&cors_origins))
            .wrap(actix_web::middleware::from_fn(http::security::headers))
            .wrap(actix_web::middleware::from_fn(http::request_span))
    })
    .on_connect(live::on_connect)
    // Signals are handled by the binary (see main.rs), so that WebSockets close first.
    .disable_signals()
    .shutdown_timeout(10);
    if settings.http.workers > 0 {
        server = server.workers(settings.http.workers);
    }
    let server = server
        .bind(bind)
        .map_err(|e| StartError(format!("http.bind: cannot listen on {bind}: {e}")))?;
    let addr = server
        .addrs()
        .first()
        .copied()
        .ok_or_else(|| StartError("http.bind: no address to listen on".into()))?;
    Ok(Duka {
        addr,
        repo,
        sms,
        live,
        generated_token,
        server: server.run(),
        sms_drain: Duration::from_secs(settings.sms.request_timeout_secs + 2),
    })
}
