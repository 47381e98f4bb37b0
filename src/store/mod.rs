//! Storage: the sea-orm connection, migrations and the Repository actor that owns them.

pub mod backup;
pub mod batch;
pub mod deployment;
pub mod entities;
pub mod error;
pub mod gauges;
mod idempotency;
pub mod maintenance;
pub mod ops;
#[cfg(unix)]
pub mod pg_socket;
pub mod reader;
pub mod reads;
pub mod records;
pub mod reports;
pub mod repository;
pub mod sqlite_lock;

pub use error::StoreError;
pub use reader::Reader;
pub use repository::Repository;

use crate::config::Database as DbSettings;
use migrations::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait,
};
use std::path::Path;
use std::time::Duration;

/// The longest any single statement may run on PostgreSQL.
const STATEMENT_TIMEOUT_SECS: u64 = 30;
/// The longest a PostgreSQL transaction may sit idle: an instance that stalls inside a batch
/// (a stopped process, a frozen VM) would otherwise hold the event counter's row lock, and
/// with it every instance's writes, until its connection dies.
const IDLE_IN_TRANSACTION_TIMEOUT_SECS: u64 = 30;

/// PostgreSQL advisory lock keys, one per thing the instances of a deployment take turns
/// at. All are "duka" in ASCII followed by a number, so that they do not collide with
/// another application's keys on a shared server.
pub const MIGRATION_LOCK_KEY: i64 = 0x6475_6b61_0000_0001;
/// Held (tried, never waited for) by the instance running the maintenance pass.
pub const MAINTENANCE_LOCK_KEY: i64 = 0x6475_6b61_0000_0002;
/// SQLite's page cache per connection, in KiB (SQLite's default is 2,000). It lives in this
/// process, once per pooled connection, while the OS caches the file for all of them: a
/// small one keeps the upper levels of the indexes a lookup walks, and a scan reads the
/// rest from the OS cache either way.
const SQLITE_CACHE_KIB: u32 = 256;
/// Prepared statements kept per SQLite connection (sqlx's default is 100).
const SQLITE_STATEMENT_CACHE: usize = 32;
/// A pooled connection is pinged before it is handed out only when it has been idle this
/// long. sqlx pings on every acquire by default: a round trip to the connection's thread
/// (SQLite) or to the server (PostgreSQL) before each batch and each read. A connection
/// used within the last second is alive; one idle longer (a server restart, a proxy's idle
/// cut) is still tested.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Opens the pool. SQLite runs in WAL mode with `synchronous=FULL` (an acknowledged order
/// survives power loss), a busy timeout and foreign keys on; its directory is created.
pub async fn connect(settings: &DbSettings, max: u32) -> Result<DatabaseConnection, String> {
    open(settings, max, false).await
}

/// How `database.max_connections` is shared out. On PostgreSQL the writer and each HTTP
/// worker's reader keep pools of their own, opened on their own threads: a socket is
/// watched by the runtime that opened it, so a connection used from another thread has
/// every reply wake two threads, and waits while the opener is busy serving requests
/// (bench/ab, GET by id at c=32: 1.31x). On SQLite every connection is a thread of its own
/// anyway, and there is one pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolPlan {
    /// Startup, the live feed, the SMS dispatcher's sweeps, sessions.
    pub shared: u32,
    /// The writer: its batch and the maintenance pass beside it (0: it uses `shared`).
    pub writer: u32,
    /// Each HTTP worker's reads (0: they use `shared`).
    pub per_worker: u32,
}

impl PoolPlan {
    pub const WRITER: u32 = 2;
    /// The fewest the shared pool keeps.
    pub const MIN_SHARED: u32 = 2;

    pub fn new(settings: &DbSettings, workers: usize) -> Self {
        let max = settings.max_connections;
        let workers = workers.max(1) as u32;
        // Too few to share out without going over `max`: one pool.
        if !settings.url.starts_with("postgres") || max < Self::WRITER + workers + Self::MIN_SHARED
        {
            return Self {
                shared: max,
                writer: 0,
                per_worker: 0,
            };
        }
        let per_worker = (max - Self::WRITER) / (workers + 1);
        let shared = max - Self::WRITER - workers * per_worker;
        Self {
            shared,
            writer: Self::WRITER,
            per_worker,
        }
    }
}

/// A pool of an actor's own (see `PoolPlan`), opened on the actor's thread when it starts.
#[derive(Debug, Clone)]
pub struct OwnPool {
    settings: DbSettings,
    max: u32,
    whose: &'static str,
}

impl OwnPool {
    /// `None` when `max` is 0: the actor uses the shared pool.
    pub fn new(settings: &DbSettings, max: u32, whose: &'static str) -> Option<Self> {
        (max > 0).then(|| Self {
            settings: settings.clone(),
            max,
            whose,
        })
    }

    /// Opens the pool before the actor's first message (lazily: no I/O is waited for) and
    /// hands it to `adopt`; when it cannot be made the actor keeps the shared pool, with a
    /// warning.
    pub fn open_for<A>(self, ctx: &mut actix::Context<A>, adopt: fn(&mut A, DatabaseConnection))
    where
        A: actix::Actor<Context = actix::Context<A>>,
    {
        use actix::{ActorFutureExt, AsyncContext};
        let opened = async move {
            open(&self.settings, self.max, true)
                .await
                .inspect_err(|e| {
                    tracing::warn!("{}'s own pool: {e}; it uses the shared pool", self.whose)
                })
                .ok()
        };
        ctx.wait(
            actix::fut::wrap_future::<_, A>(opened).map(move |db, act, _| {
                if let Some(db) = db {
                    adopt(act, db);
                }
            }),
        );
    }
}

