//! Held connections against an HTTP endpoint, as a slowloris client makes them: each sends
//! the start of a request (or nothing) and then waits. The test watches when the server
//! closes them, and how many descriptors the server holds meanwhile.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long one connect may take (the listener's backlog may be full for a moment).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections this process holds open against one endpoint.
#[derive(Debug)]
pub struct HeldConnections {
    streams: Vec<Option<TcpStream>>,
}

impl HeldConnections {
    /// Opens `count` connections to `addr`, writing `prefix` (half a request) on each.
    /// Raises this process's RLIMIT_NOFILE first (to the hard limit), as the caller needs
    /// `count` descriptors.
    pub fn open(addr: SocketAddr, count: usize, prefix: &[u8]) -> Result<Self> {
        let limit = sockmesh_serve::fd_limit::raise_nofile().context("raising RLIMIT_NOFILE")?;
        if limit.soft < count as u64 + 256 {
            bail!(
                "this process may open {} files; {count} connections need more",
                limit.soft
            );
        }
        let mut streams = Vec::with_capacity(count);
        for i in 0..count {
            let mut s = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
                .with_context(|| format!("connection {i} to {addr}"))?;
            if !prefix.is_empty() {
                // The server may already have closed it (evicted at its cap): then the write
                // fails, which is what the test wants to see, not an error here.
                let _ = s.write_all(prefix);
            }
            s.set_nonblocking(true)?;
            streams.push(Some(s));
        }
        Ok(HeldConnections { streams })
    }

    pub fn len(&self) -> usize {
        self.streams.len()
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Reads what is pending on every open connection; forgets those the server closed (end
    /// of stream or reset). Returns how many are still open.
    pub fn poll_open(&mut self) -> usize {
        let mut buf = [0u8; 1024];
        for slot in &mut self.streams {
            let Some(s) = slot else { continue };
            let closed = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    // A 408 or other reply before the close: keep reading.
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(_) => break true,
                }
            };
            if closed {
                *slot = None;
            }
        }
        self.streams.iter().filter(|s| s.is_some()).count()
    }

    /// Waits until the server closed every connection; returns how long that took from the
    /// call. Fails after `bound` with how many are still open.
    pub fn wait_all_closed(&mut self, bound: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let open = self.poll_open();
            if open == 0 {
                return Ok(start.elapsed());
            }
            if start.elapsed() > bound {
                bail!(
                    "{open} of {} connections still open after {bound:?}",
                    self.len()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Descriptors process `pid` has open (`/proc/PID/fd`).
pub fn fd_count(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("/proc/{pid}/fd"))?
        .count())
}

/// Process `pid`'s soft RLIMIT_NOFILE, from `/proc/PID/limits`.
pub fn nofile_soft_limit(pid: u32) -> Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .context("no `Max open files` line")?;
    let soft = line
        .split_whitespace()
        .nth(3)
        .context("no soft limit on the line")?;
    soft.parse()
        .with_context(|| format!("`Max open files` soft limit {soft:?}"))
}
