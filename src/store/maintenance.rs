//! Housekeeping, all in one pass (run at start and by the Repository's timer): expired
//! browser sessions, idempotency keys past their 24 hours, and events older than
//! `audit.retention_days` (never the newest one, so that the log never looks empty to a
//! client that resumes). The live replay window (`live.retention_days`) is shorter and is
//! enforced by the live sessions, not by pruning: the history outlives it.

use super::entities::{event, idempotency_key, session};
use super::error::StoreError;
use super::reads;
use crate::domain::time::Timestamp;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use std::time::Duration;

/// Idempotency keys are kept at least this long.
const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

/// Runs every pruning step; a step that fails is logged and the others still run.
pub async fn run(db: &DatabaseConnection, event_retention: Duration) {
    let now = Timestamp::now();
    let steps: [(&str, Result<u64, StoreError>); 3] = [
        ("expired sessions", prune_sessions(db, now).await),
        ("idempotency keys", prune_idempotency_keys(db, now).await),
        ("old events", prune_events(db, now, event_retention).await),
    ];
    for (what, result) in steps {
        match result {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "{what} pruned"),
            Err(e) => tracing::warn!(error = %e, "could not prune {what}"),
        }
    }
}

async fn prune_sessions(db: &DatabaseConnection, now: Timestamp) -> Result<u64, StoreError> {
    Ok(session::Entity::delete_many()
        .filter(session::Column::ExpiresAt.lt(now.millis()))
        .exec(db)
        .await?
        .rows_affected)
}

async fn prune_idempotency_keys(
    db: &DatabaseConnection,
    now: Timestamp,
) -> Result<u64, StoreError> {
    Ok(idempotency_key::Entity::delete_many()
        .filter(idempotency_key::Column::CreatedAt.lt(now.millis() - IDEMPOTENCY_TTL_MS))
        .exec(db)
        .await?
        .rows_affected)
}

async fn prune_events(
    db: &DatabaseConnection,
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
