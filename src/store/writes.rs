//! The write path: every change is an operation applied inside one transaction, in batches
//! (group commit). Each operation writes its rows, its events (with gap-free `seq`) and its
//! idempotency record; nothing is visible to anyone until the batch commits.

use super::entities::{customer, event, idempotency_key, notification, order, session};
use super::error::StoreError;
use super::reads;
use super::views::{CustomerView, NotificationView, OrderView};
use crate::domain::FieldErrors;
use crate::domain::customer::{CustomerCode, CustomerPatch, NewCustomer};
use crate::domain::event::{Event, EventType};
use crate::domain::money::Money;
use crate::domain::notification::{NotificationStatus, NotifyOn, Template};
use crate::domain::order::{CustomerRef, NewOrder, OrderPatch, OrderStatus, generate_order_number};
use crate::domain::time::Timestamp;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbBackend,
    EntityTrait, IntoActiveModel, PaginatorTrait, QueryFilter, QuerySelect, SqliteTransactionMode,
    Statement, TransactionOptions, TransactionTrait,
};
use std::collections::BTreeMap;
use tokio::sync::oneshot;
use uuid::Uuid;

/// What the write path needs to know from the settings.
#[derive(Debug, Clone)]
pub struct WriteConfig {
    /// `None` when SMS is disabled: orders then get no notification rows.
    pub sms_provider: Option<String>,
    pub notify_on: Vec<NotifyOn>,
    pub templates: BTreeMap<NotifyOn, Template>,
    /// `sms.max_attempts`: a message whose sender died mid-send this often is failed.
    pub max_attempts: i32,
}

/// An `Idempotency-Key` with what it is bound to.
#[derive(Debug, Clone)]
pub struct IdemKey {
    pub principal: String,
    pub route: &'static str,
    pub key: String,
    /// SHA-256 of the request body as received.
    pub request_hash: String,
}

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
    /// Customers from an import, valid and unique among themselves: all or none (see
    /// `import::import_customers`).
    ImportCustomers {
        customers: Vec<NewCustomer>,
    },
    /// A fresh SMS for an order (the "resend" button).
    QueueNotification {
        order_id: Uuid,
    },
    /// The SMS dispatcher takes a message for one send attempt: `queued` (or `sending`
    /// whose lease has expired) becomes `sending` until `lease_until`, one more attempt.
    /// Answers `Conflict` when the message is not there to take (another sender has it, or
    /// it was already sent), `NotFound` when it is gone, and `Done` when instead of being
    /// claimed it was failed (its senders died mid-send `max_attempts` times).
    ClaimNotification {
        id: Uuid,
        lease_until: Timestamp,
    },
    /// What one send attempt of a claimed (`sending`) message came to.
    RecordSend {
        id: Uuid,
        outcome: SendOutcome,
    },
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

#[derive(Debug, Clone)]
pub enum WriteReply {
    Customer(CustomerView),
    Order(OrderView),
    Notification(NotificationView),
    Deleted,
    /// Done, nothing to show.
    Done,
    /// An idempotent repeat: the original response, verbatim.
    Replay {
        status: u16,
        body: String,
    },
}

/// What a committed batch tells the rest of the system.
#[derive(Debug, Clone, Default, actix::Message)]
#[rtype(result = "()")]
pub struct Committed {
    /// In `seq` order.
    pub events: Vec<Event>,
    /// Notification rows now `queued`, to be sent.
    pub queued: Vec<Uuid>,
}

/// The longest one batch may take, commit included.
const BATCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(45);

pub struct Pending {
    pub op: WriteOp,
    pub reply: oneshot::Sender<Result<WriteReply, StoreError>>,
}

