//! Per-device queries. Every function first resolves the handle ([`state::device`]:
//! `NVML_ERROR_UNINITIALIZED` before init, `NVML_ERROR_INVALID_ARGUMENT` for a handle that is not
//! ours), then checks its output pointers (null is `NVML_ERROR_INVALID_ARGUMENT`).

use std::ffi::{c_char, c_void};

use tf_cuda_abi::nvml::*;

use crate::ffi::{NvmlResult, fill_chars, out, read, write_list, write_str};
use crate::metrics;
use crate::model::{NVIDIA_VENDOR_ID, architecture, cores_per_sm};
use crate::state::{self, Handle};
use tf_cuda_abi::nvml_types::*;

fn dev(handle: *mut c_void) -> NvmlResult<&'static Handle> {
    state::device(handle)
}

/// Check every output pointer before writing any, so a call either fills all or nothing.
fn non_null<const N: usize>(ptrs: [*const c_void; N]) -> NvmlResult {
    if ptrs.iter().any(|p| p.is_null()) {
        Err(NVML_ERROR_INVALID_ARGUMENT)
    } else {
        Ok(())
    }
}

/// `nvmlDeviceGetName`.
pub fn name(d: *mut c_void, buf: *mut c_char, len: u32) -> NvmlResult {
    write_str(buf, len, &dev(d)?.dev.profile().model)
}

/// `nvmlDeviceGetUUID`.
pub fn uuid(d: *mut c_void, buf: *mut c_char, len: u32) -> NvmlResult {
    write_str(buf, len, &dev(d)?.dev.profile().uuid)
}

/// `nvmlDeviceGetSerial`.
pub fn serial(d: *mut c_void, buf: *mut c_char, len: u32) -> NvmlResult {
    write_str(buf, len, &dev(d)?.serial)
}

/// `nvmlDeviceGetVbiosVersion`.
pub fn vbios_version(d: *mut c_void, buf: *mut c_char, len: u32) -> NvmlResult {
    dev(d)?;
    write_str(buf, len, "96.00.99.00.01")
}

/// `nvmlDeviceGetBrand`.
pub fn brand(d: *mut c_void, p: *mut u32) -> NvmlResult {
    use tf_cuda_abi::nvml::{NVML_BRAND_GEFORCE, NVML_BRAND_NVIDIA, NVML_BRAND_TESLA};
    use tf_fake_gpu::model::Brand;
    out(
        p,
        match dev(d)?.spec.brand {
            Brand::Nvidia => NVML_BRAND_NVIDIA,
            Brand::Tesla => NVML_BRAND_TESLA,
            Brand::GeForce => NVML_BRAND_GEFORCE,
        },
    )
}

/// `nvmlDeviceGetIndex`.
pub fn index(d: *mut c_void, p: *mut u32) -> NvmlResult {
    out(p, dev(d)?.index)
}

/// `nvmlDeviceGetMinorNumber`: `/dev/nvidia<index>`.
pub fn minor_number(d: *mut c_void, p: *mut u32) -> NvmlResult {
    out(p, dev(d)?.index)
}

/// `nvmlDeviceGetBoardId`: one board per device.
pub fn board_id(d: *mut c_void, p: *mut u32) -> NvmlResult {
    let h = dev(d)?;
    out(p, (h.pci.bus << 8) | h.pci.device)
}

/// `nvmlDeviceGetMultiGpuBoard`: no.
pub fn multi_gpu_board(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, 0)
}

fn pci_info_v2(h: &Handle) -> nvmlPciInfo_t {
    nvmlPciInfo_t {
        busIdLegacy: fill_chars(&h.pci.bus_id_legacy()),
        domain: h.pci.domain,
        bus: h.pci.bus,
        device: h.pci.device,
        pciDeviceId: ((h.spec.pci_device_id as u32) << 16) | NVIDIA_VENDOR_ID,
        pciSubSystemId: h.spec.pci_subsystem_id,
        busId: fill_chars(&h.pci.bus_id()),
    }
}

/// `nvmlDeviceGetPciInfo_v2`, `_v3`.
pub fn pci_info(d: *mut c_void, p: *mut c_void) -> NvmlResult {
    out(p as *mut nvmlPciInfo_t, pci_info_v2(dev(d)?))
}

