//! Storage: the sea-orm connection, migrations and the Repository actor that owns them.

pub mod backup;
pub mod batch;
pub mod entities;
pub mod error;
pub mod gauges;
mod idempotency;
pub mod maintenance;
pub mod ops;
pub mod reader;
pub mod reads;
pub mod reports;
pub mod repository;
pub mod views;

pub use error::StoreError;
pub use reader::Reader;
pub use repository::Repository;

use crate::config::Database as DbSettings;
use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{ConnectOptions, DatabaseConnection};
use std::path::Path;
use std::time::Duration;

/// The longest any single statement may run on PostgreSQL.
const STATEMENT_TIMEOUT_SECS: u64 = 30;
/// SQLite's page cache per connection, in KiB (SQLite's default is 2,000).
const SQLITE_CACHE_KIB: u32 = 1024;
/// Prepared statements kept per SQLite connection (sqlx's default is 100).
const SQLITE_STATEMENT_CACHE: usize = 32;

/// Opens the pool. SQLite runs in WAL mode with `synchronous=FULL` (an acknowledged order
/// survives power loss), a busy timeout and foreign keys on; its directory is created.
pub async fn connect(settings: &DbSettings) -> Result<DatabaseConnection, String> {
    let url = &settings.url;
    if let Some(path) = sqlite_path(url)
        && let Some(dir) = Path::new(&path)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create database directory {}: {e}", dir.display()))?;
    }
    // A database locked by another process for longer than this answers 503, like a pool
    // that cannot hand out a connection.
    let busy_timeout = Duration::from_secs(settings.acquire_timeout_secs);
    let mut options = ConnectOptions::new(url.clone());
    options
        .max_connections(settings.max_connections)
        .min_connections(1)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |o| {
            o.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(busy_timeout)
                .foreign_keys(true)
                // Memory is bounded per pooled connection: SQLite's page cache (the OS
                // caches the file too) and the prepared statements, which the multi-row
                // INSERTs of batches of every size would otherwise fill.
                .pragma("cache_size", format!("-{SQLITE_CACHE_KIB}"))
                .statement_cache_capacity(SQLITE_STATEMENT_CACHE)
        })
        // A lock held elsewhere must not stall the single writer forever: past the timeout
        // the statement fails and the request answers 503 (see `error::is_unavailable`).
        .map_sqlx_postgres_opts(move |o| {
            o.options([
                ("lock_timeout", format!("{}s", busy_timeout.as_secs())),
                ("statement_timeout", format!("{}s", STATEMENT_TIMEOUT_SECS)),
            ])
        });
    sea_orm::Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect to the database at {}: {e}", redact(url)))
}

pub async fn migrate(db: &DatabaseConnection) -> Result<(), String> {
    Migrator::up(db, None)
        .await
        .map_err(|e| format!("database migration failed: {e}"))
}

/// The file of a `sqlite:` URL, if it names one.
fn sqlite_path(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.to_string())
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("****"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_paths_and_redaction() {
        assert_eq!(
            sqlite_path("sqlite://data/duka.db?mode=rwc").as_deref(),
            Some("data/duka.db")
        );
        assert_eq!(
            sqlite_path("sqlite:///tmp/x.db").as_deref(),
            Some("/tmp/x.db")
        );
        assert_eq!(sqlite_path("sqlite::memory:"), None);
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:****@h/db");
    }
}
