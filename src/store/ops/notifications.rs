//! SMS notifications: queue (with an order's change, or again on request), claim many for
//! sending, record many send outcomes, and apply the provider's delivery reports. Every
//! change of status follows `NotificationStatus::transition` and publishes
//! `notification.updated`.

use super::{
    Claim, ClaimedSms, DeliveryOutcome, OpResult, SendOutcome, SendRecord, SenderTerm, WriteReply,
    refuse,
};
use crate::domain::event::EventType;
use crate::domain::money::Money;
use crate::domain::notification::{NotificationStatus, NotifyOn};
use crate::domain::time::Timestamp;
use crate::domain::views::NotificationView;
use crate::store::batch::{Batch, QueuedSms, WriteConfig};
use crate::store::entities::{customer, notification, order};
use crate::store::error::StoreError;
use crate::store::records::order_view;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, IntoActiveModel,
    QueryFilter, QuerySelect, Statement, Value,
};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A `queued` notification row for `on`, when SMS is enabled and (unless it is a `resend`,
/// which "send again" asks for whatever `sms.notify_on` says) the event is in
/// `sms.notify_on`. Nothing is written.
pub(super) fn new_row(
    cfg: &WriteConfig,
    order: &order::Model,
    customer: &customer::Model,
    on: NotifyOn,
    resend: bool,
) -> Option<notification::Model> {
    let provider = cfg.sms_provider.as_ref()?;
    if !resend && !cfg.notify_on.contains(&on) {
        return None;
    }
    let template = cfg.templates.get(&on)?;
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
        ("status", order.status.as_str().to_string()),
    ]);
    let now = Timestamp::now().millis();
    Some(notification::Model {
        id: Uuid::now_v7(),
        order_id: order.id,
        customer_id: customer.id,
        phone: customer.phone.clone(),
        message: template.render(&values),
        status: NotificationStatus::Queued,
        attempts: 0,
        provider: Some(provider.clone()),
        provider_message_id: None,
        cost: None,
        error: None,
        next_attempt_at: Some(now),
        lease_until: None,
        resend,
        created_at: now,
        updated_at: now,
        sender_epoch: None,
    })
}

/// Writes a `queued` notification (see `new_row`) and hands it to the dispatcher once the
/// batch commits.
pub(super) async fn queue(
    txn: &impl ConnectionTrait,
    order: &order::Model,
    customer: &customer::Model,
    on: NotifyOn,
    resend: bool,
    batch: &mut Batch<'_>,
) -> Result<Option<notification::Model>, StoreError> {
    let Some(row) = new_row(batch.cfg, order, customer, on, resend) else {
        return Ok(None);
    };
    notification::Entity::insert(row.clone().into_active_model())
        .exec_without_returning(txn)
        .await?;
    batch.queued(QueuedSms {
        id: row.id,
        phone: row.phone.clone(),
        not_before: row.created_at,
    });
    Ok(Some(row))
}

/// How long after one "send again" of an order the next is refused (each SMS costs money;
/// a double click or an impatient second press must not send two).
pub const RESEND_COOLDOWN_MS: i64 = 60_000;

