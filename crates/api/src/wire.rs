//! Wire pieces shared by several routes (and documented in the OpenAPI): path and body
//! extractors, pagination and the next cursor, the action types the native routes and the
//! actions dialect print alike, and serde helpers.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use apitrail_model::{ActionState, Cursor, CursorKind, RequestLog, Sort, Timestamp, WebhookConfig};
use apitrail_store::Page;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

use crate::error::{ApiError, Envelope, ErrorKind, Failure, Native};

/// Path parameters of a route whose unknown ids are a 404. A segment that is not UTF-8 (no
/// id of the API is) names nothing either: 404 in envelope `D`, not the framework's
/// plain-text 400.
#[derive(Debug)]
pub struct Ids<T, D = Native>(pub T, pub PhantomData<fn() -> D>);

impl<S, T, D> FromRequestParts<S> for Ids<T, D>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
    D: Envelope,
{
    type Rejection = Failure<D>;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(ids)) => Ok(Self(ids, PhantomData)),
            Err(_) => Err(ApiError::new(
                ErrorKind::NotFound,
                "no such resource: a path segment is not valid UTF-8",
            )
            .into()),
        }
    }
}

/// The most a JSON body of the native routes may hold (axum's default limit).
pub const MAX_JSON_BODY: usize = 2 * 1024 * 1024;

/// A request body of the native JSON routes, read whole (at most [`MAX_JSON_BODY`]). A body
/// that cannot be read is answered in the native envelope, as the document says (413 beyond
/// the limit, 400 otherwise), not in the framework's plain text.
#[derive(Debug)]
pub struct BodyBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for BodyBytes {
    type Rejection = Failure<Native>;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let declared = declared_length(req.headers());
        match read_limited(req.into_body(), declared, MAX_JSON_BODY).await {
            Ok(bytes) => Ok(Self(bytes)),
            Err(BodyError::TooLarge) => Err(ApiError::new(
                ErrorKind::PayloadTooLarge,
                format!("the body exceeds {MAX_JSON_BODY} bytes"),
            )
            .into()),
            Err(BodyError::Unreadable(why)) => Err(ApiError::new(
                ErrorKind::InvalidBody,
                format!("could not read the request body: {why}"),
            )
            .into()),
        }
    }
}

/// How much of a refused body is still read (and thrown away) after the `413` was sent, so
/// that a client that writes its whole body before reading the answer gets the `413` instead
/// of a connection reset by a server that stopped reading. The drain runs in the background,
/// bounded by this size and by the server's body timeouts; a body declared larger than this
/// is not drained at all.
pub const DRAIN_MAX: u64 = 64 * 1024 * 1024;

/// Why a body was not read.
#[derive(Debug)]
pub(crate) enum BodyError {
    /// More than the limit.
    TooLarge,
    /// The stream failed (the client went away, a body timeout, invalid framing).
    Unreadable(String),
}

