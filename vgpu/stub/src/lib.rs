//! # tf-remote-stub
//!
//! The client stub of a remote vGPU: a drop-in `libcuda.so.1` (installed also as `libcuda.so`
//! and as `libnvidia-ml.so.1`) that implements the CUDA driver API over
//! [`tf_remote::RemoteBackend`], so unmodified programs — C programs built against NVIDIA's
//! `cuda.h` and linked with `-lcuda`, cudarc, NVIDIA's `cuda-bindings`, programs that reach the
//! driver only through `cuGetProcAddress` — run against a GPU owned by a worker on this or
//! another host. `cuInit` connects to the worker named by `TF_REMOTE` with the token in
//! `TF_REMOTE_TOKEN_FILE` (`tensor-fusion run --remote` sets both).
//!
//! Every function of `cuda.h` and `nvml.h` is exported with its real signature, from
//! `tf-cuda-abi`'s generated lists: the [`Driver`] and [`Nvml`] traits have one method per
//! function whose default answers `CUDA_ERROR_NOT_SUPPORTED` (`NVML_ERROR_NOT_SUPPORTED`) and
//! logs once; [`RemoteCuda`] overrides what the remote path implements (devices, contexts,
//! memory, copies, memsets, modules, launches, streams, events, errors, `cuGetProcAddress`) and
//! [`RemoteNvml`] answers device and memory queries for the remote vGPU. Each export runs
//! under `tf_ffi::guard`: no panic crosses the C boundary.
//!
//! What it shares with the simulated driver (`fake-gpu/libcuda`): the exported C face, error
//! names, `cuGetProcAddress`, reading a launch's arguments and the context stack all come from
//! `tf_cuda_abi::facade`. The two implementations stay apart: the simulated one is written
//! against the simulated engine's own objects (its device pointers are host addresses it
//! dereferences; page-locked memory, VMM, stream callbacks and graph capture are engine
//! features the HAL does not express), this one against a HAL context over the wire.
//!
//! Design rules: the program's handles are checked against this library's tables before use
//! and never dereferenced; host pointers are the caller's (as with the real driver); calls that
//! return nothing the program needs at once are sent without waiting (`tf-remote`), so their
//! errors surface at the next synchronising call, as CUDA's do.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too
#![allow(non_snake_case)]

mod ffi;
mod imp;
mod nvml;
mod state;

pub use imp::RemoteCuda;
pub use nvml::RemoteNvml;

/// How the stub names itself in logs.
pub const LIBRARY: &str = "the tensor-fusion remote vGPU's libcuda";
/// How its NVML names itself in logs.
pub const NVML_LIBRARY: &str = "the tensor-fusion remote vGPU's NVML";

tf_cuda_abi::cuda_driver_facade!(RemoteCuda, LIBRARY);
tf_cuda_abi::nvml_facade!(RemoteNvml, NVML_LIBRARY);
