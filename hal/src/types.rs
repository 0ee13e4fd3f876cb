//! Plain data the HAL passes around: device descriptions, metrics, handles, launch shapes.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// Who made the silicon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Vendor {
    Nvidia,
    Ascend,
    Amd,
    Intel,
    Arm,
    Qualcomm,
    /// Imagination Technologies (PowerVR).
    Imagination,
    Apple,
    Broadcom,
    Samsung,
    /// Microsoft's software and translation drivers (WARP, Dozen).
    Microsoft,
    /// Mesa's software devices (lavapipe: Vulkan on the CPU).
    Mesa,
    /// A vendor this list does not know.
    Other,
}

impl Vendor {
    /// The vendor a PCI vendor id (or a Khronos vendor id, `VK_VENDOR_ID_*`, for devices with
    /// no PCI id) names, as Vulkan and sysfs report them.
    pub fn from_pci_vendor_id(id: u32) -> Vendor {
        match id {
            0x10de => Vendor::Nvidia,
            0x19e5 => Vendor::Ascend, // Huawei
            0x1002 | 0x1022 => Vendor::Amd,
            0x8086 => Vendor::Intel,
            0x13b5 => Vendor::Arm,
            0x5143 => Vendor::Qualcomm,
            0x1010 => Vendor::Imagination,
            0x106b => Vendor::Apple,
            0x14e4 => Vendor::Broadcom,
            0x144d => Vendor::Samsung,
            0x1414 => Vendor::Microsoft,
            0x10005 => Vendor::Mesa, // VK_VENDOR_ID_MESA
            _ => Vendor::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Vendor::Nvidia => "nvidia",
            Vendor::Ascend => "ascend",
            Vendor::Amd => "amd",
            Vendor::Intel => "intel",
            Vendor::Arm => "arm",
            Vendor::Qualcomm => "qualcomm",
            Vendor::Imagination => "imagination",
            Vendor::Apple => "apple",
            Vendor::Broadcom => "broadcom",
            Vendor::Samsung => "samsung",
            Vendor::Microsoft => "microsoft",
            Vendor::Mesa => "mesa",
            Vendor::Other => "other",
        }
    }

    const ALL: [Vendor; 13] = [
        Vendor::Nvidia,
        Vendor::Ascend,
        Vendor::Amd,
        Vendor::Intel,
        Vendor::Arm,
        Vendor::Qualcomm,
        Vendor::Imagination,
        Vendor::Apple,
        Vendor::Broadcom,
        Vendor::Samsung,
        Vendor::Microsoft,
        Vendor::Mesa,
        Vendor::Other,
    ];
}

impl fmt::Display for Vendor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Vendor {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let lower = s.trim().to_ascii_lowercase();
        let alias = match lower.as_str() {
            "huawei" => "ascend",
            "imgtec" | "powervr" => "imagination",
            other => other,
        };
        Vendor::ALL
            .into_iter()
            .find(|v| v.as_str() == alias)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidValue,
                    format!(
                        "unknown vendor {s:?} (expected one of {})",
                        Vendor::ALL.map(Vendor::as_str).join(", ")
                    ),
                )
            })
    }
}

/// Which implementation of the HAL talks to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The simulated GPU (always available).
    Fake,
    /// NVIDIA through the CUDA driver API and NVML.
    Cuda,
    /// Huawei Ascend through ACL and DCMI.
    Ascend,
    /// Any Vulkan device (AMD, Intel, NVIDIA, Mesa's lavapipe on the CPU, ...) through the
    /// system's Vulkan loader.
    Vulkan,
    /// A device owned by a tensor-fusion worker on this or another host, reached over a
    /// connection (`tf-remote`); the worker runs whichever backend it was given.
    Remote,
}

