//! Opaque keyset cursors, shared by every dialect that pages with one.
//!
//! A cursor is the position of the last item served, plus the list and the order it was
//! issued for, plus a checksum: unpadded base64url, so it is URL-safe as it stands. Binding
//! it to the order means a cursor replayed with another `sort_by`/`sort_dir` is refused
//! instead of silently skipping or repeating records; the checksum turns a mangled cursor
//! into a clear error instead of a wrong page.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::query::{Position, Sort, SortDir, SortKey};

/// The list a cursor belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CursorKind {
    /// `GET /v1/logs`.
    Logs = 1,
    /// The zoo dialect's `page_token`.
    Zoo = 2,
    /// Native list endpoints (orgs, keys).
    Native = 3,
}

/// Why a cursor was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    /// Not a cursor apitrail issued (or damaged in transit).
    #[error("is not a cursor issued by this endpoint")]
    Malformed,
    /// A cursor of another list.
    #[error("was issued by another endpoint")]
    WrongList,
    /// Issued for another order.
    #[error(
        "was issued for sort order {0}; repeat the request with that order or start without a cursor"
    )]
    SortMismatch(&'static str),
}

const VERSION: u8 = 1;
const BODY_LEN: usize = 4 + 8 + 16;
const CHECK_LEN: usize = 4;

/// A decoded cursor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The list it was issued for.
    pub kind: CursorKind,
    /// The order it was issued for.
    pub sort: Sort,
    /// The last item served.
    pub position: Position,
}

fn sort_code(sort: Sort) -> (u8, u8) {
    let key = match sort.key {
        SortKey::CreatedAt => 1,
        SortKey::DurationMs => 2,
        SortKey::StatusCode => 3,
    };
    let dir = match sort.dir {
        SortDir::Asc => 1,
        SortDir::Desc => 2,
    };
    (key, dir)
}

fn sort_name(sort: Sort) -> &'static str {
    match (sort.key, sort.dir) {
        (SortKey::CreatedAt, SortDir::Asc) => "created_at asc",
        (SortKey::CreatedAt, SortDir::Desc) => "created_at desc",
        (SortKey::DurationMs, SortDir::Asc) => "duration_ms asc",
        (SortKey::DurationMs, SortDir::Desc) => "duration_ms desc",
        (SortKey::StatusCode, SortDir::Asc) => "status_code asc",
        (SortKey::StatusCode, SortDir::Desc) => "status_code desc",
    }
}

fn checksum(body: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::digest(body);
    [digest[0], digest[1], digest[2], digest[3]]
}

impl Cursor {
    /// Encodes the cursor.
    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(BODY_LEN + CHECK_LEN);
        let (key, dir) = sort_code(self.sort);
        buf.extend_from_slice(&[VERSION, self.kind as u8, key, dir]);
        buf.extend_from_slice(&self.position.key.to_be_bytes());
        buf.extend_from_slice(self.position.id.as_bytes());
        let check = checksum(&buf);
        buf.extend_from_slice(&check);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Decodes a cursor presented to list `kind` with order `sort`, returning where to resume.
    pub fn resume(s: &str, kind: CursorKind, sort: Sort) -> Result<Position, CursorError> {
        let cursor = Self::decode(s)?;
        if cursor.kind != kind {
            return Err(CursorError::WrongList);
        }
        if cursor.sort != sort {
            return Err(CursorError::SortMismatch(sort_name(cursor.sort)));
        }
        Ok(cursor.position)
    }

