//! One exchange through the proxy, as named phases over a per-request context (pingora's
//! shape): **accept** (the time, the peer, the request line, the request id, the client's
//! address), **route** (the most specific pattern), **attribute** (attribution headers out,
//! the credential's fingerprint), **upstream request** (hop-by-hop fields out,
//! `X-Forwarded-For` appended, the request id), **forward**, **response** (attribution out of
//! the response, the request id back), and **log**, which runs when the context is dropped:
//! for every exchange, whether it ended well, failed upstream, or lost its client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use apitrail_api::serve::BodyWatch;
use apitrail_model::request_log::rules;
use apitrail_model::time::ingest_window;
use apitrail_model::{OrgId, RequestId, RequestLog, Timestamp, new_record_id};
use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::http::header::{CONNECTION, CONTENT_TYPE, EXPECT, HOST, ORIGIN, TE, UPGRADE, USER_AGENT};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use crate::Shared;
use crate::body::{Captured, RequestBody, RequestTap, ResponseBody, Source};
use crate::headers::{self, Attribution};
use crate::net;
use crate::stats::DropReason;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The per-request context.
pub(crate) struct Exchange {
    shared: Arc<Shared>,
    started: Instant,
    started_at: Timestamp,
    peer: SocketAddr,
    /// Says whether `serve` cut the request body off for slowness.
    body_watch: Option<BodyWatch>,
    request_id: RequestId,
    /// The record as far as it is known; completed by the log phase.
    log: RequestLog,
    request_attribution: Attribution,
    response_attribution: Attribution,
    /// The status sent to the client, once a response head exists.
    status: Option<u16>,
    /// The response was handed to the client whole.
    ended: bool,
    /// The upstream broke off its response body.
    upstream_broke: bool,
    request_tap: Option<Arc<RequestTap>>,
    response_capture: Option<Captured>,
    /// The client's side of an upgrade it asked for (`Upgrade`, e.g. WebSocket).
    client_upgrade: Option<OnUpgrade>,
    /// The protocol version the client spoke, which its answer is written in.
    client_version: Version,
}

