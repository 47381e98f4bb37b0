//! The changes the write path applies: one module per resource. Every operation runs inside
//! the batch's transaction (`store::batch`); creates of customers and orders that arrive
//! together are applied as sets (a constant number of statements for the whole run).

mod creates;
pub mod customers;
mod import;
pub mod notifications;
pub mod orders;
pub mod sessions;

use super::batch::{Batch, Change};
use super::entities::session;
use super::error::StoreError;
use crate::domain::customer::{CustomerPatch, NewCustomer};
use crate::domain::order::{NewOrder, OrderPatch};
use crate::domain::time::Timestamp;
use crate::domain::views::{CustomerView, NotificationView, OrderView};
use sea_orm::{ConnectionTrait, DbErr};
use uuid::Uuid;

/// An `Idempotency-Key` with what it is bound to.
#[derive(Debug, Clone)]
pub struct IdemKey {
    pub principal: String,
    pub route: &'static str,
    pub key: String,
    /// SHA-256 of the request body as received.
    pub request_hash: String,
    /// How the HTTP layer makes the response kept with the key from the reply.
    pub render: RenderReply,
}

/// An idempotent request's response as the HTTP layer made it: kept with its key in the
/// operation's transaction and replayed byte for byte. The store does not look inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredReply {
    pub status: u16,
    pub body: String,
}

/// Makes the response kept for a reply (an error says why it could not be made).
pub type RenderReply = fn(&WriteReply) -> Result<StoredReply, String>;

#[derive(Debug, Clone)]
pub enum WriteOp {
    CreateCustomer {
        customer: NewCustomer,
        idem: Option<IdemKey>,
    },
    UpdateCustomer {
        id: Uuid,
        patch: CustomerPatch,
    },
    DeleteCustomer {
        id: Uuid,
    },
    CreateOrder {
        order: NewOrder,
        idem: Option<IdemKey>,
    },
    UpdateOrder {
        id: Uuid,
        patch: OrderPatch,
    },
    DeleteOrder {
        id: Uuid,
    },
    /// Customers from an import, valid and unique among themselves, each with its row
    /// number in the file: all or none (see `import::import`).
    ImportCustomers {
        customers: Vec<(usize, NewCustomer)>,
    },
    /// A fresh SMS for an order (the "resend" button).
    QueueNotification {
        order_id: Uuid,
    },
    /// The SMS sender takes messages for one send attempt each: `queued` ones, and
    /// `sending` ones claimed under an epoch up to its own (their sender is dead or fenced
    /// off, or this one let them go), become `sending` under `sender.epoch`, one more
    /// attempt. Only while `sender` holds the sender lease with that epoch, on the
    /// database's clock; otherwise nothing is claimed and the reply says `fenced`. Answers
    /// `Claimed` with the messages it took; the others were not there to take (another
    /// claim has them, they were sent, or they are gone). A `sending` message claimed
    /// `max_attempts` times already (its senders kept dying mid-send) is failed instead.
    ClaimSms {
        ids: Vec<Uuid>,
        sender: SenderTerm,
    },
    /// What send attempts of claimed messages came to. Answers `Recorded` with the ids
    /// whose outcome was stored; the others no longer held that claim.
    RecordSends(Vec<SendRecord>),
    /// A provider's delivery report for the message it knows as `provider_message_id`.
    /// Only a `sent` message moves; `NotFound` when no message has that id.
    DeliveryReport {
        provider_message_id: String,
        outcome: DeliveryOutcome,
    },
    /// A browser session begins (see `auth::session`).
    CreateSession(session::Model),
    /// A browser session ends (logout); ending an unknown one is not an error.
    EndSession {
        id_hash: String,
    },
}

impl WriteOp {
    /// Creates are applied as a set with the creates next to them in the batch.
    pub(super) fn is_create(&self) -> bool {
        matches!(self, Self::CreateCustomer { .. } | Self::CreateOrder { .. })
    }

    /// The SMS dispatcher's bookkeeping: nobody waits on it, so it may wait a little for a
    /// batch that a request's write starts (see `Repository::flush`).
    pub(crate) fn is_background(&self) -> bool {
        matches!(self, Self::ClaimSms { .. } | Self::RecordSends(_))
    }
}

/// Who claims: an instance (`holder`), one start of it (`boot`), and the epoch of the
/// sender lease it believes it holds (see `sms::lease`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderTerm {
    pub holder: String,
    pub boot: String,
    pub epoch: i64,
}

