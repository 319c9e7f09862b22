//! Fault injection (drills and tests only): drop a share of SYNs a cgroup sends to chosen
//! targets, or of the segments it receives from them. See `sockmesh_common::fault`.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::{cgroup_skb, map},
    maps::{HashMap, PerCpuArray},
    programs::SkBuffContext,
};
use sockmesh_common::{
    fault::{drops, FaultKey, FaultRule, MAX_FAULT_RULES},
    FAMILY_INET, FAMILY_INET6,
};

#[map(name = "NF_RULES")]
static RULES: HashMap<FaultKey, FaultRule> = HashMap::with_max_entries(MAX_FAULT_RULES, 0);

/// Slot 0: SYNs dropped; slot 1: data segments dropped.
#[map(name = "NF_DROPS")]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

const PASS: i32 = 1;
const DROP: i32 = 0;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// Egress: SYNs to a target. A dropped SYN is retransmitted after the RTO, so connects time out.
#[cgroup_skb(egress)]
pub fn sockmesh_netfault_egress(ctx: SkBuffContext) -> i32 {
    match verdict(&ctx, false) {
        Some(true) => DROP,
        _ => PASS,
    }
}

/// Ingress: segments from a target. Dropping on egress would not be a loss (TCP gets -EPERM
/// from the output path and just sends again later); on ingress the segment is discarded
/// before TCP sees it, so the peer's data or ACK is really lost and TCP retransmits.
#[cgroup_skb(ingress)]
pub fn sockmesh_netfault_ingress(ctx: SkBuffContext) -> i32 {
    match verdict(&ctx, true) {
        Some(true) => DROP,
        _ => PASS,
    }
}

/// Some(true) to drop. cgroup_skb data starts at the IP header. On ingress the rule is looked
/// up by the packet's source (the target talking to us), on egress by its destination.
fn verdict(ctx: &SkBuffContext, ingress: bool) -> Option<bool> {
    let first: u8 = ctx.load(0).ok()?;
    let (key, tcp_off) = match first >> 4 {
        4 => {
            if ctx.load::<u8>(9).ok()? != IPPROTO_TCP {
                return None;
            }
            let ihl = ((first & 0x0f) as usize) * 4;
            let addr: u32 = ctx.load(if ingress { 12 } else { 16 }).ok()?;
            let port = u16::from_be(ctx.load::<u16>(ihl + if ingress { 0 } else { 2 }).ok()?);
            let key = FaultKey {
                addr: [addr, 0, 0, 0],
                port,
                family: FAMILY_INET,
            };
            (key, ihl)
        }
        6 => {
            // Only a TCP header directly after the fixed header; extension headers pass.
            if ctx.load::<u8>(6).ok()? != IPPROTO_TCP {
                return None;
            }
            let a = if ingress { 8 } else { 24 };
            let addr = [
                ctx.load(a).ok()?,
                ctx.load(a + 4).ok()?,
                ctx.load(a + 8).ok()?,
                ctx.load(a + 12).ok()?,
            ];
            let port = u16::from_be(ctx.load::<u16>(40 + if ingress { 0 } else { 2 }).ok()?);
            (
                FaultKey {
                    addr,
                    port,
                    family: FAMILY_INET6,
                },
                40,
            )
        }
        _ => return None,
    };
    // SAFETY: element valid for this run.
    let rule = unsafe { RULES.get(key)? };
    let flags: u8 = ctx.load(tcp_off + 13).ok()?;
    // SAFETY: helper without arguments.
    let rand = unsafe { bpf_get_prandom_u32() };
    let syn = flags & TCP_SYN != 0;
    let (slot, drop) = if !ingress && syn && flags & TCP_ACK == 0 {
        (0, drops(rule.drop_syn_ppm, rand))
    } else if ingress && !syn {
        // Data and pure ACKs alike: losing either makes our side retransmit.
        (1, drops(rule.drop_data_ppm, rand))
    } else {
        return None;
    };
    if drop {
        if let Some(c) = DROPS.get_ptr_mut(slot) {
            // SAFETY: per-CPU slot.
            unsafe { *c += 1 };
        }
    }
    Some(drop)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
