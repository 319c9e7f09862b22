//! connect/getpeername logic: look the destination up in the service table, pick a slot
//! (or, for an http service, take the node proxy's listener: crate::proxy), rewrite the
//! destination, stamp the socket.

use core::{
    intrinsics::{atomic_xadd, AtomicOrdering},
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_prandom_u32, bpf_get_socket_cookie, bpf_ktime_get_ns,
    },
    programs::SockAddrContext,
    EbpfContext,
};
use sockmesh_common::{
    addr::{is_v4_mapped, v4_mapped_words},
    caller_hash,
    pick::{least_conn_pick, LB_LEAST_CONN, LB_MAGLEV, LB_ROUND_ROBIN, LB_WEIGHTED_RANDOM},
    pick_slot, BackendEntry, ServiceEntry, ServiceKey, SlotTable, SlotTableKey, SockStamp,
    CALLER_CLASS_DEFAULT, FAMILY_INET, FAMILY_INET6, MAX_SLOTS, SERVICE_CLASS_TABLES, SERVICE_HTTP,
    UNKNOWN_POLICY_SLOT,
};

use sockmesh_common::{ConnEvent, EVENT_FAILED, RESULT_NO_BACKEND};

use crate::{
    admit::{admit, release, take_backend, Admission},
    bound::masked,
    events::{bump, emit},
    maps::{BACKENDS, BACKEND_CONNS, RR_COUNTERS, SERVICES, SLOT_TABLES, SOCK_STAMPS},
    proxy,
};

const IPPROTO_TCP: u32 = 6;

pub enum Verdict {
    /// Not a VIP (or not TCP), or a caller the service does not route: untouched.
    Pass,
    Routed,
    /// Refused by the mesh (no usable backend, circuit, limits, ACL, shedding, fault):
    /// fail now rather than let the app wait on a dead address.
    Refused,
}

/// What a routed socket's stamp records about its admission.
struct Admitted {
    service_id: u32,
    backend_id: u32,
    workload: u32,
    flags: u32,
    cgroup_id: u64,
}

pub fn connect4(ctx: &SockAddrContext) -> Verdict {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context pointer the kernel handed us; ctx fields are read/written
    // with exact 4-byte accesses, which is what the verifier allows for them.
    unsafe {
        if read_volatile(addr_of!((*sa).protocol)) != IPPROTO_TCP {
            return Verdict::Pass;
        }
        let ip = read_volatile(addr_of!((*sa).user_ip4));
        let port = user_port(sa);
        let key = ServiceKey {
            addr: [ip, 0, 0, 0],
            port,
            family: FAMILY_INET,
        };
        let Some(service) = SERVICES.get(key) else {
            return Verdict::Pass;
        };
        let cgroup_id = bpf_get_current_cgroup_id();
        let (workload, class, counted) = match admit(service, cgroup_id) {
            Admission::Admit {
                workload,
                class,
                stamp_flags,
            } => (workload, class, stamp_flags),
            Admission::Refuse(result) => {
                refused(service.id, result, FAMILY_INET, cgroup_id);
                return Verdict::Refused;
            }
            Admission::NotEnrolled => return Verdict::Pass,
        };
        let (backend_id, addr, backend_port, flags) = if service.flags & SERVICE_HTTP != 0 {
            // To the node's L7 proxy, which picks a backend per request.
            let Some(l) = proxy::listener4(false) else {
                release(service.id, workload, counted, 0);
                refused(service.id, RESULT_NO_BACKEND, FAMILY_INET, cgroup_id);
                return Verdict::Refused;
            };
            let (id, flags) = proxy::proxied_stamp(counted);
            (id, l.addr[0], l.port, flags)
        } else {
            let Some((id, backend, picked)) = pick_backend(sa, service, class) else {
                release(service.id, workload, counted, 0);
                refused(service.id, RESULT_NO_BACKEND, FAMILY_INET, cgroup_id);
                return Verdict::Refused;
            };
            (id, backend.addr[0], backend.port, counted | picked)
        };
        write_volatile(addr_of_mut!((*sa).user_ip4), addr);
        set_user_port(sa, backend_port);
        let admitted = Admitted {
            service_id: service.id,
            backend_id,
            workload,
            flags,
            cgroup_id,
        };
        stamp(ctx, &key, FAMILY_INET, &admitted);
    }
    Verdict::Routed
}

