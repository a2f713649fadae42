//! Opening the NVML backend (`libnvidia-ml.so.1`, or `$CARVE_NVML_LIB`).

use carve_backend::{Backend, BackendError};

pub fn open() -> Result<Box<dyn Backend + Send>, BackendError> {
    Ok(Box::new(carve_nvml::NvmlBackend::open()?))
}
