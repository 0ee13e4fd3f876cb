//! # tf-acl-interposer
//!
//! `libtf_acl_interposer.so`: loaded into an application with `LD_PRELOAD`, it enforces the
//! application's vNPU — a memory quota and a compute share kept in the shared region of
//! `tf-vgpu-limiter`, the same limiter core the CUDA interposer uses — on the Ascend ACL runtime
//! (`libascendcl.so`, real or simulated):
//!
//! - the allocation family (`aclrtMalloc`, `aclrtMallocCached`, `aclrtMallocAlign32`) is charged
//!   to the vNPU before the runtime allocates (past the quota: `ACL_ERROR_RT_MEMORY_ALLOCATION`,
//!   nothing allocated); `aclrtFree` gives the size back, as do `aclrtDestroyContext` and
//!   `aclrtResetDevice` for what they release; a process that dies gives its usage back through
//!   the region's process table;
//! - `aclrtGetMemInfo` answers with the quota as the total (and the quota less the vNPU's usage
//!   as free);
//! - `aclrtLaunchKernel` is paced to the compute share (`Client::before_launch`), and now and
//!   then timed with events so the controller learns what a launch costs ([`sampler`]).
//!
//! Hooked functions are exported under the runtime's names with the signatures of `ascend-sys`
//! (checked at compile time), so programs linked with `-lascendcl` reach them first; the real
//! functions come from `ascend_sys::Acl`, the same run-time loader the Ascend backend uses,
//! looking up each symbol in the runtime library's own handle. `tensor-fusion run` shows the
//! program only its vNPU's device (`ASCEND_RT_VISIBLE_DEVICES`), so every device allocation of
//! the process is the vNPU's. A process with no vNPU in its environment sees no difference.
//! No panic crosses the C boundary (`tf_ffi::guard`: `ACL_ERROR_INTERNAL_ERROR`).
//!
//! Modules, bottom up: [`real`] the real runtime; [`state`] the process's vNPU and its
//! allocations; [`sampler`] launch timing; [`hooks`] the exported functions.
//!
//! Not covered yet: programs that find the runtime with `dlopen` + `dlsym` (the CUDA
//! interposer's `dlsym` trampoline is specific to CUDA's names), and the VMM family
//! (`aclrtMallocPhysical`), which is outside the `ascend-sys` subset.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

mod hooks;
mod real;
mod sampler;
mod state;
