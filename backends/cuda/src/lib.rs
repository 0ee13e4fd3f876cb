//! # tf-backend-cuda
//!
//! The NVIDIA implementation of the `tf-hal` traits: the CUDA driver API through
//! [cudarc](https://docs.rs/cudarc) (loaded with `dlopen` at run time, so this crate builds with no
//! CUDA toolkit) and NVML through [nvml-wrapper](https://docs.rs/nvml-wrapper).
//!
//! - [`CudaBackend::new`] checks the driver library first ([`loader`]): a missing `libcuda.so.1`
//!   or a driver without the entry points this crate uses is [`ErrorKind::LibraryNotFound`], never
//!   a panic. `TF_CUDA_LIBRARY` names the driver library explicitly, `TF_NVML_LIBRARY` NVML.
//! - Enumeration comes from the driver API (name, memory, SMs, compute capability, PCI), with
//!   NVML's UUID, PCI bus id and NUMA node where NVML knows the device; peak FP16 TFLOPS comes
//!   from the [`models`] table (or an estimate from SMs × clock).
//! - Metrics (memory, processes, utilization, topology, MIG profiles) come from NVML; without
//!   NVML they are [`ErrorKind::NotSupported`] and everything else still works.
//! - Execution ([`CudaContext`]) runs on the device's primary context, with per-context handle
//!   tables for allocations, modules, functions, streams and events.
//!
//! Errors keep the vendor's code and name (`CUDA_ERROR_OUT_OF_MEMORY`, `NVML_ERROR_NOT_SUPPORTED`)
//! through [`Error::with_vendor`].
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too
#![warn(missing_docs)]
pub mod context;
pub mod error;
pub mod loader;
pub mod models;
mod nvml;

use std::sync::Arc;
use std::time::Duration;

use cudarc::driver::{result, sys};
use tf_hal::{
    Backend, BackendKind, BusySample, Capabilities, Context, Device, DeviceInfo, DeviceUuid, Error,
    ErrorKind, Link, LinkKind, MemoryInfo, PartitionInfo, PartitionTemplate, ProcessUsage, Result,
    Vendor,
};

pub use context::CudaContext;
pub use loader::{CUDA_LIBRARY_ENV, NVML_LIBRARY_ENV};

use crate::error::cuda_error;
use crate::loader::guard;
use crate::nvml::Nvml;

/// Run a cudarc call that returns a driver result, under the panic guard, mapping its error.
pub(crate) fn cu<T>(
    what: &str,
    f: impl FnOnce() -> std::result::Result<T, result::DriverError>,
) -> Result<T> {
    guard(what, || f().map_err(|e| cuda_error(what, e)))
}

/// What every device and context of one backend shares.
#[derive(Debug)]
struct Shared {
    nvml: Option<Nvml>,
}

/// The NVIDIA backend: devices seen by the CUDA driver, described with NVML's help.
#[derive(Debug)]
pub struct CudaBackend {
    shared: Arc<Shared>,
    devices: Vec<DeviceEntry>,
}

#[derive(Debug, Clone)]
struct DeviceEntry {
    info: DeviceInfo,
    /// The driver's device ordinal.
    ordinal: i32,
    /// The device's NVML index, where NVML knows it.
    nvml_index: Option<u32>,
}

impl CudaBackend {
    /// Load the CUDA driver (and NVML, if present), initialise it and enumerate its devices.
    ///
    /// A missing driver library is [`ErrorKind::LibraryNotFound`] with a message saying what to
    /// install or set. A driver that finds no device yields a backend with no devices.
    pub fn new() -> Result<CudaBackend> {
        let lib = loader::driver()?;
        match cu("cuInit", result::init) {
            Ok(()) => {}
            Err(e) if e.kind == ErrorKind::InvalidDevice => {
                tracing::warn!(library = %lib.path.display(), "the CUDA driver reports no device: {e}");
                return Ok(CudaBackend {
                    shared: Arc::new(Shared { nvml: None }),
                    devices: Vec::new(),
                });
            }
            Err(e) => return Err(e),
        }
        let nvml = match Nvml::open() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(
                    "NVML is unavailable ({e}); device metrics will report not supported"
                );
                None
            }
        };
        let shared = Arc::new(Shared { nvml });
        let devices = enumerate(&shared)?;
        Ok(CudaBackend { shared, devices })
    }

    /// The CUDA driver library in use.
    pub fn driver_library(&self) -> Option<std::path::PathBuf> {
        loader::driver().ok().map(|d| d.path.clone())
    }

    /// Whether NVML was loaded (metrics, processes and topology need it).
    pub fn has_nvml(&self) -> bool {
        self.shared.nvml.is_some()
    }
}

