//! Events published to live subscribers; each has a gap-free `seq` assigned in commit order.

use super::time::Timestamp;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum EventType {
    #[serde(rename = "order.created")]
    OrderCreated,
    #[serde(rename = "order.updated")]
    OrderUpdated,
    #[serde(rename = "order.deleted")]
    OrderDeleted,
    #[serde(rename = "customer.created")]
    CustomerCreated,
    #[serde(rename = "customer.updated")]
    CustomerUpdated,
    #[serde(rename = "customer.deleted")]
    CustomerDeleted,
    #[serde(rename = "notification.updated")]
    NotificationUpdated,
}

impl EventType {
    pub const ALL: [Self; 7] = [
        Self::OrderCreated,
        Self::OrderUpdated,
        Self::OrderDeleted,
        Self::CustomerCreated,
        Self::CustomerUpdated,
        Self::CustomerDeleted,
        Self::NotificationUpdated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::OrderCreated => "order.created",
            Self::OrderUpdated => "order.updated",
            Self::OrderDeleted => "order.deleted",
            Self::CustomerCreated => "customer.created",
            Self::CustomerUpdated => "customer.updated",
            Self::CustomerDeleted => "customer.deleted",
            Self::NotificationUpdated => "notification.updated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// A committed event as subscribers see it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub seq: i64,
    pub at: Timestamp,
    pub data: serde_json::Value,
}