/// The "send again" button: a fresh message about the order's current status, at most one
/// per order within `RESEND_COOLDOWN_MS` (the message sent on creation does not count).
pub(super) async fn queue_again(
    txn: &impl ConnectionTrait,
    order_id: Uuid,
    batch: &mut Batch<'_>,
) -> OpResult {
    if batch.cfg.sms_provider.is_none() {
        return refuse(StoreError::Conflict(
            "SMS is disabled (sms.enabled = false)".into(),
        ));
    }
    let Some(order) = order::Entity::find_by_id(order_id).one(txn).await? else {
        return refuse(StoreError::NotFound("order"));
    };
    let now = Timestamp::now().millis();
    let last_resend: Option<Option<i64>> = notification::Entity::find()
        .select_only()
        .column_as(notification::Column::CreatedAt.max(), "last")
        .filter(notification::Column::OrderId.eq(order_id))
        .filter(notification::Column::Resend.eq(true))
        .into_tuple()
        .one(txn)
        .await?;
    if let Some(last) = last_resend.flatten()
        && now - last < RESEND_COOLDOWN_MS
    {
        // Whole seconds, rounded up, at least one.
        let wait_ms = u64::try_from(RESEND_COOLDOWN_MS - (now - last)).unwrap_or(0);
        return refuse(StoreError::TooSoon {
            detail: "this order's SMS was sent again less than a minute ago".into(),
            retry_after_secs: std::cmp::max(wait_ms.div_ceil(1000), 1),
        });
    }
    let customer = customer::Entity::find_by_id(order.customer_id)
        .one(txn)
        .await?
        .ok_or_else(|| StoreError::Internal("order without customer".into()))?;
    let on = NotifyOn::for_status(order.status).unwrap_or(NotifyOn::Created);
    let row = queue(txn, &order, &customer, on, true, batch)
        .await?
        .ok_or_else(|| StoreError::Internal("no template for notification".into()))?;
    let view = order_view(order, &customer, Some(&row));
    batch.emit(EventType::OrderUpdated, &view)?;
    let notification = NotificationView::from(row);
    batch.emit(EventType::NotificationUpdated, &notification)?;
    Ok(WriteReply::Notification(notification))
}

/// The database's clock in epoch milliseconds, as an SQL expression. The sender lease is
/// granted and checked on this one clock, whichever machine asks. SQLite runs on the
/// machine of its only process: its clock is the local one.
pub fn db_now_ms(backend: DbBackend) -> &'static str {
    match backend {
        DbBackend::Postgres => "(extract(epoch from clock_timestamp()) * 1000)::bigint",
        _ => "CAST(ROUND((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER)",
    }
}

/// Bound parameters of a raw statement, numbered so that one value can be used twice.
pub struct Params {
    backend: DbBackend,
    pub values: Vec<Value>,
}

impl Params {
    pub fn new(backend: DbBackend) -> Self {
        Self {
            backend,
            values: Vec::new(),
        }
    }

    /// Binds `v`; answers its placeholder.
    pub fn push(&mut self, v: impl Into<Value>) -> String {
        self.values.push(v.into());
        let n = self.values.len();
        match self.backend {
            DbBackend::Postgres => format!("${n}"),
            _ => format!("?{n}"),
        }
    }

    pub fn statement(self, sql: String) -> Statement {
        Statement::from_sql_and_values(self.backend, sql, self.values)
    }
}

/// Every column of `notifications`, for RETURNING.
const COLUMNS: &str = "id, order_id, customer_id, phone, message, status, attempts, provider, \
    provider_message_id, cost, error, next_attempt_at, lease_until, resend, created_at, \
    updated_at, sender_epoch";

/// Whether `sender` holds the sender lease with its epoch now, on the database's clock. On
/// PostgreSQL the lease row is then share-locked until the batch commits, so that no other
/// instance can take the lease over between this check and the claim's commit.
async fn holds_lease(txn: &impl ConnectionTrait, sender: &SenderTerm) -> Result<bool, StoreError> {
    let backend = txn.get_database_backend();
    let mut p = Params::new(backend);
    let sql = format!(
        "SELECT epoch FROM sms_sender WHERE id = 1 AND holder = {holder} AND boot = {boot} \
         AND epoch = {epoch} AND expires_at > {now}{lock}",
        holder = p.push(sender.holder.clone()),
        boot = p.push(sender.boot.clone()),
        epoch = p.push(sender.epoch),
        now = db_now_ms(backend),
        lock = if backend == DbBackend::Postgres {
            " FOR SHARE"
        } else {
            ""
        },
    );
    Ok(txn.query_one_raw(p.statement(sql)).await?.is_some())
}

