//! Loader: load the kernel programs, attach them and pin programs, maps and links under
//! `--bpffs`, or adopt what a previous agent pinned there.
//!
//! Pins are the source of truth for "is sockmesh attached here": the kernel keeps a pinned
//! link (and so the program and its maps) alive after the agent exits, which is what lets
//! routing continue while the agent restarts. Layout, one directory per map layout version
//! (`sockmesh_common::LAYOUT_VERSION`, so an agent never adopts maps of another layout):
//! ```text
//! <bpffs>/v<LAYOUT_VERSION>/maps/SM_*          pinned maps
//! <bpffs>/v<LAYOUT_VERSION>/progs/<program>    pinned programs
//! <bpffs>/v<LAYOUT_VERSION>/links/<program>    pinned links (the attachment itself; sk_msg
//!                                              has none: its pinned program proves it)
//! ```

mod cgroup;
#[cfg(test)]
mod object_names;
mod tracefs;

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::SockHash,
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr, SkMsg, SockOps, TracePoint},
    Ebpf, EbpfLoader,
};
use sockmesh_common::{
    SockPair, ACL_MAP, BACKENDS_MAP, BACKEND_CONNS_MAP, BACKEND_STATS_MAP, CALLERS_MAP,
    CALLER_CONNS_MAP, EVENTS_MAP, KERNEL_COUNTERS_MAP, LAYOUT_VERSION, PROG_CONNECT4,
    PROG_CONNECT6, PROG_GETPEERNAME4, PROG_GETPEERNAME6, PROG_RECEIVE_RESET, PROG_SAME_NODE,
    PROG_SCHED_SWITCH, PROG_SCHED_WAKEUP, PROG_SCHED_WAKEUP_NEW, PROG_SOCK_OPS, PROXY_MAP,
    PROXY_ORIGINS_MAP, RR_COUNTERS_MAP, RUNQ_HIST_MAP, RUNQ_START_MAP, SAME_NODE_PENDING_MAP,
    SAME_NODE_SOCKS_MAP, SAME_NODE_TCP_MAP, SERVICES_MAP, SERVICE_COUNTERS_MAP, SLOT_TABLES_MAP,
    SOCK_STAMPS_MAP, WORKLOAD_TIDS_MAP,
};
use tracing::info;

pub(crate) use cgroup::{cgroup2_mount, is_bpffs};

/// The eBPF object built by build.rs.
static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockmesh-ebpf.o"));

/// How a program attaches: to the workload cgroup, or to a (global) tracepoint.
enum Hook {
    SockAddr,
    SockOps,
    TracePoint(&'static str, &'static str),
    /// sk_msg on the same-node socket hash. The map holds the attachment (there is no link
    /// to pin), so the program pin stands for it.
    SockHashMsg,
}

const PROGRAMS: [(&str, Hook); 10] = [
    (PROG_CONNECT4, Hook::SockAddr),
    (PROG_CONNECT6, Hook::SockAddr),
    (PROG_GETPEERNAME4, Hook::SockAddr),
    (PROG_GETPEERNAME6, Hook::SockAddr),
    (PROG_SOCK_OPS, Hook::SockOps),
    (
        PROG_RECEIVE_RESET,
        Hook::TracePoint("tcp", "tcp_receive_reset"),
    ),
    (PROG_SCHED_WAKEUP, Hook::TracePoint("sched", "sched_wakeup")),
    (
        PROG_SCHED_WAKEUP_NEW,
        Hook::TracePoint("sched", "sched_wakeup_new"),
    ),
    (PROG_SCHED_SWITCH, Hook::TracePoint("sched", "sched_switch")),
    (PROG_SAME_NODE, Hook::SockHashMsg),
];

pub(crate) const MAPS: [&str; 21] = [
    SERVICES_MAP,
    SLOT_TABLES_MAP,
    BACKENDS_MAP,
    RR_COUNTERS_MAP,
    BACKEND_CONNS_MAP,
    SOCK_STAMPS_MAP,
    EVENTS_MAP,
    KERNEL_COUNTERS_MAP,
    BACKEND_STATS_MAP,
    WORKLOAD_TIDS_MAP,
    RUNQ_START_MAP,
    RUNQ_HIST_MAP,
    CALLERS_MAP,
    ACL_MAP,
    SERVICE_COUNTERS_MAP,
    CALLER_CONNS_MAP,
    SAME_NODE_SOCKS_MAP,
    SAME_NODE_PENDING_MAP,
    SAME_NODE_TCP_MAP,
    PROXY_MAP,
    PROXY_ORIGINS_MAP,
];

/// The programs to attach: routing always; observation (sock_ops, tracepoints) unless
/// `--observe false` (used to measure what observation costs).
fn programs(observe: bool) -> impl Iterator<Item = &'static (&'static str, Hook)> {
    PROGRAMS
        .iter()
        .filter(move |(_, hook)| observe || matches!(hook, Hook::SockAddr))
}

/// Paths of everything sockmesh pins under one `--bpffs` directory.
#[derive(Clone, Debug)]
pub(crate) struct PinLayout {
    pub version_dir: PathBuf,
    pub maps: PathBuf,
    pub progs: PathBuf,
    pub links: PathBuf,
}

