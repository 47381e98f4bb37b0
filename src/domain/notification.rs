//! SMS notifications: statuses and message templates.

use super::order::OrderStatus;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Stored as its lowercase name in a text column (the entities' typed `status`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
    sea_orm::EnumIter,
    sea_orm::DeriveActiveEnum,
)]
#[serde(rename_all = "lowercase")]
#[sea_orm(rs_type = "String", db_type = "Text")]
pub enum NotificationStatus {
    #[sea_orm(string_value = "queued")]
    Queued,
    #[sea_orm(string_value = "sending")]
    Sending,
    #[sea_orm(string_value = "sent")]
    Sent,
    #[sea_orm(string_value = "delivered")]
    Delivered,
    #[sea_orm(string_value = "failed")]
    Failed,
}

impl NotificationStatus {
    pub const ALL: [Self; 5] = [
        Self::Queued,
        Self::Sending,
        Self::Sent,
        Self::Delivered,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sending => "sending",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| "must be one of queued, sending, sent, delivered, failed".to_string())
    }
}

impl NotificationStatus {
    /// The statuses a message in this status may move to. A message is claimed
    /// (`queued` -> `sending`), sent or given back for a retry (`sending` -> `sent` |
    /// `queued` | `failed`), and moved by the provider's delivery report (`sent` ->
    /// `delivered` | `failed`). `sending` -> `sending` is a claim taken over from a sender
    /// that is gone (an older sender epoch). `delivered` and `failed` are final.
    pub fn next(self) -> &'static [Self] {
        match self {
            Self::Queued => &[Self::Sending],
            Self::Sending => &[Self::Sending, Self::Sent, Self::Queued, Self::Failed],
            Self::Sent => &[Self::Delivered, Self::Failed],
            Self::Delivered | Self::Failed => &[],
        }
    }

    pub fn transition(self, to: Self) -> Result<(), String> {
        if self.next().contains(&to) {
            Ok(())
        } else {
            Err(format!("a {self} message cannot become {to}"))
        }
    }

    /// Final: nothing moves it any more.
    pub fn is_final(self) -> bool {
        self.next().is_empty()
    }
}

impl fmt::Display for NotificationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a message is about: the order's creation or one of its later statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyOn {
    Created,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl NotifyOn {
    pub fn for_status(status: OrderStatus) -> Option<Self> {
        match status {
            OrderStatus::Pending => None,
            OrderStatus::Confirmed => Some(Self::Confirmed),
            OrderStatus::Shipped => Some(Self::Shipped),
            OrderStatus::Delivered => Some(Self::Delivered),
            OrderStatus::Cancelled => Some(Self::Cancelled),
        }
    }
}

pub const PLACEHOLDERS: [&str; 7] = [
    "customer_name",
    "order_number",
    "item",
    "quantity",
    "amount",
    "currency",
    "status",
];

/// A message template with `{placeholder}`s, checked when it is loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(String);

impl Template {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in template {text:?}"))?;
            let name = &after[..close];
            if !PLACEHOLDERS.contains(&name) {
                return Err(format!(
                    "unknown placeholder {{{name}}} (known: {})",
                    PLACEHOLDERS.map(|p| format!("{{{p}}}")).join(", ")
                ));
            }
            rest = &after[close + 1..];
        }
        if text.trim().is_empty() {
            return Err("template must not be empty".into());
        }
        Ok(Self(text.to_string()))
    }

    /// Fills the placeholders in one pass, so a value that itself contains `{...}` (a
    /// customer named "{item}") is never expanded.
    pub fn render(&self, values: &BTreeMap<&str, String>) -> String {
        let mut out = String::with_capacity(self.0.len() + 64);
        let mut rest = self.0.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) => {
                    let name = &after[..close];
                    match values.get(name) {
                        Some(value) => out.push_str(value),
                        None => out.push_str(&rest[open..open + close + 2]),
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str(&rest[open..]);
                    rest = "";
                }
            }
        }
        out.push_str(rest);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_transitions_whole_matrix() {
        use NotificationStatus::*;
        let allowed = [
            (Queued, Sending),
            (Sending, Sending),
            (Sending, Sent),
            (Sending, Queued),
            (Sending, Failed),
            (Sent, Delivered),
            (Sent, Failed),
        ];
        for from in NotificationStatus::ALL {
            for to in NotificationStatus::ALL {
                let expect = allowed.contains(&(from, to));
                assert_eq!(from.transition(to).is_ok(), expect, "{from} -> {to}");
            }
        }
        assert!(Delivered.is_final() && Failed.is_final());
        assert!(!Queued.is_final() && !Sending.is_final() && !Sent.is_final());
    }

    #[test]
    fn templates_render_known_placeholders() {
        let t = Template::parse(
            "Hi {customer_name}, order {order_number}: {item} x{quantity}, {currency} {amount}",
        )
        .unwrap();
        let values = BTreeMap::from([
            ("customer_name", "Wanjiku".to_string()),
            ("order_number", "ORD-1".to_string()),
            ("item", "Laptop".to_string()),
            ("quantity", "2".to_string()),
            ("currency", "KES".to_string()),
            ("amount", "1200.00".to_string()),
        ]);
        assert_eq!(
            t.render(&values),
            "Hi Wanjiku, order ORD-1: Laptop x2, KES 1200.00"
        );
    }

    #[test]
    fn values_are_not_expanded_again() {
        let t = Template::parse("{customer_name}: {item}").unwrap();
        let values = BTreeMap::from([
            ("customer_name", "{item}".to_string()),
            ("item", "Laptop".to_string()),
        ]);
        assert_eq!(t.render(&values), "{item}: Laptop");
    }

    #[test]
    fn unknown_placeholders_are_refused() {
        assert!(Template::parse("Hello {name}").is_err());
        assert!(Template::parse("Hello {customer_name").is_err());
        assert!(Template::parse("  ").is_err());
    }
}