/// `nvmlDeviceGetPciInfo` (the first version): only the fields common to the original and the
/// current `nvmlPciInfo_t` are written.
pub fn pci_info_v1(d: *mut c_void, p: *mut c_void) -> NvmlResult {
    let v = pci_info_v2(dev(d)?);
    out(
        p as *mut nvmlPciInfoLegacyPrefix,
        nvmlPciInfoLegacyPrefix {
            busIdLegacy: v.busIdLegacy,
            domain: v.domain,
            bus: v.bus,
            device: v.device,
            pciDeviceId: v.pciDeviceId,
            pciSubSystemId: v.pciSubSystemId,
        },
    )
}

/// The version field a versioned NVML struct starts with, if it is `expected`.
fn struct_version(p: *const u32, expected: u32) -> NvmlResult<u32> {
    let version = read(p)?;
    if version == expected {
        Ok(version)
    } else {
        Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
    }
}

/// `nvmlDeviceGetPciInfoExt` (versioned: `NVML_ERROR_ARGUMENT_VERSION_MISMATCH` for another
/// version).
pub fn pci_info_ext(d: *mut c_void, p: *mut c_void) -> NvmlResult {
    let h = dev(d)?;
    let p = p as *mut nvmlPciInfoExt_v1_t;
    let version = struct_version(p as *const u32, NVML_PCI_INFO_EXT_V1)?;
    let v = pci_info_v2(h);
    out(
        p,
        nvmlPciInfoExt_v1_t {
            version,
            domain: v.domain,
            bus: v.bus,
            device: v.device,
            pciDeviceId: v.pciDeviceId,
            pciSubSystemId: v.pciSubSystemId,
            // 3D controller.
            baseClass: 0x03,
            subClass: 0x02,
            busId: v.busId,
        },
    )
}

/// `nvmlDeviceGetMemoryInfo`: device-wide memory, every process included.
pub fn memory_info(d: *mut c_void, p: *mut c_void) -> NvmlResult {
    let m = dev(d)?.dev.memory();
    out(
        p as *mut nvmlMemory_t,
        nvmlMemory_t {
            total: m.total_bytes,
            free: m.free_bytes,
            used: m.used_bytes,
        },
    )
}

/// `nvmlDeviceGetMemoryInfo_v2` (versioned). The simulated GPU reserves nothing for itself.
pub fn memory_info_v2(d: *mut c_void, p: *mut c_void) -> NvmlResult {
    let h = dev(d)?;
    let p = p as *mut nvmlMemory_v2_t;
    let version = struct_version(p as *const u32, NVML_MEMORY_V2)?;
    let m = h.dev.memory();
    out(
        p,
        nvmlMemory_v2_t {
            version,
            total: m.total_bytes,
            reserved: 0,
            free: m.free_bytes,
            used: m.used_bytes,
        },
    )
}

/// `nvmlDeviceGetBAR1MemoryInfo`: a BAR1 aperture of the next power of two above the memory
/// (128 GiB on an 80 GB part, as on real ones), of which 1 MiB is in use.
pub fn bar1_memory_info(d: *mut c_void, p: *mut c_void) -> NvmlResult {
    let h = dev(d)?;
    let total = h
        .dev
        .profile()
        .memory_bytes
        .next_power_of_two()
        .max(256 << 20);
    let used = 1 << 20;
    out(
        p as *mut nvmlBAR1Memory_t,
        nvmlBAR1Memory_t {
            bar1Total: total,
            bar1Free: total - used,
            bar1Used: used,
        },
    )
}

/// `nvmlDeviceGetUtilizationRates`.
pub fn utilization_rates(d: *mut c_void, p: *mut c_void) -> NvmlResult {
    let h = dev(d)?;
    let (gpu, memory) = metrics::utilization_rates(h);
    out(
        p as *mut nvmlUtilization_t,
        nvmlUtilization_t { gpu, memory },
    )
}

/// `nvmlDeviceGetEncoderUtilization`, `nvmlDeviceGetDecoderUtilization`: the simulated GPU has
/// no video engines at work.
pub fn codec_utilization(d: *mut c_void, util: *mut u32, period_us: *mut u32) -> NvmlResult {
    dev(d)?;
    non_null([util as *const c_void, period_us as *const c_void])?;
    out(util, 0)?;
    out(period_us, 167_000)
}

