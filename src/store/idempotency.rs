//! `Idempotency-Key`s: a create repeated with the same key and body gets the stored
//! response instead of running again; the same key with another body is a conflict.
//!
//! The keys of a batch are looked up with one query, a key repeated inside one batch is
//! answered from the earlier operation, and the records are written with the batch's
//! events (`Batch::remember`), in the same transaction as the rows they describe.

use super::batch::{Batch, KeyId, SeenKey};
use super::entities::idempotency_key;
use super::error::StoreError;
use super::ops::{IdemKey, StoredReply, WriteReply};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use std::collections::HashMap;

pub(super) fn key_id(idem: &IdemKey) -> KeyId {
    (idem.principal.clone(), idem.route, idem.key.clone())
}

/// The stored records of these keys (one query).
pub(super) async fn lookup(
    txn: &impl ConnectionTrait,
    keys: &[&IdemKey],
) -> Result<HashMap<KeyId, idempotency_key::Model>, StoreError> {
    if keys.is_empty() {
        return Ok(HashMap::new());
    }
    let mut names: Vec<&str> = keys.iter().map(|k| k.key.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    let rows = idempotency_key::Entity::find()
        .filter(idempotency_key::Column::Key.is_in(names))
        .all(txn)
        .await?;
    let wanted: std::collections::HashSet<KeyId> = keys.iter().map(|k| key_id(k)).collect();
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let id = wanted
                .iter()
                .find(|(p, r, k)| *p == row.principal && *r == row.route && *k == row.key)?
                .clone();
            Some((id, row))
        })
        .collect())
}

/// What to do with an operation that carries a key.
// Short-lived, one per keyed operation: boxing would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(super) enum Decision {
    /// The key is new: run the operation and remember its response.
    Run,
    /// Answered already: this reply (a replay, or the refusal of the same request).
    Answer(Result<WriteReply, StoreError>),
    /// The same request as an earlier operation of this run (at this index), which has not
    /// been applied yet: answer with its result.
    RepeatOf(usize),
}

fn conflict() -> StoreError {
    StoreError::Conflict(
        "this Idempotency-Key was already used with a different request body".into(),
    )
}

/// Decides for one key, given the stored records and what this batch has seen.
/// `in_run` holds the keys of earlier operations of the current run (not yet applied).
pub(super) fn decide(
    idem: &IdemKey,
    stored: &HashMap<KeyId, idempotency_key::Model>,
    batch: &Batch<'_>,
    in_run: &HashMap<KeyId, (usize, String)>,
) -> Decision {
    let id = key_id(idem);
    if let Some((index, hash)) = in_run.get(&id) {
        return if *hash == idem.request_hash {
            Decision::RepeatOf(*index)
        } else {
            Decision::Answer(Err(conflict()))
        };
    }
    if let Some(SeenKey {
        request_hash,
        outcome,
    }) = batch.seen(&id)
    {
        return Decision::Answer(if *request_hash != idem.request_hash {
            Err(conflict())
        } else {
            outcome.clone().map(WriteReply::Replay)
        });
    }
    if let Some(row) = stored.get(&id) {
        return Decision::Answer(if row.request_hash != idem.request_hash {
            Err(conflict())
        } else {
            u16::try_from(row.status)
                .map_err(|_| {
                    StoreError::Internal(format!(
                        "the response kept for an Idempotency-Key has status {}",
                        row.status
                    ))
                })
                .map(|status| {
                    WriteReply::Replay(StoredReply {
                        status,
                        body: row.body.clone(),
                    })
                })
        });
    }
    Decision::Run
}

/// The response kept with `idem` for `reply`, as the HTTP layer makes it (a replay is
/// already one).
pub(super) fn render(idem: &IdemKey, reply: &WriteReply) -> Result<StoredReply, StoreError> {
    match reply {
        WriteReply::Replay(stored) => Ok(stored.clone()),
        reply => (idem.render)(reply).map_err(StoreError::Internal),
    }
}