impl BackendKind {
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Fake,
        BackendKind::Cuda,
        BackendKind::Ascend,
        BackendKind::Vulkan,
        BackendKind::Remote,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Fake => "fake",
            BackendKind::Cuda => "cuda",
            BackendKind::Ascend => "ascend",
            BackendKind::Vulkan => "vulkan",
            BackendKind::Remote => "remote",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s.trim().to_ascii_lowercase().as_str() {
            "fake" | "sim" | "simulated" => Ok(BackendKind::Fake),
            "cuda" | "nvidia" => Ok(BackendKind::Cuda),
            "ascend" | "npu" => Ok(BackendKind::Ascend),
            "vulkan" | "vk" => Ok(BackendKind::Vulkan),
            "remote" => Ok(BackendKind::Remote),
            other => Err(Error::new(
                ErrorKind::Config,
                format!(
                    "unknown backend {other:?}: expected one of fake, cuda, ascend, vulkan, remote"
                ),
            )),
        }
    }
}

/// What a device (through its backend) can do for tensor-fusion.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// VRAM and compute limits enforced inside the application process (interposer).
    pub soft_limit: bool,
    /// Limits enforced outside the application (a worker executing its calls).
    pub hard_limit: bool,
    /// Hardware partitions (MIG, vNPU templates).
    pub partitioning: bool,
    /// Device state can be snapshotted and restored.
    pub snapshot: bool,
    /// Calls can be forwarded to a worker on another host.
    pub remoting: bool,
}

/// One device as enumerated by a backend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Position in the backend's enumeration order (stable across calls).
    pub index: u32,
    pub uuid: String,
    pub vendor: Vendor,
    pub model: String,
    pub total_memory_bytes: u64,
    /// Streaming multiprocessors (NVIDIA) or AI cores (Ascend).
    pub compute_units: u32,
    /// Peak dense FP16 tensor throughput, from the driver or the model table.
    pub fp16_tflops: f64,
    pub pci_bus_id: String,
    pub numa_node: Option<u32>,
    pub driver_version: String,
    pub capabilities: Capabilities,
    pub backend: BackendKind,
}

/// Device memory, device-wide or as seen by one context (which may be a quota).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub total_bytes: u64,
    pub used_bytes: u64,
    pub free_bytes: u64,
}

/// A device's sensors, each where the backend can read it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Sensors {
    /// Core temperature, °C.
    pub temperature_c: Option<f64>,
    /// Board power draw, watts.
    pub power_w: Option<f64>,
}

/// One process using a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessUsage {
    pub pid: u32,
    pub memory_bytes: u64,
    /// Cumulative device busy time caused by this process, where the backend can tell.
    pub busy_ns: Option<u64>,
}

/// A cumulative busy-time reading: `busy_ns` of kernel execution up to `at_ns` (monotonic clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusySample {
    pub at_ns: u64,
    pub busy_ns: u64,
}

impl BusySample {
    /// Utilization in percent between an earlier sample and this one.
    pub fn utilization_since(&self, earlier: &BusySample) -> f64 {
        let wall = self.at_ns.saturating_sub(earlier.at_ns);
        if wall == 0 {
            return 0.0;
        }
        let busy = self.busy_ns.saturating_sub(earlier.busy_ns);
        (busy as f64 * 100.0 / wall as f64).clamp(0.0, 100.0)
    }
}

/// How two devices are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkKind {
    /// Direct high-speed link (NVLink, HCCS) with this many lanes/links.
    NvLink {
        links: u32,
    },
    Hccs,
    /// Same PCIe switch.
    PcieSwitch,
    /// Through a host bridge on the same NUMA node.
    PcieHostBridge,
    /// Across NUMA nodes (through the CPU interconnect).
    CrossNuma,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub a: u32,
    pub b: u32,
    pub kind: LinkKind,
}

/// A hardware partition profile (an NVIDIA MIG profile, an Ascend vNPU template).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionTemplate {
    /// e.g. "1g.10gb" or "vir02".
    pub name: String,
    pub memory_bytes: u64,
    pub compute_units: u32,
    /// How many of these fit on an empty device.
    pub max_instances: u32,
}

