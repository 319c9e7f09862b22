//! Echo backends whose listeners a health test can kill and restart one by one.
//!
//! A backend "dies" the way a crashed server does: its listening socket goes away, so the
//! kernel answers new SYNs with RST (the caller sees ECONNREFUSED, the mesh counts `refused`).
//! Connections it already accepted live on. Restarting binds the same address again.
//!
//! Each accepted connection gets the backend's `ip:port\n` line, then everything it sends is
//! echoed back until it closes: callers learn who answered and can hold connections open. The
//! time of every accept is kept (seconds since the epoch), the ground truth for "this backend
//! got no connection before its ban ended".

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::health_admin::unix_now;

/// How often blocked threads look at their stop flags.
const STOP_POLL: Duration = Duration::from_millis(20);
/// Echo connections check the set's stop flag this often.
const CONN_POLL: Duration = Duration::from_millis(100);

/// A running listener: its fd (to shut it down from outside), flag and accept thread.
#[derive(Debug)]
struct Listening {
    fd: RawFd,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// One backend: address, counters, and its listener while it is up.
#[derive(Debug)]
struct Slot {
    addr: SocketAddr,
    accept_times: Arc<Mutex<Vec<f64>>>,
    open: Arc<AtomicU64>,
    listening: Option<Listening>,
}

/// See the module docs. Every listener and connection stops on drop.
#[derive(Debug)]
pub struct SwitchBackends {
    slots: Vec<Slot>,
    /// The network namespace the listeners are bound in (`None`: the test's own).
    netns: Option<std::path::PathBuf>,
    /// Ends every echo connection (set on drop).
    conns_stop: Arc<AtomicBool>,
}

impl SwitchBackends {
    /// Backends on `addrs`, all listening.
    pub fn start(addrs: &[SocketAddr]) -> Result<Self> {
        Self::start_some(addrs, &vec![true; addrs.len()])
    }

    /// Backends on `addrs`; only those with `listening[i]` listen from the start (the others
    /// refuse until [`SwitchBackends::restart`]).
    pub fn start_some(addrs: &[SocketAddr], listening: &[bool]) -> Result<Self> {
        Self::start_in(None, addrs, listening)
    }

    /// [`SwitchBackends::start`] with the listeners bound inside the network namespace
    /// `netns` (a handle path, `/run/netns/NAME`), now and at every restart.
    pub fn start_in_netns(netns: &std::path::Path, addrs: &[SocketAddr]) -> Result<Self> {
        Self::start_in(Some(netns.to_owned()), addrs, &vec![true; addrs.len()])
    }

    fn start_in(
        netns: Option<std::path::PathBuf>,
        addrs: &[SocketAddr],
        listening: &[bool],
    ) -> Result<Self> {
        assert_eq!(addrs.len(), listening.len(), "one flag per backend");
        let mut set = SwitchBackends {
            slots: addrs
                .iter()
                .map(|&addr| Slot {
                    addr,
                    accept_times: Arc::default(),
                    open: Arc::default(),
                    listening: None,
                })
                .collect(),
            netns,
            conns_stop: Arc::default(),
        };
        for (i, up) in listening.iter().enumerate() {
            if *up {
                set.restart(i)?;
            }
        }
        Ok(set)
    }

    /// The backends' addresses, in order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.slots.iter().map(|s| s.addr).collect()
    }

    /// Whether backend `i` is listening.
    pub fn is_listening(&self, i: usize) -> bool {
        self.slots[i].listening.is_some()
    }

    /// Kills backend `i`'s listener: from now on connects to it are refused (RST). Returns
    /// once the socket is closed. Accepted connections stay up.
    pub fn stop(&mut self, i: usize) {
        let Some(l) = self.slots[i].listening.take() else {
            return;
        };
        // shutdown() on a listening socket stops it at once (it leaves LISTEN; new SYNs get
        // RST) and wakes the accept thread's poll; the thread then closes the fd. The fd is
        // still open here: only the thread closes it, and only after seeing the flag.
        // SAFETY: shutting down an fd we own (the thread holds the listener until joined).
        unsafe { libc::shutdown(l.fd, libc::SHUT_RDWR) };
        l.stop.store(true, Ordering::SeqCst);
        let _ = l.thread.join();
    }