/// Which process list a `nvmlDevice*RunningProcesses` call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessKind {
    /// Compute contexts: every live process using the device.
    Compute,
    /// Graphics contexts and MPS clients: the simulated GPU runs neither.
    None,
}

fn processes(h: &Handle, kind: ProcessKind) -> Vec<(u32, u64)> {
    match kind {
        ProcessKind::Compute => {
            let mut v: Vec<_> = h
                .dev
                .segment()
                .processes()
                .into_iter()
                .map(|p| (p.pid, p.mem_used))
                .collect();
            v.sort_unstable();
            v
        }
        ProcessKind::None => Vec::new(),
    }
}

/// `nvmlDevice*RunningProcesses` (first version: `nvmlProcessInfo_v1_t`).
pub fn running_processes_v1(
    d: *mut c_void,
    count: *mut u32,
    infos: *mut c_void,
    kind: ProcessKind,
) -> NvmlResult {
    let h = dev(d)?;
    let list: Vec<_> = processes(h, kind)
        .into_iter()
        .map(|(pid, mem)| nvmlProcessInfo_v1_t {
            pid,
            usedGpuMemory: mem,
        })
        .collect();
    write_list(count, infos as *mut nvmlProcessInfo_v1_t, &list)
}

/// `nvmlDevice*RunningProcesses_v2`, `_v3` (`nvmlProcessInfo_v2_t` = `nvmlProcessInfo_t`).
pub fn running_processes_v2(
    d: *mut c_void,
    count: *mut u32,
    infos: *mut c_void,
    kind: ProcessKind,
) -> NvmlResult {
    let h = dev(d)?;
    let list: Vec<_> = processes(h, kind)
        .into_iter()
        .map(|(pid, mem)| nvmlProcessInfo_v2_t {
            pid,
            usedGpuMemory: mem,
            gpuInstanceId: NVML_VALUE_NOT_AVAILABLE_U32,
            computeInstanceId: NVML_VALUE_NOT_AVAILABLE_U32,
        })
        .collect();
    write_list(count, infos as *mut nvmlProcessInfo_v2_t, &list)
}

/// `nvmlDeviceGetProcessUtilization`: the list protocol, and `NVML_ERROR_NOT_FOUND` when no
/// process ran kernels since `last_seen_us`.
pub fn process_utilization(
    d: *mut c_void,
    samples: *mut c_void,
    count: *mut u32,
    last_seen_us: u64,
) -> NvmlResult {
    let h = dev(d)?;
    read(count)?;
    let list = metrics::process_samples(h, last_seen_us);
    if list.is_empty() {
        out(count, 0)?;
        return Err(NVML_ERROR_NOT_FOUND);
    }
    write_list(count, samples as *mut nvmlProcessUtilizationSample_t, &list)
}

/// `nvmlDeviceGetTemperature` (the GPU sensor only).
pub fn temperature(d: *mut c_void, sensor: u32, p: *mut u32) -> NvmlResult {
    let h = dev(d)?;
    if sensor != NVML_TEMPERATURE_GPU {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    out(p, metrics::temperature_c(h))
}

/// `nvmlDeviceGetTemperatureThreshold`.
pub fn temperature_threshold(d: *mut c_void, kind: u32, p: *mut u32) -> NvmlResult {
    let h = dev(d)?;
    let t = h.spec.thresholds_c.get(kind as usize).copied().ok_or(
        if kind < NVML_TEMPERATURE_THRESHOLD_COUNT {
            NVML_ERROR_NOT_SUPPORTED
        } else {
            NVML_ERROR_INVALID_ARGUMENT
        },
    )?;
    out(p, t)
}

/// `nvmlDeviceGetPowerUsage`, milliwatts.
pub fn power_usage(d: *mut c_void, p: *mut u32) -> NvmlResult {
    out(p, metrics::power_mw(dev(d)?))
}

/// `nvmlDeviceGetEnforcedPowerLimit`, `nvmlDeviceGetPowerManagementLimit`,
/// `nvmlDeviceGetPowerManagementDefaultLimit`: the model's board power, milliwatts.
pub fn power_limit(d: *mut c_void, p: *mut u32) -> NvmlResult {
    out(p, dev(d)?.spec.tdp_w * 1000)
}

/// `nvmlDeviceGetPowerManagementLimitConstraints`, milliwatts.
pub fn power_limit_constraints(d: *mut c_void, min: *mut u32, max: *mut u32) -> NvmlResult {
    let h = dev(d)?;
    non_null([min as *const c_void, max as *const c_void])?;
    out(min, h.spec.min_limit_w * 1000)?;
    out(max, h.spec.tdp_w * 1000)
}

/// `nvmlDeviceGetPowerManagementMode`: enabled.
pub fn power_management_mode(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, NVML_FEATURE_ENABLED)
}

