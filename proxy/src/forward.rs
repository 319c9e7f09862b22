//! One request through the proxy: route, pick, try, classify, retry, answer.
//!
//! For each request of a service: the route picks the backend subset; the deadline is the
//! service's `timeout`, shortened by the caller's `grpc-timeout` or `x-sockmesh-timeout`;
//! the body is read up to [`crate::body::MAX_BUFFERED_BODY`] (longer: streamed, and the
//! request gets one try). Then each try: pick a backend (weighted power of two choices on
//! outstanding tries, skipping ineligible backends and those this request already tried;
//! when every eligible one was tried, any but the one that just failed), send with the
//! time left (at most `per_try_timeout`) in the deadline header, and classify the outcome.
//! A listed outcome is retried when the method, the tries left, the budget and the deadline
//! allow. The caller gets the backend's response, or one the proxy makes: 503 when no
//! backend is eligible, 504 when the time ran out, 502 when the backend failed otherwise
//! (no connection, reset, a response that does not parse); a gRPC caller gets these as
//! gRPC statuses in a Trailers-Only response (DEADLINE_EXCEEDED for 504, else UNAVAILABLE).
//!
//! Headers: hop-by-hop headers (RFC 9110 §7.6.1: `connection` and the names it lists,
//! `keep-alive`, `proxy-connection`, `transfer-encoding`, `upgrade`, `te` other than
//! `trailers`, `proxy-authorization`, `proxy-authenticate`) are removed both ways; the
//! caller's address is appended to `x-forwarded-for`; `host` is kept (set from the
//! request's authority for HTTP/2 callers). Nothing else is added or changed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};

use crate::body::RequestBody;
use crate::code::Code;
use crate::deadline::{self, Deadline, GRPC_TIMEOUT, SOCKMESH_TIMEOUT};
use crate::pick::{pick, SplitMix64};
use crate::report::{Observe, Pending, Report, ReportedBody, Try};
use crate::retry::{self, Decision, Outcome};
use crate::route::{self, RequestView, Target};
use crate::target::{Outstanding, ServiceTarget};
use crate::upstream::{classify, Upstream};

/// The body of every response the proxy sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// What every request of one proxy shares.
pub(crate) struct Forwarder {
    pub upstream: Upstream,
    pub observe: Arc<dyn Observe>,
    pub max_buffered_body: usize,
    /// Seeds each request's pick randomness (SplitMix64 spreads consecutive seeds).
    pub seed: AtomicU64,
}

