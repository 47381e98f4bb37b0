use clap::{Parser, Subcommand};
use duka::config::{LogFormat, Settings};
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// duka: orders, SMS notifications and a live dashboard.
#[derive(Parser)]
#[command(version, about)]
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
    Migrate,
    /// Print live events from a running server, one line each.
    Watch {
        /// Replay the events after this seq first.
        #[arg(long, value_name = "SEQ")]
        since: Option<i64>,
        /// Only these event types, comma separated (e.g. order.created,notification.updated).
        #[arg(long, value_name = "TYPES")]
        types: Option<String>,
        /// The server's base URL (default: from http.bind).
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// The API token (default: DUKA_TOKEN, the first auth.tokens, or the generated token).
        #[arg(long, value_name = "TOKEN")]
        token: Option<String>,
        /// Print each frame as JSON instead of a summary line.
        #[arg(long)]
        json: bool,
    },
}

/// Logs go to stdout, except for `watch`, whose stdout is the events.
fn init_tracing(settings: &Settings, to_stderr: bool) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (settings.log.format, to_stderr) {
        (LogFormat::Json, false) => builder.json().init(),
        (LogFormat::Text, false) => builder.init(),
        (LogFormat::Json, true) => builder.json().with_writer(std::io::stderr).init(),
        (LogFormat::Text, true) => builder.with_writer(std::io::stderr).init(),
    }
}

/// Waits for SIGTERM or SIGINT; answers which.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("duka: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    init_tracing(
        &settings,
        matches!(cli.command, Some(Command::Watch { .. })),
    );
    let system = actix_web::rt::System::new();
    let result = system.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Migrate => {
                duka::migrate(&settings).await?;
                println!("duka: migrations applied");
                Ok(())
            }
            Command::Watch {
                since,
                types,
                url,
                token,
                json,
            } => {
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
            Command::Serve => {
                let app = duka::build(settings).await?;
                let url = app.url();
                println!("duka: listening on {url}  (dashboard: {url}/)");
                if let Some(token) = &app.generated_token {
                    println!("duka: API token (kept in the data directory): {token}");
                }
                let handle = app.handle();
                actix_web::rt::spawn(async move {
                    let signal = shutdown_signal().await;
                    tracing::info!(signal, "shutting down gracefully");
                    handle.stop(true).await;
                });
                app.run()
                    .await
                    .map_err(|e| duka::StartError(format!("server error: {e}")))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("duka: error: {e}");
            ExitCode::FAILURE
        }
    }
}
