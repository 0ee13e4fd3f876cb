//! # tf-fake-gpu
//!
//! The simulated GPU: a product feature that lets the whole of tensor-fusion run and be tested on
//! a machine with no accelerator.
//!
//! - [`profile`]: device profiles from TOML (`TF_FAKE_GPU_CONFIG`), default two H100 SXM5 80GB.
//! - [`shm`]: the per-device shared-memory segment (memory used per process, the time-slice
//!   arbiter, busy-time counters), so processes contend for one device like on a real GPU.
//! - [`device`], [`exec`]: device memory backed by host memory, PTX modules whose known entries
//!   compute real results on the CPU ([`kernels`]), streams with worker threads, events.
//! - [`backend`]: the `tf-hal` backend over the engine.
//! - [`model`]: what a model has that its profile does not say (power, clocks, PCI ids,
//!   temperatures), and the sensor model over it ([`FakeDevice::sensors`]).
//! - [`machine`]: a private simulated machine (its own segments, removed when dropped), and
//!   [`testing`]: isolated machines for tests.
//!
//! The drop-in driver libraries (`libcuda.so.1`, `libnvidia-ml.so.1`) are built on this engine.
//!
//! Design rules: state shared between processes lives only in the device segments (atomics,
//! validated header, the shared `tf_os` process table), so any process may die at any moment
//! without stalling or corrupting another; a profile is validated before anything is opened; a
//! machine's segments live in its own folder (per user by default), so machines never meet by
//! accident; errors are the HAL's, with no vendor codes (the drop-in libraries map them).
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

pub mod backend;
pub mod device;
pub mod exec;
pub mod install;
pub mod kernels;
pub mod load;
pub mod machine;
pub mod model;
pub mod profile;
pub mod ptx;
pub mod shm;
pub mod sys;
pub mod testing;
pub mod vmm;

use std::sync::{Arc, OnceLock};

use tf_hal::{Error, ErrorKind, Result};

pub use backend::FakeBackend;
pub use device::{FakeDevice, MemKind};
pub use exec::{Event, FakeContext, Fill, Function, Module, Stream};
pub use profile::{DeviceProfile, FakeGpuConfig};

/// The simulated machine as seen by this process: its devices, opened from one configuration.
pub struct FakeGpu {
    config: FakeGpuConfig,
    devices: Vec<Arc<FakeDevice>>,
}

impl FakeGpu {
    /// Open every device of `config` (creating shared segments as needed).
    pub fn new(config: FakeGpuConfig) -> Result<Arc<FakeGpu>> {
        config.prepare_shm_dir()?;
        let devices = config
            .devices
            .iter()
            .enumerate()
            .map(|(i, p)| FakeDevice::new(i as u32, p.clone(), &config.shm_dir).map(Arc::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(FakeGpu { config, devices }))
    }

    /// The process-wide instance from the environment (`TF_FAKE_GPU_CONFIG`,
    /// `TF_FAKE_GPU_SHM_DIR`), opened once.
    pub fn global() -> Result<Arc<FakeGpu>> {
        static GLOBAL: OnceLock<std::result::Result<Arc<FakeGpu>, Error>> = OnceLock::new();
        GLOBAL
            .get_or_init(|| FakeGpu::new(FakeGpuConfig::from_env()?))
            .clone()
    }

    pub fn config(&self) -> &FakeGpuConfig {
        &self.config
    }

    pub fn devices(&self) -> &[Arc<FakeDevice>] {
        &self.devices
    }

    pub fn device(&self, index: u32) -> Result<&Arc<FakeDevice>> {
        self.devices.get(index as usize).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidDevice,
                format!(
                    "no simulated device {index}: there are {} (0..{})",
                    self.devices.len(),
                    self.devices.len()
                ),
            )
        })
    }
}
