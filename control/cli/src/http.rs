//! Just enough HTTP/1.1 to send one request to the agent's admin API and read its reply.
//!
//! The admin API is a handful of small JSON GETs and one JSON POST over a unix socket (or a
//! private TCP port), one request per connection. A full client (hyper, reqwest) would bring
//! an async runtime or TLS stacks into a CLI that needs neither, so this sends one request
//! with `Connection: close` and reads the reply in whichever framing the server picked:
//! `Content-Length`, `Transfer-Encoding: chunked`, or until the server closes.

use std::io::{self, BufRead, Read, Write};

/// Longest status or header line accepted. The agent's are far shorter; the bound keeps a
/// wrong port that streams something else from filling memory one "line" at a time.
const MAX_LINE_BYTES: u64 = 16 * 1024;

/// Most header lines accepted, for the same reason.
const MAX_HEADERS: usize = 100;

/// Largest body accepted (256 MiB): far above any admin reply a table could show.
pub const MAX_BODY_BYTES: u64 = 256 << 20;

/// A reply: status, headers in the order received, and the body with framing removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a GET failed: the connection broke, or what came back is not HTTP/1.x.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("{0}")]
    Malformed(String),
}

fn malformed<T>(reason: impl Into<String>) -> Result<T, HttpError> {
    Err(HttpError::Malformed(reason.into()))
}

/// Sends `GET path` on `stream` and reads the whole reply.
///
/// `host` goes in the `Host` header (HTTP/1.1 requires one; over a unix socket any name
/// does). With a `token`, an `Authorization: Bearer` header is sent. The caller must have
/// checked that `path` and `token` hold no CR or LF.
pub fn get<S: Read + Write>(
    stream: S,
    host: &str,
    path: &str,
    token: Option<&str>,
) -> Result<HttpResponse, HttpError> {
    request(stream, "GET", host, path, token, None)
}

/// Sends `POST path` with the JSON document `json_body` (as `Content-Type:
/// application/json` with its `Content-Length`) and reads the whole reply. Otherwise as
/// [`get`].
pub fn post_json<S: Read + Write>(
    stream: S,
    host: &str,
    path: &str,
    token: Option<&str>,
    json_body: &str,
) -> Result<HttpResponse, HttpError> {
    request(stream, "POST", host, path, token, Some(json_body))
}

