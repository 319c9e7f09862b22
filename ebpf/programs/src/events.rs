//! Ring-buffer output with batched wake-ups and a lost-event counter.

use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use sockmesh_common::{
    is_mesh_refusal, ConnEvent, EVENTS_WAKEUP_BYTES, EVENT_FAILED, LOST_EVENTS_SLOT,
};

use crate::maps::{EVENTS, KERNEL_COUNTERS};

/// Sends `event` without waking the agent unless a batch has built up; the agent also drains
/// on a short timer, so nothing waits long. Failed connects always wake it: the ban decision
/// races the caller's next attempts. A full ring is counted, never silent.
#[inline(always)]
pub fn emit(event: &ConnEvent) {
    let urgent = event.kind == EVENT_FAILED && !is_mesh_refusal(event.result);
    let flags = if urgent || EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= EVENTS_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<ConnEvent>(event, flags as u64).is_err() {
        bump(LOST_EVENTS_SLOT);
    }
}

#[inline(always)]
pub fn bump(slot: u32) {
    add(slot, 1);
}

#[inline(always)]
pub fn add(slot: u32, n: u64) {
    if let Some(c) = KERNEL_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it while we run (no preemption in BPF).
        unsafe { *c += n };
    }
}
