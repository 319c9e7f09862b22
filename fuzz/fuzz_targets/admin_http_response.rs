//! The admin API decoder: the `sockmesh` CLI's HTTP/1.1 reply reader
//! (`sockmesh_cli::http::read_response`) on arbitrary bytes from the server.
//!
//! This is the decoder that reads whatever a socket sends back to the CLI (a wrong port, a
//! dying agent, a hostile peer); the control plane's request decoder has its own target
//! (`control_request`). It must never panic, must stay within its caps, and must
//! allocate in proportion to the bytes actually received, never to lengths the peer merely
//! announces (a `Content-Length: 200000000` or a chunk size of `ffffffff` followed by
//! nothing must not reserve memory for them).
//!
//! Input layout: byte 0 picks how the bytes arrive, the rest is the stream.
//! - bits 0-2: the most bytes one `read` returns (1 .. unlimited), so every line, header and
//!   chunk boundary falls inside a read somewhere;
//! - bits 3-5: the `BufReader` capacity in front of it;
//! - bit 7: repeat the stream up to 64 KiB, so small inputs reach the line (16 KiB) and
//!   header-count (100) caps.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{self, BufReader, Read};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use sockmesh_cli::http::{read_response, MAX_BODY_BYTES};

/// Counts the bytes Rust code has allocated and the peak since the last reset.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

// SAFETY: forwards to the system allocator unchanged; the counters have no effect on it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds GlobalAlloc::alloc's contract, which System shares.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for alloc.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as for alloc.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        new
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What `http.rs` caps (`MAX_HEADERS`; private there, so restated).
const MAX_HEADERS: usize = 100;
/// Length of the stream in repeat mode: beyond the 16 KiB line cap.
const REPEAT_BYTES: usize = 64 * 1024;
const READ_SIZES: [usize; 8] = [1, 2, 3, 7, 16, 100, 4096, usize::MAX];
const BUF_SIZES: [usize; 8] = [1, 2, 5, 16, 64, 512, 8192, 65536];

/// Serves `data` (cycled up to `len` bytes) in reads of at most `step` bytes.
struct Stream<'a> {
    data: &'a [u8],
    pos: usize,
    len: usize,
    step: usize,
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let at = self.pos % self.data.len();
        let n = buf
            .len()
            .min(self.step)
            .min(self.len - self.pos)
            .min(self.data.len() - at);
        buf[..n].copy_from_slice(&self.data[at..at + n]);
        self.pos += n;
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, data)) = input.split_first() else {
        return;
    };
    let len = if mode & 0x80 != 0 && !data.is_empty() {
        REPEAT_BYTES
    } else {
        data.len()
    };
    let stream = Stream {
        data,
        pos: 0,
        len,
        step: READ_SIZES[usize::from(mode & 7)],
    };
    let capacity = BUF_SIZES[usize::from((mode >> 3) & 7)];

    let baseline = LIVE.load(Ordering::Relaxed);
    PEAK.store(baseline, Ordering::Relaxed);
    let result = read_response(BufReader::with_capacity(capacity, stream));
    // Error messages quote the offending line (capped at 16 KiB, Debug-escaped); build them
    // inside the measured span too.
    let message = result.as_ref().err().map(ToString::to_string);
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(baseline);

    // Everything the reader holds comes from the stream: the body and the chunk being read
    // (each at most twice its length while a Vec grows), headers, the current line and its
    // quoted form in an error, plus the BufReader and fixed overhead.
    let bound = 8 * len + capacity + 256 * 1024;
    assert!(
        peak <= bound,
        "allocated {peak} bytes at peak for a {len}-byte stream (bound {bound}): {message:?}"
    );

    if let Ok(response) = result {
        assert!((100..600).contains(&response.status), "{response:?}");
        assert!(response.headers.len() <= MAX_HEADERS);
        assert!(response.body.len() as u64 <= MAX_BODY_BYTES);
        assert!(response.body.len() <= len);
        for (name, value) in &response.headers {
            assert!(
                !name.contains('\n') && !value.contains('\n'),
                "{name:?}: {value:?}"
            );
        }
    }
});
