//! Money: a positive decimal with at most two places, kept as integer minor units in storage.

use rust_decimal::Decimal;
use std::fmt;

/// The largest amount an order may carry, in minor units (999 999 999.99).
const MAX_MINOR: i64 = 99_999_999_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Money(i64);

impl Money {
    /// Parses the textual form of a JSON number or string: plain decimal notation only.
    pub fn parse(text: &str) -> Result<Self, String> {
        const RULE: &str =
            "must be a positive amount with at most 2 decimal places, at most 999999999.99";
        let t = text.trim();
        if t.is_empty() || t != text {
            return Err(RULE.into());
        }
        let (int, frac) = t.split_once('.').unwrap_or((t, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty() || !digits(int) || !digits(frac) || (t.contains('.') && frac.is_empty()) {
            return Err(RULE.into());
        }
        if frac.len() > 2 {
            return Err("must have at most 2 decimal places".into());
        }
        // Longer integer parts are over the maximum anyway, and would overflow below.
        if int.trim_start_matches('0').len() > 9 {
            return Err("must be at most 999999999.99".into());
        }
        let value: Decimal = t.parse().map_err(|_| RULE.to_string())?;
        let minor = (value * Decimal::ONE_HUNDRED)
            .trunc()
            .to_string()
            .parse::<i64>()
            .map_err(|_| RULE.to_string())?;
        Self::from_minor(minor)
    }

    pub fn from_minor(minor: i64) -> Result<Self, String> {
        if minor <= 0 {
            return Err("must be greater than zero".into());
        }
        if minor > MAX_MINOR {
            return Err("must be at most 999999999.99".into());
        }
        Ok(Self(minor))
    }

    pub fn minor(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

/// An ISO 4217 currency code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Currency(iso_currency::Currency);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, String> {
        iso_currency::Currency::from_code(code)
            .map(Self)
            .ok_or_else(|| "must be an ISO 4217 currency code such as KES".to_string())
    }

    pub fn code(self) -> &'static str {
        self.0.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_decimals_with_up_to_two_places() {
        assert_eq!(Money::parse("1200").unwrap().to_string(), "1200.00");
        assert_eq!(Money::parse("1200.5").unwrap().to_string(), "1200.50");
        assert_eq!(Money::parse("0.01").unwrap().minor(), 1);
        assert_eq!(Money::parse("999999999.99").unwrap().minor(), MAX_MINOR);
        assert_eq!(Money::parse("007.10").unwrap().to_string(), "7.10");
    }

    #[test]
    fn rejects_everything_else() {
        for bad in [
            "0",
            "0.00",
            "-1",
            "1.001",
            "1e3",
            "1E3",
            "NaN",
            "inf",
            "",
            " 1",
            "1.",
            ".5",
            "+1",
            "1,000",
            "1000000000",
            "999999999.999",
            "12a",
        ] {
            assert!(Money::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn currency_codes_are_iso_4217() {
        assert_eq!(Currency::parse("KES").unwrap().code(), "KES");
        assert!(Currency::parse("kes").is_err());
        assert!(Currency::parse("XYZ").is_err());
    }
}
