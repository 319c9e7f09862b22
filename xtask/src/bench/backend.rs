//! The bench's backend: a small, fast request server on threads, so the numbers measure the
//! path to it (direct, sockmesh, haproxy) rather than the server.
//!
//! Protocol: the client sends [`MSG_LEN`]-byte requests; the server answers each with the
//! same bytes. A request starting with [`CLOSE`] is answered and then the server closes first,
//! so the TIME-WAIT state lands on the server side and a connect-rate client does not run
//! out of ephemeral ports to the one backend address. A request starting with [`BULK`]
//! opens a bulk transfer: the server reads until the client's end of stream and answers
//! with the number of bytes it read after the request (u64, little endian), then closes.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

pub const MSG_LEN: usize = 8;
/// First byte of a request after which the server closes the connection.
pub const CLOSE: u8 = b'c';
/// First byte of a request on a kept-alive connection.
pub const KEEP: u8 = b'k';
/// First byte of a request that starts a one-way bulk transfer (throughput).
pub const BULK: u8 = b'b';
/// Read size of the bulk sink.
const SINK_CHUNK: usize = 256 * 1024;

/// Enough accept threads that every concurrent bench connection (load generator plus
/// haproxy's side) has one; each thread serves one connection at a time.
const THREADS: usize = 32;

pub struct Backend {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Backend {
    /// Listens on `ip`, on a port the kernel picks, so parallel runs never collide.
    pub fn start(ip: &str) -> Result<Self> {
        let listener = TcpListener::bind((ip, 0)).with_context(|| format!("bind {ip}:0"))?;
        Self::serve_on(listener)
    }

    /// Listens on `addr` (the same-node comparison, which needs a known backend address).
    pub fn start_at(addr: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        Self::serve_on(listener)
    }

    fn serve_on(listener: TcpListener) -> Result<Self> {
        let addr = listener.local_addr()?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..THREADS)
            .map(|_| {
                let listener = Arc::clone(&listener);
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || accept_loop(&listener, &stop))
            })
            .collect();
        Ok(Self {
            addr,
            stop,
            threads,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Each accept thread is blocked in accept(); one connect per thread wakes it to see
        // the stop flag.
        for _ in &self.threads {
            let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((conn, _)) => {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                serve(conn);
            }
            // e.g. ECONNABORTED when a client gave up between SYN and accept.
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn serve(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    // A client that vanished mid-request must not hold an accept thread forever.
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; MSG_LEN];
    while conn.read_exact(&mut buf).is_ok() {
        if buf[0] == BULK {
            sink(&mut conn);
            break;
        }
        if conn.write_all(&buf).is_err() || buf[0] == CLOSE {
            break;
        }
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// Reads until the client shuts its side down, then answers with the byte count.
fn sink(conn: &mut TcpStream) {
    let mut chunk = vec![0u8; SINK_CHUNK];
    let mut total = 0u64;
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
    let _ = conn.write_all(&total.to_le_bytes());
}