/// Runs one batch in one transaction, answers every caller, and returns what was committed.
pub async fn run_batch(
    db: &DatabaseConnection,
    cfg: &WriteConfig,
    batch: Vec<Pending>,
) -> Option<Committed> {
    let (ops, replies): (Vec<_>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.reply)).unzip();
    // The server's statement and lock timeouts do not help when the network goes silent:
    // bound the whole batch so the single writer never waits forever. A batch that timed
    // out may still have committed; callers retry safely with their Idempotency-Key.
    let result = match tokio::time::timeout(BATCH_TIMEOUT, execute(db, cfg, ops)).await {
        Ok(result) => result,
        Err(_) => Err(StoreError::Unavailable(
            "the database did not answer in time".into(),
        )),
    };
    match result {
        Ok((results, committed)) => {
            for (reply, result) in replies.into_iter().zip(results) {
                // A caller that went away (client disconnected) still had its change committed.
                let _ = reply.send(result);
            }
            Some(committed)
        }
        Err(e) => {
            tracing::error!(error = %e, size = replies.len(), "write batch failed");
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
            None
        }
    }
}

type BatchResult = (Vec<Result<WriteReply, StoreError>>, Committed);

async fn execute(
    db: &DatabaseConnection,
    cfg: &WriteConfig,
    ops: Vec<WriteOp>,
) -> Result<BatchResult, StoreError> {
    // Optimistic first: the whole batch without savepoints, which on PostgreSQL saves two
    // round trips per operation (SAVEPOINT, RELEASE) on the single writer. Almost every
    // batch succeeds whole; when one operation is refused, the batch runs again with each
    // operation in its own savepoint, so that the refusal rolls back alone.
    let single = ops.len() == 1;
    let retry = if single { None } else { Some(ops.clone()) };
    match execute_whole(db, cfg, ops).await? {
        Whole::Committed(done) => Ok(done),
        Whole::Refused(e) => match retry {
            None => Ok((vec![Err(e)], Committed::default())),
            Some(ops) => execute_isolated(db, cfg, ops).await,
        },
    }
}

enum Whole {
    Committed(BatchResult),
    /// An operation was refused (not an infrastructure failure); nothing was committed.
    Refused(StoreError),
}

async fn begin(db: &DatabaseConnection) -> Result<sea_orm::DatabaseTransaction, StoreError> {
    Ok(db
        .begin_with_options(TransactionOptions {
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
            ..Default::default()
        })
        .await?)
}

/// Every operation in one transaction, no savepoints; the first refusal rolls back all.
async fn execute_whole(
    db: &DatabaseConnection,
    cfg: &WriteConfig,
    ops: Vec<WriteOp>,
) -> Result<Whole, StoreError> {
    let txn = begin(db).await?;
    let last_seq = lock_event_counter(&txn).await?;
    let mut ctx = BatchCtx::new(cfg, last_seq + 1);
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        match apply(&txn, op, &mut ctx).await {
            Ok(reply) => results.push(Ok(reply)),
            // Only a database that cannot be reached fails the whole batch; any other error
            // (even an unexpected one) is retried in isolation and stays with its operation.
            Err(e @ StoreError::Unavailable(_)) => return Err(e),
            Err(e) => {
                txn.rollback().await?;
                return Ok(Whole::Refused(e));
            }
        }
    }
    finish(txn, &ctx, last_seq).await?;
    Ok(Whole::Committed((results, ctx.committed)))
}

/// Each operation in its own savepoint: a refused one rolls back alone.
async fn execute_isolated(
    db: &DatabaseConnection,
    cfg: &WriteConfig,
    ops: Vec<WriteOp>,
) -> Result<BatchResult, StoreError> {
    let txn = begin(db).await?;
    let last_seq = lock_event_counter(&txn).await?;
    let mut ctx = BatchCtx::new(cfg, last_seq + 1);
    let mut results = Vec::with_capacity(ops.len());
    for op in ops {
        let savepoint = txn.begin().await?;
        let mark = ctx.mark();
        match apply(&savepoint, op, &mut ctx).await {
            Ok(reply) => {
                savepoint.commit().await?;
                results.push(Ok(reply));
            }
            Err(e @ StoreError::Unavailable(_)) => return Err(e),
            Err(e) => {
                savepoint.rollback().await?;
                ctx.reset(mark);
                results.push(Err(e));
            }
        }
    }
    finish(txn, &ctx, last_seq).await?;
    Ok((results, ctx.committed))
}

