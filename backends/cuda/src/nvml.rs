//! NVML through nvml-wrapper: device metrics, processes, PCI identity, topology and MIG profiles.
//!
//! NVML is optional: when it cannot be loaded the backend still enumerates and executes through
//! the driver API, and the metrics NVML provides report [`ErrorKind::NotSupported`].

use std::ffi::{CStr, OsString};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nvml_wrapper::enum_wrappers::device::{
    P2pCapabilitiesIndex, P2pStatus, Sampling, TopologyLevel,
};
use nvml_wrapper::enums::device::{SampleValue, UsedGpuMemory};
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessUtilizationSample;
use tf_hal::{
    DeviceUuid, Error, ErrorKind, LinkKind, MemoryInfo, PartitionTemplate, ProcessUsage, Result,
};

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

    /// The NVML device a CUDA device is, from the driver's UUID: a whole GPU (`GPU-…`), a MIG instance (`MIG-…`, whose metrics are
    /// its parent GPU's), or, when `by_pci` allows it (no other CUDA device shares the PCI
    /// address), the GPU at that PCI bus id.
    pub fn find(&self, uuid: DeviceUuid, pci_bus_id: &str, by_pci: bool) -> Option<NvmlMatch> {
        let gpu_uuid = DeviceUuid::from_bytes(uuid.bytes()).to_string();
        let mig_uuid = DeviceUuid::mig_from_bytes(uuid.bytes()).to_string();
        let gpu = nv("nvmlDeviceGetHandleByUUID", || {
            let d = self.nvml.device_by_uuid(gpu_uuid.as_str())?;
            Ok(NvmlMatch {
                index: d.index()?,
                uuid: d.uuid()?,
            })
        });
        if let Ok(m) = gpu {
            return Some(m);
        }
        let mig = nv("nvmlDeviceGetHandleByUUID", || {
            let d = self.nvml.device_by_uuid(mig_uuid.as_str())?;
            Ok(NvmlMatch {
                index: d.mig_parent_device()?.index()?,
                uuid: mig_uuid.clone(),
            })
        });
        if let Ok(m) = mig {
            return Some(m);
        }
        if !by_pci {
            return None;
        }
        nv("nvmlDeviceGetHandleByPciBusId", || {
            let d = self.nvml.device_by_pci_bus_id(pci_bus_id)?;
            Ok(NvmlMatch {
                index: d.index()?,
                uuid: d.uuid()?,
            })
        })
        .ok()
    }

    /// What NVML says about one device for its [`tf_hal::DeviceInfo`].
    pub fn identity(&self, index: u32) -> Result<NvmlIdentity> {
        let d = self.device(index)?;
        let pci_bus_id = nv("nvmlDeviceGetPciInfo", || d.pci_info()).map(|p| p.bus_id);
        let numa_node = nv("nvmlDeviceGetNumaNodeId", || d.numa_node_id()).ok();
        let mig_capable = nv("nvmlDeviceGetMigMode", || d.mig_mode()).is_ok();
        Ok(NvmlIdentity {
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

    /// The GPU core temperature and the board's power draw; a sensor NVML cannot read on this
    /// device is `None` (not an error), as on parts without a power sensor.
    pub fn sensors(&self, index: u32) -> Result<tf_hal::Sensors> {
        let d = self.device(index)?;
        let temperature_c = nv("nvmlDeviceGetTemperature", || {
            d.temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu)
        })
        .ok()
        .map(f64::from);
        let power_w = nv("nvmlDeviceGetPowerUsage", || d.power_usage())
            .ok()
            .map(|mw| f64::from(mw) / 1000.0);
        Ok(tf_hal::Sensors {
            temperature_c,
            power_w,
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

    /// GPU utilization in percent over (about) the last `window`, without blocking:
    ///
    /// 1. the mean of NVML's GPU utilization samples newer than `now - window`
    ///    (`nvmlDeviceGetSamples`), where the driver keeps them;
    /// 2. else the per-process SM utilization samples since then
    ///    (`nvmlDeviceGetProcessUtilization`), each process's mean summed over processes (no
    ///    samples at all means no process ran a kernel: 0%);
    /// 3. else NVML's current utilization rate, which covers the driver's own sample period
    ///    (between 1/6 s and 1 s depending on the product) rather than `window`.
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
        match nv("nvmlDeviceGetProcessUtilization", || {
            d.process_utilization_stats(since)
        }) {
            Ok(samples) => return Ok(sum_of_process_means(&samples, since)),
            Err(e) if e.kind == ErrorKind::NotFound => return Ok(0.0),
            Err(_) => {}
        }
        let u = nv("nvmlDeviceGetUtilizationRates", || d.utilization_rates())?;
        Ok((u.gpu as f64).clamp(0.0, 100.0))
    }

    /// Active NVLink links of a device, with the PCI bus id of the remote end of each where
    /// NVML reports it.
    fn nvlinks(&self, d: &nvml_wrapper::Device<'_>) -> Vec<Option<String>> {
        let mut out = Vec::new();
        for l in 0..NVLINK_MAX_LINKS {
            let link = d.link_wrapper_for(l);
            match nv("nvmlDeviceGetNvLinkState", || link.is_active()) {
                Ok(true) => {}
                Ok(false) => continue,
                // No NVLink on this device, or past its last link.
                Err(_) => break,
            }
            let remote = nv("nvmlDeviceGetNvLinkRemotePciInfo", || {
                link.remote_pci_info()
            });
            out.push(remote.ok().map(|p| p.bus_id));
        }
        out
    }

    /// How two devices are connected, `None` when NVML cannot tell:
    ///
    /// - NVLink when links of `a` end at `b` (their count), or when NVML's NVLink P2P status
    ///   between them is OK (through NVSwitch: the count of `a`'s active links), or, where NVML
    ///   reports neither the remote ends nor the P2P status, when both have active links;
    /// - else the closest common ancestor in the PCIe tree.
    pub fn link(&self, a: u32, b: u32) -> Option<LinkKind> {
        let da = self.device(a).ok()?;
        let db = self.device(b).ok()?;
        let b_bus = nv("nvmlDeviceGetPciInfo", || db.pci_info()).ok()?.bus_id;
        let a_links = self.nvlinks(&da);
        if !a_links.is_empty() {
            let direct = a_links
                .iter()
                .flatten()
                .filter(|r| r.eq_ignore_ascii_case(&b_bus))
                .count() as u32;
            if direct > 0 {
                return Some(LinkKind::NvLink { links: direct });
            }
            let all = a_links.len() as u32;
            match nv("nvmlDeviceGetP2PStatus", || {
                da.p2p_status(&db, P2pCapabilitiesIndex::NvLink)
            }) {
                Ok(P2pStatus::Ok) => return Some(LinkKind::NvLink { links: all }),
                Ok(_) => {}
                Err(_) => {
                    let remote_unknown = a_links.iter().all(Option::is_none);
                    if remote_unknown && !self.nvlinks(&db).is_empty() {
                        return Some(LinkKind::NvLink { links: all });
                    }
                }
            }
        }
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

/// Device utilization from per-process samples: each process's mean SM utilization over the
/// samples newer than `since`, summed over processes, at most 100%.
fn sum_of_process_means(samples: &[ProcessUtilizationSample], since: u64) -> f64 {
    let mut per_pid: std::collections::HashMap<u32, (f64, u32)> = Default::default();
    for s in samples.iter().filter(|s| s.timestamp > since) {
        let e = per_pid.entry(s.pid).or_default();
        e.0 += s.sm_util as f64;
        e.1 += 1;
    }
    per_pid
        .values()
        .map(|(sum, n)| sum / *n as f64)
        .sum::<f64>()
        .clamp(0.0, 100.0)
}

/// "{slices}g.{GiB rounded up}gb" when the driver does not name the profile.
fn fallback_profile_name(slices: u32, memory_mb: u64) -> String {
    format!("{slices}g.{}gb", memory_mb.div_ceil(1024))
}

/// A CUDA device found in NVML.
#[derive(Debug, Clone, PartialEq)]
pub struct NvmlMatch {
    /// The NVML index of the GPU (the parent GPU of a MIG instance).
    pub index: u32,
    /// NVML's UUID of the device itself (`GPU-…` or `MIG-…`).
    pub uuid: String,
}

/// Identity details NVML knows better than the driver API (of a whole GPU).
#[derive(Debug, Clone, PartialEq)]
pub struct NvmlIdentity {
    pub pci_bus_id: Option<String>,
    pub numa_node: Option<u32>,
    pub mig_capable: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_samples_sum_to_device_utilization() {
        let s = |pid, timestamp, sm_util| ProcessUtilizationSample {
            pid,
            timestamp,
            sm_util,
            mem_util: 0,
            enc_util: 0,
            dec_util: 0,
        };
        let samples = [
            s(1, 10, 99),
            s(1, 20, 40),
            s(1, 30, 20),
            s(2, 30, 50),
            s(3, 30, 90),
        ];
        // Since 15: pid 1 means 30, pid 2 50, pid 3 90 -> capped at 100.
        assert_eq!(sum_of_process_means(&samples, 15), 100.0);
        assert_eq!(sum_of_process_means(&samples[..4], 15), 80.0);
        assert_eq!(sum_of_process_means(&samples, 30), 0.0);
    }

    #[test]
    fn fallback_profile_names() {
        assert_eq!(fallback_profile_name(1, 4864), "1g.5gb");
        assert_eq!(fallback_profile_name(7, 40192), "7g.40gb");
    }
}
