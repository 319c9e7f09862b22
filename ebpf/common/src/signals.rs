//! What the kernel observes about connections and workloads, and how it hands it over.
//!
//! Lifecycle events (established, failed, closed, inbound) go through the ring buffer, one per
//! connection state change. Per-ACK and per-retransmit signals are far too frequent for that:
//! they update per-CPU counters and log2 histograms that the agent reads and sums.

use core::mem::size_of;

/// Ring buffer of [`ConnEvent`]s.
pub const EVENTS_MAP: &str = "SM_EVENTS";
/// Ring buffer size in bytes (power of two, multiple of the page size): ~13k events of slack
/// at 80 bytes each, which the agent drains every few milliseconds.
pub const EVENTS_RING_BYTES: u32 = 1 << 20;
/// The kernel forces a wake-up once this many bytes are waiting; below it the agent's
/// periodic drain picks events up, so one busy second costs a handful of wake-ups.
pub const EVENTS_WAKEUP_BYTES: u64 = 64 * size_of::<ConnEvent>() as u64;

/// Per-CPU counters: [`LOST_EVENTS_SLOT`] counts events the ring buffer had no room for,
/// [`UNENROLLED_SLOT`] connects to a VIP left untouched because the caller is not enrolled.
pub const KERNEL_COUNTERS_MAP: &str = "SM_COUNTERS";
pub const LOST_EVENTS_SLOT: u32 = 0;
pub const UNENROLLED_SLOT: u32 = 1;
/// Same-node fast path: connections whose two ends were joined, writes that found no peer
/// (the sender stays on TCP), and bytes handed to a peer socket.
pub const SAME_NODE_PAIRS_SLOT: u32 = 2;
pub const SAME_NODE_FALLBACKS_SLOT: u32 = 3;
pub const SAME_NODE_BYTES_SLOT: u32 = 4;
/// Connects to a service whose entry names a policy code the programs do not know
/// (`pick::LB_*`): refused as `no_backend`, never routed. The agent never writes one, so a
/// non-zero count means a foreign or corrupted service entry.
pub const UNKNOWN_POLICY_SLOT: u32 = 5;
pub const KERNEL_COUNTER_SLOTS: u32 = 8;

/// Per-CPU per-(service, backend) TCP counters: [`BackendKey`] -> [`BackendTcpStats`].
pub const BACKEND_STATS_MAP: &str = "SM_BACKEND_TCP";
/// Not preallocated: unused capacity costs nothing, and a used entry costs its value per CPU.
/// 131,072 holds 10,000 services of 10 backends with room for a change to overlap.
pub const MAX_BACKEND_STATS: u32 = 131_072;

/// Threads of configured workloads: tid -> workload index (written by the agent).
pub const WORKLOAD_TIDS_MAP: &str = "SM_WL_TIDS";
pub const MAX_WORKLOAD_TIDS: u32 = 65_536;
/// When each tracked thread became runnable: tid -> ktime ns (kernel-only scratch).
pub const RUNQ_START_MAP: &str = "SM_RUNQ_START";
/// Per-CPU run-queue latency histograms, indexed by workload index.
pub const RUNQ_HIST_MAP: &str = "SM_RUNQ_HIST";
pub const MAX_WORKLOADS: u32 = 1024;

/// log2 buckets: bucket `i` counts values v (µs) with 2^(i-1) <= v < 2^i; bucket 0 is v = 0.
pub const HIST_BUCKETS: usize = 32;

pub const EVENT_ESTABLISHED: u32 = 1;
pub const EVENT_FAILED: u32 = 2;
pub const EVENT_CLOSED: u32 = 3;
pub const EVENT_INBOUND: u32 = 4;

