//! Same-node fast path: when both ends of a connection to a `same_node` service are sockets
//! under the agent's cgroup, sk_msg hands each write straight to the peer socket's receive
//! queue instead of sending it through loopback TCP.
//!
//! The client end joins the socket hash when it is established and leaves a note of the
//! tuple its server end will have; the accepted socket joins when it finds that note. A
//! sender that once finds no peer stays on TCP for the rest of the connection, so no
//! receiver ever has to merge redirected and TCP bytes in order.

use aya_ebpf::{
    bindings::{sk_action::SK_PASS, BPF_F_INGRESS},
    programs::{SkMsgContext, SockOpsContext},
};
use sockmesh_common::{SAME_NODE_BYTES_SLOT, SAME_NODE_FALLBACKS_SLOT, SAME_NODE_PAIRS_SLOT};

use crate::{
    events::{add, bump},
    maps::{SAME_NODE_PENDING, SAME_NODE_SOCKS, SAME_NODE_TCP},
};

/// BPF_ANY for map updates.
const ANY: u64 = 0;

/// The socket's own tuple from a context pointer whose struct has the usual socket fields
/// (`bpf_sock_ops` and `sk_msg_md` name them alike). One exact-size load per field at a
/// constant offset, which is all the verifier accepts for context reads. Paths are spelled
/// out so the L7 redirect (proxy.rs) can use it too.
macro_rules! own_pair {
    ($ctx:expr) => {{
        use ::core::ptr::{addr_of, read_volatile};
        let c = $ctx;
        // SAFETY: context field reads the verifier allows for this program type.
        unsafe {
            let family = read_volatile(addr_of!((*c).family)) as u16;
            let (local, remote) = if family == ::sockmesh_common::FAMILY_INET6 {
                (
                    [
                        read_volatile(addr_of!((*c).local_ip6[0])),
                        read_volatile(addr_of!((*c).local_ip6[1])),
                        read_volatile(addr_of!((*c).local_ip6[2])),
                        read_volatile(addr_of!((*c).local_ip6[3])),
                    ],
                    [
                        read_volatile(addr_of!((*c).remote_ip6[0])),
                        read_volatile(addr_of!((*c).remote_ip6[1])),
                        read_volatile(addr_of!((*c).remote_ip6[2])),
                        read_volatile(addr_of!((*c).remote_ip6[3])),
                    ],
                )
            } else {
                (
                    [read_volatile(addr_of!((*c).local_ip4)), 0, 0, 0],
                    [read_volatile(addr_of!((*c).remote_ip4)), 0, 0, 0],
                )
            };
            ::sockmesh_common::SockPair {
                local,
                remote,
                // local_port is in host order, remote_port in network order (shifted).
                local_port: read_volatile(addr_of!((*c).local_port)) as u16,
                remote_port: ::sockmesh_common::ctx_remote_port(read_volatile(addr_of!(
                    (*c).remote_port
                ))),
                family,
                _pad: 0,
            }
        }
    }};
}
pub(crate) use own_pair;

/// A routed client socket of a `same_node` service is established.
pub fn client_established(ctx: &SockOpsContext) {
    let own = own_pair!(ctx.ops);
    // SAFETY: the sock_ops context the helper expects.
    if SAME_NODE_SOCKS
        .update(own, unsafe { &mut *ctx.ops }, ANY)
        .is_ok()
    {
        let _ = SAME_NODE_PENDING.insert(own.reversed(), 1, ANY);
    }
}

/// An accepted socket is established: join it if a client under the cgroup waits for it.
pub fn server_established(ctx: &SockOpsContext) {
    let own = own_pair!(ctx.ops);
    if SAME_NODE_PENDING.get_ptr(own).is_none() {
        return;
    }
    let _ = SAME_NODE_PENDING.remove(own);
    // SAFETY: the sock_ops context the helper expects.
    if SAME_NODE_SOCKS
        .update(own, unsafe { &mut *ctx.ops }, ANY)
        .is_ok()
    {
        bump(SAME_NODE_PAIRS_SLOT);
    }
}

/// A routed client socket of a `same_node` service closed: drop its notes (the kernel takes
/// the socket itself out of the hash).
pub fn client_closed(ctx: &SockOpsContext) {
    let own = own_pair!(ctx.ops);
    let _ = SAME_NODE_PENDING.remove(own.reversed());
    let _ = SAME_NODE_TCP.remove(own);
}

/// sk_msg verdict for a write on a socket in the hash.
pub fn msg(ctx: &SkMsgContext) -> u32 {
    let own = own_pair!(ctx.msg);
    if SAME_NODE_TCP.get_ptr(own).is_some() {
        return SK_PASS;
    }
    let size = ctx.size();
    if SAME_NODE_SOCKS.redirect_msg(ctx, own.reversed(), BPF_F_INGRESS as u64) == SK_PASS as i64 {
        add(SAME_NODE_BYTES_SLOT, size as u64);
    } else {
        // No peer (its end is not under the cgroup, or it is gone): TCP from now on.
        let _ = SAME_NODE_TCP.insert(own, 1, ANY);
        bump(SAME_NODE_FALLBACKS_SLOT);
    }
    SK_PASS
}
