//! Queries: lists are keyset-paginated on the UUID v7 id, newest first.

use super::batch::QueuedSms;
use super::entities::{customer, event, notification, order};
use super::error::StoreError;
use crate::domain::event::{Actor, Event, EventType};
use crate::domain::notification::NotificationStatus;
use crate::domain::order::OrderStatus;
use crate::domain::time::Timestamp;
use crate::domain::views::{
    CustomerSummary, CustomerView, NotificationSummary, NotificationView, OrderView, Page,
};
use crate::store::records::order_view_of;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sea_orm::sea_query::{
    Expr, ExprTrait, Func, LikeExpr, Order, Query, QueryStatementBuilder, SimpleExpr,
};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, FromQueryResult, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, Select, Statement,
};
use uuid::Uuid;

pub const DEFAULT_LIMIT: u64 = 20;
pub const MAX_LIMIT: u64 = 100;

/// Which page: at most `limit` items older than `after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u64,
    pub after: Option<Uuid>,
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            limit: DEFAULT_LIMIT,
            after: None,
        }
    }
}

/// The opaque `next_cursor` for a page that ended at `id`.
pub fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

pub fn decode_cursor(cursor: &str) -> Option<Uuid> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    Uuid::from_slice(&bytes).ok()
}

/// `%text%` for a case-insensitive LIKE, with `%`, `_` and `\` taken literally.
fn contains_pattern(text: &str) -> String {
    let mut out = String::from("%");
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

fn ilike(column: impl sea_orm::sea_query::IntoColumnRef, pattern: &str) -> SimpleExpr {
    Func::lower(Expr::col(column)).like(LikeExpr::new(pattern).escape('\\'))
}

fn after(page: PageRequest, id_column: impl ColumnTrait) -> Condition {
    let mut c = Condition::all();
    if let Some(after) = page.after {
        c = c.add(id_column.lt(after));
    }
    c
}

fn into_page<T, M>(
    mut rows: Vec<M>,
    page: PageRequest,
    id: impl Fn(&M) -> Uuid,
    view: impl Fn(Vec<M>) -> Vec<T>,
) -> Page<T> {
    let more = rows.len() as u64 > page.limit;
    rows.truncate(page.limit as usize);
    let next_cursor = if more {
        rows.last().map(|m| encode_cursor(id(m)))
    } else {
        None
    };
    Page {
        items: view(rows),
        next_cursor,
    }
}

pub async fn get_customer(db: &impl ConnectionTrait, id: Uuid) -> Result<CustomerView, StoreError> {
    customer::Entity::find_by_id(id)
        .one(db)
        .await?
        .map(CustomerView::from)
        .ok_or(StoreError::NotFound("customer"))
}

pub async fn list_customers(
    db: &impl ConnectionTrait,
    q: Option<&str>,
    page: PageRequest,
) -> Result<Page<CustomerView>, StoreError> {
    let mut cond = after(page, customer::Column::Id);
    if let Some(q) = q {
        let pattern = contains_pattern(q);
        cond = cond.add(
            Condition::any()
                .add(ilike(customer::Column::Name, &pattern))
                .add(ilike(customer::Column::Code, &pattern))
                .add(ilike(customer::Column::Phone, &pattern))
                .add(ilike(customer::Column::Email, &pattern)),
        );
    }
    let rows = customer::Entity::find()
        .filter(cond)
        .order_by_desc(customer::Column::Id)
        .limit(page.limit + 1)
        .all(db)
        .await?;
    Ok(into_page(
        rows,
        page,
        |m| m.id,
        |rows| rows.into_iter().map(CustomerView::from).collect(),
    ))
}

#[derive(Debug, Clone, Default)]
pub struct OrderFilter {
    pub customer_id: Option<Uuid>,
    pub status: Option<OrderStatus>,
    pub q: Option<String>,
    /// Inclusive bounds on `created_at`.
    pub start: Option<Timestamp>,
    pub end: Option<Timestamp>,
}

pub async fn list_orders(
    db: &impl ConnectionTrait,
    filter: &OrderFilter,
    page: PageRequest,
) -> Result<Page<OrderView>, StoreError> {
    let mut cond = after(page, order::Column::Id);
    if let Some(id) = filter.customer_id {
        cond = cond.add(order::Column::CustomerId.eq(id));
    }
    if let Some(status) = filter.status {
        cond = cond.add(order::Column::Status.eq(status));
    }
    if let Some(start) = filter.start {
        cond = cond.add(order::Column::CreatedAt.gte(start.millis()));
    }
    if let Some(end) = filter.end {
        cond = cond.add(order::Column::CreatedAt.lte(end.millis()));
    }
    if let Some(q) = &filter.q {
        let pattern = contains_pattern(q);
        // Matching customers are looked up once (a semi-join): filtering the joined
        // customer's columns row by row is slower on PostgreSQL.
        let customers = Query::select()
            .column((customer::Entity, customer::Column::Id))
            .from(customer::Entity)
            .cond_where(
                Condition::any()
                    .add(ilike((customer::Entity, customer::Column::Name), &pattern))
                    .add(ilike((customer::Entity, customer::Column::Code), &pattern)),
            )
            .to_owned();
        cond = cond.add(
            Condition::any()
                .add(ilike((order::Entity, order::Column::Item), &pattern))
                .add(ilike((order::Entity, order::Column::OrderNumber), &pattern))
                .add(order::Column::CustomerId.in_subquery(customers)),
        );
    }
    let rows = with_customer_and_latest()
        .filter(cond)
        .order_by_desc(order::Column::Id)
        .limit(page.limit + 1)
        .into_model::<OrderRow>()
        .all(db)
        .await?;
    Ok(into_page(
        rows,
        page,
        |r| r.order.id,
        |rows| rows.into_iter().map(OrderRow::into_view).collect(),
    ))
}

/// An order with what its view shows of its customer and of its latest message.
#[derive(Debug, FromQueryResult)]
struct OrderRow {
    #[sea_orm(nested)]
    order: order::Model,
    customer_name: String,
    customer_code: String,
    customer_phone: String,
    notification_id: Option<Uuid>,
    notification_status: Option<NotificationStatus>,
    notification_updated_at: Option<i64>,
}

impl OrderRow {
    fn into_view(self) -> OrderView {
        let customer = CustomerSummary {
            id: self.order.customer_id,
            name: self.customer_name,
            code: self.customer_code,
            phone: self.customer_phone,
        };
        let notification = match (
            self.notification_id,
            self.notification_status,
            self.notification_updated_at,
        ) {
            (Some(id), Some(status), Some(updated_at)) => Some(NotificationSummary {
                id,
                status,
                updated_at: Timestamp::from_millis(updated_at),
            }),
            _ => None,
        };
        order_view_of(self.order, customer, notification)
    }
}

/// Orders joined with their customers and latest messages: a page of views is one
/// statement, one round trip. The latest message is the one with the highest id (UUID v7),
/// found through `ix_notifications_order`.
fn with_customer_and_latest() -> Select<order::Entity> {
    const LATEST: &str = "latest";
    let latest_id = Query::select()
        .column((LATEST, notification::Column::Id))
        .from_as(notification::Entity, LATEST)
        .and_where(
            Expr::col((LATEST, notification::Column::OrderId))
                .equals((order::Entity, order::Column::Id)),
        )
        .order_by((LATEST, notification::Column::Id), Order::Desc)
        .limit(1)
        .to_owned();
    let mut select = order::Entity::find();
    QueryTrait::query(&mut select)
        .inner_join(
            customer::Entity,
            Expr::col((customer::Entity, customer::Column::Id))
                .equals((order::Entity, order::Column::CustomerId)),
        )
        .left_join(
            notification::Entity,
            Expr::col((notification::Entity, notification::Column::Id)).eq(Expr::SubQuery(
                None,
                Box::new(latest_id.into_sub_query_statement()),
            )),
        )
        .expr_as(
            Expr::col((customer::Entity, customer::Column::Name)),
            "customer_name",
        )
        .expr_as(
            Expr::col((customer::Entity, customer::Column::Code)),
            "customer_code",
        )
        .expr_as(
            Expr::col((customer::Entity, customer::Column::Phone)),
            "customer_phone",
        )
        .expr_as(
            Expr::col((notification::Entity, notification::Column::Id)),
            "notification_id",
        )
        .expr_as(
            Expr::col((notification::Entity, notification::Column::Status)),
            "notification_status",
        )
        .expr_as(
            Expr::col((notification::Entity, notification::Column::UpdatedAt)),
            "notification_updated_at",
        );
    select
}

pub async fn get_order(db: &impl ConnectionTrait, id: Uuid) -> Result<OrderView, StoreError> {
    with_customer_and_latest()
        .filter(order::Column::Id.eq(id))
        .into_model::<OrderRow>()
        .one(db)
        .await?
        .map(OrderRow::into_view)
        .ok_or(StoreError::NotFound("order"))
}

pub async fn latest_notification(
    db: &impl ConnectionTrait,
    order_id: Uuid,
) -> Result<Option<notification::Model>, StoreError> {
    Ok(notification::Entity::find()
        .filter(notification::Column::OrderId.eq(order_id))
        .order_by_desc(notification::Column::Id)
        .one(db)
        .await?)
}

#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    pub order_id: Option<Uuid>,
    pub status: Option<NotificationStatus>,
}