fn driver_version_string(shared: &Shared) -> String {
    if let Some(v) = shared.nvml.as_ref().and_then(|n| n.driver_version().ok()) {
        return v;
    }
    let mut v = 0;
    // SAFETY: cuDriverGetVersion writes one int through the pointer it is given.
    match cu("cuDriverGetVersion", || unsafe {
        sys::cuDriverGetVersion(&mut v).result()
    }) {
        Ok(()) => format!("cuda-{}.{}", v / 1000, (v % 1000) / 10),
        Err(_) => "unknown".to_string(),
    }
}

fn enumerate(shared: &Shared) -> Result<Vec<DeviceEntry>> {
    let count = cu("cuDeviceGetCount", result::device::get_count)?;
    let driver_version = driver_version_string(shared);
    let pcis = (0..count).map(driver_pci).collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(pcis.len());
    for (ordinal, pci) in (0..count).zip(&pcis) {
        // MIG instances share their GPU's PCI address.
        let pci_shared = pcis.iter().filter(|p| *p == pci).count() > 1;
        out.push(describe_device(
            shared,
            ordinal,
            out.len() as u32,
            &driver_version,
            pci_shared,
        )?);
    }
    Ok(out)
}

/// A device's PCI address from the driver, in NVML's format (nvidia-smi's): 8-digit domain,
/// upper-case hex.
fn driver_pci(ordinal: i32) -> Result<String> {
    use sys::CUdevice_attribute as A;
    let dev = cu("cuDeviceGet", || result::device::get(ordinal))?;
    let attr = |a: A| {
        // SAFETY: `dev` came from cuDeviceGet; attributes are plain integers.
        cu("cuDeviceGetAttribute", || unsafe {
            result::device::get_attribute(dev, a)
        })
        .unwrap_or(0)
    };
    Ok(format!(
        "{:08X}:{:02X}:{:02X}.0",
        attr(A::CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID),
        attr(A::CU_DEVICE_ATTRIBUTE_PCI_BUS_ID),
        attr(A::CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID)
    ))
}

