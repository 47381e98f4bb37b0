//! Reads for gauges: small counts taken on a timer, outside the Repository actor (they need
//! no ordering with writes, and must not queue behind them).

use super::entities::notification;
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, PaginatorTrait, QueryFilter};

/// Notifications waiting to be sent (`queued`, due now or waiting for a retry).
pub async fn queued_notifications(db: &DatabaseConnection) -> Result<u64, DbErr> {
    notification::Entity::find()
        .filter(notification::Column::Status.eq("queued"))
        .count(db)
        .await
}