/// The `Content-Length` a request declares, if any.
pub(crate) fn declared_length(headers: &axum::http::HeaderMap) -> Option<u64> {
    headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Reads `body` whole if it holds at most `max` bytes. A larger one (declared or found while
/// streaming) is refused at once, and its rest is drained in the background.
pub(crate) async fn read_limited(
    body: axum::body::Body,
    declared: Option<u64>,
    max: usize,
) -> Result<Bytes, BodyError> {
    use http_body_util::BodyExt;
    let mut body = body;
    if declared.is_some_and(|n| n > max as u64) {
        if declared.is_some_and(|n| n <= DRAIN_MAX) {
            drain(body, 0);
        }
        return Err(BodyError::TooLarge);
    }
    let mut kept: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if kept.len() + data.len() > max {
            drain(body, (kept.len() + data.len()) as u64);
            return Err(BodyError::TooLarge);
        }
        kept.extend_from_slice(&data);
    }
    Ok(Bytes::from(kept))
}

/// Reads and discards the rest of a refused body (up to [`DRAIN_MAX`] in all, `seen` bytes
/// of it already read), so hyper keeps reading the connection after the answer was written.
fn drain(mut body: axum::body::Body, mut seen: u64) {
    use http_body_util::BodyExt;
    tokio::spawn(async move {
        while seen <= DRAIN_MAX {
            match body.frame().await {
                Some(Ok(frame)) => {
                    seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
                Some(Err(_)) | None => return,
            }
        }
    });
}

/// The cursor of the page after `page`: `encode` of its last item, or `None` on the last page.
pub(crate) fn next_cursor<T>(page: &Page<T>, encode: impl FnOnce(&T) -> String) -> Option<String> {
    page.items.last().filter(|_| page.has_more).map(encode)
}

/// The keyset cursor resuming a request-log list of `kind`, in order `sort`, after `last`.
pub(crate) fn log_cursor(kind: CursorKind, sort: Sort, last: &RequestLog) -> String {
    Cursor {
        kind,
        sort,
        position: sort.position_of(last),
    }
    .encode()
}

/// Cursor pagination of native lists.
#[derive(Debug, Serialize, ToSchema)]
pub struct Pagination {
    /// Whether another page follows.
    pub has_more: bool,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

impl Pagination {
    /// The pagination of `page`: whether more follow, and the cursor resuming after its last
    /// item (`encode` of it).
    pub(crate) fn of<T>(page: &Page<T>, encode: impl FnOnce(&T) -> String) -> Self {
        Self {
            has_more: page.has_more,
            next_cursor: next_cursor(page, encode),
        }
    }

    /// The pagination of a list that is always whole: its only page.
    pub(crate) fn whole() -> Self {
        Self {
            has_more: false,
            next_cursor: None,
        }
    }
}

// A destination's webhook settings and a record's state, printed alike by the native action
// routes and the actions dialect.

/// Headers apitrail sets on every delivery, which a destination may not override.
pub(crate) const RESERVED_HEADERS: [&str; 6] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "host",
];

/// The wire form of a destination's config.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConfigBody {
    /// The URL.
    pub url: String,
    /// Extra headers.
    #[schema(schema_with = crate::openapi::webhook_headers)]
    pub headers: BTreeMap<String, String>,
    /// Signaling settings.
    pub signaling: SignalingOut,
    /// Delivery timeout in milliseconds.
    #[schema(minimum = 1, maximum = 120_000)]
    pub response_time_sla_ms: u32,
}

/// Signaling settings as printed.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SignalingOut {
    /// Whether signaling is on.
    pub enabled: bool,
    /// Always `ack`.
    #[schema(schema_with = crate::openapi::signaling_ack)]
    pub default: &'static str,
}

impl From<&WebhookConfig> for ConfigBody {
    fn from(c: &WebhookConfig) -> Self {
        Self {
            url: c.url.clone(),
            headers: c.headers.clone(),
            signaling: SignalingOut {
                enabled: c.signaling,
                default: "ack",
            },
            response_time_sla_ms: c.response_time_sla_ms,
        }
    }
}

/// A record's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct StateBody {
    /// The status.
    #[schema(schema_with = crate::openapi::action_status)]
    pub status: &'static str,
    /// Delivery attempts started.
    pub attempt: u32,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub updated_at: String,
    /// RFC 3339: when the next attempt is due.
    #[schema(format = DateTime)]
    pub available_at: String,
    /// RFC 3339: when an acknowledgement times out.
    #[schema(required = true, format = DateTime)]
    pub timeout_at: Option<String>,
    /// RFC 3339: the first attempt.
    #[schema(required = true, format = DateTime)]
    pub started_at: Option<String>,
    /// RFC 3339: the final status.
    #[schema(required = true, format = DateTime)]
    pub completed_at: Option<String>,
    /// Why it failed.
    #[schema(required = true)]
    pub error_message: Option<String>,
}

impl From<&ActionState> for StateBody {
    fn from(s: &ActionState) -> Self {
        Self {
            status: s.status.as_str(),
            attempt: s.attempt,
            updated_at: s.updated_at.to_rfc3339(),
            available_at: s.available_at.to_rfc3339(),
            timeout_at: s.timeout_at.map(Timestamp::to_rfc3339),
            started_at: s.started_at.map(Timestamp::to_rfc3339),
            completed_at: s.completed_at.map(Timestamp::to_rfc3339),
            error_message: s.error_message.clone(),
        }
    }
}