fn describe_device(
    shared: &Shared,
    ordinal: i32,
    index: u32,
    driver_version: &str,
    pci_shared: bool,
) -> Result<DeviceEntry> {
    use sys::CUdevice_attribute as A;
    let dev = cu("cuDeviceGet", || result::device::get(ordinal))?;
    let name = cu("cuDeviceGetName", || result::device::get_name(dev))?;
    let uuid = cu("cuDeviceGetUuid", || result::device::get_uuid(dev))?;
    let uuid_bytes: [u8; 16] = uuid.bytes.map(|b| b as u8);
    // SAFETY: `dev` came from cuDeviceGet.
    let total = cu("cuDeviceTotalMem", || unsafe {
        result::device::total_mem(dev)
    })?;
    let attr = |a: A| {
        // SAFETY: `dev` came from cuDeviceGet; attributes are plain integers.
        cu("cuDeviceGetAttribute", || unsafe {
            result::device::get_attribute(dev, a)
        })
    };
    let sms = attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?;
    let cc = (
        attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?.max(0) as u32,
        attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?.max(0) as u32,
    );
    let driver_pci = driver_pci(ordinal)?;
    // Without NVML, a device sharing its PCI address is a MIG instance.
    let driver_uuid = if pci_shared {
        DeviceUuid::mig_from_bytes(uuid_bytes)
    } else {
        DeviceUuid::from_bytes(uuid_bytes)
    };

    let found = shared
        .nvml
        .as_ref()
        .and_then(|n| n.find(driver_uuid, &driver_pci, !pci_shared));
    let nvml_index = found.as_ref().map(|m| m.index);
    let identity = match (&shared.nvml, nvml_index) {
        (Some(n), Some(i)) => n.identity(i).ok(),
        _ => None,
    };
    if shared.nvml.is_some() && identity.is_none() {
        tracing::warn!(ordinal, uuid = %driver_uuid, pci = %driver_pci, "NVML does not know this CUDA device; its metrics are unavailable");
    }
    let uuid = found.map_or_else(|| driver_uuid.to_string(), |m| m.uuid);
    let pci_bus_id = identity
        .as_ref()
        .and_then(|i| i.pci_bus_id.clone())
        .unwrap_or(driver_pci);
    let numa_node = identity
        .as_ref()
        .and_then(|i| i.numa_node)
        .or_else(|| {
            attr(A::CU_DEVICE_ATTRIBUTE_HOST_NUMA_ID)
                .ok()
                .filter(|&n| n >= 0)
                .map(|n| n as u32)
        })
        .or_else(|| sysfs_numa_node(&pci_bus_id));
    let mig_capable = identity.as_ref().is_some_and(|i| i.mig_capable);

    let fp16_tflops = match models::lookup(&name) {
        Some(spec) => spec.fp16_tflops,
        None => {
            let clock_khz = attr(A::CU_DEVICE_ATTRIBUTE_CLOCK_RATE).unwrap_or(0).max(0) as u32;
            let est = models::estimate_fp16_tflops(sms.max(0) as u32, clock_khz, cc);
            tracing::warn!(
                model = %name,
                sms,
                clock_khz,
                compute_capability = %format!("{}.{}", cc.0, cc.1),
                tflops = est,
                "model not in the TFLOPS table: peak FP16 estimated from SMs x clock x per-SM rate"
            );
            est
        }
    };

    Ok(DeviceEntry {
        info: DeviceInfo {
            index,
            uuid,
            vendor: Vendor::Nvidia,
            model: name,
            total_memory_bytes: total as u64,
            compute_units: sms.max(0) as u32,
            fp16_tflops,
            pci_bus_id,
            numa_node,
            driver_version: driver_version.to_string(),
            capabilities: Capabilities {
                soft_limit: true,
                hard_limit: false,
                partitioning: mig_capable,
                snapshot: false,
                remoting: false,
            },
            backend: BackendKind::Cuda,
        },
        ordinal,
        nvml_index,
    })
}

/// The NUMA node Linux reports for a PCI device (`/sys/bus/pci/devices/<id>/numa_node`).
fn sysfs_numa_node(pci_bus_id: &str) -> Option<u32> {
    // sysfs uses a 4-digit lower-case domain: 0000:18:00.0.
    let id = pci_bus_id.to_ascii_lowercase();
    let id = match id.split_once(':') {
        Some((domain, rest)) if domain.len() > 4 => {
            format!("{}:{rest}", &domain[domain.len() - 4..])
        }
        _ => id,
    };
    let text = std::fs::read_to_string(format!("/sys/bus/pci/devices/{id}/numa_node")).ok()?;
    text.trim()
        .parse::<i64>()
        .ok()
        .filter(|&n| n >= 0)
        .map(|n| n as u32)
}

