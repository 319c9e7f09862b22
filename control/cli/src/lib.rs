//! The library half of `sockmesh`, the operator CLI: it asks the agent's admin API (see
//! `docs/agent-interface.md`) and turns the JSON replies into tables, and it starts and
//! ends fault drills.
//!
//! The binary (`src/bin/sockmesh.rs`) only parses flags and prints; everything here is
//! usable from tests and tools too, e.g. to read `/v1/backends` from an integration test:
//!
//! ```no_run
//! use sockmesh_cli::{AdminClient, AdminTarget, Query};
//!
//! let client = AdminClient::new(AdminTarget::Unix("/run/sockmesh/admin.sock".into()));
//! let query = Query::Backends { service: "web".into() };
//! let reply = client.get_json(&query.path())?;
//! print!("{}", query.render_table(&reply.value)?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! - [`http`]: a minimal blocking HTTP/1.1 GET (and JSON POST) over a unix or TCP stream.
//! - [`AdminClient`]: where the agent is, its token, and error statuses as [`AdminError`]s.
//! - [`Query`] and [`render`]: each command's endpoint and its table.
//! - [`FaultDrill`]: `sockmesh fault`, the one request that changes the agent
//!   (`POST` [`FAULT_PATH`], rendered by [`render::fault`]).
//! - [`pretty_json`]: `-o json`, the reply as sent, indented.
//! - [`control`]: `sockmesh config history|rollback|agents`, which ask the control plane
//!   (`sockmesh-control`) instead of an agent.

mod admin;
pub mod control;
mod error;
mod fault;
pub mod http;
mod json;
mod query;
pub mod render;
mod table;

pub use admin::{
    AdminClient, AdminTarget, AdminToken, JsonReply, DEFAULT_ADMIN_SOCKET, DEFAULT_TIMEOUT,
};
pub use error::AdminError;
pub use fault::{FaultDrill, FAULT_PATH};
pub use json::pretty_json;
pub use query::Query;
pub use render::RenderError;