/// Moves the event counter past the batch's events and commits.
async fn finish(
    txn: sea_orm::DatabaseTransaction,
    ctx: &BatchCtx<'_>,
    last_seq: i64,
) -> Result<(), StoreError> {
    if ctx.next_seq != last_seq + 1 {
        let backend = txn.get_database_backend();
        txn.execute_raw(Statement::from_sql_and_values(
            backend,
            match backend {
                DbBackend::Postgres => "UPDATE event_counter SET last_seq = $1 WHERE id = 1",
                _ => "UPDATE event_counter SET last_seq = ? WHERE id = 1",
            },
            [(ctx.next_seq - 1).into()],
        ))
        .await?;
    }
    txn.commit().await?;
    Ok(())
}

/// Removes events older than `before`, except the newest one (so the log never looks
/// empty to a client that resumes). Returns how many were removed.
pub async fn prune_events(db: &DatabaseConnection, before: Timestamp) -> Result<u64, StoreError> {
    let newest = reads::latest_seq(db).await?;
    let removed = event::Entity::delete_many()
        .filter(event::Column::At.lt(before.millis()))
        .filter(event::Column::Seq.lt(newest))
        .exec(db)
        .await?;
    Ok(removed.rows_affected)
}

/// Reads the last assigned `seq` and, on PostgreSQL, locks the counter row until commit so
/// that several instances assign `seq` in commit order. On SQLite the IMMEDIATE transaction
/// already holds the database's write lock.
async fn lock_event_counter(txn: &impl ConnectionTrait) -> Result<i64, StoreError> {
    let backend = txn.get_database_backend();
    let sql = match backend {
        DbBackend::Postgres => "SELECT last_seq FROM event_counter WHERE id = 1 FOR UPDATE",
        _ => "SELECT last_seq FROM event_counter WHERE id = 1",
    };
    let row = txn
        .query_one_raw(Statement::from_string(backend, sql))
        .await?
        .ok_or_else(|| StoreError::Internal("event_counter row is missing".into()))?;
    Ok(row.try_get::<i64>("", "last_seq")?)
}

pub(super) struct BatchCtx<'a> {
    cfg: &'a WriteConfig,
    next_seq: i64,
    committed: Committed,
}

#[derive(Clone, Copy)]
struct Mark {
    next_seq: i64,
    events: usize,
    queued: usize,
}

impl<'a> BatchCtx<'a> {
    fn new(cfg: &'a WriteConfig, next_seq: i64) -> Self {
        Self {
            cfg,
            next_seq,
            committed: Committed::default(),
        }
    }

    fn mark(&self) -> Mark {
        Mark {
            next_seq: self.next_seq,
            events: self.committed.events.len(),
            queued: self.committed.queued.len(),
        }
    }

    fn reset(&mut self, mark: Mark) {
        self.next_seq = mark.next_seq;
        self.committed.events.truncate(mark.events);
        self.committed.queued.truncate(mark.queued);
    }

    pub(super) async fn emit(
        &mut self,
        txn: &impl ConnectionTrait,
        kind: EventType,
        data: impl serde::Serialize,
    ) -> Result<(), StoreError> {
        let data = serde_json::to_value(data).map_err(|e| StoreError::Internal(e.to_string()))?;
        let at = Timestamp::now();
        let row = event::Model {
            seq: self.next_seq,
            kind: kind.as_str().to_string(),
            at: at.millis(),
            data: data.to_string(),
        };
        event::Entity::insert(row.into_active_model())
            .exec_without_returning(txn)
            .await?;
        self.committed.events.push(Event {
            kind,
            seq: self.next_seq,
            at,
            data,
        });
        self.next_seq += 1;
        Ok(())
    }
}

