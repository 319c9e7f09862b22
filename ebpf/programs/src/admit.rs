//! Admission at connect(): the agent's decisions (circuit state, shedding level, access lists,
//! limits, fault injection) enforced in the kernel, before a backend is picked. Every refusal
//! is immediate (ECONNREFUSED) and reported with its own result code, so it is never mistaken
//! for a backend failure.

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use sockmesh_common::{
    gcra::gcra_admit, CallerEntry, ServiceCaller, ServiceEntry, DEFAULT_PRIORITY,
    RESULT_CIRCUIT_OPEN, RESULT_DENIED, RESULT_FAULT, RESULT_LIMITED, RESULT_SHED, SERVICE_ACL,
    SERVICE_CIRCUIT_OPEN, SERVICE_ENROLLED_ONLY, SERVICE_HALF_OPEN, SERVICE_SAME_NODE,
    STAMP_BACKEND_COUNTED, STAMP_CALLER_COUNTED, STAMP_COUNTED, STAMP_SAME_NODE, UNENROLLED_SLOT,
};

use crate::events::bump;
use crate::maps::{ACL, BACKEND_CONNS, CALLERS, CALLER_CONNS, SERVICE_COUNTERS};

/// What admission decided.
pub enum Admission {
    /// Admitted; `stamp_flags` says which active-connection counters were taken, `class` is
    /// the caller's class (which slot table it picks from).
    Admit {
        workload: u32,
        class: u32,
        stamp_flags: u32,
    },
    /// Refused with a `RESULT_*` code.
    Refuse(u32),
    /// The caller is not enrolled and the service routes enrolled callers only: leave the
    /// connect as it is (counted, not observed).
    NotEnrolled,
}

const PPM: u32 = 1_000_000;
/// CAS attempts on the rate limiter before giving up (only under heavy contention).
const CAS_TRIES: usize = 4;

fn chance(ppm: u32) -> bool {
    // SAFETY: helper without arguments.
    ppm >= PPM || (ppm != 0 && unsafe { bpf_get_prandom_u32() } % PPM < ppm)
}

pub fn admit(service: &ServiceEntry, cgroup_id: u64) -> Admission {
    // SAFETY: element valid for this run; copied out.
    let caller = unsafe { CALLERS.get(cgroup_id) }
        .copied()
        .unwrap_or(CallerEntry {
            workload: 0,
            priority: DEFAULT_PRIORITY,
            class: 0,
        });
    if service.flags & SERVICE_ENROLLED_ONLY != 0 && caller.workload == 0 {
        bump(UNENROLLED_SLOT);
        return Admission::NotEnrolled;
    }
    let key = ServiceCaller {
        service_id: service.id,
        workload: caller.workload,
    };
    if service.flags & SERVICE_ACL != 0 && (caller.workload == 0 || ACL.get_ptr(key).is_none()) {
        return Admission::Refuse(RESULT_DENIED);
    }
    if service.flags & SERVICE_CIRCUIT_OPEN != 0
        || (service.flags & SERVICE_HALF_OPEN != 0 && !chance(service.admit_ppm))
    {
        return Admission::Refuse(RESULT_CIRCUIT_OPEN);
    }
    if caller.priority < service.min_priority {
        return Admission::Refuse(RESULT_SHED);
    }
    if chance(service.fault_refuse_ppm) {
        return Admission::Refuse(RESULT_FAULT);
    }
    if service.rate_interval_ns != 0 && !rate_admit(service) {
        return Admission::Refuse(RESULT_LIMITED);
    }
    let mut stamp_flags = 0;
    if service.max_conns != 0 {
        let Some(active) = SERVICE_COUNTERS.get_ptr_mut(service.id) else {
            return Admission::Refuse(RESULT_LIMITED);
        };
        // SAFETY: array element, 8-byte aligned, lives as long as the map.
        let active = unsafe { core::ptr::addr_of_mut!((*active).active) };
        if !take(active, service.max_conns) {
            return Admission::Refuse(RESULT_LIMITED);
        }
        stamp_flags |= STAMP_COUNTED;
    }
    if service.max_conns_per_caller != 0 && caller.workload != 0 {
        if CALLER_CONNS.get_ptr(key).is_none() {
            // BPF_NOEXIST: a concurrent first connect may win the insert; either way it exists.
            let _ = CALLER_CONNS.insert(key, 0, 1);
        }
        let taken = CALLER_CONNS
            .get_ptr_mut(key)
            .is_some_and(|c| take(c, service.max_conns_per_caller));
        if !taken {
            release(service.id, 0, stamp_flags, 0);
            return Admission::Refuse(RESULT_LIMITED);
        }
        stamp_flags |= STAMP_CALLER_COUNTED;
    }
    if service.flags & SERVICE_SAME_NODE != 0 {
        stamp_flags |= STAMP_SAME_NODE;
    }
    Admission::Admit {
        workload: caller.workload,
        class: caller.class,
        stamp_flags,
    }
}

