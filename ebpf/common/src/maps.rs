//! Map names, capacities and the `#[repr(C)]` keys and values both sides read and write.
//!
//! Rules (aya checks sizes, not layouts): explicit padding fields, integers instead of
//! bool/enum/Option, ports in host byte order, addresses as four network-order words, and a
//! compile-time size assertion per type. Changing any of these changes [`LAYOUT_VERSION`].

use core::mem::size_of;

/// Version of the pinned map layout. Pins live under `<bpffs>/v<LAYOUT_VERSION>/`, so an agent
/// with a different layout never misreads another version's maps.
///
/// It also changes when the programs give a map field a new meaning, because an agent adopts
/// the programs pinned under its own version without reloading them.
/// 4: [`SERVICE_ENROLLED_ONLY`] (older programs would route unenrolled callers).
/// 5: [`SERVICE_SAME_NODE`], the same-node maps and eight kernel counter slots.
/// 6: [`BACKEND_CONNS_MAP`] for `least_conn` ([`crate::pick::LB_LEAST_CONN`]), and programs
/// that refuse an unknown `lb` code instead of picking at random. An agent
/// never adopts another version's pins: it attaches its own set beside them and, once its tables hold the config,
/// retires the others (docs/upgrade.md, `bpf-tests/tests/upgrade.rs`).
/// 7: [`SERVICE_HTTP`], the proxy maps ([`crate::PROXY_MAP`], [`crate::PROXY_ORIGINS_MAP`])
/// and [`crate::STAMP_PROXIED`] (older programs would route an http service to a backend).
pub const LAYOUT_VERSION: u32 = 7;

/// Service table: (family, VIP, port) -> [`ServiceEntry`]. Not preallocated, so an update
/// replaces the element under RCU and a concurrent connect reads either the old or the new
/// entry, never a mix.
pub const SERVICES_MAP: &str = "SM_SERVICES";
pub const MAX_SERVICES: u32 = 65_536;

/// Slot tables: (service id, caller class) -> [`SlotTable`]. Also not preallocated: swapping a
/// table is one element replacement, which is what makes a table switch atomic.
pub const SLOT_TABLES_MAP: &str = "SM_SLOT_TABLES";
pub const MAX_SLOT_TABLES: u32 = 65_536;
/// Slots per table. 1021 (prime) of them are used by Maglev; weighted tables use up to all.
pub const MAX_SLOTS: usize = 1024;
/// Maglev lookup-table size: prime, and large enough that 10 backends stay within ~1% of
/// their share while a table still fits one 4 KiB map value.
pub const MAGLEV_TABLE_SIZE: u32 = 1021;

/// Backends: backend id -> [`BackendEntry`]. Shared by all services that name the same address.
pub const BACKENDS_MAP: &str = "SM_BACKENDS";
pub const MAX_BACKENDS: u32 = 262_144;

/// Round-robin counters, one u64 per service id (array index).
pub const RR_COUNTERS_MAP: &str = "SM_RR_COUNTERS";

/// Active connections per backend id (array index, [`MAX_BACKENDS`] entries): connects the
/// kernel sent to that backend through a `least_conn` service and that have not closed yet.
/// Taken at pick time (so a burst of concurrent connects sees its own picks), released with
/// the service's other counters at close or failed connect. Kernel-only; an array, so its
/// capacity is fixed and it never fills.
pub const BACKEND_CONNS_MAP: &str = "SM_BACKEND_CONNS";

/// Socket stamps: socket cookie -> [`SockStamp`], written at connect for routed sockets.
/// LRU so sockets that die without a close callback cannot fill it.
pub const SOCK_STAMPS_MAP: &str = "SM_SOCK_STAMPS";
pub const MAX_SOCK_STAMPS: u32 = 262_144;

/// Program names (the ELF symbol names of the entry points), used for pins and attach.
pub const PROG_CONNECT4: &str = "sockmesh_connect4";
pub const PROG_CONNECT6: &str = "sockmesh_connect6";
pub const PROG_GETPEERNAME4: &str = "sockmesh_getpeername4";
pub const PROG_GETPEERNAME6: &str = "sockmesh_getpeername6";
pub const PROG_SOCK_OPS: &str = "sockmesh_sock_ops";
pub const PROG_RECEIVE_RESET: &str = "sockmesh_tcp_receive_reset";
pub const PROG_SCHED_WAKEUP: &str = "sockmesh_sched_wakeup";
pub const PROG_SCHED_WAKEUP_NEW: &str = "sockmesh_sched_wakeup_new";
pub const PROG_SCHED_SWITCH: &str = "sockmesh_sched_switch";
pub const PROG_SAME_NODE: &str = "sockmesh_same_node_msg";

/// Same-node sockets: [`SockPair`] (the socket's own 4-tuple) -> socket. The sk_msg program
/// runs on every socket in it and hands each write to the socket keyed by the reversed tuple.
pub const SAME_NODE_SOCKS_MAP: &str = "SM_SAME_NODE";
/// Client ends waiting for their server end: the tuple as the server will see it -> 1.
/// Written when the client is established, consumed when the accepted socket is.
pub const SAME_NODE_PENDING_MAP: &str = "SM_SAME_NODE_WAIT";
/// Senders that found no peer once and stay on TCP for good: own tuple -> 1. A sender never
/// switches between TCP and redirect, so the receiver never has to merge the two in order.
pub const SAME_NODE_TCP_MAP: &str = "SM_SAME_NODE_TCP";
pub const MAX_SAME_NODE_SOCKS: u32 = 65_536;

