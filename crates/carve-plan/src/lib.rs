//! The tenancy planner: tenants in, a sharing mode per tenant with its reason out, MIG slices
//! packed onto the fewest GPUs, and the configs that follow from it.
//!
//! Pure: no I/O. [`tenancy::parse`] reads the tenancy file, [`decide`] picks modes, [`pack`]
//! places replicas on GPUs, [`plan`] is the result (`plan.json`), [`files`] turns a plan into
//! files people use, [`schedule`] a time-sliced GPU of it into what its scheduler runs.

pub mod decide;
pub mod files;
pub mod pack;
pub mod plan;
pub mod planner;
pub mod schedule;
pub mod tenancy;

pub use plan::{Mode, Plan};
pub use planner::plan;
pub use tenancy::{parse, Tenancy};
