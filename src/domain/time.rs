//! Timestamps: milliseconds since the Unix epoch in storage, RFC 3339 UTC with `Z` outside.
//! Calendar days are days in the business time zone (`business.timezone`).

use chrono::{DateTime, Days, NaiveDate, Offset, SecondsFormat, TimeZone, Utc};
use chrono_tz::Tz;
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

/// A query bound: `YYYY-MM-DD` (a whole day in the business time zone) or an RFC 3339
/// instant.
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
    pub fn start(self, tz: Tz) -> Timestamp {
        match self {
            Self::Day(d) => day_start(tz, d),
            Self::Instant(t) => t,
        }
    }

    /// The last millisecond this bound admits, as an (inclusive) end.
    pub fn end(self, tz: Tz) -> Timestamp {
        match self {
            Self::Day(d) => day_start(tz, next_day(d)).plus_millis(-1),
            Self::Instant(t) => t,
        }
    }
}

fn next_day(day: NaiveDate) -> NaiveDate {
    day.checked_add_days(Days::new(1)).unwrap_or(NaiveDate::MAX)
}

/// The first instant of `day` in `tz`. Where a DST change skips midnight (clocks jump from
/// 23:59 to 01:00, as in some American and Middle-Eastern zones), the day begins at the
/// first local minute that exists; where midnight happens twice, at the first of them.
pub fn day_start(tz: Tz, day: NaiveDate) -> Timestamp {
    let Some(midnight) = day.and_hms_opt(0, 0, 0) else {
        return Timestamp(i64::MIN);
    };
    // Gaps are at most a few hours long and begin on a whole minute.
    (0..=24 * 60)
        .filter_map(|m| midnight.checked_add_signed(chrono::TimeDelta::minutes(m)))
        .find_map(|local| tz.from_local_datetime(&local).earliest())
        .map(|t| Timestamp(t.timestamp_millis()))
        .unwrap_or_else(|| Timestamp(midnight.and_utc().timestamp_millis()))
}

/// The calendar day `at` falls on in `tz`.
pub fn local_day(tz: Tz, at: Timestamp) -> NaiveDate {
    at.to_datetime().with_timezone(&tz).date_naive()
}

/// The UTC offset (ms) of `tz` at `at`.
fn offset_at(tz: Tz, at: i64) -> i64 {
    let utc = Timestamp(at).to_datetime();
    i64::from(
        tz.offset_from_utc_datetime(&utc.naive_utc())
            .fix()
            .local_minus_utc(),
    ) * 1000
}