/// Claims the messages among `ids` that are there to take, with one statement for any
/// number of them, while `sender` holds the sender lease (checked first, on the database's
/// clock; otherwise the reply is `fenced` and nothing changes).
///
/// There to take: `queued`, or `sending` under an epoch up to the sender's own: an older
/// epoch's sender is dead or fenced off, and a claim of this epoch that the sender asks
/// for again is one it let go of (it never asks for a message it is still sending). Such a
/// message already tried `max_attempts` times is failed (its senders kept stopping
/// mid-send, so the provider may have it); the others become `sending` under the sender's
/// epoch with one more attempt, which makes (epoch, attempts) the claim's token.
///
/// On PostgreSQL the rows are picked `FOR UPDATE SKIP LOCKED`: a row another transaction
/// holds is left out of this claim rather than waited for, and nothing fails.
pub(super) async fn claim(
    txn: &impl ConnectionTrait,
    mut ids: Vec<Uuid>,
    sender: &SenderTerm,
    batch: &mut Batch<'_>,
) -> OpResult {
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(WriteReply::Claimed(Claim::default()));
    }
    if !holds_lease(txn, sender).await? {
        return Ok(WriteReply::Claimed(Claim {
            fenced: true,
            taken: Vec::new(),
        }));
    }
    let backend = txn.get_database_backend();
    let mut p = Params::new(backend);
    let epoch = p.push(sender.epoch);
    let max = p.push(batch.cfg.max_attempts);
    let gave_up = p.push(format!(
        "gave up after {} attempts whose sender stopped before the outcome was known",
        batch.cfg.max_attempts
    ));
    let now = p.push(Timestamp::now().millis());
    let id_list = ids
        .iter()
        .map(|id| p.push(*id))
        .collect::<Vec<_>>()
        .join(", ");
    let takeable = format!(
        "(status = 'queued' OR (status = 'sending' AND \
         (sender_epoch IS NULL OR sender_epoch <= {epoch})))"
    );
    let exhausted = format!("(status = 'sending' AND attempts >= {max})");
    let set = format!(
        "status = CASE WHEN {exhausted} THEN 'failed' ELSE 'sending' END, \
         error = CASE WHEN {exhausted} THEN {gave_up} ELSE error END, \
         attempts = CASE WHEN {exhausted} THEN attempts ELSE attempts + 1 END, \
         sender_epoch = CASE WHEN {exhausted} THEN sender_epoch ELSE {epoch} END, \
         lease_until = NULL, updated_at = {now}"
    );
    let sql = match backend {
        DbBackend::Postgres => format!(
            "WITH picked AS (SELECT id AS picked_id FROM notifications \
               WHERE id IN ({id_list}) AND {takeable} FOR UPDATE SKIP LOCKED) \
             UPDATE notifications SET {set} FROM picked \
             WHERE id = picked_id AND {takeable} RETURNING {COLUMNS}"
        ),
        // One process, and the batch holds the write lock: nobody else can claim.
        _ => format!(
            "UPDATE notifications SET {set} WHERE id IN ({id_list}) AND {takeable} \
             RETURNING {COLUMNS}"
        ),
    };
    let rows = notification::Entity::find()
        .from_raw_sql(p.statement(sql))
        .all(txn)
        .await?;
    let (mut gave_up, mut claimed): (Vec<_>, Vec<_>) = rows
        .into_iter()
        .partition(|n| n.status == NotificationStatus::Failed);
    gave_up.sort_by_key(|n| n.id);
    claimed.sort_by_key(|n| n.id);
    for row in gave_up {
        batch.emit(EventType::NotificationUpdated, NotificationView::from(row))?;
    }
    let mut taken = Vec::with_capacity(claimed.len());
    for row in claimed {
        taken.push(ClaimedSms {
            id: row.id,
            phone: row.phone.clone(),
            message: row.message.clone(),
            attempts: row.attempts,
            epoch: sender.epoch,
        });
        batch.emit(EventType::NotificationUpdated, NotificationView::from(row))?;
    }
    Ok(WriteReply::Claimed(Claim {
        fenced: false,
        taken,
    }))
}