async fn apply(
    txn: &impl ConnectionTrait,
    op: WriteOp,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    match op {
        WriteOp::CreateCustomer { customer, idem } => {
            idempotent(txn, idem, 201, async |txn| {
                create_customer(txn, customer, ctx)
                    .await
                    .map(WriteReply::Customer)
            })
            .await
        }
        WriteOp::UpdateCustomer { id, patch } => update_customer(txn, id, patch, ctx).await,
        WriteOp::DeleteCustomer { id } => delete_customer(txn, id, ctx).await,
        WriteOp::CreateOrder { order, idem } => {
            idempotent(txn, idem, 201, async |txn| {
                create_order(txn, order, ctx).await.map(WriteReply::Order)
            })
            .await
        }
        WriteOp::UpdateOrder { id, patch } => update_order(txn, id, patch, ctx).await,
        WriteOp::DeleteOrder { id } => delete_order(txn, id, ctx).await,
        WriteOp::ImportCustomers { customers } => {
            super::import::import_customers(txn, customers, ctx).await
        }
        WriteOp::QueueNotification { order_id } => queue_again(txn, order_id, ctx).await,
        WriteOp::ClaimNotification { id, lease_until } => {
            claim_notification(txn, id, lease_until, ctx).await
        }
        WriteOp::RecordSend { id, outcome } => record_send(txn, id, outcome, ctx).await,
        WriteOp::DeliveryReport {
            provider_message_id,
            outcome,
        } => delivery_report(txn, &provider_message_id, outcome, ctx).await,
        WriteOp::CreateSession(row) => {
            session::Entity::insert(row.into_active_model())
                .exec_without_returning(txn)
                .await?;
            Ok(WriteReply::Done)
        }
        WriteOp::EndSession { id_hash } => {
            session::Entity::delete_by_id(id_hash).exec(txn).await?;
            Ok(WriteReply::Done)
        }
    }
}

/// Runs `create` once per key: a repeat with the same body gets the stored response.
async fn idempotent<C, F>(
    txn: &C,
    idem: Option<IdemKey>,
    status: u16,
    create: F,
) -> Result<WriteReply, StoreError>
where
    C: ConnectionTrait,
    F: AsyncFnOnce(&C) -> Result<WriteReply, StoreError>,
{
    let Some(idem) = idem else {
        return create(txn).await;
    };
    let stored = idempotency_key::Entity::find_by_id((
        idem.principal.clone(),
        idem.route.to_string(),
        idem.key.clone(),
    ))
    .one(txn)
    .await?;
    if let Some(stored) = stored {
        if stored.request_hash != idem.request_hash {
            return Err(StoreError::Conflict(
                "this Idempotency-Key was already used with a different request body".into(),
            ));
        }
        return Ok(WriteReply::Replay {
            status: u16::try_from(stored.status).unwrap_or(status),
            body: stored.body,
        });
    }
    let reply = create(txn).await?;
    let body = match &reply {
        WriteReply::Customer(c) => serde_json::to_string(c),
        WriteReply::Order(o) => serde_json::to_string(o),
        WriteReply::Notification(n) => serde_json::to_string(n),
        WriteReply::Deleted | WriteReply::Done | WriteReply::Replay { .. } => Ok(String::new()),
    }
    .map_err(|e| StoreError::Internal(e.to_string()))?;
    let record = idempotency_key::Model {
        principal: idem.principal,
        route: idem.route.to_string(),
        key: idem.key,
        request_hash: idem.request_hash,
        status: i32::from(status),
        body,
        created_at: Timestamp::now().millis(),
    };
    idempotency_key::Entity::insert(record.into_active_model())
        .exec_without_returning(txn)
        .await?;
    Ok(reply)
}

async fn code_taken(txn: &impl ConnectionTrait, code: &str) -> Result<bool, StoreError> {
    Ok(customer::Entity::find()
        .filter(customer::Column::Code.eq(code))
        .count(txn)
        .await?
        > 0)
}

