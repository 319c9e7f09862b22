//! Verifier statistics of the agent's programs: start the agent once (embedded default
//! config) on a child cgroup and a pin directory of its own, read `verified_insns` of every
//! pinned program with `bpftool prog show pinned ... --json` (bookworm's bpftool 7.1 does
//! not print it yet: then from the kernel's `bpf_prog_info` through aya), stop and clean up.
//!
//! The same code runs on the host (inside `cargo xtask vm-test`) and in each guest (the
//! hidden `cargo xtask vm-verifier`, which the guest script calls with the host's xtask
//! binary): reading the programs through the agent's own pins means other agents running
//! on the same machine never end up in the numbers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;
use serde_json::Value;

use crate::attached_agent::{self, PinDir};
use crate::cgroup::ChildCgroup;
use crate::command;
use crate::scratch::ScratchDir;

/// The kernel's per-program limit on instructions the verifier may process
/// (`BPF_COMPLEXITY_LIMIT_INSNS`).
pub const VERIFIER_INSN_LIMIT: u64 = 1_000_000;

/// One loaded program as bpftool reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgStats {
    /// The pin's file name: the program's full name (the kernel keeps only 15 bytes).
    pub name: String,
    pub prog_type: String,
    /// `None` on kernels before 5.16, which do not report it.
    pub verified_insns: Option<u64>,
    pub bytes_xlated: Option<u64>,
}

/// Parses `bpftool prog show pinned PATH --json` (one object) for the program pinned as
/// `name`.
pub fn parse_prog_json(name: &str, json: &str) -> Result<ProgStats> {
    let v: Value = serde_json::from_str(json).context("bpftool output is not JSON")?;
    // Older bpftool versions print a one-element array for a single program.
    let v = match v {
        Value::Array(mut items) if items.len() == 1 => items.remove(0),
        other => other,
    };
    let obj = v.as_object().context("bpftool output is not an object")?;
    Ok(ProgStats {
        name: name.to_owned(),
        prog_type: obj
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned(),
        verified_insns: obj.get("verified_insns").and_then(Value::as_u64),
        bytes_xlated: obj.get("bytes_xlated").and_then(Value::as_u64),
    })
}

/// Serializes stats for the guest's results file.
pub fn to_json(stats: &[ProgStats]) -> String {
    let items: Vec<Value> = stats
        .iter()
        .map(|p| {
            serde_json::json!({
                "name": p.name,
                "type": p.prog_type,
                "verified_insns": p.verified_insns,
                "bytes_xlated": p.bytes_xlated,
            })
        })
        .collect();
    Value::Array(items).to_string()
}

/// Reads what [`to_json`] wrote.
pub fn from_json(json: &str) -> Result<Vec<ProgStats>> {
    let v: Value = serde_json::from_str(json).context("verifier stats are not JSON")?;
    let items = v.as_array().context("verifier stats are not an array")?;
    items
        .iter()
        .map(|item| {
            Ok(ProgStats {
                name: item["name"].as_str().context("no name")?.to_owned(),
                prog_type: item["type"].as_str().unwrap_or("?").to_owned(),
                verified_insns: item["verified_insns"].as_u64(),
                bytes_xlated: item["bytes_xlated"].as_u64(),
            })
        })
        .collect()
}

/// Program pins under `bpffs` (files inside any `progs` directory), sorted.
fn program_pins(bpffs: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    let mut dirs = vec![bpffs.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else if dir.file_name().is_some_and(|n| n == "progs") {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

/// `bpftool prog show pinned` for every program the agent pinned under `bpffs`.
pub fn read_pinned(bpffs: &Path) -> Result<Vec<ProgStats>> {
    let mut stats = Vec::new();
    for pin in program_pins(bpffs)? {
        let name = pin
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let json = command::stdout(
            Command::new("bpftool")
                .args(["prog", "show", "pinned"])
                .arg(&pin)
                .arg("--json"),
        )?;
        let mut prog = parse_prog_json(&name, &json).with_context(|| pin.display().to_string())?;
        if prog.verified_insns.is_none() {
            // bookworm's bpftool 7.1 predates the field; the kernel (>= 5.16) has it in
            // bpf_prog_info, which aya reads.
            prog.verified_insns = aya::programs::ProgramInfo::from_pin(&pin)
                .ok()
                .and_then(|info| info.verified_instruction_count())
                .map(u64::from);
        }
        stats.push(prog);
    }
    anyhow::ensure!(
        !stats.is_empty(),
        "the agent pinned no programs under {}",
        bpffs.display()
    );
    Ok(stats)
}

/// Starts the agent `agent` on a child cgroup and pin directory of this process, reads its
/// programs' stats and removes everything again.
pub fn collect(agent: &Path) -> Result<Vec<ProgStats>> {
    attached_agent::use_agent_bin(agent);
    sockmesh_bpf_tests::ensure_bpffs_mounted()?;
    let name = format!("sockmesh-vmtest-{}", std::process::id());
    // Declared in this order so they drop in reverse: agent (stop + cleanup), scratch,
    // pins, cgroup.
    let cgroup = ChildCgroup::create(&name)?;
    let pins = PinDir::reserve(&name)?;
    let scratch = ScratchDir::create(&name)?;
    let agent = attached_agent::start(None, cgroup.path(), &pins, scratch.path())?;
    let stats = read_pinned(pins.path());
    drop(agent);
    stats
}

/// The hidden `cargo xtask vm-verifier` the guest runs.
#[derive(Args, Debug)]
pub struct GuestArgs {
    /// The agent binary to load.
    #[arg(long)]
    agent: PathBuf,
    /// Where to write the stats (JSON).
    #[arg(long)]
    out: PathBuf,
}

pub fn guest(args: &GuestArgs) -> Result<()> {
    let stats = collect(&args.agent)?;
    for p in &stats {
        println!(
            "vm-verifier: {} ({}) verified_insns={}",
            p.name,
            p.prog_type,
            p.verified_insns
                .map_or_else(|| "n/a".to_owned(), |n| n.to_string())
        );
    }
    fs::write(&args.out, to_json(&stats)).with_context(|| format!("{}", args.out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftool_prog_json() {
        let json = r#"{"id":42,"type":"cgroup_sock_addr","name":"sm_connect4","tag":"ab",
            "gpl_compatible":true,"bytes_xlated":4096,"jited":true,"bytes_jited":2500,
            "map_ids":[1,2],"verified_insns":12345}"#;
        let p = parse_prog_json("sm_connect4", json).unwrap();
        assert_eq!(p.prog_type, "cgroup_sock_addr");
        assert_eq!(p.verified_insns, Some(12345));
        assert_eq!(p.bytes_xlated, Some(4096));

        let old = r#"[{"id":1,"type":"sock_ops","name":"x"}]"#;
        let p = parse_prog_json("sm_sockops_long_name", old).unwrap();
        assert_eq!(p.name, "sm_sockops_long_name");
        assert_eq!(p.verified_insns, None);
        assert!(parse_prog_json("x", "not json").is_err());
    }

    #[test]
    fn stats_round_trip_through_json() {
        let stats = vec![ProgStats {
            name: "a".into(),
            prog_type: "sock_ops".into(),
            verified_insns: Some(7),
            bytes_xlated: None,
        }];
        assert_eq!(from_json(&to_json(&stats)).unwrap(), stats);
    }
}
