//! # tf-hal
//!
//! The vendor-neutral hardware abstraction layer of tensor-fusion. Everything above the
//! backends (the vGPU limiter, the hypervisor, the scheduler, the command line) sees devices only
//! through these traits and types:
//!
//! - [`Backend`]: enumeration (with [`DeviceInfo`] and [`Capabilities`]) and topology;
//! - [`Device`]: metrics (memory, per-process usage, busy time and utilization), partitions, and
//!   a factory for [`Context`]s;
//! - [`Context`]: execution — memory, copies, modules, launches with packed [`KernelArgs`],
//!   streams, events, synchronization, and optional snapshot/restore;
//! - [`Error`]: one error type with a vendor-neutral [`ErrorKind`] that keeps the vendor's code;
//! - [`DeviceUuid`]: the one parser and comparison of device UUIDs (`GPU-…`, `MIG-…`, bytes).
//!
//! Backends are crates of their own (`tf-fake-gpu`, `tf-backend-cuda`, …) compiled in by cargo
//! features at the binaries and chosen at run time by the binaries' configuration.
//!
//! Design rules: this crate is the HAL and nothing else — no vendor code, no FFI, no file
//! formats or search paths (configuration lives in the command line, OS helpers in `tf-os`).
//!
//! With the `conformance` feature, [`conformance`] holds the generic test suite every backend
//! runs from its own tests through [`hal_conformance_tests!`].
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

mod error;
mod traits;
mod types;
pub mod units;
mod uuid;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{Error, ErrorKind, Result, VendorCode};
pub use traits::{Backend, Context, Device};
pub use types::*;
pub use uuid::DeviceUuid;

/// The project's test kernels as PTX text: `tf_vector_add_f32`, `tf_saxpy_f32`, `tf_fill_u32`
/// and `tf_busy`. The same text runs on a real NVIDIA GPU and on the simulated one (whose engine
/// recognises these entries and computes the same results on the CPU).
pub const TEST_KERNELS_PTX: &str = include_str!("../kernels/tf_kernels.ptx");

/// The same four test kernels as one SPIR-V module (for Vulkan), compiled from the GLSL in
/// `kernels/glsl/` by `kernels/build-spirv.sh` (glslang, then spirv-link), one entry point per
/// kernel with the PTX entries' names and semantics. The convention the Vulkan backend follows:
/// the kernel's arguments are its push constants, laid out like CUDA's parameter buffer (each at
/// its natural alignment, in order), device pointers are buffer device addresses, and the block
/// shape is specialization constants 0, 1 and 2 (`local_size_x_id = 0`, ...).
pub const TEST_KERNELS_SPIRV: &[u8] = include_bytes!("../kernels/tf_kernels.spv");

/// The test kernels in the form a backend of `kind` loads: SPIR-V for Vulkan, PTX otherwise
/// (a remote device is taken to be one that runs PTX: the CUDA or the simulated GPU).
pub fn test_kernels(kind: BackendKind) -> ModuleImage<'static> {
    match kind {
        BackendKind::Vulkan => ModuleImage::SpirV(TEST_KERNELS_SPIRV),
        BackendKind::Fake | BackendKind::Cuda | BackendKind::Ascend | BackendKind::Remote => {
            ModuleImage::Ptx(TEST_KERNELS_PTX)
        }
    }
}
