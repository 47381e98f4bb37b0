//! Orders: status machine, item and quantity rules.

use super::money::{Currency, Money};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

pub const ITEM_MAX: usize = 200;
pub const QUANTITY_MAX: i64 = 1_000_000;

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
pub enum OrderStatus {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "confirmed")]
    Confirmed,
    #[sea_orm(string_value = "shipped")]
    Shipped,
    #[sea_orm(string_value = "delivered")]
    Delivered,
    #[sea_orm(string_value = "cancelled")]
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [Self; 5] = [
        Self::Pending,
        Self::Confirmed,
        Self::Shipped,
        Self::Delivered,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Confirmed => "confirmed",
            Self::Shipped => "shipped",
            Self::Delivered => "delivered",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                "must be one of pending, confirmed, shipped, delivered, cancelled".to_string()
            })
    }

    /// The statuses an order may move to from this one.
    pub fn next(self) -> &'static [Self] {
        match self {
            Self::Pending => &[Self::Confirmed, Self::Cancelled],
            Self::Confirmed => &[Self::Shipped, Self::Cancelled],
            Self::Shipped => &[Self::Delivered, Self::Cancelled],
            Self::Delivered | Self::Cancelled => &[],
        }
    }

    /// Checks a change of status; staying in the same status is not a change.
    pub fn transition(self, to: Self) -> Result<(), String> {
        if self == to || self.next().contains(&to) {
            Ok(())
        } else {
            Err(format!("an order cannot move from {self} to {to}"))
        }
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn parse_quantity(q: i64) -> Result<i32, String> {
    if (1..=QUANTITY_MAX).contains(&q) {
        Ok(q as i32)
    } else {
        Err(format!("must be an integer from 1 to {QUANTITY_MAX}"))
    }
}

/// Who the order is for: exactly one of id or code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CustomerRef {
    Id(Uuid),
    Code(String),
}

#[derive(Debug, Clone)]
pub struct NewOrder {
    pub customer: CustomerRef,
    pub item: String,
    pub quantity: i32,
    pub amount: Money,
    pub currency: Currency,
}

#[derive(Debug, Clone, Default)]
pub struct OrderPatch {
    pub item: Option<String>,
    pub quantity: Option<i32>,
    pub amount: Option<Money>,
    pub status: Option<OrderStatus>,
}

impl OrderPatch {
    pub fn is_empty(&self) -> bool {
        self.item.is_none()
            && self.quantity.is_none()
            && self.amount.is_none()
            && self.status.is_none()
    }
}

/// `ORD-YYYYMMDD-XXXXXX`: the UTC day and six random characters.
pub fn generate_order_number(now: super::time::Timestamp) -> String {
    format!(
        "ORD-{}-{}",
        now.to_datetime().format("%Y%m%d"),
        super::random_code(6)
    )
}

#[cfg(test)]
mod tests {
    use super::OrderStatus::*;
    use super::*;

    #[test]
    fn forward_transitions_and_cancel_before_delivery() {
        assert!(Pending.transition(Confirmed).is_ok());
        assert!(Confirmed.transition(Shipped).is_ok());
        assert!(Shipped.transition(Delivered).is_ok());
        for from in [Pending, Confirmed, Shipped] {
            assert!(from.transition(Cancelled).is_ok());
        }
    }

    #[test]
    fn everything_else_is_refused() {
        assert!(Pending.transition(Shipped).is_err());
        assert!(Pending.transition(Delivered).is_err());
        assert!(Confirmed.transition(Pending).is_err());
        assert!(Delivered.transition(Cancelled).is_err());
        assert!(Cancelled.transition(Pending).is_err());
        assert!(Delivered.transition(Shipped).is_err());
    }

    #[test]
    fn the_whole_transition_matrix() {
        let allowed = [
            (Pending, Confirmed),
            (Confirmed, Shipped),
            (Shipped, Delivered),
            (Pending, Cancelled),
            (Confirmed, Cancelled),
            (Shipped, Cancelled),
        ];
        for from in OrderStatus::ALL {
            for to in OrderStatus::ALL {
                let expected = from == to || allowed.contains(&(from, to));
                assert_eq!(from.transition(to).is_ok(), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn statuses_parse_exactly() {
        for st in OrderStatus::ALL {
            assert_eq!(OrderStatus::parse(st.as_str()), Ok(st));
        }
        for bad in ["PENDING", " pending", "", "canceled"] {
            assert!(OrderStatus::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn order_numbers_match_the_contract_pattern() {
        let n = generate_order_number(crate::domain::time::Timestamp::from_millis(
            1_795_253_400_123,
        ));
        assert!(n.starts_with("ORD-20261121-"), "{n}");
        let rest = &n[4..];
        assert!((4..=24).contains(&rest.len()));
        assert!(
            rest.bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_uppercase() || b == b'-')
        );
    }

    #[test]
    fn quantity_bounds() {
        assert!(parse_quantity(0).is_err());
        assert!(parse_quantity(1_000_001).is_err());
        assert_eq!(parse_quantity(1_000_000).unwrap(), 1_000_000);
    }
}
