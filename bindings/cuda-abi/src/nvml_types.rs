//! The structs NVML fills, with the exact layout of NVIDIA's `nvml.h` (checked by
//! `tests/layout.rs`, which compiles C against the real header), and the header's `#define`
//! constants that cross the boundary (enum constants come from [`crate::nvml`]).
#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::c_char;

/// `NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE`.
pub const NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE: usize = 32;
/// `NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE`.
pub const NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE: usize = 16;
/// `NVML_NVLINK_MAX_LINKS`.
pub const NVML_NVLINK_MAX_LINKS: u32 = 18;
/// `NVML_DEVICE_MIG_DISABLE`.
pub const NVML_DEVICE_MIG_DISABLE: u32 = 0;
/// `NVML_DEVICE_ARCH_*`.
pub const NVML_DEVICE_ARCH_KEPLER: u32 = 2;
pub const NVML_DEVICE_ARCH_MAXWELL: u32 = 3;
pub const NVML_DEVICE_ARCH_PASCAL: u32 = 4;
pub const NVML_DEVICE_ARCH_VOLTA: u32 = 5;
pub const NVML_DEVICE_ARCH_TURING: u32 = 6;
pub const NVML_DEVICE_ARCH_AMPERE: u32 = 7;
pub const NVML_DEVICE_ARCH_ADA: u32 = 8;
pub const NVML_DEVICE_ARCH_HOPPER: u32 = 9;
pub const NVML_DEVICE_ARCH_BLACKWELL: u32 = 10;
pub const NVML_DEVICE_ARCH_UNKNOWN: u32 = 0xffff_ffff;
/// `NVML_INIT_FLAG_NO_GPUS`, `NVML_INIT_FLAG_NO_ATTACH`.
pub const NVML_INIT_FLAG_NO_GPUS: u32 = 1;
pub const NVML_INIT_FLAG_NO_ATTACH: u32 = 2;
/// `NVML_VALUE_NOT_AVAILABLE` as an `unsigned int` (MIG instance ids when MIG is off).
pub const NVML_VALUE_NOT_AVAILABLE_U32: u32 = 0xffff_ffff;
/// `nvmlClocksEventReasonGpuIdle`.
pub const NVML_CLOCKS_EVENT_REASON_GPU_IDLE: u64 = 0x1;
/// `nvmlClocksEventReasonNone`.
pub const NVML_CLOCKS_EVENT_REASON_NONE: u64 = 0x0;

/// `NVML_DEVICE_NAME_V2_BUFFER_SIZE`.
pub const NVML_DEVICE_NAME_V2_BUFFER_SIZE: usize = 96;
/// `NVML_GPU_INSTANCE_PROFILE_*` (the ones the simulated GPU offers) and `_COUNT`.
pub const NVML_GPU_INSTANCE_PROFILE_1_SLICE: u32 = 0x0;
pub const NVML_GPU_INSTANCE_PROFILE_2_SLICE: u32 = 0x1;
pub const NVML_GPU_INSTANCE_PROFILE_3_SLICE: u32 = 0x2;
pub const NVML_GPU_INSTANCE_PROFILE_4_SLICE: u32 = 0x3;
pub const NVML_GPU_INSTANCE_PROFILE_7_SLICE: u32 = 0x4;
pub const NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2: u32 = 0x9;
pub const NVML_GPU_INSTANCE_PROFILE_COUNT: u32 = 0x11;

/// `NVML_STRUCT_VERSION(data, ver)`: the struct's size with the version in the top byte.
pub const fn struct_version(size: usize, ver: u32) -> u32 {
    size as u32 | (ver << 24)
}

/// `nvmlMemory_v2` (the version `nvmlDeviceGetMemoryInfo_v2` expects).
pub const NVML_MEMORY_V2: u32 = struct_version(std::mem::size_of::<nvmlMemory_v2_t>(), 2);
/// `nvmlGpuInstanceProfileInfo_v2`.
pub const NVML_GPU_INSTANCE_PROFILE_INFO_V2: u32 =
    struct_version(std::mem::size_of::<nvmlGpuInstanceProfileInfo_v2_t>(), 2);
/// `nvmlGpuInstanceProfileInfo_v3`.
pub const NVML_GPU_INSTANCE_PROFILE_INFO_V3: u32 =
    struct_version(std::mem::size_of::<nvmlGpuInstanceProfileInfo_v3_t>(), 3);
/// `nvmlPciInfoExt_v1`.
pub const NVML_PCI_INFO_EXT_V1: u32 = struct_version(std::mem::size_of::<nvmlPciInfoExt_v1_t>(), 1);

