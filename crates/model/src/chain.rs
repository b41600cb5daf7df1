//! Tamper evidence: each org's audit entries form a hash chain in insertion order.
//!
//! Entry `n` (positions count from 1 per org) stores `prev_hash` (entry `n - 1`'s hash, or 32
//! zero bytes for the first) and `hash = SHA-256(prev_hash ‖ canonical(entry))`. Editing,
//! removing or reordering a stored entry breaks the chain at that entry; the store also keeps
//! the org's head (entry count and last hash), so dropping the newest entries shows too.
//! Everything here is pure, so every backend links and verifies chains the same way.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::audit::AuditEntry;
use crate::id::OrgId;

/// A link hash.
pub type ChainHash = [u8; 32];

/// The `prev_hash` of an org's first entry.
pub const GENESIS: ChainHash = [0; 32];

/// Names the encoding, so a future change of it cannot be confused with this one.
const DOMAIN: &[u8] = b"apitrail.audit.v1\0";

/// The hash of `entry` of `org` following `prev`.
///
/// The canonical content is every stored field in a fixed order, each length-prefixed (and
/// optional ones tagged present/absent), so no two different entries encode alike.
pub fn link_hash(prev: &ChainHash, org: &OrgId, entry: &AuditEntry) -> ChainHash {
    fn text(h: &mut Sha256, v: Option<&str>) {
        match v {
            None => h.update([0]),
            Some(s) => {
                h.update([1]);
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
    }
    let mut h = Sha256::new();
    h.update(DOMAIN);
    h.update(prev);
    text(&mut h, Some(org.as_str()));
    h.update(entry.id.as_bytes());
    h.update(entry.created_at.millis().to_be_bytes());
    text(&mut h, entry.user_id.as_deref());
    text(&mut h, Some(&entry.action));
    text(&mut h, Some(&entry.resource_type));
    text(&mut h, entry.resource_id.as_deref());
    text(&mut h, entry.details.as_deref());
    text(&mut h, entry.ip_address.as_deref());
    text(&mut h, entry.request_id.as_deref());
    h.finalize().into()
}

/// A stored entry with its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainLink {
    /// 1 for the org's first entry, then consecutive.
    pub position: u64,
    /// The previous entry's hash as stored with this entry.
    pub prev_hash: ChainHash,
    /// This entry's hash as stored.
    pub hash: ChainHash,
    /// The entry.
    pub entry: AuditEntry,
}

/// An org's chain head as the store keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    /// Entries in the chain.
    pub entries: u64,
    /// The last entry's hash ([`GENESIS`] for an empty chain).
    pub hash: ChainHash,
}

impl ChainHead {
    /// The head of an org without entries.
    pub const EMPTY: Self = Self {
        entries: 0,
        hash: GENESIS,
    };

    /// The head after appending `entry` of `org`, and the link to store for it.
    pub fn append(&self, org: &OrgId, entry: AuditEntry) -> (Self, ChainLink) {
        let hash = link_hash(&self.hash, org, &entry);
        let link = ChainLink {
            position: self.entries + 1,
            prev_hash: self.hash,
            hash,
            entry,
        };
        (
            Self {
                entries: link.position,
                hash,
            },
            link,
        )
    }
}

/// The outcome of recomputing a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Whether every entry and the head check out.
    pub ok: bool,
    /// Entries examined, up to and including the first bad one.
    pub entries_checked: u64,
    /// The first entry that does not check out (`None` when all do, or when only the head is
    /// wrong).
    pub first_bad_id: Option<Uuid>,
    /// What is wrong, when something is.
    pub problem: Option<String>,
    /// The recomputed hash of the last good entry.
    pub head_hash: ChainHash,
}

/// Recomputes a chain fed link by link in position order.
#[derive(Debug)]
pub struct ChainVerifier {
    org: OrgId,
    expected: ChainHead,
    checked: u64,
    failure: Option<(Option<Uuid>, String)>,
}

impl ChainVerifier {
    /// A verifier for `org`'s chain.
    pub fn new(org: OrgId) -> Self {
        Self {
            org,
            expected: ChainHead::EMPTY,
            checked: 0,
            failure: None,
        }
    }

    /// Checks the next link; returns `false` once the chain is broken (feed no more).
    pub fn feed(&mut self, link: &ChainLink) -> bool {
        if self.failure.is_some() {
            return false;
        }
        self.checked += 1;
        let (next, _) = self.expected.append(&self.org, link.entry.clone());
        let problem = if link.position != next.entries {
            Some(format!(
                "entry is at position {} where position {} was expected (entries are missing or reordered)",
                link.position, next.entries
            ))
        } else if link.prev_hash != self.expected.hash {
            Some("its prev_hash is not the previous entry's hash".to_owned())
        } else if link.hash != next.hash {
            Some("its content does not match its hash (the entry was altered)".to_owned())
        } else {
            None
        };
        match problem {
            Some(p) => {
                self.failure = Some((Some(link.entry.id), p));
                false
            }
            None => {
                self.expected = next;
                true
            }
        }
    }

