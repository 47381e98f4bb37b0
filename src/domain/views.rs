//! The resources as clients see them: the JSON shapes of CONTRACT.md. REST bodies, live
//! event data and the stored replies of idempotent requests are all these, so that a
//! resource reads the same everywhere. The store builds them from its rows
//! (`store::records`); here they are plain data.

use super::notification::NotificationStatus;
use super::time::Timestamp;
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

#[derive(Debug, Clone, Serialize, PartialEq, ToSchema)]
pub struct NotificationSummary {
    pub id: Uuid,
    pub status: NotificationStatus,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub updated_at: Timestamp,
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
    pub status: super::order::OrderStatus,
    /// Always present; `null` when absent.
    #[schema(required = true)]
    pub notification: Option<NotificationSummary>,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub created_at: Timestamp,
    #[schema(value_type = String, format = DateTime, example = "2026-11-21T09:30:00.123Z")]
    pub updated_at: Timestamp,
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

/// One page of a keyset-paginated list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Always present; `null` when absent.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}
