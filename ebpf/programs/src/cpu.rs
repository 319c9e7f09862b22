//! Run-queue latency of configured workloads, from the sched tracepoints (runqlat's method):
//! a tracked thread's wait starts when it is woken or preempted while runnable, and ends
//! when it is switched in. Only threads the agent lists in WORKLOAD_TIDS are timed, so the
//! per-switch cost for everything else is one hash miss.

use aya_ebpf::{helpers::bpf_ktime_get_ns, programs::TracePointContext};
use sockmesh_common::{log2_bucket, HIST_BUCKETS};

use crate::{
    bound::masked,
    maps::{RUNQ_HIST, RUNQ_START, WORKLOAD_TIDS},
};

/// Field offsets, set by the agent from the tracepoints' format files.
#[unsafe(no_mangle)]
static WAKEUP_PID_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(24);
#[unsafe(no_mangle)]
static SWITCH_PREV_PID_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(24);
#[unsafe(no_mangle)]
static SWITCH_PREV_STATE_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(32);
#[unsafe(no_mangle)]
static SWITCH_NEXT_PID_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(56);

pub fn wakeup(ctx: &TracePointContext) {
    // SAFETY: offset from the format file.
    if let Ok(pid) = unsafe { ctx.read_at::<u32>(WAKEUP_PID_OFFSET.load() as usize) } {
        start_wait(pid);
    }
}

pub fn switch(ctx: &TracePointContext) {
    // SAFETY: offsets from the format file.
    let (prev, prev_state, next) = unsafe {
        (
            ctx.read_at::<u32>(SWITCH_PREV_PID_OFFSET.load() as usize),
            ctx.read_at::<u64>(SWITCH_PREV_STATE_OFFSET.load() as usize),
            ctx.read_at::<u32>(SWITCH_NEXT_PID_OFFSET.load() as usize),
        )
    };
    // The tracepoint reports 0 for a task that stays runnable and TASK_REPORT_MAX (0x100) for
    // a preempted one (including CFS throttling): both go straight back to the run queue.
    if let (Ok(prev), Ok(state)) = (prev, prev_state) {
        if state & 0xff == 0 {
            start_wait(prev);
        }
    }
    if let Ok(next) = next {
        end_wait(next);
    }
}

fn start_wait(tid: u32) {
    if WORKLOAD_TIDS.get_ptr(tid).is_some() {
        // SAFETY: no arguments.
        let now = unsafe { bpf_ktime_get_ns() };
        let _ = RUNQ_START.insert(tid, now, 0);
    }
}

fn end_wait(tid: u32) {
    let Some(start) = RUNQ_START.get_ptr(tid) else {
        return;
    };
    // SAFETY: element valid for this run.
    let start = unsafe { *start };
    let _ = RUNQ_START.remove(tid);
    let Some(workload) = WORKLOAD_TIDS.get_ptr(tid) else {
        return;
    };
    // SAFETY: element valid for this run.
    let workload = unsafe { *workload };
    let Some(h) = RUNQ_HIST.get_ptr_mut(workload) else {
        return;
    };
    // SAFETY: no arguments.
    let us = unsafe { bpf_ktime_get_ns() }.saturating_sub(start) / 1000;
    // SAFETY: per-CPU value, this CPU only; bucket index bounded.
    unsafe {
        (*h).count += 1;
        (*h).sum_us += us;
        (*h).buckets[masked(log2_bucket(us), HIST_BUCKETS)] += 1;
    }
}
