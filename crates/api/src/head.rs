//! Limits on the request head (target and header fields), checked by the outermost
//! middleware so that a request over them is answered in the native envelope with its
//! `X-Request-Id`, like every other error. hyper's own limits sit above these (a target over
//! 64 KiB, more than 256 header fields or a head over ~400 KiB get hyper's bare answer).

use axum::http::{HeaderMap, Uri};

use crate::error::{ApiError, ErrorKind};

/// Longest accepted request target (path and query), in bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Most header fields accepted in one request.
pub const MAX_HEADER_COUNT: usize = 100;
/// Largest accepted header section (names and values, plus 4 bytes per field for `: ` and
/// the line end), in bytes.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The error for a request whose head is over the limits, if it is.
pub fn check(uri: &Uri, headers: &HeaderMap) -> Option<ApiError> {
    let target = uri
        .path_and_query()
        .map_or(uri.path().len(), |pq| pq.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            ErrorKind::UriTooLong,
            format!(
                "the request target is {target} bytes long; at most {MAX_URI_BYTES} are accepted"
            ),
        ));
    }
    let count = headers.len();
    if count > MAX_HEADER_COUNT {
        return Some(ApiError::new(
            ErrorKind::HeadersTooLarge,
            format!("{count} header fields; at most {MAX_HEADER_COUNT} are accepted"),
        ));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            ErrorKind::HeadersTooLarge,
            format!(
                "the header fields take {bytes} bytes; at most {MAX_HEADER_BYTES} are accepted"
            ),
        ));
    }
    None
}