pub fn connect6(ctx: &SockAddrContext) -> Verdict {
    let sa = ctx.sock_addr;
    // SAFETY: as in connect4.
    unsafe {
        if read_volatile(addr_of!((*sa).protocol)) != IPPROTO_TCP {
            return Verdict::Pass;
        }
        let dialed = read_ip6(sa);
        let port = user_port(sa);
        // A dual-stack socket dialing an IPv4 VIP arrives here as ::ffff:a.b.c.d.
        let mapped = is_v4_mapped(&dialed);
        let key = if mapped {
            ServiceKey {
                addr: [dialed[3], 0, 0, 0],
                port,
                family: FAMILY_INET,
            }
        } else {
            ServiceKey {
                addr: dialed,
                port,
                family: FAMILY_INET6,
            }
        };
        let Some(service) = SERVICES.get(key) else {
            return Verdict::Pass;
        };
        let cgroup_id = bpf_get_current_cgroup_id();
        let (workload, class, counted) = match admit(service, cgroup_id) {
            Admission::Admit {
                workload,
                class,
                stamp_flags,
            } => (workload, class, stamp_flags),
            Admission::Refuse(result) => {
                refused(service.id, result, FAMILY_INET6, cgroup_id);
                return Verdict::Refused;
            }
            Admission::NotEnrolled => return Verdict::Pass,
        };
        let (backend_id, target, backend_port, flags) = if service.flags & SERVICE_HTTP != 0 {
            // To the node's L7 proxy: its IPv4 listener (v4-mapped) for an IPv4 VIP dialed
            // by a dual-stack socket, its IPv6 listener for an IPv6 VIP.
            let listener = if mapped {
                proxy::listener4(true)
            } else {
                proxy::listener6()
            };
            let Some(l) = listener else {
                release(service.id, workload, counted, 0);
                refused(service.id, RESULT_NO_BACKEND, FAMILY_INET6, cgroup_id);
                return Verdict::Refused;
            };
            let (id, flags) = proxy::proxied_stamp(counted);
            (id, l.addr, l.port, flags)
        } else {
            let Some((id, backend, picked)) = pick_backend(sa, service, class) else {
                release(service.id, workload, counted, 0);
                refused(service.id, RESULT_NO_BACKEND, FAMILY_INET6, cgroup_id);
                return Verdict::Refused;
            };
            let target = if mapped {
                v4_mapped_words(backend.addr[0])
            } else {
                backend.addr
            };
            (id, target, backend.port, counted | picked)
        };
        write_ip6(sa, &target);
        set_user_port(sa, backend_port);
        let stamped = ServiceKey {
            addr: dialed,
            port,
            family: FAMILY_INET6,
        };
        let admitted = Admitted {
            service_id: service.id,
            backend_id,
            workload,
            flags,
            cgroup_id,
        };
        stamp(ctx, &stamped, FAMILY_INET6, &admitted);
    }
    Verdict::Routed
}

/// getpeername on a routed socket answers the VIP the app dialed, not the backend.
pub fn getpeername4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: as in connect4.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.as_ptr());
        if let Some(stamp) = SOCK_STAMPS.get(cookie) {
            if stamp.family == FAMILY_INET {
                write_volatile(addr_of_mut!((*sa).user_ip4), stamp.vip[0]);
                set_user_port(sa, stamp.vip_port);
            }
        }
    }
}

pub fn getpeername6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: as in connect4.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.as_ptr());
        if let Some(stamp) = SOCK_STAMPS.get(cookie) {
            if stamp.family == FAMILY_INET6 {
                write_ip6(sa, &stamp.vip);
                set_user_port(sa, stamp.vip_port);
            }
        }
    }
}

/// How a service's policy code picks from its table. Every code the programs know is listed;
/// any other refuses the connect (`None` from [`pick_backend`]) and is counted, because a
/// guess (say, random) would route by a policy nobody configured.
enum How {
    Random,
    RoundRobin,
    Maglev,
    LeastConn,
}