async fn open(
    settings: &DbSettings,
    max_connections: u32,
    lazy: bool,
) -> Result<DatabaseConnection, String> {
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
        .max_connections(max_connections)
        .min_connections(u32::from(!lazy))
        .connect_lazy(lazy)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .connect_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        .sqlx_logging(false)
        .test_before_acquire_if_idle_for(PING_IF_IDLE_FOR)
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
                // Statement journals in memory: a batch's multi-row INSERTs (foreign keys
                // on, so each may abort part-way) keep one, which past 64 KiB SQLite spills
                // to a temporary file; create at c=64 wrote ~6 MB/s to it.
                .pragma("temp_store", "memory")
        })
        // A lock held elsewhere must not stall the single writer forever: past the timeout
        // the statement fails and the request answers 503 (see `error::is_unavailable`).
        // A setting the URL already gives (`?options=-c statement_timeout=60s`) is kept.
        .map_sqlx_postgres_opts(move |o| {
            let given = o.get_options().unwrap_or_default().to_string();
            o.options(
                [
                    ("lock_timeout", busy_timeout.as_secs()),
                    ("statement_timeout", STATEMENT_TIMEOUT_SECS),
                    (
                        "idle_in_transaction_session_timeout",
                        IDLE_IN_TRANSACTION_TIMEOUT_SECS,
                    ),
                ]
                .into_iter()
                .filter(|(name, _)| !given.contains(&format!("{name}=")))
                .map(|(name, secs)| (name, format!("{secs}s"))),
            )
        })
        // Nagle's algorithm off (see `pg_socket`). sea-orm sets an `after_connect` of its own
        // only for a `schema_search_path`, which duka does not use: this one replaces it.
        .map_sqlx_postgres_pool_opts(|o| {
            o.after_connect(|conn, _| {
                Box::pin(async move {
                    #[cfg(unix)]
                    pg_socket::set_nodelay(conn).await?;
                    #[cfg(not(unix))]
                    let _ = conn;
                    Ok(())
                })
            })
        });
    sea_orm::Database::connect(options)
        .await
        .map_err(|e| format!("cannot connect to the database at {}: {e}", redact(url)))
}

/// Applies the pending migrations. On PostgreSQL they run in one transaction holding an
/// advisory lock, so that instances starting together take turns: the first applies them,
/// the others wait, then find nothing left to do. DDL is transactional there, so a failed
/// migration leaves the schema as it was. SQLite has one process per database file (see
/// `sqlite_lock`) and applies them as sea-orm-migration does.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), String> {
    let failed = |e: sea_orm::DbErr| format!("database migration failed: {e}");
    if db.get_database_backend() != DbBackend::Postgres {
        return Migrator::up(db, None).await.map_err(failed);
    }
    let txn = db.begin().await.map_err(failed)?;
    // Waiting for another instance's migrations, and the migrations themselves (a backfill
    // of a large table), may take longer than any request may.
    txn.execute_unprepared("SET LOCAL statement_timeout = 0")
        .await
        .map_err(failed)?;
    txn.execute_unprepared("SET LOCAL lock_timeout = 0")
        .await
        .map_err(failed)?;
    let key = [MIGRATION_LOCK_KEY.into()];
    let tried = Statement::from_sql_and_values(
        DbBackend::Postgres,
        "SELECT pg_try_advisory_xact_lock($1) AS locked",
        key.clone(),
    );
    let locked = match txn.query_one_raw(tried).await.map_err(failed)? {
        Some(row) => row.try_get::<bool>("", "locked").map_err(failed)?,
        None => false,
    };
    if !locked {
        tracing::info!("another instance is applying the migrations: waiting for it");
        let wait = Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            key,
        );
        txn.execute_raw(wait).await.map_err(failed)?;
    }
    // The DDL itself waits for table locks no longer than any other statement does: a
    // migration stuck behind a long transaction fails the start instead of stalling
    // everything queued behind its lock.
    txn.execute_unprepared("SET LOCAL lock_timeout TO DEFAULT")
        .await
        .map_err(failed)?;
    Migrator::up(&txn, None).await.map_err(failed)?;
    txn.commit().await.map_err(failed)
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

    #[test]
    fn pool_plan_shares_out_max_connections() {
        let db = |url: &str, max| DbSettings {
            url: url.into(),
            max_connections: max,
            ..DbSettings::default()
        };
        let pg = "postgres://postgres@127.0.0.1/duka";
        let plan = |url, max, workers| {
            let p = PoolPlan::new(&db(url, max), workers);
            (p.shared, p.writer, p.per_worker)
        };
        // SQLite: one pool whatever the workers.
        assert_eq!(plan("sqlite://data/duka.db?mode=rwc", 10, 2), (10, 0, 0));
        assert_eq!(plan("sqlite::memory:", 4, 8), (4, 0, 0));
        // PostgreSQL: the writer 2, each worker an equal share, the rest (>= 2) shared.
        assert_eq!(plan(pg, 10, 2), (4, 2, 2));
        assert_eq!(plan(pg, 10, 1), (4, 2, 4));
        assert_eq!(plan(pg, 50, 4), (12, 2, 9));
        assert_eq!(plan(pg, 6, 2), (2, 2, 1));
        // Never more than max in all; too few to share out: one pool.
        assert_eq!(plan(pg, 5, 2), (5, 0, 0));
        assert_eq!(plan(pg, 1, 0), (1, 0, 0));
        for max in 1..64 {
            for workers in 0..9 {
                let p = PoolPlan::new(&db(pg, max), workers);
                let all = p.shared + p.writer + workers.max(1) as u32 * p.per_worker;
                assert_eq!(all, max, "max {max}, {workers} workers: {p:?}");
                assert!(p.shared >= 1);
            }
        }
    }
}
