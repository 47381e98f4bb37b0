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
#[cfg(unix)]
pub mod sys;

use actix::{Actor, Addr};
use actix_web::{App, HttpServer, web};
use config::{Settings, SmsProviderKind};
use domain::money::Currency;
use domain::notification::NotifyOn;
use std::net::SocketAddr;
use std::time::Duration;
use store::batch::WriteConfig;
use store::repository::ListenSms;
use store::{Reader, Repository};

/// The version and the commit the binary was built from (see `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("DUKA_COMMIT"),
    ")"
);

/// A running service.
pub struct Duka {
    pub addr: SocketAddr,
    pub repo: Addr<Repository>,
    /// `None` when SMS is disabled.
    pub sms: Option<Addr<sms::SmsDispatcher>>,
    pub live: live::Live,
    /// The API token, when this start generated it (token mode with no `auth.tokens` and
    /// none kept yet); later starts use the kept one and leave this `None`.
    pub generated_token: Option<String>,
    server: actix_web::dev::Server,
    sms_drain: Duration,
    /// On SQLite, this process's claim on the database file, released when the service ends.
    _sqlite_lock: Option<store::sqlite_lock::SqliteLock>,
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
        if let Some(sms) = &self.sms
            && tokio::time::timeout(self.sms_drain, sms.send(sms::Drain))
                .await
                .is_err()
        {
            tracing::warn!(
                "stopped with SMS sends in flight; the next SMS sender sends them again"
            );
        }
        // Nothing of this service lives on in the process (tests start several in one):
        // the hub stops its feed (poll, listener), the dispatcher its lease and sweeps, the
        // writer once its batch in flight is done. Their threads are then idle.
        self.live.hub.do_send(live::protocol::Stop);
        if let Some(sms) = &self.sms {
            sms.do_send(sms::Stop);
        }
        self.repo.do_send(store::repository::Stop);
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
            self.hub.do_send(live::protocol::Shutdown);
        }
        self.server.stop(graceful)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Says where this start keeps its state: an operator must be able to tell from the log
/// which database a process uses (and whether it just made an empty one).
fn log_locations(settings: &Settings) {
    let data_dir = settings.data_dir.display().to_string();
    match settings.sqlite_path() {
        Some(path) => {
            let exists = path.exists();
            tracing::info!(
                database = %path.display(),
                data_dir,
                "SQLite database {}",
                if exists { "found" } else { "not found: creating a new one" }
            );
        }
        None => tracing::info!(
            database = %config::without_password(&settings.database.url),
            data_dir,
            "database"
        ),
    }
}

/// Opens the database and applies pending migrations (beside a running server too: it
/// takes no SQLite lock). With `reset_session_key`, this instance's session key then
/// becomes the deployment's (see `SessionKey::reset_for_deployment`).
pub async fn migrate(settings: &Settings, reset_session_key: bool) -> Result<(), StartError> {
    tracing::info!(version = VERSION, "duka migrate");
    log_locations(settings);
    let db = store::connect(&settings.database, settings.database.max_connections)
        .await
        .map_err(StartError)?;
    store::migrate(&db).await.map_err(StartError)?;
    if reset_session_key {
        let fingerprint = auth::session::SessionKey::reset_for_deployment(
            &settings.auth.session_key,
            &settings.data_dir,
            &db,
        )
        .await
        .map_err(StartError)?;
        tracing::info!(
            fingerprint = %fingerprint,
            "this session key is now the deployment's: sessions signed with the old one no \
             longer work; start every instance with this auth.session_key"
        );
    }
    Ok(())
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
        // Per start: a tag names one process's commits (tests run several in one).
        notify_tag: format!("{:016x}", rand::random::<u64>()),
    }
}

