//! The demo's backends: one listener per backend address, each answering every request with
//! its own address and counting what it answered.
//!
//! Unlike the harness's `TcpBackendSet`, each backend can be stopped and started again on its
//! own: stopping closes its listener, so connects to it are refused (RST) exactly as when a
//! backend process dies, and starting binds the same address again. Each backend has one
//! thread that accepts and answers in turn; the demo's clients make one connection at a time,
//! so nothing waits behind a slow peer for long (every read has a short timeout).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// How often the accept thread looks at its stop flag.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long a connection may take to send its request, and then to close after the answer.
const READ_TIMEOUT: Duration = Duration::from_millis(500);

/// One backend address: its counters, and its accept thread while it runs.
struct DemoBackend {
    addr: SocketAddr,
    accepts: Arc<AtomicU64>,
    served: Arc<AtomicU64>,
    running: Option<Running>,
}

struct Running {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The demo's backends, in the order their addresses were given; all stopped on drop.
pub struct DemoBackends {
    backends: Vec<DemoBackend>,
}

impl DemoBackends {
    /// Listens on each of `addrs` (127.0.0.0/8 addresses on the host).
    pub fn start(addrs: &[SocketAddr]) -> Result<Self> {
        let mut set = DemoBackends {
            backends: addrs
                .iter()
                .map(|&addr| DemoBackend {
                    addr,
                    accepts: Arc::default(),
                    served: Arc::default(),
                    running: None,
                })
                .collect(),
        };
        for &addr in addrs {
            set.resume(addr)?;
        }
        Ok(set)
    }

    /// Connections each backend accepted, in order (what the kernel delivered).
    pub fn accepts(&self) -> Vec<u64> {
        self.backends
            .iter()
            .map(|b| b.accepts.load(Ordering::SeqCst))
            .collect()
    }

    /// Requests each backend answered, in order. Unlike [`Self::accepts`] this leaves out
    /// connections that sent nothing, such as the agent's TCP probe of a banned backend.
    pub fn served(&self) -> Vec<u64> {
        self.backends
            .iter()
            .map(|b| b.served.load(Ordering::SeqCst))
            .collect()
    }

    /// Whether `addr` is listening (not killed).
    pub fn is_up(&self, addr: SocketAddr) -> bool {
        self.backends
            .iter()
            .any(|b| b.addr == addr && b.running.is_some())
    }

    /// Closes `addr`'s listener and waits until it is closed: from then on connects to it are
    /// refused. A connection the kernel had completed but the backend not yet accepted is
    /// reset, as with a crashing server.
    pub fn kill(&mut self, addr: SocketAddr) -> Result<()> {
        let backend = self.get(addr)?;
        if let Some(running) = backend.running.take() {
            running.stop.store(true, Ordering::SeqCst);
            running
                .thread
                .join()
                .map_err(|_| anyhow::anyhow!("backend {addr}: accept thread panicked"))?;
        }
        Ok(())
    }

    /// Listens on `addr` again (a no-op while it runs). Counters carry on.
    pub fn resume(&mut self, addr: SocketAddr) -> Result<()> {
        let backend = self.get(addr)?;
        if backend.running.is_some() {
            return Ok(());
        }
        // std sets SO_REUSEADDR, so the connections the old listener left in TIME_WAIT do not
        // keep the address busy.
        let listener = TcpListener::bind(addr).with_context(|| {
            format!(
                "binding backend {addr} (if the address is in use: is another demo, bench \
                 or bpf-tests run using it on this machine?)"
            )
        })?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = (backend.accepts.clone(), backend.served.clone());
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name(format!("demo backend {addr}"))
            .spawn(move || accept_loop(&listener, addr, &counters.0, &counters.1, &flag))?;
        backend.running = Some(Running { stop, thread });
        Ok(())
    }

    fn get(&mut self, addr: SocketAddr) -> Result<&mut DemoBackend> {
        match self.backends.iter_mut().find(|b| b.addr == addr) {
            Some(b) => Ok(b),
            None => bail!("{addr} is not one of the demo's backends"),
        }
    }
}

impl Drop for DemoBackends {
    fn drop(&mut self) {
        for b in &mut self.backends {
            if let Some(running) = b.running.take() {
                running.stop.store(true, Ordering::SeqCst);
                let _ = running.thread.join();
            }
        }
    }
}

/// Waits for connections with poll(2), so a stop is seen within [`STOP_POLL`] without a
/// sleep-and-retry loop delaying accepts; answers each connection before the next accept.
/// Returning drops the listener, which closes it.
fn accept_loop(
    listener: &TcpListener,
    addr: SocketAddr,
    accepts: &AtomicU64,
    served: &AtomicU64,
    stop: &AtomicBool,
) {
    let timeout_ms = i32::try_from(STOP_POLL.as_millis()).unwrap_or(i32::MAX);
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, timeout_ms) } <= 0 {
            continue;
        }
        while !stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _peer)) => {
                    accepts.fetch_add(1, Ordering::SeqCst);
                    let _ = answer(stream, addr, served);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(_) => break,
            }
        }
    }
}

/// Reads the request head, answers a minimal HTTP/1.0 response whose body is `addr`, then
/// waits for the client to close. Counts the answer in `served` before the client can see
/// its end; a connection that closes without sending anything (the agent's probe) is not
/// counted.
fn answer(mut stream: TcpStream, addr: SocketAddr, served: &AtomicU64) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > 16 * 1024 {
            break;
        }
    }
    if head.is_empty() {
        return Ok(());
    }
    let identity = format!("{addr}\n");
    let reply = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{identity}",
        identity.len()
    );
    stream.write_all(reply.as_bytes())?;
    served.fetch_add(1, Ordering::SeqCst);
    // Half-close, then read until the client closes: closing with unread data would make the
    // kernel send RST, and the client could lose the answer.
    stream.shutdown(Shutdown::Write)?;
    while stream.read(&mut buf)? > 0 {}
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn kill_refuses_and_resume_answers_again() {
        // A free port, fixed across kill and resume (port 0 would change).
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut set = DemoBackends::start(&[addr]).unwrap();
        let identity = format!("{addr}\n");
        assert!(get(addr).unwrap().ends_with(&identity));
        set.kill(addr).unwrap();
        let err = get(addr).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
        set.resume(addr).unwrap();
        assert!(get(addr).unwrap().ends_with(&identity));
        // A connection that sends nothing is accepted but not served.
        drop(TcpStream::connect(addr).unwrap());
        get(addr).unwrap();
        assert_eq!(set.served(), vec![3]);
        assert_eq!(set.accepts(), vec![4]);
    }
}
