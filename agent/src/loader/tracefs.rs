//! Tracepoint record layouts, read from tracefs format files so the kernel programs use this
//! kernel's field offsets instead of compiled-in guesses.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The tracefs mount: /sys/kernel/tracing, or the debugfs path on older setups.
pub(super) fn tracefs_root() -> Result<PathBuf> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    bail!(
        "tracefs is not mounted (needed for the tcp and sched tracepoints): \
         `mount -t tracefs tracefs /sys/kernel/tracing` (or run `cargo xtask setup`)"
    )
}

/// Offset of `field` in the record of tracepoint `category/name`.
pub(super) fn field_offset(root: &Path, category: &str, name: &str, field: &str) -> Result<u32> {
    let path = root.join("events").join(category).join(name).join("format");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    parse_offset(&text, field)
        .with_context(|| format!("field {field} not found in {}", path.display()))
}

fn parse_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        // "\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;"
        let decl = line.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let ident = decl.split_whitespace().last()?.split('[').next()?;
        if ident != field {
            return None;
        }
        let off = rest
            .split(';')
            .find_map(|p| p.trim().strip_prefix("offset:"))?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESET: &str = "name: tcp_receive_reset\nID: 1500\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;\n\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;\n";

    #[test]
    fn finds_fields_including_arrays_and_pointers() {
        assert_eq!(parse_offset(RESET, "sock_cookie"), Some(64));
        assert_eq!(parse_offset(RESET, "skaddr"), Some(8));
        assert_eq!(parse_offset(RESET, "saddr_v6"), Some(30));
        assert_eq!(parse_offset(RESET, "cookie"), None);
    }
}
