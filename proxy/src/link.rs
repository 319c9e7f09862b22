//! The link between the agent and its proxy: a unix stream socket the agent listens on
//! (`<state-dir>/proxy.sock`, mode 0600), the proxy connects to.
//!
//! - The agent owns the proxy's listening sockets and hands them over with `SCM_RIGHTS`
//!   ([`send_fds`], [`recv_fds`]) right after the proxy's [`ToAgent::Hello`]. A listener
//!   outlives any one proxy process, so a restarting proxy never leaves a connect without
//!   a listener: the kernel queues connections in the backlog until a proxy accepts them.
//! - Then length-prefixed JSON frames ([`write_frame`], [`read_frame`]: a 4-byte
//!   big-endian length, then that many bytes, at most [`MAX_FRAME`]): the agent sends
//!   [`ToProxy::Targets`] (every http service with its backends and their health) at
//!   connect and on every change, [`ToProxy::Drain`] to retire a proxy; the proxy sends
//!   [`ToAgent::Report`] with what its requests showed (tallies, ban suggestions).
//!
//! Both sides check [`LINK_VERSION`] in the hello; a mismatch closes the link.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use serde::{de::DeserializeOwned, Deserialize, Serialize};
use sockmesh_model::HttpSpec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the frames below; both sides must speak the same. 2: [`ServiceTally`] carries
/// per-backend counts ([`BackendTally`]).
pub const LINK_VERSION: u32 = 2;
/// Largest frame either side accepts: a full target set of 10,000 services with ten
/// backends each is about 10 MiB of JSON.
pub const MAX_FRAME: usize = 64 << 20;
/// Most listeners one handover carries.
pub const MAX_FDS: usize = 8;
/// Most backends one [`ServiceTally`] names; a sender counts no more backends of one service,
/// a receiver ignores rows past this many.
pub const MAX_TALLY_BACKENDS: usize = 1024;

/// Agent -> proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToProxy {
    /// The whole set of http services: replaces the previous one.
    Targets(Targets),
    /// Stop accepting, finish the requests in flight (bounded), then exit.
    Drain,
}

/// Every http service the proxy serves, by the id the kernel stamps.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Targets {
    /// Increases with every set the agent sends.
    pub generation: u64,
    pub services: Vec<TargetService>,
    /// Workload names: the kernel's workload `w` (index + 1) is `workloads[w - 1]`.
    pub workloads: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetService {
    /// The service id in the kernel's tables (the stamp's `service_id`).
    pub id: u32,
    pub name: String,
    pub http: HttpSpec,
    pub backends: Vec<TargetBackend>,
    /// The thresholds of the service's `request_latency` SLOs, in microseconds, sorted
    /// and distinct: the proxy counts the requests within each ([`ServiceTally::within`]).
    #[serde(default)]
    pub latency_thresholds_us: Vec<u64>,
    /// `outlier.consecutive_5xx`: failed tries in a row that ask for a ban (0: never).
    #[serde(default = "default_consecutive_5xx")]
    pub consecutive_5xx: u32,
    /// A service with caller routes or a zone preference: each caller class's weights, as
    /// the kernel's slot tables hold them (class 0: every caller without a class of its
    /// own). Empty: every caller uses the backends' own weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<TargetClass>,
}

/// The backends one class of callers of a service gets (its `routes:` and `locality:`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetClass {
    /// The kernel's workload number of the callers (workload index + 1), 0 for the rest.
    pub workload: u32,
    /// Per backend of the service, in order: its weight for these callers (0: never).
    pub weights: Vec<u32>,
}

fn default_consecutive_5xx() -> u32 {
    sockmesh_model::OutlierSpec::default().consecutive_5xx
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetBackend {
    pub addr: SocketAddr,
    pub weight: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// False while banned, draining or behind an open circuit (the agent's engine).
    pub eligible: bool,
}

/// Proxy -> agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    /// First frame: who connected.
    Hello { version: u32, pid: u32 },
    /// What requests showed since the last report.
    Report(ProxyReport),
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ProxyReport {
    pub services: Vec<ServiceTally>,
    pub bans: Vec<BanRequest>,
}

/// Requests of one service that ended since the last report.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ServiceTally {
    pub service: String,
    pub requests: u64,
    /// Answered 5xx (or a gRPC error status), or never answered.
    pub failed: u64,
    /// (threshold in µs, requests whose whole duration was within it), one per
    /// [`TargetService::latency_thresholds_us`] the proxy had when it counted them.
    #[serde(default)]
    pub within: Vec<(u64, u64)>,
    /// The same requests by the backend that answered them, or whose try the proxy's own
    /// gateway answer (502, 504) followed; a request no backend was tried for (503: none
    /// eligible) is in no row. At most [`MAX_TALLY_BACKENDS`] rows, sorted by address.
    #[serde(default)]
    pub backends: Vec<BackendTally>,
}

/// One backend's share of a [`ServiceTally`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendTally {
    pub backend: SocketAddr,
    pub requests: u64,
    /// Of `requests`, those that failed the service (as [`ServiceTally::failed`]).
    pub failed: u64,
    /// Of `failed`, those the proxy answered itself (502, 504) after this backend's try
    /// failed or ran out of time: the backend never answered.
    pub gateway: u64,
}

/// A backend a request rule would ban (`outlier.consecutive_5xx`, latency deviation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BanRequest {
    pub service: String,
    pub backend: SocketAddr,
    /// `consecutive_5xx` or `deviation_latency`.
    pub reason: String,
}

