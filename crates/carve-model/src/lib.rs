//! carve's domain model: the catalog of MIG-capable GPUs and the placement geometry of GPU
//! instances. Pure: no I/O, no clocks, no global state. Everything that reads files or talks to a
//! GPU lives in other crates and hands text or state to this one.

pub mod catalog;
pub mod geometry;
pub mod gpu_list;
pub mod profile;
pub mod source;
pub mod suggest;

pub use catalog::{
    Architecture, Catalog, CatalogError, GiProfile, GpuModel, LicenceEdition, LookupError,
    VgpuKind, VgpuProfile,
};
pub use geometry::{Instance, Layout, Violation};
pub use gpu_list::{split_count, CountError, GpuListError, MAX_GPUS_PER_NODE};
pub use profile::{Attribute, NvmlGiProfile, ProfileName};
pub use source::SourcePos;