async fn create_customer(
    txn: &impl ConnectionTrait,
    new: NewCustomer,
    ctx: &mut BatchCtx<'_>,
) -> Result<CustomerView, StoreError> {
    let code = match new.code {
        Some(code) => code,
        None => loop {
            let candidate = CustomerCode::generate();
            if !code_taken(txn, candidate.as_str()).await? {
                break candidate;
            }
        },
    };
    let now = Timestamp::now().millis();
    let row = customer::Model {
        id: Uuid::now_v7(),
        name: new.name,
        code: code.into_string(),
        phone: new.phone.into_string(),
        email: new.email,
        created_at: now,
        updated_at: now,
    };
    customer::Entity::insert(row.clone().into_active_model())
        .exec_without_returning(txn)
        .await?;
    let view = CustomerView::from(row);
    ctx.emit(txn, EventType::CustomerCreated, &view).await?;
    Ok(view)
}

async fn update_customer(
    txn: &impl ConnectionTrait,
    id: Uuid,
    patch: CustomerPatch,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    let current = customer::Entity::find_by_id(id)
        .one(txn)
        .await?
        .ok_or(StoreError::NotFound("customer"))?;
    let mut next = current.clone();
    if let Some(name) = patch.name {
        next.name = name;
    }
    if let Some(code) = patch.code {
        next.code = code.into_string();
    }
    if let Some(phone) = patch.phone {
        next.phone = phone.into_string();
    }
    if let Some(email) = patch.email {
        next.email = email;
    }
    if next == current {
        return Ok(WriteReply::Customer(current.into()));
    }
    next.updated_at = Timestamp::now().millis().max(current.updated_at);
    customer::Entity::update(next.clone().into_active_model().reset_all())
        .exec_without_returning(txn)
        .await?;
    let view = CustomerView::from(next);
    ctx.emit(txn, EventType::CustomerUpdated, &view).await?;
    Ok(WriteReply::Customer(view))
}

async fn delete_customer(
    txn: &impl ConnectionTrait,
    id: Uuid,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    if customer::Entity::find_by_id(id).one(txn).await?.is_none() {
        return Err(StoreError::NotFound("customer"));
    }
    let orders = order::Entity::find()
        .filter(order::Column::CustomerId.eq(id))
        .count(txn)
        .await?;
    if orders > 0 {
        return Err(StoreError::Conflict(format!(
            "the customer has {orders} order(s); delete them first"
        )));
    }
    customer::Entity::delete_by_id(id).exec(txn).await?;
    ctx.emit(
        txn,
        EventType::CustomerDeleted,
        serde_json::json!({ "id": id }),
    )
    .await?;
    Ok(WriteReply::Deleted)
}

async fn create_order(
    txn: &impl ConnectionTrait,
    new: NewOrder,
    ctx: &mut BatchCtx<'_>,
) -> Result<OrderView, StoreError> {
    let (found, field) = match &new.customer {
        CustomerRef::Id(id) => (
            customer::Entity::find_by_id(*id).one(txn).await?,
            "customer_id",
        ),
        CustomerRef::Code(code) => (
            customer::Entity::find()
                .filter(customer::Column::Code.eq(code.as_str()))
                .one(txn)
                .await?,
            "customer_code",
        ),
    };
    let customer = found
        .ok_or_else(|| StoreError::Validation(FieldErrors::single(field, "no such customer")))?;
    let now = Timestamp::now();
    let mut row = order::Model {
        id: Uuid::now_v7(),
        order_number: generate_order_number(now),
        customer_id: customer.id,
        item: new.item,
        quantity: new.quantity,
        amount_minor: new.amount.minor(),
        currency: new.currency.code().to_string(),
        status: OrderStatus::Pending.as_str().to_string(),
        created_at: now.millis(),
        updated_at: now.millis(),
    };
    // The unique index decides whether a number is free: a taken one inserts nothing and
    // another is drawn. One statement instead of a lookup before every insert.
    let mut attempts = 0;
    loop {
        let inserted = order::Entity::insert(row.clone().into_active_model())
            .on_conflict(
                OnConflict::column(order::Column::OrderNumber)
                    .do_nothing()
                    .to_owned(),
            )
            .exec_without_returning(txn)
            .await?;
        if inserted > 0 {
            break;
        }
        attempts += 1;
        if attempts >= 16 {
            return Err(StoreError::Internal(
                "no free order number after 16 draws".into(),
            ));
        }
        row.order_number = generate_order_number(now);
    }
    let notification =
        queue_notification(txn, &row, &customer, NotifyOn::Created, ctx, false).await?;
    let view = OrderView::new(row, &customer, notification.as_ref());
    ctx.emit(txn, EventType::OrderCreated, &view).await?;
    Ok(view)
}

