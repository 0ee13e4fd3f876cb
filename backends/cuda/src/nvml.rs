//! NVML through nvml-wrapper: device metrics, processes, PCI identity, topology and MIG profiles.
//!
//! NVML is optional: when it cannot be loaded the backend still enumerates and executes through
//! the driver API, and the metrics NVML provides report [`ErrorKind::NotSupported`].

use std::ffi::{CStr, OsString};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nvml_wrapper::enum_wrappers::device::{Sampling, TopologyLevel};
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::error::NvmlError;
use tf_hal::{Error, ErrorKind, LinkKind, MemoryInfo, PartitionTemplate, ProcessUsage, Result};

use crate::error::nvml_error;
use crate::loader;

/// Maximum NVLink links per GPU (`NVML_NVLINK_MAX_LINKS`).
const NVLINK_MAX_LINKS: u32 = 18;

/// An initialised NVML.
pub struct Nvml {
    nvml: nvml_wrapper::Nvml,
    /// The library it was loaded from.
    pub library: OsString,
}

impl std::fmt::Debug for Nvml {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nvml")
            .field("library", &self.library)
            .finish()
    }
}

/// Run an nvml-wrapper call, turning a panic into an error and mapping NVML's error.
fn nv<T>(what: &str, f: impl FnOnce() -> std::result::Result<T, NvmlError>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r.map_err(|e| nvml_error(what, e)),
        Err(_) => Err(Error::new(
            ErrorKind::Other,
            format!("{what}: the NVML binding panicked"),
        )),
    }
}

/// Whether an NVML error says "this library or device cannot do that" (so a fallback applies).
fn unsupported(e: &Error) -> bool {
    e.kind == ErrorKind::NotSupported
}

impl Nvml {
    /// Load and initialise NVML from the first candidate library that works.
    pub fn open() -> Result<Nvml> {
        let mut last = None;
        for lib in loader::nvml_library_candidates() {
            let r = nv("nvmlInit", || {
                nvml_wrapper::Nvml::builder().lib_path(&lib).init()
            });
            match r {
                Ok(nvml) => {
                    tracing::debug!(library = ?lib, "NVML loaded");
                    return Ok(Nvml { nvml, library: lib });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            Error::new(ErrorKind::LibraryNotFound, "libnvidia-ml.so.1 not found")
        }))
    }

