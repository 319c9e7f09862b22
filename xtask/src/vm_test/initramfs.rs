//! The guest's initramfs: Debian's static busybox, the few modules needed to reach the
//! host's root over 9p (in dependency order from modules.dep), and an `/init` that mounts
//! it read-only with a tmpfs overlay on top, mounts the writable results share and
//! switches root into the guest script ([`super::guest`]).
//!
//! The archive is written here (cpio "newc", uncompressed) rather than with cpio(1), so
//! `/dev/console` can be a device node without creating one on the host.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::command;

/// Where Debian's busybox-static puts its binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Modules the initramfs loads before the root is there: virtio over PCI, the 9p
/// filesystem and its virtio transport, overlayfs. Built-in ones (6.12 has virtio_pci
/// built in) are skipped. Everything else the tests need (inet_diag for SOCK_DESTROY,
/// netem, ...) the guest kernel loads on demand with the host's modprobe, from the
/// unpacked modules directory bind-mounted at /lib/modules/<release>.
pub const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The 9p mount tags of the two shares.
pub const ROOT_TAG: &str = "hostroot";
pub const RESULTS_TAG: &str = "results";

/// A module's name from its path in modules.dep: `kernel/fs/9p/9p.ko.xz` -> `9p`, with
/// `-` folded to `_` as the kernel does.
pub fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// modules.dep: module name -> (its path, the paths it depends on).
pub fn parse_modules_dep(text: &str) -> HashMap<String, (String, Vec<String>)> {
    text.lines()
        .filter_map(|line| {
            let (module, deps) = line.split_once(':')?;
            let module = module.trim();
            let deps = deps.split_whitespace().map(str::to_owned).collect();
            Some((module_name(module), (module.to_owned(), deps)))
        })
        .collect()
}

/// The module paths to insmod, dependencies first, each once. Names in `builtin` are
/// skipped; any other name missing from `deps` is an error.
pub fn load_order(
    wanted: &[&str],
    deps: &HashMap<String, (String, Vec<String>)>,
    builtin: &HashSet<String>,
) -> Result<Vec<String>> {
    fn visit(
        name: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        builtin: &HashSet<String>,
        seen: &mut HashSet<String>,
        out: &mut Vec<String>,
    ) -> Result<()> {
        if builtin.contains(name) || !seen.insert(name.to_owned()) {
            return Ok(());
        }
        let Some((path, requires)) = deps.get(name) else {
            bail!("module {name} is neither in modules.dep nor built in");
        };
        for dep in requires {
            visit(&module_name(dep), deps, builtin, seen, out)?;
        }
        out.push(path.clone());
        Ok(())
    }
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for name in wanted {
        visit(name, deps, builtin, &mut seen, &mut out)?;
    }
    Ok(out)
}

/// Built-in module names from modules.builtin.
fn parse_builtin(text: &str) -> HashSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(module_name)
        .collect()
}

/// One cpio entry.
pub enum Entry {
    Dir(String),
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    CharDev {
        path: String,
        major: u32,
        minor: u32,
    },
}

/// A cpio "newc" archive of `entries` (what the kernel unpacks as an initramfs).
pub fn cpio_newc(entries: &[Entry]) -> Vec<u8> {
    fn pad(out: &mut Vec<u8>) {
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
    fn header(out: &mut Vec<u8>, ino: u32, mode: u32, size: usize, rdev: (u32, u32), name: &str) {
        let fields = [
            ino,
            mode,
            0, // uid
            0, // gid
            1, // nlink
            0, // mtime
            size as u32,
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0, // check
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        pad(out);
    }
    let mut out = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match entry {
            Entry::Dir(path) => header(&mut out, ino, 0o040755, 0, (0, 0), path),
            Entry::File { path, mode, data } => {
                header(&mut out, ino, 0o100000 | mode, data.len(), (0, 0), path);
                out.extend_from_slice(data);
                pad(&mut out);
            }
            Entry::CharDev { path, major, minor } => {
                header(&mut out, ino, 0o020600, 0, (*major, *minor), path)
            }
        }
    }
    header(&mut out, 0, 0, 0, (0, 0), "TRAILER!!!");
    out
}

/// A module file's contents, decompressed (busybox insmod takes plain ELF).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else if name.ends_with(".gz") {
        Some("gzip")
    } else {
        None
    };
    match tool {
        None => fs::read(path).with_context(|| format!("read {}", path.display())),
        Some(tool) => {
            let out = Command::new(tool)
                .arg("-dc")
                .arg(path)
                .output()
                .with_context(|| format!("run {tool} -dc {}", path.display()))?;
            if !out.status.success() {
                bail!(
                    "{tool} -dc {} failed: {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            Ok(out.stdout)
        }
    }
}

/// Paths the init script needs, all as the guest sees them (the host's own paths).
pub struct InitPaths<'a> {
    /// The writable results directory; the results share is mounted here.
    pub results: &'a Path,
    /// The guest script, run with the host's bash after switch_root.
    pub guest_script: &'a Path,
}

