//! A customer import: every row in the batch's transaction, all or nothing.

use super::{OpResult, WriteReply, refuse};
use crate::domain::customer::{CustomerCode, NewCustomer};
use crate::domain::event::EventType;
use crate::domain::time::Timestamp;
use crate::domain::views::CustomerView;
use crate::store::batch::{Batch, ROWS_PER_INSERT};
use crate::store::entities::customer;
use crate::store::error::StoreError;
use crate::store::reports;
use sea_orm::{ConnectionTrait, EntityTrait, IntoActiveModel};
use std::collections::HashSet;
use uuid::Uuid;

/// Inserts `rows` (already valid and unique among themselves, each with its row number in
/// the file) and emits one `customer.created` per row. A phone or code taken since the
/// request was checked (another create won the race) refuses the whole import with those
/// rows named, as the check before would have; this is decided before anything is written.
pub(super) async fn import(
    txn: &impl ConnectionTrait,
    rows: Vec<(usize, NewCustomer)>,
    batch: &mut Batch<'_>,
) -> OpResult {
    let phones: Vec<String> = rows
        .iter()
        .map(|(_, r)| r.phone.as_str().to_string())
        .collect();
    let codes: Vec<String> = rows
        .iter()
        .filter_map(|(_, r)| r.code.as_ref().map(|c| c.as_str().to_string()))
        .collect();
    let taken = reports::taken(txn, &phones, &codes).await?;
    let errors = reports::taken_rows(
        rows.iter().map(|(n, r)| {
            (
                *n,
                r.phone.as_str(),
                r.code.as_ref().map(CustomerCode::as_str),
            )
        }),
        &taken,
    );
    if !errors.is_empty() {
        return refuse(StoreError::Validation(reports::row_errors(errors)));
    }
    let rows: Vec<NewCustomer> = rows.into_iter().map(|(_, r)| r).collect();
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
    for chunk in models.chunks(ROWS_PER_INSERT) {
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
        batch.emit(EventType::CustomerCreated, CustomerView::from(model))?;
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
