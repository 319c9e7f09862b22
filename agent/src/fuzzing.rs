//! The admin router driven in-process, for the fuzz targets (fuzz/fuzz_targets/admin_router.rs;
//! feature `fuzzing`). Everything a request reaches is the agent's own: the router
//! ([`admin::route`]), the endpoints, the signals' views over the default config, and the
//! health engine's task. Only the kernel is left out: the signals hold no maps
//! ([`Signals::without_kernel`]) and the engine is never fed traffic, so it bans nothing
//! and touches no map.

use std::{path::PathBuf, sync::Arc};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Body, Request, Response};
use sockmesh_model::{default_config, Token};

use crate::{
    admin::{self, AdminState, Endpoint},
    engine::{self, task::Command},
    signals::Signals,
    status::{SharedStatus, Status},
    tables,
};

/// The largest body `POST /v1/fault` reads (413 beyond).
pub const MAX_POST_BYTES: usize = admin::MAX_POST_BYTES;

/// Every path the admin API serves.
pub fn paths() -> Vec<&'static str> {
    Endpoint::ALL.iter().map(|e| e.path()).collect()
}

/// Whether `path` is the one `POST` endpoint (`/v1/fault`).
pub fn is_post(path: &str) -> bool {
    Endpoint::from_path(path).is_some_and(Endpoint::is_post)
}

/// An agent's admin state over the default config, as the TCP listener (token required)
/// and the unix socket (none) see it. [`AdminHarness::new`]'s one token has both scopes
/// (read and fault); [`AdminHarness::with_tokens`] gives them separate tokens.
pub struct AdminHarness {
    tcp: AdminState,
    unix: AdminState,
    services: Vec<String>,
}

impl AdminHarness {
    /// Must run inside a tokio runtime: it starts the health engine's task.
    pub async fn new(token: &str) -> Self {
        Self::with_tokens(token, Some(token)).await
    }

    /// The TCP listener takes `read` for `GET`s and `fault` (if any) for everything.
    pub async fn with_tokens(read: &str, fault: Option<&str>) -> Self {
        let token = |t: &str| Token::new(t, "fuzz").expect("a valid token");
        let config = default_config();
        let views = tables::plan(
            &config,
            &tables::Overlay::new(),
            &tables::KernelState::default(),
        )
        .expect("the default config plans")
        .views;
        let views = Arc::new(views);
        let mut registry = crate::metrics::registry();
        let metrics = admin::AdminMetrics::new(&mut registry);
        let signals = Signals::without_kernel(&mut registry);
        let nowhere = PathBuf::from("/nonexistent");
        let (engine, _overlay) =
            engine::task::spawn(nowhere.clone(), nowhere, signals.clone(), &mut registry);
        signals.feed_engine(engine.events.clone());
        signals.set_config(&views, &config);
        let services = config.services.iter().map(|s| s.name.clone()).collect();
        let config = Arc::new(config);
        engine
            .commands
            .send(Command::Config { config, views })
            .await
            .expect("the engine task runs");
        let status: SharedStatus = Arc::new(std::sync::RwLock::new(Status {
            ready: true,
            ..Status::default()
        }));
        let unix = AdminState {
            status,
            signals,
            engine,
            access: None,
            metrics,
            proxy: crate::l7::Restarter::none(),
        };
        let tcp = AdminState {
            access: Some(admin::AdminAccess {
                read: token(read),
                fault: fault.map(token),
            }),
            ..unix.clone()
        };
        AdminHarness {
            tcp,
            unix,
            services,
        }
    }

    /// The services of the config the agent runs.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// The TCP listener's state, to serve on a real socket (tests).
    #[cfg(test)]
    pub(crate) fn tcp_state(&self) -> AdminState {
        self.tcp.clone()
    }

    /// One request through the router, as the unix socket or the TCP listener gets it.
    pub async fn route<B>(&self, req: Request<B>, unix: bool) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        admin::route(req, if unix { &self.unix } else { &self.tcp }).await
    }
}
