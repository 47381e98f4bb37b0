//! Timestamps: milliseconds since the Unix epoch in storage, RFC 3339 UTC with `Z` outside.

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde::{Serialize, Serializer};

/// A point in time with millisecond precision (what every backend stores exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn now() -> Self {
        Self(Utc::now().timestamp_millis())
    }

    pub fn from_millis(ms: i64) -> Self {
        Self(ms)
    }

    pub fn millis(self) -> i64 {
        self.0
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn plus_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

/// A query bound: `YYYY-MM-DD` (a whole UTC day) or an RFC 3339 instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateBound {
    Day(NaiveDate),
    Instant(Timestamp),
}

impl DateBound {
    pub fn parse(input: &str) -> Result<Self, String> {
        if let Ok(day) = NaiveDate::parse_from_str(input, "%Y-%m-%d")
            && input.len() == 10
        {
            return Ok(Self::Day(day));
        }
        DateTime::parse_from_rfc3339(input)
            .map(|t| Self::Instant(Timestamp(t.with_timezone(&Utc).timestamp_millis())))
            .map_err(|_| "must be a date (YYYY-MM-DD) or an RFC 3339 instant".to_string())
    }

    /// The first millisecond this bound admits, as a start.
    pub fn start(self) -> Timestamp {
        match self {
            Self::Day(d) => Timestamp(day_start(d)),
            Self::Instant(t) => t,
        }
    }

    /// The last millisecond this bound admits, as an (inclusive) end.
    pub fn end(self) -> Timestamp {
        match self {
            Self::Day(d) => Timestamp(day_start(d) + 86_400_000 - 1),
            Self::Instant(t) => t,
        }
    }
}

fn day_start(day: NaiveDate) -> i64 {
    day.and_hms_opt(0, 0, 0)
        .map(|t| t.and_utc().timestamp_millis())
        .unwrap_or(i64::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millis_and_z() {
        assert_eq!(
            Timestamp::from_millis(1_795_253_400_123).to_rfc3339(),
            "2026-11-21T09:30:00.123Z"
        );
    }

    #[test]
    fn day_bounds_are_inclusive_whole_days() {
        let d = DateBound::parse("2026-11-21").unwrap();
        assert_eq!(d.start().to_rfc3339(), "2026-11-21T00:00:00.000Z");
        assert_eq!(d.end().to_rfc3339(), "2026-11-21T23:59:59.999Z");
        let i = DateBound::parse("2026-11-21T12:00:00+03:00").unwrap();
        assert_eq!(i.start().to_rfc3339(), "2026-11-21T09:00:00.000Z");
        assert!(DateBound::parse("2026-13-01").is_err());
        assert!(DateBound::parse("yesterday").is_err());
        assert!(DateBound::parse("2026-1-1").is_err());
    }
}
