//! Customers: create (as a set, with the other creates of a run), update, delete.

use super::creates::{CreateRun, Kind, State};
use super::{OpError, OpResult, WriteReply, refuse};
use crate::domain::customer::{CustomerCode, CustomerPatch};
use crate::domain::event::EventType;
use crate::domain::time::Timestamp;
use crate::domain::views::CustomerView;
use crate::store::batch::{Batch, ROWS_PER_INSERT};
use crate::store::entities::{customer, order};
use crate::store::error::StoreError;
use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, EntityTrait, IntoActiveModel,
    PaginatorTrait, QueryFilter,
};
use std::collections::HashSet;
use uuid::Uuid;

const PHONE_TAKEN: &str = "a customer with this phone number already exists";
const CODE_TAKEN: &str = "a customer with this code already exists";
/// Draws of a generated code before giving up (each collides with a taken one only by a
/// one-in-billions chance).
const CODE_DRAWS: usize = 16;

/// Plans the run's new customers: one query finds which of their codes and phones are
/// taken; the rest is decided in memory, in arrival order (so that of two creates with the
/// same phone in one batch, the first wins, as if they had come one by one).
pub(super) async fn plan(txn: &impl ConnectionTrait, run: &mut CreateRun) -> Result<(), OpError> {
    let mut codes = Vec::new();
    let mut phones = Vec::new();
    for item in &run.items {
        if let (Kind::Customer(c), State::Pending) = (&item.kind, &item.state) {
            phones.push(c.phone.as_str().to_string());
            if let Some(code) = &c.code {
                codes.push(code.as_str().to_string());
            }
        }
    }
    if phones.is_empty() {
        return Ok(());
    }
    let taken = customer::Entity::find()
        .filter(
            Condition::any()
                .add(customer::Column::Code.is_in(codes))
                .add(customer::Column::Phone.is_in(phones)),
        )
        .all(txn)
        .await?;
    let mut taken_codes: HashSet<String> = taken.iter().map(|c| c.code.clone()).collect();
    let mut taken_phones: HashSet<String> = taken.into_iter().map(|c| c.phone).collect();
    let now = Timestamp::now().millis();
    for index in 0..run.items.len() {
        let item = &run.items[index];
        let (Kind::Customer(new), State::Pending) = (&item.kind, &item.state) else {
            continue;
        };
        let phone = new.phone.as_str().to_string();
        if taken_phones.contains(&phone) {
            run.refuse(index, StoreError::Conflict(PHONE_TAKEN.into()));
            continue;
        }
        let (code, generated) = match &new.code {
            Some(code) if taken_codes.contains(code.as_str()) => {
                run.refuse(index, StoreError::Conflict(CODE_TAKEN.into()));
                continue;
            }
            Some(code) => (code.as_str().to_string(), false),
            None => (free_code(&taken_codes), true),
        };
        let row = customer::Model {
            id: Uuid::now_v7(),
            name: new.name.clone(),
            code: code.clone(),
            phone: phone.clone(),
            email: new.email.clone(),
            created_at: now,
            updated_at: now,
        };
        taken_codes.insert(code);
        taken_phones.insert(phone);
        run.items[index].state = State::NewCustomer { row, generated };
    }
    Ok(())
}

fn free_code(taken: &HashSet<String>) -> String {
    loop {
        let code = CustomerCode::generate().into_string();
        if !taken.contains(&code) {
            return code;
        }
    }
}

/// Inserts the run's new customers: one multi-row INSERT; a generated code that turns out
/// to be taken (the planning query only looked for the codes it was given) is drawn again.
pub(super) async fn insert(txn: &impl ConnectionTrait, run: &mut CreateRun) -> Result<(), OpError> {
    let mut todo: Vec<usize> = run
        .items
        .iter()
        .enumerate()
        .filter(|(_, i)| matches!(i.state, State::NewCustomer { .. }))
        .map(|(index, _)| index)
        .collect();
    for _ in 0..CODE_DRAWS {
        if todo.is_empty() {
            return Ok(());
        }
        let mut inserted = HashSet::new();
        for chunk in todo.chunks(ROWS_PER_INSERT) {
            let rows = chunk
                .iter()
                .filter_map(|&index| match &run.items[index].state {
                    State::NewCustomer { row, .. } => Some(row.clone().into_active_model()),
                    _ => None,
                });
            inserted.extend(
                customer::Entity::insert_many(rows)
                    .on_conflict(
                        OnConflict::column(customer::Column::Code)
                            .do_nothing()
                            .to_owned(),
                    )
                    .exec_with_returning_keys(txn)
                    .await?,
            );
        }
        todo.retain(|&index| match &run.items[index].state {
            State::NewCustomer { row, .. } => !inserted.contains(&row.id),
            _ => false,
        });
        for &index in &todo {
            let State::NewCustomer { row, generated } = &mut run.items[index].state else {
                continue;
            };
            if !*generated {
                // Checked when planned: only a writer outside duka could have taken it.
                return Err(OpError::Failed(StoreError::Conflict(CODE_TAKEN.into())));
            }
            row.code = CustomerCode::generate().into_string();
        }
    }
    if todo.is_empty() {
        Ok(())
    } else {
        Err(OpError::Failed(StoreError::Internal(format!(
            "no free customer code after {CODE_DRAWS} draws"
        ))))
    }
}

pub(super) async fn update(
    txn: &impl ConnectionTrait,
    id: Uuid,
    patch: CustomerPatch,
    batch: &mut Batch<'_>,
) -> OpResult {
    let Some(current) = customer::Entity::find_by_id(id).one(txn).await? else {
        return refuse(StoreError::NotFound("customer"));
    };
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
    // Decided before the UPDATE, so that a duplicate does not abort the transaction.
    if next.code != current.code || next.phone != current.phone {
        let clash = customer::Entity::find()
            .filter(customer::Column::Id.ne(id))
            .filter(
                Condition::any()
                    .add(customer::Column::Code.eq(next.code.as_str()))
                    .add(customer::Column::Phone.eq(next.phone.as_str())),
            )
            .one(txn)
            .await?;
        if let Some(other) = clash {
            let message = if other.phone == next.phone {
                PHONE_TAKEN
            } else {
                CODE_TAKEN
            };
            return refuse(StoreError::Conflict(message.into()));
        }
    }
    next.updated_at = Timestamp::now().millis().max(current.updated_at);
    customer::Entity::update(next.clone().into_active_model().reset_all())
        .exec_without_returning(txn)
        .await?;
    let view = CustomerView::from(next);
    batch.emit(EventType::CustomerUpdated, &view)?;
    Ok(WriteReply::Customer(view))
}

pub(super) async fn delete(
    txn: &impl ConnectionTrait,
    id: Uuid,
    batch: &mut Batch<'_>,
) -> OpResult {
    if customer::Entity::find_by_id(id).one(txn).await?.is_none() {
        return refuse(StoreError::NotFound("customer"));
    }
    let orders = order::Entity::find()
        .filter(order::Column::CustomerId.eq(id))
        .count(txn)
        .await?;
    if orders > 0 {
        return refuse(StoreError::Conflict(format!(
            "the customer has {orders} order(s); delete them first"
        )));
    }
    customer::Entity::delete_by_id(id).exec(txn).await?;
    batch.emit(EventType::CustomerDeleted, serde_json::json!({ "id": id }))?;
    Ok(WriteReply::Deleted)
}
