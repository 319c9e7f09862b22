//! The programs' maps. Names and types come from `sockmesh_common` so the agent opens exactly
//! these; all are pinned by name so a restarted agent adopts them.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap},
};
use sockmesh_common::{
    BackendEntry, ServiceEntry, ServiceKey, SlotTable, SlotTableKey, SockStamp, MAX_BACKENDS,
    MAX_SERVICES, MAX_SLOT_TABLES, MAX_SOCK_STAMPS,
};

/// Elements are allocated on update and freed after an RCU grace period, so a reader holding
/// an element never sees it rewritten: updates are atomic replacements.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map(name = "SM_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, ServiceEntry> =
    HashMap::pinned(MAX_SERVICES, BPF_F_NO_PREALLOC);

#[map(name = "SM_SLOT_TABLES")]
pub static SLOT_TABLES: HashMap<SlotTableKey, SlotTable> =
    HashMap::pinned(MAX_SLOT_TABLES, BPF_F_NO_PREALLOC);

#[map(name = "SM_BACKENDS")]
pub static BACKENDS: HashMap<u32, BackendEntry> = HashMap::pinned(MAX_BACKENDS, BPF_F_NO_PREALLOC);

#[map(name = "SM_RR_COUNTERS")]
pub static RR_COUNTERS: Array<u64> = Array::pinned(MAX_SERVICES, 0);

/// Active connections per backend id for least-conn (see `sockmesh_common::BACKEND_CONNS_MAP`).
#[map(name = "SM_BACKEND_CONNS")]
pub static BACKEND_CONNS: Array<u64> = Array::pinned(MAX_BACKENDS, 0);

#[map(name = "SM_SOCK_STAMPS")]
pub static SOCK_STAMPS: LruHashMap<u64, SockStamp> = LruHashMap::pinned(MAX_SOCK_STAMPS, 0);

// ---- signals (see sockmesh_common::signals) ----

use aya_ebpf::maps::{PerCpuArray, PerCpuHashMap, RingBuf};
use sockmesh_common::{
    BackendKey, BackendTcpStats, RunqHist, EVENTS_RING_BYTES, KERNEL_COUNTER_SLOTS,
    MAX_BACKEND_STATS, MAX_WORKLOADS, MAX_WORKLOAD_TIDS,
};

#[map(name = "SM_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_RING_BYTES, 0);

#[map(name = "SM_COUNTERS")]
pub static KERNEL_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(KERNEL_COUNTER_SLOTS, 0);

/// Entries are created by the agent when a backend joins a service, so the kernel never
/// allocates on the per-ACK path; not preallocated because per-CPU x capacity would be large.
#[map(name = "SM_BACKEND_TCP")]
pub static BACKEND_STATS: PerCpuHashMap<BackendKey, BackendTcpStats> =
    PerCpuHashMap::pinned(MAX_BACKEND_STATS, BPF_F_NO_PREALLOC);

#[map(name = "SM_WL_TIDS")]
pub static WORKLOAD_TIDS: HashMap<u32, u32> = HashMap::pinned(MAX_WORKLOAD_TIDS, 0);

#[map(name = "SM_RUNQ_START")]
pub static RUNQ_START: HashMap<u32, u64> = HashMap::pinned(MAX_WORKLOAD_TIDS, 0);

#[map(name = "SM_RUNQ_HIST")]
pub static RUNQ_HIST: PerCpuArray<RunqHist> = PerCpuArray::pinned(MAX_WORKLOADS, 0);

// ---- admission (see admit.rs) ----

use sockmesh_common::{CallerEntry, ServiceCaller, ServiceCounters, MAX_ACL, MAX_CALLERS};

#[map(name = "SM_CALLERS")]
pub static CALLERS: HashMap<u64, CallerEntry> = HashMap::pinned(MAX_CALLERS, 0);

#[map(name = "SM_ACL")]
pub static ACL: HashMap<ServiceCaller, u32> = HashMap::pinned(MAX_ACL, 0);

#[map(name = "SM_SVC_STATE")]
pub static SERVICE_COUNTERS: Array<ServiceCounters> = Array::pinned(MAX_SERVICES, 0);

/// LRU: a (service, caller) pair that stops calling ages out instead of filling the map.
#[map(name = "SM_CALLER_CONNS")]
pub static CALLER_CONNS: LruHashMap<ServiceCaller, u64> = LruHashMap::pinned(MAX_ACL, 0);

// ---- same-node fast path (see same_node.rs) ----

use aya_ebpf::maps::SockHash;
use sockmesh_common::{SockPair, MAX_SAME_NODE_SOCKS};

#[map(name = "SM_SAME_NODE")]
pub static SAME_NODE_SOCKS: SockHash<SockPair> = SockHash::pinned(MAX_SAME_NODE_SOCKS, 0);

/// LRU: a client whose server end never shows up (it is not under the cgroup) ages out.
#[map(name = "SM_SAME_NODE_WAIT")]
pub static SAME_NODE_PENDING: LruHashMap<SockPair, u32> =
    LruHashMap::pinned(MAX_SAME_NODE_SOCKS, 0);

#[map(name = "SM_SAME_NODE_TCP")]
pub static SAME_NODE_TCP: LruHashMap<SockPair, u32> = LruHashMap::pinned(MAX_SAME_NODE_SOCKS, 0);

// ---- the L7 redirect (see proxy.rs and sockmesh_common::proxy) ----

use sockmesh_common::{ProxyOrigin, ProxyTarget, MAX_PROXY_ORIGINS};

/// The node proxy's listener, element 0; written by the agent (all zero: no proxy).
#[map(name = "SM_PROXY")]
pub static PROXY: Array<ProxyTarget> = Array::pinned(1, 0);

/// LRU: a proxied client socket that dies without a close callback ages out.
#[map(name = "SM_PROXY_ORIGINS")]
pub static PROXY_ORIGINS: LruHashMap<SockPair, ProxyOrigin> =
    LruHashMap::pinned(MAX_PROXY_ORIGINS, 0);
