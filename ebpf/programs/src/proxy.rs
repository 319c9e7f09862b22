//! The L7 redirect (sockmesh_common::proxy): connects to an http service go to the node's
//! proxy listener instead of a backend, and the client socket's 4-tuple is recorded with its
//! service and caller once it exists, so the proxy can ask the kernel whom it serves.
//!
//! A proxied socket has no backend: its stamp carries [`PROXIED_BACKEND_ID`] and
//! [`STAMP_PROXIED`], and sock_ops keeps it out of every per-backend signal (stats, ring
//! events), which the proxy reports per request instead. Admission counters taken at
//! connect are released at close like any routed socket's.

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    programs::SockOpsContext,
};
use sockmesh_common::{
    addr::{is_v4_mapped, v4_mapped_words},
    ProxyOrigin, SockPair, SockStamp, FAMILY_INET, FAMILY_INET6, PROXIED_BACKEND_ID,
    STAMP_ESTABLISHED, STAMP_PROXIED, STAMP_SAME_NODE,
};

use crate::{
    admit::release,
    maps::{PROXY, PROXY_ORIGINS, SOCK_STAMPS},
    same_node::own_pair,
};

/// BPF_ANY for map updates.
const ANY: u64 = 0;
const TCP_CLOSE: u32 = 7;

/// Where a proxied connect goes: an address in the dialing socket's own form (IPv4 word 0,
/// or the four IPv6 words) and a port (host order).
pub struct Listener {
    pub addr: [u32; 4],
    pub port: u16,
}

/// The proxy's IPv4 listener for an AF_INET dial (`mapped: false`) or its v4-mapped form for
/// a dual-stack socket dialing an IPv4 VIP (`mapped: true`); `None` while no proxy listens
/// there (port 0 or no IPv4 address), which the caller refuses like a service without
/// backends.
pub fn listener4(mapped: bool) -> Option<Listener> {
    // Copied out once: the agent rewrites the element as a whole, rarely; every field below
    // comes from the same read.
    let t = *PROXY.get(0)?;
    if t.port == 0 || t.addr4 == 0 {
        return None;
    }
    let addr = if mapped {
        v4_mapped_words(t.addr4)
    } else {
        [t.addr4, 0, 0, 0]
    };
    Some(Listener { addr, port: t.port })
}

/// The proxy's IPv6 listener for a native IPv6 dial; `None` as in [`listener4`].
pub fn listener6() -> Option<Listener> {
    let t = *PROXY.get(0)?;
    if t.port == 0 || t.addr6 == [0; 4] {
        return None;
    }
    Some(Listener {
        addr: t.addr6,
        port: t.port,
    })
}

/// The stamp's backend id and flags of a proxied connect, from the flags admission took.
/// Never same-node: the peer is the proxy, whose sockets are not the service's.
pub const fn proxied_stamp(admitted: u32) -> (u32, u32) {
    (
        PROXIED_BACKEND_ID,
        (admitted & !STAMP_SAME_NODE) | STAMP_PROXIED,
    )
}

/// sock_ops for a socket whose stamp says [`STAMP_PROXIED`].
pub fn sock_ops(ctx: &SockOpsContext, stamp: &mut SockStamp, op: u32, cookie: u64) {
    match op {
        // Only the close matters: no RTT samples, retransmit or RTO counts per backend.
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let _ = ctx.set_cb_flags(BPF_SOCK_OPS_STATE_CB_FLAG as i32);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            stamp.flags |= STAMP_ESTABLISHED;
            let origin = ProxyOrigin {
                vip: stamp.vip,
                vip_port: stamp.vip_port,
                family: stamp.family,
                service_id: stamp.service_id,
                workload: stamp.workload,
                _pad: 0,
                cgroup_id: stamp.cgroup_id,
            };
            // An LRU always finds room; should the insert fail anyway, the proxy finds no
            // origin and refuses the connection rather than guess.
            let _ = PROXY_ORIGINS.insert(client_pair(ctx), origin, ANY);
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            // Also after a failed connect (no entry then): the delete is harmless.
            let _ = PROXY_ORIGINS.remove(client_pair(ctx));
            release(
                stamp.service_id,
                stamp.workload,
                stamp.flags,
                stamp.backend_id,
            );
            let _ = SOCK_STAMPS.remove(cookie);
        }
        _ => {}
    }
}

/// The client socket's own tuple as the proxy will name it (`sockmesh_proxy::origin`): a
/// dual-stack socket talking IPv4 (v4-mapped addresses) counts as IPv4.
fn client_pair(ctx: &SockOpsContext) -> SockPair {
    normalized(own_pair!(ctx.ops))
}

#[inline(always)]
fn normalized(p: SockPair) -> SockPair {
    if p.family == FAMILY_INET6 && is_v4_mapped(&p.local) && is_v4_mapped(&p.remote) {
        SockPair {
            local: [p.local[3], 0, 0, 0],
            remote: [p.remote[3], 0, 0, 0],
            family: FAMILY_INET,
            ..p
        }
    } else {
        p
    }
}
