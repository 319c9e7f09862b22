//! `cargo xtask fuzz`: runs the cargo-fuzz targets in `fuzz/` (docs/fuzzing.md), each for a
//! bounded time, and reports how many inputs each one ran and whether any crashed.
//!
//! Each target starts from its committed seeds (`fuzz/seeds/TARGET`) plus the corpus earlier
//! runs grew (`fuzz/corpus/TARGET`, not committed; libFuzzer adds new inputs there only), with
//! a token dictionary where one exists (`fuzz/dict/TARGET.dict`). A crashing input lands in
//! `fuzz/artifacts/TARGET/`; libFuzzer's full output in `fuzz/logs/TARGET.log`. One process
//! per target, one target at a time: the machines are shared.
//!
//! `cargo xtask test` runs a short smoke of every target ([`smoke`]) after the unit tests.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{command, setup, workspace};

/// Seconds per target of the smoke `cargo xtask test` runs.
pub const SMOKE_SECONDS: u64 = 20;

/// The fuzz targets and the libFuzzer flags each one needs beyond the common ones.
const TARGETS: &[(&str, &[&str])] = &[
    // parse_config on arbitrary UTF-8: never panics; accepted configs validate and round-trip.
    ("config_parse", &[]),
    // The admin API reply reader: any single allocation above 64 MiB is a failure too (its
    // own allocation accounting is stricter, see the target).
    ("admin_http_response", &["-malloc_limit_mb=64"]),
    // The ring-buffer event decoder.
    ("ring_event", &[]),
    // The control plane's request decoder (method, path, query, body -> request or 4xx).
    ("control_request", &[]),
    // A watch reply as the agent reads it: a delta applied to a config never panics.
    ("config_delta", &[]),
    // The agent's admin router on arbitrary requests, in-process: auth, methods, status codes.
    ("admin_router", &[]),
    // The control plane's router on arbitrary requests, against a real hub.
    ("control_router", &[]),
];

/// Flags for every target: an input that takes over 10 s is reported as a hang, and the
/// process may use at most 2 GiB.
const COMMON_FLAGS: &[&str] = &["-timeout=10", "-rss_limit_mb=2048", "-print_final_stats=1"];

