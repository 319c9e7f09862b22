//! Conversions between std addresses and the kernel's word form (`sockmesh_common::addr`).

use std::net::{IpAddr, SocketAddr};

use sockmesh_common::{BackendEntry, ServiceKey, FAMILY_INET, FAMILY_INET6};

/// (family, four network-order words). IPv4 sits in word 0, as the kernel's `user_ip4` does.
pub(crate) fn ip_words(ip: IpAddr) -> (u16, [u32; 4]) {
    match ip {
        IpAddr::V4(v4) => (FAMILY_INET, [u32::from_ne_bytes(v4.octets()), 0, 0, 0]),
        IpAddr::V6(v6) => {
            let o = v6.octets();
            let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            (FAMILY_INET6, [w(0), w(4), w(8), w(12)])
        }
    }
}

pub(crate) fn service_key(vip: IpAddr, port: u16) -> ServiceKey {
    let (family, addr) = ip_words(vip);
    ServiceKey { addr, port, family }
}

pub(crate) fn backend_entry(addr: SocketAddr) -> BackendEntry {
    let (family, words) = ip_words(addr.ip());
    BackendEntry {
        addr: words,
        port: addr.port(),
        family,
        flags: 0,
    }
}

/// The kernel's (family, words, host-order port) back to a socket address.
pub(crate) fn words_to_socket_addr(family: u16, words: &[u32; 4], port: u16) -> SocketAddr {
    let ip = if family == FAMILY_INET6 {
        let mut o = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::from(o)
    } else {
        IpAddr::from(words[0].to_ne_bytes())
    };
    SocketAddr::new(ip, port)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_addrs_round_trip_through_words() {
        for a in ["127.0.0.2:8081", "[fd00::2]:8081"] {
            let a: SocketAddr = a.parse().unwrap();
            let b = backend_entry(a);
            assert_eq!(words_to_socket_addr(b.family, &b.addr, b.port), a);
        }
    }

    #[test]
    fn ipv6_words_are_network_order() {
        let b = backend_entry("[fd00::2]:8081".parse().unwrap());
        assert_eq!(b.family, sockmesh_common::FAMILY_INET6);
        assert_eq!(b.addr[0].to_ne_bytes(), [0xfd, 0, 0, 0]);
        assert_eq!(b.addr[3].to_ne_bytes(), [0, 0, 0, 2]);
        assert_eq!(b.port, 8081);
    }

    #[test]
    fn ipv4_is_network_order_in_word_zero() {
        let (fam, w) = ip_words("127.100.0.1".parse().unwrap());
        assert_eq!(fam, FAMILY_INET);
        // The kernel's user_ip4 holds the bytes in wire order.
        assert_eq!(w[0].to_ne_bytes(), [127, 100, 0, 1]);
    }
}