/// Caller class of the default slot table: callers that are not a workload, and every caller
/// whose class has no table of its own for the service.
pub const CALLER_CLASS_DEFAULT: u32 = 0;

/// Key of the service table.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    /// IPv4: `[addr, 0, 0, 0]`; IPv6: the four words. Network byte order.
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    /// [`crate::FAMILY_INET`] or [`crate::FAMILY_INET6`].
    pub family: u16,
}
const _: () = assert!(size_of::<ServiceKey>() == 20);

/// Value of the service table: how to pick a backend, and who is admitted at all.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Stable id of the service, index of its round-robin counter and part of its table key.
    pub id: u32,
    /// One of `pick::LB_*`.
    pub lb: u32,
    /// `SERVICE_*` bits.
    pub flags: u32,
    /// Share of connects admitted while half-open, in ppm (1_000_000 = all).
    pub admit_ppm: u32,
    /// Callers whose priority level is below this are shed (0: nobody is).
    pub min_priority: u32,
    /// Concurrent connections to the service (0: unlimited).
    pub max_conns: u32,
    /// Concurrent connections from one caller workload (0: unlimited).
    pub max_conns_per_caller: u32,
    /// Fault injection: share of connects refused, in ppm.
    pub fault_refuse_ppm: u32,
    /// Connection rate (GCRA): emission interval and burst tolerance; 0 = no rate limit.
    pub rate_interval_ns: u64,
    pub rate_burst_ns: u64,
}
const _: () = assert!(size_of::<ServiceEntry>() == 48);

/// The circuit is open: every connect is refused at once.
pub const SERVICE_CIRCUIT_OPEN: u32 = 1;
/// Half-open: `admit_ppm` of connects pass.
pub const SERVICE_HALF_OPEN: u32 = 2;
/// Only callers with an ACL entry may connect.
pub const SERVICE_ACL: u32 = 4;
/// The service has slot tables per caller class (routes, locality): connect looks up
/// `(id, caller class)` first and falls back to `(id, CALLER_CLASS_DEFAULT)`. Without the
/// flag only the default table is read, so unrouted services pay no extra lookup.
pub const SERVICE_CLASS_TABLES: u32 = 8;
/// Only enrolled callers are routed (`enrollment: workloads`): a caller whose cgroup is not
/// in the caller map passes through untouched, counted in [`crate::UNENROLLED_SLOT`]. The
/// check reuses the caller lookup admission does anyway, so it costs no extra map access.
pub const SERVICE_ENROLLED_ONLY: u32 = 16;
/// Same-node fast path (`same_node: true`): once both ends of a connection to this service
/// are sockets under the agent's cgroup, their writes are handed to the peer socket by
/// sk_msg instead of going through loopback TCP (docs/config.md, "Same-node fast path").
pub const SERVICE_SAME_NODE: u32 = 32;
/// `protocol: http`: connects go to the node's L7 proxy ([`crate::PROXY_MAP`]) instead of a
/// backend, after the same admission as any service (crate::proxy).
pub const SERVICE_HTTP: u32 = 64;

/// Admission state the kernel keeps per service id (array index).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceCounters {
    /// Connections admitted and not yet closed (atomically updated).
    pub active: u64,
    /// GCRA theoretical arrival time, ns.
    pub tat_ns: u64,
}
const _: () = assert!(size_of::<ServiceCounters>() == 16);

/// Caller cgroups: cgroup id -> [`CallerEntry`] (written by the agent from `workloads:`).
pub const CALLERS_MAP: &str = "SM_CALLERS";
pub const MAX_CALLERS: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallerEntry {
    /// Workload index + 1 (0 = unknown caller).
    pub workload: u32,
    /// Priority level (higher is more important); unknown callers count as the default level.
    pub priority: u32,
    /// Caller class: which slot table of a `SERVICE_CLASS_TABLES` service this caller uses
    /// ([`CALLER_CLASS_DEFAULT`] = the service's default table). The agent sets it to the
    /// workload index + 1; it is a field of its own so classes can be shared by workloads
    /// without another layout change.
    pub class: u32,
}
const _: () = assert!(size_of::<CallerEntry>() == 12);

/// Priority level of callers that are not a configured workload (the default, `online`).
pub const DEFAULT_PRIORITY: u32 = 2;

/// Access control: (service id, workload) present = allowed, for services with `SERVICE_ACL`.
pub const ACL_MAP: &str = "SM_ACL";
pub const MAX_ACL: u32 = 65_536;

/// Per-service admission counters ([`ServiceCounters`]), array indexed by service id.
pub const SERVICE_COUNTERS_MAP: &str = "SM_SVC_STATE";
/// Active connections per (service id, workload): for `max_conns_per_caller`.
pub const CALLER_CONNS_MAP: &str = "SM_CALLER_CONNS";

