//! What the observing agent process itself costs: CPU time from `/proc/<pid>/stat` (user +
//! system, its threads included) and memory from `/proc/<pid>/status` (`VmRSS`, `VmHWM`).

use std::fs;

use anyhow::{bail, Context, Result};

/// User plus system CPU time of `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // SAFETY: sysconf only reads a constant of the running system.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        bail!("sysconf(_SC_CLK_TCK) failed");
    }
    parse_cpu_ticks(&text)
        .map(|t| t as f64 / ticks as f64)
        .with_context(|| format!("{path}: {text}"))
}

/// utime + stime (fields 14 and 15) of a `stat` line. The command name (field 2) may hold
/// spaces and parentheses, so fields are counted from its last `)`.
fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    let (_, rest) = stat
        .rsplit_once(')')
        .context("no `)` after the command name")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After `)`: field 3 (state) is index 0, so field N is index N - 3.
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .context("short stat line")?
            .parse()
            .with_context(|| format!("field {n}"))
    };
    Ok(field(14)? + field(15)?)
}

/// Resident memory now and its peak, in KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

pub fn memory(pid: u32) -> Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    parse_memory(&text).with_context(|| path)
}

fn parse_memory(status: &str) -> Result<Memory> {
    let kib = |key: &str| -> Result<u64> {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .with_context(|| format!("no {key}"))?;
        line.trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .with_context(|| format!("{key} {line}"))
    };
    Ok(Memory {
        rss_kib: kib("VmRSS:")?,
        peak_kib: kib("VmHWM:")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_counted_after_the_command_name() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1234 0 0 0 170 35 0 0 20 0 9 \
                    0 123456 1000000 2500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 205);
        assert!(parse_cpu_ticks("4242 (x) S 1 2").is_err());
    }

    #[test]
    fn memory_lines_in_kib() {
        let status =
            "Name:\tsockmesh-agent\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\nThreads:\t9\n";
        assert_eq!(
            parse_memory(status).unwrap(),
            Memory {
                rss_kib: 40960,
                peak_kib: 51200
            }
        );
        assert!(parse_memory("Name:\tx\n").is_err());
    }

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        // Burn 0.1 s of this thread's CPU time (however long that takes on a busy machine);
        // the process's tick-granular count (10 ms ticks) must then show most of it.
        let thread_cpu = || {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid timespec for the call to fill.
            unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
        };
        let start = thread_cpu();
        let mut x = 0u64;
        while thread_cpu() - start < 0.1 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let cpu = cpu_seconds(pid).unwrap();
        assert!(cpu >= 0.05, "{cpu} s of CPU after spinning 0.1 s");
        assert!(memory(pid).unwrap().rss_kib > 0);
    }
}