/// `nvmlDeviceGetTotalEnergyConsumption`, millijoules.
pub fn total_energy(d: *mut c_void, p: *mut u64) -> NvmlResult {
    out(p, metrics::energy_mj(dev(d)?))
}

/// `nvmlDeviceGetFanSpeed*`: passively cooled, like an SXM part.
pub fn fan_speed(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    Err(NVML_ERROR_NOT_SUPPORTED)
}

/// `nvmlDeviceGetNumFans`: none.
pub fn num_fans(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, 0)
}

fn max_clock(h: &Handle, kind: u32) -> NvmlResult<u32> {
    match kind {
        NVML_CLOCK_GRAPHICS | NVML_CLOCK_SM => Ok(h.spec.max_graphics_mhz),
        NVML_CLOCK_MEM => Ok(h.spec.mem_mhz),
        NVML_CLOCK_VIDEO => Ok(h.spec.max_video_mhz),
        _ => Err(NVML_ERROR_INVALID_ARGUMENT),
    }
}

fn current_clock(h: &Handle, kind: u32) -> NvmlResult<u32> {
    let max = max_clock(h, kind)?;
    if metrics::busy(h) || kind == NVML_CLOCK_MEM {
        return Ok(max);
    }
    Ok(match kind {
        NVML_CLOCK_VIDEO => max / 2,
        _ => h.spec.idle_graphics_mhz,
    })
}

/// `nvmlDeviceGetClockInfo`: boost clocks while kernels run, idle clocks otherwise.
pub fn clock_info(d: *mut c_void, kind: u32, p: *mut u32) -> NvmlResult {
    let h = dev(d)?;
    out(p, current_clock(h, kind)?)
}

/// `nvmlDeviceGetMaxClockInfo`, `nvmlDeviceGetApplicationsClock`,
/// `nvmlDeviceGetDefaultApplicationsClock`, `nvmlDeviceGetMaxCustomerBoostClock`.
pub fn max_clock_info(d: *mut c_void, kind: u32, p: *mut u32) -> NvmlResult {
    let h = dev(d)?;
    out(p, max_clock(h, kind)?)
}

/// `nvmlDeviceGetClock`.
pub fn clock(d: *mut c_void, kind: u32, id: u32, p: *mut u32) -> NvmlResult {
    let h = dev(d)?;
    let mhz = match id {
        NVML_CLOCK_ID_CURRENT => current_clock(h, kind)?,
        NVML_CLOCK_ID_APP_CLOCK_TARGET
        | NVML_CLOCK_ID_APP_CLOCK_DEFAULT
        | NVML_CLOCK_ID_CUSTOMER_BOOST_MAX => max_clock(h, kind)?,
        _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
    };
    out(p, mhz)
}

/// `nvmlDeviceGetCurrentClocksEventReasons` (and its old name `...ThrottleReasons`): idle or
/// nothing.
pub fn clocks_event_reasons(d: *mut c_void, p: *mut u64) -> NvmlResult {
    let h = dev(d)?;
    let reasons = if metrics::busy(h) {
        NVML_CLOCKS_EVENT_REASON_NONE
    } else {
        NVML_CLOCKS_EVENT_REASON_GPU_IDLE
    };
    out(p, reasons)
}

/// `nvmlDeviceGetPerformanceState`, `nvmlDeviceGetPowerState`: P0, as data-center parts report
/// with persistence mode on.
pub fn performance_state(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, NVML_PSTATE_0)
}

/// `nvmlDeviceGetPersistenceMode`: enabled.
pub fn persistence_mode(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, NVML_FEATURE_ENABLED)
}

/// `nvmlDeviceGetComputeMode`: default (shared).
pub fn compute_mode(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, NVML_COMPUTEMODE_DEFAULT)
}