    fn device(&self, index: u32) -> Result<nvml_wrapper::Device<'_>> {
        nv("nvmlDeviceGetHandleByIndex", || {
            self.nvml.device_by_index(index)
        })
    }

    /// The driver version string ("550.54.15").
    pub fn driver_version(&self) -> Result<String> {
        nv("nvmlSystemGetDriverVersion", || {
            self.nvml.sys_driver_version()
        })
    }

    /// The NVML index of the device with this UUID or, failing that, this PCI bus id.
    pub fn find(&self, uuid: &str, pci_bus_id: &str) -> Option<u32> {
        let by_uuid = nv("nvmlDeviceGetHandleByUUID", || {
            self.nvml.device_by_uuid(uuid)?.index()
        });
        by_uuid.ok().or_else(|| {
            nv("nvmlDeviceGetHandleByPciBusId", || {
                self.nvml.device_by_pci_bus_id(pci_bus_id)?.index()
            })
            .ok()
        })
    }

    /// What NVML says about one device for its [`tf_hal::DeviceInfo`].
    pub fn identity(&self, index: u32) -> Result<NvmlIdentity> {
        let d = self.device(index)?;
        let uuid = nv("nvmlDeviceGetUUID", || d.uuid())?;
        let pci_bus_id = nv("nvmlDeviceGetPciInfo", || d.pci_info()).map(|p| p.bus_id);
        let numa_node = nv("nvmlDeviceGetNumaNodeId", || d.numa_node_id()).ok();
        let mig_capable = nv("nvmlDeviceGetMigMode", || d.mig_mode()).is_ok();
        Ok(NvmlIdentity {
            uuid,
            pci_bus_id: pci_bus_id.ok(),
            numa_node,
            mig_capable,
        })
    }

    /// Device-wide memory (all processes).
    pub fn memory(&self, index: u32) -> Result<MemoryInfo> {
        let d = self.device(index)?;
        let m = nv("nvmlDeviceGetMemoryInfo_v2", || d.memory_info())?;
        // NVML v2 reports driver-reserved memory apart from `used`; count it as used, as
        // cuMemGetInfo does, so that used + free = total.
        let used = m.total.saturating_sub(m.free);
        Ok(MemoryInfo {
            total_bytes: m.total,
            used_bytes: used,
            free_bytes: m.free,
        })
    }

    /// Compute processes holding memory on the device.
    pub fn processes(&self, index: u32) -> Result<Vec<ProcessUsage>> {
        let d = self.device(index)?;
        let procs = match nv("nvmlDeviceGetComputeRunningProcesses", || {
            d.running_compute_processes()
        }) {
            Err(e) if unsupported(&e) => nv("nvmlDeviceGetComputeRunningProcesses_v2", || {
                d.running_compute_processes_v2()
            })?,
            other => other?,
        };
        Ok(procs
            .into_iter()
            .map(|p| ProcessUsage {
                pid: p.pid,
                memory_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => b,
                    UsedGpuMemory::Unavailable => 0,
                },
                busy_ns: None,
            })
            .collect())
    }

    /// GPU utilization in percent over (about) the last `window`: the mean of NVML's
    /// utilization samples newer than `now - window` where the driver keeps them, else NVML's
    /// current utilization rate (which covers the driver's own recent sample period).
    pub fn utilization(&self, index: u32, window: Duration) -> Result<f64> {
        let d = self.device(index)?;
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|t| t.as_micros() as u64)
            .unwrap_or(0);
        let since = now_us.saturating_sub(window.as_micros() as u64);
        if let Ok(samples) = nv("nvmlDeviceGetSamples", || {
            d.samples(Sampling::GpuUtilization, since)
        }) {
            let values: Vec<f64> = samples
                .iter()
                .filter(|s| s.timestamp > since)
                .map(|s| match s.value {
                    SampleValue::U32(v) => v as f64,
                    SampleValue::U64(v) => v as f64,
                    SampleValue::I64(v) => v as f64,
                    SampleValue::F64(v) => v,
                })
                .collect();
            if !values.is_empty() {
                let mean = values.iter().sum::<f64>() / values.len() as f64;
                return Ok(mean.clamp(0.0, 100.0));
            }
        }
        let u = nv("nvmlDeviceGetUtilizationRates", || d.utilization_rates())?;
        Ok((u.gpu as f64).clamp(0.0, 100.0))
    }

    /// How two devices are connected: NVLink (counting active links from `a` to `b`), else the
    /// PCIe topology's closest common ancestor. `None` when NVML cannot tell.
    pub fn link(&self, a: u32, b: u32) -> Option<LinkKind> {
        let da = self.device(a).ok()?;
        let db = self.device(b).ok()?;
        let b_bus = nv("nvmlDeviceGetPciInfo", || db.pci_info()).ok()?.bus_id;
        let mut links = 0;
        for l in 0..NVLINK_MAX_LINKS {
            let link = da.link_wrapper_for(l);
            match nv("nvmlDeviceGetNvLinkState", || link.is_active()) {
                Ok(true) => {}
                Ok(false) => continue,
                // No NVLink on this device (or past its last link).
                Err(_) => break,
            }
            if let Ok(remote) = nv("nvmlDeviceGetNvLinkRemotePciInfo", || {
                link.remote_pci_info()
            }) && remote.bus_id.eq_ignore_ascii_case(&b_bus)
            {
                links += 1;
            }
        }
        if links > 0 {
            return Some(LinkKind::NvLink { links });
        }
        let db = self.device(b).ok()?;
        let level = nv("nvmlDeviceGetTopologyCommonAncestor", || {
            da.topology_common_ancestor(db)
        })
        .ok()?;
        Some(match level {
            TopologyLevel::Internal | TopologyLevel::Single | TopologyLevel::Multiple => {
                LinkKind::PcieSwitch
            }
            TopologyLevel::HostBridge | TopologyLevel::Node => LinkKind::PcieHostBridge,
            TopologyLevel::System => LinkKind::CrossNuma,
        })
    }

    /// MIG GPU-instance profiles of a MIG-capable device.
    pub fn mig_templates(&self, index: u32) -> Result<Vec<PartitionTemplate>> {
        let d = self.device(index)?;
        nv("nvmlDeviceGetMigMode", || d.mig_mode())?;
        let mut out = Vec::new();
        for profile in 0..nvml_wrapper_sys::bindings::NVML_GPU_INSTANCE_PROFILE_COUNT {
            let Ok(info) = nv("nvmlDeviceGetGpuInstanceProfileInfo", || {
                d.profile_info(profile)
            }) else {
                continue;
            };
            if info.instance_count == 0 {
                continue;
            }
            let name = self
                .profile_name(&d, profile)
                .unwrap_or_else(|| fallback_profile_name(info.slice_count, info.memory_size_mb));
            out.push(PartitionTemplate {
                name,
                memory_bytes: info.memory_size_mb << 20,
                compute_units: info.multiprocessor_count,
                max_instances: info.instance_count,
            });
        }
        Ok(out)
    }

    /// NVIDIA's own name of a profile ("1g.10gb"), from `nvmlDeviceGetGpuInstanceProfileInfoV`
    /// (drivers of CUDA 11.3 and later).
    fn profile_name(&self, d: &nvml_wrapper::Device<'_>, profile: u32) -> Option<String> {
        use nvml_wrapper_sys::bindings::nvmlGpuInstanceProfileInfo_v2_t;
        let f = *self
            .nvml
            .lib()
            .nvmlDeviceGetGpuInstanceProfileInfoV
            .as_ref()
            .ok()?;
        // SAFETY: all-zero is a valid value of this plain C struct (integers and a char array).
        let mut info: nvmlGpuInstanceProfileInfo_v2_t = unsafe { std::mem::zeroed() };
        // NVML_STRUCT_VERSION(GpuInstanceProfileInfo, 2): the size with the version in the top byte.
        info.version = std::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>() as u32 | (2 << 24);
        // SAFETY: `d.handle()` is a live device handle of this initialised NVML; `info` is a
        // properly sized, versioned v2 struct that NVML fills.
        let rc = unsafe { f(d.handle(), profile, &mut info) };
        if rc != 0 {
            return None;
        }
        let bytes: Vec<u8> = info.name.iter().map(|&c| c as u8).collect();
        let name = CStr::from_bytes_until_nul(&bytes).ok()?.to_str().ok()?;
        // NVML names them "MIG 1g.10gb"; the profile is the part after "MIG ".
        let name = name.trim().trim_start_matches("MIG ").trim();
        (!name.is_empty()).then(|| name.to_string())
    }
}

/// "{slices}g.{GiB rounded up}gb" when the driver does not name the profile.
fn fallback_profile_name(slices: u32, memory_mb: u64) -> String {
    format!("{slices}g.{}gb", memory_mb.div_ceil(1024))
}

/// Identity details NVML knows better than the driver API.
#[derive(Debug, Clone, PartialEq)]
pub struct NvmlIdentity {
    pub uuid: String,
    pub pci_bus_id: Option<String>,
    pub numa_node: Option<u32>,
    pub mig_capable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_profile_names() {
        assert_eq!(fallback_profile_name(1, 4864), "1g.5gb");
        assert_eq!(fallback_profile_name(7, 40192), "7g.40gb");
    }
}