impl Backend for CudaBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Cuda
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(self.devices.iter().map(|d| d.info.clone()).collect())
    }

    fn device(&self, index: u32) -> Result<Arc<dyn Device>> {
        let entry = self.devices.get(index as usize).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidDevice,
                format!(
                    "no CUDA device with index {index} ({} devices)",
                    self.devices.len()
                ),
            )
        })?;
        Ok(Arc::new(CudaDevice {
            entry: entry.clone(),
            shared: self.shared.clone(),
        }))
    }

    fn topology(&self) -> Result<Vec<Link>> {
        let nvml = self.shared.nvml.as_ref();
        let mut links = Vec::new();
        for (i, a) in self.devices.iter().enumerate() {
            for b in &self.devices[i + 1..] {
                let by_nvml = match (nvml, a.nvml_index, b.nvml_index) {
                    (Some(n), Some(x), Some(y)) => n.link(x, y),
                    _ => None,
                };
                // Where NVML cannot tell, judge by NUMA node if both are known.
                let by_numa = match (a.info.numa_node, b.info.numa_node) {
                    (Some(x), Some(y)) if x == y => Some(LinkKind::PcieHostBridge),
                    (Some(_), Some(_)) => Some(LinkKind::CrossNuma),
                    _ => None,
                };
                if let Some(kind) = by_nvml.or(by_numa) {
                    links.push(Link {
                        a: a.info.index,
                        b: b.info.index,
                        kind,
                    });
                }
            }
        }
        Ok(links)
    }
}

/// One NVIDIA device (a whole GPU, or a MIG instance where the driver enumerates those; the
/// NVML metrics of a MIG instance are its parent GPU's).
#[derive(Debug)]
pub struct CudaDevice {
    entry: DeviceEntry,
    shared: Arc<Shared>,
}

impl CudaDevice {
    fn nvml(&self, what: &str) -> Result<(&Nvml, u32)> {
        match (&self.shared.nvml, self.entry.nvml_index) {
            (Some(n), Some(i)) => Ok((n, i)),
            (None, _) => Err(Error::not_supported(format!(
                "{what}: NVML (libnvidia-ml.so.1) is not available"
            ))),
            (Some(_), None) => Err(Error::not_supported(format!(
                "{what}: NVML does not know CUDA device {}",
                self.entry.info.uuid
            ))),
        }
    }

    /// The driver's ordinal of this device.
    pub fn ordinal(&self) -> i32 {
        self.entry.ordinal
    }
}

impl Device for CudaDevice {
    fn info(&self) -> &DeviceInfo {
        &self.entry.info
    }

    fn memory(&self) -> Result<MemoryInfo> {
        let (n, i) = self.nvml("device memory")?;
        n.memory(i)
    }

    fn processes(&self) -> Result<Vec<ProcessUsage>> {
        let (n, i) = self.nvml("device processes")?;
        n.processes(i)
    }

    /// NVML's temperature and power readings.
    fn sensors(&self) -> Result<tf_hal::Sensors> {
        let (n, i) = self.nvml("device sensors")?;
        n.sensors(i)
    }

    /// NVML keeps no cumulative busy counter; see [`Device::utilization`].
    fn busy_sample(&self) -> Result<Option<BusySample>> {
        Ok(None)
    }

    /// NVML's GPU utilization over the window, from its sample history (no blocking).
    fn utilization(&self, window: Duration) -> Result<f64> {
        let (n, i) = self.nvml("device utilization")?;
        n.utilization(i, window)
    }

    fn create_context(&self) -> Result<Arc<dyn Context>> {
        Ok(Arc::new(CudaContext::new(
            self.entry.ordinal,
            self.entry.info.index,
        )?))
    }

    /// MIG GPU-instance profiles. NVML lists them only while MIG mode is enabled, so a
    /// MIG-capable device with MIG off (or a driver that cannot list them) gives none.
    fn partition_templates(&self) -> Result<Vec<PartitionTemplate>> {
        if !self.entry.info.capabilities.partitioning {
            return Ok(Vec::new());
        }
        let (n, i) = self.nvml("MIG profiles")?;
        n.mig_templates(i)
    }

    fn create_partition(&self, template: &str) -> Result<PartitionInfo> {
        Err(Error::not_supported(format!(
            "partition {template} on device {}: creating MIG instances is not implemented by the \
             CUDA backend yet (use nvidia-smi mig)",
            self.entry.info.index
        )))
    }

    fn destroy_partition(&self, id: &str) -> Result<()> {
        Err(Error::not_supported(format!(
            "partition {id} on device {}: destroying MIG instances is not implemented by the \
             CUDA backend yet (use nvidia-smi mig)",
            self.entry.info.index
        )))
    }
}