    /// Decodes any cursor this module encoded.
    pub fn decode(s: &str) -> Result<Self, CursorError> {
        let raw = URL_SAFE_NO_PAD
            .decode(s.as_bytes())
            .map_err(|_| CursorError::Malformed)?;
        if raw.len() != BODY_LEN + CHECK_LEN || raw[0] != VERSION {
            return Err(CursorError::Malformed);
        }
        let (body, check) = raw.split_at(BODY_LEN);
        if checksum(body) != check {
            return Err(CursorError::Malformed);
        }
        let kind = match body[1] {
            1 => CursorKind::Logs,
            2 => CursorKind::Zoo,
            3 => CursorKind::Native,
            _ => return Err(CursorError::Malformed),
        };
        let key = match body[2] {
            1 => SortKey::CreatedAt,
            2 => SortKey::DurationMs,
            3 => SortKey::StatusCode,
            _ => return Err(CursorError::Malformed),
        };
        let dir = match body[3] {
            1 => SortDir::Asc,
            2 => SortDir::Desc,
            _ => return Err(CursorError::Malformed),
        };
        let mut k = [0u8; 8];
        k.copy_from_slice(&body[4..12]);
        let mut id = [0u8; 16];
        id.copy_from_slice(&body[12..28]);
        Ok(Self {
            kind,
            sort: Sort { key, dir },
            position: Position {
                key: i64::from_be_bytes(k),
                id: Uuid::from_bytes(id),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_sort() -> impl Strategy<Value = Sort> {
        (0..3u8, any::<bool>()).prop_map(|(k, asc)| Sort {
            key: [SortKey::CreatedAt, SortKey::DurationMs, SortKey::StatusCode][k as usize],
            dir: if asc { SortDir::Asc } else { SortDir::Desc },
        })
    }

    fn any_kind() -> impl Strategy<Value = CursorKind> {
        prop_oneof![
            Just(CursorKind::Logs),
            Just(CursorKind::Zoo),
            Just(CursorKind::Native)
        ]
    }

    proptest! {
        #[test]
        fn cursors_round_trip(kind in any_kind(), sort in any_sort(), key in any::<i64>(), id in any::<u128>()) {
            let c = Cursor { kind, sort, position: Position { key, id: Uuid::from_u128(id) } };
            let s = c.encode();
            prop_assert!(s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            prop_assert_eq!(Cursor::decode(&s), Ok(c));
            prop_assert_eq!(Cursor::resume(&s, kind, sort), Ok(c.position));
        }

        #[test]
        fn cursors_are_bound_to_their_sort(a in any_sort(), b in any_sort(), key in any::<i64>()) {
            prop_assume!(a != b);
            let c = Cursor { kind: CursorKind::Logs, sort: a, position: Position { key, id: Uuid::nil() } };
            prop_assert!(matches!(Cursor::resume(&c.encode(), CursorKind::Logs, b), Err(CursorError::SortMismatch(_))));
        }

        #[test]
        fn damaged_cursors_are_refused(sort in any_sort(), key in any::<i64>(), flip in 0usize..43, to in b'A'..=b'Z') {
            let c = Cursor { kind: CursorKind::Logs, sort, position: Position { key, id: Uuid::from_u128(7) } };
            let mut s = c.encode().into_bytes();
            prop_assume!(s[flip] != to);
            s[flip] = to;
            let s = String::from_utf8(s).unwrap();
            // A changed character either fails to decode or fails the checksum; it never
            // yields a different position silently (the last character may only carry
            // padding bits, which base64 rejects as non-canonical).
            prop_assert_eq!(Cursor::decode(&s), Err(CursorError::Malformed));
        }

        #[test]
        fn only_canonical_cursors_decode(s in "[A-Za-z0-9_-]{0,48}|.{0,80}") {
            // Whatever decodes must be exactly what encoding produces: no two spellings of
            // one position, and no panic on junk.
            if let Ok(c) = Cursor::decode(&s) {
                prop_assert_eq!(c.encode(), s);
            }
        }
    }

    #[test]
    fn cursors_of_other_lists_are_refused() {
        let c = Cursor {
            kind: CursorKind::Zoo,
            sort: Sort::NEWEST_FIRST,
            position: Position {
                key: 1,
                id: Uuid::nil(),
            },
        };
        assert_eq!(
            Cursor::resume(&c.encode(), CursorKind::Logs, Sort::NEWEST_FIRST),
            Err(CursorError::WrongList)
        );
    }
}