    /// The report, checking the stored `head` against what was recomputed.
    pub fn finish(mut self, head: ChainHead) -> ChainReport {
        if self.failure.is_none() && head != self.expected {
            self.failure = Some((
                None,
                format!(
                    "the stored head ({} entries) does not match the {} entries found (entries were removed or the head was altered)",
                    head.entries, self.expected.entries
                ),
            ));
        }
        let (first_bad_id, problem) = match self.failure {
            Some((id, p)) => (id, Some(p)),
            None => (None, None),
        };
        ChainReport {
            ok: problem.is_none(),
            entries_checked: self.checked,
            first_bad_id,
            problem,
            head_hash: self.expected.hash,
        }
    }
}

/// Lowercase hex of a hash.
pub fn hex(hash: &ChainHash) -> String {
    hash.iter().fold(String::with_capacity(64), |mut s, b| {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    fn entry(n: u8) -> AuditEntry {
        AuditEntry {
            id: Uuid::from_bytes([n; 16]),
            user_id: Some(format!("user-{n}")),
            action: "create".into(),
            resource_type: "api_key".into(),
            resource_id: Some(format!("key-{n}")),
            details: Some("{}".into()),
            ip_address: None,
            request_id: None,
            created_at: Timestamp::from_millis(i64::from(n) * 1000).unwrap_or_default(),
        }
    }

    fn chain(org: &OrgId, n: u8) -> (ChainHead, Vec<ChainLink>) {
        let mut head = ChainHead::EMPTY;
        let mut links = Vec::new();
        for i in 1..=n {
            let (next, link) = head.append(org, entry(i));
            head = next;
            links.push(link);
        }
        (head, links)
    }

    fn verify(org: &OrgId, links: &[ChainLink], head: ChainHead) -> ChainReport {
        let mut v = ChainVerifier::new(org.clone());
        for l in links {
            if !v.feed(l) {
                break;
            }
        }
        v.finish(head)
    }

    #[test]
    fn an_intact_chain_verifies() {
        let org = OrgId::parse("acme").unwrap();
        let (head, links) = chain(&org, 5);
        let r = verify(&org, &links, head);
        assert!(r.ok, "{r:?}");
        assert_eq!(r.entries_checked, 5);
        assert_eq!(r.head_hash, head.hash);
        assert!(verify(&org, &[], ChainHead::EMPTY).ok);
    }

    #[test]
    fn every_field_is_covered() {
        let org = OrgId::parse("acme").unwrap();
        let base = entry(1);
        let h = link_hash(&GENESIS, &org, &base);
        let variants: Vec<AuditEntry> = vec![
            AuditEntry {
                user_id: None,
                ..base.clone()
            },
            AuditEntry {
                action: "delete".into(),
                ..base.clone()
            },
            AuditEntry {
                resource_type: "org".into(),
                ..base.clone()
            },
            AuditEntry {
                resource_id: Some(String::new()),
                ..base.clone()
            },
            AuditEntry {
                details: None,
                ..base.clone()
            },
            AuditEntry {
                ip_address: Some("::1".into()),
                ..base.clone()
            },
            AuditEntry {
                request_id: Some("r".into()),
                ..base.clone()
            },
            AuditEntry {
                created_at: Timestamp::from_millis(1).unwrap_or_default(),
                ..base.clone()
            },
            AuditEntry {
                id: Uuid::nil(),
                ..base.clone()
            },
        ];
        for v in &variants {
            assert_ne!(link_hash(&GENESIS, &org, v), h, "{v:?}");
        }
        assert_ne!(link_hash(&[1; 32], &org, &base), h);
        assert_ne!(
            link_hash(&GENESIS, &OrgId::parse("other").unwrap(), &base),
            h
        );
        // Length prefixes keep field boundaries apart.
        let a = AuditEntry {
            action: "ab".into(),
            resource_type: "c".into(),
            ..base.clone()
        };
        let b = AuditEntry {
            action: "a".into(),
            resource_type: "bc".into(),
            ..base
        };
        assert_ne!(link_hash(&GENESIS, &org, &a), link_hash(&GENESIS, &org, &b));
    }

    #[test]
    fn tampering_is_found_at_the_entry() {
        let org = OrgId::parse("acme").unwrap();
        let (head, links) = chain(&org, 5);

        let mut edited = links.clone();
        edited[2].entry.details = Some("{\"forged\":true}".into());
        let r = verify(&org, &edited, head);
        assert!(!r.ok);
        assert_eq!(r.first_bad_id, Some(links[2].entry.id));
        assert_eq!(r.entries_checked, 3);

        // Rehashing the edited entry moves the break to the next one.
        let (_, relinked) = ChainHead {
            entries: 2,
            hash: links[1].hash,
        }
        .append(&org, edited[2].entry.clone());
        edited[2] = relinked;
        assert_eq!(
            verify(&org, &edited, head).first_bad_id,
            Some(links[3].entry.id)
        );

        let mut removed = links.clone();
        removed.remove(1);
        assert_eq!(
            verify(&org, &removed, head).first_bad_id,
            Some(links[2].entry.id)
        );

        let truncated = &links[..4];
        let r = verify(&org, truncated, head);
        assert!(!r.ok);
        assert_eq!(r.first_bad_id, None);
        assert!(r.problem.unwrap_or_default().contains("head"));
    }

    #[test]
    fn hex_is_lowercase_and_complete() {
        let mut h = GENESIS;
        h[0] = 0xab;
        h[31] = 0x0f;
        let s = hex(&h);
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("ab00"));
        assert!(s.ends_with("0f"));
    }
}
