//! Types, map names and pure decision helpers shared by sockmesh's kernel programs and the
//! userspace agent.
//!
//! Everything a map key, value or event is lives here once, `#[repr(C)]`, with explicit padding
//! and a size assertion: aya only checks sizes, so layout mistakes would otherwise corrupt data
//! silently. The `user` feature adds `aya::Pod` so the agent can read and write the same types.
//!
//! The slot pick and the caller hash are plain functions so they are unit-tested natively and
//! the kernel runs exactly the tested code.
#![no_std]

pub mod addr;
pub mod fault;
pub mod gcra;
pub mod maps;
pub mod pick;
pub mod proxy;
pub mod signals;
#[cfg(feature = "user")]
pub mod syscall;

pub use addr::{FAMILY_INET, FAMILY_INET6};
pub use maps::*;
pub use pick::{caller_hash, pick_slot};
pub use proxy::*;
pub use signals::*;