/// Picks a backend from the service's slot table: the caller class's own table if the
/// service has class tables and this class has one, else the default table. Returns the
/// backend and the stamp flags of the counters the pick took (least-conn's per-backend
/// count), which the socket's close releases. A slot whose backend vanished (removed between
/// our table read and the backend lookup) falls through to the next slot once.
unsafe fn pick_backend(
    sa: *mut bpf_sock_addr,
    service: &ServiceEntry,
    class: u32,
) -> Option<(u32, &'static BackendEntry, u32)> {
    let how = match service.lb {
        LB_WEIGHTED_RANDOM => How::Random,
        LB_ROUND_ROBIN => How::RoundRobin,
        LB_MAGLEV => How::Maglev,
        LB_LEAST_CONN => How::LeastConn,
        _ => {
            bump(UNKNOWN_POLICY_SLOT);
            return None;
        }
    };
    let mut key = SlotTableKey {
        service_id: service.id,
        caller_class: CALLER_CLASS_DEFAULT,
    };
    let mut found = None;
    if service.flags & SERVICE_CLASS_TABLES != 0 && class != CALLER_CLASS_DEFAULT {
        key.caller_class = class;
        // SAFETY: a non-preallocated hash element stays valid for the program's run (RCU).
        found = unsafe { SLOT_TABLES.get(key) };
        key.caller_class = CALLER_CLASS_DEFAULT;
    }
    let table = match found {
        Some(t) => t,
        // SAFETY: as above. No class table (the class routes like class 0): the default one.
        None => unsafe { SLOT_TABLES.get(key)? },
    };
    let len = table.len;
    if len as usize > MAX_SLOTS {
        return None;
    }
    let entropy = match how {
        How::Random => unsafe { bpf_get_prandom_u32() },
        How::RoundRobin => round_robin_ticket(service.id),
        How::Maglev => unsafe { maglev_key(sa) },
        How::LeastConn => return least_conn(table),
    };
    let first = pick_slot(entropy, len)?;
    let mut slot = first;
    for _ in 0..2 {
        let id = table.slots[masked(slot as usize, MAX_SLOTS)];
        // SAFETY: as above.
        if let Some(backend) = unsafe { BACKENDS.get(id) } {
            return Some((id, backend, 0));
        }
        slot = if slot + 1 >= len { 0 } else { slot + 1 };
    }
    None
}

/// Least-conn over a table `[id_0..id_{n-1}, w_0..w_{n-1}]`: the decision is
/// `sockmesh_common::pick::least_conn_pick` (exact scan up to `LC_SCAN_MAX` backends, two choices
/// above), fed with the live per-backend counts; the winner's count is taken at once so a
/// burst of concurrent connects sees its own picks.
fn least_conn(table: &SlotTable) -> Option<(u32, &'static BackendEntry, u32)> {
    let n = table.len / 2;
    // SAFETY: helper without arguments.
    let seed = unsafe { (bpf_get_prandom_u32() as u64) << 32 | bpf_get_prandom_u32() as u64 };
    let load = |i: u32| {
        let id = table.slots[masked(i as usize, MAX_SLOTS)];
        let weight = table.slots[masked((n + i) as usize, MAX_SLOTS)];
        match BACKEND_CONNS.get_ptr(id) {
            // SAFETY: array element, 8-byte aligned, lives as long as the map; other CPUs
            // update it atomically, a plain aligned load sees one value or the other.
            Some(c) => (id, unsafe { read_volatile(c) }, weight),
            // An id beyond the array (never written by the agent): weight 0, never picked
            // over a counted backend. Not a made-up count, which the verifier would track
            // as a constant through every later comparison.
            None => (id, 0, 0),
        }
    };
    let id = least_conn_pick(n, load, seed)?;
    // SAFETY: a non-preallocated hash element stays valid for the program's run (RCU).
    let backend = unsafe { BACKENDS.get(id)? };
    Some((id, backend, take_backend(id)))
}

