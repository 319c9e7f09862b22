//! What the proxy tells the agent about each request, once it has ended: the service, the
//! backend that answered, the `code` label, the duration and every try with its outcome
//! (so the agent can count the request metrics and feed the ban engine's request rules).
//!
//! A response from a backend is reported when its body ends (or the caller goes away), so a
//! gRPC status in the trailers is seen and the duration covers the whole response. A
//! response the proxy makes itself (502, 503, 504) is reported when it is made; a request
//! whose caller left before the response head, when the proxy drops it (status 499).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::code::Code;
use crate::retry::Outcome;
use crate::target::Outstanding;

/// Receives one [`Report`] per request.
pub trait Observe: Send + Sync + 'static {
    fn request_done(&self, report: &Report);
}

/// Any `Fn(&Report)` observes.
impl<F: Fn(&Report) + Send + Sync + 'static> Observe for F {
    fn request_done(&self, report: &Report) {
        self(report)
    }
}

/// Nothing is told (no metrics).
#[derive(Debug, Clone, Copy, Default)]
pub struct Ignore;

impl Observe for Ignore {
    fn request_done(&self, _report: &Report) {}
}

/// One try of a request: the backend, how it ended and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Try {
    pub backend: SocketAddr,
    pub outcome: Outcome,
    /// From sending the try to its response head, or to its failure (the backend's
    /// latency, without the body's streaming, which the caller's pace drives).
    pub elapsed: Duration,
}

/// One request, ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub service: Arc<str>,
    /// The calling workload, as [`crate::Resolve::caller`] named it; `None`: not known.
    pub caller: Option<Arc<str>>,
    /// The backend whose response the caller got; `None` when the proxy answered itself.
    pub backend: Option<SocketAddr>,
    /// The status the caller got.
    pub status: StatusCode,
    /// The `code` label: the status, or the gRPC status for a gRPC request.
    pub code: Code,
    /// From the proxy reading the request head to the response's end.
    pub duration: Duration,
    /// Every try in order, the last one included (also when it answered).
    pub tries: Vec<Try>,
    /// The `reason` label of each retry made (`retry::Outcome::reason`).
    pub retries: Vec<&'static str>,
}

/// A report waiting for its response to end.
pub(crate) struct Pending {
    pub observe: Arc<dyn Observe>,
    pub report: Report,
    pub start: Instant,
    /// Whether the request was gRPC: the code comes from `grpc-status`.
    pub grpc: bool,
    /// The report was sent.
    pub sent: bool,
}

impl Pending {
    /// Sends the report with `grpc_status` (trailer or header) as the gRPC status.
    fn finish(&mut self, grpc_status: Option<&[u8]>) {
        if std::mem::replace(&mut self.sent, true) {
            return;
        }
        if self.grpc {
            self.report.code = Code::grpc(grpc_status);
        }
        self.report.duration = self.start.elapsed();
        self.observe.request_done(&self.report);
    }

    /// Sends the report now (a response the proxy made, with this gRPC status).
    pub(crate) fn send(mut self, grpc_status: Option<&[u8]>) {
        self.finish(grpc_status)
    }
}

impl Drop for Pending {
    /// The caller went away before a response head (hyper dropped the request): reported
    /// as nginx's 499, "client closed request" (its `code` label is `4xx`); a gRPC caller's
    /// as gRPC's CANCELLED (`grpc_cancelled`), what its own side reports for a call it
    /// gave up on (its deadline, or a cancel). Neither is a server error.
    fn drop(&mut self) {
        if !self.sent {
            self.report.status = StatusCode::from_u16(CLIENT_CLOSED).expect("in range");
            self.report.code = if self.grpc {
                Code::grpc(Some(GRPC_CANCELLED))
            } else {
                Code::http(CLIENT_CLOSED)
            };
            self.grpc = false;
            self.finish(None);
        }
    }
}

/// The status a request is reported with when its caller left before the response head.
pub const CLIENT_CLOSED: u16 = 499;

/// gRPC's CANCELLED, as a `grpc-status` value.
const GRPC_CANCELLED: &[u8] = b"1";

/// A backend's response body that reports its request when it ends, and holds the try's
/// outstanding count until then.
pub(crate) struct ReportedBody {
    inner: Incoming,
    pending: Option<Pending>,
    /// `grpc-status` of a trailers-only gRPC response (in the headers).
    header_status: Option<Bytes>,
    _outstanding: Outstanding,
}

impl ReportedBody {
    pub(crate) fn new(
        inner: Incoming,
        headers: &HeaderMap,
        pending: Pending,
        outstanding: Outstanding,
    ) -> Self {
        let header_status = headers
            .get("grpc-status")
            .map(|v| Bytes::copy_from_slice(v.as_bytes()));
        Self {
            inner,
            pending: Some(pending),
            header_status,
            _outstanding: outstanding,
        }
    }

    fn finish(&mut self, trailer_status: Option<&[u8]>) {
        if let Some(mut pending) = self.pending.take() {
            pending.finish(trailer_status.or(self.header_status.as_deref()));
        }
    }
}

impl Body for ReportedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let status = trailers.get("grpc-status").map(|v| v.as_bytes().to_vec());
                    this.finish(status.as_deref());
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ReportedBody {
    /// The caller went away, or hyper stopped polling at `is_end_stream`: report anyway.
    fn drop(&mut self) {
        self.finish(None);
    }
}
