//! Orders: create (as a set, with the other creates of a run), update, delete.

use super::creates::{CreateRun, Kind, State};
use super::{OpError, OpResult, WriteReply, notifications, refuse};
use crate::domain::FieldErrors;
use crate::domain::event::EventType;
use crate::domain::notification::NotifyOn;
use crate::domain::order::{CustomerRef, OrderPatch, OrderStatus, generate_order_number};
use crate::domain::time::Timestamp;
use crate::store::batch::{Batch, ROWS_PER_INSERT};
use crate::store::entities::{customer, notification, order};
use crate::store::error::StoreError;
use crate::store::reads;
use crate::store::records::order_view;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, IntoActiveModel,
    QueryFilter,
};
use std::collections::{HashMap, HashSet};
use uuid::Uuid;

/// Draws of an order number before giving up.
const NUMBER_DRAWS: usize = 16;

/// Plans the run's new orders: one query finds the customers they name (by id or code);
/// a customer created earlier in the same run counts too. An unknown customer refuses
/// the order alone.
pub(super) async fn plan(txn: &impl ConnectionTrait, run: &mut CreateRun) -> Result<(), OpError> {
    let mut ids = Vec::new();
    let mut codes = Vec::new();
    for item in &run.items {
        if let (Kind::Order(o), State::Pending) = (&item.kind, &item.state) {
            match &o.customer {
                CustomerRef::Id(id) => ids.push(*id),
                CustomerRef::Code(code) => codes.push(code.as_str().to_string()),
            }
        }
    }
    if ids.is_empty() && codes.is_empty() {
        return Ok(());
    }
    let found = customer::Entity::find()
        .filter(
            Condition::any()
                .add(customer::Column::Id.is_in(ids))
                .add(customer::Column::Code.is_in(codes)),
        )
        .all(txn)
        .await?;
    let mut by_id: HashMap<Uuid, customer::Model> = found.into_iter().map(|c| (c.id, c)).collect();
    let mut by_code: HashMap<String, Uuid> =
        by_id.values().map(|c| (c.code.clone(), c.id)).collect();
    let now = Timestamp::now();
    for index in 0..run.items.len() {
        let item = &run.items[index];
        if let State::NewCustomer { row, .. } = &item.state {
            by_code.insert(row.code.clone(), row.id);
            by_id.insert(row.id, row.clone());
            continue;
        }
        let (Kind::Order(new), State::Pending) = (&item.kind, &item.state) else {
            continue;
        };
        let (customer, field) = match &new.customer {
            CustomerRef::Id(id) => (by_id.get(id), "customer_id"),
            CustomerRef::Code(code) => (
                by_code.get(code.as_str()).and_then(|id| by_id.get(id)),
                "customer_code",
            ),
        };
        let Some(customer) = customer.cloned() else {
            run.refuse(
                index,
                StoreError::Validation(FieldErrors::single(field, "no such customer")),
            );
            continue;
        };
        let row = order::Model {
            id: Uuid::now_v7(),
            order_number: generate_order_number(now),
            customer_id: customer.id,
            item: new.item.clone(),
            quantity: new.quantity,
            amount_minor: new.amount.minor(),
            currency: new.currency.code().to_string(),
            status: OrderStatus::Pending,
            created_at: now.millis(),
            updated_at: now.millis(),
        };
        run.items[index].state = State::NewOrder {
            row,
            customer,
            notification: None,
        };
    }
    Ok(())
}

