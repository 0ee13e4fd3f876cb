//! # tf-cuda-interposer
//!
//! `libtf_cuda_interposer.so`: loaded into an application with `LD_PRELOAD` (or
//! `/etc/ld.so.preload`), it enforces the application's vGPU — a VRAM quota and a compute share
//! kept in a shared region (`tf-vgpu-limiter`) — on every CUDA driver call, however the
//! application reaches the driver:
//!
//! - **direct linking** (`-lcuda`): our exported functions come first in symbol resolution;
//! - **`dlopen` + `dlsym`** (cudarc, the CUDA runtime): our `dlsym` hands out our wrappers for
//!   the functions we interpose ([`trampoline`] explains how every other lookup keeps its
//!   meaning);
//! - **`cuGetProcAddress`/`_v2`** (the CUDA 12 runtime gets every entry point this way): the
//!   pointer the driver returns is swapped for our wrapper when it is one we interpose.
//!
//! Interposed: every allocation family (`cuMemAlloc*`, pitch, managed, async and pool
//! allocations, `cuMemCreate`, arrays) and every free; the memory queries (`cuMemGetInfo*`,
//! `cuDeviceTotalMem*`, `nvmlDeviceGetMemoryInfo*`), answered with the quota; every launch family
//! (`cuLaunchKernel`, `_ptsz`, `Ex`, cooperative, `cuGraphLaunch`), paced to the compute share.
//! Everything else goes straight to the driver. A process with no vGPU in its environment sees
//! no difference at all. No panic crosses the C boundary.
//!
//! Modules, bottom up (no cycles): [`real`] finds the real driver and its functions (the only
//! place that does); [`ffi`] binds the C-boundary kit to CUDA's codes; [`state`] knows the
//! process's vGPU and which devices are its; [`ledger`] records what each allocation was charged;
//! [`sampler`] times a few launches; [`hooks`] are the
//! interposed functions; [`trampoline`] is our exported `dlsym`, which hands out the hooks.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

mod ffi;
mod hooks;
mod ledger;
mod real;
mod sampler;
mod state;
mod trampoline;
