//! The L7 redirect (issue 19): what the kernel and the node's proxy share.
//!
//! For a service with [`crate::SERVICE_HTTP`], connect4/6 admit the caller as for any
//! service, then send the connection to the node's proxy listener ([`ProxyTarget`], the one
//! element of [`PROXY_MAP`]) instead of picking a backend. The socket's stamp gets
//! [`crate::STAMP_PROXIED`] and [`PROXIED_BACKEND_ID`] (no backend: the proxy picks one per
//! request). When the client's side is established (sock_ops), its 4-tuple is known and the
//! stamp's service and caller are copied into [`PROXY_ORIGINS_MAP`] under the client's own
//! [`crate::SockPair`]; the proxy looks its accepted connection up there (peer and local
//! address, reversed), so it learns the service and the caller from the kernel, never by
//! guessing from addresses. The entry goes when the client socket closes (and the map is an
//! LRU, so a socket that dies without a close callback cannot fill it).

use core::mem::size_of;

/// The node's proxy listener: an array with one element (index 0), written by the agent.
pub const PROXY_MAP: &str = "SM_PROXY";

/// Where http services' connections go. `port == 0`: no proxy is listening, and a connect
/// to an http service is refused (counted as `no_backend`) rather than sent nowhere.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProxyTarget {
    /// IPv4 listener, network order (0: none; IPv4 and v4-mapped connects are refused).
    pub addr4: u32,
    /// Host byte order; 0 = no proxy.
    pub port: u16,
    pub _pad: u16,
    /// IPv6 listener, network-order words (all zero: none; IPv6 connects are refused).
    pub addr6: [u32; 4],
}
const _: () = assert!(size_of::<ProxyTarget>() == 24);

/// Client 4-tuples of proxied connections: the client socket's own [`crate::SockPair`]
/// (v4-mapped addresses normalized to IPv4) -> [`ProxyOrigin`].
pub const PROXY_ORIGINS_MAP: &str = "SM_PROXY_ORIGINS";
pub const MAX_PROXY_ORIGINS: u32 = 65_536;

/// What the proxy learns about an accepted connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ProxyOrigin {
    /// The VIP the application dialed (network-order words, IPv4 in word 0).
    pub vip: [u32; 4],
    /// Host byte order.
    pub vip_port: u16,
    /// Family of the VIP as dialed.
    pub family: u16,
    pub service_id: u32,
    /// The caller's workload (index + 1 into the config's workloads; 0 = not a workload).
    pub workload: u32,
    pub _pad: u32,
    /// The caller's cgroup id.
    pub cgroup_id: u64,
}
const _: () = assert!(size_of::<ProxyOrigin>() == 40);

/// The stamp's backend id of a proxied socket: it has no backend.
pub const PROXIED_BACKEND_ID: u32 = u32::MAX;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: `#[repr(C)]`, integers and integer arrays only, explicit padding.
    unsafe impl aya::Pod for super::ProxyTarget {}
    unsafe impl aya::Pod for super::ProxyOrigin {}
}