/// A partition that exists on a device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub id: String,
    pub template: String,
    pub uuid: String,
}

macro_rules! handle {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name(pub u64);
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:#x}", self.0)
            }
        }
    };
}

handle!(
    /// A device memory address (as the driver returns it).
    DevicePtr
);
handle!(
    /// A loaded module.
    ModuleHandle
);
handle!(
    /// A kernel entry in a loaded module.
    FunctionHandle
);
handle!(
    /// A stream. `StreamHandle::DEFAULT` is the context's default stream.
    StreamHandle
);
handle!(
    /// An event.
    EventHandle
);

impl DevicePtr {
    pub fn offset(self, bytes: u64) -> DevicePtr {
        DevicePtr(self.0 + bytes)
    }
}

impl StreamHandle {
    pub const DEFAULT: StreamHandle = StreamHandle(0);
}

/// A module image to load.
#[derive(Debug, Clone, Copy)]
pub enum ModuleImage<'a> {
    /// PTX assembly text.
    Ptx(&'a str),
    /// A vendor binary (cubin, fatbin, OM).
    Binary(&'a [u8]),
    /// A SPIR-V module (little-endian 32-bit words, as `glslangValidator` or naga write them).
    /// Each entry point is a kernel; see `tf_hal::TEST_KERNELS_SPIRV` for the argument
    /// convention the Vulkan backend uses.
    SpirV(&'a [u8]),
}

/// Grid and block shape of a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_mem_bytes: u32,
}

impl LaunchConfig {
    /// A 1-D launch covering `n` threads with `block` threads per block.
    pub fn for_elements(n: u32, block: u32) -> Self {
        let block = block.max(1);
        LaunchConfig {
            grid: [n.div_ceil(block).max(1), 1, 1],
            block: [block, 1, 1],
            shared_mem_bytes: 0,
        }
    }

    pub fn single() -> Self {
        LaunchConfig {
            grid: [1, 1, 1],
            block: [1, 1, 1],
            shared_mem_bytes: 0,
        }
    }

    pub fn total_threads(&self) -> u64 {
        self.grid
            .iter()
            .chain(self.block.iter())
            .map(|&d| d as u64)
            .product()
    }

    pub fn total_blocks(&self) -> u64 {
        self.grid.iter().map(|&d| d as u64).product()
    }
}

/// Kernel arguments packed as the driver expects: one little-endian byte buffer per parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelArgs {
    params: Vec<Vec<u8>>,
}

impl KernelArgs {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn ptr(mut self, p: DevicePtr) -> Self {
        self.params.push(p.0.to_le_bytes().to_vec());
        self
    }

    pub fn u32(mut self, v: u32) -> Self {
        self.params.push(v.to_le_bytes().to_vec());
        self
    }

    pub fn u64(mut self, v: u64) -> Self {
        self.params.push(v.to_le_bytes().to_vec());
        self
    }

    pub fn f32(mut self, v: f32) -> Self {
        self.params.push(v.to_le_bytes().to_vec());
        self
    }

    /// A parameter of arbitrary bytes (a struct passed by value).
    pub fn bytes(mut self, b: &[u8]) -> Self {
        self.params.push(b.to_vec());
        self
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    pub fn params(&self) -> &[Vec<u8>] {
        &self.params
    }
}

/// Device memory and execution state of one context, copied to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextSnapshot {
    pub device_uuid: String,
    /// Each allocation: its address and its bytes.
    pub allocations: Vec<(DevicePtr, Vec<u8>)>,
}

impl ContextSnapshot {
    pub fn total_bytes(&self) -> u64 {
        self.allocations.iter().map(|(_, b)| b.len() as u64).sum()
    }
}

/// A sampling window for utilization queries.
pub const DEFAULT_UTILIZATION_WINDOW: Duration = Duration::from_secs(1);