impl Exchange {
    /// Phase *accept*: the clock starts; the request line, peer, client address and request
    /// id are noted.
    pub(crate) fn accept(shared: Arc<Shared>, parts: &Parts) -> Self {
        let started = Instant::now();
        let started_at = Timestamp::now();
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)), |c| c.0);
        let headers = &parts.headers;
        let request_id = headers
            .get(&X_REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .and_then(RequestId::parse)
            .unwrap_or_else(RequestId::generate);
        let client_ip = net::client_ip(
            peer.ip(),
            headers
                .get_all(&X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok()),
            &shared.config.trusted_proxies,
        );
        let path = match parts.uri.path() {
            "" => "/",
            p => p,
        };
        let log = RequestLog {
            request_id: Some(request_id.as_str().to_owned()),
            method: parts.method.as_str().to_owned(),
            path: capped(path, rules::MAX_PATH),
            query: parts
                .uri
                .query()
                .filter(|q| !q.is_empty())
                .map(|q| capped(q, rules::MAX_PATH)),
            client_ip: Some(client_ip),
            user_agent: header_text(headers, USER_AGENT),
            origin: header_text(headers, ORIGIN),
            ..RequestLog::default()
        };
        Self {
            shared,
            started,
            started_at,
            peer,
            body_watch: parts.extensions.get::<BodyWatch>().cloned(),
            request_id,
            log,
            request_attribution: Attribution::default(),
            response_attribution: Attribution::default(),
            status: None,
            ended: false,
            upstream_broke: false,
            request_tap: None,
            response_capture: None,
            client_upgrade: None,
            client_version: parts.version,
        }
    }

    /// Phase *route*: the most specific pattern of `--routes`.
    pub(crate) fn match_route(&mut self) {
        self.log.route_pattern = self
            .shared
            .config
            .routes
            .find(&self.log.path)
            .map(|p| p.to_string());
    }

    /// Phase *attribute*: attribution headers are taken out of the request; the credential
    /// is classified and fingerprinted (its secret is never kept).
    pub(crate) fn attribute(&mut self, headers: &mut HeaderMap) {
        self.request_attribution = Attribution::take(headers);
        let (auth_type, secret) = headers::credential(headers);
        self.log.auth_type = Some(auth_type);
        if let Some(secret) = secret {
            let fp = headers::fingerprint(self.shared.config.fingerprint_key.bytes(), &secret);
            self.log.metadata = Some(format!(r#"{{"credential_fingerprint":"{fp}"}}"#));
        }
    }

    /// Phase *upstream request*: the request as the upstream gets it; `None` when its
    /// target cannot be forwarded.
    pub(crate) fn upstream_request(
        &mut self,
        mut parts: Parts,
        body: Body,
    ) -> Option<Request<RequestBody>> {
        let config = &self.shared.config;
        let uri = config.upstream.uri_for(&parts.uri)?;
        // HTTP/2 has no `101`: towards an HTTP/2 upstream an upgrade is not asked for.
        let upgrade = headers::upgrade_asked(&parts.headers).filter(|_| !config.upstream_http2);
        let trailers = config.upstream_http2 && headers::te_trailers(&parts.headers);
        let headers = &mut parts.headers;
        headers::strip_hop_by_hop(headers);
        if trailers {
            // The one `TE` HTTP/2 allows, which gRPC servers require.
            headers.insert(TE, HeaderValue::from_static("trailers"));
        }
        if !headers.contains_key(HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            // An HTTP/2 client names the host in `:authority`, not in `Host`: the upstream
            // still gets the host the client asked for.
            headers.insert(HOST, host);
        }
        if let Some(protocol) = upgrade {
            // The one hop-by-hop exchange passed on: the upstream must see the request to
            // switch protocols, and the client's socket is kept to tunnel it.
            headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(UPGRADE, protocol);
            self.client_upgrade = parts.extensions.remove::<OnUpgrade>();
        }
        // `Expect: 100-continue` is answered by this hop (hyper does when the body is read).
        headers.remove(EXPECT);
        append_forwarded_for(headers, self.peer);
        headers.insert(
            X_REQUEST_ID,
            HeaderValue::from_str(self.request_id.as_str())
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        );
        // `Host` is kept as the client sent it; hyper adds the upstream's only when absent
        // (an HTTP/1.0 client).
        parts.uri = uri;
        parts.version = if config.upstream_http2 {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        let tap = Arc::new(RequestTap {
            capture: config
                .capture_bodies
                .then(|| std::sync::Mutex::new(Captured::default())),
            cap: config.body_cap_bytes,
            ..RequestTap::default()
        });
        self.request_tap = Some(Arc::clone(&tap));
        if config.capture_bodies {
            self.response_capture = Some(Captured::default());
        }
        let body = RequestBody { inner: body, tap };
        Some(Request::from_parts(parts, body))
    }

    /// Phase *response*: the upstream answered; attribution comes out of its headers, the
    /// request id goes back, and the body streams to the client carrying this context.
    pub(crate) fn respond(mut self, response: Response<Incoming>) -> Response<Body> {
        self.shared.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        if response.status() == StatusCode::SWITCHING_PROTOCOLS && self.client_upgrade.is_some() {
            return self.tunnel(response);
        }
        let (mut parts, incoming) = response.into_parts();
        // The upstream's version is its hop's: an HTTP/1.0 upstream must not turn the
        // client's kept-alive HTTP/1.1 connection into one that closes after each answer.
        parts.version = self.client_version;
        self.response_attribution = Attribution::take(&mut parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers);
        self.set_request_id(&mut parts.headers);
        self.status = Some(parts.status.as_u16());
        let body = ResponseBody {
            source: Source::Upstream(incoming),
            exchange: self,
        };
        Response::from_parts(parts, Body::new(body))
    }

    /// Phase *response* of an upgrade the upstream accepted: the client gets the `101`, and
    /// a task copies bytes both ways between the two upgraded sockets. The exchange goes
    /// with the task, so it is logged once, when the tunnel closes, with its duration.
    fn tunnel(mut self, mut response: Response<Incoming>) -> Response<Body> {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let client_upgrade = self.client_upgrade.take();
        let (mut parts, _) = response.into_parts();
        self.response_attribution = Attribution::take(&mut parts.headers);
        let protocol = parts.headers.get(UPGRADE).cloned();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(protocol) = protocol {
            parts.headers.insert(UPGRADE, protocol);
        }
        self.set_request_id(&mut parts.headers);
        self.status = Some(101);
        tokio::spawn(async move {
            let mut exchange = self;
            let client = match client_upgrade {
                Some(upgrade) => upgrade.await,
                None => return,
            };
            match (client, upstream_upgrade.await) {
                (Ok(client), Ok(upstream)) => {
                    let mut client = hyper_util::rt::TokioIo::new(client);
                    let mut upstream = hyper_util::rt::TokioIo::new(upstream);
                    // Either side closing (or failing) ends the tunnel.
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    exchange.response_ended();
                }
                (client, upstream) => {
                    tracing::debug!(
                        client_ok = client.is_ok(),
                        upstream_ok = upstream.is_ok(),
                        "an upgrade did not complete"
                    );
                    exchange.log.error_code = Some("upgrade_failed".into());
                }
            }
        });
        Response::from_parts(parts, Body::empty())
    }

    /// Phase *forward* failed: the client's body broke off (`408` when it was too slow,
    /// else the client is gone: `499`), or the upstream could not be reached or failed
    /// (`502`).
    pub(crate) fn fail(mut self, error: &hyper_util::client::legacy::Error) -> Response<Body> {
        let client_failed = self
            .request_tap
            .as_ref()
            .is_some_and(|t| t.failed.load(Ordering::Relaxed));
        if client_failed {
            if let Some(timeout) = self.body_watch.as_ref().and_then(BodyWatch::timed_out) {
                tracing::debug!(%timeout, "request body timed out");
                return self.local_response(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    "the request body was not received in time",
                );
            }
            // The client is gone; the log phase records 499 (no response head was sent).
            tracing::debug!(error = %error, "client went away while its request was sent");
            return Response::new(Body::empty());
        }
        self.shared
            .stats
            .upstream_errors
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %error, upstream = %self.shared.config.upstream,
            "cannot forward a request to the upstream");
        self.log.error_code = Some("upstream_unreachable".into());
        self.local_response(
            StatusCode::BAD_GATEWAY,
            "bad_gateway",
            "the upstream could not be reached",
        )
    }

    /// An answer made by the proxy itself, in apitrail's native envelope.
    pub(crate) fn local_response(
        mut self,
        status: StatusCode,
        code: &str,
        message: &str,
    ) -> Response<Body> {
        let body = serde_json::json!({
            "error": {"code": code, "message": message},
            "request_id": self.request_id.as_str(),
        })
        .to_string();
        self.status = Some(status.as_u16());
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        self.set_request_id(headers);
        let body = ResponseBody {
            source: Source::Local(Some(Bytes::from(body))),
            exchange: self,
        };
        response.map(|_| Body::new(body))
    }

    fn set_request_id(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(self.request_id.as_str()) {
            headers.insert(X_REQUEST_ID, v);
        }
    }

    /// The response body's bytes pass by (captured up to the cap).
    pub(crate) fn response_data(&mut self, data: &Bytes) {
        if let Some(capture) = &mut self.response_capture {
            capture.take(data, self.shared.config.body_cap_bytes);
        }
    }

    /// The response was handed to the client whole.
    pub(crate) fn response_ended(&mut self) {
        self.ended = true;
    }

    /// The upstream broke off its response body.
    pub(crate) fn upstream_broke(&mut self) {
        self.upstream_broke = true;
        self.log.error_code = Some("upstream_aborted".into());
    }

    /// Phase *log*: the record is completed and queued, or dropped and counted.
    fn log_phase(&mut self) {
        let shared = Arc::clone(&self.shared);
        let stats = &shared.stats;
        let status = match self.status {
            Some(s) if self.ended || self.upstream_broke => s,
            _ => {
                stats.client_gone.fetch_add(1, Ordering::Relaxed);
                499
            }
        };
        let attribution = std::mem::take(&mut self.request_attribution)
            .merged_with(std::mem::take(&mut self.response_attribution));
        let org = match attribution.org.as_deref().map(OrgId::parse) {
            Some(Ok(org)) => org,
            Some(Err(_)) => return stats.record_drop(DropReason::InvalidOrg),
            None => match &shared.config.default_org {
                Some(org) => org.clone(),
                None => return stats.record_drop(DropReason::Unattributed),
            },
        };
        let completed_at = Timestamp::now();
        let mut log = std::mem::take(&mut self.log);
        let Ok(method) = rules::method(&log.method) else {
            return stats.record_drop(DropReason::Invalid);
        };
        let (Ok(status_code), Ok(started_at), Ok(completed_at)) = (
            rules::status_code(i64::from(status)),
            ingest_window(self.started_at, completed_at),
            ingest_window(completed_at, completed_at),
        ) else {
            return stats.record_drop(DropReason::Invalid);
        };
        log.id = new_record_id();
        log.method = method;
        log.status_code = status_code;
        log.duration_ms = rules::duration_ms(
            i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX),
        )
        .ok();
        log.started_at = Some(started_at);
        log.completed_at = Some(completed_at);
        log.created_at = started_at;
        log.user_id = attribution.user_id;
        log.principal_id = attribution.principal_id;
        log.api_key_id = attribution.api_key_id;
        log.email = attribution.email;
        log.service_account_id = attribution.service_account_id;
        let cap = shared.config.body_cap_bytes;
        if let Some(capture) = self.request_tap.as_ref().and_then(|t| t.capture.as_ref()) {
            let captured = std::mem::take(&mut *capture.lock().unwrap_or_else(|e| e.into_inner()));
            (log.request_body, log.request_body_truncated) = body_text(captured, cap);
        }
        if let Some(captured) = self.response_capture.take() {
            (log.response_body, log.response_body_truncated) = body_text(captured, cap);
        }
        shared.buffer.push(crate::sink::Captured { org, log });
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        self.log_phase();
    }
}