/// Connect outcomes as the kernel classifies them ([`ConnEvent::result`]).
pub const RESULT_OK: u32 = 0;
/// A RST answered the SYN (nothing listening, or the backend refused).
pub const RESULT_REFUSED: u32 = 1;
/// No answer: the SYN was retransmitted or the caller gave up waiting.
pub const RESULT_TIMEOUT: u32 = 2;
/// Failed within [`UNREACHABLE_MAX_NS`] without a RST: an ICMP error, not a silent peer.
pub const RESULT_UNREACHABLE: u32 = 3;
/// An established connection ended by a RST (received).
pub const RESULT_RESET: u32 = 4;
/// The service had no usable backend; connect() was refused by the mesh itself.
pub const RESULT_NO_BACKEND: u32 = 5;
/// Refused by the mesh: the caller is not in the service's allowed callers.
pub const RESULT_DENIED: u32 = 6;
/// Refused by the mesh: the service's circuit is open (or half-open and not admitted).
pub const RESULT_CIRCUIT_OPEN: u32 = 7;
/// Refused by the mesh: lower-priority caller shed while the service is overloaded.
pub const RESULT_SHED: u32 = 8;
/// Refused by the mesh: a connection or rate limit was reached.
pub const RESULT_LIMITED: u32 = 9;
/// Refused by the mesh: fault injection.
pub const RESULT_FAULT: u32 = 10;

/// Whether a result is the mesh's own refusal (never counted against a backend).
pub const fn is_mesh_refusal(result: u32) -> bool {
    result >= RESULT_NO_BACKEND && result <= RESULT_FAULT
}

/// A SYN_SENT -> CLOSE faster than this without a RST is an ICMP error (unreachable); a
/// silent backend takes at least the initial RTO (1 s) or the caller's own connect timeout.
pub const UNREACHABLE_MAX_NS: u64 = 5_000_000;

/// [`crate::SockStamp::flags`] bits.
pub const STAMP_ESTABLISHED: u32 = 1;
pub const STAMP_RESET_RECEIVED: u32 = 2;
/// Set once a SYN of this socket was retransmitted (an RTO in SYN_SENT).
pub const STAMP_SYN_RTO: u32 = 4;
/// The connect was counted in the service's active connections (undo at close).
pub const STAMP_COUNTED: u32 = 8;
/// ... and in the caller's (per-workload) active connections.
pub const STAMP_CALLER_COUNTED: u32 = 16;
/// The service has the same-node fast path ([`crate::SERVICE_SAME_NODE`]).
pub const STAMP_SAME_NODE: u32 = 32;
/// The connect was counted in its backend's active connections ([`crate::BACKEND_CONNS_MAP`],
/// least-conn services); undone at close.
pub const STAMP_BACKEND_COUNTED: u32 = 64;
/// Sent to the node's L7 proxy (an http service): no backend, no per-backend signals; its
/// client 4-tuple goes to [`crate::PROXY_ORIGINS_MAP`] once established.
pub const STAMP_PROXIED: u32 = 128;

/// RTT callbacks (`BPF_SOCK_OPS_RTT_CB`, one per ACK that measures an RTT) sock_ops takes per
/// routed connection before it clears the connection's `BPF_SOCK_OPS_RTT_CB_FLAG`. After
/// that the connection costs no program run per ACK; its smoothed RTT (the kernel keeps it
/// in `tcp_sock.srtt_us` either way) is sampled once more at close. Eight samples cover a
/// short connection whole (handshake, a few requests) and let the kernel's srtt (a 1/8
/// moving average) settle on a long one.
pub const RTT_SAMPLES_PER_CONN: u32 = 8;

/// One connection lifecycle event.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    /// `EVENT_*`.
    pub kind: u32,
    /// `RESULT_*` (failed, closed) or `RESULT_OK`.
    pub result: u32,
    pub service_id: u32,
    pub backend_id: u32,
    /// The caller's cgroup (at connect); 0 for inbound connections.
    pub cgroup_id: u64,
    /// Established/failed: connect() to handshake end. Closed: connect() to close.
    pub duration_ns: u64,
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub total_retrans: u32,
    /// Smoothed RTT at the time of the event, µs.
    pub srtt_us: u32,
    /// Closed: application bytes sent (acked by the peer) and received, SYN/FIN excluded.
    /// Inbound: the local (listening) address and port; otherwise zero.
    pub local_addr: [u32; 4],
    /// Host byte order.
    pub local_port: u16,
    pub family: u16,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ConnEvent>() == 80);

