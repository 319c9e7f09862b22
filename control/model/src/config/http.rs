//! HTTP services (issue 19): a service that opts in with `protocol: http` is served per
//! request by the node's L7 proxy; every other service keeps the kernel-only path.
//!
//! ```yaml
//! protocol: http               # tcp (default) | http
//! http:                        # optional, only with protocol: http
//!   timeout: 2s                # whole request, retries included (default 15s)
//!   per_try_timeout: 500ms     # one try (default: none beyond `timeout`); <= timeout
//!   retries:
//!     attempts: 2              # retries after the first try, 0..=5 (default 2)
//!     on: [connect_failure, refused_stream, "503"]   # default [connect_failure, refused_stream]
//!     budget_percent: 20       # retries at most this share of requests, 0..=100 (default 20)
//!     retry_non_idempotent: false   # also retry POST, PATCH (default false)
//!   routes:                    # <= 32, first match wins; no match: the whole service
//!     - match: {path_prefix: /v2, method: GET, headers: {x-canary: "1"}}
//!       to: {track: canary}    # backends carrying these labels; must name at least one
//! outlier: {consecutive_5xx: 5}  # joins the ban rules (default 5, 0 disables)
//! ```
//!
//! The model only defines and checks these; the decisions over them (route, retry, pick,
//! deadline) are the `sockmesh-proxy` crate's.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::duration::Span;
use super::workload::{check_labels, unique_labels};
use super::BackendSpec;

/// Most HTTP routes one service may have: each request walks them in order.
pub const MAX_HTTP_ROUTES: usize = 32;
/// Most headers one route may match on.
pub const MAX_ROUTE_HEADERS: usize = 8;
/// Longest path in a route (`path_prefix`, `path_exact`).
pub const MAX_ROUTE_PATH_LEN: usize = 1024;
/// Longest header name in a route.
pub const MAX_HEADER_NAME_LEN: usize = 64;
/// Longest header value in a route.
pub const MAX_HEADER_VALUE_LEN: usize = 256;
/// Longest method in a route (the longest registered method, `UPDATEREDIRECTREF`, is 17).
pub const MAX_METHOD_LEN: usize = 20;
/// Most retries after the first try: more only multiplies load on a failing service.
pub const MAX_RETRY_ATTEMPTS: u32 = 5;
/// Most entries in `retries.on`.
pub const MAX_RETRY_CONDITIONS: usize = 16;

/// How the mesh carries a service's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Kernel routing at connect(), no proxy (today's path).
    #[default]
    Tcp,
    /// Connections go to the node's L7 proxy, which routes, retries and times out requests.
    Http,
}

impl Protocol {
    /// The name used in config files.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Http => "http",
        }
    }
}

/// The request policy of an http service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    /// The whole request, retries included.
    #[serde(
        default = "default_timeout",
        skip_serializing_if = "is_default_timeout"
    )]
    pub timeout: Span,
    /// One try; absent: a try may take the whole `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Span>,
    /// When a failed try is tried again, on another backend.
    #[serde(default, skip_serializing_if = "super::is_default")]
    pub retries: RetrySpec,
    /// Request routes to backend subsets; first match wins, no match: the whole service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<HttpRouteSpec>,
}

impl Default for HttpSpec {
    fn default() -> Self {
        Self {
            timeout: default_timeout(),
            per_try_timeout: None,
            retries: RetrySpec::default(),
            routes: Vec::new(),
        }
    }
}

/// Envoy's default route timeout: long enough for ordinary APIs, short enough that a hung
/// backend does not hold a client forever.
fn default_timeout() -> Span {
    Span::secs(15)
}

fn is_default_timeout(v: &Span) -> bool {
    *v == default_timeout()
}

/// Retries of failed tries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySpec {
    /// Retries after the first try (Istio's meaning of `attempts`): at most `1 + attempts`
    /// tries per request.
    pub attempts: u32,
    /// Which outcomes of a try are retried.
    pub on: Vec<RetryOn>,
    /// Retries may add at most this percent to the requests of a recent window (plus a
    /// small floor per second), so retries cannot turn an outage into an overload.
    pub budget_percent: u32,
    /// Also retry requests whose method is not idempotent (POST, PATCH).
    pub retry_non_idempotent: bool,
}

impl Default for RetrySpec {
    /// Retries only what never reached the application (safe for any request), within
    /// Linkerd's default budget of 20 %.
    fn default() -> Self {
        Self {
            attempts: 2,
            on: vec![RetryOn::ConnectFailure, RetryOn::RefusedStream],
            budget_percent: 20,
            retry_non_idempotent: false,
        }
    }
}