/// The result of a try the proxy did not hand to the caller yet.
enum Failed {
    Response(Response<Incoming>, Outstanding),
    Error(StatusCode, &'static str),
}

impl Forwarder {
    /// Serves one request of `service` from `peer` (the workload `caller`, when known).
    pub async fn handle(
        &self,
        service: Arc<ServiceTarget>,
        caller: Option<Arc<str>>,
        peer: SocketAddr,
        request: Request<Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let (mut parts, body) = request.into_parts();
        let grpc = parts
            .headers
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let mut pending = Pending {
            observe: self.observe.clone(),
            report: Report {
                service: service.name.clone(),
                caller,
                backend: None,
                status: StatusCode::OK,
                code: Code::http(200),
                duration: Default::default(),
                tries: Vec::new(),
                retries: Vec::new(),
            },
            start,
            grpc,
            sent: false,
        };
        let (deadline, deadline_header) = request_deadline(&service, &parts.headers, start, grpc);
        let subset = match route::select(
            &service.http.routes,
            RequestView {
                method: &parts.method,
                path: parts.uri.path(),
                headers: &parts.headers,
            },
        ) {
            Target::Subset { to, .. } => Some(to.clone()),
            Target::Service => None,
        };
        prepare_headers(&mut parts.headers, &parts.uri, peer);
        if parts.method == Method::CONNECT {
            // Tunnels are not requests a backend pool can serve (and upgrades are not served).
            let status = StatusCode::METHOD_NOT_ALLOWED;
            return Ok(local(pending, status, "CONNECT is not proxied"));
        }

        let Some(left) = deadline.remaining(Instant::now()) else {
            return Ok(local(
                pending,
                StatusCode::GATEWAY_TIMEOUT,
                "deadline spent",
            ));
        };
        // Bodies of unknown length on gRPC calls may be streams the caller feeds as answers
        // come: never wait for those to end, stream them (no retry).
        let limit = if grpc && body.size_hint().upper().is_none() {
            0
        } else {
            self.max_buffered_body
        };
        let mut body = match tokio::time::timeout(left, RequestBody::read(body, limit)).await {
            Ok(Ok(body)) => body,
            Ok(Err(_)) => {
                return Ok(local(
                    pending,
                    StatusCode::BAD_REQUEST,
                    "request body failed",
                ));
            }
            Err(_) => {
                let status = StatusCode::REQUEST_TIMEOUT;
                return Ok(local(pending, status, "request body not received in time"));
            }
        };

        service.with_budget(|b| b.deposit(Instant::now()));
        let mut rng = SplitMix64(self.seed.fetch_add(1, Ordering::Relaxed));
        let per_try = service.http.per_try_timeout.map(|s| s.0);
        let mut tried: Vec<usize> = Vec::new();
        let mut last: Option<Failed> = None;
        loop {
            let now = Instant::now();
            let Some(try_budget) = deadline.try_budget(now, per_try) else {
                return Ok(local(
                    pending,
                    StatusCode::GATEWAY_TIMEOUT,
                    "request timed out",
                ));
            };
            let index = pick_backend(&service, subset.as_ref(), &tried, &mut rng);
            let Some(index) = index else {
                return Ok(match last {
                    Some(failed) => self.give_up(pending, failed),
                    None => local(pending, StatusCode::SERVICE_UNAVAILABLE, "no backend"),
                });
            };
            let backend = service.backends[index].addr;
            let Some(try_body) = body.next_try() else {
                unreachable!("a streamed body gets one try");
            };
            let mut request = Request::new(try_body);
            *request.method_mut() = parts.method.clone();
            *request.version_mut() = parts.version;
            *request.uri_mut() = backend_uri(backend, &parts.uri);
            *request.headers_mut() = parts.headers.clone();
            if let Some(value) = deadline.propagate(now, per_try) {
                let value = HeaderValue::from_str(&value).expect("digits and a unit");
                request.headers_mut().insert(deadline_header.clone(), value);
            }
            let outstanding = Outstanding::start(service.clone(), index);
            let sent_at = Instant::now();
            let sent = tokio::time::timeout(try_budget, self.upstream.send(request)).await;
            let elapsed = sent_at.elapsed();
            tried.push(index);
            let (outcome, failed) = match sent {
                Ok(Ok(response)) => {
                    let status = response.status().as_u16();
                    let outcome = Outcome::Status(status);
                    if !outcome.is_listed(&service.http.retries.on) {
                        pending.report.tries.push(Try {
                            backend,
                            outcome,
                            elapsed,
                        });
                        return Ok(self.respond(pending, response, outstanding, backend));
                    }
                    (outcome, Failed::Response(response, outstanding))
                }
                Ok(Err(error)) => {
                    let outcome = classify(&error);
                    let why = match outcome {
                        Outcome::ConnectFailure => "could not connect to a backend",
                        _ => "the backend failed before a response",
                    };
                    (outcome, Failed::Error(StatusCode::BAD_GATEWAY, why))
                }
                Err(_) => {
                    let why = "the backend did not answer in time";
                    let failed = Failed::Error(StatusCode::GATEWAY_TIMEOUT, why);
                    (Outcome::PerTryTimeout, failed)
                }
            };
            pending.report.tries.push(Try {
                backend,
                outcome,
                elapsed,
            });
            let now = Instant::now();
            let retry = if !body.replayable() || deadline.remaining(now).is_none() {
                None
            } else {
                let tries = tried.len() as u32;
                let spec = &service.http.retries;
                let decided = service
                    .with_budget(|b| retry::decide(spec, &parts.method, outcome, tries, b, now));
                match decided {
                    Decision::Retry { reason } => Some(reason),
                    Decision::GiveUp(_) => None,
                }
            };
            match retry {
                Some(reason) => {
                    pending.report.retries.push(reason);
                    last = Some(failed);
                }
                None => return Ok(self.give_up(pending, failed)),
            }
        }
    }

    /// Hands the last failure to the caller.
    fn give_up(&self, pending: Pending, failed: Failed) -> Response<ProxyBody> {
        match failed {
            Failed::Response(response, outstanding) => {
                let backend = pending
                    .report
                    .tries
                    .last()
                    .expect("a response came from a try");
                let backend = backend.backend;
                self.respond(pending, response, outstanding, backend)
            }
            Failed::Error(status, why) => local(pending, status, why),
        }
    }

