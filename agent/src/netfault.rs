//! `sockmesh-agent netfault`: attach the packet-fault program to a cgroup for a bounded time.
//! For chaos drills and the kernel tests (this kernel has no netem). The attachment is not
//! pinned, so it ends with the process, whatever way the process ends.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::{Context, Result};
use aya::{
    maps::{HashMap, PerCpuArray},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType},
    EbpfLoader,
};
use sockmesh_common::fault::{
    FaultKey, FaultRule, FAULT_DROPS_MAP, FAULT_RULES_MAP, PPM, PROG_NETFAULT_EGRESS,
    PROG_NETFAULT_INGRESS,
};

use crate::tables::addr::ip_words;

static NETFAULT_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sockmesh-netfault.o"));

#[derive(clap::Args)]
pub(crate) struct NetfaultArgs {
    /// cgroup v2 directory whose outgoing packets are affected.
    #[arg(long)]
    cgroup: PathBuf,
    /// Destination (the real backend address) to apply the faults to; repeatable.
    #[arg(long = "target", required = true)]
    targets: Vec<SocketAddr>,
    /// Percentage of SYNs to drop (100: connects time out).
    #[arg(long, default_value_t = 0.0)]
    drop_syn: f64,
    /// Percentage of segments received from the targets to drop (real losses: retransmits).
    #[arg(long, default_value_t = 0.0)]
    drop_data: f64,
    /// Stop after this many seconds even if not signalled (a drill must end by itself).
    #[arg(long, default_value_t = 300)]
    duration_secs: u64,
}

fn ppm(percent: f64) -> Result<u32> {
    anyhow::ensure!(
        (0.0..=100.0).contains(&percent),
        "a percentage must be within 0..=100, got {percent}"
    );
    Ok((percent / 100.0 * PPM as f64).round() as u32)
}

pub(crate) fn run(args: NetfaultArgs) -> Result<()> {
    let rule = FaultRule {
        drop_syn_ppm: ppm(args.drop_syn)?,
        drop_data_ppm: ppm(args.drop_data)?,
    };
    let mut ebpf = EbpfLoader::new()
        .load(NETFAULT_OBJECT)
        .context("loading the netfault object")?;
    let mut rules: HashMap<_, FaultKey, FaultRule> =
        HashMap::try_from(ebpf.map_mut(FAULT_RULES_MAP).context("rules map")?)?;
    for t in &args.targets {
        let (family, addr) = ip_words(t.ip());
        rules.insert(
            FaultKey {
                addr,
                port: t.port(),
                family,
            },
            rule,
            0,
        )?;
    }
    let cgroup = std::fs::File::open(&args.cgroup)
        .with_context(|| format!("opening cgroup {}", args.cgroup.display()))?;
    for (name, direction) in [
        (PROG_NETFAULT_EGRESS, CgroupSkbAttachType::Egress),
        (PROG_NETFAULT_INGRESS, CgroupSkbAttachType::Ingress),
    ] {
        let prog: &mut CgroupSkb = ebpf
            .program_mut(name)
            .context("netfault program")?
            .try_into()?;
        prog.load()?;
        prog.attach(&cgroup, direction, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to {}", args.cgroup.display()))?;
    }
    // Tests wait for this line before they start traffic.
    println!(
        "netfault active on {} for {:?}",
        args.cgroup.display(),
        args.targets
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = tokio::time::sleep(Duration::from_secs(args.duration_secs)) => {}
        }
        anyhow::Ok(())
    })?;
    let drops: PerCpuArray<_, u64> =
        PerCpuArray::try_from(ebpf.map(FAULT_DROPS_MAP).context("drops map")?)?;
    let count = |i: u32| drops.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
    println!(
        "netfault done: dropped {} SYNs, {} segments from targets",
        count(0),
        count(1)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_become_ppm() {
        assert_eq!(ppm(100.0).unwrap(), PPM);
        assert_eq!(ppm(2.5).unwrap(), 25_000);
        assert!(ppm(101.0).is_err());
        assert!(ppm(-1.0).is_err());
    }
}