pub async fn list_notifications(
    db: &impl ConnectionTrait,
    filter: &NotificationFilter,
    page: PageRequest,
) -> Result<Page<NotificationView>, StoreError> {
    let mut cond = after(page, notification::Column::Id);
    if let Some(id) = filter.order_id {
        cond = cond.add(notification::Column::OrderId.eq(id));
    }
    if let Some(status) = filter.status {
        cond = cond.add(notification::Column::Status.eq(status));
    }
    let rows = notification::Entity::find()
        .filter(cond)
        .order_by_desc(notification::Column::Id)
        .limit(page.limit + 1)
        .all(db)
        .await?;
    Ok(into_page(
        rows,
        page,
        |m| m.id,
        |rows| rows.into_iter().map(NotificationView::from).collect(),
    ))
}

/// Messages for the SMS sender: every `queued` message due by `horizon` and every
/// `sending` one (the sender leaves out those it is sending itself; the others' senders
/// are dead or fenced off, see `ops::notifications::claim`). Oldest first, at most `limit`.
pub async fn due_notifications(
    db: &impl ConnectionTrait,
    now: Timestamp,
    horizon: Timestamp,
    limit: u64,
) -> Result<Vec<QueuedSms>, StoreError> {
    use notification::Column as C;
    let cond = Condition::any()
        .add(
            Condition::all()
                .add(C::Status.eq(NotificationStatus::Queued))
                .add(C::NextAttemptAt.lte(horizon.millis())),
        )
        .add(C::Status.eq(NotificationStatus::Sending));
    let rows = notification::Entity::find()
        .filter(cond)
        .order_by_asc(C::Id)
        .limit(limit)
        .all(db)
        .await?;
    Ok(rows
        .into_iter()
        .map(|n| QueuedSms {
            id: n.id,
            not_before: if n.status == NotificationStatus::Queued {
                n.next_attempt_at.unwrap_or(now.millis())
            } else {
                now.millis()
            },
            phone: n.phone,
        })
        .collect())
}

