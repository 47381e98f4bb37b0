//! A customer import: every row in the batch's transaction, all or nothing.

use super::entities::customer;
use super::error::StoreError;
use super::reports;
use super::views::CustomerView;
use super::writes::{BatchCtx, WriteReply};
use crate::domain::customer::{CustomerCode, NewCustomer};
use crate::domain::event::EventType;
use crate::domain::time::Timestamp;
use sea_orm::{ConnectionTrait, EntityTrait, IntoActiveModel};
use std::collections::HashSet;
use uuid::Uuid;

/// Rows per INSERT: 7 values each, far below either backend's parameter limit.
const INSERT_CHUNK: usize = 1000;

/// Inserts `rows` (already valid and unique among themselves) and emits one
/// `customer.created` per row. A phone or code taken since the request was checked (another
/// create won the race) refuses the whole import with the rows named, as the pre-check
/// would have; a unique index that still objects refuses it as a conflict.
pub(super) async fn import_customers(
    txn: &impl ConnectionTrait,
    rows: Vec<NewCustomer>,
    ctx: &mut BatchCtx<'_>,
) -> Result<WriteReply, StoreError> {
    let phones: Vec<String> = rows.iter().map(|r| r.phone.as_str().to_string()).collect();
    let codes: Vec<String> = rows
        .iter()
        .filter_map(|r| r.code.as_ref().map(|c| c.as_str().to_string()))
        .collect();
    let taken = reports::taken(txn, &phones, &codes).await?;
    let errors = reports::taken_rows(
        rows.iter().enumerate().map(|(i, r)| {
            (
                i + 1,
                r.phone.as_str(),
                r.code.as_ref().map(CustomerCode::as_str),
            )
        }),
        &taken,
    );
    if !errors.is_empty() {
        return Err(StoreError::Validation(reports::row_errors(errors)));
    }
    let codes = assign_codes(txn, &rows, codes).await?;
    let now = Timestamp::now().millis();
    let models: Vec<customer::Model> = rows
        .into_iter()
        .zip(codes)
        .map(|(row, code)| customer::Model {
            id: Uuid::now_v7(),
            name: row.name,
            code,
            phone: row.phone.into_string(),
            email: row.email,
            created_at: now,
            updated_at: now,
        })
        .collect();
    for chunk in models.chunks(INSERT_CHUNK) {
        customer::Entity::insert_many(
            chunk
                .iter()
                .cloned()
                .map(IntoActiveModel::into_active_model),
        )
        .exec_without_returning(txn)
        .await?;
    }
    for model in models {
        ctx.emit(txn, EventType::CustomerCreated, CustomerView::from(model))
            .await?;
    }
    Ok(WriteReply::Done)
}

/// Each row's code: its own, or a generated one that neither the file nor the table has.
async fn assign_codes(
    txn: &impl ConnectionTrait,
    rows: &[NewCustomer],
    given: Vec<String>,
) -> Result<Vec<String>, StoreError> {
    let mut used: HashSet<String> = given.into_iter().collect();
    let mut codes: Vec<Option<String>> = rows
        .iter()
        .map(|r| r.code.as_ref().map(|c| c.as_str().to_string()))
        .collect();
    let mut missing: Vec<usize> = (0..rows.len()).filter(|&i| codes[i].is_none()).collect();
    while !missing.is_empty() {
        let mut drawn = Vec::with_capacity(missing.len());
        for &i in &missing {
            let code = loop {
                let candidate = CustomerCode::generate().into_string();
                if used.insert(candidate.clone()) {
                    break candidate;
                }
            };
            drawn.push(code.clone());
            codes[i] = Some(code);
        }
        let taken = reports::taken(txn, &[], &drawn).await?.codes;
        missing.retain(|&i| codes[i].as_ref().is_some_and(|c| taken.contains(c)));
    }
    Ok(codes.into_iter().flatten().collect())
}