/// Key of the ACL and per-caller connection maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceCaller {
    pub service_id: u32,
    /// Workload index + 1, as in [`CallerEntry::workload`].
    pub workload: u32,
}
const _: () = assert!(size_of::<ServiceCaller>() == 8);

/// Key of the slot-table map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotTableKey {
    pub service_id: u32,
    pub caller_class: u32,
}
const _: () = assert!(size_of::<SlotTableKey>() == 8);

/// A service's slot table: `slots[..len]` hold backend ids; the kernel picks one per connect.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotTable {
    pub len: u32,
    /// Increases with every table the agent writes for this key (visible in debugging).
    pub generation: u32,
    pub slots: [u32; MAX_SLOTS],
}
const _: () = assert!(size_of::<SlotTable>() == 8 + 4 * MAX_SLOTS);

impl SlotTable {
    pub const EMPTY: SlotTable = SlotTable {
        len: 0,
        generation: 0,
        slots: [0; MAX_SLOTS],
    };
}

/// Value of the backend map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendEntry {
    pub addr: [u32; 4],
    /// Host byte order.
    pub port: u16,
    pub family: u16,
    pub flags: u32,
}
const _: () = assert!(size_of::<BackendEntry>() == 24);

/// What connect() recorded about a routed socket, so later hooks (getpeername, sock_ops) can
/// attribute the socket to its service, backend and caller.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SockStamp {
    /// The VIP the application dialed (network-order words, IPv4 in word 0).
    pub vip: [u32; 4],
    /// Host byte order.
    pub vip_port: u16,
    /// Family of the VIP as the application dialed it (a v4-mapped dial records INET6).
    pub family: u16,
    pub service_id: u32,
    pub backend_id: u32,
    /// `STAMP_*` bits (crate::signals), updated by sock_ops and the reset tracepoint.
    pub flags: u32,
    pub cgroup_id: u64,
    /// `bpf_ktime_get_ns()` at connect.
    pub connect_ns: u64,
    /// The caller's workload (index + 1; 0 = unknown), for per-caller connection counts.
    pub workload: u32,
    /// RTT samples sock_ops took of this connection; at [`crate::RTT_SAMPLES_PER_CONN`] it
    /// turns the connection's RTT callbacks off. Zero at connect.
    pub rtt_samples: u32,
}
const _: () = assert!(size_of::<SockStamp>() == 56);

/// A TCP socket's 4-tuple from its own side. Ports in host byte order; the peer's key is
/// [`SockPair::reversed`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockPair {
    /// Network-order words, IPv4 in word 0.
    pub local: [u32; 4],
    pub remote: [u32; 4],
    pub local_port: u16,
    pub remote_port: u16,
    pub family: u16,
    pub _pad: u16,
}
const _: () = assert!(size_of::<SockPair>() == 40);

impl SockPair {
    /// The same connection as the other end sees it.
    pub const fn reversed(&self) -> SockPair {
        SockPair {
            local: self.remote,
            remote: self.local,
            local_port: self.remote_port,
            remote_port: self.local_port,
            family: self.family,
            _pad: 0,
        }
    }
}

/// `remote_port` as sock_ops and sk_msg contexts give it: the network-order port in the
/// upper 16 bits of the word on little-endian kernels. Returns it in host order.
pub const fn ctx_remote_port(raw: u32) -> u16 {
    let be = if raw > 0xffff { raw >> 16 } else { raw };
    u16::from_be(be as u16)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `#[repr(C)]`, made only of integers and integer arrays, with
    // explicit padding, so any bit pattern is valid and there are no implicit padding bytes.
    unsafe impl aya::Pod for super::ServiceKey {}
    unsafe impl aya::Pod for super::ServiceEntry {}
    unsafe impl aya::Pod for super::SlotTableKey {}
    unsafe impl aya::Pod for super::SlotTable {}
    unsafe impl aya::Pod for super::BackendEntry {}
    unsafe impl aya::Pod for super::SockStamp {}
    unsafe impl aya::Pod for super::ServiceCounters {}
    unsafe impl aya::Pod for super::CallerEntry {}
    unsafe impl aya::Pod for super::ServiceCaller {}
    unsafe impl aya::Pod for super::SockPair {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reversed_pair_is_the_peer_and_reverses_back() {
        let client = SockPair {
            local: [0x0100_007f, 0, 0, 0],
            remote: [0x0200_007f, 0, 0, 0],
            local_port: 40_000,
            remote_port: 8080,
            family: crate::FAMILY_INET,
            _pad: 0,
        };
        let server = client.reversed();
        assert_eq!(server.local, client.remote);
        assert_eq!(server.local_port, 8080);
        assert_eq!(server.remote_port, 40_000);
        assert_eq!(server.reversed(), client);
    }

    #[test]
    fn ctx_remote_port_reads_both_word_layouts() {
        let be = 8080u16.to_be() as u32;
        // Little-endian kernels shift the network-order port into the upper half.
        assert_eq!(ctx_remote_port(be << 16), 8080);
        assert_eq!(ctx_remote_port(be), 8080);
    }
}
