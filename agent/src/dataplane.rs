//! The dataplane as the reconcile loop sees it: pinned maps plus a mirror of what they hold,
//! and the one operation that matters, "make the kernel match this config".

use anyhow::{Context, Result};
use sockmesh_model::MeshConfig;
use tracing::{info, warn};

use crate::{
    loader::PinLayout,
    tables::{kernel::KernelMaps, plan_for, KernelState, Node, Overlay, ServiceView},
};

pub(crate) struct Dataplane {
    maps: KernelMaps,
    mirror: KernelState,
    /// This node's zone (`--zone`), for services with `locality:`.
    node: Node,
}

impl Dataplane {
    pub(crate) fn open(layout: &PinLayout) -> Result<Self> {
        let maps = KernelMaps::open_pinned(&layout.maps)?;
        let mirror = maps.read_state().context("reading pinned state")?;
        info!(
            services = mirror.services.len(),
            backends = mirror.backends.len(),
            "opened pinned maps"
        );
        Ok(Self {
            maps,
            mirror,
            node: Node::default(),
        })
    }

    /// Sets the node's zone: the zone of callers that are not a workload with a zone.
    pub(crate) fn with_zone(mut self, zone: Option<String>) -> Self {
        self.node.zone = zone;
        self
    }

    /// Makes the kernel maps match `config`. On a failed write the kernel holds a consistent
    /// prefix of the plan; `previous` (the last good config) is then re-applied so the
    /// mesh keeps routing as before, and the error is returned.
    pub(crate) fn apply(
        &mut self,
        config: &MeshConfig,
        overlay: &Overlay,
        previous: Option<&MeshConfig>,
    ) -> Result<Vec<ServiceView>> {
        let started = std::time::Instant::now();
        let plan = plan_for(config, overlay, &self.mirror, &self.node)?;
        let writes = plan.writes.len();
        if let Err(e) = self.maps.apply(&plan.writes, &mut self.mirror) {
            warn!(error = %e, "applying config failed; restoring the previous config");
            self.mirror = self.maps.read_state()?;
            if let Some(prev) = previous {
                let restore = plan_for(prev, overlay, &self.mirror, &self.node)?;
                self.maps.apply(&restore.writes, &mut self.mirror)?;
            }
            return Err(e.into());
        }
        info!(
            services = config.services.len(),
            writes,
            elapsed_us = started.elapsed().as_micros() as u64,
            "config applied to kernel tables"
        );
        Ok(plan.views)
    }
}
