//! Rows into the resources clients see (`domain::views`).

use super::entities::{customer, notification, order};
use crate::domain::money::Money;
use crate::domain::notification::NotificationStatus;
use crate::domain::time::Timestamp;
use crate::domain::views::{
    CustomerSummary, CustomerView, NotificationSummary, NotificationView, OrderView,
};

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

impl From<&notification::Model> for NotificationSummary {
    fn from(m: &notification::Model) -> Self {
        Self {
            id: m.id,
            status: m.status,
            updated_at: Timestamp::from_millis(m.updated_at),
        }
    }
}

/// An order as clients see it, with its customer and its latest message, if any.
pub fn order_view(
    m: order::Model,
    customer: &customer::Model,
    latest: Option<&notification::Model>,
) -> OrderView {
    order_view_of(m, customer.into(), latest.map(NotificationSummary::from))
}

/// The same, from the parts of the customer and the message that the view shows.
pub fn order_view_of(
    m: order::Model,
    customer: CustomerSummary,
    notification: Option<NotificationSummary>,
) -> OrderView {
    OrderView {
        id: m.id,
        order_number: m.order_number,
        customer,
        item: m.item,
        quantity: m.quantity,
        amount: format_minor(m.amount_minor),
        currency: m.currency,
        status: m.status,
        notification,
        created_at: Timestamp::from_millis(m.created_at),
        updated_at: Timestamp::from_millis(m.updated_at),
    }
}

fn format_minor(minor: i64) -> String {
    match Money::from_minor(minor) {
        Ok(money) => money.to_string(),
        // Stored amounts were validated on the way in; keep an odd row readable anyway.
        Err(_) => format!("{}.{:02}", minor / 100, (minor % 100).abs()),
    }
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