impl PinLayout {
    pub(crate) fn new(root: &Path) -> Self {
        Self::for_version(root, LAYOUT_VERSION)
    }

    fn for_version(root: &Path, version: u32) -> Self {
        let version_dir = root.join(format!("v{version}"));
        Self {
            maps: version_dir.join("maps"),
            progs: version_dir.join("progs"),
            links: version_dir.join("links"),
            version_dir,
        }
    }

    /// The pin that proves a program is attached: its link, or for sk_msg (attached to a
    /// pinned map, no link) the program itself, pinned only after the attach succeeded.
    fn attached_pin(&self, name: &str, hook: &Hook) -> PathBuf {
        match hook {
            Hook::SockHashMsg => self.progs.join(name),
            _ => self.links.join(name),
        }
    }

    fn complete(&self, observe: bool) -> bool {
        programs(observe).all(|(p, hook)| self.attached_pin(p, hook).exists())
            && MAPS.iter().all(|m| self.maps.join(m).exists())
    }
}

/// Outcome of [`attach`].
pub(crate) struct Attached {
    pub layout: PinLayout,
    /// True when a previous agent's pins were adopted without loading anything.
    pub adopted: bool,
}

/// Loads and attaches to `cgroup`, or adopts an existing complete set of pins.
pub(crate) fn attach(bpffs: &Path, cgroup: &Path, observe: bool) -> Result<Attached> {
    let layout = PinLayout::new(bpffs);
    let bpffs_parent = bpffs.parent().unwrap_or(Path::new("/"));
    if !is_bpffs(bpffs_parent)? && !is_bpffs(bpffs)? {
        bail!(
            "{} is not on a bpf filesystem; mount one first (`mount -t bpf bpf /sys/fs/bpf`, \
             or `cargo xtask setup`)",
            bpffs.display()
        );
    }
    if layout.complete(observe) {
        info!(bpffs = %bpffs.display(), "adopting pinned programs, maps and links");
        return Ok(Attached {
            layout,
            adopted: true,
        });
    }
    for dir in [&layout.maps, &layout.progs, &layout.links] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cgroup_dir =
        fs::File::open(cgroup).with_context(|| format!("opening cgroup {}", cgroup.display()))?;
    let tracefs = tracefs::tracefs_root()?;
    let offset = |cat, tp, field| tracefs::field_offset(&tracefs, cat, tp, field);
    let globals = [
        (
            "RESET_COOKIE_OFFSET",
            offset("tcp", "tcp_receive_reset", "sock_cookie")?,
        ),
        ("WAKEUP_PID_OFFSET", offset("sched", "sched_wakeup", "pid")?),
        (
            "SWITCH_PREV_PID_OFFSET",
            offset("sched", "sched_switch", "prev_pid")?,
        ),
        (
            "SWITCH_PREV_STATE_OFFSET",
            offset("sched", "sched_switch", "prev_state")?,
        ),
        (
            "SWITCH_NEXT_PID_OFFSET",
            offset("sched", "sched_switch", "next_pid")?,
        ),
    ];
    // Maps pinned by name are reused if already pinned (a half-finished earlier start), so
    // routing state survives any restart.
    let mut loader = EbpfLoader::new();
    loader.default_map_pin_directory(&layout.maps);
    for (name, value) in &globals {
        loader.override_global(name, value, true);
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .context("loading the eBPF object")?;
    for (name, hook) in programs(observe) {
        if layout.attached_pin(name, hook).exists() {
            continue;
        }
        if let Hook::SockHashMsg = hook {
            attach_sock_hash_msg(&mut ebpf, name, &layout)
                .with_context(|| format!("program {name}"))?;
            info!(program = name, map = SAME_NODE_SOCKS_MAP, "attached");
            continue;
        }
        let link_pin = layout.links.join(name);
        let link = load_and_attach(&mut ebpf, name, hook, &cgroup_dir, &layout)
            .with_context(|| format!("program {name}"))?;
        link.pin(&link_pin)
            .with_context(|| format!("pinning link {name}"))?;
        info!(program = name, cgroup = %cgroup.display(), "attached");
    }
    Ok(Attached {
        layout,
        adopted: false,
    })
}

fn load_and_attach(
    ebpf: &mut Ebpf,
    name: &str,
    hook: &Hook,
    cgroup_dir: &fs::File,
    layout: &PinLayout,
) -> Result<FdLink> {
    let prog = ebpf.program_mut(name).context("missing from the object")?;
    let prog_pin = layout.progs.join(name);
    // With bpf_link (kernel >= 5.7) a cgroup link always coexists with other programs on the
    // cgroup (another mesh, a CNI) and the kernel rejects any attach flag, so "Single"
    // (flags = 0) is the right mode here despite its name.
    let link: FdLink = match hook {
        Hook::SockAddr => {
            let p: &mut CgroupSockAddr = prog.try_into()?;
            p.load().context("verifier rejected it")?;
            pin_program(|| p.pin(&prog_pin), &prog_pin)?;
            let id = p.attach(cgroup_dir, CgroupAttachMode::Single)?;
            p.take_link(id)?.try_into()?
        }
        Hook::SockOps => {
            let p: &mut SockOps = prog.try_into()?;
            p.load().context("verifier rejected it")?;
            pin_program(|| p.pin(&prog_pin), &prog_pin)?;
            let id = p.attach(cgroup_dir, CgroupAttachMode::Single)?;
            p.take_link(id)?.try_into()?
        }
        Hook::TracePoint(category, tp) => {
            let p: &mut TracePoint = prog.try_into()?;
            p.load().context("verifier rejected it")?;
            pin_program(|| p.pin(&prog_pin), &prog_pin)?;
            let id = p.attach(category, tp)?;
            p.take_link(id)?.try_into()?
        }
        Hook::SockHashMsg => bail!("attached to its map, not through a link"),
    };
    Ok(link)
}

/// Attaches the sk_msg program to the pinned same-node socket hash, then pins the program
/// (the pin marks it attached). The pinned map keeps the attachment after the agent exits;
/// dropping the attach handle would detach it, so it is released without detaching. An
/// attach over an earlier one (a start killed before the pin) replaces it.
fn attach_sock_hash_msg(ebpf: &mut Ebpf, name: &str, layout: &PinLayout) -> Result<()> {
    let map_fd = {
        let map = ebpf
            .map(SAME_NODE_SOCKS_MAP)
            .context("socket hash missing from the object")?;
        let hash: SockHash<_, SockPair> = SockHash::try_from(map)?;
        hash.fd().try_clone()?
    };
    let prog = ebpf.program_mut(name).context("missing from the object")?;
    let p: &mut SkMsg = prog.try_into()?;
    p.load().context("verifier rejected it")?;
    let id = p.attach(&map_fd)?;
    std::mem::forget(p.take_link(id)?);
    let prog_pin = layout.progs.join(name);
    pin_program(|| p.pin(&prog_pin), &prog_pin)
}

/// Pins the program just loaded at `path`. Only called when the program's link pin is
/// missing, so a program pin already there is left by an interrupted start (killed between
/// pinning the program and pinning its link) and names a program that is attached nowhere:
/// unpinning it frees that program (and the maps only it held); keeping it would leak one
/// program per interrupted start and leave the pin naming a program other than the attached one.
fn pin_program(pin: impl FnOnce() -> Result<(), aya::pin::PinError>, path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {
            info!(pin = %path.display(), "replacing a program pin left by an interrupted start")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing stale {}", path.display())),
    }
    pin().with_context(|| format!("pinning {}", path.display()))
}

/// Removes one layout version's pins: links first (detaching its programs), then programs
/// and maps, then its directories. Every pin in that version's directories goes, also names
/// this build does not know.
fn remove_version(layout: &PinLayout) -> Result<usize> {
    let mut removed = 0;
    for dir in [&layout.links, &layout.progs, &layout.maps] {
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        for entry in entries {
            let path = entry?.path();
            fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            removed += 1;
        }
    }
    for dir in [
        &layout.links,
        &layout.progs,
        &layout.maps,
        &layout.version_dir,
    ] {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "removing {} (holds pins sockmesh does not own?)",
                        dir.display()
                    )
                });
            }
        }
    }
    Ok(removed)
}