/// Records send outcomes with one statement for any number of them. A record applies only
/// while its message is still `sending` under the same claim (its token: the sender epoch
/// and the attempt): a sender that stalled while its claim was taken over cannot overwrite
/// the newer claim. Answers the ids whose outcome was stored.
pub(super) async fn record_sends(
    txn: &impl ConnectionTrait,
    mut records: Vec<SendRecord>,
    batch: &mut Batch<'_>,
) -> OpResult {
    records.sort_by_key(|r| r.id);
    records.dedup_by_key(|r| r.id);
    if records.is_empty() {
        return Ok(WriteReply::Recorded(Vec::new()));
    }
    let backend = txn.get_database_backend();
    let mut p = Params::new(backend);
    let now = p.push(Timestamp::now().millis());
    let mut rows = Vec::with_capacity(records.len());
    for r in &records {
        let (status, message_id, cost, error, next_at) = match &r.outcome {
            SendOutcome::Sent {
                provider_message_id,
                cost,
            } => (
                NotificationStatus::Sent,
                Some(provider_message_id.clone()),
                cost.clone(),
                None,
                None,
            ),
            SendOutcome::Retry {
                error,
                next_attempt_at,
            } => (
                NotificationStatus::Queued,
                None,
                None,
                Some(error.clone()),
                Some(next_attempt_at.millis()),
            ),
            SendOutcome::Failed { error } => (
                NotificationStatus::Failed,
                None,
                None,
                Some(error.clone()),
                None,
            ),
        };
        debug_assert!(NotificationStatus::Sending.transition(status).is_ok());
        let cells = [
            p.push(r.id),
            p.push(r.epoch),
            p.push(r.attempts),
            p.push(status.as_str()),
            p.push(message_id),
            p.push(cost),
            p.push(error),
            p.push(next_at),
        ];
        rows.push(format!("({})", cells.join(", ")));
    }
    // A retry due before the outcome could be stored is due when it is stored: a row never
    // says it waits for a time before its last change.
    // The same statement on both databases: SQLite (3.33+) and PostgreSQL both take
    // UPDATE ... FROM a VALUES list; the CTE names its columns apart from the table's, so
    // that RETURNING's unqualified names are the table's.
    let sql = format!(
        "WITH v (v_id, v_epoch, v_attempts, v_status, v_message_id, v_cost, v_error, v_next) \
           AS (VALUES {rows}) \
         UPDATE notifications SET status = v_status, \
           provider_message_id = COALESCE(v_message_id, provider_message_id), \
           cost = CASE WHEN v_status = 'sent' THEN v_cost ELSE cost END, \
           error = v_error, lease_until = NULL, \
           next_attempt_at = CASE WHEN v_next < {now} THEN {now} ELSE v_next END, \
           updated_at = CASE WHEN updated_at > {now} THEN updated_at ELSE {now} END \
         FROM v WHERE id = v_id AND status = 'sending' AND sender_epoch = v_epoch \
           AND attempts = v_attempts \
         RETURNING {COLUMNS}",
        rows = rows.join(", ")
    );
    let mut updated = notification::Entity::find()
        .from_raw_sql(p.statement(sql))
        .all(txn)
        .await?;
    updated.sort_by_key(|n| n.id);
    let ids = updated.iter().map(|n| n.id).collect();
    for row in updated {
        batch.emit(EventType::NotificationUpdated, NotificationView::from(row))?;
    }
    Ok(WriteReply::Recorded(ids))
}

pub(super) async fn delivery_report(
    txn: &impl ConnectionTrait,
    provider_message_id: &str,
    outcome: DeliveryOutcome,
    batch: &mut Batch<'_>,
) -> OpResult {
    let Some(current) = notification::Entity::find()
        .filter(notification::Column::ProviderMessageId.eq(provider_message_id))
        .lock_exclusive()
        .one(txn)
        .await?
    else {
        return refuse(StoreError::NotFound("notification"));
    };
    // Reports can arrive late, twice or out of order: only a `sent` message moves, so a
    // delivered message stays delivered.
    if current.status != NotificationStatus::Sent {
        return Ok(WriteReply::Notification(current.into()));
    }
    let mut next = current.clone();
    match outcome {
        DeliveryOutcome::Delivered => {
            next.status = NotificationStatus::Delivered;
        }
        DeliveryOutcome::Failed { reason } => {
            next.status = NotificationStatus::Failed;
            next.error = Some(reason);
        }
    }
    next.updated_at = std::cmp::max(Timestamp::now().millis(), current.updated_at);
    notification::Entity::update(next.clone().into_active_model().reset_all())
        .exec_without_returning(txn)
        .await?;
    let view = NotificationView::from(next);
    batch.emit(EventType::NotificationUpdated, &view)?;
    Ok(WriteReply::Notification(view))
}