#[derive(Args, Debug)]
pub struct FuzzArgs {
    /// Seconds to fuzz each target (libFuzzer's -max_total_time).
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Fuzz only this target (config_parse, admin_http_response, ring_event, control_request,
    /// config_delta, admin_router, control_router).
    #[arg(long)]
    target: Option<String>,
}

pub fn run(args: &FuzzArgs) -> Result<()> {
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    let names: Vec<&str> = match &args.target {
        Some(name) => match TARGETS.iter().find(|(t, _)| t == name) {
            Some((t, _)) => vec![t],
            None => bail!(
                "unknown fuzz target {name:?}; targets: {}",
                TARGETS
                    .iter()
                    .map(|(t, _)| *t)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        },
        None => TARGETS.iter().map(|(t, _)| *t).collect(),
    };
    fuzz(&names, args.seconds)
}

/// Every target for [`SMOKE_SECONDS`]; fails if any of them finds a crash.
pub fn smoke() -> Result<()> {
    let names: Vec<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
    fuzz(&names, SMOKE_SECONDS)
}

/// What one target's run came to.
struct Outcome {
    name: String,
    execs: Option<u64>,
    seconds: Option<u64>,
    coverage: Option<String>,
    failure: Option<String>,
}

fn fuzz(names: &[&str], seconds: u64) -> Result<()> {
    setup::cargo_fuzz()?;
    let fuzz_dir = workspace::root().join("fuzz");
    let mut outcomes = Vec::new();
    for name in names {
        outcomes.push(run_target(&fuzz_dir, name, seconds)?);
    }

    println!(
        "fuzz: {:<20} {:>12} {:>8} {:>10}  result",
        "target", "execs", "seconds", "exec/s"
    );
    for o in &outcomes {
        let execs = o.execs.map_or("?".to_owned(), |n| n.to_string());
        let secs = o.seconds.map_or("?".to_owned(), |s| s.to_string());
        let rate = match (o.execs, o.seconds) {
            (Some(n), Some(s)) if s > 0 => (n / s).to_string(),
            _ => "?".to_owned(),
        };
        let result = match &o.failure {
            Some(why) => format!("FAILED: {why}"),
            None => format!("ok ({})", o.coverage.as_deref().unwrap_or("no crash")),
        };
        println!(
            "fuzz: {:<20} {execs:>12} {secs:>8} {rate:>10}  {result}",
            o.name
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| o.failure.is_some())
        .map(|o| o.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "fuzzing found a problem in {} (inputs in fuzz/artifacts/, reproduce with \
             `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/FILE`)",
            failed.join(", ")
        );
    }
    Ok(())
}

fn run_target(fuzz_dir: &Path, name: &str, seconds: u64) -> Result<Outcome> {
    let flags = TARGETS
        .iter()
        .find(|(t, _)| *t == name)
        .map(|(_, f)| *f)
        .unwrap_or_default();
    let corpus = fuzz_dir.join("corpus").join(name);
    let seeds = fuzz_dir.join("seeds").join(name);
    let logs = fuzz_dir.join("logs");
    fs::create_dir_all(&corpus).with_context(|| format!("create {}", corpus.display()))?;
    fs::create_dir_all(&logs).with_context(|| format!("create {}", logs.display()))?;
    if name == "config_parse" {
        // The embedded default config is a seed too, read from its one source.
        let default = workspace::root().join("control/model/src/default.yaml");
        fs::copy(&default, corpus.join("default.yaml"))
            .with_context(|| format!("copy {}", default.display()))?;
    }

    // Plain `cargo` (the rustup proxy, not the one running xtask) so `+nightly` selects the
    // installed nightly: cargo-fuzz needs its sanitizer and coverage flags.
    let mut cmd = Command::new("cargo");
    cmd.args(["+nightly", "fuzz", "run", name])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .args(COMMON_FLAGS)
        .args(flags);
    let dict = fuzz_dir.join("dict").join(format!("{name}.dict"));
    if dict.exists() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.current_dir(workspace::root()).stderr(Stdio::piped());

    println!("fuzz: {name} for {seconds} s");
    eprintln!("xtask: $ {}", command::describe(&cmd));
    let log_path = logs.join(format!("{name}.log"));
    let mut log =
        File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    let mut child = cmd
        .spawn()
        .context("failed to start `cargo +nightly fuzz`")?;
    let stderr = child.stderr.take().context("no stderr pipe")?;

    let mut outcome = Outcome {
        name: name.to_owned(),
        execs: None,
        seconds: None,
        coverage: None,
        failure: None,
    };
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading libFuzzer's output")?;
        writeln!(log, "{line}")?;
        note(&line, &mut outcome);
        if shown(&line) {
            eprintln!("{line}");
        }
    }
    let status = child.wait().context("waiting for `cargo fuzz`")?;
    if !status.success() && outcome.failure.is_none() {
        outcome.failure = Some(format!("`cargo fuzz run` exited with {status}"));
    }
    if outcome.failure.is_some() {
        println!("fuzz: {name}: full output in {}", log_path.display());
    }
    Ok(outcome)
}

/// libFuzzer prints a line per new corpus entry, newly covered function and dictionary
/// entry; everything else (start-up, periodic `pulse` lines, the final stats, any crash
/// report) is worth showing.
fn shown(line: &str) -> bool {
    let status_kind = line
        .strip_prefix('#')
        .and_then(|rest| rest.split_once('\t'))
        .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default());
    !matches!(status_kind, Some("NEW" | "REDUCE"))
        && !line.trim_start().starts_with("NEW_FUNC")
        && !line.contains("# Uses: ")
}

