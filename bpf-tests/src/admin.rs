//! Just enough HTTP/1.1 to GET the agent's admin API over its unix socket, and plain-text or
//! JSON answers over TCP (the agent's `/metrics`, a Prometheus server's query API). A full
//! HTTP client would be one more dependency for a few endpoints that answer small bodies.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Status code and body of one admin API answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` on the unix socket `socket`, with `Connection: close` so the answer ends at
/// EOF. Handles both `Content-Length` and chunked bodies.
pub fn http_get(socket: &Path, path: &str, timeout: Duration) -> Result<HttpResponse> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to admin socket {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    exchange(stream, "sockmesh-agent", path)
}

/// `GET path` on `addr` over TCP, the same way as [`http_get`]. `path` must already be
/// percent-encoded (see [`percent_encode`]).
pub fn http_get_tcp(addr: SocketAddr, path: &str, timeout: Duration) -> Result<HttpResponse> {
    let stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    exchange(stream, &addr.to_string(), path)
}

/// Encodes everything but RFC 3986 unreserved characters, for query parameters (PromQL is
/// full of `{`, `"` and `=`).
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn exchange(mut stream: impl Read + Write, host: &str, path: &str) -> Result<HttpResponse> {
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    parse_response(&raw).with_context(|| format!("answer to GET {path}"))
}

fn parse_response(raw: &[u8]) -> Result<HttpResponse> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let mut lines = head.lines();
    let status_line = lines.next().context("empty answer")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name == "content-length" {
            length = value.parse::<usize>().ok();
        }
    }
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(n) = length {
        if body.len() < n {
            bail!("body has {} of {n} bytes", body.len());
        }
        body.truncate(n);
    }
    Ok(HttpResponse {
        status,
        body: String::from_utf8(body).context("body is not UTF-8")?,
    })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size")?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&data[..size]);
        data = data.get(size + 2..).unwrap_or(&[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_body() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nready\nxx").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "ready\n"));
    }

    #[test]
    fn parses_chunked_body() {
        let raw = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
                    3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw).unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "abcde"));
    }

    #[test]
    fn percent_encodes_promql() {
        assert_eq!(
            percent_encode(r#"sum(x{a="b"})"#),
            "sum%28x%7Ba%3D%22b%22%7D%29"
        );
    }

    #[test]
    fn body_until_eof_without_length() {
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n{}").unwrap();
        assert_eq!(r.body, "{}");
    }
}
