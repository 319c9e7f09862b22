//! Request bodies on their way to a backend.
//!
//! A request body is read up to [`MAX_BUFFERED_BODY`] before the first try. If it ends
//! within that bound it is kept ([`RequestBody::Buffered`]) and each try sends a copy, so
//! the request can be retried. A longer body is streamed: the part already read, then the
//! rest as it arrives ([`RequestBody::Streamed`]); it can be sent once, so such a request is
//! never retried.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The most of a request body the proxy holds to be able to retry it.
pub const MAX_BUFFERED_BODY: usize = 64 * 1024;

/// A request body after the proxy has read what it will hold.
#[derive(Debug)]
pub enum RequestBody {
    /// The whole body: sendable any number of times.
    Buffered {
        data: Vec<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// Longer than the bound: sendable once (`None` once sent).
    Streamed(Option<UpstreamBody>),
}

impl RequestBody {
    /// Reads `body` up to `limit` bytes; an error of the caller's connection is returned.
    /// A body declared longer than `limit` (`content-length`) is not read at all, nor is
    /// any body when `limit` is 0 (unless it is already known to be empty).
    pub async fn read(mut body: Incoming, limit: usize) -> Result<Self, hyper::Error> {
        if body.is_end_stream() {
            return Ok(RequestBody::Buffered {
                data: Vec::new(),
                trailers: None,
            });
        }
        if limit == 0 || body.size_hint().lower() > limit as u64 {
            return Ok(RequestBody::Streamed(Some(UpstreamBody::Stream {
                prefix: VecDeque::new(),
                rest: body,
            })));
        }
        let mut data = Vec::new();
        let mut len = 0;
        let mut trailers = None;
        while len <= limit {
            let Some(frame) = body.frame().await else {
                return Ok(RequestBody::Buffered { data, trailers });
            };
            match frame?.into_data() {
                Ok(chunk) => {
                    len += chunk.len();
                    data.push(chunk);
                }
                Err(frame) => trailers = frame.into_trailers().ok(),
            }
        }
        Ok(RequestBody::Streamed(Some(UpstreamBody::Stream {
            prefix: data.into(),
            rest: body,
        })))
    }

    /// Whether a try may be repeated with this body.
    pub fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered { .. })
    }

    /// The body for the next try; `None` when it was streamed already.
    pub fn next_try(&mut self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Buffered { data, trailers } => Some(UpstreamBody::Replay {
                data: data.iter().cloned().collect(),
                trailers: trailers.clone(),
            }),
            RequestBody::Streamed(body) => body.take(),
        }
    }
}

/// The body of one try as sent to a backend.
#[derive(Debug)]
pub enum UpstreamBody {
    /// A copy of a buffered body.
    Replay {
        data: VecDeque<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// What was read, then the rest of the caller's body.
    Stream {
        prefix: VecDeque<Bytes>,
        rest: Incoming,
    },
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            UpstreamBody::Replay { data, trailers } => Poll::Ready(
                data.pop_front()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            UpstreamBody::Stream { prefix, rest } => match prefix.pop_front() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Replay { data, trailers } => data.is_empty() && trailers.is_none(),
            UpstreamBody::Stream { prefix, rest } => prefix.is_empty() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        let prefix = |chunks: &VecDeque<Bytes>| chunks.iter().map(|c| c.len() as u64).sum();
        match self {
            UpstreamBody::Replay { data, .. } => SizeHint::with_exact(prefix(data)),
            UpstreamBody::Stream { prefix: p, rest } => {
                let read: u64 = prefix(p);
                let more = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(read + more.lower());
                if let Some(upper) = more.upper() {
                    hint.set_upper(read + upper);
                }
                hint
            }
        }
    }
}
