use clap::{Parser, Subcommand};
use duka::config::{AuthMode, ConfigError, Log, LogFormat, Settings};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// duka: orders, SMS notifications and a live dashboard.
#[derive(Parser)]
#[command(version = duka::VERSION, about)]
struct Cli {
    /// A config file to use instead of ./config.toml (DUKA__SECTION__KEY variables still apply).
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the service (the default).
    Serve,
    /// Apply database migrations and exit.
    Migrate {
        /// Then make this instance's session key (auth.session_key, or the one generated in
        /// the data directory) the deployment's, after a deliberate change: everyone is
        /// signed out, and instances with the old key refuse to start until given the new.
        #[arg(long)]
        reset_session_key: bool,
    },
    /// Print the API token generated at first start (token mode without auth.tokens).
    Token,
    /// Work with the configuration.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Write a consistent copy of the SQLite database to PATH while the service runs
    /// (a directory: a timestamped file in it). On PostgreSQL use pg_dump.
    Backup {
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Print live events from a running server, one line each.
    Watch(WatchArgs),
}

#[derive(clap::Args)]
struct WatchArgs {
    /// Replay the events after this seq first.
    #[arg(long, value_name = "SEQ")]
    since: Option<i64>,
    /// Only these event types, comma separated (e.g. order.created,notification.updated).
    #[arg(long, value_name = "TYPES")]
    types: Option<String>,
    /// The server's base URL, http:// or https:// (default: from http.bind).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The API token (default: DUKA_TOKEN, the first auth.tokens, or the generated token).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Print each frame as JSON instead of a summary line.
    #[arg(long)]
    json: bool,
}

/// The commands that run inside the actix system and log as they go.
enum Service {
    Serve,
    Migrate { reset_session_key: bool },
    Watch(WatchArgs),
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the settings and print them with secrets redacted: exit 0 when valid, 2
    /// (with the message `serve` would give) otherwise.
    Check,
}

/// Logs go to stderr in every command: stdout carries only a command's result (the token,
/// the settings, the events of `watch`).
fn init_tracing(log: &Log) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    // A log that cannot be written (stderr closed: a pipe whose reader went away) must not
    // take the server down: tracing-subscriber would report it with `eprintln!`, which
    // panics on that same closed stderr.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is made: made before the start
/// is announced, so that a signal sent as soon as "listening" is read is not lost (or, when
/// the parent left SIGINT ignored, as a shell does for a background job, dropped).
struct ShutdownSignals {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignals {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// Which signal came first.
    async fn first(self) -> &'static str {
        #[cfg(unix)]
        {
            async fn next(signal: Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            if self.int.is_none() && self.term.is_none() {
                let _ = tokio::signal::ctrl_c().await;
                return "SIGINT";
            }
            tokio::select! {
                _ = next(self.term) => "SIGTERM",
                _ = next(self.int) => "SIGINT",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// A refusal of a one-shot command: one plain line on stderr, exit 2.
fn refuse(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("duka: {message}");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let loaded = Settings::load(cli.config.as_deref());
    // The one-shot commands answer in plain text; the services log.
    let service = match cli.command.unwrap_or(Command::Serve) {
        Command::Config {
            action: ConfigAction::Check,
        } => return config_check(loaded),
        Command::Token => return print_token(loaded),
        Command::Backup { path } => return backup(loaded, &path),
        Command::Serve => Service::Serve,
        Command::Migrate { reset_session_key } => Service::Migrate { reset_session_key },
        Command::Watch(args) => Service::Watch(args),
    };
    let settings = match loaded {
        Ok(settings) => settings,
        Err(e) => {
            init_tracing(&duka::config::log_settings(cli.config.as_deref()));
            tracing::error!("configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(&settings.log);
    match actix_web::rt::System::new().block_on(run(service, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn config_check(loaded: Result<Settings, ConfigError>) -> ExitCode {
    match loaded {
        Ok(settings) => {
            print!(
                "# duka {}: the configuration is valid. The effective settings (secrets \
                 redacted):\n{}",
                duka::VERSION,
                settings.redacted_toml()
            );
            ExitCode::SUCCESS
        }
        Err(e) => refuse(format!("configuration error: {e}")),
    }
}

/// The token `serve` generated into the data directory (token mode without `auth.tokens`).
fn print_token(loaded: Result<Settings, ConfigError>) -> ExitCode {
    let settings = match loaded {
        Ok(settings) => settings,
        Err(e) => return refuse(format!("configuration error: {e}")),
    };
    if settings.auth.mode == AuthMode::Oidc {
        return refuse("auth.mode is \"oidc\": there is no generated API token");
    }
    if !settings.auth.tokens.is_empty() {
        return refuse("the API tokens are the ones listed in auth.tokens; none is generated");
    }
    let file = duka::auth::token::token_file(&settings.data_dir);
    match std::fs::read_to_string(&file) {
        Ok(token) if !token.trim().is_empty() => {
            println!("{}", token.trim());
            ExitCode::SUCCESS
        }
        Ok(_) => refuse(format!(
            "{} is empty: start duka to make a new token",
            file.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => refuse(format!(
            "no token yet in {}: `duka serve` generates one at its first start",
            settings.data_dir.display()
        )),
        Err(e) => refuse(format!("cannot read {}: {e}", file.display())),
    }
}

fn backup(loaded: Result<Settings, ConfigError>, path: &std::path::Path) -> ExitCode {
    use duka::store::backup::BackupError;
    let settings = match loaded {
        Ok(settings) => settings,
        Err(e) => return refuse(format!("configuration error: {e}")),
    };
    let result = actix_web::rt::System::new().block_on(duka::store::backup::backup(
        &settings,
        path,
        std::time::Duration::from_secs(60),
    ));
    match result {
        Ok(done) => {
            println!(
                "duka: backed up {} ({} bytes, {} orders) to {}",
                done.source.display(),
                done.bytes,
                done.orders,
                done.path.display()
            );
            ExitCode::SUCCESS
        }
        Err(e @ (BackupError::Unsupported(_) | BackupError::Refused(_))) => refuse(e),
        Err(e @ BackupError::Failed(_)) => {
            eprintln!("duka: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(service: Service, settings: Settings) -> Result<(), duka::StartError> {
    match service {
        Service::Migrate { reset_session_key } => {
            duka::migrate(&settings, reset_session_key).await?;
            tracing::info!("migrations applied");
            Ok(())
        }
        Service::Watch(WatchArgs {
            since,
            types,
            url,
            token,
            json,
        }) => {
            let (url, token) = duka::live::watch::WatchOptions::resolve(&settings, url, token)
                .map_err(duka::StartError)?;
            let opts = duka::live::watch::WatchOptions {
                url,
                token,
                since,
                types,
                json,
            };
            duka::live::watch::run(opts, &mut std::io::stdout().lock())
                .await
                .map_err(|e| duka::StartError(e.to_string()))
        }
        Service::Serve => {
            let app = duka::build(settings).await?;
            let signals = ShutdownSignals::listen();
            let url = app.url();
            tracing::info!(url = %url, dashboard = %format!("{url}/"), "listening");
            if let Some(token) = &app.generated_token {
                // Once, at the start that created it: `duka token` shows it again.
                tracing::info!(
                    token = %token,
                    "generated an API token (kept in the data directory; `duka token` prints it)"
                );
            }
            let handle = app.handle();
            actix_web::rt::spawn(async move {
                let signal = signals.first().await;
                tracing::info!(signal, "shutting down gracefully");
                handle.stop(true).await;
            });
            app.run()
                .await
                .map_err(|e| duka::StartError(format!("server error: {e}")))
        }
    }
}
