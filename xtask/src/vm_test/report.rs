//! Reading what the guest wrote (libtest's `test result:` lines, failed test names) and the
//! summary tables printed at the end of `cargo xtask vm-test`.

use std::fmt::Write as _;

use super::verifier::{ProgStats, VERIFIER_INSN_LIMIT};

/// The counts of one libtest `test result:` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TestCounts {
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
}

impl TestCounts {
    fn add(&mut self, other: TestCounts) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.ignored += other.ignored;
    }
}

/// Parses one `test result: ok. 3 passed; 0 failed; 1 ignored; ...` line.
pub fn parse_result_line(line: &str) -> Option<TestCounts> {
    let rest = line.trim().strip_prefix("test result:")?;
    // "ok. 3 passed; ..." or "FAILED. 2 passed; ..."
    let (_, counts) = rest.split_once('.')?;
    let mut out = TestCounts::default();
    let mut seen = false;
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u32>() else { continue };
        match what {
            "passed" => out.passed = n,
            "failed" => out.failed = n,
            "ignored" => out.ignored = n,
            _ => continue,
        }
        seen = true;
    }
    seen.then_some(out)
}

/// The sum of all `test result:` lines in a test binary's output (one per binary, but a
/// log may hold several), or `None` when there is none (the binary crashed or timed out).
pub fn parse_results(log: &str) -> Option<TestCounts> {
    let mut total: Option<TestCounts> = None;
    for counts in log.lines().filter_map(parse_result_line) {
        total.get_or_insert_with(TestCounts::default).add(counts);
    }
    total
}

/// Names of the tests libtest reported as failed (`test name ... FAILED`).
pub fn failed_tests(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, verdict) = rest.rsplit_once(" ... ")?;
            (verdict.trim() == "FAILED").then(|| name.trim().to_owned())
        })
        .collect()
}

/// The outcome of one test binary in one VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BinaryOutcome {
    /// libtest finished and printed its result line.
    Finished {
        counts: TestCounts,
        failed: Vec<String>,
    },
    /// No result line: crashed, killed by the per-test timeout, or never started.
    NoResult { detail: String },
}

impl BinaryOutcome {
    pub fn ok(&self) -> bool {
        matches!(self, BinaryOutcome::Finished { counts, .. } if counts.failed == 0)
    }

    fn cell(&self) -> String {
        match self {
            BinaryOutcome::Finished { counts, .. } if counts.failed == 0 => {
                format!("ok {}/{}", counts.passed, counts.passed)
            }
            BinaryOutcome::Finished { counts, .. } => {
                format!("FAIL {}/{}", counts.passed, counts.passed + counts.failed)
            }
            BinaryOutcome::NoResult { .. } => "no result".to_owned(),
        }
    }
}

/// Everything one kernel's run produced.
#[derive(Debug, Clone)]
pub struct KernelReport {
    /// What was asked for (`6.1`, `6.12`).
    pub series: String,
    /// The Debian package booted, when one was found.
    pub package: Option<String>,
    /// `uname -r` inside the VM; `None` when the guest never got to userspace.
    pub booted: Option<String>,
    /// Why the kernel could not be run or did not finish, if so.
    pub problem: Option<String>,
    /// Per test binary, in run order; binaries the guest never reached are missing.
    pub binaries: Vec<(String, BinaryOutcome)>,
    /// The agent's programs as the guest kernel verified them.
    pub verifier: Result<Vec<ProgStats>, String>,
    /// First console line of each kind of kernel trouble (lockups, BUG, WARNING, ...).
    pub kernel_trouble: Vec<String>,
}

impl KernelReport {
    pub fn failed_to_start(series: &str, package: Option<String>, problem: String) -> Self {
        Self {
            series: series.to_owned(),
            package,
            booted: None,
            problem: Some(problem),
            binaries: Vec::new(),
            verifier: Err("not run".to_owned()),
            kernel_trouble: Vec::new(),
        }
    }

    pub fn all_passed(&self, expected_binaries: usize) -> bool {
        self.booted.is_some()
            && self.problem.is_none()
            && self.binaries.len() == expected_binaries
            && self.binaries.iter().all(|(_, o)| o.ok())
    }

    fn column(&self) -> String {
        self.booted.clone().unwrap_or_else(|| self.series.clone())
    }
}

