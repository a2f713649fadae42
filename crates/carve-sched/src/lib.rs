//! `carve sched`: software time-slicing for CUDA processes on bare metal and in containers.
//!
//! The wire protocol the shim (`crates/carve-shim`) speaks, with the timing it relies on, is
//! `carve-sched-proto`.

pub mod config;
pub mod identity;
pub mod server;
pub mod tokens;
