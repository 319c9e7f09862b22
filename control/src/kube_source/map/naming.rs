//! Mesh names for Kubernetes objects: valid model names, unique, and the same for the same
//! cluster whatever order its events arrived in.

use std::collections::HashSet;

use sockmesh_model::MAX_SERVICE_NAME_LEN;

/// Hands out mesh names, each once.
#[derive(Debug, Default)]
pub(super) struct Names(HashSet<String>);

impl Names {
    /// `parts` joined by `-` as a model name; hashed when too long or already taken.
    pub(super) fn take(&mut self, parts: &[&str]) -> String {
        let mut name = mesh_name(parts);
        if self.0.contains(&name) {
            name = hashed_name(&name, &parts.join("/"));
        }
        self.0.insert(name.clone());
        name
    }
}

/// `parts` joined by `-`, made a valid service or workload name: lowercase, characters
/// outside `a-z 0-9 - . _` become `-`, letters or digits at both ends, and at most 63
/// characters (a longer one keeps its first 54 and ends in `-` and 8 hex digits of a hash
/// of the whole, so two long names stay apart).
pub fn mesh_name(parts: &[&str]) -> String {
    let joined = parts.join("-");
    let clean: String = joined
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let clean = clean.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if clean.is_empty() {
        return hashed_name("x", &parts.join("/"));
    }
    if clean.len() > MAX_SERVICE_NAME_LEN {
        return hashed_name(clean, &parts.join("/"));
    }
    clean.to_owned()
}

/// The first 54 characters of `clean` (trimmed to end in a letter or digit), `-`, and 8 hex
/// digits of FNV-1a over `whole`.
pub(super) fn hashed_name(clean: &str, whole: &str) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in whole.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let keep = MAX_SERVICE_NAME_LEN - 9;
    let head = &clean[..clean.len().min(keep)];
    let head = head.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        format!("x-{hash:08x}")
    } else {
        format!("{head}-{hash:08x}")
    }
}
