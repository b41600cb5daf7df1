//! Identifiers: org ids chosen by the operator, time-ordered record ids, request ids.

use std::fmt;
use std::sync::Mutex;

use uuid::Uuid;

use crate::time::Timestamp;

/// An org's id: 1–64 characters of `[A-Za-z0-9_.:-]`, chosen by the operator or generated.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrgId(String);

/// Why a string is not a valid [`OrgId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an org id is 1 to 64 characters of A-Z, a-z, 0-9, '_', '.', ':' or '-'")]
pub struct InvalidOrgId;

impl OrgId {
    /// Parses an operator-supplied org id.
    pub fn parse(s: &str) -> Result<Self, InvalidOrgId> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidOrgId)
        }
    }

    /// A fresh org id (a UUIDv7), for orgs created without one.
    pub fn generate() -> Self {
        Self(new_record_id().to_string())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id as a UUID, when it is one (the zoo dialect can only show such ids).
    pub fn as_uuid(&self) -> Option<Uuid> {
        Uuid::try_parse(&self.0).ok()
    }
}

impl fmt::Display for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OrgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OrgId({})", self.0)
    }
}

/// The last UUIDv7 handed out, so that ids made by this process are strictly increasing even
/// within one millisecond: time-ordered ids keep every index that ends in `id` append-only.
static LAST_V7: Mutex<u128> = Mutex::new(0);

/// The low 16 bits of every id [`new_record_id`] mints. A store that checks client-sent ids
/// against a claim table rather than against every stored record (PostgreSQL's partitioned
/// request logs) uses it to tell which ids may belong to a record stored without a claim: a
/// client that sends back an id this server minted. A client's own random id carries the
/// mark by chance once in 65,536; it is then merely checked the slower way.
const MINTED_MARK: u128 = 0xa7a1;

/// A fresh UUIDv7: 48 bits of Unix milliseconds, then random bits ending in a fixed 16-bit
/// mark ([`is_minted_record_id`]), strictly increasing within this process.
pub fn new_record_id() -> Uuid {
    let ms = Timestamp::now().millis().max(0) as u128 & ((1 << 48) - 1);
    let mut rand = [0u8; 10];
    fill_random(&mut rand);
    let mut tail = 0u128;
    for b in rand {
        tail = (tail << 8) | u128::from(b);
    }
    // 48 bits of milliseconds over 58 random bits and the 16-bit mark; the version and
    // variant are inserted last, so a carry out of the random bits simply moves on to the
    // next millisecond.
    let candidate = (ms << 74) | (tail & (((1 << 58) - 1) << 16)) | MINTED_MARK;
    let value = {
        let mut last = LAST_V7.lock().unwrap_or_else(|e| e.into_inner());
        let next = if candidate > *last {
            candidate
        } else {
            *last + (1 << 16)
        };
        *last = next;
        next
    };
    uuid::Builder::from_u128(set_v7_bits(value)).into_uuid()
}

/// Whether `id` looks like one [`new_record_id`] minted: a UUIDv7 ending in the mark. Every
/// minted id does; other ids rarely do (see [`MINTED_MARK`]).
pub fn is_minted_record_id(id: &Uuid) -> bool {
    id.get_version_num() == 7 && id.as_u128() & 0xffff == MINTED_MARK
}

