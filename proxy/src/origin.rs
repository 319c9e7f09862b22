//! Which service and caller an accepted connection is for, read from the kernel: the
//! connect hook sent an http service's connection here and, once the client side was
//! established, recorded its origin under the client socket's own 4-tuple
//! (`sockmesh_common::PROXY_ORIGINS_MAP`, see `sockmesh_common::proxy`). The proxy's accepted
//! socket sees the same tuple reversed: its peer is the client's local end.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use aya::maps::{HashMap, Map, MapData, MapError};
use sockmesh_common::{ProxyOrigin, SockPair, FAMILY_INET, FAMILY_INET6};

/// Looks accepted connections up by their addresses.
pub trait Origins: Send + Sync + 'static {
    /// The origin of the connection from `peer` accepted on `local`, if the kernel sent it.
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<ProxyOrigin>;
}

/// The pinned `SM_PROXY_ORIGINS` map.
pub struct KernelOrigins {
    map: HashMap<MapData, SockPair, ProxyOrigin>,
}

impl KernelOrigins {
    /// Opens the map pinned at `path` (`<bpffs>/v<layout>/maps/SM_PROXY_ORIGINS`).
    pub fn open(path: &Path) -> Result<Self, MapError> {
        let data = MapData::from_pin(path)?;
        Ok(Self {
            map: HashMap::try_from(Map::LruHashMap(data))?,
        })
    }
}

impl Origins for KernelOrigins {
    fn lookup(&self, peer: SocketAddr, local: SocketAddr) -> Option<ProxyOrigin> {
        self.map.get(&client_pair(peer, local), 0).ok()
    }
}

/// The client socket's own tuple (the map's key) for a connection the proxy accepted on
/// `local` from `peer`. v4-mapped IPv6 addresses count as IPv4, as the kernel keys them.
pub fn client_pair(peer: SocketAddr, local: SocketAddr) -> SockPair {
    let (client, family) = words(peer.ip());
    let (proxy, _) = words(local.ip());
    SockPair {
        local: client,
        remote: proxy,
        local_port: peer.port(),
        remote_port: local.port(),
        family,
        _pad: 0,
    }
}

/// Network-order words (IPv4 in word 0) and family of an address.
fn words(ip: IpAddr) -> ([u32; 4], u16) {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], FAMILY_INET),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([w(0), w(4), w(8), w(12)], FAMILY_INET6)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_the_client_side_tuple_in_network_order() {
        let peer: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "127.0.0.2:15001".parse().unwrap();
        let pair = client_pair(peer, local);
        assert_eq!(pair.local, [u32::from_ne_bytes([127, 0, 0, 1]), 0, 0, 0]);
        assert_eq!(pair.remote, [u32::from_ne_bytes([127, 0, 0, 2]), 0, 0, 0]);
        assert_eq!((pair.local_port, pair.remote_port), (40000, 15001));
        assert_eq!(pair.family, FAMILY_INET);
    }

    #[test]
    fn v4_mapped_peers_key_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:40000".parse().unwrap();
        let plain: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let local: SocketAddr = "[::ffff:127.0.0.2]:15001".parse().unwrap();
        assert_eq!(client_pair(mapped, local), client_pair(plain, local));
        let v6 = client_pair(
            "[::1]:40000".parse().unwrap(),
            "[::1]:15001".parse().unwrap(),
        );
        assert_eq!(v6.family, FAMILY_INET6);
        assert_eq!(v6.local[3], u32::from_ne_bytes([0, 0, 0, 1]));
    }
}
