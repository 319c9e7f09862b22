//! Address encoding shared by map keys: one 16-byte form for both families so a single
//! service map serves connect4 and connect6.

/// `AF_INET`, as the kernel reports it in `bpf_sock_addr.user_family`.
pub const FAMILY_INET: u16 = 2;
/// `AF_INET6`.
pub const FAMILY_INET6: u16 = 10;

/// An IPv4 address in the 16-byte slot: the four bytes first (network order), the rest zero.
/// Not the v4-mapped form, so an IPv4 key never collides with an IPv6 one (family differs
/// anyway) and the kernel side only copies one word.
#[inline(always)]
pub const fn ip4_to_words(ip_be: u32) -> [u32; 4] {
    [ip_be, 0, 0, 0]
}

/// Whether a v6 address (as the kernel's four network-order words) is v4-mapped
/// (`::ffff:a.b.c.d`). Dual-stack sockets dial IPv4 VIPs this way.
#[inline(always)]
pub const fn is_v4_mapped(words: &[u32; 4]) -> bool {
    // Words are in network byte order, so compare against the big-endian 0x0000ffff.
    words[0] == 0 && words[1] == 0 && words[2] == u32::to_be(0x0000_ffff)
}

/// The v4-mapped v6 form of an IPv4 address (network order in, network-order words out).
#[inline(always)]
pub const fn v4_mapped_words(ip_be: u32) -> [u32; 4] {
    [0, 0, u32::to_be(0x0000_ffff), ip_be]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_round_trip() {
        let ip = u32::from_ne_bytes([127, 100, 0, 1]);
        let w = v4_mapped_words(ip);
        assert!(is_v4_mapped(&w));
        assert_eq!(w[3], ip);
        assert!(!is_v4_mapped(&[0, 0, 0, u32::to_be(1)]));
        assert_eq!(ip4_to_words(ip), [ip, 0, 0, 0]);
    }
}
