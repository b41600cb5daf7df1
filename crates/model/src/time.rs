//! Timestamps: milliseconds since the Unix epoch, RFC 3339 on the wire.
//!
//! Every timestamp apitrail stores or prints has millisecond precision: that is what every
//! dialect prints, and storing exactly what is printed keeps cursors that embed a printed
//! timestamp (the audit dialect's `created_at|id`) exact. Finer input is truncated.

use std::fmt;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A point in time with millisecond precision, between years 0001 and 9999. The default is the
/// Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(i64);

/// Why a string is not an acceptable timestamp.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    /// Not RFC 3339, or lacking the offset.
    #[error(
        "must be an RFC 3339 date-time with an offset, e.g. 2024-05-01T12:00:00Z or 2024-05-01T14:00:00+02:00"
    )]
    Malformed,
    /// Parsed, but outside what apitrail stores.
    #[error("must lie between the years 0001 and 9999")]
    OutOfRange,
}

/// The earliest time ingest accepts for a record (`created_at`, `started_at`, `completed_at`):
/// 2000-01-01T00:00:00Z. Older times are almost always a unit or parsing mistake, and a store
/// must not be made to lay out storage for arbitrary centuries.
pub const INGEST_FLOOR: Timestamp = Timestamp(946_684_800_000);

/// How far ahead of the server's clock an ingested time may lie. A record dated far in the
/// future would sit on top of every newest-first list until that date.
pub const MAX_CLOCK_SKEW_MS: i64 = 5 * 60 * 1000;

/// Checks that an ingested time lies in `[INGEST_FLOOR, now + MAX_CLOCK_SKEW_MS]`.
pub fn ingest_window(t: Timestamp, now: Timestamp) -> Result<Timestamp, String> {
    if t < INGEST_FLOOR {
        Err(format!("must not be before {INGEST_FLOOR}"))
    } else if t > now.add_millis(MAX_CLOCK_SKEW_MS) {
        Err(format!(
            "must not be more than {} minutes ahead of the server's clock ({now})",
            MAX_CLOCK_SKEW_MS / 60_000
        ))
    } else {
        Ok(t)
    }
}

/// Milliseconds at 0001-01-01T00:00:00Z and just after 9999-12-31T23:59:59.999Z.
const MIN_MS: i64 = -62_135_596_800_000;
const MAX_MS: i64 = 253_402_300_799_999;

impl Timestamp {
    /// The current time, read from the system clock.
    pub fn now() -> Self {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Self(ms)
    }

    /// A timestamp from Unix milliseconds, if within the supported years.
    pub fn from_millis(ms: i64) -> Option<Self> {
        (MIN_MS..=MAX_MS).contains(&ms).then_some(Self(ms))
    }

    /// Unix milliseconds.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// This timestamp moved by `ms` milliseconds, clamped to the supported range.
    pub fn add_millis(self, ms: i64) -> Self {
        Self(self.0.saturating_add(ms).clamp(MIN_MS, MAX_MS))
    }

    /// Parses RFC 3339 with a mandatory offset (`Z` or `±hh:mm`); a naive time is refused.
    pub fn parse(s: &str) -> Result<Self, TimeError> {
        let dt = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| TimeError::Malformed)?;
        let ms = dt.unix_timestamp_nanos().div_euclid(1_000_000);
        let ms = i64::try_from(ms).map_err(|_| TimeError::OutOfRange)?;
        Self::from_millis(ms).ok_or(TimeError::OutOfRange)
    }

    /// Writes `YYYY-MM-DDTHH:MM:SS.mmmZ`.
    pub fn to_rfc3339(self) -> String {
        self.to_string()
    }
}

/// Converts days since 1970-01-01 into a proleptic Gregorian (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(86_400_000);
        let in_day = self.0.rem_euclid(86_400_000);
        let (y, mo, d) = civil_from_days(days);
        let (h, mi, s, ms) = (
            in_day / 3_600_000,
            in_day / 60_000 % 60,
            in_day / 1000 % 60,
            in_day % 1000,
        );
        write!(f, "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Timestamp({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_times_lie_between_the_floor_and_a_little_after_now() {
        let now = Timestamp::parse("2026-12-07T12:00:00Z").unwrap();
        let at = |s: &str| Timestamp::parse(s).unwrap();
        assert_eq!(INGEST_FLOOR.to_string(), "2000-01-01T00:00:00.000Z");
        for ok in [
            "2000-01-01T00:00:00Z",
            "2026-12-07T12:05:00Z",
            "2026-12-07T12:00:00Z",
            "2013-05-01T00:00:00Z",
        ] {
            assert_eq!(ingest_window(at(ok), now), Ok(at(ok)), "{ok}");
        }
        for bad in [
            "1999-12-31T23:59:59.999Z",
            "0001-01-01T00:00:00Z",
            "2026-12-07T12:05:00.001Z",
            "9999-12-31T00:00:00Z",
        ] {
            assert!(ingest_window(at(bad), now).is_err(), "{bad}");
        }
    }
    use proptest::prelude::*;

    #[test]
    fn parses_offsets_and_prints_utc_milliseconds() {
        let t = Timestamp::parse("2024-05-01T14:00:00.123456+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-05-01T12:00:00.123Z");
        assert_eq!(
            Timestamp::parse("1970-01-01T00:00:00Z").unwrap().millis(),
            0
        );
        assert_eq!(
            Timestamp::parse("1969-12-31T23:59:59.999Z")
                .unwrap()
                .to_rfc3339(),
            "1969-12-31T23:59:59.999Z"
        );
        assert_eq!(
            Timestamp::from_millis(MAX_MS).unwrap().to_rfc3339(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            Timestamp::from_millis(MIN_MS).unwrap().to_rfc3339(),
            "0001-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn refuses_naive_and_malformed_times() {
        for bad in [
            "2024-05-01T12:00:00",
            "2024-05-01",
            "yesterday",
            "",
            "2024-13-01T00:00:00Z",
        ] {
            assert_eq!(Timestamp::parse(bad), Err(TimeError::Malformed), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn printing_then_parsing_is_the_identity(ms in MIN_MS..=MAX_MS) {
            let t = Timestamp::from_millis(ms).unwrap();
            prop_assert_eq!(Timestamp::parse(&t.to_rfc3339()), Ok(t));
        }

        #[test]
        fn printing_agrees_with_the_time_crate(ms in MIN_MS..=MAX_MS) {
            let ours = Timestamp::from_millis(ms).unwrap().to_rfc3339();
            let dt = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
            let theirs = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                dt.year(), u8::from(dt.month()), dt.day(), dt.hour(), dt.minute(), dt.second(),
                dt.millisecond()
            );
            prop_assert_eq!(ours, theirs);
        }
    }
}