impl ConnEvent {
    /// All fields zero; build events with `ConnEvent { kind, .., ..ConnEvent::ZERO }`.
    pub const ZERO: Self = Self {
        kind: 0,
        result: 0,
        service_id: 0,
        backend_id: 0,
        cgroup_id: 0,
        duration_ns: 0,
        bytes_acked: 0,
        bytes_received: 0,
        total_retrans: 0,
        srtt_us: 0,
        local_addr: [0; 4],
        local_port: 0,
        family: 0,
        _pad: 0,
    };
}

/// Decodes one ring-buffer record into a [`ConnEvent`]; `None` for a record of any other
/// size (a different layout version), which the agent skips rather than misreads.
///
/// Pure and `no_std`, so the agent's ring drain, the unit tests and the fuzz target
/// (`fuzz/fuzz_targets/ring_event.rs`) all run this one definition.
pub fn decode_conn_event(bytes: &[u8]) -> Option<ConnEvent> {
    if bytes.len() != size_of::<ConnEvent>() {
        return None;
    }
    // SAFETY: ConnEvent is repr(C) plain integers (any bit pattern is valid) and the length
    // was checked; read_unaligned because ring records are only 8-byte aligned by contract
    // and a caller's slice may not even be that.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<ConnEvent>()) })
}

/// Key of the per-backend TCP stats map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BackendKey {
    pub service_id: u32,
    pub backend_id: u32,
}
const _: () = assert!(size_of::<BackendKey>() == 8);

/// Per-CPU TCP signals of one (service, backend).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendTcpStats {
    /// Connections established and closed (after being established): their difference is
    /// the number open now, exact even across agent restarts and lost events.
    pub established: u64,
    pub closed: u64,
    pub retransmits: u64,
    pub rtos: u64,
    /// Number of srtt samples and their sum in µs: one per RTT callback for a connection's
    /// first [`RTT_SAMPLES_PER_CONN`] callbacks, then (if it reached that many) one more
    /// with its srtt at close. Each connection weighs at most `RTT_SAMPLES_PER_CONN + 1`
    /// samples, however many ACKs it carried.
    pub srtt_count: u64,
    pub srtt_sum_us: u64,
    pub srtt_hist: [u64; HIST_BUCKETS],
}
const _: () = assert!(size_of::<BackendTcpStats>() == 48 + 8 * HIST_BUCKETS);

impl BackendTcpStats {
    pub const ZERO: Self = Self {
        established: 0,
        closed: 0,
        retransmits: 0,
        rtos: 0,
        srtt_count: 0,
        srtt_sum_us: 0,
        srtt_hist: [0; HIST_BUCKETS],
    };

    /// Adds another CPU's counters: the per-CPU values of one key sum to its total. The one
    /// place that knows every field, so a new counter cannot be left out of the sum.
    pub fn add(&mut self, o: &Self) {
        self.established += o.established;
        self.closed += o.closed;
        self.retransmits += o.retransmits;
        self.rtos += o.rtos;
        self.srtt_count += o.srtt_count;
        self.srtt_sum_us += o.srtt_sum_us;
        for (a, b) in self.srtt_hist.iter_mut().zip(&o.srtt_hist) {
            *a += b;
        }
    }
}

/// Per-CPU run-queue latency of one workload.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunqHist {
    pub count: u64,
    pub sum_us: u64,
    pub buckets: [u64; HIST_BUCKETS],
}
const _: () = assert!(size_of::<RunqHist>() == 16 + 8 * HIST_BUCKETS);

impl RunqHist {
    pub const ZERO: Self = Self {
        count: 0,
        sum_us: 0,
        buckets: [0; HIST_BUCKETS],
    };

    /// Adds another CPU's histogram (see [`BackendTcpStats::add`]).
    pub fn add(&mut self, o: &Self) {
        self.count += o.count;
        self.sum_us += o.sum_us;
        for (a, b) in self.buckets.iter_mut().zip(&o.buckets) {
            *a += b;
        }
    }
}

