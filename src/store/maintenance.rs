//! Housekeeping, all in one pass (run at start and by the Repository's timer): expired
//! browser sessions, idempotency keys past their 24 hours, and events older than
//! `audit.retention_days` (never the newest one, so that the log never looks empty to a
//! client that resumes). The live replay window (`live.retention_days`) is shorter and is
//! enforced by the live sessions, not by pruning: the history outlives it.

use super::MAINTENANCE_LOCK_KEY;
use super::entities::{event, idempotency_key, session};
use super::error::StoreError;
use super::reads;
use crate::domain::time::Timestamp;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, Statement, TransactionTrait,
};
use std::time::Duration;

/// Idempotency keys are kept at least this long.
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// What one pass did: `None` when another instance was running it.
pub type Pruned = Option<[(&'static str, Result<u64, StoreError>); 3]>;

/// Runs every pruning step; a step that fails is logged and the others still run. Every
/// instance runs the pass; on PostgreSQL one at a time, under an advisory lock that is only
/// tried (an instance that finds it taken skips this round), with the cut-offs on the
/// database's clock, so that instances whose clocks disagree prune the same rows.
pub async fn run(db: &DatabaseConnection, event_retention: Duration) {
    match pass(db, event_retention).await {
        Ok(Some(steps)) => {
            for (what, result) in steps {
                match result {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "{what} pruned"),
                    Err(e) => tracing::warn!(error = %e, "could not prune {what}"),
                }
            }
        }
        Ok(None) => tracing::debug!("another instance is running the maintenance pass"),
        Err(e) => tracing::warn!(error = %e, "could not run the maintenance pass"),
    }
}

/// One pass, answering what each step did (`None`: another instance held the lock).
pub async fn pass(
    db: &DatabaseConnection,
    event_retention: Duration,
) -> Result<Pruned, StoreError> {
    match db.get_database_backend() {
        DbBackend::Postgres => run_postgres(db, event_retention).await,
        _ => Ok(Some(steps(db, Timestamp::now(), event_retention).await)),
    }
}

/// The pass in one transaction holding `MAINTENANCE_LOCK_KEY`, each step in a savepoint of
/// its own (a failed step must not abort the others).
async fn run_postgres(db: &DatabaseConnection, retention: Duration) -> Result<Pruned, StoreError> {
    let txn = db.begin().await?;
    let row = txn
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock($1) AS locked, \
             (extract(epoch FROM now()) * 1000)::bigint AS now_ms",
            [MAINTENANCE_LOCK_KEY.into()],
        ))
        .await?
        .ok_or_else(|| StoreError::Internal("no answer to the maintenance lock".into()))?;
    if !row.try_get::<bool>("", "locked")? {
        return Ok(None);
    }
    let now = Timestamp::from_millis(row.try_get::<i64>("", "now_ms")?);
    let savepoint = txn.begin().await?;
    let result = prune_sessions(&savepoint, now).await;
    let sessions = settle(savepoint, result).await;
    let savepoint = txn.begin().await?;
    let result = prune_idempotency_keys(&savepoint, now).await;
    let keys = settle(savepoint, result).await;
    let savepoint = txn.begin().await?;
    let result = prune_events(&savepoint, now, retention).await;
    let events = settle(savepoint, result).await;
    txn.commit().await?;
    Ok(Some([
        ("expired sessions", sessions),
        ("idempotency keys", keys),
        ("old events", events),
    ]))
}

/// Keeps a step's savepoint when it succeeded, undoes it when it failed.
async fn settle(
    savepoint: DatabaseTransaction,
    result: Result<u64, StoreError>,
) -> Result<u64, StoreError> {
    match result {
        Ok(n) => {
            savepoint.commit().await?;
            Ok(n)
        }
        Err(e) => {
            savepoint.rollback().await?;
            Err(e)
        }
    }
}

async fn steps(
    db: &DatabaseConnection,
    now: Timestamp,
    retention: Duration,
) -> [(&'static str, Result<u64, StoreError>); 3] {
    [
        ("expired sessions", prune_sessions(db, now).await),
        ("idempotency keys", prune_idempotency_keys(db, now).await),
        ("old events", prune_events(db, now, retention).await),
    ]
}

async fn prune_sessions(db: &impl ConnectionTrait, now: Timestamp) -> Result<u64, StoreError> {
    Ok(session::Entity::delete_many()
        .filter(session::Column::ExpiresAt.lt(now.millis()))
        .exec(db)
        .await?
        .rows_affected)
}

async fn prune_idempotency_keys(
    db: &impl ConnectionTrait,
    now: Timestamp,
) -> Result<u64, StoreError> {
    Ok(idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::CreatedAt.lt(now.millis() - IDEMPOTENCY_TTL_MS))
        .exec(db)
        .await?
        .rows_affected)
}

async fn prune_events(
    db: &impl ConnectionTrait,
    now: Timestamp,
    retention: Duration,
) -> Result<u64, StoreError> {
    let before = now.plus_millis(-i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    let newest = reads::latest_seq(db).await?;
    Ok(event::Entity::delete_many()
        .filter(event::Column::At.lt(before.millis()))
        .filter(event::Column::Seq.lt(newest))
        .exec(db)
        .await?
        .rows_affected)
}
