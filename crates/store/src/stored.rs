//! What every backend stores and reads alike: the field codes of `request_log_values`, and
//! the answer to a stored value that cannot be decoded.
//!
//! A value that cannot be decoded was written behind the store's back (a hand edit, a
//! damaged file): the store wrote only values the model accepts. The rule, the same on every
//! backend:
//!
//! - an **optional** field of a request log (`client_ip`, `started_at`, `completed_at`) reads
//!   as unknown, which the model has a truthful answer for (the API prints `null`, as for a
//!   record sent without one), and the read is reported by a warning naming the org, the
//!   record and the column ([`optional`]); the stored value is left as it is, for the
//!   operator to inspect. So one bad row never makes an org's listing unusable, and is never
//!   changed silently.
//! - a **required** value (an id, `created_at`, a status code, and every field of the other
//!   records) fails the read as corrupt ([`crate::StoreError::Backend`], a 500 whose details
//!   go to the log): there is no truthful stand-in, and for the keys a page is sorted and
//!   continued by, a made-up one would put the record on the wrong page or break the cursor.
//!   The one exception is the audit chain's hashes and positions, which read as values that
//!   never match, so that `verify` reports the edited entry instead of failing.

use uuid::Uuid;

/// Which column of `request_logs` a row of `request_log_values (org, field, value)` names:
/// the org has logged that value in that column. The codes are stored (and the backends'
/// migration 0005 writes them as literals), so they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i16)]
pub enum ValueField {
    /// `status_code` (PostgreSQL only: the status-run plan reads the org's codes from it).
    Status = 1,
    /// `api_key_id`.
    ApiKey = 2,
    /// `service_account_id`.
    ServiceAccount = 3,
    /// `email`.
    Email = 4,
}

impl ValueField {
    /// The code stored in `request_log_values.field`.
    pub const fn code(self) -> i16 {
        self as i16
    }
}

/// An optional field of a request log as read: `stored` is `None` when nothing is stored,
/// `Some(None)` when the stored value cannot be decoded, which reads as unknown and is
/// reported (see the module's rule). `org` is the store's key of the record's org.
pub fn optional<T>(
    org: i64,
    record: Uuid,
    column: &'static str,
    stored: Option<Option<T>>,
) -> Option<T> {
    match stored {
        Some(None) => {
            // Neither the value nor anything of the record is logged: the record id finds it.
            tracing::warn!(
                org_key = org,
                %record,
                column,
                "a stored request log holds a value that cannot be decoded; it reads as unknown"
            );
            None
        }
        Some(value) => value,
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_stored_ones() {
        let codes = [
            ValueField::Status,
            ValueField::ApiKey,
            ValueField::ServiceAccount,
            ValueField::Email,
        ]
        .map(ValueField::code);
        assert_eq!(codes, [1, 2, 3, 4]);
    }

    #[test]
    fn an_undecodable_optional_value_reads_as_unknown_and_is_reported() {
        let logged = Capture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(logged.clone())
            .with_ansi(false)
            .finish();
        let record = Uuid::now_v7();
        tracing::subscriber::with_default(subscriber, || {
            assert_eq!(optional(7, record, "client_ip", Some(Some(1))), Some(1));
            assert_eq!(optional::<u8>(7, record, "client_ip", None), None);
            assert!(
                logged.text().is_empty(),
                "a value or its absence is not reported"
            );
            assert_eq!(optional::<u8>(7, record, "client_ip", Some(None)), None);
        });
        let text = logged.text();
        assert!(text.contains("WARN"), "{text}");
        assert!(text.contains("org_key=7"), "{text}");
        assert!(text.contains(&format!("record={record}")), "{text}");
        assert!(text.contains("column=\"client_ip\""), "{text}");
    }

    /// A log writer that keeps what is written.
    #[derive(Clone, Default)]
    struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Capture {
        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    impl std::io::Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
        type Writer = Self;

        fn make_writer(&'a self) -> Self {
            self.clone()
        }
    }
}
