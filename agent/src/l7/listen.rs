//! The proxy's listening sockets: bound by the agent, which keeps them for as long as it
//! runs, so a proxy restart never leaves a connect without a listener (the kernel queues
//! it in the backlog until a proxy accepts); and `SM_PROXY`, where the kernel reads them.

use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use aya::maps::{Array, Map, MapData};
use sockmesh_common::{ProxyTarget, PROXY_MAP};
use tokio::sync::watch;
use tracing::warn;

/// How often a busy port is tried again.
const RETRY: Duration = Duration::from_secs(1);

/// Binds every address of `listen` on one port (the first one's, or the one the kernel
/// gives a port 0 for all). An IPv6 address the host does not have is left out with a
/// warning; any other failure (the port is taken) is retried every second until it works
/// or `stop` is set (`None`).
pub(super) async fn bind_until_free(
    listen: &[SocketAddr],
    mut stop: watch::Receiver<bool>,
) -> Option<Vec<TcpListener>> {
    let mut tries = 0u64;
    loop {
        match bind(listen) {
            Ok(l) => return Some(l),
            Err(e) => {
                if tries.is_multiple_of(30) {
                    warn!(error = %format!("{e:#}"), "cannot bind the proxy's listeners yet; retrying every second");
                }
                tries += 1;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = super::stopped(&mut stop) => return None,
        }
    }
}

fn bind(listen: &[SocketAddr]) -> Result<Vec<TcpListener>> {
    let mut port = listen.first().map_or(0, SocketAddr::port);
    let mut out = Vec::new();
    for addr in listen {
        let mut addr = *addr;
        addr.set_port(port);
        match reuseport_listener(addr) {
            Ok(l) => {
                port = l.local_addr()?.port();
                l.set_nonblocking(true)?;
                out.push(l);
            }
            Err(e) if addr.is_ipv6() && e.kind() == io::ErrorKind::AddrNotAvailable => {
                warn!(%addr, "no such IPv6 address here; the proxy listens on IPv4 only");
            }
            Err(e) => return Err(e).with_context(|| format!("binding {addr}")),
        }
    }
    anyhow::ensure!(!out.is_empty(), "no proxy listener could be bound");
    Ok(out)
}

/// A listener with `SO_REUSEPORT`: an agent that restarts while its proxy still holds the
/// previous agent's listener (handed over, so it outlives that agent) binds the same port
/// beside it, and the proxy serves both; neither start waits for the other.
fn reuseport_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// The kernel's view of `listeners`.
pub(super) fn target(listeners: &[TcpListener]) -> Result<ProxyTarget> {
    let mut t = ProxyTarget::default();
    for l in listeners {
        let addr = l.local_addr()?;
        t.port = addr.port();
        match addr {
            SocketAddr::V4(a) => t.addr4 = u32::from_ne_bytes(a.ip().octets()),
            SocketAddr::V6(a) => {
                let o = a.ip().octets();
                for (i, w) in t.addr6.iter_mut().enumerate() {
                    *w = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
                }
            }
        }
    }
    Ok(t)
}

/// Writes where the proxy listens into the pinned `SM_PROXY` map.
pub(super) fn publish(maps: &Path, listeners: &[TcpListener]) -> Result<()> {
    let path = maps.join(PROXY_MAP);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut map: Array<MapData, ProxyTarget> = Array::try_from(Map::Array(data))?;
    map.set(0, target(listeners)?, 0)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_binds_every_address_on_the_first_ones_port() {
        let listen: Vec<SocketAddr> =
            vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()];
        let l = bind(&listen).unwrap();
        let port = l[0].local_addr().unwrap().port();
        assert!(l.iter().all(|l| l.local_addr().unwrap().port() == port));
        let t = target(&l).unwrap();
        assert_eq!(t.port, port);
        assert_eq!(t.addr4, u32::from_ne_bytes([127, 0, 0, 1]));
        if l.len() == 2 {
            assert_eq!(t.addr6, [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
        }
    }

    #[test]
    fn a_second_agent_binds_beside_the_listener_a_proxy_still_holds() {
        let first = bind(&["127.0.0.1:0".parse().unwrap()]).unwrap();
        let addr = first[0].local_addr().unwrap();
        let second = bind(&[addr]).unwrap();
        assert_eq!(second[0].local_addr().unwrap(), addr);
    }

    #[tokio::test]
    async fn a_taken_port_is_retried_until_stop() {
        // Held without SO_REUSEPORT: another program's port.
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let (stop_tx, stop) = watch::channel(false);
        let listen = [taken.local_addr().unwrap()];
        let attempt = tokio::spawn(async move { bind_until_free(&listen, stop).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!attempt.is_finished());
        stop_tx.send_replace(true);
        assert!(attempt.await.unwrap().is_none());
    }
}
