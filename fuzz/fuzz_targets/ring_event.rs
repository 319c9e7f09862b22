//! The ring-buffer event decoder (`sockmesh_common::decode_conn_event`, what the agent's ring
//! drain runs on every record) on arbitrary bytes.
//!
//! It must never panic or read out of bounds (the fuzzer runs under AddressSanitizer), must
//! return `Some` exactly for records of `size_of::<ConnEvent>()` bytes, and must read every
//! field at its `repr(C)` offset, in native byte order, whatever the slice's alignment.

#![no_main]

use std::mem::{offset_of, size_of};

use libfuzzer_sys::fuzz_target;
use sockmesh_common::{decode_conn_event, ConnEvent};

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes(b[at..at + 2].try_into().unwrap())
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

fn check(data: &[u8]) {
    let decoded = decode_conn_event(data);
    assert_eq!(
        decoded.is_some(),
        data.len() == size_of::<ConnEvent>(),
        "decoded a record of {} bytes",
        data.len()
    );
    let Some(ev) = decoded else {
        return;
    };
    let local_addr = offset_of!(ConnEvent, local_addr);
    let expected = ConnEvent {
        kind: u32_at(data, offset_of!(ConnEvent, kind)),
        result: u32_at(data, offset_of!(ConnEvent, result)),
        service_id: u32_at(data, offset_of!(ConnEvent, service_id)),
        backend_id: u32_at(data, offset_of!(ConnEvent, backend_id)),
        cgroup_id: u64_at(data, offset_of!(ConnEvent, cgroup_id)),
        duration_ns: u64_at(data, offset_of!(ConnEvent, duration_ns)),
        bytes_acked: u64_at(data, offset_of!(ConnEvent, bytes_acked)),
        bytes_received: u64_at(data, offset_of!(ConnEvent, bytes_received)),
        total_retrans: u32_at(data, offset_of!(ConnEvent, total_retrans)),
        srtt_us: u32_at(data, offset_of!(ConnEvent, srtt_us)),
        local_addr: [0, 1, 2, 3].map(|i| u32_at(data, local_addr + 4 * i)),
        local_port: u16_at(data, offset_of!(ConnEvent, local_port)),
        family: u16_at(data, offset_of!(ConnEvent, family)),
        _pad: u32_at(data, offset_of!(ConnEvent, _pad)),
    };
    assert_eq!(ev, expected);
}

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes at an odd address: ring records are only 8-byte aligned by contract,
    // and a decoder that relied on alignment would misread (or fault) here.
    let mut shifted = Vec::with_capacity(data.len() + 1);
    shifted.push(0);
    shifted.extend_from_slice(data);
    check(&shifted[1..]);
});
