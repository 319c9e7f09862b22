//! Backends that count what reaches them and tell each client who they are.
//!
//! The accept counters are the ground truth a routing test asserts on: they count what the
//! kernel actually delivered, independent of what the client believes.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::netns::Netns;

/// How often blocked threads look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// How long an identifying backend waits for a client to close after answering.
const LINGER: Duration = Duration::from_secs(2);

/// What a backend does with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendMode {
    /// Answer a minimal HTTP/1.0 response whose body is the backend's own `ip:port\n`, then
    /// close: curl and the python client both see which backend answered.
    Identify,
    /// Send the `ip:port\n` line, then echo everything back until the client closes: for
    /// long-lived connections.
    Echo,
}

/// One listening backend and its counters.
#[derive(Debug, Clone)]
pub struct Backend {
    addr: SocketAddr,
    accepts: Arc<AtomicU64>,
    open: Arc<AtomicU64>,
}

impl Backend {
    /// The address it listens on (and names itself by).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted since start.
    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::SeqCst)
    }

    /// Connections accepted and not yet closed.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::SeqCst)
    }
}

/// A set of listening backends, each with an accept thread; stopped on drop.
#[derive(Debug)]
pub struct TcpBackendSet {
    backends: Vec<Backend>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpBackendSet {
    /// Listens on each of `addrs` (127.0.0.0/8 addresses on the host).
    pub fn start(addrs: &[SocketAddr], mode: BackendMode) -> Result<Self> {
        let listeners = addrs.iter().map(bind).collect::<Result<Vec<_>>>()?;
        Self::serve(listeners, mode)
    }

    /// Listens on each of `addrs` inside `ns` (the sockets are created there; the accept
    /// threads run anywhere).
    pub fn start_in_netns(ns: &Netns, addrs: &[SocketAddr], mode: BackendMode) -> Result<Self> {
        let addrs = addrs.to_vec();
        let listeners =
            ns.run_inside(move || addrs.iter().map(bind).collect::<Result<Vec<_>>>())?;
        Self::serve(listeners, mode)
    }

    fn serve(listeners: Vec<TcpListener>, mode: BackendMode) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut set = TcpBackendSet {
            backends: Vec::new(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for listener in listeners {
            listener.set_nonblocking(true)?;
            let backend = Backend {
                addr: listener.local_addr()?,
                accepts: Arc::default(),
                open: Arc::default(),
            };
            let (b, stop) = (backend.clone(), stop.clone());
            set.threads.push(
                thread::Builder::new()
                    .name(format!("backend {}", backend.addr))
                    .spawn(move || accept_loop(listener, b, mode, stop))?,
            );
            set.backends.push(backend);
        }
        Ok(set)
    }

    /// The backends, in the order their addresses were given.
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Their addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(Backend::addr).collect()
    }

    /// Accept counters, in order.
    pub fn accepts(&self) -> Vec<u64> {
        self.backends.iter().map(Backend::accepts).collect()
    }

    /// Accept counters keyed by backend address.
    pub fn accepts_by_addr(&self) -> BTreeMap<SocketAddr, u64> {
        self.backends
            .iter()
            .map(|b| (b.addr, b.accepts()))
            .collect()
    }

    /// Sum of all accept counters.
    pub fn total_accepts(&self) -> u64 {
        self.accepts().iter().sum()
    }
}

impl Drop for TcpBackendSet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Binds one backend; the error says what a busy port most likely means here, since every
/// test owns fixed ports.
fn bind(addr: &SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).with_context(|| {
        format!(
            "binding backend {addr} (if the address is in use: is another bpf-tests run, \
             demo or bench using it on this machine?)"
        )
    })
}

/// Waits for connections with poll(2) so the stop flag is seen within [`STOP_POLL`] without
/// delaying accepts the way a sleep-and-retry loop would.
fn accept_loop(listener: TcpListener, backend: Backend, mode: BackendMode, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut pfd, 1, STOP_POLL.as_millis() as i32) };
        if ready <= 0 {
            continue;
        }
        loop {
            match listener.accept() {
                Ok((stream, _peer)) => {
                    backend.accepts.fetch_add(1, Ordering::SeqCst);
                    backend.open.fetch_add(1, Ordering::SeqCst);
                    let (b, stop) = (backend.clone(), stop.clone());
                    let spawned = thread::Builder::new()
                        .name(format!("conn {}", backend.addr))
                        .spawn(move || {
                            let _ = handle(stream, &b, mode, &stop);
                            b.open.fetch_sub(1, Ordering::SeqCst);
                        });
                    if spawned.is_err() {
                        backend.open.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }
}

fn handle(
    mut stream: TcpStream,
    backend: &Backend,
    mode: BackendMode,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let identity = format!("{}\n", backend.addr);
    match mode {
        BackendMode::Identify => {
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
                 Connection: close\r\n\r\n{identity}",
                identity.len()
            );
            stream.write_all(reply.as_bytes())?;
            // Half-close, then read until the client closes: closing with the request still
            // unread would make the kernel send RST, and the client could lose the answer.
            stream.shutdown(Shutdown::Write)?;
            stream.set_read_timeout(Some(LINGER))?;
            let mut buf = [0u8; 1024];
            while stream.read(&mut buf)? > 0 {}
        }
        BackendMode::Echo => {
            stream.write_all(identity.as_bytes())?;
            stream.set_read_timeout(Some(STOP_POLL))?;
            let mut buf = [0u8; 4096];
            while !stop.load(Ordering::SeqCst) {
                match stream.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => stream.write_all(&buf[..n])?,
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}