/// `nvmlDeviceGetDisplayMode`, `nvmlDeviceGetDisplayActive`, `nvmlDeviceGetAccountingMode`:
/// disabled.
pub fn disabled(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, NVML_FEATURE_DISABLED)
}

/// `nvmlDeviceGetMigMode`: disabled, none pending.
pub fn mig_mode(d: *mut c_void, current: *mut u32, pending: *mut u32) -> NvmlResult {
    dev(d)?;
    non_null([current as *const c_void, pending as *const c_void])?;
    out(current, NVML_DEVICE_MIG_DISABLE)?;
    out(pending, NVML_DEVICE_MIG_DISABLE)
}

/// The GPU-instance profiles of the simulated GPU: the engine's partition templates (7 compute
/// and 8 memory slices, as on an A100/H100), by NVML profile id.
fn gpu_instance_profile(h: &Handle, profile: u32) -> NvmlResult<nvmlGpuInstanceProfileInfo_v2_t> {
    if profile >= NVML_GPU_INSTANCE_PROFILE_COUNT {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // Engine template order: 1g (1 memory slice), 1g (2), 2g, 3g, 4g, 7g.
    const IDS: [u32; 6] = [
        NVML_GPU_INSTANCE_PROFILE_1_SLICE,
        NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2,
        NVML_GPU_INSTANCE_PROFILE_2_SLICE,
        NVML_GPU_INSTANCE_PROFILE_3_SLICE,
        NVML_GPU_INSTANCE_PROFILE_4_SLICE,
        NVML_GPU_INSTANCE_PROFILE_7_SLICE,
    ];
    const SLICES: [u32; 6] = [1, 1, 2, 3, 4, 7];
    let pos = IDS
        .iter()
        .position(|&id| id == profile)
        .ok_or(NVML_ERROR_NOT_SUPPORTED)?;
    let templates = h.dev.partition_templates();
    let t = templates.get(pos).ok_or(NVML_ERROR_NOT_SUPPORTED)?;
    let slices = SLICES[pos];
    Ok(nvmlGpuInstanceProfileInfo_v2_t {
        version: NVML_GPU_INSTANCE_PROFILE_INFO_V2,
        id: profile,
        isP2pSupported: 0,
        sliceCount: slices,
        instanceCount: t.max_instances,
        multiprocessorCount: t.compute_units,
        copyEngineCount: slices,
        decoderCount: slices,
        encoderCount: 0,
        jpegCount: slices,
        ofaCount: (slices == 7) as u32,
        memorySizeMB: t.memory_bytes >> 20,
        name: fill_chars(&format!("MIG {}", t.name)),
    })
}

/// `nvmlDeviceGetGpuInstanceProfileInfo`: the profiles exist whether or not MIG mode is on (it
/// is always off on the simulated GPU).
pub fn gpu_instance_profile_info(d: *mut c_void, profile: u32, p: *mut c_void) -> NvmlResult {
    let i = gpu_instance_profile(dev(d)?, profile)?;
    out(
        p as *mut nvmlGpuInstanceProfileInfo_t,
        nvmlGpuInstanceProfileInfo_t {
            id: i.id,
            isP2pSupported: i.isP2pSupported,
            sliceCount: i.sliceCount,
            instanceCount: i.instanceCount,
            multiprocessorCount: i.multiprocessorCount,
            copyEngineCount: i.copyEngineCount,
            decoderCount: i.decoderCount,
            encoderCount: i.encoderCount,
            jpegCount: i.jpegCount,
            ofaCount: i.ofaCount,
            memorySizeMB: i.memorySizeMB,
        },
    )
}

/// `nvmlDeviceGetGpuInstanceProfileInfoV` (versioned: v2 or v3, with the profile's name).
pub fn gpu_instance_profile_info_v(d: *mut c_void, profile: u32, p: *mut c_void) -> NvmlResult {
    let h = dev(d)?;
    let version = read(p as *const u32)?;
    let i = gpu_instance_profile(h, profile)?;
    match version {
        NVML_GPU_INSTANCE_PROFILE_INFO_V2 => out(p as *mut nvmlGpuInstanceProfileInfo_v2_t, i),
        NVML_GPU_INSTANCE_PROFILE_INFO_V3 => out(
            p as *mut nvmlGpuInstanceProfileInfo_v3_t,
            nvmlGpuInstanceProfileInfo_v3_t {
                version,
                id: i.id,
                sliceCount: i.sliceCount,
                instanceCount: i.instanceCount,
                multiprocessorCount: i.multiprocessorCount,
                copyEngineCount: i.copyEngineCount,
                decoderCount: i.decoderCount,
                encoderCount: i.encoderCount,
                jpegCount: i.jpegCount,
                ofaCount: i.ofaCount,
                memorySizeMB: i.memorySizeMB,
                name: i.name,
                capabilities: 0,
            },
        ),
        _ => Err(NVML_ERROR_ARGUMENT_VERSION_MISMATCH),
    }
}

/// `nvmlDeviceGetVirtualizationMode`: bare metal.
pub fn virtualization_mode(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, NVML_GPU_VIRTUALIZATION_MODE_NONE)
}