/// The kernel x test binary table (plus boot and totals rows).
pub fn results_table(binaries: &[String], kernels: &[KernelReport]) -> String {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["test binary".to_owned()];
    header.extend(kernels.iter().map(KernelReport::column));
    rows.push(header);

    let mut booted = vec!["(booted)".to_owned()];
    booted.extend(
        kernels
            .iter()
            .map(|k| if k.booted.is_some() { "yes" } else { "NO" }.to_owned()),
    );
    rows.push(booted);

    for name in binaries {
        let mut row = vec![name.clone()];
        row.extend(kernels.iter().map(|k| {
            k.binaries
                .iter()
                .find(|(n, _)| n == name)
                .map_or_else(|| "-".to_owned(), |(_, o)| o.cell())
        }));
        rows.push(row);
    }

    let mut totals = vec!["(tests passed/failed)".to_owned()];
    totals.extend(kernels.iter().map(|k| {
        let mut sum = TestCounts::default();
        let mut missing = 0;
        for (_, o) in &k.binaries {
            match o {
                BinaryOutcome::Finished { counts, .. } => sum.add(*counts),
                BinaryOutcome::NoResult { .. } => missing += 1,
            }
        }
        missing += binaries.len().saturating_sub(k.binaries.len());
        if missing == 0 {
            format!("{}/{}", sum.passed, sum.failed)
        } else {
            format!("{}/{} +{missing} bin?", sum.passed, sum.failed)
        }
    }));
    rows.push(totals);
    render(&rows)
}

/// Program x (host, kernels) table of `verified_insns`, with the share of the 1M limit.
pub fn verifier_table(columns: &[(String, &Result<Vec<ProgStats>, String>)]) -> String {
    let mut names: Vec<String> = Vec::new();
    for (_, stats) in columns {
        for p in stats.iter().flatten() {
            if !names.contains(&p.name) {
                names.push(p.name.clone());
            }
        }
    }
    names.sort();
    let mut rows = vec![{
        let mut h = vec!["program (verified_insns)".to_owned()];
        h.extend(columns.iter().map(|(c, _)| c.clone()));
        h
    }];
    for name in &names {
        let mut row = vec![name.clone()];
        row.extend(columns.iter().map(|(_, stats)| match stats {
            Ok(stats) => stats.iter().find(|p| &p.name == name).map_or_else(
                || "-".to_owned(),
                |p| match p.verified_insns {
                    Some(n) => format!(
                        "{n} ({:.2}%)",
                        n as f64 * 100.0 / VERIFIER_INSN_LIMIT as f64
                    ),
                    None => "n/a".to_owned(),
                },
            ),
            Err(_) => "-".to_owned(),
        }));
        rows.push(row);
    }
    let mut out = render(&rows);
    for (column, stats) in columns {
        if let Err(e) = stats {
            let _ = writeln!(out, "  {column}: no verifier stats: {e}");
        }
    }
    out
}

/// Left-aligned columns, the first row as header with a rule under it.
fn render(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "{}", rule.join("  "));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ok_and_failed_result_lines() {
        assert_eq!(
            parse_result_line(
                "test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
                 finished in 12.34s"
            ),
            Some(TestCounts {
                passed: 3,
                failed: 0,
                ignored: 1
            })
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured"),
            Some(TestCounts {
                passed: 2,
                failed: 1,
                ignored: 0
            })
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
        assert_eq!(parse_result_line("test result: garbage"), None);
    }

    #[test]
    fn sums_results_and_finds_failures() {
        let log = "running 2 tests\ntest a::one ... ok\ntest b ... FAILED\n\nfailures:\n    b\n\n\
                   test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered \
                   out; finished in 1.00s\n";
        assert_eq!(
            parse_results(log),
            Some(TestCounts {
                passed: 1,
                failed: 1,
                ignored: 0
            })
        );
        assert_eq!(failed_tests(log), vec!["b".to_owned()]);
        assert_eq!(parse_results("thread 'main' panicked"), None);
    }

    #[test]
    fn table_marks_missing_and_failed_binaries() {
        let ok = BinaryOutcome::Finished {
            counts: TestCounts {
                passed: 2,
                failed: 0,
                ignored: 0,
            },
            failed: vec![],
        };
        let bad = BinaryOutcome::Finished {
            counts: TestCounts {
                passed: 1,
                failed: 1,
                ignored: 0,
            },
            failed: vec!["x".into()],
        };
        let k = KernelReport {
            series: "6.1".into(),
            package: None,
            booted: Some("6.1.0-57-amd64".into()),
            problem: None,
            binaries: vec![("a".into(), ok), ("b".into(), bad)],
            verifier: Ok(vec![]),
            kernel_trouble: vec![],
        };
        let names = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let table = results_table(&names, std::slice::from_ref(&k));
        assert!(table.contains("6.1.0-57-amd64"), "{table}");
        assert!(table.contains("ok 2/2"), "{table}");
        assert!(table.contains("FAIL 1/2"), "{table}");
        assert!(table.contains("3/1 +1 bin?"), "{table}");
        assert!(!k.all_passed(3));
    }
}