/// The initramfs `/init` (busybox sh).
pub fn init_script(paths: &InitPaths<'_>) -> String {
    format!(
        r#"#!/bin/busybox sh
# sockmesh vm-test initramfs: host root over 9p (read-only) + tmpfs overlay, then the guest script.
bb=/bin/busybox
fail() {{ echo "vm-test-guest: FAILED: $*"; $bb sleep 1; $bb poweroff -f; }}
$bb mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
$bb mount -t proc proc /proc
$bb mount -t sysfs sysfs /sys
echo "vm-test-guest: initramfs of $($bb uname -r)"
for m in $($bb cat /modules/order); do
    $bb insmod "/modules/$m" || fail "insmod $m"
done
$bb mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 {root} /lower \
    || fail "mount 9p {root}"
$bb mount -t tmpfs -o mode=0755 tmpfs /rw || fail "tmpfs"
$bb mkdir -p /rw/upper /rw/work
$bb mount -t overlay overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work /newroot \
    || fail "overlay"
$bb mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 {results} '/newroot{out}' \
    || fail "mount 9p {results}"
$bb umount /proc /sys
$bb mount --move /dev /newroot/dev || fail "move /dev"
exec $bb switch_root /newroot /bin/bash '{script}'
"#,
        root = ROOT_TAG,
        results = RESULTS_TAG,
        out = paths.results.display(),
        script = paths.guest_script.display(),
    )
}

/// Writes the initramfs for the kernel whose modules are in `modules` to `dest`.
pub fn build(modules: &Path, paths: &InitPaths<'_>, dest: &Path) -> Result<()> {
    let dep_text = fs::read_to_string(modules.join("modules.dep"))
        .with_context(|| format!("read {}/modules.dep", modules.display()))?;
    let builtin = fs::read_to_string(modules.join("modules.builtin")).unwrap_or_default();
    let order = load_order(
        BOOT_MODULES,
        &parse_modules_dep(&dep_text),
        &parse_builtin(&builtin),
    )?;

    let busybox = fs::read(BUSYBOX).with_context(|| format!("read {BUSYBOX}"))?;
    let mut entries: Vec<Entry> = ["bin", "dev", "proc", "sys", "lower", "rw", "newroot"]
        .iter()
        .map(|d| Entry::Dir((*d).to_owned()))
        .collect();
    entries.push(Entry::CharDev {
        path: "dev/console".into(),
        major: 5,
        minor: 1,
    });
    entries.push(Entry::File {
        path: "bin/busybox".into(),
        mode: 0o755,
        data: busybox,
    });
    entries.push(Entry::File {
        path: "init".into(),
        mode: 0o755,
        data: init_script(paths).into_bytes(),
    });
    entries.push(Entry::Dir("modules".into()));
    let mut names = Vec::new();
    for rel in &order {
        let name = format!("{}.ko", module_name(rel));
        entries.push(Entry::File {
            path: format!("modules/{name}"),
            mode: 0o644,
            data: read_module(&modules.join(rel))?,
        });
        names.push(name);
    }
    println!("vm-test: initramfs modules: {}", names.join(" "));
    entries.push(Entry::File {
        path: "modules/order".into(),
        mode: 0o644,
        data: (names.join("\n") + "\n").into_bytes(),
    });
    fs::write(dest, cpio_newc(&entries)).with_context(|| format!("write {}", dest.display()))
}

/// Whether the host has what [`build`] needs.
pub fn check_tools() -> Result<()> {
    Path::new(BUSYBOX)
        .metadata()
        .with_context(|| format!("{BUSYBOX} missing (Debian package busybox-static)"))?;
    command::probe(Command::new("xz").arg("--version")).context("xz missing (xz-utils)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/fs/9p/9p.ko.xz: kernel/fs/netfs/netfs.ko.xz kernel/net/9p/9pnet.ko.xz kernel/fs/fscache/fscache.ko.xz
kernel/fs/netfs/netfs.ko.xz: kernel/fs/fscache/fscache.ko.xz
kernel/fs/fscache/fscache.ko.xz:
kernel/net/9p/9pnet.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/drivers/virtio/virtio_ring.ko.xz
kernel/drivers/virtio/virtio_ring.ko.xz:
kernel/fs/overlayfs/overlay.ko.xz:
";

    #[test]
    fn module_names_fold_dashes_and_drop_extensions() {
        assert_eq!(module_name("kernel/fs/9p/9p.ko.xz"), "9p");
        assert_eq!(module_name("kernel/x/virtio-pci.ko"), "virtio_pci");
    }

    #[test]
    fn loads_dependencies_first_and_once_skipping_builtins() {
        let deps = parse_modules_dep(DEP);
        let builtin: HashSet<String> = ["virtio_pci".to_owned()].into();
        let order = load_order(
            &["virtio_pci", "9pnet_virtio", "9p", "overlay"],
            &deps,
            &builtin,
        )
        .unwrap();
        let names: Vec<String> = order.iter().map(|p| module_name(p)).collect();
        assert_eq!(
            names,
            [
                "9pnet",
                "virtio_ring",
                "9pnet_virtio",
                "fscache",
                "netfs",
                "9p",
                "overlay"
            ]
        );
        assert!(load_order(&["nope"], &deps, &builtin).is_err());
    }

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let archive = cpio_newc(&[
            Entry::Dir("bin".into()),
            Entry::File {
                path: "init".into(),
                mode: 0o755,
                data: b"abc".to_vec(),
            },
            Entry::CharDev {
                path: "dev/console".into(),
                major: 5,
                minor: 1,
            },
        ]);
        assert_eq!(archive.len() % 4, 0);
        assert!(archive.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&archive);
        assert!(text.contains("TRAILER!!!"));
        // The file entry: mode 0100755, size 3, name "init\0" (namesize 5).
        assert!(text.contains("000081ed"), "{text}");
        assert!(text.contains("init\0"));
        // The console: mode 020600, rdev 5:1.
        assert!(text.contains("00002180"));
    }
}