    /// (Re)starts backend `i`'s listener on its address. A no-op if it is listening.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        let slot = &mut self.slots[i];
        if slot.listening.is_some() {
            return Ok(());
        }
        let addr = slot.addr;
        let bind = move || {
            TcpListener::bind(addr).with_context(|| {
                format!(
                    "binding backend {addr} (if the address is in use: is another bpf-tests \
                     run, demo or bench using it on this machine?)"
                )
            })
        };
        let listener = match &self.netns {
            Some(ns) => crate::netns::run_in(ns, bind)?,
            None => bind()?,
        };
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let fd = listener.as_raw_fd();
        let ctx = AcceptCtx {
            addr: slot.addr,
            accept_times: slot.accept_times.clone(),
            open: slot.open.clone(),
            stop: stop.clone(),
            conns_stop: self.conns_stop.clone(),
        };
        let thread = thread::Builder::new()
            .name(format!("backend {}", slot.addr))
            .spawn(move || accept_loop(listener, ctx))?;
        slot.listening = Some(Listening { fd, stop, thread });
        Ok(())
    }

    /// Connections backend `i` accepted since the set started (probes of the agent included).
    pub fn accepts(&self, i: usize) -> usize {
        self.slots[i]
            .accept_times
            .lock()
            .expect("accept times")
            .len()
    }

    /// When backend `i` accepted each connection, seconds since the epoch, in order.
    pub fn accept_times(&self, i: usize) -> Vec<f64> {
        self.slots[i]
            .accept_times
            .lock()
            .expect("accept times")
            .clone()
    }

    /// Connections of backend `i` accepted and not closed yet.
    pub fn open_connections(&self, i: usize) -> u64 {
        self.slots[i].open.load(Ordering::SeqCst)
    }

    /// The index of the backend with address `addr` (as a caller reports it).
    pub fn index_of(&self, addr: &str) -> Result<usize> {
        match self.slots.iter().position(|s| s.addr.to_string() == addr) {
            Some(i) => Ok(i),
            None => bail!("{addr} is none of the backends {:?}", self.addrs()),
        }
    }
}

impl Drop for SwitchBackends {
    fn drop(&mut self) {
        for i in 0..self.slots.len() {
            self.stop(i);
        }
        self.conns_stop.store(true, Ordering::SeqCst);
    }
}

struct AcceptCtx {
    addr: SocketAddr,
    accept_times: Arc<Mutex<Vec<f64>>>,
    open: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    conns_stop: Arc<AtomicBool>,
}

fn accept_loop(listener: TcpListener, ctx: AcceptCtx) {
    while !ctx.stop.load(Ordering::SeqCst) {
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
                Ok((stream, _)) => {
                    ctx.accept_times
                        .lock()
                        .expect("accept times")
                        .push(unix_now());
                    ctx.open.fetch_add(1, Ordering::SeqCst);
                    let (open, stop, addr) = (ctx.open.clone(), ctx.conns_stop.clone(), ctx.addr);
                    let spawned =
                        thread::Builder::new()
                            .name(format!("conn {addr}"))
                            .spawn(move || {
                                let _ = echo(stream, addr, &stop);
                                open.fetch_sub(1, Ordering::SeqCst);
                            });
                    if spawned.is_err() {
                        ctx.open.fetch_sub(1, Ordering::SeqCst);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // Shut down (EINVAL) or a transient error: the outer loop checks the flag.
                Err(_) => {
                    thread::sleep(STOP_POLL);
                    break;
                }
            }
        }
    }
}

fn echo(mut stream: TcpStream, addr: SocketAddr, stop: &AtomicBool) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_nodelay(true)?;
    stream.write_all(format!("{addr}\n").as_bytes())?;
    stream.set_read_timeout(Some(CONN_POLL))?;
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => stream.write_all(&buf[..n])?,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
