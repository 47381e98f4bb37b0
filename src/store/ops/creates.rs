//! A run of creates (customers and orders that arrived next to each other in a batch),
//! applied as sets: every item is planned in memory after one lookup per table, then each
//! table gets one multi-row INSERT, then the replies and events are made in arrival order.

use super::{OpError, OpResult, WriteOp, WriteReply};
use crate::domain::customer::NewCustomer;
use crate::domain::event::{Actor, EventType};
use crate::domain::order::NewOrder;
use crate::domain::views::CustomerView;
use crate::store::batch::{Batch, Change, QueuedSms, SeenKey};
use crate::store::entities::{customer, notification, order};
use crate::store::error::StoreError;
use crate::store::idempotency::{self, Decision};
use crate::store::ops::IdemKey;
use crate::store::records::order_view;
use sea_orm::ConnectionTrait;
use std::collections::HashMap;

pub(super) enum Kind {
    Customer(NewCustomer),
    Order(NewOrder),
}

// One per create in a batch, held for the batch: boxing would only add allocations.
#[allow(clippy::large_enum_variant)]
pub(super) enum State {
    /// Not decided yet.
    Pending,
    /// Answered from its idempotency key: a replay, or a conflict.
    Answered(OpResult),
    /// Refused when planned (unknown customer, taken phone...): nothing is written for it.
    Refused(StoreError),
    /// The same request (key and body) as the item at this index.
    RepeatOf(usize),
    NewCustomer {
        row: customer::Model,
        /// The code was drawn by us (and may be drawn again if it is taken).
        generated: bool,
    },
    NewOrder {
        row: order::Model,
        customer: customer::Model,
        notification: Option<notification::Model>,
    },
}

pub(super) struct Item {
    pub kind: Kind,
    /// Who asked for it.
    pub actor: Actor,
    pub idem: Option<IdemKey>,
    pub state: State,
}

pub(crate) struct CreateRun {
    pub(super) items: Vec<Item>,
}

impl CreateRun {
    pub(super) fn new(ops: Vec<Change>) -> Self {
        let items = ops
            .into_iter()
            .map(|(op, actor)| {
                let (kind, idem) = match op {
                    WriteOp::CreateCustomer { customer, idem } => (Kind::Customer(customer), idem),
                    WriteOp::CreateOrder { order, idem } => (Kind::Order(order), idem),
                    _ => unreachable!("only creates make a run"),
                };
                Item {
                    kind,
                    actor,
                    idem,
                    state: State::Pending,
                }
            })
            .collect();
        Self { items }
    }

    /// Refuses an item before anything is written for it.
    pub(super) fn refuse(&mut self, index: usize, e: StoreError) {
        self.items[index].state = State::Refused(e);
    }

    /// Answers repeats and replays of idempotency keys (one query for the whole run).
    pub(super) async fn decide_idempotency(
        &mut self,
        txn: &impl ConnectionTrait,
        batch: &Batch<'_>,
    ) -> Result<(), OpError> {
        let keys: Vec<&IdemKey> = self.items.iter().filter_map(|i| i.idem.as_ref()).collect();
        if keys.is_empty() {
            return Ok(());
        }
        let stored = idempotency::lookup(txn, &keys).await?;
        let mut in_run = HashMap::new();
        for (index, item) in self.items.iter_mut().enumerate() {
            let Some(idem) = &item.idem else { continue };
            match idempotency::decide(idem, &stored, batch, &in_run) {
                Decision::Run => {
                    in_run.insert(
                        idempotency::key_id(idem),
                        (index, idem.request_hash.clone()),
                    );
                }
                Decision::Answer(answer) => {
                    item.state = State::Answered(answer.map_err(OpError::Refused));
                }
                Decision::RepeatOf(earlier) => item.state = State::RepeatOf(earlier),
            }
        }
        Ok(())
    }

    /// The replies and events, in arrival order; the idempotency records of the items
    /// that ran.
    pub(super) fn finish(self, batch: &mut Batch<'_>) -> Vec<OpResult> {
        let mut results: Vec<OpResult> = Vec::with_capacity(self.items.len());
        for item in self.items {
            batch.actor = item.actor;
            let ran = matches!(
                item.state,
                State::NewCustomer { .. } | State::NewOrder { .. } | State::Refused(_)
            );
            let result = match item.state {
                State::Answered(result) => result,
                State::Refused(e) => Err(OpError::Refused(e)),
                State::RepeatOf(earlier) => match (&results[earlier], &item.idem) {
                    (Ok(reply), Some(idem)) => idempotency::render(idem, reply)
                        .map(WriteReply::Replay)
                        .map_err(OpError::Failed),
                    (Ok(_), None) => Err(OpError::Failed(StoreError::Internal(
                        "a repeat without its key".into(),
                    ))),
                    (Err(OpError::Refused(e) | OpError::Failed(e)), _) => {
                        Err(OpError::Refused(e.clone()))
                    }
                },
                State::NewCustomer { row, .. } => {
                    let view = CustomerView::from(row);
                    batch
                        .emit(EventType::CustomerCreated, &view)
                        .map(|()| WriteReply::Customer(view))
                        .map_err(OpError::Failed)
                }
                State::NewOrder {
                    row,
                    customer,
                    notification,
                } => {
                    if let Some(n) = &notification {
                        batch.queued(QueuedSms {
                            id: n.id,
                            phone: n.phone.clone(),
                            not_before: n.next_attempt_at.unwrap_or(n.created_at),
                        });
                    }
                    let view = order_view(row, &customer, notification.as_ref());
                    batch
                        .emit(EventType::OrderCreated, &view)
                        .map(|()| WriteReply::Order(view))
                        .map_err(OpError::Failed)
                }
                State::Pending => Err(OpError::Failed(StoreError::Internal(
                    "a create was not planned".into(),
                ))),
            };
            if ran && let Some(idem) = &item.idem {
                let outcome = match &result {
                    Ok(reply) => idempotency::render(idem, reply),
                    Err(OpError::Refused(e) | OpError::Failed(e)) => Err(e.clone()),
                };
                batch.remember(
                    idempotency::key_id(idem),
                    SeenKey {
                        request_hash: idem.request_hash.clone(),
                        outcome,
                    },
                );
            }
            results.push(result);
        }
        results
    }
}
