//! A short, stable content hash of a config, for change detection and for display.

use std::io;

use super::MeshConfig;

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

impl MeshConfig {
    /// 16 lowercase hex digits of FNV-1a-64 over the config's JSON serialization.
    ///
    /// The same config gives the same fingerprint on every run, build and machine (unlike
    /// `std`'s randomly keyed hasher), so agents, control plane and CLI can compare them.
    /// Formatting, comments and omitted defaults in the YAML do not change it; the order of
    /// services, backends and workloads does; label order does not (labels are sorted). A
    /// config without workloads hashes as it did before `workloads:` existed. Not a
    /// cryptographic hash: it detects change, not tampering.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Fnv1a64(FNV_OFFSET_BASIS);
        // The model's only map (workload labels) is a BTreeMap with string keys, so the JSON
        // is deterministic and nothing in it can fail to serialize.
        serde_json::to_writer(&mut hasher, self).expect("MeshConfig always serializes to JSON");
        format!("{:016x}", hasher.0)
    }
}

/// Hashes whatever is written to it, so the JSON never needs to be held in memory.
struct Fnv1a64(u64);

impl io::Write for Fnv1a64 {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &byte in buf {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(FNV_PRIME);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

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
            hasher.write_all(input).unwrap();
            assert_eq!(hasher.0, expected, "input {input:?}");
        }
    }
}
