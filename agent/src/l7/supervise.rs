//! `--proxy spawn`: the agent starts `sockmesh-proxy` and starts it again whenever it
//! exits (with a back-off from 1 s to 30 s, reset after a minute of running). The child
//! gets SIGTERM if the agent dies (`PR_SET_PDEATHSIG`), and drains.

use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use tokio::process::Command;
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::ProxyOptions;
use sockmesh_common::PROXY_ORIGINS_MAP;

const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A proxy that ran this long was healthy: its exit starts the back-off again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs the proxy until `stop` is set; then waits for it to drain (it was told on the
/// link) and, past the bound, kills it.
pub(super) async fn run(opts: &ProxyOptions, mut stop: watch::Receiver<bool>, starts: Counter) {
    let bin = match &opts.bin {
        Some(b) => b.clone(),
        None => match std::env::current_exe() {
            Ok(me) => me.with_file_name("sockmesh-proxy"),
            Err(e) => {
                error!(error = %e, "cannot find the agent's own binary; pass --proxy-bin");
                return;
            }
        },
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        let mut cmd = Command::new(&bin);
        cmd.arg("--agent-socket")
            .arg(&opts.socket)
            .arg("--origins-map")
            .arg(opts.maps.join(PROXY_ORIGINS_MAP))
            .arg("--metrics-addr")
            .arg(opts.metrics_addr.to_string());
        // SAFETY: prctl is async-signal-safe, as pre_exec requires.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let started = Instant::now();
        match cmd.spawn() {
            Ok(mut child) => {
                starts.inc();
                info!(pid = child.id(), bin = %bin.display(), "proxy started");
                tokio::select! {
                    status = child.wait() => {
                        warn!(?status, "proxy exited; starting it again");
                        if started.elapsed() > HEALTHY_RUN {
                            backoff = MIN_BACKOFF;
                        }
                    }
                    _ = super::stopped(&mut stop) => {
                        if tokio::time::timeout(super::DRAIN_WAIT, child.wait()).await.is_err() {
                            warn!("proxy did not drain in time; killing it");
                            let _ = child.kill().await;
                        }
                        return;
                    }
                }
            }
            Err(e) => error!(error = %e, bin = %bin.display(), "cannot start the proxy"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = super::stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
