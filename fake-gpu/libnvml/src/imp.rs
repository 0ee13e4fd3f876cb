//! The NVML functions the simulated GPU implements: the `impl Nvml for FakeNvml` block, written
//! through `implement!` so that the list of names ([`IMPLEMENTED`]) comes from the same source.
//! Each body is one call into [`crate::system`] or [`crate::device`]; the compiler checks every
//! signature against the header's (through the trait).
#![allow(non_snake_case)]

use std::ffi::{c_char, c_void};

use crate::abi::{FakeNvml, Nvml};
use crate::device::{self as d, ProcessKind};
use crate::ffi::ret;
use crate::system as s;

macro_rules! implement {
    ($(unsafe fn $name:ident($($arg:ident: $ty:ty),* $(,)?) -> $ret:ty $body:block)*) => {
        impl Nvml for FakeNvml {
            $( unsafe fn $name($($arg: $ty),*) -> $ret $body )*
        }

        /// The NVML functions the simulated GPU implements; every other function of `nvml.h`
        /// returns `NVML_ERROR_NOT_SUPPORTED`.
        pub const IMPLEMENTED: &[&str] = &[$(stringify!($name)),*];
    };
}

implement! {
    // Library.
    unsafe fn nvmlInit() -> u32 { ret(s::init(0)) }
    unsafe fn nvmlInit_v2() -> u32 { ret(s::init(0)) }
    unsafe fn nvmlInitWithFlags(flags: u32) -> u32 { ret(s::init(flags)) }
    unsafe fn nvmlShutdown() -> u32 { ret(crate::state::shutdown()) }
    unsafe fn nvmlErrorString(result: u32) -> *const c_char { s::error_string(result) }

    // System.
    unsafe fn nvmlSystemGetDriverVersion(v: *mut c_char, len: u32) -> u32 { ret(s::driver_version(v, len)) }
    unsafe fn nvmlSystemGetNVMLVersion(v: *mut c_char, len: u32) -> u32 { ret(s::nvml_version(v, len)) }
    unsafe fn nvmlSystemGetCudaDriverVersion(v: *mut i32) -> u32 { ret(s::cuda_driver_version(v)) }
    unsafe fn nvmlSystemGetCudaDriverVersion_v2(v: *mut i32) -> u32 { ret(s::cuda_driver_version(v)) }
    unsafe fn nvmlSystemGetProcessName(pid: u32, name: *mut c_char, len: u32) -> u32 { ret(s::process_name(pid, name, len)) }

    // Enumeration.
    unsafe fn nvmlDeviceGetCount(n: *mut u32) -> u32 { ret(s::device_count(n)) }
    unsafe fn nvmlDeviceGetCount_v2(n: *mut u32) -> u32 { ret(s::device_count(n)) }
    unsafe fn nvmlDeviceGetHandleByIndex(i: u32, h: *mut *mut c_void) -> u32 { ret(s::handle_by_index(i, h)) }
    unsafe fn nvmlDeviceGetHandleByIndex_v2(i: u32, h: *mut *mut c_void) -> u32 { ret(s::handle_by_index(i, h)) }
    unsafe fn nvmlDeviceGetHandleByUUID(uuid: *const c_char, h: *mut *mut c_void) -> u32 { ret(s::handle_by_uuid(uuid, h)) }
    unsafe fn nvmlDeviceGetHandleByPciBusId(id: *const c_char, h: *mut *mut c_void) -> u32 { ret(s::handle_by_pci_bus_id(id, h)) }
    unsafe fn nvmlDeviceGetHandleByPciBusId_v2(id: *const c_char, h: *mut *mut c_void) -> u32 { ret(s::handle_by_pci_bus_id(id, h)) }
    unsafe fn nvmlDeviceGetHandleBySerial(serial: *const c_char, h: *mut *mut c_void) -> u32 { ret(s::handle_by_serial(serial, h)) }

    // Identity.
    unsafe fn nvmlDeviceGetIndex(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::index(dev, p)) }
    unsafe fn nvmlDeviceGetName(dev: *mut c_void, buf: *mut c_char, len: u32) -> u32 { ret(d::name(dev, buf, len)) }
    unsafe fn nvmlDeviceGetUUID(dev: *mut c_void, buf: *mut c_char, len: u32) -> u32 { ret(d::uuid(dev, buf, len)) }
    unsafe fn nvmlDeviceGetSerial(dev: *mut c_void, buf: *mut c_char, len: u32) -> u32 { ret(d::serial(dev, buf, len)) }
    unsafe fn nvmlDeviceGetVbiosVersion(dev: *mut c_void, buf: *mut c_char, len: u32) -> u32 { ret(d::vbios_version(dev, buf, len)) }
    unsafe fn nvmlDeviceGetBrand(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::brand(dev, p)) }
    unsafe fn nvmlDeviceGetMinorNumber(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::minor_number(dev, p)) }
    unsafe fn nvmlDeviceGetBoardId(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::board_id(dev, p)) }
    unsafe fn nvmlDeviceGetMultiGpuBoard(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::multi_gpu_board(dev, p)) }
    unsafe fn nvmlDeviceGetArchitecture(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::architecture_of(dev, p)) }
    unsafe fn nvmlDeviceGetCudaComputeCapability(dev: *mut c_void, major: *mut i32, minor: *mut i32) -> u32 { ret(d::cuda_compute_capability(dev, major, minor)) }
    unsafe fn nvmlDeviceGetNumGpuCores(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::num_gpu_cores(dev, p)) }
    unsafe fn nvmlDeviceGetNumaNodeId(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::numa_node(dev, p)) }

    // PCI and topology.
    unsafe fn nvmlDeviceGetPciInfo(dev: *mut c_void, p: *mut c_void) -> u32 { ret(d::pci_info_v1(dev, p)) }
    unsafe fn nvmlDeviceGetPciInfo_v2(dev: *mut c_void, p: *mut c_void) -> u32 { ret(d::pci_info(dev, p)) }
    unsafe fn nvmlDeviceGetPciInfo_v3(dev: *mut c_void, p: *mut c_void) -> u32 { ret(d::pci_info(dev, p)) }
    unsafe fn nvmlDeviceGetPciInfoExt(dev: *mut c_void, p: *mut c_void) -> u32 { ret(d::pci_info_ext(dev, p)) }
    unsafe fn nvmlDeviceGetCurrPcieLinkGeneration(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::pcie_link_generation(dev, p)) }
    unsafe fn nvmlDeviceGetMaxPcieLinkGeneration(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::pcie_link_generation(dev, p)) }
    unsafe fn nvmlDeviceGetGpuMaxPcieLinkGeneration(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::pcie_link_generation(dev, p)) }
    unsafe fn nvmlDeviceGetCurrPcieLinkWidth(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::pcie_link_width(dev, p)) }
    unsafe fn nvmlDeviceGetMaxPcieLinkWidth(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::pcie_link_width(dev, p)) }
    unsafe fn nvmlDeviceGetPcieThroughput(dev: *mut c_void, counter: u32, p: *mut u32) -> u32 { ret(d::pcie_throughput(dev, counter, p)) }
    unsafe fn nvmlDeviceGetTopologyCommonAncestor(a: *mut c_void, b: *mut c_void, p: *mut u32) -> u32 { ret(d::topology_common_ancestor(a, b, p)) }
    unsafe fn nvmlDeviceOnSameBoard(a: *mut c_void, b: *mut c_void, p: *mut i32) -> u32 { ret(d::on_same_board(a, b, p)) }
    unsafe fn nvmlDeviceGetP2PStatus(a: *mut c_void, b: *mut c_void, index: u32, p: *mut u32) -> u32 { ret(d::p2p_status(a, b, index, p)) }
    unsafe fn nvmlDeviceGetNvLinkState(dev: *mut c_void, link: u32, p: *mut u32) -> u32 { ret(d::nvlink_state(dev, link, p)) }
    unsafe fn nvmlDeviceGetNvLinkVersion(dev: *mut c_void, link: u32, p: *mut u32) -> u32 { ret(d::nvlink_version(dev, link, p)) }

    // Memory.
    unsafe fn nvmlDeviceGetMemoryInfo(dev: *mut c_void, p: *mut c_void) -> u32 { ret(d::memory_info(dev, p)) }
    unsafe fn nvmlDeviceGetMemoryInfo_v2(dev: *mut c_void, p: *mut c_void) -> u32 { ret(d::memory_info_v2(dev, p)) }
    unsafe fn nvmlDeviceGetBAR1MemoryInfo(dev: *mut c_void, p: *mut c_void) -> u32 { ret(d::bar1_memory_info(dev, p)) }
    unsafe fn nvmlDeviceGetMemoryBusWidth(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::memory_bus_width(dev, p)) }
    unsafe fn nvmlDeviceGetEccMode(dev: *mut c_void, cur: *mut u32, pending: *mut u32) -> u32 { ret(d::ecc_mode(dev, cur, pending)) }
    unsafe fn nvmlDeviceGetTotalEccErrors(dev: *mut c_void, kind: u32, counter: u32, p: *mut u64) -> u32 { ret(d::ecc_errors(dev, kind, counter, p)) }
    unsafe fn nvmlDeviceGetMemoryErrorCounter(dev: *mut c_void, kind: u32, counter: u32, location: u32, p: *mut u64) -> u32 {
        let _ = location;
        ret(d::ecc_errors(dev, kind, counter, p))
    }
    unsafe fn nvmlDeviceGetRemappedRows(dev: *mut c_void, corr: *mut u32, unc: *mut u32, pending: *mut u32, failed: *mut u32) -> u32 { ret(d::remapped_rows(dev, corr, unc, pending, failed)) }

    // Utilization and processes.
    unsafe fn nvmlDeviceGetUtilizationRates(dev: *mut c_void, p: *mut c_void) -> u32 { ret(d::utilization_rates(dev, p)) }
    unsafe fn nvmlDeviceGetEncoderUtilization(dev: *mut c_void, u: *mut u32, period: *mut u32) -> u32 { ret(d::codec_utilization(dev, u, period)) }
    unsafe fn nvmlDeviceGetDecoderUtilization(dev: *mut c_void, u: *mut u32, period: *mut u32) -> u32 { ret(d::codec_utilization(dev, u, period)) }
    unsafe fn nvmlDeviceGetProcessUtilization(dev: *mut c_void, samples: *mut c_void, count: *mut u32, last_seen: u64) -> u32 { ret(d::process_utilization(dev, samples, count, last_seen)) }
    unsafe fn nvmlDeviceGetComputeRunningProcesses(dev: *mut c_void, n: *mut u32, infos: *mut c_void) -> u32 { ret(d::running_processes_v1(dev, n, infos, ProcessKind::Compute)) }
    unsafe fn nvmlDeviceGetComputeRunningProcesses_v2(dev: *mut c_void, n: *mut u32, infos: *mut c_void) -> u32 { ret(d::running_processes_v2(dev, n, infos, ProcessKind::Compute)) }
    unsafe fn nvmlDeviceGetComputeRunningProcesses_v3(dev: *mut c_void, n: *mut u32, infos: *mut c_void) -> u32 { ret(d::running_processes_v2(dev, n, infos, ProcessKind::Compute)) }
    unsafe fn nvmlDeviceGetGraphicsRunningProcesses(dev: *mut c_void, n: *mut u32, infos: *mut c_void) -> u32 { ret(d::running_processes_v1(dev, n, infos, ProcessKind::None)) }
    unsafe fn nvmlDeviceGetGraphicsRunningProcesses_v2(dev: *mut c_void, n: *mut u32, infos: *mut c_void) -> u32 { ret(d::running_processes_v2(dev, n, infos, ProcessKind::None)) }
    unsafe fn nvmlDeviceGetGraphicsRunningProcesses_v3(dev: *mut c_void, n: *mut u32, infos: *mut c_void) -> u32 { ret(d::running_processes_v2(dev, n, infos, ProcessKind::None)) }
    unsafe fn nvmlDeviceGetMPSComputeRunningProcesses(dev: *mut c_void, n: *mut u32, infos: *mut c_void) -> u32 { ret(d::running_processes_v1(dev, n, infos, ProcessKind::None)) }
    unsafe fn nvmlDeviceGetMPSComputeRunningProcesses_v2(dev: *mut c_void, n: *mut u32, infos: *mut c_void) -> u32 { ret(d::running_processes_v2(dev, n, infos, ProcessKind::None)) }
    unsafe fn nvmlDeviceGetMPSComputeRunningProcesses_v3(dev: *mut c_void, n: *mut u32, infos: *mut c_void) -> u32 { ret(d::running_processes_v2(dev, n, infos, ProcessKind::None)) }

    // Thermals, power, clocks.
    unsafe fn nvmlDeviceGetTemperature(dev: *mut c_void, sensor: u32, p: *mut u32) -> u32 { ret(d::temperature(dev, sensor, p)) }
    unsafe fn nvmlDeviceGetTemperatureThreshold(dev: *mut c_void, kind: u32, p: *mut u32) -> u32 { ret(d::temperature_threshold(dev, kind, p)) }
    unsafe fn nvmlDeviceGetFanSpeed(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::fan_speed(dev, p)) }
    unsafe fn nvmlDeviceGetFanSpeed_v2(dev: *mut c_void, fan: u32, p: *mut u32) -> u32 {
        let _ = fan;
        ret(d::fan_speed(dev, p))
    }
    unsafe fn nvmlDeviceGetNumFans(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::num_fans(dev, p)) }
    unsafe fn nvmlDeviceGetPowerUsage(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::power_usage(dev, p)) }
    unsafe fn nvmlDeviceGetTotalEnergyConsumption(dev: *mut c_void, p: *mut u64) -> u32 { ret(d::total_energy(dev, p)) }
    unsafe fn nvmlDeviceGetEnforcedPowerLimit(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::power_limit(dev, p)) }
    unsafe fn nvmlDeviceGetPowerManagementLimit(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::power_limit(dev, p)) }
    unsafe fn nvmlDeviceGetPowerManagementDefaultLimit(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::power_limit(dev, p)) }
    unsafe fn nvmlDeviceGetPowerManagementLimitConstraints(dev: *mut c_void, min: *mut u32, max: *mut u32) -> u32 { ret(d::power_limit_constraints(dev, min, max)) }
    unsafe fn nvmlDeviceGetPowerManagementMode(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::power_management_mode(dev, p)) }
    unsafe fn nvmlDeviceGetPerformanceState(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::performance_state(dev, p)) }
    unsafe fn nvmlDeviceGetPowerState(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::performance_state(dev, p)) }
    unsafe fn nvmlDeviceGetClockInfo(dev: *mut c_void, kind: u32, p: *mut u32) -> u32 { ret(d::clock_info(dev, kind, p)) }
    unsafe fn nvmlDeviceGetMaxClockInfo(dev: *mut c_void, kind: u32, p: *mut u32) -> u32 { ret(d::max_clock_info(dev, kind, p)) }
    unsafe fn nvmlDeviceGetApplicationsClock(dev: *mut c_void, kind: u32, p: *mut u32) -> u32 { ret(d::max_clock_info(dev, kind, p)) }
    unsafe fn nvmlDeviceGetDefaultApplicationsClock(dev: *mut c_void, kind: u32, p: *mut u32) -> u32 { ret(d::max_clock_info(dev, kind, p)) }
    unsafe fn nvmlDeviceGetMaxCustomerBoostClock(dev: *mut c_void, kind: u32, p: *mut u32) -> u32 { ret(d::max_clock_info(dev, kind, p)) }
    unsafe fn nvmlDeviceGetClock(dev: *mut c_void, kind: u32, id: u32, p: *mut u32) -> u32 { ret(d::clock(dev, kind, id, p)) }
    unsafe fn nvmlDeviceGetCurrentClocksEventReasons(dev: *mut c_void, p: *mut u64) -> u32 { ret(d::clocks_event_reasons(dev, p)) }
    unsafe fn nvmlDeviceGetCurrentClocksThrottleReasons(dev: *mut c_void, p: *mut u64) -> u32 { ret(d::clocks_event_reasons(dev, p)) }

    // Modes.
    unsafe fn nvmlDeviceGetPersistenceMode(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::persistence_mode(dev, p)) }
    unsafe fn nvmlDeviceGetComputeMode(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::compute_mode(dev, p)) }
    unsafe fn nvmlDeviceGetDisplayMode(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::disabled(dev, p)) }
    unsafe fn nvmlDeviceGetDisplayActive(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::disabled(dev, p)) }
    unsafe fn nvmlDeviceGetAccountingMode(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::disabled(dev, p)) }
    unsafe fn nvmlDeviceGetMigMode(dev: *mut c_void, cur: *mut u32, pending: *mut u32) -> u32 { ret(d::mig_mode(dev, cur, pending)) }
    unsafe fn nvmlDeviceGetVirtualizationMode(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::virtualization_mode(dev, p)) }
    unsafe fn nvmlDeviceIsMigDeviceHandle(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::is_mig_device_handle(dev, p)) }
    unsafe fn nvmlDeviceGetGpuInstanceProfileInfo(dev: *mut c_void, profile: u32, p: *mut c_void) -> u32 { ret(d::gpu_instance_profile_info(dev, profile, p)) }
    unsafe fn nvmlDeviceGetGpuInstanceProfileInfoV(dev: *mut c_void, profile: u32, p: *mut c_void) -> u32 { ret(d::gpu_instance_profile_info_v(dev, profile, p)) }
    unsafe fn nvmlDeviceGetMaxMigDeviceCount(dev: *mut c_void, p: *mut u32) -> u32 { ret(d::max_mig_device_count(dev, p)) }
}
