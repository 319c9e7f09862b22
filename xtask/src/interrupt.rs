//! Ctrl-C and SIGTERM turned into an ordinary error, so demo and bench unwind through their
//! cleanup guards (agent cleanup, cgroup removal) instead of dying with pins left behind.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: the one kind of work that is safe in a signal handler.
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Installs the handler for SIGINT and SIGTERM. Long loops poll [`check`].
pub fn install() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler is async-signal-safe (one atomic store) and lives for the program.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// Fails once the user asked to stop.
pub fn check() -> Result<()> {
    if REQUESTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `total`, waking early (with an error) when the user asks to stop.
pub fn sleep(total: std::time::Duration) -> Result<()> {
    let deadline = std::time::Instant::now() + total;
    loop {
        check()?;
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        std::thread::sleep(left.min(std::time::Duration::from_millis(50)));
    }
}
