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

/// Who made a change: a principal through the API, a subsystem of duka, or a provider's
/// report. Stored with each event; events written before actors were recorded read back
/// as the system actor `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Actor {
    User { subject: String, name: String },
    System { name: String },
    Provider { name: String },
}

impl Actor {
    pub fn user(subject: &str, name: &str) -> Self {
        Self::User {
            subject: subject.to_string(),
            name: name.to_string(),
        }
    }

    /// The SMS dispatcher.
    pub fn sms() -> Self {
        Self::System { name: "sms".into() }
    }

    /// Africa's Talking, through its delivery reports.
    pub fn africastalking() -> Self {
        Self::Provider {
            name: "africastalking".into(),
        }
    }

    /// Sign-in and sign-out (which make no events).
    pub fn auth() -> Self {
        Self::System {
            name: "auth".into(),
        }
    }

    /// An event from before actors were recorded.
    pub fn unknown() -> Self {
        Self::System {
            name: "unknown".into(),
        }
    }

    /// As stored: (type, subject, name).
    pub fn columns(&self) -> (&'static str, Option<&str>, &str) {
        match self {
            Self::User { subject, name } => ("user", Some(subject), name),
            Self::System { name } => ("system", None, name),
            Self::Provider { name } => ("provider", None, name),
        }
    }

    /// From the stored columns; anything incomplete or unknown reads as `unknown`.
    pub fn from_columns(kind: Option<&str>, subject: Option<&str>, name: Option<&str>) -> Self {
        match (kind, subject, name) {
            (Some("user"), Some(subject), Some(name)) => Self::user(subject, name),
            (Some("system"), _, Some(name)) => Self::System { name: name.into() },
            (Some("provider"), _, Some(name)) => Self::Provider { name: name.into() },
            _ => Self::unknown(),
        }
    }
}

/// A committed event as subscribers see it.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    pub seq: i64,
    pub at: Timestamp,
    pub actor: Actor,
    pub data: serde_json::Value,
}

impl Event {
    /// The order this event is about (kept with the event, so that an order's history is
    /// found by index): its own id for `order.*`, its `order_id` for a notification.
    pub fn order_id(&self) -> Option<&str> {
        let field = match self.kind {
            EventType::OrderCreated | EventType::OrderUpdated | EventType::OrderDeleted => "id",
            EventType::NotificationUpdated => "order_id",
            EventType::CustomerCreated
            | EventType::CustomerUpdated
            | EventType::CustomerDeleted => return None,
        };
        self.data.get(field).and_then(|v| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actors_round_trip_through_their_columns() {
        for actor in [
            Actor::user("auth0|42", "Wanjiku"),
            Actor::sms(),
            Actor::africastalking(),
        ] {
            let (kind, subject, name) = actor.columns();
            assert_eq!(Actor::from_columns(Some(kind), subject, Some(name)), actor);
        }
        assert_eq!(Actor::from_columns(None, None, None), Actor::unknown());
        assert_eq!(
            serde_json::to_value(Actor::user("s", "n")).unwrap(),
            serde_json::json!({"type": "user", "subject": "s", "name": "n"})
        );
        assert_eq!(
            serde_json::to_value(Actor::africastalking()).unwrap(),
            serde_json::json!({"type": "provider", "name": "africastalking"})
        );
    }

    #[test]
    fn events_name_their_order() {
        let event = |kind, data| Event {
            kind,
            seq: 1,
            at: Timestamp::from_millis(0),
            actor: Actor::sms(),
            data,
        };
        let data = serde_json::json!({"id": "o1", "order_id": "o2"});
        assert_eq!(
            event(EventType::OrderUpdated, data.clone()).order_id(),
            Some("o1")
        );
        assert_eq!(
            event(EventType::NotificationUpdated, data.clone()).order_id(),
            Some("o2")
        );
        assert_eq!(event(EventType::CustomerCreated, data).order_id(), None);
    }
}
