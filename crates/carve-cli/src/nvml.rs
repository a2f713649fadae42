//! Opening the NVML backend.

use carve_backend::{Backend, BackendError};

pub fn open() -> Result<Box<dyn Backend>, BackendError> {
    Err(BackendError::Unavailable(
        "the NVML backend is not built yet".into(),
    ))
}
