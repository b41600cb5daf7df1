//! The two bodies of an exchange, streamed frame by frame (never buffered whole): the
//! request body on its way upstream, and the response body on its way to the client, which
//! carries the exchange's context so that the log phase runs when the response has ended,
//! or when the client went away before it did.

use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};

use crate::exchange::Exchange;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The first `cap` bytes of a body, and whether there was more.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub bytes: Vec<u8>,
    pub truncated: bool,
}

impl Captured {
    pub(crate) fn take(&mut self, data: &[u8], cap: usize) {
        let room = cap.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.truncated = true;
        }
        self.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }
}

/// What the request body reports back to its exchange: whether reading it from the client
/// failed (the client went away or was too slow), and its first bytes when capturing.
#[derive(Debug, Default)]
pub(crate) struct RequestTap {
    pub failed: AtomicBool,
    /// `Some` when bodies are captured.
    pub capture: Option<Mutex<Captured>>,
    pub cap: usize,
}

/// The client's request body, streamed upstream.
pub(crate) struct RequestBody {
    pub inner: Body,
    pub tap: std::sync::Arc<RequestTap>,
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(capture)) = (frame.data_ref(), &this.tap.capture) {
                    capture
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take(data, this.tap.cap);
                }
            }
            Poll::Ready(Some(Err(_))) => this.tap.failed.store(true, Ordering::Relaxed),
            _ => {}
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Where a response body comes from.
pub(crate) enum Source {
    /// The upstream's response.
    Upstream(Incoming),
    /// An answer the proxy made itself (a 502, say); `None` once sent.
    Local(Option<Bytes>),
}

/// The response body sent to the client. It owns the exchange: dropping it (hyper does once
/// the body is written, or the connection is gone) runs the log phase.
pub(crate) struct ResponseBody {
    pub source: Source,
    pub exchange: Exchange,
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match &mut this.source {
            Source::Local(bytes) => {
                let frame = bytes.take().map(|b| Ok(Frame::data(b)));
                if frame.is_none() {
                    this.exchange.response_ended();
                }
                Poll::Ready(frame)
            }
            Source::Upstream(incoming) => match Pin::new(&mut *incoming).poll_frame(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    this.exchange.response_ended();
                    Poll::Ready(None)
                }
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(data) = frame.data_ref() {
                        this.exchange.response_data(data);
                    }
                    if incoming.is_end_stream() {
                        this.exchange.response_ended();
                    }
                    Poll::Ready(Some(Ok(frame)))
                }
                Poll::Ready(Some(Err(e))) => {
                    this.exchange.upstream_broke();
                    Poll::Ready(Some(Err(e.into())))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(incoming) => incoming.is_end_stream(),
            Source::Local(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(incoming) => incoming.size_hint(),
            Source::Local(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // hyper does not poll a body that says it is empty (a HEAD, a 204, a 304): it ended
        // as soon as the head was written.
        if self.is_end_stream() {
            self.exchange.response_ended();
        }
        // The exchange drops next, which runs its log phase.
    }
}