/// Why a link ended or a frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("link i/o: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("bad frame: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Writes one frame.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<(), LinkError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    w.write_all(&encode_frame(msg)?).await?;
    w.flush().await?;
    Ok(())
}

/// One frame as bytes (length and body), for a sender that writes the same frame to
/// several peers (the agent's targets to every connected proxy).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, LinkError> {
    let mut frame = vec![0u8; 4];
    serde_json::to_writer(&mut frame, msg)?;
    let len = frame.len() - 4;
    if len > MAX_FRAME {
        return Err(LinkError::TooLarge(len));
    }
    let len = u32::try_from(len).map_err(|_| LinkError::TooLarge(len))?;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    Ok(frame)
}

/// Reads one frame; `Ok(None)` at a clean end of stream (between frames).
pub async fn read_frame<R, T>(r: &mut R) -> Result<Option<T>, LinkError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(LinkError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}

/// Sends `fds` over a unix stream socket as `SCM_RIGHTS`, with one byte of payload.
pub fn send_fds(sock: &impl AsRawFd, fds: &[RawFd]) -> io::Result<()> {
    if fds.is_empty() || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} descriptors (1..={MAX_FDS})", fds.len()),
        ));
    }
    let payload = [b'L'];
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `space` bytes, enough for one header with `fds`.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), fd_bytes);
    }
    // SAFETY: `msg` is fully initialized above.
    let sent = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Receives the descriptors [`send_fds`] sent (blocking on the socket as it is set).
/// Descriptors beyond [`MAX_FDS`] are closed by the kernel (`MSG_CTRUNC`) and refused.
pub fn recv_fds(sock: &impl AsRawFd) -> io::Result<Vec<OwnedFd>> {
    let mut payload = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: payload.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    let fd_bytes = MAX_FDS * std::mem::size_of::<RawFd>();
    // SAFETY: pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: as in send_fds.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at live buffers; CLOEXEC so no child inherits them by accident.
    let got = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    if got == 0 {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    let mut fds = Vec::new();
    // SAFETY: walking the control buffer the kernel filled, with the libc macros.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let n = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..n {
                    let fd = std::ptr::read_unaligned((data as *const RawFd).add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("more than {MAX_FDS} descriptors sent"),
        ));
    }
    if payload[0] != b'L' || fds.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "expected the listener handover",
        ));
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[tokio::test]
    async fn frames_round_trip_and_a_clean_end_is_none() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        let hello = ToAgent::Hello {
            version: LINK_VERSION,
            pid: 7,
        };
        write_frame(&mut a, &hello).await.unwrap();
        drop(a);
        assert_eq!(read_frame::<_, ToAgent>(&mut b).await.unwrap(), Some(hello));
        assert!(read_frame::<_, ToAgent>(&mut b).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_body() {
        let (mut a, mut b) = tokio::net::UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read_frame::<_, ToAgent>(&mut b).await.unwrap_err();
        assert!(
            matches!(err, LinkError::TooLarge(n) if n == u32::MAX as usize),
            "{err}"
        );
    }

    /// Any bytes after a valid length: an error or a report, never a panic or a read past
    /// the frame; a report read back equals the one written.
    mod decode {
        use proptest::prelude::*;

        use super::*;

        fn report() -> impl Strategy<Value = ProxyReport> {
            let row = (any::<u16>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
                |(port, requests, failed, gateway)| BackendTally {
                    backend: SocketAddr::from(([127, 0, 0, 1], port)),
                    requests,
                    failed,
                    gateway,
                },
            );
            let tally = (
                "[a-z]{1,8}",
                any::<u64>(),
                any::<u64>(),
                proptest::collection::vec((any::<u64>(), any::<u64>()), 0..3),
                proptest::collection::vec(row, 0..5),
            )
                .prop_map(|(service, requests, failed, within, backends)| {
                    ServiceTally {
                        service,
                        requests,
                        failed,
                        within,
                        backends,
                    }
                });
            proptest::collection::vec(tally, 0..4).prop_map(|services| ProxyReport {
                services,
                bans: Vec::new(),
            })
        }

        fn read(bytes: &[u8]) -> Result<Option<ToAgent>, LinkError> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(read_frame(&mut &bytes[..]))
        }

        proptest! {
            #[test]
            fn reports_round_trip(r in report()) {
                let frame = encode_frame(&ToAgent::Report(r.clone())).unwrap();
                prop_assert_eq!(read(&frame).unwrap(), Some(ToAgent::Report(r)));
            }

            #[test]
            fn mangled_frames_are_refused_or_read_whole(
                r in report(),
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                cut in any::<usize>(),
            ) {
                let mut frame = encode_frame(&ToAgent::Report(r)).unwrap();
                for (at, byte) in flips {
                    let at = 4 + at % (frame.len() - 4);
                    frame[at] = byte;
                }
                let _ = read(&frame);
                frame.truncate(4 + cut % (frame.len() - 3));
                let _ = read(&frame);
            }

            #[test]
            fn arbitrary_bytes_never_panic(
                bytes in proptest::collection::vec(any::<u8>(), 0..256),
            ) {
                let _ = read(&bytes);
            }
        }
    }

    #[test]
    fn listeners_cross_the_socket_and_still_accept() {
        let (a, b) = UnixStream::pair().unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        send_fds(&a, &[listener.as_raw_fd()]).unwrap();
        drop(listener);
        let mut fds = recv_fds(&b).unwrap();
        assert_eq!(fds.len(), 1);
        let got = std::net::TcpListener::from(fds.pop().unwrap());
        assert_eq!(got.local_addr().unwrap(), addr);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        got.accept().unwrap();
    }
}