/// Writes a `queued` notification for `on` when SMS is enabled and (unless `always`) the
/// event is in `sms.notify_on`.
async fn queue_notification(
    txn: &impl ConnectionTrait,
    order: &order::Model,
    customer: &customer::Model,
    on: NotifyOn,
    ctx: &mut BatchCtx<'_>,
    always: bool,
) -> Result<Option<notification::Model>, StoreError> {
    let Some(provider) = &ctx.cfg.sms_provider else {
        return Ok(None);
    };
    if !always && !ctx.cfg.notify_on.contains(&on) {
        return Ok(None);
    }
    let Some(template) = ctx.cfg.templates.get(&on) else {
        return Ok(None);
    };
    let amount = Money::from_minor(order.amount_minor)
        .map(|m| m.to_string())
        .unwrap_or_default();
    let values = BTreeMap::from([
        ("customer_name", customer.name.clone()),
        ("order_number", order.order_number.clone()),
        ("item", order.item.clone()),
        ("quantity", order.quantity.to_string()),
        ("amount", amount),
        ("currency", order.currency.clone()),
        ("status", order.status.clone()),
    ]);
    let now = Timestamp::now().millis();
    let row = notification::Model {
        id: Uuid::now_v7(),
        order_id: order.id,
        customer_id: customer.id,
        phone: customer.phone.clone(),
        message: template.render(&values),
        status: NotificationStatus::Queued.as_str().to_string(),
        attempts: 0,
        provider: Some(provider.clone()),
        provider_message_id: None,
        cost: None,
        error: None,
        next_attempt_at: Some(now),
        lease_until: None,
        created_at: now,
        updated_at: now,
    };
    notification::Entity::insert(row.clone().into_active_model())
        .exec_without_returning(txn)
        .await?;
    ctx.committed.queued.push(row.id);
    Ok(Some(row))
}

async fn update_order(
    txn: &impl ConnectionTrait,
    id: Uuid,
    patch: OrderPatch,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    let current = order::Entity::find_by_id(id)
        .one(txn)
        .await?
        .ok_or(StoreError::NotFound("order"))?;
    let from = OrderStatus::parse(&current.status).map_err(StoreError::Internal)?;
    let mut next = current.clone();
    if let Some(item) = patch.item {
        next.item = item;
    }
    if let Some(quantity) = patch.quantity {
        next.quantity = quantity;
    }
    if let Some(amount) = patch.amount {
        next.amount_minor = amount.minor();
    }
    let mut notify = None;
    if let Some(to) = patch.status {
        from.transition(to).map_err(StoreError::Conflict)?;
        if to != from {
            next.status = to.as_str().to_string();
            notify = NotifyOn::for_status(to);
        }
    }
    if next != current && matches!(from, OrderStatus::Delivered | OrderStatus::Cancelled) {
        return Err(StoreError::Conflict(format!(
            "a {from} order cannot be changed"
        )));
    }
    let customer = customer::Entity::find_by_id(current.customer_id)
        .one(txn)
        .await?
        .ok_or_else(|| StoreError::Internal("order without customer".into()))?;
    if next == current {
        let latest = reads::latest_notification(txn, id).await?;
        return Ok(WriteReply::Order(OrderView::new(
            current,
            &customer,
            latest.as_ref(),
        )));
    }
    next.updated_at = Timestamp::now().millis().max(current.updated_at);
    order::Entity::update(next.clone().into_active_model().reset_all())
        .exec_without_returning(txn)
        .await?;
    if let Some(on) = notify {
        queue_notification(txn, &next, &customer, on, ctx, false).await?;
    }
    let latest = reads::latest_notification(txn, id).await?;
    let view = OrderView::new(next, &customer, latest.as_ref());
    ctx.emit(txn, EventType::OrderUpdated, &view).await?;
    Ok(WriteReply::Order(view))
}

