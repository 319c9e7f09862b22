//! How long a connect() the mesh refuses takes: the number the circuit-breaker test used to
//! assert (p50 under 1 ms) and now only the bench reports.
//!
//! The bench service gets fault injection at 100 % (`POST /v1/fault`): connect4 then
//! refuses every connect the way it does for an open circuit, a shed caller or a limit
//! (admission says no, `bpf_set_retval(-ECONNREFUSED)`, no SYN is sent). One loadgen
//! thread in the bench cgroup times the connects; then the fault is cleared again, and
//! both switches are awaited in the kernel's service entry, not slept for.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{ensure, Result};
use sockmesh_bpf_tests::health_admin::post_fault;
use sockmesh_bpf_tests::kernel_tables::wait_service_entry;
use sockmesh_bpf_tests::Agent;

use super::loadgen::Mode;
use super::report::Sample;
use super::{loadgen, BenchArgs};
use crate::cgroup::ChildCgroup;

/// The bench service's name in the bench config.
const SERVICE: &str = "bench";
/// `fault_refuse_ppm` of a 100 % fault.
const ALL_PPM: u32 = 1_000_000;

pub struct Refusal {
    vip: SocketAddr,
    sample: Sample,
}

/// Refuses every connect to `vip` for one measuring run, then lets them through again.
pub fn measure(
    args: &BenchArgs,
    agent: &Agent,
    cgroup: &ChildCgroup,
    pins: &Path,
    vip: SocketAddr,
) -> Result<Refusal> {
    set_fault(agent, pins, vip, 100.0, ALL_PPM)?;
    let sample = loadgen(vip, Mode::Refused, args.duration_ms, 1, Some(cgroup), None);
    // Cleared whatever the run did: the same-node and config measurements use the agent next.
    set_fault(agent, pins, vip, 0.0, 0)?;
    Ok(Refusal {
        vip,
        sample: sample?,
    })
}

fn set_fault(agent: &Agent, pins: &Path, vip: SocketAddr, percent: f64, ppm: u32) -> Result<()> {
    let answer = post_fault(agent, SERVICE, percent)?;
    ensure!(
        answer.status == 200,
        "POST /v1/fault {percent} %: {} {}",
        answer.status,
        answer.body
    );
    wait_service_entry(pins, vip, &format!("fault {percent} %"), |e| {
        e.fault_refuse_ppm == ppm
    })?;
    Ok(())
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.sample;
        writeln!(
            f,
            "refused connect() to {} (fault 100 %: the kernel path of an open circuit, \
             shedding and limits), one thread in the (b) cgroup:",
            self.vip
        )?;
        writeln!(
            f,
            "  {:.0} refusals/s  p50 {:.1} us  p99 {:.1} us  p999 {:.1} us  errors {}",
            s.ops_per_s, s.p50_us, s.p99_us, s.p999_us, s.errors
        )
    }
}
