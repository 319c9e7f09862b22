//! A stand-in for the agent's admin API: a real listener (unix socket in a temp dir, or
//! 127.0.0.1:0) on a thread, answering each request target with canned bytes, and keeping
//! every request it received (head and body) so tests can check what the client sent.

#![allow(dead_code)] // Each test crate uses a different part of it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the fake agent does for one request target.
#[derive(Clone)]
pub enum Reply {
    /// Writes these bytes, then closes.
    Raw(Vec<u8>),
    /// Reads the request, then sits on the connection without answering.
    Hang,
}

pub struct FakeAgent {
    /// Set for a unix-socket agent.
    pub socket: Option<PathBuf>,
    /// Set for a TCP agent.
    pub addr: Option<SocketAddr>,
    /// Every request received (head, then body), in order.
    pub requests: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl FakeAgent {
    /// Serves `routes` on `admin.sock` in a fresh temp dir.
    pub fn unix(routes: Vec<(&str, Reply)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared::new(routes, None, requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                shared.serve(stream.unwrap());
            }
        });
        FakeAgent {
            socket: Some(socket),
            addr: None,
            requests,
            _dir: Some(dir),
        }
    }

    /// Serves `routes` on 127.0.0.1, answering 401 unless `Authorization: Bearer <token>`.
    pub fn tcp(routes: Vec<(&str, Reply)>, token: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared::new(routes, Some(token.to_owned()), requests.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                shared.serve(stream.unwrap());
            }
        });
        FakeAgent {
            socket: None,
            addr: Some(addr),
            requests,
            _dir: None,
        }
    }

    pub fn last_request(&self) -> String {
        self.requests
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

struct Shared {
    routes: HashMap<String, Reply>,
    token: Option<String>,
    requests: Arc<Mutex<Vec<String>>>,
}

impl Shared {
    fn new(
        routes: Vec<(&str, Reply)>,
        token: Option<String>,
        requests: Arc<Mutex<Vec<String>>>,
    ) -> Self {
        Shared {
            routes: routes.into_iter().map(|(p, r)| (p.to_owned(), r)).collect(),
            token,
            requests,
        }
    }

    /// One request per connection, as the client sends `Connection: close`.
    fn serve<S: Read + Write>(&self, mut stream: S) {
        let Some(request) = read_request(&mut stream) else {
            return;
        };
        self.requests.lock().unwrap().push(request.clone());
        let head = request.split_once("\r\n\r\n").map_or("", |(head, _)| head);
        let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let authorized = match &self.token {
            None => true,
            Some(token) => {
                format!("{head}\r\n").contains(&format!("\r\nAuthorization: Bearer {token}\r\n"))
            }
        };
        let reply = if !authorized {
            Reply::Raw(json_reply(
                "401 Unauthorized",
                r#"{"error":"unauthorized"}"#,
            ))
        } else {
            self.routes.get(&target).cloned().unwrap_or_else(|| {
                // What the pre-issue-3 agent answers for any path it does not know.
                Reply::Raw(
                    b"HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 22\r\n\r\ntry /ready or /status\n"
                        .to_vec(),
                )
            })
        };
        match reply {
            Reply::Raw(bytes) => {
                let _ = stream.write_all(&bytes);
            }
            Reply::Hang => std::thread::sleep(Duration::from_secs(3)),
        }
    }
}

/// The request line and headers, up to the blank line, then the `Content-Length` bytes of
/// body a POST carries (read before replying, as the agent does: closing a TCP socket with
/// unread bytes resets it, and the client could lose the reply).
fn read_request<S: Read>(stream: S) -> Option<String> {
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        request.push_str(&line);
        if line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    request.push_str(&String::from_utf8(body).ok()?);
    Some(request)
}

/// The body of a recorded request (what follows the blank line).
pub fn body_of(request: &str) -> &str {
    request.split_once("\r\n\r\n").map_or("", |(_, body)| body)
}

/// A reply framed with `Content-Length`, as hyper sends a `Full` body.
pub fn json_reply(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A reply framed with `Transfer-Encoding: chunked`, in chunks of `size` bytes, as hyper
/// sends a streamed body.
pub fn chunked_reply(status: &str, body: &str, size: usize) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
    )
    .into_bytes();
    for chunk in body.as_bytes().chunks(size) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

pub fn ok(body: &str) -> Reply {
    Reply::Raw(json_reply("200 OK", body))
}

pub fn ok_chunked(body: &str) -> Reply {
    Reply::Raw(chunked_reply("200 OK", body, 7))
}

pub fn not_found(body: &str) -> Reply {
    Reply::Raw(json_reply("404 Not Found", body))
}

pub fn bad_request(body: &str) -> Reply {
    Reply::Raw(json_reply("400 Bad Request", body))
}