/// Inserts the run's new orders with one multi-row INSERT (the unique index decides
/// whether a number is free: a taken one inserts nothing and is drawn again), then their
/// notifications with another.
pub(super) async fn insert(
    txn: &impl ConnectionTrait,
    run: &mut CreateRun,
    batch: &Batch<'_>,
) -> Result<(), OpError> {
    let orders: Vec<usize> = run
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.state, State::NewOrder { .. }))
        .map(|(index, _)| index)
        .collect();
    if orders.is_empty() {
        return Ok(());
    }
    // A customer of this run may have had its generated code drawn again on insert.
    let customers: HashMap<Uuid, customer::Model> = run
        .items
        .iter()
        .filter_map(|i| match &i.state {
            State::NewCustomer { row, .. } => Some((row.id, row.clone())),
            _ => None,
        })
        .collect();
    let mut todo = orders.clone();
    for _ in 0..NUMBER_DRAWS {
        if todo.is_empty() {
            break;
        }
        let mut inserted = HashSet::new();
        for chunk in todo.chunks(ROWS_PER_INSERT) {
            let rows = chunk
                .iter()
                .filter_map(|&index| match &run.items[index].state {
                    State::NewOrder { row, .. } => Some(row.clone().into_active_model()),
                    _ => None,
                });
            inserted.extend(
                order::Entity::insert_many(rows)
                    .on_conflict(
                        OnConflict::column(order::Column::OrderNumber)
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_with_returning_keys(txn)
                    .await?,
            );
        }
        todo.retain(|&index| match &run.items[index].state {
            State::NewOrder { row, .. } => !inserted.contains(&row.id),
            _ => false,
        });
        for &index in &todo {
            if let State::NewOrder { row, .. } = &mut run.items[index].state {
                row.order_number = generate_order_number(Timestamp::from_millis(row.created_at));
            }
        }
    }
    if !todo.is_empty() {
        return Err(OpError::Failed(StoreError::Internal(format!(
            "no free order number after {NUMBER_DRAWS} draws"
        ))));
    }
    let mut rows: Vec<notification::Model> = Vec::new();
    for &index in &orders {
        if let State::NewOrder {
            row,
            customer,
            notification,
        } = &mut run.items[index].state
        {
            if let Some(fresh) = customers.get(&customer.id) {
                *customer = fresh.clone();
            }
            *notification =
                notifications::new_row(batch.cfg, row, customer, NotifyOn::Created, false);
            rows.extend(notification.clone());
        }
    }
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let chunk = chunk
            .iter()
            .cloned()
            .map(IntoActiveModel::into_active_model);
        notification::Entity::insert_many(chunk)
            .exec_without_returning(txn)
            .await?;
    }
    Ok(())
}

pub(super) async fn update(
    txn: &impl ConnectionTrait,
    id: Uuid,
    patch: OrderPatch,
    batch: &mut Batch<'_>,
) -> OpResult {
    let Some(current) = order::Entity::find_by_id(id).one(txn).await? else {
        return refuse(StoreError::NotFound("order"));
    };
    let from = current.status;
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
        if let Err(e) = from.transition(to) {
            return refuse(StoreError::Conflict(e));
        }
        if to != from {
            next.status = to;
            notify = NotifyOn::for_status(to);
        }
    }
    if next != current && matches!(from, OrderStatus::Delivered | OrderStatus::Cancelled) {
        return refuse(StoreError::Conflict(format!(
            "a {from} order cannot be changed"
        )));
    }
    let customer = customer::Entity::find_by_id(current.customer_id)
        .one(txn)
        .await?
        .ok_or_else(|| StoreError::Internal("order without customer".into()))?;
    if next == current {
        let latest = reads::latest_notification(txn, id).await?;
        return Ok(WriteReply::Order(order_view(
            current,
            &customer,
            latest.as_ref(),
        )));
    }
    next.updated_at = Timestamp::now().millis().max(current.updated_at);
    order::Entity::update(next.clone().into_active_model().reset_all())
        .exec_without_returning(txn)
        .await?;
    let queued = match notify {
        Some(on) => notifications::queue(txn, &next, &customer, on, false, batch).await?,
        None => None,
    };
    let latest = match queued {
        Some(row) => Some(row),
        None => reads::latest_notification(txn, id).await?,
    };
    let view = order_view(next, &customer, latest.as_ref());
    batch.emit(EventType::OrderUpdated, &view)?;
    Ok(WriteReply::Order(view))
}

pub(super) async fn delete(
    txn: &impl ConnectionTrait,
    id: Uuid,
    batch: &mut Batch<'_>,
) -> OpResult {
    let deleted = order::Entity::delete_by_id(id).exec(txn).await?;
    if deleted.rows_affected == 0 {
        return refuse(StoreError::NotFound("order"));
    }
    batch.emit(EventType::OrderDeleted, serde_json::json!({ "id": id }))?;
    Ok(WriteReply::Deleted)
}
