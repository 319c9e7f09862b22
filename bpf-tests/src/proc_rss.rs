//! A process's resident memory over a test: `VmRSS` from `/proc/<pid>/status`, sampled in
//! a thread until stopped, keeping the peak; and the agent's spawned `sockmesh-proxy`, found
//! among its children.

use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// `VmRSS` of `pid`, in KiB.
pub fn vm_rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no VmRSS in /proc/{pid}/status"))
}

/// The children of `parent` whose command name is `comm`.
pub fn children_named(parent: u32, comm: &str) -> Result<Vec<u32>> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        // The process may be gone between the listing and the read.
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold spaces and parentheses; it ends at
        // the last ')'.
        let Some((head, tail)) = stat.rsplit_once(')') else {
            continue;
        };
        let name = head.split_once('(').map(|(_, n)| n).unwrap_or_default();
        let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if name == comm && ppid == Some(parent) {
            found.push(pid);
        }
    }
    Ok(found)
}

/// The one `sockmesh-proxy` the agent `agent_pid` runs.
pub fn spawned_proxy(agent_pid: u32) -> Result<u32> {
    match children_named(agent_pid, "sockmesh-proxy")?.as_slice() {
        [pid] => Ok(*pid),
        other => bail!(
            "the agent {agent_pid} runs {} proxies: {other:?}",
            other.len()
        ),
    }
}

/// Samples a process's `VmRSS` every `every` until [`RssSampler::stop`].
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<u64>>>,
}

/// What a sampler saw, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct RssSamples {
    pub first: u64,
    pub peak: u64,
    pub last: u64,
    pub samples: usize,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut samples = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                match vm_rss_kib(pid) {
                    Ok(kib) => samples.push(kib),
                    Err(_) => break,
                }
                thread::sleep(every);
            }
            samples
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops sampling; fails if the process was gone before the first sample.
    pub fn stop(mut self) -> Result<RssSamples> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self
            .thread
            .take()
            .expect("stopped once")
            .join()
            .map_err(|_| anyhow::anyhow!("the sampler panicked"))?;
        let (Some(&first), Some(&last)) = (samples.first(), samples.last()) else {
            bail!("no VmRSS sample: the process was gone");
        };
        Ok(RssSamples {
            first,
            peak: samples.iter().copied().max().unwrap_or(0),
            last,
            samples: samples.len(),
        })
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