    /// Hands a backend's response to the caller, reported when its body ends.
    fn respond(
        &self,
        mut pending: Pending,
        response: Response<Incoming>,
        outstanding: Outstanding,
        backend: SocketAddr,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        pending.report.backend = Some(backend);
        pending.report.status = parts.status;
        pending.report.code = Code::http(parts.status.as_u16());
        let body = ReportedBody::new(body, &parts.headers, pending, outstanding);
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// The backend for the next try: an eligible one this request has not tried; when every
/// eligible one was tried, any but the one that just failed; when that one is the only one
/// left, it again.
fn pick_backend(
    service: &ServiceTarget,
    subset: Option<&BTreeMap<String, String>>,
    tried: &[usize],
    rng: &mut SplitMix64,
) -> Option<usize> {
    pick(&service.candidates(subset, tried), rng)
        .or_else(|| {
            let just_failed = &tried[tried.len().checked_sub(1)?..];
            pick(&service.candidates(subset, just_failed), rng)
        })
        .or_else(|| (!tried.is_empty()).then(|| pick(&service.candidates(subset, &[]), rng))?)
}

/// The request's deadline and the header that carries it on.
fn request_deadline(
    service: &ServiceTarget,
    headers: &HeaderMap,
    start: Instant,
    grpc: bool,
) -> (Deadline, HeaderName) {
    let caller = match headers.get(GRPC_TIMEOUT) {
        Some(v) => deadline::parse_grpc_timeout(v.as_bytes()).ok(),
        None => headers
            .get(SOCKMESH_TIMEOUT)
            .and_then(|v| deadline::parse_sockmesh_timeout(v.as_bytes()).ok()),
    };
    let name = if grpc || headers.contains_key(GRPC_TIMEOUT) {
        GRPC_TIMEOUT
    } else {
        SOCKMESH_TIMEOUT
    };
    let deadline = Deadline::new(start, service.http.timeout.0, caller);
    (deadline, HeaderName::from_static(name))
}

/// A response the proxy makes, reported now. A gRPC caller gets it as gRPC's Trailers-Only
/// response instead (HTTP 200, `content-type: application/grpc`, `grpc-status` UNAVAILABLE,
/// or DEADLINE_EXCEEDED where others get a 504, and `grpc-message`, no body): a gRPC client
/// reads its status from a stream that ends with its headers or from trailers, so a text
/// body after a `grpc-status` header ends its call as UNKNOWN ("Data frame with END_STREAM").
fn local(mut pending: Pending, status: StatusCode, why: &str) -> Response<ProxyBody> {
    let grpc_status: &[u8] = if status == StatusCode::GATEWAY_TIMEOUT {
        b"4"
    } else {
        b"14"
    };
    let response = if pending.grpc {
        grpc_trailers_only(grpc_status, why)
    } else {
        let text = format!("sockmesh: {why}\n");
        let mut response = Response::new(full(Bytes::from(text)));
        *response.status_mut() = status;
        let text_plain = HeaderValue::from_static("text/plain");
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, text_plain);
        response
    };
    pending.report.status = response.status();
    pending.report.code = Code::http(response.status().as_u16());
    pending.report.backend = None;
    pending.send(Some(grpc_status));
    response
}

/// gRPC's Trailers-Only response: the status in the only HEADERS frame, which ends the stream.
fn grpc_trailers_only(grpc_status: &[u8], why: &str) -> Response<ProxyBody> {
    let mut response = Response::new(full(Bytes::new()));
    let headers = response.headers_mut();
    let grpc = HeaderValue::from_static("application/grpc");
    headers.insert(header::CONTENT_TYPE, grpc);
    let code = HeaderValue::from_bytes(grpc_status).expect("digits");
    headers.insert("grpc-status", code);
    // `why` is the proxy's own printable ASCII without `%`: valid as it stands in gRPC's
    // percent-encoded `grpc-message`.
    let message = HeaderValue::from_str(&format!("sockmesh: {why}")).expect("ascii");
    headers.insert("grpc-message", message);
    response
}

fn full(bytes: Bytes) -> ProxyBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// `http://backend/path?query` for a request to `uri`.
fn backend_uri(backend: SocketAddr, uri: &Uri) -> Uri {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme("http")
        .authority(backend.to_string())
        .path_and_query(path)
        .build()
        .expect("an address and a path that parsed")
}

/// The request headers a backend gets: hop-by-hop ones removed, `host` set, the caller
/// appended to `x-forwarded-for`.
fn prepare_headers(headers: &mut HeaderMap, uri: &Uri, peer: SocketAddr) {
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST) {
        if let Some(authority) = uri.authority() {
            if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                headers.insert(header::HOST, host);
            }
        }
    }
    let ip = HeaderValue::from_str(&peer.ip().to_string()).expect("an address is ascii");
    headers.append("x-forwarded-for", ip);
}

/// Removes the headers that belong to one connection, not to the message.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}