/// Takes one unit of a counter bounded by `limit`; false (and nothing taken) when full.
fn take(counter: *mut u64, limit: u32) -> bool {
    // SAFETY: `counter` points into a map value; SeqCst so LLVM emits the fetching add (see
    // route.rs).
    let before = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1) };
    if before >= limit as u64 {
        give_back(counter);
        return false;
    }
    true
}

fn give_back(counter: *mut u64) {
    // SAFETY: as in `take`; adding u64::MAX is subtracting one.
    let before = unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, u64::MAX) };
    if before == 0 {
        // Saturate instead of wrapping: an LRU counter evicted and recreated while its
        // connections were open restarts at 0, and their releases must not take it "below"
        // zero (u64::MAX would refuse that caller for good).
        // SAFETY: as above.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(counter, 1) };
    }
}

/// Undoes the counters an admitted connect took (connect failed, or the socket closed):
/// the service's and the caller's (admission), and the backend's (least-conn pick).
pub fn release(service_id: u32, workload: u32, stamp_flags: u32, backend_id: u32) {
    if stamp_flags & STAMP_COUNTED != 0 {
        if let Some(c) = SERVICE_COUNTERS.get_ptr_mut(service_id) {
            // SAFETY: array element, lives as long as the map.
            give_back(unsafe { core::ptr::addr_of_mut!((*c).active) });
        }
    }
    if stamp_flags & STAMP_CALLER_COUNTED != 0 {
        let key = ServiceCaller {
            service_id,
            workload,
        };
        if let Some(c) = CALLER_CONNS.get_ptr_mut(key) {
            give_back(c);
        }
    }
    if stamp_flags & STAMP_BACKEND_COUNTED != 0 {
        if let Some(c) = BACKEND_CONNS.get_ptr_mut(backend_id) {
            give_back(c);
        }
    }
}

/// Counts a least-conn pick in its backend's active connections; the stamp flag it returns
/// makes [`release`] undo it. 0 (nothing to undo) if the id is out of the array's range.
pub fn take_backend(backend_id: u32) -> u32 {
    match BACKEND_CONNS.get_ptr_mut(backend_id) {
        Some(c) => {
            // SAFETY: array element, 8-byte aligned, lives as long as the map; SeqCst for the
            // fetching add (see route.rs).
            unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(c, 1) };
            STAMP_BACKEND_COUNTED
        }
        None => 0,
    }
}

/// The rate limiter: GCRA on the service's theoretical arrival time, updated by CAS so
/// concurrent connects on other CPUs never both take the last token.
fn rate_admit(service: &ServiceEntry) -> bool {
    let Some(state) = SERVICE_COUNTERS.get_ptr_mut(service.id) else {
        return false;
    };
    // SAFETY: array element, lives as long as the map.
    let tat = unsafe { core::ptr::addr_of_mut!((*state).tat_ns) };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    for _ in 0..CAS_TRIES {
        // SAFETY: aligned u64 in a map value.
        let current = unsafe { core::ptr::read_volatile(tat) };
        let Some(next) = gcra_admit(
            current,
            now,
            service.rate_interval_ns,
            service.rate_burst_ns,
        ) else {
            return false;
        };
        // SAFETY: as above; cmpxchg needs BPF cpu v3.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                tat, current, next,
            )
        };
        if swapped {
            return true;
        }
    }
    false
}