/// Spreads 122 bits (48 of milliseconds, 74 random) around the fixed version (`0111`) and
/// variant (`10`) bits; order-preserving.
fn set_v7_bits(value: u128) -> u128 {
    let ms = (value >> 74) & ((1 << 48) - 1);
    let payload = value & ((1 << 74) - 1);
    let rand_a = (payload >> 62) & 0xfff; // 12 bits
    let rand_b = payload & ((1 << 62) - 1); // 62 bits
    (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b
}

/// Fills `buf` from the operating system's CSPRNG.
pub fn fill_random(buf: &mut [u8]) {
    // The OS random source failing is not recoverable for a service that mints secrets.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random source is unavailable");
}

/// A request id: echoed from `X-Request-Id` when it is 1–128 characters of
/// `[A-Za-z0-9_.-]`, else generated as `req_` + 26 base32 characters (time-ordered).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(String);

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

impl RequestId {
    /// Accepts a caller-supplied request id if it has the allowed shape.
    pub fn parse(s: &str) -> Option<Self> {
        let ok = (1..=128).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        ok.then(|| Self(s.to_owned()))
    }

    /// A fresh request id: `req_` then a ULID-like 26 characters (48 bits of milliseconds,
    /// 80 random bits), so ids sort by time and index cheaply.
    pub fn generate() -> Self {
        Self::generate_at(Timestamp::now())
    }

    /// A request id as [`RequestId::generate`] would have made it at `at` (for backfills).
    pub fn generate_at(at: Timestamp) -> Self {
        let ms = at.millis().max(0) as u128 & ((1 << 48) - 1);
        let mut rand = [0u8; 10];
        fill_random(&mut rand);
        let mut v = ms;
        for b in rand {
            v = (v << 8) | u128::from(b);
        }
        let mut out = String::with_capacity(30);
        out.push_str("req_");
        for i in (0..26).rev() {
            out.push(CROCKFORD[((v >> (i * 5)) & 31) as usize] as char);
        }
        Self(out)
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn org_ids_follow_the_documented_alphabet() {
        assert!(OrgId::parse("1234").is_ok());
        assert!(OrgId::parse("acme.prod:eu-1_a").is_ok());
        assert!(OrgId::parse(&"a".repeat(64)).is_ok());
        assert_eq!(OrgId::parse(""), Err(InvalidOrgId));
        assert_eq!(OrgId::parse(&"a".repeat(65)), Err(InvalidOrgId));
        assert_eq!(OrgId::parse("a b"), Err(InvalidOrgId));
        assert_eq!(OrgId::parse("a/b"), Err(InvalidOrgId));
        assert!(OrgId::generate().as_uuid().is_some());
        assert!(OrgId::parse("42").unwrap().as_uuid().is_none());
    }

    #[test]
    fn record_ids_are_v7_and_strictly_increasing() {
        let ids: Vec<Uuid> = (0..10_000).map(|_| new_record_id()).collect();
        for w in ids.windows(2) {
            assert!(w[0] < w[1], "{} !< {}", w[0], w[1]);
        }
        for id in &ids {
            assert!(is_minted_record_id(id), "{id} lacks the mark");
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
        }
        let ms = ids[0].get_timestamp().map(|t| t.to_unix());
        let now = Timestamp::now().millis() / 1000;
        assert!(ms.is_some_and(|(s, _)| (s as i64 - now).abs() < 5));
    }

    #[test]
    fn only_marked_v7_ids_count_as_minted() {
        let minted = new_record_id();
        let unmarked = Uuid::from_u128(minted.as_u128() ^ 1);
        assert!(!is_minted_record_id(&unmarked));
        // The same low bits on a random (v4) id are not a mint.
        let v4 = Uuid::from_u128((0x4 << 76) | (0b10 << 62) | MINTED_MARK);
        assert_eq!(v4.get_version_num(), 4);
        assert!(!is_minted_record_id(&v4));
    }

    #[test]
    fn request_ids_are_validated_or_generated() {
        assert!(RequestId::parse("abc-123_X.y").is_some());
        assert!(RequestId::parse("").is_none());
        assert!(RequestId::parse(&"a".repeat(129)).is_none());
        assert!(RequestId::parse("has space").is_none());
        let a = RequestId::generate();
        assert!(a.as_str().starts_with("req_"));
        assert_eq!(a.as_str().len(), 30);
        assert!(RequestId::parse(a.as_str()).is_some());
        assert_ne!(a, RequestId::generate());
    }
}
