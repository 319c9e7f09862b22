//! Debian kernels for the VMs: the newest `linux-image-<series>...-amd64-unsigned` the apt
//! sources offer, fetched with `apt-get download` into the cache and unpacked with
//! `dpkg-deb -x` (nothing is installed on the host), with `depmod` run on the unpacked tree
//! so the guest can resolve module dependencies (the .deb ships no modules.dep).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::command;

/// Flavor suffix of the packages used: the generic amd64 kernel (its module set has 9p,
/// overlayfs and everything the bpf-tests load on demand).
const SUFFIX: &str = "-amd64-unsigned";

/// One unpacked kernel.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// `uname -r` of the kernel (the name of its modules directory).
    pub release: String,
    pub vmlinuz: PathBuf,
    /// `<root>/lib/modules/<release>` (or under usr/), with modules.dep.
    pub modules: PathBuf,
}

/// The version numbers in a package name's version part, for ordering
/// (`6.1.0-57` -> [6, 1, 0, 57]; `6.12.118+deb12` -> [6, 12, 118, 12]).
fn version_key(version: &str) -> Vec<u64> {
    version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Whether `version` (the part between `linux-image-` and [`SUFFIX`]) is a plain kernel of
/// `series`, not another flavor (`-cloud`, `-rt`) or a meta package (`6.12`).
fn is_series_version(series: &str, version: &str) -> bool {
    let Some(rest) = version.strip_prefix(series) else {
        return false;
    };
    if !rest.starts_with('.') {
        return false;
    }
    // Letters may only appear in Debian's "+debNN" tag.
    let without_tag = match rest.split_once("+deb") {
        Some((head, tail)) if tail.chars().all(|c| c.is_ascii_digit()) => head.to_owned(),
        Some(_) => return false,
        None => rest.to_owned(),
    };
    without_tag
        .chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == '-')
}

/// The newest plain amd64 kernel package of `series` among `names` (apt-cache pkgnames).
pub fn pick_newest<'a>(series: &str, names: impl IntoIterator<Item = &'a str>) -> Option<String> {
    names
        .into_iter()
        .map(str::trim)
        .filter_map(|name| {
            let version = name.strip_prefix("linux-image-")?.strip_suffix(SUFFIX)?;
            is_series_version(series, version).then(|| (version_key(version), name))
        })
        .max()
        .map(|(_, name)| name.to_owned())
}

/// Finds the newest package of `series` known to apt.
pub fn find_package(series: &str) -> Result<String> {
    let names = command::stdout(
        Command::new("apt-cache")
            .arg("pkgnames")
            .arg(format!("linux-image-{series}.")),
    )?;
    pick_newest(series, names.lines()).with_context(|| {
        format!(
            "no linux-image-{series}.*{SUFFIX} package in the apt sources (for 6.12: is \
             bookworm-backports reachable, for 5.10 bullseye, and `apt-get update` done?)"
        )
    })
}

/// Downloads (once) and unpacks (once) `package` under `cache`.
pub fn fetch(package: &str, cache: &Path) -> Result<Kernel> {
    let debs = cache.join("debs");
    fs::create_dir_all(&debs).with_context(|| format!("create {}", debs.display()))?;
    let deb = match cached_deb(&debs, package)? {
        Some(deb) => {
            println!("vm-test: {package}: using cached {}", deb.display());
            deb
        }
        None => {
            println!("vm-test: {package}: apt-get download");
            command::run(
                Command::new("apt-get")
                    .args(["download", "-q"])
                    .arg(package)
                    .current_dir(&debs),
            )?;
            cached_deb(&debs, package)?
                .with_context(|| format!("apt-get download left no {package}_*.deb"))?
        }
    };

    let root = cache.join("kernels").join(package);
    let done = root.join(".unpacked");
    if !done.exists() {
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(&root)?;
        command::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        fs::write(&done, "")?;
    }

    let (release, modules) = modules_dir(&root)?;
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    vmlinuz
        .metadata()
        .with_context(|| format!("{} missing in {package}", vmlinuz.display()))?;
    if !modules.join("modules.dep").exists() {
        // depmod -b wants <base>/lib/modules/<release>; a usr-merged package has it under usr/.
        let base = modules
            .parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .context("modules directory has no base")?;
        command::run(Command::new("depmod").arg("-b").arg(base).arg(&release))?;
    }
    Ok(Kernel {
        release,
        vmlinuz,
        modules,
    })
}

fn cached_deb(debs: &Path, package: &str) -> Result<Option<PathBuf>> {
    let prefix = format!("{package}_");
    for entry in fs::read_dir(debs).with_context(|| format!("read {}", debs.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with(&prefix) && name.ends_with(".deb") {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The single `lib/modules/<release>` (or `usr/lib/modules/<release>`) in an unpacked kernel.
fn modules_dir(root: &Path) -> Result<(String, PathBuf)> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let dir = root.join(base);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                let release = entry.file_name().to_string_lossy().into_owned();
                return Ok((release, entry.path()));
            }
        }
    }
    bail!("no lib/modules/<release> in {}", root.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_newest_plain_kernel_of_a_series() {
        let names = [
            "linux-image-6.1.0-9-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-unsigned",
            "linux-image-6.1.0-57-cloud-amd64-unsigned",
            "linux-image-6.1.0-57-rt-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-dbg",
            "linux-image-6.1.0-56-amd64-unsigned",
        ];
        assert_eq!(
            pick_newest("6.1", names).as_deref(),
            Some("linux-image-6.1.0-57-amd64-unsigned")
        );
        let names = [
            "linux-image-6.12.9+deb12-amd64-unsigned",
            "linux-image-6.12.118+deb12-amd64-unsigned",
            "linux-image-6.12.118+deb12-cloud-amd64-unsigned",
            "linux-image-6.12-amd64-unsigned",
            "linux-image-6.1.0-57-amd64-unsigned",
        ];
        assert_eq!(
            pick_newest("6.12", names).as_deref(),
            Some("linux-image-6.12.118+deb12-amd64-unsigned")
        );
        // 6.1 must not pick up 6.12 packages.
        assert_eq!(pick_newest("6.1", names).as_deref(), Some(names[4]));
        assert_eq!(pick_newest("6.6", names), None);
    }

    #[test]
    fn version_keys_order_numerically() {
        assert!(version_key("6.1.0-57") > version_key("6.1.0-9"));
        assert_eq!(version_key("6.12.118+deb12"), vec![6, 12, 118, 12]);
    }
}