/// `nvmlDeviceIsMigDeviceHandle`: our handles are whole GPUs.
pub fn is_mig_device_handle(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, 0)
}

/// `nvmlDeviceGetCudaComputeCapability`.
pub fn cuda_compute_capability(d: *mut c_void, major: *mut i32, minor: *mut i32) -> NvmlResult {
    let h = dev(d)?;
    non_null([major as *const c_void, minor as *const c_void])?;
    let (ma, mi) = h.dev.profile().compute_capability;
    out(major, ma as i32)?;
    out(minor, mi as i32)
}

/// `nvmlDeviceGetArchitecture`.
pub fn architecture_of(d: *mut c_void, p: *mut u32) -> NvmlResult {
    out(p, architecture(dev(d)?.dev.profile().compute_capability))
}

/// `nvmlDeviceGetNumGpuCores`: SMs × FP32 lanes per SM.
pub fn num_gpu_cores(d: *mut c_void, p: *mut u32) -> NvmlResult {
    let profile = dev(d)?.dev.profile();
    out(p, profile.sms * cores_per_sm(profile.compute_capability))
}

/// `nvmlDeviceGetEccMode`: enabled, enabled.
pub fn ecc_mode(d: *mut c_void, current: *mut u32, pending: *mut u32) -> NvmlResult {
    dev(d)?;
    non_null([current as *const c_void, pending as *const c_void])?;
    out(current, NVML_FEATURE_ENABLED)?;
    out(pending, NVML_FEATURE_ENABLED)
}

