//! `cargo xtask test`'s check of the Kubernetes manifests in deploy/:
//!
//! 1. `kubectl kustomize deploy/` renders (kubectl must be installed: Debian's
//!    `kubernetes-client` or any newer kubectl);
//! 2. `kubernetes-validate --strict` accepts every rendered object for the Kubernetes versions
//!    in [`K8S_VERSIONS`]. It bundles the schemas of Kubernetes' own API only, so the
//!    Prometheus Operator's kinds ([`OPERATOR_KINDS`]) have no schema there and are the only
//!    objects allowed through unvalidated; what they carry is checked here instead (the
//!    PrometheusRule is generated from the promtool-checked rules file, the ServiceMonitor's
//!    selector and ports are matched against the Services);
//! 3. the example MeshPolicy is validated against the CRD's own schema (strict fields, with
//!    kubernetes-validate's jsonschema) and parsed by the mesh config model;
//! 4. `checkov` (kubernetes on the rendered objects, dockerfile on deploy/docker/) has no
//!    failed check, and every skipped check carries its reason inline.
//!
//! The tools come from `cargo xtask setup` (pinned, in their own virtualenv). It prints one
//! summary line (`deploy/k8s: kustomize ok ...`) and fails naming the offending object.

mod agent_pod;
mod manifests;

use std::env;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

use crate::{command, scratch::ScratchDir, setup, workspace};

/// Kubernetes versions the rendered manifests must validate against: the oldest and the
/// newest minor that the pinned kubernetes-validate bundles and upstream still supports.
pub const K8S_VERSIONS: &[&str] = &["1.35", "1.37"];

/// Kinds that are CRDs of the Prometheus Operator: kubernetes-validate has no schema for them.
const OPERATOR_KINDS: &[&str] = &["PrometheusRule", "ServiceMonitor"];

const DEPLOY: &str = "deploy";
const DOCKERFILES: &[&str] = &[
    "deploy/docker/agent.Dockerfile",
    "deploy/docker/control.Dockerfile",
];
/// A skip reason shorter than this is not a reason.
const MIN_REASON_LEN: usize = 20;

const VALIDATE_CRD_PY: &str = include_str!("deploy_k8s/validate_crd.py");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub objects: usize,
    pub validated: usize,
    pub checkov_passed: u64,
    pub checkov_skipped: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deploy/k8s: kustomize ok ({} objects), kubernetes-validate ok (K8s {}; {} objects \
             strict, {} without a bundled schema: {}), MeshPolicy example ok, checkov ok ({} \
             passed, {} skipped with reasons)",
            self.objects,
            K8S_VERSIONS.join(", "),
            self.validated,
            self.objects - self.validated,
            OPERATOR_KINDS.join(", "),
            self.checkov_passed,
            self.checkov_skipped
        )
    }
}

pub fn run() -> Result<()> {
    let summary = check(&workspace::root())?;
    println!("{summary}");
    Ok(())
}

pub fn check(root: &Path) -> Result<Summary> {
    manifests::check_prometheus_rule(root)?;
    let kubectl = kubectl()?;
    let validate = tool("kubernetes-validate")?;
    let checkov = tool("checkov")?;

    let rendered = command::stdout(
        Command::new(&kubectl)
            .arg("kustomize")
            .arg(root.join(DEPLOY)),
    )
    .context("`kubectl kustomize deploy/` does not render")?;
    let objects = parse_documents(&rendered)?;
    manifests::check_objects(&objects)?;
    let crd: Yaml = serde_yaml::from_str(&manifests::read(&root.join(manifests::CRD))?)?;
    manifests::check_crd_structural(&crd).context(manifests::CRD)?;
    let example: Yaml =
        serde_yaml::from_str(&manifests::read(&root.join(manifests::EXAMPLE_POLICY))?)?;
    manifests::check_example_policy(&crd, &example).context(manifests::EXAMPLE_POLICY)?;

    let scratch = ScratchDir::create(&format!("sockmesh-deploy-k8s-{}", std::process::id()))?;
    let rendered_file = scratch.path().join("sockmesh.yaml");
    fs::write(&rendered_file, &rendered)?;

    let validated = kubernetes_validate(&validate, &rendered_file, &objects)?;
    validate_custom_resources(&validate, root, scratch.path())?;
    let (checkov_passed, checkov_skipped) = checkov_run(&checkov, root, &rendered_file)?;
    Ok(Summary {
        objects: objects.len(),
        validated,
        checkov_passed,
        checkov_skipped,
    })
}

