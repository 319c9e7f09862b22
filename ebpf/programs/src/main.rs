//! sockmesh kernel programs. Entry points are thin: each calls its hook's function in a
//! module (`route::connect4`, `observe::sock_ops`, `same_node::msg`, `cpu::wakeup`, ...). The
//! connect hooks get a `route::Verdict` back and [`return_code`] turns it into the hook's
//! return code; the others cannot fail the operation they observe, so they return the fixed
//! "proceed" code themselves. All choices (weights, Maglev, bans) were made by the agent when
//! it filled the slot tables; here we only index them.
#![no_std]
#![no_main]
// atomic_xadd: the only way to get a fetch-and-add on the bpf target.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod admit;
mod bound;
mod cpu;
mod events;
mod maps;
mod observe;
mod proxy;
mod route;
mod same_node;

use aya_ebpf::{
    macros::{cgroup_sock_addr, sk_msg, sock_ops, tracepoint},
    programs::{SkMsgContext, SockAddrContext, SockOpsContext, TracePointContext},
};

/// cgroup/connect* return codes: 1 lets the connect proceed, 0 fails it with EPERM at once.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn sockmesh_connect4(ctx: SockAddrContext) -> i32 {
    return_code(route::connect4(&ctx))
}

#[cgroup_sock_addr(connect6)]
pub fn sockmesh_connect6(ctx: SockAddrContext) -> i32 {
    return_code(route::connect6(&ctx))
}

/// The verifier insists the return value is provably 0 or 1. LLVM may keep the constant in a
/// 4-byte stack slot that shares an 8-byte slot with another spill, and then the verifier
/// forgets its value. Masking after a volatile read (which LLVM cannot see through) makes the
/// bound explicit in the final instructions.
#[inline(always)]
fn return_code(verdict: route::Verdict) -> i32 {
    let code = match verdict {
        route::Verdict::Pass | route::Verdict::Routed => ALLOW,
        route::Verdict::Refused => {
            // Refusals look like a closed port (ECONNREFUSED), which every client handles as
            // "try elsewhere / fail fast", rather than the EPERM a bare 0 would give.
            // SAFETY: helper available to cgroup sock_addr programs (kernel >= 5.18).
            unsafe { aya_ebpf::helpers::bpf_set_retval(-ECONNREFUSED) };
            DENY
        }
    };
    // SAFETY: reading a local we own.
    unsafe { core::ptr::read_volatile(&code) & 1 }
}

#[cgroup_sock_addr(getpeername4)]
pub fn sockmesh_getpeername4(ctx: SockAddrContext) -> i32 {
    route::getpeername4(&ctx);
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn sockmesh_getpeername6(ctx: SockAddrContext) -> i32 {
    route::getpeername6(&ctx);
    ALLOW
}

#[sock_ops]
pub fn sockmesh_sock_ops(ctx: SockOpsContext) -> u32 {
    observe::sock_ops(&ctx);
    1
}

/// Runs on writes of sockets in the same-node hash; always passes (redirected or not).
#[sk_msg]
pub fn sockmesh_same_node_msg(ctx: SkMsgContext) -> u32 {
    same_node::msg(&ctx)
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn sockmesh_tcp_receive_reset(ctx: TracePointContext) -> u32 {
    observe::receive_reset(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup")]
pub fn sockmesh_sched_wakeup(ctx: TracePointContext) -> u32 {
    cpu::wakeup(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_wakeup_new")]
pub fn sockmesh_sched_wakeup_new(ctx: TracePointContext) -> u32 {
    cpu::wakeup(&ctx);
    0
}

#[tracepoint(category = "sched", name = "sched_switch")]
pub fn sockmesh_sched_switch(ctx: TracePointContext) -> u32 {
    cpu::switch(&ctx);
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
