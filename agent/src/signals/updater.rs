//! Keeps the signals side (stats entries, metric series, SLO bindings, topology) in step
//! with the kernel tables, off the path of a config apply: a version is live, and acked,
//! once its tables are written; the signals follow on a blocking thread of their own.
//!
//! Latest wins: a burst of versions (or of bans) is one update for the last. A new config
//! re-binds everything ([`Signals::set_config`]); a ban or circuit change on the same config
//! only swaps the views ([`Signals::set_views`]). Between a table write and its update the
//! kernel may count a new backend's first connections nowhere (its stats entry is not made
//! yet); it never counts them under another pair.

use std::sync::Arc;

use sockmesh_model::MeshConfig;
use tokio::sync::watch;
use tracing::error;

use super::Signals;
use crate::tables::ServiceView;

#[derive(Clone)]
struct Applied {
    config: Arc<MeshConfig>,
    views: Arc<Vec<ServiceView>>,
}

pub(crate) struct SignalsUpdater {
    tx: watch::Sender<Applied>,
}

impl SignalsUpdater {
    /// Follows `signals`, which already reflect `config` and `views`.
    pub(crate) fn spawn(
        signals: Arc<Signals>,
        config: Arc<MeshConfig>,
        views: Arc<Vec<ServiceView>>,
    ) -> Self {
        let (tx, mut rx) = watch::channel(Applied {
            config: config.clone(),
            views,
        });
        rx.borrow_and_update();
        tokio::spawn(async move {
            let mut last = config;
            while rx.changed().await.is_ok() {
                let next = rx.borrow_and_update().clone();
                let same_config = Arc::ptr_eq(&last, &next.config);
                last = next.config.clone();
                let s = signals.clone();
                let done = tokio::task::spawn_blocking(move || {
                    if same_config {
                        s.set_views(&next.views);
                    } else {
                        s.set_config(&next.views, &next.config);
                    }
                })
                .await;
                if let Err(e) = done {
                    error!(error = %e, "updating the signals for a new config panicked");
                }
            }
        });
        SignalsUpdater { tx }
    }

    /// A new config is in the kernel tables.
    pub(crate) fn config(&self, config: Arc<MeshConfig>, views: Arc<Vec<ServiceView>>) {
        self.tx.send_replace(Applied { config, views });
    }

    /// The same config's tables changed (a ban, a circuit).
    pub(crate) fn views(&self, views: Arc<Vec<ServiceView>>) {
        self.tx.send_modify(|a| a.views = views);
    }
}
