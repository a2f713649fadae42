//! `carve sched`: software time-slicing for CUDA processes on bare metal and in containers.
//!
//! [`proto`] is the wire protocol the shim (`crates/carve-shim`) speaks.

pub mod config;
pub mod identity;
pub mod proto;
pub mod server;
pub mod tokens;
