//! Which event types a live client asked for (`?types=a,b`).

use crate::domain::event::EventType;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeFilter {
    /// One bit per `EventType::ALL` entry; all set when the client gave no list.
    bits: u8,
}

impl TypeFilter {
    pub const ALL: Self = Self {
        bits: (1 << EventType::ALL.len()) - 1,
    };

    /// Parses a comma-separated list of event types; every entry must be a known type.
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut bits = 0u8;
        for name in list.split(',').map(str::trim) {
            let kind = EventType::parse(name).ok_or_else(|| {
                let known: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                if name.is_empty() {
                    format!("has an empty entry; known types: {}", known.join(", "))
                } else {
                    format!(
                        "unknown event type {name:?}; known types: {}",
                        known.join(", ")
                    )
                }
            })?;
            bits |= Self::bit(kind);
        }
        Ok(Self { bits })
    }

    fn bit(kind: EventType) -> u8 {
        let index = EventType::ALL
            .iter()
            .position(|t| *t == kind)
            .unwrap_or_default();
        1 << index
    }

    pub fn matches(self, kind: EventType) -> bool {
        self.bits & Self::bit(kind) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_known_types_and_names_unknown_ones() {
        let f = TypeFilter::parse("order.created, notification.updated").unwrap();
        assert!(f.matches(EventType::OrderCreated));
        assert!(f.matches(EventType::NotificationUpdated));
        assert!(!f.matches(EventType::OrderUpdated));
        assert!(!f.matches(EventType::CustomerCreated));
        assert!(
            TypeFilter::parse("order.created,order.exploded")
                .unwrap_err()
                .contains("order.exploded")
        );
        assert!(TypeFilter::parse("order.created,").is_err());
        assert!(
            EventType::ALL
                .into_iter()
                .all(|t| TypeFilter::ALL.matches(t))
        );
    }
}