/// A global (not per-CPU) counter, so round robin cycles exactly across CPUs.
fn round_robin_ticket(service_id: u32) -> u32 {
    match RR_COUNTERS.get_ptr_mut(service_id) {
        // SAFETY: array elements are 8-byte aligned and live as long as the map. The bpf
        // target has no `AtomicU64::fetch_add` in core, so we use the intrinsic. SeqCst, not
        // Relaxed: with Relaxed, LLVM 22 emits the non-fetching `lock +=` and then uses the
        // addend as if it were the old value (every ticket was 1); SeqCst selects
        // BPF_ATOMIC_FETCH_ADD (cpu v3), which is what we need and costs the same here.
        Some(ptr) => unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(ptr, 1) as u32 },
        None => 0,
    }
}

/// Maglev's key: the caller's cgroup plus its source address if it bound one before connect.
unsafe fn maglev_key(sa: *mut bpf_sock_addr) -> u32 {
    // SAFETY: ctx->sk is always a valid socket for sock_addr hooks; fields read one by one.
    unsafe {
        let sk = read_volatile(addr_of!((*sa).__bindgen_anon_1.sk));
        let family = read_volatile(addr_of!((*sk).family));
        let src = if family == FAMILY_INET6 as u32 {
            [
                read_volatile(addr_of!((*sk).src_ip6[0])),
                read_volatile(addr_of!((*sk).src_ip6[1])),
                read_volatile(addr_of!((*sk).src_ip6[2])),
                read_volatile(addr_of!((*sk).src_ip6[3])),
            ]
        } else {
            [read_volatile(addr_of!((*sk).src_ip4)), 0, 0, 0]
        };
        caller_hash(bpf_get_current_cgroup_id(), &src, 0)
    }
}

unsafe fn stamp(ctx: &SockAddrContext, vip: &ServiceKey, family: u16, a: &Admitted) {
    // SAFETY: helpers called with the context pointer the kernel gave us.
    unsafe {
        let cookie = bpf_get_socket_cookie(ctx.as_ptr());
        let stamp = SockStamp {
            vip: vip.addr,
            vip_port: vip.port,
            family,
            service_id: a.service_id,
            backend_id: a.backend_id,
            flags: a.flags,
            cgroup_id: a.cgroup_id,
            connect_ns: bpf_ktime_get_ns(),
            workload: a.workload,
            rtt_samples: 0,
        };
        // An LRU map always finds room. A lost stamp costs the getpeername rewrite and
        // observation of this socket, and would leak a taken connection-limit unit: undo it.
        if SOCK_STAMPS.insert(cookie, stamp, 0).is_err() {
            release(a.service_id, a.workload, a.flags, a.backend_id);
        }
    }
}

/// The mesh refused a connect itself: counted under its own result, never as a backend
/// failure.
fn refused(service_id: u32, result: u32, family: u16, cgroup_id: u64) {
    emit(&ConnEvent {
        kind: EVENT_FAILED,
        result,
        service_id,
        cgroup_id,
        family,
        ..ConnEvent::ZERO
    });
}

unsafe fn user_port(sa: *mut bpf_sock_addr) -> u16 {
    // SAFETY: caller passes the context pointer.
    u16::from_be(unsafe { read_volatile(addr_of!((*sa).user_port)) } as u16)
}

unsafe fn set_user_port(sa: *mut bpf_sock_addr, port: u16) {
    // SAFETY: caller passes the context pointer.
    unsafe { write_volatile(addr_of_mut!((*sa).user_port), port.to_be() as u32) }
}

unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> [u32; 4] {
    // SAFETY: caller passes the context pointer; one 4-byte load per word.
    unsafe {
        [
            read_volatile(addr_of!((*sa).user_ip6[0])),
            read_volatile(addr_of!((*sa).user_ip6[1])),
            read_volatile(addr_of!((*sa).user_ip6[2])),
            read_volatile(addr_of!((*sa).user_ip6[3])),
        ]
    }
}

unsafe fn write_ip6(sa: *mut bpf_sock_addr, w: &[u32; 4]) {
    // SAFETY: caller passes the context pointer; one 4-byte store per word.
    unsafe {
        write_volatile(addr_of_mut!((*sa).user_ip6[0]), w[0]);
        write_volatile(addr_of_mut!((*sa).user_ip6[1]), w[1]);
        write_volatile(addr_of_mut!((*sa).user_ip6[2]), w[2]);
        write_volatile(addr_of_mut!((*sa).user_ip6[3]), w[3]);
    }
}