/// The last `seq` ever assigned (kept in `event_counter`, so it survives pruning).
pub async fn latest_seq(db: &impl ConnectionTrait) -> Result<i64, StoreError> {
    let backend = db.get_database_backend();
    let row = db
        .query_one_raw(Statement::from_string(
            backend,
            "SELECT last_seq FROM event_counter WHERE id = 1",
        ))
        .await?
        .ok_or_else(|| StoreError::Internal("event_counter row is missing".into()))?;
    Ok(row.try_get::<i64>("", "last_seq")?)
}

/// At most `limit` events with `after < seq <= upto`, in `seq` order.
pub async fn events_after(
    db: &impl ConnectionTrait,
    after: i64,
    upto: i64,
    limit: u64,
) -> Result<Vec<Event>, StoreError> {
    event::Entity::find()
        .filter(event::Column::Seq.gt(after))
        .filter(event::Column::Seq.lte(upto))
        .order_by_asc(event::Column::Seq)
        .limit(limit)
        .all(db)
        .await?
        .into_iter()
        .map(event_of)
        .collect()
}

/// Every retained event about an order, oldest first (one range of `ix_events_order_id_seq`).
pub async fn order_history(db: &impl ConnectionTrait, id: Uuid) -> Result<Vec<Event>, StoreError> {
    event::Entity::find()
        .filter(event::Column::OrderId.eq(id.to_string()))
        .order_by_asc(event::Column::Seq)
        .all(db)
        .await?
        .into_iter()
        .map(event_of)
        .collect()
}

fn event_of(row: event::Model) -> Result<Event, StoreError> {
    let kind = EventType::parse(&row.kind).ok_or_else(|| {
        StoreError::Internal(format!("event {} has unknown kind {:?}", row.seq, row.kind))
    })?;
    let data = serde_json::from_str(&row.data)
        .map_err(|e| StoreError::Internal(format!("event {} has malformed data: {e}", row.seq)))?;
    Ok(Event {
        kind,
        seq: row.seq,
        at: Timestamp::from_millis(row.at),
        actor: Actor::from_columns(
            row.actor_type.as_deref(),
            row.actor_subject.as_deref(),
            row.actor_name.as_deref(),
        ),
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = Uuid::now_v7();
        assert_eq!(decode_cursor(&encode_cursor(id)), Some(id));
        assert_eq!(decode_cursor("not-a-cursor!"), None);
        assert_eq!(decode_cursor("AAAA"), None);
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(contains_pattern("50%_Off\\"), "%50\\%\\_off\\\\%");
    }
}