/// The log2 bucket of `v`: 0 for 0, else 1 + floor(log2 v), capped at the last bucket.
#[inline(always)]
pub const fn log2_bucket(v: u64) -> usize {
    let b = (64 - v.leading_zeros()) as usize;
    if b >= HIST_BUCKETS {
        HIST_BUCKETS - 1
    } else {
        b
    }
}

/// Upper bound (exclusive, µs) of bucket `i`, for exporting as a Prometheus `le`.
pub const fn bucket_upper_us(i: usize) -> u64 {
    1u64 << i
}

/// How the kernel classifies a SYN_SENT -> CLOSE transition.
#[inline(always)]
pub const fn classify_failed_connect(stamp_flags: u32, elapsed_ns: u64) -> u32 {
    if stamp_flags & STAMP_RESET_RECEIVED != 0 {
        RESULT_REFUSED
    } else if stamp_flags & STAMP_SYN_RTO == 0 && elapsed_ns < UNREACHABLE_MAX_NS {
        RESULT_UNREACHABLE
    } else {
        RESULT_TIMEOUT
    }
}

/// TCP states as the kernel numbers them (include/net/tcp_states.h).
pub const TCP_FIN_WAIT2: u32 = 5;
pub const TCP_CLOSE_WAIT: u32 = 8;
pub const TCP_LAST_ACK: u32 = 9;
pub const TCP_CLOSING: u32 = 11;