/// Appends the peer to `X-Forwarded-For` (one field, the earlier values first).
fn append_forwarded_for(headers: &mut HeaderMap, peer: SocketAddr) {
    let peer = peer.ip().to_canonical().to_string();
    let mut value = Vec::with_capacity(peer.len() + 32);
    for v in headers.get_all(&X_FORWARDED_FOR) {
        value.extend_from_slice(v.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(peer.as_bytes());
    let value = HeaderValue::from_bytes(&value)
        .or_else(|_| HeaderValue::from_str(&peer))
        .unwrap_or_else(|_| HeaderValue::from_static(""));
    headers.insert(X_FORWARDED_FOR, value);
}

/// A header as text (invalid UTF-8 replaced), cut to the model's limit.
fn header_text(headers: &HeaderMap, name: HeaderName) -> Option<String> {
    let v = headers.get(name)?;
    let s = String::from_utf8_lossy(v.as_bytes());
    let s = s.trim();
    (!s.is_empty()).then(|| capped(s, 2 * rules::MAX_TEXT))
}

/// `s` cut to at most `max` bytes on a character boundary.
fn capped(s: &str, max: usize) -> String {
    rules::cap_body(s.to_owned(), max).0
}

/// A captured body as the record keeps it: text (invalid UTF-8 replaced), within the cap.
fn body_text(captured: Captured, cap: usize) -> (Option<String>, bool) {
    if captured.bytes.is_empty() && !captured.truncated {
        return (None, false);
    }
    let text = String::from_utf8_lossy(&captured.bytes).into_owned();
    let (text, cut) = rules::cap_body(text, cap);
    (Some(text), captured.truncated || cut)
}