/// Starts the service on `settings.http.bind` (port 0 picks a free one).
pub async fn build(settings: Settings) -> Result<Duka, StartError> {
    settings.validate().map_err(|e| StartError(e.to_string()))?;
    tracing::info!(version = VERSION, "duka starting");
    log_locations(&settings);
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    let open_files = raise_open_file_limit();
    // Before the database is opened: a second server on the file must not touch it.
    let sqlite_lock = settings
        .sqlite_path()
        .map(|path| store::sqlite_lock::acquire(&path))
        .transpose()
        .map_err(StartError)?;
    let workers = match settings.http.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let pools = store::PoolPlan::new(&settings.database, workers);
    let db = store::connect(&settings.database, pools.shared)
        .await
        .map_err(StartError)?;
    if settings.database.migrate_on_start {
        store::migrate(&db).await.map_err(StartError)?;
    }

    // The issuer is asked before anything starts: a wrong issuer stops the start at once.
    let mut generated_token = None;
    let mode = match settings.auth.mode {
        config::AuthMode::Token => {
            let mut tokens = settings
                .auth
                .api_tokens()
                .map_err(|e| StartError(e.to_string()))?;
            if tokens.is_empty() {
                let (token, created) =
                    auth::token::load_or_create(&settings.data_dir).map_err(|e| {
                        StartError(format!(
                            "cannot keep the API token in {}: {e}",
                            settings.data_dir.display()
                        ))
                    })?;
                tokens.push(config::ApiToken {
                    token: token.clone(),
                    role: auth::role::Role::Admin,
                    name: "API token 1".into(),
                });
                generated_token = created.then_some(token);
            }
            auth::Mode::Token(auth::token::TokenAuth::new(&tokens))
        }
        config::AuthMode::Oidc => {
            let oidc = std::sync::Arc::new(
                auth::oidc::OidcAuth::discover(&settings.auth.oidc)
                    .await
                    .map_err(|e| StartError(e.to_string()))?,
            );
            actix_web::rt::spawn(oidc.clone().keep_keys_fresh());
            auth::Mode::Oidc(oidc)
        }
    };
    let session_key = auth::session::SessionKey::load_for_deployment(
        &settings.auth.session_key,
        &settings.data_dir,
        &db,
    )
    .await
    .map_err(StartError)?;
    let retention =
        std::time::Duration::from_secs(u64::from(settings.audit.retention_days) * 86_400);
    store::maintenance::run(&db, retention).await;
    let latest_seq = store::reads::latest_seq(&db)
        .await
        .map_err(|e| StartError(format!("cannot read the event log: {e}")))?;

    if settings.sms.enabled {
        actix_web::rt::spawn(metrics::track_sms_queue(db.clone()));
    }
    let write_config = write_config(&settings);
    let notify_tag = write_config.notify_tag.clone();
    // The writer, the hub with its feed and the SMS dispatcher each have a thread of their
    // own (their actors stop with the service, see `Duka::run`).
    let repo = Repository::new(db.clone(), write_config, retention)
        .own_pool(store::OwnPool::new(
            &settings.database,
            pools.writer,
            "the writer",
        ))
        .start_alone(&actix::Arbiter::new().handle());
    // First listener, before anything can write: the hub must see every commit after
    // `latest_seq`.
    let live = live::Live::start(
        &settings,
        &repo,
        db.clone(),
        latest_seq,
        notify_tag,
        &actix::Arbiter::new().handle(),
    );
    // For the readers outside the HTTP workers (sessions, the SMS dispatcher's sweeps);
    // every worker starts its own for its requests.
    let reader = Reader::new(db.clone()).start();
    let live_data = web::Data::new(live.clone());
    let sessions = auth::session::Sessions::new(
        session_key,
        repo.clone(),
        reader.clone(),
        std::time::Duration::from_secs(u64::from(settings.auth.session_ttl_hours) * 3600),
    );
    let authenticator = web::Data::new(auth::Authenticator::new(
        mode,
        sessions,
        &settings.http.rate_limit,
    ));

    let sms = if settings.sms.enabled {
        let provider = sms::provider_from(&settings.sms).map_err(StartError)?;
        let me = sms::lease::Identity::load(&settings.data_dir).map_err(|e| {
            StartError(format!(
                "cannot keep the instance id in {}: {e}",
                settings.data_dir.display()
            ))
        })?;
        tracing::info!(instance = me.short(), boot = %me.boot, "SMS dispatcher");
        let dispatcher = sms::SmsDispatcher::new(
            repo.clone(),
            reader.clone(),
            db.clone(),
            me,
            provider,
            (&settings.sms).into(),
        );
        let dispatcher =
            sms::SmsDispatcher::start_in_arbiter(&actix::Arbiter::new().handle(), move |_| {
                dispatcher
            });
        repo.do_send(ListenSms(dispatcher.clone().recipient()));
        Some(dispatcher)
    } else {
        None
    };
    let webhook = web::Data::new(http::webhooks::DeliveryWebhook::new(
        &settings.sms.africastalking.webhook_secret,
        settings.http.rate_limit.enabled,
    ));
    let region = settings.region();
    let currency = Currency::parse(&settings.orders.default_currency)
        .map_err(|e| StartError(format!("orders.default_currency: {e}")))?;
    let timezone = settings.timezone();
    let writer = repo.clone();
    let proxies = web::Data::new(
        http::security::TrustedProxies::parse(&settings.http.trusted_proxies)
            .map_err(|e| StartError(format!("http.trusted_proxies: {e}")))?,
    );
    let body_timeout = web::Data::new(http::body::BodyTimeout(Duration::from_secs(
        settings.http.body_timeout_secs,
    )));

    // Installed before serving so that the first scrape already sees every described metric.
    metrics::handle();
    let cors_origins = settings.http.cors_allowed_origins.clone();

    let bind = settings
        .bind_addr()
        .map_err(|e| StartError(e.to_string()))?;
    let reader_pool = store::OwnPool::new(
        &settings.database,
        pools.per_worker,
        "an HTTP worker's reader",
    );
    let mut server = HttpServer::new(move || {
        // Runs on each worker's thread: its reader polls that worker's reads there.
        let state = web::Data::new(http::AppState {
            repo: writer.clone(),
            reader: Reader::new(db.clone())
                .own_pool(reader_pool.clone())
                .start(),
            region,
            currency,
            timezone,
        });
        App::new()
            .app_data(state)
            .app_data(webhook.clone())
            .app_data(live_data.clone())
            .app_data(proxies.clone())
            .app_data(body_timeout.clone())
            .configure(|cfg| http::configure(cfg, authenticator.clone()))
            // gzip or brotli as the client accepts; images, 101 upgrades and 204s stay as
            // they are (actix's own rules).
            .wrap(actix_web::middleware::Compress::default())
            .wrap(actix_web::middleware::from_fn(http::body::deadline))
            .wrap(http::security::cors(&cors_origins))
            .wrap(actix_web::middleware::from_fn(http::security::headers))
            .wrap(actix_web::middleware::from_fn(http::request_span))
    })
    .on_connect(live::on_connect)
    // Nagle's algorithm off on accepted connections (actix keeps the OS default, on): a
    // WebSocket turn written while the previous one waits for the reader's delayed ACK
    // would otherwise wait too (up to 40 ms), and a reader that keeps up never sends the
    // data an ACK could ride on.
    .tcp_nodelay(true)
    .h1_write_buffer_size(http::WRITE_BUFFER)
    // Signals are handled by the binary (see main.rs), so that WebSockets close first.
    .disable_signals()
    .shutdown_timeout(10);
    if settings.http.workers > 0 {
        server = server.workers(settings.http.workers);
    }
    server = server.max_connections(connections_per_worker(open_files, workers));
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
        _sqlite_lock: sqlite_lock,
    })
}

/// Raises the soft limit on open files to the hard limit (every socket holds a
/// descriptor); returns the limit in force.
fn raise_open_file_limit() -> u64 {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return 1024;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    tracing::debug!(
                        from = limit.rlim_cur,
                        to = limit.rlim_max,
                        "open file limit raised"
                    );
                    limit = raised;
                } else {
                    tracing::warn!(
                        limit = limit.rlim_cur,
                        "could not raise the open file limit"
                    );
                }
            }
        }
        #[allow(clippy::useless_conversion)]
        u64::try_from(limit.rlim_cur).unwrap_or(u64::MAX)
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// Connections each worker may hold so that all of them, one descriptor each, fit under
/// the open file limit with room left for the database pool, log files and the like.
fn connections_per_worker(open_files: u64, workers: usize) -> usize {
    const RESERVED: u64 = 256;
    let per_worker = open_files.saturating_sub(RESERVED) / (workers.max(1) as u64);
    usize::try_from(per_worker.clamp(64, 25_000)).unwrap_or(25_000)
}
