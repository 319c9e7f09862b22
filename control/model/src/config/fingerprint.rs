//! A short, stable content hash of a config, for change detection and for display.
//!
//! It is built from one hash per service, so that a config that changed in a few services
//! gets its new fingerprint from those services' hashes and the kept hashes of the rest
//! ([`ConfigIndex`](crate::ConfigIndex)), not from re-reading the whole mesh.

use std::io;

use super::{Enrollment, MeshConfig, ServiceSpec};

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl MeshConfig {
    /// 16 lowercase hex digits of FNV-1a-64 over the config's parts: its schema version,
    /// then the hash of each service's JSON serialization ([`ServiceSpec::content_hash`]) in
    /// order, then the workloads and enrollment when they are not the defaults.
    ///
    /// The same config gives the same fingerprint on every run, build and machine (unlike
    /// `std`'s randomly keyed hasher), so agents, control plane and CLI can compare them.
    /// Formatting, comments and omitted defaults in the YAML do not change it; the order of
    /// services, backends and workloads does; label order does not (labels are sorted).
    /// Not a cryptographic hash: it detects change, not tampering.
    pub fn fingerprint(&self) -> String {
        self.fingerprint_with(ServiceSpec::content_hash)
    }

    /// The fingerprint, with each service's hash from `hash` (a cache that holds them).
    pub(crate) fn fingerprint_with(&self, mut hash: impl FnMut(&ServiceSpec) -> u64) -> String {
        // Every field, by name: a new field of the config does not compile until it is
        // decided here whether (and how) it changes the fingerprint.
        let MeshConfig {
            version,
            services,
            workloads,
            enrollment,
        } = self;
        let mut fnv = Fnv1a64(FNV_OFFSET_BASIS);
        fnv.bytes(b"sockmesh config v");
        fnv.bytes(&version.to_le_bytes());
        for service in services {
            fnv.bytes(b"s");
            fnv.bytes(&hash(service).to_le_bytes());
        }
        if !workloads.is_empty() {
            fnv.bytes(b"w");
            fnv.json(workloads);
        }
        if *enrollment != Enrollment::default() {
            fnv.bytes(b"e");
            fnv.json(enrollment);
        }
        format!("{:016x}", fnv.0)
    }
}

impl ServiceSpec {
    /// FNV-1a-64 of the service's JSON serialization: what the config's fingerprint is made
    /// of, one service at a time.
    pub fn content_hash(&self) -> u64 {
        let mut fnv = Fnv1a64(FNV_OFFSET_BASIS);
        fnv.json(self);
        fnv.0
    }
}

/// Hashes whatever is written to it, so the JSON never needs to be held in memory.
pub(crate) struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(FNV_OFFSET_BASIS)
    }
}

/// FNV-1a as the hasher of maps keyed by service names and addresses: several times faster
/// than `std`'s SipHash on short keys. The keys come from the validated config (the
/// control plane or the operator), not from untrusted peers, so flooding is no concern.
impl std::hash::Hasher for Fnv1a64 {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        self.bytes(bytes);
    }
}

/// A map with [`Fnv1a64`] hashing.
pub(crate) type FnvMap<K, V> =
    std::collections::HashMap<K, V, std::hash::BuildHasherDefault<Fnv1a64>>;
/// A set with [`Fnv1a64`] hashing.
pub(crate) type FnvSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<Fnv1a64>>;

impl Fnv1a64 {
    fn bytes(&mut self, buf: &[u8]) {
        for &byte in buf {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
    }

    fn json(&mut self, value: &impl serde::Serialize) {
        // The model's only maps (labels) are BTreeMaps with string keys, so the JSON is
        // deterministic and nothing in it can fail to serialize.
        serde_json::to_writer(&mut *self, value).expect("the config model always serializes");
    }
}

impl io::Write for Fnv1a64 {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published FNV-1a-64 test vectors: a wrong constant would still look like a hash.
    #[test]
    fn fnv1a64_matches_reference_vectors() {
        for (input, expected) in [
            (&b""[..], 0xcbf2_9ce4_8422_2325_u64),
            (b"a", 0xaf63_dc4c_8601_ec8c),
            (b"foobar", 0x8594_4171_f739_67e8),
        ] {
            let mut hasher = Fnv1a64(FNV_OFFSET_BASIS);
            hasher.bytes(input);
            assert_eq!(hasher.0, expected, "input {input:?}");
        }
    }
}