/// One send attempt's outcome, for the claim it was made under: the claim's token is
/// (`epoch`, `attempts`), so a sender whose claim was taken over (by a newer epoch, or a
/// later claim of its own) cannot overwrite the newer claim's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendRecord {
    pub id: Uuid,
    pub epoch: i64,
    pub attempts: i32,
    pub outcome: SendOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    Sent {
        provider_message_id: String,
        cost: Option<String>,
    },
    /// Try again at `next_attempt_at`; the message goes back to `queued`.
    Retry {
        error: String,
        next_attempt_at: Timestamp,
    },
    Failed {
        error: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    Failed { reason: String },
}

/// A message the dispatcher holds a claim on; (`epoch`, `attempts`) is the claim's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedSms {
    pub id: Uuid,
    pub phone: String,
    pub message: String,
    pub attempts: i32,
    pub epoch: i64,
}

/// What a `ClaimSms` came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// The claimer did not hold the sender lease with its epoch: nothing was claimed.
    pub fenced: bool,
    pub taken: Vec<ClaimedSms>,
}

#[derive(Debug, Clone)]
pub enum WriteReply {
    Customer(CustomerView),
    Order(OrderView),
    Notification(NotificationView),
    Claimed(Claim),
    Recorded(Vec<Uuid>),
    Deleted,
    /// Done, nothing to show.
    Done,
    /// An idempotent repeat: the original response, verbatim.
    Replay(StoredReply),
}

/// Why an operation did not apply. `Refused` is decided before the operation wrote
/// anything, so the batch's transaction goes on; `Failed` is a statement that failed,
/// which on PostgreSQL aborts the transaction: the batch is then run again with every
/// operation in its own savepoint.
#[derive(Debug)]
pub(super) enum OpError {
    Refused(StoreError),
    Failed(StoreError),
}

impl From<DbErr> for OpError {
    fn from(e: DbErr) -> Self {
        Self::Failed(e.into())
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        Self::Failed(e)
    }
}

pub(super) type OpResult = Result<WriteReply, OpError>;

pub(super) fn refuse<T>(e: StoreError) -> Result<T, OpError> {
    Err(OpError::Refused(e))
}

/// Applies one operation that is not a create (creates go through `apply_creates`).
pub(super) async fn apply_one(
    txn: &impl ConnectionTrait,
    op: WriteOp,
    batch: &mut Batch<'_>,
) -> OpResult {
    match op {
        WriteOp::CreateCustomer { .. } | WriteOp::CreateOrder { .. } => {
            let actor = batch.actor.clone();
            let mut results = apply_creates(txn, vec![(op, actor)], batch).await?;
            results.pop().unwrap_or_else(|| {
                Err(OpError::Failed(StoreError::Internal(
                    "a create gave no result".into(),
                )))
            })
        }
        WriteOp::UpdateCustomer { id, patch } => customers::update(txn, id, patch, batch).await,
        WriteOp::DeleteCustomer { id } => customers::delete(txn, id, batch).await,
        WriteOp::UpdateOrder { id, patch } => orders::update(txn, id, patch, batch).await,
        WriteOp::DeleteOrder { id } => orders::delete(txn, id, batch).await,
        WriteOp::ImportCustomers { customers } => import::import(txn, customers, batch).await,
        WriteOp::QueueNotification { order_id } => {
            notifications::queue_again(txn, order_id, batch).await
        }
        WriteOp::ClaimSms { ids, sender } => notifications::claim(txn, ids, &sender, batch).await,
        WriteOp::RecordSends(records) => notifications::record_sends(txn, records, batch).await,
        WriteOp::DeliveryReport {
            provider_message_id,
            outcome,
        } => notifications::delivery_report(txn, &provider_message_id, outcome, batch).await,
        WriteOp::CreateSession(row) => sessions::create(txn, row).await,
        WriteOp::EndSession { id_hash } => sessions::end(txn, id_hash).await,
    }
}

/// Applies a run of creates (customers and orders, in arrival order) as sets: one lookup
/// of idempotency keys, one of the customers they name, one multi-row INSERT per table.
/// Answers one result per operation, in order. A `Failed` error means a statement
/// failed and the whole run (and batch) must be run again in isolation.
pub(super) async fn apply_creates(
    txn: &impl ConnectionTrait,
    ops: Vec<Change>,
    batch: &mut Batch<'_>,
) -> Result<Vec<OpResult>, OpError> {
    let mut run = creates::CreateRun::new(ops);
    run.decide_idempotency(txn, batch).await?;
    customers::plan(txn, &mut run).await?;
    orders::plan(txn, &mut run).await?;
    customers::insert(txn, &mut run).await?;
    orders::insert(txn, &mut run, batch).await?;
    Ok(run.finish(batch))
}
