//! SMS notifications: queue (with an order's change, or again on request), claim many for
//! sending, record many send outcomes, and apply the provider's delivery reports. Every
//! change of status follows `NotificationStatus::transition` and publishes
//! `notification.updated`.

use super::{ClaimedSms, DeliveryOutcome, OpResult, SendOutcome, SendRecord, WriteReply, refuse};
use crate::domain::event::EventType;
use crate::domain::money::Money;
use crate::domain::notification::{NotificationStatus, NotifyOn};
use crate::domain::order::OrderStatus;
use crate::domain::time::Timestamp;
use crate::store::batch::{Batch, QueuedSms, WriteConfig};
use crate::store::entities::{customer, notification, order};
use crate::store::error::StoreError;
use crate::store::views::{NotificationView, OrderView};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DbBackend, EntityTrait,
    IntoActiveModel, QueryFilter, QuerySelect, Statement, Value,
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
        ("status", order.status.clone()),
    ]);
    let now = Timestamp::now().millis();
    Some(notification::Model {
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
        resend,
        created_at: now,
        updated_at: now,
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
    let status = OrderStatus::parse(&order.status).map_err(StoreError::Internal)?;
    let on = NotifyOn::for_status(status).unwrap_or(NotifyOn::Created);
    let row = queue(txn, &order, &customer, on, true, batch)
        .await?
        .ok_or_else(|| StoreError::Internal("no template for notification".into()))?;
    let view = OrderView::new(order, &customer, Some(&row));
    batch.emit(EventType::OrderUpdated, &view)?;
    let notification = NotificationView::from(row);
    batch.emit(EventType::NotificationUpdated, &notification)?;
    Ok(WriteReply::Notification(notification))
}

/// Claims the messages among `ids` that are there to take, with two statements for any
/// number of them: a `sending` message whose lease ran out `max_attempts` times is failed
/// (its senders kept dying mid-send, so the provider may have it); the rest of the
/// `queued` ones and the lapsed `sending` ones become `sending` until `lease_until`.
/// One conditional UPDATE decides: with several senders, each message goes to one.
pub(super) async fn claim(
    txn: &impl ConnectionTrait,
    mut ids: Vec<Uuid>,
    lease_until: Timestamp,
    batch: &mut Batch<'_>,
) -> OpResult {
    use notification::Column as C;
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(WriteReply::Claimed(Vec::new()));
    }
    let now = Timestamp::now().millis();
    let lapsed = || {
        Condition::all()
            .add(C::Status.eq(NotificationStatus::Sending.as_str()))
            .add(C::LeaseUntil.lt(now))
    };
    let mut gave_up = notification::Entity::update_many()
        .col_expr(C::Status, Expr::value(NotificationStatus::Failed.as_str()))
        .col_expr(
            C::Error,
            Expr::value(format!(
                "gave up after {} attempts whose sender stopped before the outcome was known",
                batch.cfg.max_attempts
            )),
        )
        .col_expr(C::LeaseUntil, Expr::value(Option::<i64>::None))
        .col_expr(C::UpdatedAt, Expr::value(now))
        .filter(C::Id.is_in(ids.clone()))
        .filter(lapsed())
        .filter(C::Attempts.gte(batch.cfg.max_attempts))
        .exec_with_returning(txn)
        .await?;
    let mut claimed = notification::Entity::update_many()
        .col_expr(C::Status, Expr::value(NotificationStatus::Sending.as_str()))
        .col_expr(C::Attempts, Expr::col(C::Attempts).add(1))
        .col_expr(C::LeaseUntil, Expr::value(lease_until.millis()))
        .col_expr(C::UpdatedAt, Expr::value(now))
        .filter(C::Id.is_in(ids))
        .filter(
            Condition::any()
                .add(C::Status.eq(NotificationStatus::Queued.as_str()))
                .add(lapsed()),
        )
        .exec_with_returning(txn)
        .await?;
    gave_up.sort_by_key(|n| n.id);
    claimed.sort_by_key(|n| n.id);
    for row in &gave_up {
        batch.emit(
            EventType::NotificationUpdated,
            NotificationView::from(row.clone()),
        )?;
    }
    let mut taken = Vec::with_capacity(claimed.len());
    for row in claimed {
        taken.push(ClaimedSms {
            id: row.id,
            phone: row.phone.clone(),
            message: row.message.clone(),
            attempts: row.attempts,
            lease_until,
        });
        batch.emit(EventType::NotificationUpdated, NotificationView::from(row))?;
    }
    Ok(WriteReply::Claimed(taken))
}

/// Records send outcomes with one statement for any number of them. A record applies only
/// while its message is still `sending` under the same claim (`lease_until` is the claim's
/// token): a sender that stalled past its lease cannot overwrite a newer claim.
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
    let now = Timestamp::now().millis();
    let mut values: Vec<Value> = Vec::with_capacity(records.len() * 7 + 1);
    let mut rows = Vec::with_capacity(records.len());
    let mut p = 0;
    let mut param = |values: &mut Vec<Value>, v: Value| {
        values.push(v);
        p += 1;
        match backend {
            DbBackend::Postgres => format!("${p}"),
            // Numbered, so that one value can be used twice.
            _ => format!("?{p}"),
        }
    };
    let now_param = param(&mut values, now.into());
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
            param(&mut values, r.id.into()),
            param(&mut values, r.lease_until.millis().into()),
            param(&mut values, status.as_str().into()),
            param(&mut values, message_id.into()),
            param(&mut values, cost.into()),
            param(&mut values, error.into()),
            param(&mut values, next_at.into()),
        ];
        rows.push(format!("({})", cells.join(", ")));
    }
    // The same statement on both databases: SQLite (3.33+) and PostgreSQL both take
    // UPDATE ... FROM a VALUES list; the CTE names its columns apart from the table's, so
    // that RETURNING's unqualified names are the table's.
    let sql = format!(
        "WITH v (v_id, v_lease, v_status, v_message_id, v_cost, v_error, v_next) AS (VALUES {rows}) \
         UPDATE notifications SET status = v_status, \
           provider_message_id = COALESCE(v_message_id, provider_message_id), \
           cost = CASE WHEN v_status = 'sent' THEN v_cost ELSE cost END, \
           error = v_error, next_attempt_at = v_next, lease_until = NULL, \
           updated_at = CASE WHEN updated_at > {now_param} THEN updated_at ELSE {now_param} END \
         FROM v WHERE id = v_id AND status = 'sending' AND lease_until = v_lease \
         RETURNING id, order_id, customer_id, phone, message, status, attempts, provider, \
           provider_message_id, cost, error, next_attempt_at, lease_until, resend, created_at, \
           updated_at",
        rows = rows.join(", ")
    );
    let mut updated = notification::Entity::find()
        .from_raw_sql(Statement::from_sql_and_values(backend, sql, values))
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
    next.updated_at = std::cmp::max(Timestamp::now().millis(), current.updated_at);
    notification::Entity::update(next.clone().into_active_model().reset_all())
        .exec_without_returning(txn)
        .await?;
    let view = NotificationView::from(next);
    batch.emit(EventType::NotificationUpdated, &view)?;
    Ok(WriteReply::Notification(view))
}
