//! The link's I/O steps, each bounded: the handshake (connect, hello, the listeners by
//! `SCM_RIGHTS`), the frame reader, and turning a handed-over descriptor into a listener.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::unix::OwnedReadHalf;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::mpsc;

use super::LinkConfig;
use crate::link::{read_frame, recv_fds, write_frame, LinkError, ToAgent, ToProxy, LINK_VERSION};

/// `fut` within `limit`; running out is an i/o timeout.
pub(super) async fn bounded<T>(
    limit: Duration,
    fut: impl Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(done) => done,
        Err(_) => Err(LinkError::Io(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the agent did not answer within {limit:?}"),
        ))),
    }
}

/// Connects, says hello and receives the listeners.
pub(super) async fn handshake(
    config: &LinkConfig,
) -> Result<(UnixStream, Vec<OwnedFd>), LinkError> {
    let limit = config.io_timeout;
    let connect = async { Ok(UnixStream::connect(&config.agent_socket).await?) };
    let mut stream = bounded(limit, connect).await?;
    let hello = ToAgent::Hello {
        version: LINK_VERSION,
        pid: std::process::id(),
    };
    bounded(limit, write_frame(&mut stream, &hello)).await?;
    // The socket is non-blocking: recvmsg runs when tokio sees it readable, and again on
    // EAGAIN. Nothing was read from the stream before, so the descriptors' byte is next.
    let receive = async {
        Ok(stream
            .async_io(Interest::READABLE, || recv_fds(&stream))
            .await?)
    };
    let fds = bounded(limit, receive).await?;
    Ok((stream, fds))
}

/// Reads frames into `frames` until the link ends; a bad frame is sent, then the end.
pub(super) async fn read_frames(
    mut read: OwnedReadHalf,
    frames: mpsc::Sender<Result<ToProxy, LinkError>>,
) {
    loop {
        let frame = match read_frame::<_, ToProxy>(&mut read).await {
            Ok(Some(frame)) => Ok(frame),
            // A clean end: dropping the sender tells the session.
            Ok(None) => return,
            Err(e) => Err(e),
        };
        let failed = frame.is_err();
        if frames.send(frame).await.is_err() || failed {
            return;
        }
    }
}

/// A listening TCP socket the agent handed over, as a tokio listener; anything else (a
/// socket not listening, another family, not a socket) is refused and closed.
pub fn listener_from_fd(fd: OwnedFd) -> io::Result<TcpListener> {
    let domain = sockopt(&fd, libc::SO_DOMAIN)?;
    if domain != libc::AF_INET && domain != libc::AF_INET6 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket of address family {domain}, not TCP/IP"),
        ));
    }
    if sockopt(&fd, libc::SO_TYPE)? != libc::SOCK_STREAM || sockopt(&fd, libc::SO_ACCEPTCONN)? != 1
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a listening stream socket",
        ));
    }
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// An integer `SOL_SOCKET` option of `fd`.
fn sockopt(fd: &OwnedFd, name: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live and sized for an int option.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_listening_tcp_sockets_become_listeners() {
        let listening = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listening.local_addr().unwrap();
        let got = listener_from_fd(OwnedFd::from(listening)).unwrap();
        assert_eq!(got.local_addr().unwrap(), addr);

        let connected = std::net::TcpStream::connect(addr).unwrap();
        assert!(listener_from_fd(OwnedFd::from(connected)).is_err());
        let (unix, _peer) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(listener_from_fd(OwnedFd::from(unix)).is_err());
        let file = std::fs::File::open("/dev/null").unwrap();
        assert!(listener_from_fd(OwnedFd::from(file)).is_err());
    }
}