/// Picks the numbers and the verdict out of libFuzzer's output.
fn note(line: &str, outcome: &mut Outcome) {
    if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
        outcome.execs = n.trim().parse().ok();
    } else if let Some(rest) = line.strip_prefix("Done ") {
        // "Done 480564 runs in 61 second(s)"
        let words: Vec<&str> = rest.split_whitespace().collect();
        if let [runs, "runs", "in", secs, ..] = words[..] {
            outcome.execs = outcome.execs.or(runs.parse().ok());
            outcome.seconds = secs.parse().ok();
        }
    } else if line.starts_with('#') && line.contains("DONE") {
        // "#480564	DONE   cov: 619 ft: 2106 corp: 500/55Kb lim: 1176 exec/s: 7878 rss: 432Mb"
        if let Some(at) = line.find("cov:") {
            let stats: Vec<&str> = line[at..].split_whitespace().collect();
            outcome.coverage = Some(stats.iter().take(6).copied().collect::<Vec<_>>().join(" "));
        }
    } else if outcome.failure.is_none() {
        // The first report wins: a Rust panic ("thread '...' panicked at FILE:LINE") comes
        // before libFuzzer's "deadly signal" and says more.
        if let Some(at) = line.find("panicked at ") {
            outcome.failure = Some(format!("panic at {}", line[at + 12..].trim()));
        } else if let Some(at) = line.find("ERROR: libFuzzer:") {
            outcome.failure = Some(line[at + 17..].trim().to_owned());
        } else if let Some(at) = line.find("ERROR: AddressSanitizer:") {
            outcome.failure = Some(line[at + 6..].trim().to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome_of(lines: &[&str]) -> Outcome {
        let mut outcome = Outcome {
            name: "t".to_owned(),
            execs: None,
            seconds: None,
            coverage: None,
            failure: None,
        };
        for line in lines {
            note(line, &mut outcome);
        }
        outcome
    }

    #[test]
    fn a_clean_run_reports_execs_seconds_and_coverage() {
        let o = outcome_of(&[
            "#480564\tDONE   cov: 619 ft: 2106 corp: 500/55Kb lim: 1176 exec/s: 7878 rss: 432Mb",
            "Done 480564 runs in 61 second(s)",
            "stat::number_of_executed_units: 480564",
        ]);
        assert_eq!(o.execs, Some(480_564));
        assert_eq!(o.seconds, Some(61));
        assert_eq!(
            o.coverage.as_deref(),
            Some("cov: 619 ft: 2106 corp: 500/55Kb")
        );
        assert!(o.failure.is_none());
    }

    #[test]
    fn a_crash_reports_the_panic_first() {
        let o = outcome_of(&[
            "thread '<unnamed>' (11981) panicked at /work/main/control/src/cli/http.rs:231:12:",
            "attempt to add with overflow",
            "==11981== ERROR: libFuzzer: deadly signal",
            "stat::number_of_executed_units: 1431655",
        ]);
        assert_eq!(o.execs, Some(1_431_655));
        assert_eq!(
            o.failure.as_deref(),
            Some("panic at /work/main/control/src/cli/http.rs:231:12:")
        );
        let o = outcome_of(&["==1== ERROR: libFuzzer: out-of-memory (malloc(268435456))"]);
        assert_eq!(
            o.failure.as_deref(),
            Some("out-of-memory (malloc(268435456))")
        );
    }

    #[test]
    fn per_entry_lines_are_hidden() {
        assert!(!shown("#1234\tNEW    cov: 1 ft: 2 corp: 3/4b lim: 5 exec/s: 0 rss: 37Mb L: 3/3 MS: 1 ChangeBit-"));
        assert!(!shown("#99\tREDUCE cov: 1 ft: 2 corp: 3/4b"));
        assert!(!shown("\tNEW_FUNC[1/1]: 0x55 in foo"));
        assert!(!shown("\"HTTP/1\" # Uses: 457"));
        assert!(shown("#32768\tpulse  cov: 619 ft: 2114 corp: 408/47Kb"));
        assert!(shown("#480564\tDONE   cov: 619"));
        assert!(shown("==1== ERROR: libFuzzer: deadly signal"));
    }
}
