//! Reading what the connect hook reads, straight from a test's pinned maps: a service's
//! entry in `SM_SERVICES` (circuit flags, shedding bar, fault share) and its admitted
//! connections in `SM_SVC_STATE`.
//!
//! The admin API shows a health decision when the engine makes it; the agent's main loop
//! writes it into the kernel a moment later. Tests that then expect the kernel to act on it
//! wait here until the map says so (bounded by [`KERNEL_WAIT`]) instead of sleeping a guess,
//! which is either too short on a busy machine or wasted time on an idle one.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use sockmesh_common::{
    ServiceCounters, ServiceEntry, ServiceKey, BACKEND_CONNS_MAP, FAMILY_INET, FAMILY_INET6,
    SERVICES_MAP, SERVICE_COUNTERS_MAP,
};

/// `BPF_EXIST`: update an existing element only.
const BPF_EXIST: u64 = 2;

use sockmesh_common::syscall::{bpf, ElemAttr, BPF_MAP_LOOKUP_ELEM, BPF_MAP_UPDATE_ELEM};

use crate::pressure_fill::{map_pin, open_pinned};

/// How long a test waits for the kernel's tables to show a decision: far above the few
/// milliseconds it takes, so only a decision that never arrives fails the wait.
pub const KERNEL_WAIT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(10);
/// Looks `key` up in the map pinned at `pin`; `None` when it has no such entry.
fn lookup<K: Copy, V: Copy>(pin: &Path, key: &K) -> Result<Option<V>> {
    let fd = open_pinned(pin)?;
    let mut value = std::mem::MaybeUninit::<V>::uninit();
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: key as *const K as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: BPF_MAP_LOOKUP_ELEM reads one key from `key` and writes one value into
    // `value`, both sized like the map's (see below) and alive for the call.
    match unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) } {
        // SAFETY: the kernel wrote the whole value (the map's value size is size_of::<V>(),
        // which the shared crate asserts), and V is plain integers: every bit pattern is valid.
        Ok(_) => Ok(Some(unsafe { value.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("BPF_MAP_LOOKUP_ELEM {}", pin.display())),
    }
}

fn service_key(vip: SocketAddr) -> ServiceKey {
    // Network byte order: the address's bytes as they are, in native-order words.
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let (addr, family) = match vip.ip() {
        IpAddr::V4(ip) => ([word(&ip.octets()), 0, 0, 0], FAMILY_INET),
        IpAddr::V6(ip) => {
            let o = ip.octets();
            (
                [
                    word(&o[0..4]),
                    word(&o[4..8]),
                    word(&o[8..12]),
                    word(&o[12..16]),
                ],
                FAMILY_INET6,
            )
        }
    };
    ServiceKey {
        addr,
        port: vip.port(),
        family,
    }
}

/// The kernel's service entry for `vip` under the agent's `--bpffs` directory `pins`.
pub fn service_entry(pins: &Path, vip: SocketAddr) -> Result<Option<ServiceEntry>> {
    lookup(&map_pin(pins, SERVICES_MAP)?, &service_key(vip))
}

/// Rewrites `vip`'s kernel entry as the agent never would (tests of what the programs do
/// with a value the agent cannot write, e.g. an unknown policy code); fails if it has none.
pub fn set_service_entry(pins: &Path, vip: SocketAddr, entry: &ServiceEntry) -> Result<()> {
    let pin = map_pin(pins, SERVICES_MAP)?;
    let fd = open_pinned(&pin)?;
    let key = service_key(vip);
    let mut attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        key: &key as *const ServiceKey as u64,
        value: entry as *const ServiceEntry as u64,
        flags: BPF_EXIST,
        ..ElemAttr::default()
    };
    // SAFETY: BPF_MAP_UPDATE_ELEM reads one key and one value, sized like the map's (the
    // shared crate asserts both sizes), alive for the call.
    unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }
        .with_context(|| format!("BPF_MAP_UPDATE_ELEM {} for {vip}", pin.display()))?;
    Ok(())
}

/// `least_conn`'s live count for backend `id`: connections picked for it and not yet closed.
pub fn backend_connections(pins: &Path, id: u32) -> Result<u64> {
    let count: Option<u64> = lookup(&map_pin(pins, BACKEND_CONNS_MAP)?, &id)?;
    Ok(count.unwrap_or(0))
}

/// Connections the kernel admitted to service `id` and has not seen close yet (what
/// `max_connections` is checked against).
pub fn active_connections(pins: &Path, id: u32) -> Result<u64> {
    let counters: Option<ServiceCounters> = lookup(&map_pin(pins, SERVICE_COUNTERS_MAP)?, &id)?;
    Ok(counters.map_or(0, |c| c.active))
}

/// Polls `vip`'s kernel entry until `want` holds (at most [`KERNEL_WAIT`]); returns it.
pub fn wait_service_entry(
    pins: &Path,
    vip: SocketAddr,
    what: &str,
    want: impl Fn(&ServiceEntry) -> bool,
) -> Result<ServiceEntry> {
    let deadline = Instant::now() + KERNEL_WAIT;
    loop {
        let entry = service_entry(pins, vip)?;
        if let Some(e) = entry.filter(|e| want(e)) {
            return Ok(e);
        }
        if Instant::now() >= deadline {
            bail!("kernel entry of {vip}: not {what} after {KERNEL_WAIT:?}; last {entry:?}");
        }
        thread::sleep(POLL);
    }
}

/// Polls until the kernel counts exactly `want` admitted connections to `vip`'s service (at
/// most [`KERNEL_WAIT`]): a closed connection's unit returns when its socket reaches CLOSE.
pub fn wait_active_connections(pins: &Path, vip: SocketAddr, want: u64) -> Result<()> {
    let id = service_entry(pins, vip)?
        .with_context(|| format!("no kernel entry for {vip}"))?
        .id;
    let deadline = Instant::now() + KERNEL_WAIT;
    loop {
        let active = active_connections(pins, id)?;
        if active == want {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("{vip}: {active} active connections in the kernel after {KERNEL_WAIT:?}, want {want}");
        }
        thread::sleep(POLL);
    }
}