/// `nvmlDeviceGetTotalEccErrors`, `nvmlDeviceGetMemoryErrorCounter`: none, ever.
pub fn ecc_errors(d: *mut c_void, error_type: u32, counter: u32, p: *mut u64) -> NvmlResult {
    dev(d)?;
    if error_type >= NVML_MEMORY_ERROR_TYPE_COUNT || counter >= NVML_ECC_COUNTER_TYPE_COUNT {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    out(p, 0)
}

/// `nvmlDeviceGetRemappedRows`: no rows remapped, none pending, no failure.
pub fn remapped_rows(
    d: *mut c_void,
    corr: *mut u32,
    unc: *mut u32,
    pending: *mut u32,
    failed: *mut u32,
) -> NvmlResult {
    dev(d)?;
    let ptrs = [corr, unc, pending, failed];
    non_null(ptrs.map(|p| p as *const c_void))?;
    ptrs.into_iter().try_for_each(|p| out(p, 0))
}

/// `nvmlDeviceGetCurrPcieLinkGeneration`, `nvmlDeviceGetMaxPcieLinkGeneration`,
/// `nvmlDeviceGetGpuMaxPcieLinkGeneration`.
pub fn pcie_link_generation(d: *mut c_void, p: *mut u32) -> NvmlResult {
    out(p, dev(d)?.spec.pcie_gen)
}

/// `nvmlDeviceGetCurrPcieLinkWidth`, `nvmlDeviceGetMaxPcieLinkWidth`.
pub fn pcie_link_width(d: *mut c_void, p: *mut u32) -> NvmlResult {
    out(p, dev(d)?.spec.pcie_width)
}

/// `nvmlDeviceGetPcieThroughput`: no PCIe traffic is modeled.
pub fn pcie_throughput(d: *mut c_void, counter: u32, p: *mut u32) -> NvmlResult {
    dev(d)?;
    if counter >= NVML_PCIE_UTIL_COUNT {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    out(p, 0)
}

/// `nvmlDeviceGetMemoryBusWidth`, bits.
pub fn memory_bus_width(d: *mut c_void, p: *mut u32) -> NvmlResult {
    out(p, dev(d)?.spec.memory_bus_width)
}

/// `nvmlDeviceGetTopologyCommonAncestor`: the same device is internal; devices on one NUMA node
/// share a host bridge's node; others meet at the system level.
pub fn topology_common_ancestor(d1: *mut c_void, d2: *mut c_void, p: *mut u32) -> NvmlResult {
    let (a, b) = (dev(d1)?, dev(d2)?);
    let level = if a.index == b.index {
        NVML_TOPOLOGY_INTERNAL
    } else if a.dev.profile().numa_node == b.dev.profile().numa_node {
        NVML_TOPOLOGY_NODE
    } else {
        NVML_TOPOLOGY_SYSTEM
    };
    out(p, level)
}

/// `nvmlDeviceOnSameBoard`: only a device with itself.
pub fn on_same_board(d1: *mut c_void, d2: *mut c_void, p: *mut i32) -> NvmlResult {
    let (a, b) = (dev(d1)?, dev(d2)?);
    out(p, (a.index == b.index) as i32)
}

fn nvlink(h: &Handle, link: u32) -> NvmlResult {
    if !h.dev.profile().nvlink {
        return Err(NVML_ERROR_NOT_SUPPORTED);
    }
    let links = if h.spec.nvlink_links == 0 {
        NVML_NVLINK_MAX_LINKS
    } else {
        h.spec.nvlink_links
    };
    if link >= links {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    Ok(())
}

/// `nvmlDeviceGetNvLinkState`: every link of the model is active on a device whose profile has
/// NVLink; `NVML_ERROR_NOT_SUPPORTED` on one without.
pub fn nvlink_state(d: *mut c_void, link: u32, p: *mut u32) -> NvmlResult {
    let h = dev(d)?;
    nvlink(h, link)?;
    out(p, NVML_FEATURE_ENABLED)
}

/// `nvmlDeviceGetNvLinkVersion`.
pub fn nvlink_version(d: *mut c_void, link: u32, p: *mut u32) -> NvmlResult {
    let h = dev(d)?;
    nvlink(h, link)?;
    out(p, h.spec.nvlink_version.max(1))
}

/// `nvmlDeviceGetP2PStatus`: over NVLink between devices whose profiles both have NVLink; reads,
/// writes and atomics whenever there is NVLink or the devices share a NUMA node (PCIe P2P below
/// one host bridge); property queries always.
pub fn p2p_status(d1: *mut c_void, d2: *mut c_void, index: u32, p: *mut u32) -> NvmlResult {
    let (a, b) = (dev(d1)?, dev(d2)?);
    let (pa, pb) = (a.dev.profile(), b.dev.profile());
    let nvlink = pa.nvlink && pb.nvlink;
    let status = match index {
        NVML_P2P_CAPS_INDEX_NVLINK if nvlink => NVML_P2P_STATUS_OK,
        NVML_P2P_CAPS_INDEX_NVLINK => NVML_P2P_STATUS_NOT_SUPPORTED,
        NVML_P2P_CAPS_INDEX_READ | NVML_P2P_CAPS_INDEX_WRITE | NVML_P2P_CAPS_INDEX_ATOMICS => {
            if nvlink || pa.numa_node == pb.numa_node {
                NVML_P2P_STATUS_OK
            } else {
                NVML_P2P_STATUS_IOH_TOPOLOGY_NOT_SUPPORTED
            }
        }
        NVML_P2P_CAPS_INDEX_PROP => NVML_P2P_STATUS_OK,
        _ => return Err(NVML_ERROR_INVALID_ARGUMENT),
    };
    out(p, status)
}

/// `nvmlDeviceGetNumaNodeId`.
pub fn numa_node(d: *mut c_void, p: *mut u32) -> NvmlResult {
    out(p, dev(d)?.dev.profile().numa_node)
}

/// `nvmlDeviceGetMaxMigDeviceCount`: MIG is off, so none.
pub fn max_mig_device_count(d: *mut c_void, p: *mut u32) -> NvmlResult {
    dev(d)?;
    out(p, 0)
}