/// An outcome of a try that `retries.on` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RetryOn {
    /// The connection to the backend failed (refused, timed out, unreachable): the request
    /// was never sent.
    ConnectFailure,
    /// HTTP/2 REFUSED_STREAM (or a GOAWAY that excludes the stream): never processed.
    RefusedStream,
    /// The connection or stream was reset after the request was sent, before a response.
    Reset,
    /// The try ran out of `per_try_timeout`.
    PerTryTimeout,
    /// A 502, 503 or 504 response.
    GatewayError,
    /// Any 5xx response.
    Status5xx,
    /// This status code (400..=599).
    Status(u16),
}

impl RetryOn {
    const NAMED: [(&'static str, RetryOn); 6] = [
        ("connect_failure", RetryOn::ConnectFailure),
        ("refused_stream", RetryOn::RefusedStream),
        ("reset", RetryOn::Reset),
        ("per_try_timeout", RetryOn::PerTryTimeout),
        ("gateway_error", RetryOn::GatewayError),
        ("5xx", RetryOn::Status5xx),
    ];
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryOn::Status(code) => write!(f, "{code}"),
            named => {
                let (name, _) = RetryOn::NAMED
                    .iter()
                    .find(|(_, n)| n == named)
                    .expect("every other condition has a name");
                f.write_str(name)
            }
        }
    }
}

impl FromStr for RetryOn {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if let Some((_, on)) = RetryOn::NAMED.iter().find(|(name, _)| *name == s) {
            return Ok(*on);
        }
        match s.parse::<u16>() {
            Ok(code) if s.len() == 3 && (400..=599).contains(&code) => Ok(RetryOn::Status(code)),
            Ok(_) if s.bytes().all(|b| b.is_ascii_digit()) => Err(format!(
                "status {s} cannot be retried on: give a status from 400 to 599"
            )),
            _ => Err(format!(
                "unknown retry condition {s:?}: use connect_failure, refused_stream, reset, \
                 per_try_timeout, gateway_error, 5xx or a status code like \"503\""
            )),
        }
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RetryOn {
    /// A name, or a status code quoted (`"503"`) or not (`503`).
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OnVisitor;
        impl Visitor<'_> for OnVisitor {
            type Value = RetryOn;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a retry condition or a status code")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RetryOn, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RetryOn, E> {
                v.to_string().parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RetryOn, E> {
                v.to_string().parse().map_err(E::custom)
            }
        }
        d.deserialize_any(OnVisitor)
    }
}

/// One request route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRouteSpec {
    /// What a request must have; absent or `{}`: every request.
    #[serde(rename = "match", default, skip_serializing_if = "super::is_default")]
    pub matches: HttpMatch,
    /// The backends matching requests go to: those carrying all of these labels.
    #[serde(deserialize_with = "unique_labels")]
    pub to: BTreeMap<String, String>,
}

/// The request attributes a route matches; every given one must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpMatch {
    /// The path starts with this (byte-wise; `/v2` also matches `/v20`, write `/v2/` to
    /// mean the folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_prefix: Option<String>,
    /// The path is exactly this (query excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_exact: Option<String>,
    /// The method, as sent (methods are case-sensitive: `GET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Headers by lowercase name, each with exactly this value.
    #[serde(
        default,
        deserialize_with = "unique_labels",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub headers: BTreeMap<String, String>,
}

type Fail = (String, String);

fn fail<T>(field: impl Into<String>, reason: impl Into<String>) -> Result<T, Fail> {
    Err((field.into(), reason.into()))
}

/// Checks a service's protocol, `http:` block and `outlier.consecutive_5xx`; (field below
/// the service, reason) of the first rule broken.
pub(super) fn check(
    protocol: Protocol,
    http: Option<&HttpSpec>,
    consecutive_5xx: u32,
    backends: &[BackendSpec],
) -> Result<(), Fail> {
    if protocol == Protocol::Tcp {
        if http.is_some() {
            return fail("http", "an http block needs protocol: http");
        }
        if consecutive_5xx != super::policy::DEFAULT_CONSECUTIVE_5XX {
            return fail(
                "outlier.consecutive_5xx",
                "counts HTTP responses, so it needs protocol: http",
            );
        }
        return Ok(());
    }
    let Some(http) = http else { return Ok(()) };
    if http.timeout.0.is_zero() {
        return fail("http.timeout", "must be longer than 0");
    }
    if let Some(per_try) = http.per_try_timeout {
        if per_try.0.is_zero() {
            return fail("http.per_try_timeout", "must be longer than 0");
        }
        if per_try > http.timeout {
            return fail(
                "http.per_try_timeout",
                format!("{per_try} is longer than timeout {}", http.timeout),
            );
        }
    }
    check_retries(&http.retries)?;
    if http.routes.len() > MAX_HTTP_ROUTES {
        return fail(
            "http.routes",
            format!(
                "{} routes, more than the limit of {MAX_HTTP_ROUTES}",
                http.routes.len()
            ),
        );
    }
    for (k, route) in http.routes.iter().enumerate() {
        check_route(route, backends).map_err(|(f, r)| (format!("http.routes[{k}].{f}"), r))?;
    }
    Ok(())
}