async fn delete_order(
    txn: &impl ConnectionTrait,
    id: Uuid,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    let deleted = order::Entity::delete_by_id(id).exec(txn).await?;
    if deleted.rows_affected == 0 {
        return Err(StoreError::NotFound("order"));
    }
    ctx.emit(
        txn,
        EventType::OrderDeleted,
        serde_json::json!({ "id": id }),
    )
    .await?;
    Ok(WriteReply::Deleted)
}

async fn queue_again(
    txn: &impl ConnectionTrait,
    order_id: Uuid,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    if ctx.cfg.sms_provider.is_none() {
        return Err(StoreError::Conflict(
            "SMS is disabled (sms.enabled = false)".into(),
        ));
    }
    let order = order::Entity::find_by_id(order_id)
        .one(txn)
        .await?
        .ok_or(StoreError::NotFound("order"))?;
    let customer = customer::Entity::find_by_id(order.customer_id)
        .one(txn)
        .await?
        .ok_or_else(|| StoreError::Internal("order without customer".into()))?;
    let status = OrderStatus::parse(&order.status).map_err(StoreError::Internal)?;
    let on = NotifyOn::for_status(status).unwrap_or(NotifyOn::Created);
    let row = queue_notification(txn, &order, &customer, on, ctx, true)
        .await?
        .ok_or_else(|| StoreError::Internal("no template for notification".into()))?;
    let view = OrderView::new(order, &customer, Some(&row));
    ctx.emit(txn, EventType::OrderUpdated, &view).await?;
    let notification = NotificationView::from(row);
    ctx.emit(txn, EventType::NotificationUpdated, &notification)
        .await?;
    Ok(WriteReply::Notification(notification))
}

async fn claim_notification(
    txn: &impl ConnectionTrait,
    id: Uuid,
    lease_until: Timestamp,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    use notification::Column as C;
    use sea_orm::sea_query::ExprTrait;
    let now = Timestamp::now().millis();
    // One conditional UPDATE: with several instances on one PostgreSQL database, exactly
    // one of them sees a row affected, so a message is never sent twice at once.
    let claimable = Condition::any()
        .add(C::Status.eq(NotificationStatus::Queued.as_str()))
        .add(
            Condition::all()
                .add(C::Status.eq(NotificationStatus::Sending.as_str()))
                .add(C::LeaseUntil.lt(now)),
        );
    // A lease that ran out means the sender stopped mid-send (a crash): the provider may
    // or may not have the message. After max_attempts of those, stop resending it.
    let gave_up = notification::Entity::update_many()
        .col_expr(C::Status, Expr::value(NotificationStatus::Failed.as_str()))
        .col_expr(
            C::Error,
            Expr::value(format!(
                "gave up after {} attempts whose sender stopped before the outcome was known",
                ctx.cfg.max_attempts
            )),
        )
        .col_expr(C::LeaseUntil, Expr::value(Option::<i64>::None))
        .col_expr(C::UpdatedAt, Expr::value(now))
        .filter(C::Id.eq(id))
        .filter(C::Status.eq(NotificationStatus::Sending.as_str()))
        .filter(C::LeaseUntil.lt(now))
        .filter(C::Attempts.gte(ctx.cfg.max_attempts))
        .exec(txn)
        .await?;
    if gave_up.rows_affected > 0 {
        if let Some(row) = notification::Entity::find_by_id(id).one(txn).await? {
            ctx.emit(
                txn,
                EventType::NotificationUpdated,
                &NotificationView::from(row),
            )
            .await?;
        }
        // Not an error: the change must commit. Nothing was claimed.
        return Ok(WriteReply::Done);
    }
    let updated = notification::Entity::update_many()
        .col_expr(C::Status, Expr::value(NotificationStatus::Sending.as_str()))
        .col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
        .col_expr(C::LeaseUntil, Expr::value(lease_until.millis()))
        .col_expr(C::UpdatedAt, Expr::value(now))
        .filter(C::Id.eq(id))
        .filter(claimable)
        .exec(txn)
        .await?;
    let row = notification::Entity::find_by_id(id).one(txn).await?;
    let Some(row) = row else {
        return Err(StoreError::NotFound("notification"));
    };
    if updated.rows_affected == 0 {
        return Err(StoreError::Conflict(format!(
            "notification {id} is {} and cannot be claimed",
            row.status
        )));
    }
    let view = NotificationView::from(row);
    ctx.emit(txn, EventType::NotificationUpdated, &view).await?;
    Ok(WriteReply::Notification(view))
}

