//! What the router targets share: an arbitrary HTTP request built from fuzz input, the way
//! hyper hands one to a router (method, request target parsed as a `Uri`, headers, a body),
//! and the facts about it the targets check replies against.
//!
//! Input layout: byte 0 picks the method, byte 1 the path (one of the target's, or the
//! bytes up to the first `\n` when it is 0xff), byte 2 the `Authorization` header(s) and
//! the listener (its high bit: the unix socket, else TCP), byte 3
//! the body length (as given, or the body cycled to the body limit, one byte over, or 4x over);
//! then the query string up to `\n`, then `name: value` header lines up to an empty line,
//! then the body.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::Full;

/// The token the TCP listener of each router target requires.
pub const TOKEN: &str = "fuzz-token-0123456789";

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH", "OPTIONS", "get",
];

/// One request, plus what the targets need to know about it to judge the reply.
pub struct FuzzRequest {
    pub request: Request<Full<Bytes>>,
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    /// The first `Authorization` value, the one the servers read.
    pub authorization: Option<Vec<u8>>,
    pub body: Bytes,
    /// Served on the unix socket (no token required) rather than TCP: byte 2's high bit.
    pub unix: bool,
}

impl FuzzRequest {
    /// Whether the request carries exactly `Authorization: Bearer TOKEN` (first value).
    pub fn has_token(&self) -> bool {
        self.authorization.as_deref() == Some(format!("Bearer {TOKEN}").as_bytes())
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Builds the request, or `None` when hyper would have refused it before any router ran
/// (a request target or header that does not parse).
pub fn request(input: &[u8], paths: &[&str], body_limit: usize) -> Option<FuzzRequest> {
    let [m, p, a, l, rest @ ..] = input else {
        return None;
    };
    let method = Method::from_bytes(METHODS[usize::from(*m) % METHODS.len()].as_bytes()).ok()?;
    let (path, rest) = if *p == 0xff {
        let (path, rest) = split_line(rest);
        (path.to_vec(), rest)
    } else {
        // One more than the target's paths: a prefix no router serves.
        let i = usize::from(*p) % (paths.len() + 1);
        (
            paths.get(i).copied().unwrap_or("/v1/").as_bytes().to_vec(),
            rest,
        )
    };
    let (query, mut rest) = split_line(rest);
    let mut target = path;
    if !query.is_empty() {
        target.push(b'?');
        target.extend_from_slice(query);
    }
    // hyper parses the request target the same way.
    let uri = Uri::from_maybe_shared(Bytes::from(target)).ok()?;

    let mut builder = Request::builder().method(method.clone()).uri(uri.clone());
    let right = format!("Bearer {TOKEN}");
    let auth: Vec<Vec<u8>> = match a % 8 {
        0 => vec![],
        1 => vec![right.clone().into_bytes()],
        2 => vec![format!("{right} ").into_bytes()],
        3 => vec![format!("bearer {TOKEN}").into_bytes()],
        4 => vec![b"Bearer fuzz-token-012345678X".to_vec()],
        5 => vec![b"Bearer wrong".to_vec(), right.clone().into_bytes()],
        6 => vec![right.clone().into_bytes(), b"Bearer wrong".to_vec()],
        _ => vec![TOKEN.as_bytes().to_vec()],
    };
    for value in &auth {
        builder = builder.header(
            http::header::AUTHORIZATION,
            HeaderValue::from_bytes(value).ok()?,
        );
    }
    loop {
        let (line, next) = split_line(rest);
        rest = next;
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        builder = builder.header(name, value);
    }
    let body: Vec<u8> = match (l % 4, rest.is_empty()) {
        (0, _) | (_, true) => rest.to_vec(),
        (n, false) => {
            let len = [body_limit, body_limit + 1, 4 * body_limit][usize::from(n) - 1];
            rest.iter().copied().cycle().take(len).collect()
        }
    };
    let body = Bytes::from(body);
    let request = builder.body(Full::new(body.clone())).ok()?;
    let authorization = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes().to_vec());
    Some(FuzzRequest {
        request,
        method,
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        authorization,
        body,
        unix: a & 0x80 != 0,
    })
}