fn check_retries(retries: &RetrySpec) -> Result<(), Fail> {
    if retries.attempts > MAX_RETRY_ATTEMPTS {
        return fail(
            "http.retries.attempts",
            format!(
                "{} is above the limit of {MAX_RETRY_ATTEMPTS}",
                retries.attempts
            ),
        );
    }
    if retries.budget_percent > 100 {
        return fail("http.retries.budget_percent", "must be between 0 and 100");
    }
    if retries.on.len() > MAX_RETRY_CONDITIONS {
        return fail(
            "http.retries.on",
            format!(
                "{} conditions, more than the limit of {MAX_RETRY_CONDITIONS}",
                retries.on.len()
            ),
        );
    }
    for (j, on) in retries.on.iter().enumerate() {
        if retries.on[..j].contains(on) {
            return fail(
                format!("http.retries.on[{j}]"),
                format!("{on} is listed twice"),
            );
        }
    }
    Ok(())
}

/// (field below the route, reason).
fn check_route(route: &HttpRouteSpec, backends: &[BackendSpec]) -> Result<(), Fail> {
    let m = &route.matches;
    if m.path_prefix.is_some() && m.path_exact.is_some() {
        return fail("match", "give either path_prefix or path_exact, not both");
    }
    for (field, path) in [
        ("path_prefix", &m.path_prefix),
        ("path_exact", &m.path_exact),
    ] {
        if let Some(path) = path {
            check_path(path).map_err(|r| (format!("match.{field}"), r))?;
        }
    }
    if let Some(method) = &m.method {
        let token = method.bytes().all(|b| b.is_ascii_uppercase() || b == b'-');
        if method.is_empty() || method.len() > MAX_METHOD_LEN || !token {
            return fail(
                "match.method",
                format!("invalid method {method:?}: use an uppercase method like GET"),
            );
        }
    }
    if m.headers.len() > MAX_ROUTE_HEADERS {
        return fail(
            "match.headers",
            format!(
                "{} headers, more than the limit of {MAX_ROUTE_HEADERS}",
                m.headers.len()
            ),
        );
    }
    for (name, value) in &m.headers {
        check_header_name(name).map_err(|r| ("match.headers".to_owned(), r))?;
        check_header_value(value).map_err(|r| (format!("match.headers.{name}"), r))?;
    }
    check_labels("to", &route.to)?;
    if !backends.iter().any(|b| b.selected_by(&route.to)) {
        return fail(
            "to",
            "no backend carries these labels: the route could never send a request",
        );
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with '/'"));
    }
    if path.len() > MAX_ROUTE_PATH_LEN {
        return Err(format!(
            "path is {} bytes, more than the limit of {MAX_ROUTE_PATH_LEN}",
            path.len()
        ));
    }
    // What a request line can carry in its path: visible ASCII, no '?' (queries are not
    // matched) and no '#'.
    if let Some(c) = path
        .chars()
        .find(|&c| !c.is_ascii_graphic() || c == '?' || c == '#')
    {
        return Err(format!("path {path:?} contains {c:?}"));
    }
    Ok(())
}

/// A header name as routes hold it: an RFC 9110 token in lowercase (the proxy compares
/// names case-insensitively; HTTP/2 sends them lowercase).
pub fn check_header_name(name: &str) -> Result<(), String> {
    let tchar =
        |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || name.len() > MAX_HEADER_NAME_LEN || !name.bytes().all(tchar) {
        return Err(format!(
            "invalid header name {name:?}: use 1 to {MAX_HEADER_NAME_LEN} lowercase letters, \
             digits or '-'"
        ));
    }
    Ok(())
}

fn check_header_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_HEADER_VALUE_LEN {
        return Err(format!(
            "header value is {} bytes, more than the limit of {MAX_HEADER_VALUE_LEN}",
            value.len()
        ));
    }
    let visible = |c: char| c.is_ascii_graphic() || c == ' ';
    if !value.chars().all(visible) || value.starts_with(' ') || value.ends_with(' ') {
        return Err(format!(
            "invalid header value {value:?}: visible ASCII, no leading or trailing space"
        ));
    }
    Ok(())
}
