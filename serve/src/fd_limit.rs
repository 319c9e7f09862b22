//! RLIMIT_NOFILE: a daemon that holds a socket per client, per probe and per watched file
//! must not run out of descriptors at the soft limit's usual 1,024 while the hard limit
//! allows far more. Both binaries raise the soft limit to the hard one at start (capped at
//! [`CEILING`], the kernel's default `fs.nr_open`, since an unlimited hard limit cannot be
//! set as the soft one) and log what they got.

use std::io;

/// The highest soft limit asked for: Linux's default `fs.nr_open`.
pub const CEILING: u64 = 1 << 20;

/// The soft limit before and after the raise, and the hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// The soft limit to set, if it should change: the hard limit capped at [`CEILING`], when
/// that is above the current soft limit (never lowers it).
pub fn raised_soft_limit(soft: u64, hard: u64) -> Option<u64> {
    let want = hard.min(CEILING);
    (want > soft).then_some(want)
}

/// The share of the soft limit one endpoint's connection cap may take: a binary serves up to
/// three endpoints, and its maps, files, probes and follower need the last quarter.
pub const ENDPOINT_SHARE: u64 = 4;

/// The fewest connections an endpoint is allowed, however low the limit.
pub const MIN_ENDPOINT_CAP: usize = 16;

/// `cap` as the soft limit `soft` allows: at most a [`ENDPOINT_SHARE`]th of it (never
/// below [`MIN_ENDPOINT_CAP`]), so held connections on every endpoint together cannot take
/// the descriptors the rest of the process needs when the hard limit could not be raised.
pub fn fit_cap(cap: usize, soft: u64) -> usize {
    let share = usize::try_from(soft / ENDPOINT_SHARE).unwrap_or(usize::MAX);
    cap.min(share.max(MIN_ENDPOINT_CAP))
}

/// The current soft RLIMIT_NOFILE (`None` if it cannot be read).
pub fn soft_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0).then_some(lim.rlim_cur)
}

/// Raises the soft RLIMIT_NOFILE as [`raised_soft_limit`] says.
pub fn raise_nofile() -> io::Result<NofileLimit> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (before, hard) = (lim.rlim_cur, lim.rlim_max);
    let Some(soft) = raised_soft_limit(before, hard) else {
        return Ok(NofileLimit {
            before,
            soft: before,
            hard,
        });
    };
    lim.rlim_cur = soft;
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(NofileLimit { before, soft, hard })
}

/// [`raise_nofile`], logged: the limits on success, a warning on failure (the process runs
/// on with the limit it has).
pub fn raise_nofile_logged() {
    match raise_nofile() {
        Ok(l) => tracing::info!(
            soft_before = l.before,
            soft = l.soft,
            hard = l.hard,
            "RLIMIT_NOFILE"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "could not raise RLIMIT_NOFILE; keeping the current limit")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raises_to_the_hard_limit_capped_and_never_lowers() {
        assert_eq!(raised_soft_limit(1024, 524_288), Some(524_288));
        assert_eq!(raised_soft_limit(1024, u64::MAX), Some(CEILING));
        assert_eq!(raised_soft_limit(1024, 1024), None);
        assert_eq!(raised_soft_limit(4096, 2048), None);
        assert_eq!(raised_soft_limit(2 * CEILING, u64::MAX), None);
    }

    #[test]
    fn a_cap_takes_at_most_a_quarter_of_the_limit() {
        assert_eq!(fit_cap(512, 20_000), 512);
        assert_eq!(fit_cap(512, 1024), 256);
        assert_eq!(fit_cap(16_384, 1024), 256);
        assert_eq!(fit_cap(512, 40), MIN_ENDPOINT_CAP);
        assert_eq!(fit_cap(8, 40), 8);
        assert_eq!(fit_cap(512, u64::MAX), 512);
    }

    #[test]
    fn raise_nofile_leaves_soft_at_most_hard() {
        let l = raise_nofile().unwrap();
        assert!(l.soft >= l.before && l.soft <= l.hard, "{l:?}");
    }
}
