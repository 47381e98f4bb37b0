//! duka: orders, SMS notifications and live updates for businesses that take orders.
//!
//! `build` starts everything (the Repository actor, the HTTP server) inside the current
//! actix system and hands back a running `Duka`; `main.rs` and the tests both use it.

pub mod auth;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod store;

use actix::{Actor, Addr};
use actix_web::{App, HttpServer, web};
use config::{Settings, SmsProviderKind};
use domain::money::Currency;
use domain::notification::NotifyOn;
use std::net::SocketAddr;
use store::Repository;
use store::writes::WriteConfig;

/// A running service.
pub struct Duka {
    pub addr: SocketAddr,
    pub repo: Addr<Repository>,
    /// The token generated at first start (token mode with no `auth.tokens`).
    pub generated_token: Option<String>,
    server: actix_web::dev::Server,
}

impl Duka {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    /// Serves until the server is stopped (SIGINT/SIGTERM or `handle().stop()`).
    pub async fn run(self) -> std::io::Result<()> {
        self.server.await
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

    let mut tokens = settings.auth.tokens.clone();
    let mut generated_token = None;
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
    let authenticator = web::Data::new(auth::Authenticator::new(
        auth::Mode::Token(auth::token::TokenAuth::new(&tokens)),
        &settings.http.rate_limit,
    ));

    let repo = Repository::new(db, write_config(&settings)).start();
    let state = web::Data::new(http::AppState {
        repo: repo.clone(),
        region: settings.region(),
        currency: Currency::parse(&settings.orders.default_currency)
            .map_err(|e| StartError(format!("orders.default_currency: {e}")))?,
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
            .configure(|cfg| http::configure(cfg, authenticator.clone()))
            .wrap(http::security::cors(&cors_origins))
            .wrap(actix_web::middleware::from_fn(http::security::headers))
            .wrap(actix_web::middleware::from_fn(http::request_span))
    })
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
        generated_token,
        server: server.run(),
    })
}
