//! Browser sessions (see `auth::session`): begin and end.

use super::{OpResult, WriteReply};
use crate::store::entities::session;
use sea_orm::{ConnectionTrait, EntityTrait, IntoActiveModel};

pub(super) async fn create(txn: &impl ConnectionTrait, row: session::Model) -> OpResult {
    session::Entity::insert(row.into_active_model())
        .exec_without_returning(txn)
        .await?;
    Ok(WriteReply::Done)
}

/// Ending an unknown session is not an error.
pub(super) async fn end(txn: &impl ConnectionTrait, id_hash: String) -> OpResult {
    session::Entity::delete_by_id(id_hash).exec(txn).await?;
    Ok(WriteReply::Done)
}