fn request<S: Read + Write>(
    mut stream: S,
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    json_body: Option<&str>,
) -> Result<HttpResponse, HttpError> {
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\n\
         User-Agent: sockmesh-cli/{}\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(token) = token {
        request.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = json_body {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(json_body.unwrap_or_default());
    // One write: the request is tiny, and a server may reply as soon as it has the head.
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    read_response(io::BufReader::new(stream))
}

/// Reads one reply (status line, headers, body) from `reader`.
pub fn read_response<R: BufRead>(mut reader: R) -> Result<HttpResponse, HttpError> {
    // An agent that accepts and then dies (or a socket file left by one) closes at once.
    if reader.fill_buf()?.is_empty() {
        return malformed("the connection closed before any reply");
    }
    let status_line = read_line(&mut reader, "status line")?;
    let (status, reason) = parse_status_line(&status_line)?;
    let mut headers = Vec::new();
    loop {
        let line = read_line(&mut reader, "headers")?;
        if line.is_empty() {
            break;
        }
        if headers.len() == MAX_HEADERS {
            return malformed(format!("more than {MAX_HEADERS} header lines"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return malformed(format!("header line without ':': {line:?}"));
        };
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let mut response = HttpResponse {
        status,
        reason,
        headers,
        body: Vec::new(),
    };
    // These statuses never carry a body, whatever the headers say (RFC 9112 section 6.3).
    if (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(response);
    }
    response.body = if is_chunked(&response) {
        read_chunked(&mut reader)?
    } else if let Some(length) = content_length(&response)? {
        read_exact_body(&mut reader, length)?
    } else {
        // Neither framing: the body runs until the server closes, which `Connection: close`
        // lets it do.
        read_capped(&mut reader, MAX_BODY_BYTES + 1)?
    };
    if response.body.len() as u64 > MAX_BODY_BYTES {
        return malformed(format!("body larger than {MAX_BODY_BYTES} bytes"));
    }
    Ok(response)
}

fn parse_status_line(line: &str) -> Result<(u16, String), HttpError> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let code = parts.next().unwrap_or_default();
    let reason = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return malformed(format!("not an HTTP/1.x status line: {line:?}"));
    }
    match code.parse::<u16>() {
        Ok(status) if code.len() == 3 && (100..600).contains(&status) => {
            Ok((status, reason.to_owned()))
        }
        _ => malformed(format!("bad status code in {line:?}")),
    }
}

/// `chunked` is always the last coding when present (RFC 9112 section 6.1); it wins over
/// any `Content-Length`.
fn is_chunked(response: &HttpResponse) -> bool {
    response
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("transfer-encoding"))
        .flat_map(|(_, v)| v.split(','))
        .last()
        .is_some_and(|coding| coding.trim().eq_ignore_ascii_case("chunked"))
}

fn content_length(response: &HttpResponse) -> Result<Option<u64>, HttpError> {
    let mut length = None;
    for (name, value) in &response.headers {
        if !name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        let Ok(this) = value.parse::<u64>() else {
            return malformed(format!("bad Content-Length {value:?}"));
        };
        // Repeated but equal values are allowed; differing ones make the body's end unknown.
        if length.is_some_and(|first| first != this) {
            return malformed("conflicting Content-Length headers");
        }
        length = Some(this);
    }
    Ok(length)
}

fn read_exact_body<R: BufRead>(reader: &mut R, length: u64) -> Result<Vec<u8>, HttpError> {
    if length > MAX_BODY_BYTES {
        return malformed(format!(
            "body of {length} bytes is larger than {MAX_BODY_BYTES}"
        ));
    }
    let body = read_capped(reader, length)?;
    if (body.len() as u64) < length {
        return malformed(format!(
            "connection closed after {} of {length} body bytes",
            body.len()
        ));
    }
    Ok(body)
}

fn read_chunked<R: BufRead>(reader: &mut R) -> Result<Vec<u8>, HttpError> {
    let mut body = Vec::new();
    loop {
        let line = read_line(reader, "chunk size")?;
        // Chunk extensions (`;name=value`) carry nothing this client needs.
        let size = line.split(';').next().unwrap_or_default().trim();
        let Ok(size) = u64::from_str_radix(size, 16) else {
            return malformed(format!("bad chunk size line {line:?}"));
        };
        if size == 0 {
            break;
        }
        // Compared against what is left, never summed: a size near u64::MAX after a first
        // chunk would overflow the sum (a panic in debug builds; in release the wrapped sum
        // passed the check and the chunk was read uncapped, until the peer stopped).
        if size > MAX_BODY_BYTES - body.len() as u64 {
            return malformed(format!("body larger than {MAX_BODY_BYTES} bytes"));
        }
        let chunk = read_capped(reader, size)?;
        if (chunk.len() as u64) < size {
            return malformed(format!(
                "connection closed inside a chunk ({} of {size} bytes)",
                chunk.len()
            ));
        }
        body.extend_from_slice(&chunk);
        if !read_line(reader, "chunk end")?.is_empty() {
            return malformed("chunk longer than its size line says");
        }
    }
    // Trailer fields, up to the blank line that ends the message; none matter here.
    for _ in 0..=MAX_HEADERS {
        if read_line(reader, "trailers")?.is_empty() {
            return Ok(body);
        }
    }
    malformed(format!("more than {MAX_HEADERS} trailer lines"))
}

/// Reads up to `limit` bytes, fewer only if the stream ends first. `take` keeps a huge
/// announced length from being allocated up front.
fn read_capped<R: Read>(reader: &mut R, limit: u64) -> Result<Vec<u8>, HttpError> {
    let mut buf = Vec::new();
    reader.take(limit).read_to_end(&mut buf)?;
    Ok(buf)
}

/// One CRLF- (or bare LF-) terminated line, without its terminator. `what` names the part
/// of the message in the error when the stream ends early.
fn read_line<R: BufRead>(reader: &mut R, what: &str) -> Result<String, HttpError> {
    let mut line = Vec::new();
    reader
        .by_ref()
        .take(MAX_LINE_BYTES + 1)
        .read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        if line.len() as u64 > MAX_LINE_BYTES {
            return malformed(format!(
                "line in the {what} longer than {MAX_LINE_BYTES} bytes"
            ));
        }
        return malformed(format!("connection closed in the {what}"));
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).or_else(|_| malformed(format!("non-UTF-8 bytes in the {what}")))
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
