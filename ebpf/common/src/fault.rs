//! Packet-level fault injection for drills and tests (`sockmesh-agent netfault`): cgroup_skb
//! programs drop a share of the SYNs a cgroup sends to chosen targets (egress) or of the
//! segments it receives from them (ingress).
//! Packets the rules don't match pass untouched. This lives beside the mesh, not in it: its
//! maps are never pinned and it detaches when the netfault process exits.

use core::mem::size_of;

pub const FAULT_RULES_MAP: &str = "NF_RULES";
pub const FAULT_DROPS_MAP: &str = "NF_DROPS";
pub const MAX_FAULT_RULES: u32 = 256;
pub const PROG_NETFAULT_EGRESS: &str = "sockmesh_netfault_egress";
pub const PROG_NETFAULT_INGRESS: &str = "sockmesh_netfault_ingress";

/// Parts per million, the unit of fault probabilities.
pub const PPM: u32 = 1_000_000;

/// Destination a rule applies to (the real backend, after the connect rewrite).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FaultKey {
    /// Network-order words, IPv4 in word 0.
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
}
const _: () = assert!(size_of::<FaultKey>() == 20);

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultRule {
    /// Share of SYNs (connection attempts) dropped, in ppm: 1_000_000 = the backend never
    /// answers, so connects time out.
    pub drop_syn_ppm: u32,
    /// Share of segments received from the target (data and ACKs, not SYN-ACKs) dropped, in
    /// ppm: real losses, so the caller's TCP retransmits.
    pub drop_data_ppm: u32,
}
const _: () = assert!(size_of::<FaultRule>() == 8);

/// Whether a packet with a random draw `rand` is dropped at `ppm`.
#[inline(always)]
pub const fn drops(ppm: u32, rand: u32) -> bool {
    ppm != 0 && (rand % PPM) < ppm
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integer-only types without implicit padding.
    unsafe impl aya::Pod for super::FaultKey {}
    unsafe impl aya::Pod for super::FaultRule {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ppm_edges() {
        assert!(!drops(0, 0));
        assert!(drops(PPM, u32::MAX));
        assert!(drops(1, 0));
        assert!(!drops(1, 1));
    }
}