/// `nvmlMemory_t` (`nvmlDeviceGetMemoryInfo`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlMemory_t {
    pub total: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlMemory_v2_t` (`nvmlDeviceGetMemoryInfo_v2`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlMemory_v2_t {
    pub version: u32,
    pub total: u64,
    pub reserved: u64,
    pub free: u64,
    pub used: u64,
}

/// `nvmlUtilization_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlUtilization_t {
    pub gpu: u32,
    pub memory: u32,
}

/// `nvmlPciInfo_t` (`nvmlDeviceGetPciInfo_v2`, `_v3`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct nvmlPciInfo_t {
    pub busIdLegacy: [c_char; NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE],
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
    pub pciDeviceId: u32,
    pub pciSubSystemId: u32,
    pub busId: [c_char; NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE],
}

/// The part of `nvmlPciInfo_t` that the first `nvmlDeviceGetPciInfo` fills: it is common to the
/// current struct and to the original one (`busId[16]`, the same five words, then reserved
/// words), so writing it is safe whichever a caller passes.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct nvmlPciInfoLegacyPrefix {
    pub busIdLegacy: [c_char; NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE],
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
    pub pciDeviceId: u32,
    pub pciSubSystemId: u32,
}

/// `nvmlPciInfoExt_v1_t` (`nvmlDeviceGetPciInfoExt`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct nvmlPciInfoExt_v1_t {
    pub version: u32,
    pub domain: u32,
    pub bus: u32,
    pub device: u32,
    pub pciDeviceId: u32,
    pub pciSubSystemId: u32,
    pub baseClass: u32,
    pub subClass: u32,
    pub busId: [c_char; NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE],
}

/// `nvmlProcessInfo_v1_t` (the first `nvmlDevice*RunningProcesses`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlProcessInfo_v1_t {
    pub pid: u32,
    pub usedGpuMemory: u64,
}

/// `nvmlProcessInfo_v2_t`, also `nvmlProcessInfo_t` (`nvmlDevice*RunningProcesses_v2`, `_v3`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlProcessInfo_v2_t {
    pub pid: u32,
    pub usedGpuMemory: u64,
    pub gpuInstanceId: u32,
    pub computeInstanceId: u32,
}

/// `nvmlProcessInfo_t`: the header makes it the same struct as `nvmlProcessInfo_v2_t`.
pub type nvmlProcessInfo_t = nvmlProcessInfo_v2_t;

/// `nvmlBAR1Memory_t`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlBAR1Memory_t {
    pub bar1Total: u64,
    pub bar1Free: u64,
    pub bar1Used: u64,
}

/// `nvmlProcessUtilizationSample_t` (`nvmlDeviceGetProcessUtilization`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlProcessUtilizationSample_t {
    pub pid: u32,
    pub timeStamp: u64,
    pub smUtil: u32,
    pub memUtil: u32,
    pub encUtil: u32,
    pub decUtil: u32,
}

/// `nvmlGpuInstanceProfileInfo_t` (`nvmlDeviceGetGpuInstanceProfileInfo`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct nvmlGpuInstanceProfileInfo_t {
    pub id: u32,
    pub isP2pSupported: u32,
    pub sliceCount: u32,
    pub instanceCount: u32,
    pub multiprocessorCount: u32,
    pub copyEngineCount: u32,
    pub decoderCount: u32,
    pub encoderCount: u32,
    pub jpegCount: u32,
    pub ofaCount: u32,
    pub memorySizeMB: u64,
}

/// `nvmlGpuInstanceProfileInfo_v2_t` (`nvmlDeviceGetGpuInstanceProfileInfoV`, version 2).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct nvmlGpuInstanceProfileInfo_v2_t {
    pub version: u32,
    pub id: u32,
    pub isP2pSupported: u32,
    pub sliceCount: u32,
    pub instanceCount: u32,
    pub multiprocessorCount: u32,
    pub copyEngineCount: u32,
    pub decoderCount: u32,
    pub encoderCount: u32,
    pub jpegCount: u32,
    pub ofaCount: u32,
    pub memorySizeMB: u64,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
}

/// `nvmlGpuInstanceProfileInfo_v3_t` (`nvmlDeviceGetGpuInstanceProfileInfoV`, version 3).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct nvmlGpuInstanceProfileInfo_v3_t {
    pub version: u32,
    pub id: u32,
    pub sliceCount: u32,
    pub instanceCount: u32,
    pub multiprocessorCount: u32,
    pub copyEngineCount: u32,
    pub decoderCount: u32,
    pub encoderCount: u32,
    pub jpegCount: u32,
    pub ofaCount: u32,
    pub memorySizeMB: u64,
    pub name: [c_char; NVML_DEVICE_NAME_V2_BUFFER_SIZE],
    pub capabilities: u32,
}