async fn record_send(
    txn: &impl ConnectionTrait,
    id: Uuid,
    outcome: SendOutcome,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    let current = notification::Entity::find_by_id(id)
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or(StoreError::NotFound("notification"))?;
    if current.status != NotificationStatus::Sending.as_str() {
        return Err(StoreError::Conflict(format!(
            "notification {id} is {}, not sending",
            current.status
        )));
    }
    let mut next = current.clone();
    next.lease_until = None;
    next.next_attempt_at = None;
    match outcome {
        SendOutcome::Sent {
            provider_message_id,
            cost,
        } => {
            next.status = NotificationStatus::Sent.as_str().into();
            next.provider_message_id = Some(provider_message_id);
            next.cost = cost;
            next.error = None;
        }
        SendOutcome::Retry {
            error,
            next_attempt_at,
        } => {
            next.status = NotificationStatus::Queued.as_str().into();
            next.next_attempt_at = Some(next_attempt_at.millis());
            next.error = Some(error);
        }
        SendOutcome::Failed { error } => {
            next.status = NotificationStatus::Failed.as_str().into();
            next.error = Some(error);
        }
    }
    save_notification(txn, current, next, ctx).await
}

async fn delivery_report(
    txn: &impl ConnectionTrait,
    provider_message_id: &str,
    outcome: DeliveryOutcome,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    let current = notification::Entity::find()
        .filter(notification::Column::ProviderMessageId.eq(provider_message_id))
        .lock_exclusive()
        .one(txn)
        .await?
        .ok_or(StoreError::NotFound("notification"))?;
    // Reports can arrive late, twice or out of order: only a `sent` message moves, so a
    // delivered message stays delivered.
    if current.status != NotificationStatus::Sent.as_str() {
        return Ok(WriteReply::Notification(current.into()));
    }
    let mut next = current.clone();
    match outcome {
        DeliveryOutcome::Delivered => {
            next.status = NotificationStatus::Delivered.as_str().into();
        }
        DeliveryOutcome::Failed { reason } => {
            next.status = NotificationStatus::Failed.as_str().into();
            next.error = Some(reason);
        }
    }
    save_notification(txn, current, next, ctx).await
}

async fn save_notification(
    txn: &impl ConnectionTrait,
    current: notification::Model,
    mut next: notification::Model,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    next.updated_at = Timestamp::now().millis().max(current.updated_at);
    notification::Entity::update(next.clone().into_active_model().reset_all())
        .exec_without_returning(txn)
        .await?;
    let view = NotificationView::from(next);
    ctx.emit(txn, EventType::NotificationUpdated, &view).await?;
    Ok(WriteReply::Notification(view))
}