/// The layout versions pinned under `bpffs` (`v1`, `v2`, ...).
fn pinned_versions(bpffs: &Path) -> Result<Vec<u32>> {
    let entries = match fs::read_dir(bpffs) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("listing {}", bpffs.display())),
    };
    let mut versions = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(v) = name
            .to_str()
            .and_then(|n| n.strip_prefix('v'))
            .and_then(|n| n.parse().ok())
        {
            versions.push(v);
        }
    }
    Ok(versions)
}

/// Upgrade across a map-layout change: once this version is attached and its tables hold the
/// config, the programs of any other layout version (left by the previous agent build) are
/// detached by removing their pins. Until then both sets route, each from its own up-to-date
/// tables, so no connect is ever left without routing. Counters and health state of the old
/// layout are not carried over (they are re-learned); docs/upgrade.md has the procedure.
pub(crate) fn retire_other_versions(bpffs: &Path) -> Result<Vec<u32>> {
    let mut retired = Vec::new();
    for v in pinned_versions(bpffs)? {
        if v != LAYOUT_VERSION {
            let n = remove_version(&PinLayout::for_version(bpffs, v))?;
            info!(
                version = v,
                pins = n,
                "retired pins of another layout version"
            );
            retired.push(v);
        }
    }
    Ok(retired)
}

/// Detaches and removes everything pinned under `bpffs`, every layout version. Removing a
/// link pin drops the last reference to the link, which detaches the program; maps go with
/// their last reference.
pub(crate) fn cleanup(bpffs: &Path) -> Result<usize> {
    let mut removed = 0;
    for v in pinned_versions(bpffs)? {
        removed += remove_version(&PinLayout::for_version(bpffs, v))?;
    }
    match fs::remove_dir(bpffs) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "removing {} (holds pins sockmesh does not own?)",
                    bpffs.display()
                )
            });
        }
    }
    Ok(removed)
}