/// `tz`'s UTC offsets over `[from, to)`: `(since, offset_ms)` pairs, the first `since` being
/// `from`, each offset in force until the next pair's `since` (changes are looked for hour by
/// hour: no zone changes twice within an hour). A day number is then
/// `(t + offset(t)).div_euclid(DAY_MS)` for any instant `t` in the range, DST included:
/// what the stats queries group by, on every database.
pub fn offsets_between(tz: Tz, from: Timestamp, to: Timestamp) -> Vec<(i64, i64)> {
    const HOUR: i64 = 3_600_000;
    let (from, to) = (from.0, to.0);
    let mut segments = vec![(from, offset_at(tz, from))];
    let mut at = from;
    while at < to {
        let step = (at + HOUR).min(to);
        let current = segments.last().map_or(0, |s| s.1);
        if offset_at(tz, step) != current {
            // The change is in (at, step]: find its first millisecond.
            let (mut lo, mut hi) = (at, step);
            while hi - lo > 1 {
                let mid = lo + (hi - lo) / 2;
                if offset_at(tz, mid) == current {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            if hi < to {
                segments.push((hi, offset_at(tz, hi)));
            }
        }
        at = step;
    }
    segments
}

pub const DAY_MS: i64 = 86_400_000;

/// The calendar day of a day number (days since 1970-01-01).
pub fn day_of_number(n: i64) -> Option<NaiveDate> {
    NaiveDate::from_ymd_opt(1970, 1, 1)?.checked_add_signed(chrono::TimeDelta::try_days(n)?)
}

/// The day number (days since 1970-01-01) of a calendar day.
pub fn day_number(day: NaiveDate) -> i64 {
    NaiveDate::from_ymd_opt(1970, 1, 1).map_or(0, |epoch| (day - epoch).num_days())
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
        let utc = Tz::UTC;
        let d = DateBound::parse("2026-11-21").unwrap();
        assert_eq!(d.start(utc).to_rfc3339(), "2026-11-21T00:00:00.000Z");
        assert_eq!(d.end(utc).to_rfc3339(), "2026-11-21T23:59:59.999Z");
        let i = DateBound::parse("2026-11-21T12:00:00+03:00").unwrap();
        assert_eq!(i.start(utc).to_rfc3339(), "2026-11-21T09:00:00.000Z");
        assert!(DateBound::parse("2026-13-01").is_err());
        assert!(DateBound::parse("yesterday").is_err());
        assert!(DateBound::parse("2026-1-1").is_err());
    }

    #[test]
    fn days_are_local_days() {
        let nairobi: Tz = "Africa/Nairobi".parse().unwrap();
        let d = DateBound::parse("2026-11-21").unwrap();
        assert_eq!(d.start(nairobi).to_rfc3339(), "2026-11-20T21:00:00.000Z");
        assert_eq!(d.end(nairobi).to_rfc3339(), "2026-11-21T20:59:59.999Z");
        let at = DateBound::parse("2026-11-20T22:30:00Z")
            .unwrap()
            .start(nairobi);
        assert_eq!(local_day(nairobi, at).to_string(), "2026-11-21");
        // Berlin: 2026-10-25 has 25 hours, 2026-03-29 has 23.
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let day = |s: &str| DateBound::parse(s).unwrap();
        assert_eq!(
            day("2026-10-25").start(berlin).to_rfc3339(),
            "2026-10-24T22:00:00.000Z"
        );
        assert_eq!(
            day("2026-10-25").end(berlin).to_rfc3339(),
            "2026-10-25T22:59:59.999Z"
        );
        assert_eq!(
            day("2026-03-29").start(berlin).to_rfc3339(),
            "2026-03-28T23:00:00.000Z"
        );
        assert_eq!(
            day("2026-03-29").end(berlin).to_rfc3339(),
            "2026-03-29T21:59:59.999Z"
        );
        // Santiago skips midnight in September: the day begins at 01:00 local.
        let santiago: Tz = "America/Santiago".parse().unwrap();
        assert_eq!(
            day("2026-09-06").start(santiago).to_rfc3339(),
            "2026-09-06T04:00:00.000Z"
        );
    }

    #[test]
    fn offsets_follow_dst_changes() {
        let berlin: Tz = "Europe/Berlin".parse().unwrap();
        let from = DateBound::parse("2026-10-20").unwrap().start(berlin);
        let to = DateBound::parse("2026-10-30").unwrap().start(berlin);
        let segments = offsets_between(berlin, from, to);
        let change = DateBound::parse("2026-10-25T01:00:00Z")
            .unwrap()
            .start(berlin);
        assert_eq!(
            segments,
            vec![(from.millis(), 7_200_000), (change.millis(), 3_600_000)]
        );
        // Every instant's day number is its local day.
        for t in (from.millis()..to.millis()).step_by(997_000) {
            let offset = segments.iter().rev().find(|s| s.0 <= t).unwrap().1;
            let n = (t + offset).div_euclid(DAY_MS);
            assert_eq!(day_of_number(n), Some(local_day(berlin, Timestamp(t))));
        }
        assert_eq!(offsets_between(Tz::UTC, from, to), vec![(from.millis(), 0)]);
        let d = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        assert_eq!(day_of_number(day_number(d)), Some(d));
    }
}
