//! # tf-cuda-interposer
//!
//! `libtf_cuda_interposer.so`: loaded into an application with `LD_PRELOAD` (or
//! `/etc/ld.so.preload`), it enforces the application's vGPU — a VRAM quota and a compute share
//! kept in a shared region (`tf-vgpu-limiter`) — on every CUDA driver call, however the
//! application reaches the driver:
//!
//! - **direct linking** (`-lcuda`): our exported functions come first in symbol resolution;
//! - **`dlopen` + `dlsym`** (cudarc, the CUDA runtime): our `dlsym` hands out our wrappers for
//!   the functions we interpose ([`dl`] explains how every other lookup keeps its meaning);
//! - **`cuGetProcAddress`/`_v2`** (the CUDA 12 runtime gets every entry point this way): the
//!   pointer the driver returns is swapped for our wrapper when it is one we interpose.
//!
//! Interposed: every allocation family (`cuMemAlloc*`, pitch, managed, async and pool
//! allocations, `cuMemCreate`, arrays) and every free; the memory queries (`cuMemGetInfo*`,
//! `cuDeviceTotalMem*`, `nvmlDeviceGetMemoryInfo*`), answered with the quota; every launch family
//! (`cuLaunchKernel`, `_ptsz`, `Ex`, cooperative, `cuGraphLaunch`), paced to the compute share.
//! Everything else goes straight to the driver. A process with no vGPU in its environment sees
//! no difference at all. No panic crosses the C boundary.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

mod dl;
mod hooks;
mod logging;
mod sampler;
mod state;

pub use state::{format_uuid, uuid_digits};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_and_mig_spellings_of_one_uuid_match() {
        let b = [
            0x00, 0x35, 0xd5, 0x80, 0x93, 0xc6, 0xdd, 0x7d, 0x14, 0xd6, 0xdf, 0x43, 0x09, 0x0a,
            0xcb, 0x4f,
        ];
        let formatted = format_uuid(&b);
        assert_eq!(formatted, "GPU-0035d580-93c6-dd7d-14d6-df43090acb4f");
        assert_eq!(
            uuid_digits(&formatted),
            uuid_digits("MIG-0035D580-93C6-DD7D-14D6-DF43090ACB4F")
        );
        assert_ne!(
            uuid_digits(&formatted),
            uuid_digits("GPU-0035d580-93c6-dd7d-14d6-df43090acb40")
        );
    }
}