/// Reads an optional JSON integer into `T`. A number with a zero fraction (`201.0`) is that
/// integer: JSON does not tell the two apart, nor does the OpenAPI `integer` type the
/// document gives these fields. Use with `#[serde(default, deserialize_with = ...)]`.
pub(crate) fn integer<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<i128>,
{
    use serde::Deserialize;
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    let whole = if let Some(i) = n.as_i64() {
        Some(i128::from(i))
    } else if let Some(u) = n.as_u64() {
        Some(i128::from(u))
    } else {
        // Within ±2^63 an f64 with no fraction converts exactly.
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
            .map(|f| f as i128)
    };
    match whole {
        Some(i) => T::try_from(i)
            .map(Some)
            .map_err(|_| D::Error::custom(format!("invalid value: integer `{n}` is out of range"))),
        None => Err(D::Error::custom(format!(
            "invalid type: number `{n}`, expected an integer"
        ))),
    }
}

/// Reads a field that may be left out but is never `null` (its schema does not allow null):
/// an explicit `null` is the field's type error. Use with
/// `#[serde(default, deserialize_with = ...)]`.
pub(crate) fn present<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(d).map(Some)
}

/// A struct read only from a JSON object. serde's derived `Deserialize` also reads a struct
/// from an array of its fields in order (`["acme", "Acme"]`), which no documented body
/// allows. The fields are still read through the caller's deserializer, so error paths stay.
#[derive(Debug)]
pub(crate) struct Object<T>(pub T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for Object<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Only<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Only<T> {
            type Value = Object<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Object)
            }
        }
        d.deserialize_map(Only(std::marker::PhantomData))
    }
}

/// Reads an optional struct field from a JSON object only (see [`Object`]). Use with
/// `#[serde(default, deserialize_with = ...)]`.
pub(crate) fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<Object<T>>::deserialize(d).map(|o| o.map(|Object(t)| t))
}

/// Reads an optional list of structs, each from a JSON object only (see [`Object`]).
pub(crate) fn objects<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    use serde::Deserialize;
    Option::<Vec<Object<T>>>::deserialize(d)
        .map(|o| o.map(|items| items.into_iter().map(|Object(t)| t).collect()))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "super::integer")]
        n: Option<u32>,
    }

    fn read(json: &str) -> Result<Option<u32>, String> {
        serde_json::from_str::<Probe>(json)
            .map(|p| p.n)
            .map_err(|e| e.to_string())
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Pair {
        a: Option<u32>,
        #[serde(default, deserialize_with = "super::object")]
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        b: bool,
    }

    #[test]
    fn structs_are_read_from_objects_only() {
        let read = |json: &str| serde_json::from_str::<super::Object<Pair>>(json).map(|o| o.0);
        let ok = read(r#"{"a": 1, "inner": {"b": true}}"#).unwrap();
        assert_eq!(
            ok,
            Pair {
                a: Some(1),
                inner: Some(Inner { b: true })
            }
        );
        assert_eq!(read(r#"{"inner": null}"#).unwrap().inner, None);
        assert!(read("[1]").is_err());
        assert!(read(r#"{"inner": [true]}"#).is_err());
    }

    #[test]
    fn integers_with_a_zero_fraction_are_integers() {
        assert_eq!(read(r#"{"n": 60}"#), Ok(Some(60)));
        assert_eq!(read(r#"{"n": 60.0}"#), Ok(Some(60)));
        assert_eq!(read(r#"{"n": 6e1}"#), Ok(Some(60)));
        assert_eq!(read(r#"{"n": null}"#), Ok(None));
        assert_eq!(read("{}"), Ok(None));
        for bad in [
            r#"{"n": 60.5}"#,
            r#"{"n": -1}"#,
            r#"{"n": 4294967296}"#,
            r#"{"n": 1e300}"#,
            r#"{"n": "60"}"#,
        ] {
            assert!(read(bad).is_err(), "{bad}");
        }
    }
}
