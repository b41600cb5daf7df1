//! Shared by the HTTP suites: a reference clock (civil dates <-> Unix milliseconds, RFC 3339
//! printing and parsing) written independently of the server, and deterministic randomness
//! (no dependency; the seed makes every failure reproducible). Its own test lives in
//! `logs.rs`.

#![allow(dead_code)]

// ---------------------------------------------------------------------------------------------
// A reference clock: civil dates <-> Unix milliseconds, written independently of the server.
// ---------------------------------------------------------------------------------------------

pub const DAY_MS: i64 = 86_400_000;

pub fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `ms` written as RFC 3339 in the local time of `offset_min`, with `extra` digits appended to
/// the milliseconds (sub-millisecond precision the server must truncate), and `Z` or the
/// numeric offset.
pub fn rfc3339(ms: i64, offset_min: i64, extra: &str, zulu: bool) -> String {
    assert!(!zulu || offset_min == 0);
    let local = ms + offset_min * 60_000;
    let (y, mo, d) = civil_from_days(local.div_euclid(DAY_MS));
    let t = local.rem_euclid(DAY_MS);
    let (h, mi, s, milli) = (t / 3_600_000, t / 60_000 % 60, t / 1000 % 60, t % 1000);
    let off = if zulu {
        "Z".to_owned()
    } else {
        let sign = if offset_min < 0 { '-' } else { '+' };
        format!(
            "{sign}{:02}:{:02}",
            offset_min.abs() / 60,
            offset_min.abs() % 60
        )
    };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}{extra}{off}")
}

/// How every timestamp must be printed: UTC, milliseconds, `Z`.
pub fn utc(ms: i64) -> String {
    rfc3339(ms, 0, "", true)
}

/// Whether `s` is exactly `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn is_utc_millis(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T',
            13 | 16 => *c == b':',
            19 => *c == b'.',
            23 => *c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// `ms` with a numeric UTC offset of `minutes` (`+00:00` for 0), milliseconds shown.
pub fn with_offset(ms: i64, minutes: i64) -> String {
    rfc3339(ms, minutes, "", false)
}

/// Parses the server's `YYYY-MM-DDTHH:MM:SS.mmmZ`, insisting on exactly that shape.
pub fn parse_utc(s: &str) -> i64 {
    let shape_ok = is_utc_millis(s);
    assert!(
        shape_ok,
        "{s:?} is not RFC 3339 UTC with milliseconds and Z"
    );
    let n = |r: std::ops::Range<usize>| s[r].parse::<i64>().unwrap();
    let days = days_from_civil(n(0..4), n(5..7), n(8..10));
    days * DAY_MS + n(11..13) * 3_600_000 + n(14..16) * 60_000 + n(17..19) * 1000 + n(20..23)
}

pub fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(d.as_millis()).unwrap()
}

/// 2024-03-10T00:00:00Z.
pub const BASE_MS: i64 = 19_792 * DAY_MS;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness (no dependency; the seed makes every failure reproducible).
// ---------------------------------------------------------------------------------------------

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len() as u64) as usize]
    }

    /// A random (not time-ordered) UUID, so id order is unrelated to insertion order.
    pub fn uuid(&mut self) -> String {
        let v = (u128::from(self.next()) << 64) | u128::from(self.next());
        uuid::Uuid::from_u128(v).to_string()
    }
}
