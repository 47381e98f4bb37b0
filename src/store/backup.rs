//! `duka backup PATH`: a consistent copy of the SQLite database, taken beside a running
//! server. `VACUUM INTO` reads one snapshot (a read transaction: in WAL mode the server
//! goes on writing meanwhile) and writes it as a compact, self-contained database file.

use crate::config::Settings;
use sea_orm::sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sea_orm::sqlx::{self, ConnectOptions, Connection, Row};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not an embedded database: another tool does the job.
    #[error("{0}")]
    Unsupported(String),
    /// Nothing was attempted: a missing database, a target that exists...
    #[error("{0}")]
    Refused(String),
    #[error("backup failed: {0}")]
    Failed(String),
}

/// What was written.
#[derive(Debug)]
pub struct Backup {
    pub source: PathBuf,
    pub path: PathBuf,
    pub bytes: u64,
    /// Orders in the copy (read back from it, as a check that it opens).
    pub orders: i64,
}

/// Copies the configured SQLite database to `target` (a new file; in a directory, a new
/// `duka-YYYYMMDDTHHMMSSZ.db`). The copy is written beside the target under a temporary
/// name, checked (`PRAGMA integrity_check`), made private (mode 0600: it holds customers'
/// phone numbers) and only then renamed into place, so `target` is whole or absent. A lock
/// held by the server's writer is waited for up to `busy_timeout`.
pub async fn backup(
    settings: &Settings,
    target: &Path,
    busy_timeout: Duration,
) -> Result<Backup, BackupError> {
    let url = &settings.database.url;
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        return Err(BackupError::Unsupported(
            "duka backup copies the embedded SQLite database; this one is PostgreSQL: use \
             pg_dump (e.g. pg_dump --format=custom --file=duka.dump \"$DATABASE_URL\") and \
             pg_restore"
                .into(),
        ));
    }
    let source = settings.sqlite_path().ok_or_else(|| {
        BackupError::Unsupported("database.url names no database file to back up".into())
    })?;
    if !source.is_file() {
        return Err(BackupError::Refused(format!(
            "no database at {} (check --config and database.url)",
            source.display()
        )));
    }
    let target = if target.is_dir() {
        target.join(format!(
            "duka-{}.db",
            chrono::Utc::now().format("%Y%m%dT%H%M%SZ")
        ))
    } else {
        target.to_path_buf()
    };
    if target.exists() {
        return Err(BackupError::Refused(format!(
            "{} exists: duka backup never overwrites a file",
            target.display()
        )));
    }
    let dir = match target.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => {
            return Err(BackupError::Refused(format!(
                "{} is not a file path",
                target.display()
            )));
        }
    };
    if !dir.is_dir() {
        return Err(BackupError::Refused(format!(
            "directory {} does not exist",
            dir.display()
        )));
    }
    let name = target
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| BackupError::Refused(format!("{} is not a file path", target.display())))?;
    let partial = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let partial_str = partial
        .to_str()
        .ok_or_else(|| BackupError::Refused("the backup path must be valid UTF-8".into()))?
        .to_string();
    let _ = std::fs::remove_file(&partial);

    let result = async {
        copy_into(&source, &partial_str, busy_timeout).await?;
        let orders = check(&partial).await?;
        let file = std::fs::File::open(&partial).map_err(failed)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(std::fs::Permissions::from_mode(0o600))
                .map_err(failed)?;
        }
        file.sync_all().map_err(failed)?;
        let bytes = file.metadata().map_err(failed)?.len();
        // A hard link fails if the target appeared meanwhile, where a rename would replace
        // it; a filesystem without hard links gets the rename.
        match std::fs::hard_link(&partial, &target) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(BackupError::Refused(format!(
                    "{} appeared during the backup: not overwritten",
                    target.display()
                )));
            }
            Err(_) => std::fs::rename(&partial, &target).map_err(|e| {
                BackupError::Failed(format!("cannot create {}: {e}", target.display()))
            })?,
        }
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok::<_, BackupError>((bytes, orders))
    }
    .await;
    let _ = std::fs::remove_file(&partial);
    let (bytes, orders) = result?;
    Ok(Backup {
        source,
        path: target,
        bytes,
        orders,
    })
}

fn failed(e: impl std::fmt::Display) -> BackupError {
    BackupError::Failed(e.to_string())
}

async fn open(path: &Path, busy_timeout: Duration) -> Result<SqliteConnection, BackupError> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .busy_timeout(busy_timeout)
        .disable_statement_logging();
    options
        .connect()
        .await
        .map_err(|e| BackupError::Failed(format!("cannot open {}: {e}", path.display())))
}

async fn copy_into(source: &Path, into: &str, busy_timeout: Duration) -> Result<(), BackupError> {
    let mut conn = open(source, busy_timeout).await?;
    let result = sqlx::query("VACUUM INTO ?")
        .bind(into)
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(|e| BackupError::Failed(format!("VACUUM INTO {into}: {e}")));
    let _ = conn.close().await;
    result
}

/// Opens the copy as a database of its own: whole, and with the tables duka made.
async fn check(copy: &Path) -> Result<i64, BackupError> {
    let mut conn = open(copy, Duration::from_secs(1)).await?;
    let verdict: String = sqlx::query("PRAGMA integrity_check")
        .fetch_one(&mut conn)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(failed)?;
    if verdict != "ok" {
        return Err(BackupError::Failed(format!(
            "the copy does not pass integrity_check: {verdict}"
        )));
    }
    let orders: i64 = sqlx::query("SELECT COUNT(*) FROM orders")
        .fetch_one(&mut conn)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| BackupError::Failed(format!("the copy has no readable orders table: {e}")))?;
    let _ = conn.close().await;
    Ok(orders)
}