/// Application bytes (sent, received) from the socket's sequence-space counters at close.
/// `bytes_acked` counts the SYN (always acked once established) and our FIN once acked;
/// `bytes_received` counts the peer's FIN. `old_state` (the state before CLOSE) says which
/// FINs were exchanged: FIN_WAIT2 -> CLOSE happens when the peer's FIN arrives after ours was
/// acked, LAST_ACK -> CLOSE when our FIN is acked after the peer's arrived.
#[inline(always)]
pub const fn app_bytes(old_state: u32, bytes_acked: u64, bytes_received: u64) -> (u64, u64) {
    let our_fin_acked = old_state == TCP_FIN_WAIT2 || old_state == TCP_LAST_ACK;
    let peer_fin = our_fin_acked || old_state == TCP_CLOSE_WAIT || old_state == TCP_CLOSING;
    let sent = bytes_acked.saturating_sub(1 + our_fin_acked as u64);
    let received = bytes_received.saturating_sub(peer_fin as u64);
    (sent, received)
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C) integer-only types with explicit padding (see maps.rs).
    unsafe impl aya::Pod for super::ConnEvent {}
    unsafe impl aya::Pod for super::BackendKey {}
    unsafe impl aya::Pod for super::BackendTcpStats {}
    unsafe impl aya::Pod for super::RunqHist {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn adding_per_cpu_values_sums_every_field() {
        // Every field distinct and non-zero, so a field left out of `add` shows.
        let mut one = BackendTcpStats {
            established: 1,
            closed: 2,
            retransmits: 3,
            rtos: 4,
            srtt_count: 5,
            srtt_sum_us: 6,
            srtt_hist: [7; HIST_BUCKETS],
        };
        one.srtt_hist[HIST_BUCKETS - 1] = 8;
        let mut sum = BackendTcpStats::ZERO;
        sum.add(&one);
        sum.add(&one);
        let mut twice = one;
        twice.established *= 2;
        twice.closed *= 2;
        twice.retransmits *= 2;
        twice.rtos *= 2;
        twice.srtt_count *= 2;
        twice.srtt_sum_us *= 2;
        twice.srtt_hist.iter_mut().for_each(|b| *b *= 2);
        assert_eq!(sum, twice);

        let h = RunqHist {
            count: 1,
            sum_us: 10,
            buckets: [3; HIST_BUCKETS],
        };
        let mut total = RunqHist::ZERO;
        total.add(&h);
        total.add(&h);
        assert_eq!(
            (total.count, total.sum_us, total.buckets),
            (2, 20, [6; HIST_BUCKETS])
        );
    }

    proptest! {
        #[test]
        fn decode_conn_event_accepts_only_whole_events(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let ev = decode_conn_event(&bytes);
            prop_assert_eq!(ev.is_some(), bytes.len() == size_of::<ConnEvent>());
            if let Some(ev) = ev {
                prop_assert_eq!(ev.kind.to_ne_bytes(), [bytes[0], bytes[1], bytes[2], bytes[3]]);
            }
        }
    }

    #[test]
    fn buckets() {
        assert_eq!(log2_bucket(0), 0);
        assert_eq!(log2_bucket(1), 1);
        assert_eq!(log2_bucket(2), 2);
        assert_eq!(log2_bucket(3), 2);
        assert_eq!(log2_bucket(1023), 10);
        assert_eq!(log2_bucket(1024), 11);
        assert_eq!(log2_bucket(u64::MAX), HIST_BUCKETS - 1);
        // Every value is below its bucket's upper bound (except the overflow bucket).
        for v in [0u64, 1, 5, 999, 1_000_000] {
            assert!(v < bucket_upper_us(log2_bucket(v)));
        }
    }

    #[test]
    fn decode_conn_event_reads_whole_events_only() {
        let ev = ConnEvent {
            kind: EVENT_FAILED,
            result: RESULT_REFUSED,
            service_id: 7,
            backend_id: 9,
            cgroup_id: 0x0102_0304_0506_0708,
            srtt_us: 250,
            local_port: 8080,
            family: crate::FAMILY_INET,
            ..ConnEvent::ZERO
        };
        // SAFETY: ConnEvent is repr(C) plain integers; viewing it as bytes reads no padding
        // (the struct has none beyond the explicit `_pad`).
        let bytes: [u8; size_of::<ConnEvent>()] = unsafe { core::mem::transmute(ev) };
        assert_eq!(decode_conn_event(&bytes), Some(ev));
        // Unaligned input: the same bytes one past an 8-byte boundary.
        let mut shifted = [0u8; size_of::<ConnEvent>() + 1];
        shifted[1..].copy_from_slice(&bytes);
        assert_eq!(decode_conn_event(&shifted[1..]), Some(ev));
        assert_eq!(decode_conn_event(&shifted), None, "one byte too many");
        assert_eq!(decode_conn_event(&bytes[1..]), None, "one byte short");
        assert_eq!(decode_conn_event(&[]), None);
    }

    #[test]
    fn app_bytes_remove_syn_and_fins() {
        // Client sent nothing, received 10 bytes, closed first (FIN_WAIT2 -> CLOSE).
        assert_eq!(app_bytes(TCP_FIN_WAIT2, 2, 11), (0, 10));
        // Peer closed first; we sent 5 bytes then our FIN was acked in LAST_ACK.
        assert_eq!(app_bytes(TCP_LAST_ACK, 7, 1), (5, 0));
        // Aborted while established: no FINs, only the SYN.
        assert_eq!(app_bytes(1, 101, 50), (100, 50));
        assert_eq!(app_bytes(TCP_CLOSE_WAIT, 1, 4), (0, 3));
        assert_eq!(app_bytes(1, 0, 0), (0, 0), "never underflows");
    }

    #[test]
    fn failed_connect_classification() {
        assert_eq!(
            classify_failed_connect(STAMP_RESET_RECEIVED, 50_000),
            RESULT_REFUSED
        );
        assert_eq!(
            classify_failed_connect(STAMP_RESET_RECEIVED | STAMP_SYN_RTO, 3_000_000_000),
            RESULT_REFUSED
        );
        assert_eq!(classify_failed_connect(0, 100_000), RESULT_UNREACHABLE);
        assert_eq!(
            classify_failed_connect(STAMP_SYN_RTO, 1_100_000_000),
            RESULT_TIMEOUT
        );
        assert_eq!(
            classify_failed_connect(0, 500_000_000),
            RESULT_TIMEOUT,
            "caller gave up"
        );
    }
}
