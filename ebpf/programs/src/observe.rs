//! sock_ops: watch routed connections for their whole life, and count inbound ones.
//!
//! Per-ACK and per-retransmit callbacks only touch per-CPU counters; the ring buffer carries
//! one event per lifecycle change (established, failed, closed, inbound). RTT callbacks, the
//! only per-ACK ones, are sampled: a connection's first [`RTT_SAMPLES_PER_CONN`], then the
//! program clears its RTT callback flag and the kernel stops calling it per ACK; the srtt
//! the kernel keeps anyway is sampled once more at close. Observation of a kept-alive or
//! bulk connection therefore costs a bounded number of runs, not one per ACK.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_RETRANS_CB, BPF_SOCK_OPS_RETRANS_CB_FLAG, BPF_SOCK_OPS_RTO_CB,
        BPF_SOCK_OPS_RTO_CB_FLAG, BPF_SOCK_OPS_RTT_CB, BPF_SOCK_OPS_RTT_CB_FLAG,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
    },
    helpers::{bpf_get_socket_cookie, bpf_ktime_get_ns},
    programs::{SockOpsContext, TracePointContext},
    EbpfContext,
};
use sockmesh_common::{
    app_bytes, classify_failed_connect, log2_bucket, BackendKey, ConnEvent, SockStamp,
    EVENT_CLOSED, EVENT_ESTABLISHED, EVENT_FAILED, EVENT_INBOUND, FAMILY_INET6, RESULT_OK,
    RESULT_RESET, RTT_SAMPLES_PER_CONN, STAMP_ESTABLISHED, STAMP_PROXIED, STAMP_RESET_RECEIVED,
    STAMP_SAME_NODE, STAMP_SYN_RTO,
};

use crate::{
    admit::release,
    bound::masked,
    events::emit,
    maps::{BACKEND_STATS, SOCK_STAMPS},
    proxy, same_node,
};

/// Callbacks of a routed connection once its RTT samples are taken: everything but RTT.
const FLAGS_AFTER_SAMPLING: u32 =
    BPF_SOCK_OPS_STATE_CB_FLAG | BPF_SOCK_OPS_RETRANS_CB_FLAG | BPF_SOCK_OPS_RTO_CB_FLAG;

const TCP_SYN_SENT: u32 = 2;
const TCP_CLOSE: u32 = 7;

/// Offset of `sock_cookie` in the tcp:tcp_receive_reset record; the agent sets it from the
/// tracepoint's format file so a kernel with another layout is read correctly.
#[unsafe(no_mangle)]
static RESET_COOKIE_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(64);

pub fn sock_ops(ctx: &SockOpsContext) {
    let op = ctx.op();
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB {
        inbound(ctx);
        return;
    }
    // SAFETY: the cookie helper takes the context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(stamp) = SOCK_STAMPS.get_ptr_mut(cookie) else {
        return; // Not a socket sockmesh routed.
    };
    // SAFETY: LRU element stays valid for this run; fields are plain integers.
    let stamp = unsafe { &mut *stamp };
    if stamp.flags & STAMP_PROXIED != 0 {
        // Sent to the L7 proxy: no backend to observe (crate::proxy).
        proxy::sock_ops(ctx, stamp, op, cookie);
        return;
    }
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            let flags = FLAGS_AFTER_SAMPLING | BPF_SOCK_OPS_RTT_CB_FLAG;
            let _ = ctx.set_cb_flags(flags as i32);
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => {
            stamp.flags |= STAMP_ESTABLISHED;
            if let Some(s) = BACKEND_STATS.get_ptr_mut(key(stamp)) {
                // SAFETY: per-CPU value, this CPU only.
                unsafe { (*s).established += 1 };
            }
            let mut ev = event(stamp, EVENT_ESTABLISHED, RESULT_OK);
            ev.srtt_us = srtt_us(ctx);
            emit(&ev);
            if stamp.flags & STAMP_SAME_NODE != 0 {
                same_node::client_established(ctx);
            }
        }
        BPF_SOCK_OPS_RTT_CB => {
            if stamp.rtt_samples < RTT_SAMPLES_PER_CONN {
                rtt_sample(stamp, srtt_us(ctx));
                stamp.rtt_samples += 1;
            }
            if stamp.rtt_samples >= RTT_SAMPLES_PER_CONN {
                // bpf_sock_ops_cb_flags_set replaces the flags. Should it fail, the next
                // callback tries again; the guard above keeps the count exact meanwhile.
                let _ = ctx.set_cb_flags(FLAGS_AFTER_SAMPLING as i32);
            }
        }
        BPF_SOCK_OPS_RETRANS_CB => {
            if let Some(s) = BACKEND_STATS.get_ptr_mut(key(stamp)) {
                // SAFETY: per-CPU value, this CPU only.
                unsafe { (*s).retransmits += 1 };
            }
        }
        BPF_SOCK_OPS_RTO_CB => {
            if stamp.flags & STAMP_ESTABLISHED == 0 {
                stamp.flags |= STAMP_SYN_RTO;
            }
            if let Some(s) = BACKEND_STATS.get_ptr_mut(key(stamp)) {
                // SAFETY: per-CPU value, this CPU only.
                unsafe { (*s).rtos += 1 };
            }
        }
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == TCP_CLOSE => {
            closed(ctx, stamp, ctx.arg(0), cookie);
        }
        _ => {}
    }
}