/// The rendered stream as objects (kustomize separates documents with `---` lines).
fn parse_documents(rendered: &str) -> Result<Vec<Yaml>> {
    let mut objects = Vec::new();
    for doc in rendered.split("\n---\n") {
        let obj: Yaml = serde_yaml::from_str(doc).context("rendered YAML does not parse")?;
        if !obj.is_null() {
            objects.push(obj);
        }
    }
    ensure!(!objects.is_empty(), "kustomize rendered nothing");
    Ok(objects)
}

// ---- kubernetes-validate ---------------------------------------------------------------------

/// Runs `kubernetes-validate --strict` for every version; returns how many objects it
/// validated (per version). Its only tolerated warnings are missing schemas for
/// [`OPERATOR_KINDS`].
fn kubernetes_validate(tool: &Path, file: &Path, objects: &[Yaml]) -> Result<usize> {
    let mut cmd = Command::new(tool);
    cmd.arg("--strict");
    for v in K8S_VERSIONS {
        cmd.args(["-k", v]);
    }
    cmd.arg(file);
    let shown = command::describe(&cmd);
    let out = cmd.output().with_context(|| format!("start `{shown}`"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("INFO "))
        .filter(|l| !OPERATOR_KINDS.iter().any(|k| is_missing_schema(l, k)))
        .collect();
    ensure!(
        out.status.success() && problems.is_empty(),
        "`{shown}` ({}):\n{}",
        out.status,
        problems.join("\n")
    );
    let passed = text
        .lines()
        .filter(|l| l.contains(" passed for resource "))
        .count();
    let expected = objects
        .iter()
        .filter(|o| !OPERATOR_KINDS.contains(&manifests::str_at(o, &["kind"]).unwrap_or("")))
        .count();
    ensure!(
        passed == expected * K8S_VERSIONS.len(),
        "kubernetes-validate passed {passed} objects, expected {expected} x {} versions:\n{text}",
        K8S_VERSIONS.len()
    );
    Ok(expected)
}

fn is_missing_schema(line: &str, kind: &str) -> bool {
    line.starts_with("WARN ") && line.contains(&format!("Couldn't find schema for kind {kind} "))
}

/// The example MeshPolicy against the CRD's schema, run with kubernetes-validate's own
/// interpreter (it brings jsonschema and PyYAML).
fn validate_custom_resources(validate: &Path, root: &Path, scratch: &Path) -> Result<()> {
    let script = scratch.join("validate_crd.py");
    fs::write(&script, VALIDATE_CRD_PY)?;
    let python = interpreter(validate)?;
    let mut cmd = Command::new(&python);
    cmd.arg(&script)
        .arg(root.join(manifests::CRD))
        .arg(root.join(manifests::EXAMPLE_POLICY));
    let out = cmd
        .output()
        .with_context(|| format!("start {}", python.display()))?;
    ensure!(
        out.status.success(),
        "{} does not validate against {}:\n{}{}",
        manifests::EXAMPLE_POLICY,
        manifests::CRD,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The interpreter of a Python console script (its `#!` line).
fn interpreter(script: &Path) -> Result<PathBuf> {
    let text = fs::read(script).with_context(|| format!("read {}", script.display()))?;
    let first = text.split(|b| *b == b'\n').next().unwrap_or_default();
    let first = String::from_utf8_lossy(first);
    match first.strip_prefix("#!") {
        Some(line) => Ok(PathBuf::from(line.split_whitespace().next().unwrap_or(""))),
        None => bail!("{} is not a Python script (no #! line)", script.display()),
    }
}

// ---- checkov ---------------------------------------------------------------------------------

/// Runs checkov on the rendered objects and the Dockerfiles; returns (passed, skipped).
fn checkov_run(tool: &Path, root: &Path, rendered: &Path) -> Result<(u64, u64)> {
    let mut cmd = Command::new(tool);
    cmd.arg("-f").arg(rendered);
    cmd.args(DOCKERFILES.iter().map(|f| root.join(f)));
    // --skip-download: no calls home (the project's machines reach package registries only).
    cmd.args(["--framework", "kubernetes", "dockerfile"]).args([
        "--skip-download",
        "--output",
        "json",
        "--compact",
    ]);
    let shown = command::describe(&cmd);
    let out = cmd.output().with_context(|| format!("start `{shown}`"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: Json = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "`{shown}` printed no JSON report ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    checkov_verdict(&report)
}

/// (passed, skipped) from checkov's JSON report; fails on any failed check, parse error or
/// skip without a reason.
fn checkov_verdict(report: &Json) -> Result<(u64, u64)> {
    // One framework: an object; several: a list of them.
    let reports: Vec<&Json> = match report {
        Json::Array(items) => items.iter().collect(),
        one => vec![one],
    };
    let mut seen = Vec::new();
    let (mut passed, mut skipped, mut problems) = (0, 0, Vec::new());
    for r in reports {
        let kind = r["check_type"].as_str().unwrap_or("?");
        seen.push(kind.to_string());
        let summary = &r["summary"];
        passed += summary["passed"].as_u64().unwrap_or(0);
        skipped += summary["skipped"].as_u64().unwrap_or(0);
        if summary["parsing_errors"].as_u64().unwrap_or(0) > 0 {
            problems.push(format!(
                "{kind}: files checkov could not parse: {}",
                summary["parsing_errors"]
            ));
        }
        for check in r["results"]["failed_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            problems.push(format!(
                "{kind}: FAILED {} \"{}\" on {} ({}); fix it, or skip it with the reason inline",
                check["check_id"].as_str().unwrap_or("?"),
                check["check_name"].as_str().unwrap_or("?"),
                check["resource"].as_str().unwrap_or("?"),
                check["file_path"].as_str().unwrap_or("?"),
            ));
        }
        for check in r["results"]["skipped_checks"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let reason = check["check_result"]["suppress_comment"]
                .as_str()
                .unwrap_or("")
                .trim();
            if reason.len() < MIN_REASON_LEN || reason == "No comment provided" {
                problems.push(format!(
                    "{kind}: {} is skipped on {} without a reason (\"{reason}\")",
                    check["check_id"].as_str().unwrap_or("?"),
                    check["resource"].as_str().unwrap_or("?"),
                ));
            }
        }
    }
    for framework in ["kubernetes", "dockerfile"] {
        ensure!(
            seen.iter().any(|s| s == framework),
            "checkov reported nothing for {framework} (saw {seen:?})"
        );
    }
    ensure!(problems.is_empty(), "checkov:\n{}", problems.join("\n"));
    Ok((passed, skipped))
}

// ---- tools -----------------------------------------------------------------------------------

/// kubectl from PATH, else Debian's path; a clear error when there is none.
fn kubectl() -> Result<PathBuf> {
    find_on_path("kubectl")
        .or_else(|| Some(PathBuf::from("/usr/bin/kubectl")).filter(|p| p.is_file()))
        .context(
            "kubectl not found (not on PATH, no /usr/bin/kubectl): the deploy/ checks render \
             the manifests with `kubectl kustomize deploy/`. `cargo xtask setup` installs \
             Debian's (`apt-get install kubernetes-client`); any newer kubectl works too",
        )
}

/// A tool `cargo xtask setup` installs into its virtualenv, else from PATH.
fn tool(name: &str) -> Result<PathBuf> {
    let venv = Path::new(setup::DEPLOY_TOOLS_VENV).join("bin").join(name);
    if venv.is_file() {
        return Ok(venv);
    }
    find_on_path(name).with_context(|| {
        format!(
            "{name} not found (not in {}, not on PATH): run `cargo xtask setup`, which \
             installs kubernetes-validate {} and checkov {} there from PyPI",
            setup::DEPLOY_TOOLS_VENV,
            setup::KUBERNETES_VALIDATE_VERSION,
            setup::CHECKOV_VERSION
        )
    })
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod agent_pod_tests;
#[cfg(test)]
mod tests;
