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