fn closed(ctx: &SockOpsContext, stamp: &SockStamp, old_state: u32, cookie: u64) {
    let mut ev = if old_state == TCP_SYN_SENT {
        let elapsed = now().saturating_sub(stamp.connect_ns);
        event(
            stamp,
            EVENT_FAILED,
            classify_failed_connect(stamp.flags, elapsed),
        )
    } else {
        if let Some(s) = BACKEND_STATS.get_ptr_mut(key(stamp)) {
            // SAFETY: per-CPU value, this CPU only.
            unsafe { (*s).closed += 1 };
        }
        let result = if stamp.flags & STAMP_RESET_RECEIVED != 0 {
            RESULT_RESET
        } else {
            RESULT_OK
        };
        let mut ev = event(stamp, EVENT_CLOSED, result);
        // SAFETY: ctx fields the verifier allows sock_ops to read (exact-size loads).
        let (acked, received, retrans) = unsafe {
            (
                read_volatile(addr_of!((*ctx.ops).bytes_acked)),
                read_volatile(addr_of!((*ctx.ops).bytes_received)),
                read_volatile(addr_of!((*ctx.ops).total_retrans)),
            )
        };
        (ev.bytes_acked, ev.bytes_received) = app_bytes(old_state, acked, received);
        ev.total_retrans = retrans;
        if stamp.rtt_samples >= RTT_SAMPLES_PER_CONN {
            // Its RTT callbacks stopped after the first samples: record where the kernel's
            // smoothed RTT ended, so a long connection's later RTT is not lost.
            rtt_sample(stamp, srtt_us(ctx));
        }
        ev
    };
    ev.srtt_us = srtt_us(ctx);
    emit(&ev);
    if stamp.flags & STAMP_SAME_NODE != 0 {
        same_node::client_closed(ctx);
    }
    release(
        stamp.service_id,
        stamp.workload,
        stamp.flags,
        stamp.backend_id,
    );
    let _ = SOCK_STAMPS.remove(cookie);
}

fn inbound(ctx: &SockOpsContext) {
    same_node::server_established(ctx);
    let ops = ctx.ops;
    // SAFETY: ctx reads, one 4-byte load at a constant offset each (the verifier rejects
    // loads through a moved ctx pointer, which an array copy compiles to).
    let (family, local_addr, local_port) = unsafe {
        let family = read_volatile(addr_of!((*ops).family)) as u16;
        let addr = if family == FAMILY_INET6 {
            [
                read_volatile(addr_of!((*ops).local_ip6[0])),
                read_volatile(addr_of!((*ops).local_ip6[1])),
                read_volatile(addr_of!((*ops).local_ip6[2])),
                read_volatile(addr_of!((*ops).local_ip6[3])),
            ]
        } else {
            [read_volatile(addr_of!((*ops).local_ip4)), 0, 0, 0]
        };
        (family, addr, read_volatile(addr_of!((*ops).local_port)))
    };
    emit(&ConnEvent {
        kind: EVENT_INBOUND,
        result: RESULT_OK,
        srtt_us: srtt_us(ctx),
        local_addr,
        // local_port is in host byte order in bpf_sock_ops.
        local_port: local_port as u16,
        family,
        ..ConnEvent::ZERO
    });
}

fn rtt_sample(stamp: &SockStamp, srtt: u32) {
    let Some(s) = BACKEND_STATS.get_ptr_mut(key(stamp)) else {
        return;
    };
    // SAFETY: per-CPU value, this CPU only; the bucket index is bounded by log2_bucket.
    unsafe {
        (*s).srtt_count += 1;
        (*s).srtt_sum_us += srtt as u64;
        let b = masked(log2_bucket(srtt as u64), sockmesh_common::HIST_BUCKETS);
        (*s).srtt_hist[b] += 1;
    }
}

/// tcp:tcp_receive_reset: mark the stamped socket so its close (or failed connect) is
/// classified as reset (or refused).
pub fn receive_reset(ctx: &TracePointContext) {
    // SAFETY: the offset comes from the tracepoint's format file (set by the agent).
    let Ok(cookie) = (unsafe { ctx.read_at::<u64>(RESET_COOKIE_OFFSET.load() as usize) }) else {
        return;
    };
    if let Some(stamp) = SOCK_STAMPS.get_ptr_mut(cookie) {
        // SAFETY: LRU element valid for this run.
        unsafe { (*stamp).flags |= STAMP_RESET_RECEIVED };
    }
}

fn event(stamp: &SockStamp, kind: u32, result: u32) -> ConnEvent {
    ConnEvent {
        kind,
        result,
        service_id: stamp.service_id,
        backend_id: stamp.backend_id,
        cgroup_id: stamp.cgroup_id,
        duration_ns: now().saturating_sub(stamp.connect_ns),
        family: stamp.family,
        ..ConnEvent::ZERO
    }
}

fn key(stamp: &SockStamp) -> BackendKey {
    BackendKey {
        service_id: stamp.service_id,
        backend_id: stamp.backend_id,
    }
}

fn srtt_us(ctx: &SockOpsContext) -> u32 {
    // SAFETY: ctx field read; the kernel keeps srtt_us scaled by 8.
    unsafe { read_volatile(addr_of!((*ctx.ops).srtt_us)) >> 3 }
}

fn now() -> u64 {
    // SAFETY: no arguments.
    unsafe { bpf_ktime_get_ns() }
}
