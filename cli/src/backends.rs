//! Opening the HAL backend the user chose (`--backend`, `TF_BACKEND`, config file, or `fake`).
//! Vendor backends are compiled in by cargo features; this is the only place that names them.

use std::sync::Arc;

use anyhow::{Context as _, Result};
use tf_hal::{Backend, BackendKind};

/// Resolve and open a backend.
pub fn open(explicit: Option<&str>) -> Result<Arc<dyn Backend>> {
    let kind = crate::config::select_backend(explicit)?;
    open_kind(kind)
}

pub fn open_kind(kind: BackendKind) -> Result<Arc<dyn Backend>> {
    match kind {
        BackendKind::Fake => Ok(Arc::new(
            tf_fake_gpu::FakeBackend::from_env().context("opening the simulated GPU")?,
        )),
        BackendKind::Cuda => open_cuda(),
        BackendKind::Vulkan => open_vulkan(),
        BackendKind::Ascend => open_ascend(),
        // The worker's address and token from $TF_REMOTE and $TF_REMOTE_TOKEN_FILE (commands
        // with --remote pass them to crate::remote::open themselves).
        BackendKind::Remote => crate::remote::open(None, None),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda() -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        tf_backend_cuda::CudaBackend::new().context("opening the CUDA backend")?,
    ))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda() -> Result<Arc<dyn Backend>> {
    anyhow::bail!(
        "the cuda backend is not part of this build of tensor-fusion (rebuild with --features cuda; available: {})",
        available().join(", ")
    )
}

#[cfg(feature = "vulkan")]
fn open_vulkan() -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        tf_backend_vulkan::VulkanBackend::new().context("opening the Vulkan backend")?,
    ))
}

#[cfg(not(feature = "vulkan"))]
fn open_vulkan() -> Result<Arc<dyn Backend>> {
    anyhow::bail!(
        "the vulkan backend is not part of this build of tensor-fusion (rebuild with --features vulkan; available: {})",
        available().join(", ")
    )
}

#[cfg(feature = "ascend")]
fn open_ascend() -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        tf_backend_ascend::AscendBackend::new().context("opening the Ascend backend")?,
    ))
}

#[cfg(not(feature = "ascend"))]
fn open_ascend() -> Result<Arc<dyn Backend>> {
    anyhow::bail!(
        "the ascend backend is not part of this build of tensor-fusion (rebuild with --features ascend; available: {})",
        available().join(", ")
    )
}

/// Backends compiled into this binary (named when a backend was left out of the build).
#[cfg_attr(
    all(feature = "cuda", feature = "vulkan", feature = "ascend"),
    allow(dead_code)
)]
pub fn available() -> Vec<&'static str> {
    let mut v = vec!["fake"];
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "vulkan") {
        v.push("vulkan");
    }
    if cfg!(feature = "ascend") {
        v.push("ascend");
    }
    v
}
