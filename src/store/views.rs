//! What clients see: the JSON shapes of CONTRACT.md, built from rows.

use super::entities::{customer, notification, order};
use crate::domain::money::Money;
use crate::domain::notification::NotificationStatus;
use crate::domain::time::Timestamp;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct CustomerView {
    pub id: Uuid,
    pub name: String,
    #[schema(example = "CUST-7K3QXZ")]
    pub code: String,
    /// E.164.
    #[schema(example = "+254722000001")]
    pub phone: String,
    /// Always present; `null` when absent.
    #[schema(required = true)]
    pub email: Option<String>,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub updated_at: Timestamp,
}

impl From<customer::Model> for CustomerView {
    fn from(m: customer::Model) -> Self {
        Self {
            id: m.id,
            name: m.name,
            code: m.code,
            phone: m.phone,
            email: m.email,
            created_at: Timestamp::from_millis(m.created_at),
            updated_at: Timestamp::from_millis(m.updated_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct CustomerSummary {
    pub id: Uuid,
    pub name: String,
    #[schema(example = "CUST-7K3QXZ")]
    pub code: String,
    /// E.164.
    #[schema(example = "+254722000001")]
    pub phone: String,
}

impl From<&customer::Model> for CustomerSummary {
    fn from(m: &customer::Model) -> Self {
        Self {
            id: m.id,
            name: m.name.clone(),
            code: m.code.clone(),
            phone: m.phone.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct NotificationSummary {
    pub id: Uuid,
    pub status: NotificationStatus,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub updated_at: Timestamp,
}

impl From<&notification::Model> for NotificationSummary {
    fn from(m: &notification::Model) -> Self {
        Self {
            id: m.id,
            status: m.status,
            updated_at: Timestamp::from_millis(m.updated_at),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct OrderView {
    pub id: Uuid,
    #[schema(example = "ORD-20261121-7K3QX")]
    pub order_number: String,
    pub customer: CustomerSummary,
    pub item: String,
    pub quantity: i32,
    /// The order's total, exactly 2 decimals.
    #[schema(example = "1200.00", pattern = "^[0-9]+\\.[0-9]{2}$")]
    pub amount: String,
    /// ISO 4217.
    #[schema(example = "KES")]
    pub currency: String,
    pub status: crate::domain::order::OrderStatus,
    /// Always present; `null` when absent.
    #[schema(required = true)]
    pub notification: Option<NotificationSummary>,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub updated_at: Timestamp,
}

impl OrderView {
    pub fn new(
        m: order::Model,
        customer: &customer::Model,
        latest: Option<&notification::Model>,
    ) -> Self {
        Self {
            id: m.id,
            order_number: m.order_number,
            customer: customer.into(),
            item: m.item,
            quantity: m.quantity,
            amount: format_minor(m.amount_minor),
            currency: m.currency,
            status: m.status,
            notification: latest.map(NotificationSummary::from),
            created_at: Timestamp::from_millis(m.created_at),
            updated_at: Timestamp::from_millis(m.updated_at),
        }
    }
}

fn format_minor(minor: i64) -> String {
    match Money::from_minor(minor) {
        Ok(money) => money.to_string(),
        // Stored amounts were validated on the way in; keep an odd row readable anyway.
        Err(_) => format!("{}.{:02}", minor / 100, (minor % 100).abs()),
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct NotificationView {
    pub id: Uuid,
    pub order_id: Uuid,
    pub customer_id: Uuid,
    /// E.164.
    #[schema(example = "+254722000001")]
    pub phone: String,
    pub message: String,
    pub status: NotificationStatus,
    pub attempts: i32,
    /// Always present; `null` when absent.
    #[schema(required = true)]
    pub provider: Option<String>,
    /// Always present; `null` when absent.
    #[schema(required = true)]
    pub provider_message_id: Option<String>,
    /// Always present; `null` when absent.
    #[schema(required = true)]
    pub cost: Option<String>,
    /// Always present; `null` when absent.
    #[schema(required = true)]
    pub error: Option<String>,
    /// When a `queued` message waiting to be retried will be tried again; `null` otherwise.
    #[schema(required = true, value_type = Option<String>, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub next_attempt_at: Option<Timestamp>,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub updated_at: Timestamp,
}

impl From<notification::Model> for NotificationView {
    fn from(m: notification::Model) -> Self {
        // A fresh message is due at once; only one that has been tried waits for a retry.
        let retrying = m.status == NotificationStatus::Queued && m.attempts > 0;
        Self {
            id: m.id,
            order_id: m.order_id,
            customer_id: m.customer_id,
            phone: m.phone,
            message: m.message,
            status: m.status,
            attempts: m.attempts,
            provider: m.provider,
            provider_message_id: m.provider_message_id,
            cost: m.cost,
            error: m.error,
            next_attempt_at: m
                .next_attempt_at
                .filter(|_| retrying)
                .map(Timestamp::from_millis),
            created_at: Timestamp::from_millis(m.created_at),
            updated_at: Timestamp::from_millis(m.updated_at),
        }
    }
}

/// One page of a keyset-paginated list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Always present; `null` when absent.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}
