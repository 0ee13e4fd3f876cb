//! # tf-backend-vulkan
//!
//! The Vulkan HAL backend: any device with a Vulkan 1.2 driver — AMD, Intel, NVIDIA, Arm, and
//! Mesa's lavapipe (a conformant Vulkan implementation on the CPU, which is what CI runs on).
//! The system's Vulkan loader (`libvulkan.so.1`) is opened at run time through ash, so the
//! build needs no Vulkan SDK; `TF_VULKAN_LIBRARY` names another loader explicitly.
//!
//! How the HAL maps onto Vulkan:
//! - **Enumeration** ([`VulkanBackend::devices`], [`VulkanDevice::details`]): vendor from the
//!   PCI vendor id, UUID from `VkPhysicalDeviceIDProperties` (NVIDIA's matches its CUDA UUID),
//!   memory from the device-local heaps, driver from `VkPhysicalDeviceDriverProperties`, PCI
//!   bus and NUMA node from `VK_EXT_pci_bus_info`; device type, heaps and compute queue families
//!   in [`VulkanDetails`].
//! - **Memory**: a device pointer is the buffer device address of a device-local buffer
//!   (`VK_KHR_buffer_device_address`, core in 1.2); copies go through a host-visible staging
//!   buffer; memory use comes from `VK_EXT_memory_budget` where the driver has it.
//! - **Kernels**: modules are SPIR-V ([`tf_hal::ModuleImage::SpirV`]), one compute pipeline per
//!   entry point and block shape (the block is specialization constants 0, 1, 2). Arguments are
//!   push constants, packed like CUDA's parameter buffer (each at its natural alignment, in
//!   order), so a pointer argument is a 64-bit buffer device address.
//! - **Streams and events**: one queue; a stream is a timeline semaphore that each submission on
//!   it waits for and signals; an event is a timestamp query written on its stream, complete
//!   when the stream's semaphore passes its value. Every command buffer begins with a full
//!   memory barrier, so work is also ordered (and visible) across streams in submission order.
//! - **Busy time**: every launch is bracketed by timestamps, and the device time of this
//!   process's kernels is summed as they complete ([`tf_hal::Device::busy_sample`]). Vulkan has
//!   no device-wide or per-process utilization query; other processes' work is not seen.
//!
//! Design rules: every `unsafe` block is a Vulkan call whose handles this crate created and
//! still owns (each says so); handles never leave a [`VulkanContext`] except as the HAL's
//! numbers; nothing here knows about vGPUs (the limiter is a Vulkan layer in `vgpu/`).
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

mod context;
mod error;
mod spirv;

use std::collections::HashSet;
use std::ffi::CStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use ash::vk;
use serde::Serialize;
use tf_hal::{
    Backend, BackendKind, BusySample, Capabilities, Context, Device, DeviceInfo, DeviceUuid, Error,
    ErrorKind, Link, MemoryInfo, ProcessUsage, Result, Vendor,
};

pub use context::VulkanContext;
pub use error::{vk_err, vk_error};

/// Environment variable naming the Vulkan loader library to open instead of `libvulkan.so.1`.
pub const LIBRARY_ENV: &str = "TF_VULKAN_LIBRARY";

/// What to install when the loader or every driver is missing (Debian package names).
pub const INSTALL_HINT: &str = "install the Vulkan loader and a driver: on Debian/Ubuntu \
    `apt-get install libvulkan1 mesa-vulkan-drivers` (mesa-vulkan-drivers has lavapipe, a \
    Vulkan device on the CPU), or your GPU vendor's Vulkan driver";

/// The loader and the instance, shared by every device and context of one backend.
pub(crate) struct Instance {
    // Declared before `_entry`: the instance is destroyed (in `Drop`) before the loader is
    // closed.
    pub(crate) instance: ash::Instance,
    _entry: ash::Entry,
}

impl Drop for Instance {
    fn drop(&mut self) {
        // SAFETY: every device and context holds an Arc of this instance, so none is left.
        unsafe { self.instance.destroy_instance(None) };
    }
}

/// Vulkan-specific facts about a device, beyond [`DeviceInfo`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VulkanDetails {
    /// `discrete-gpu`, `integrated-gpu`, `virtual-gpu`, `cpu` or `other`.
    pub device_type: String,
    /// The Vulkan version the driver implements for this device, e.g. `1.3.230`.
    pub api_version: String,
    pub vendor_id: u32,
    pub device_id: u32,
    /// `VkPhysicalDeviceDriverProperties::driverName` (e.g. `llvmpipe`, `NVIDIA`).
    pub driver_name: String,
    pub heaps: Vec<Heap>,
    pub compute_queue_families: Vec<QueueFamily>,
    /// `VK_EXT_memory_budget` (memory use per heap).
    pub memory_budget: bool,
    /// `VK_KHR_shader_clock` with a device clock (the busy test kernel needs it).
    pub shader_device_clock: bool,
}

/// One memory heap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Heap {
    pub size_bytes: u64,
    pub device_local: bool,
}

/// A queue family that can run compute work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct QueueFamily {
    pub index: u32,
    pub queue_count: u32,
    pub graphics: bool,
    pub transfer: bool,
    /// Bits of its timestamps (0: no timestamps on this family).
    pub timestamp_valid_bits: u32,
}

/// One physical device as enumerated.
pub(crate) struct Physical {
    pub(crate) handle: vk::PhysicalDevice,
    pub(crate) info: DeviceInfo,
    pub(crate) details: VulkanDetails,
    pub(crate) properties: vk::PhysicalDeviceProperties,
    pub(crate) memory: vk::PhysicalDeviceMemoryProperties,
    /// `VkPhysicalDeviceMaintenance3Properties::maxMemoryAllocationSize`.
    pub(crate) max_allocation: u64,
}

/// The Vulkan backend: the loader, one instance, and the devices it enumerated.
pub struct VulkanBackend {
    devices: Vec<Arc<DeviceShared>>,
}

impl VulkanBackend {
    /// Open the Vulkan loader (`$TF_VULKAN_LIBRARY`, else `libvulkan.so.1`), create an instance
    /// and enumerate the devices. A missing loader is [`ErrorKind::LibraryNotFound`]; a loader
    /// with no driver or no device is [`ErrorKind::NoDevice`]; each says what to install.
    pub fn new() -> Result<VulkanBackend> {
        let entry = load_entry()?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"tensor-fusion")
            .engine_name(c"tensor-fusion")
            .api_version(vk::API_VERSION_1_2);
        // SAFETY: a plain query of the loader we just opened.
        let loader_version = unsafe { entry.try_enumerate_instance_version() }
            .map_err(vk_err("vkEnumerateInstanceVersion"))?
            .unwrap_or(vk::API_VERSION_1_0);
        if loader_version < vk::API_VERSION_1_1 {
            return Err(Error::new(
                ErrorKind::NotSupported,
                format!(
                    "the Vulkan loader implements {}, and tensor-fusion needs 1.1 or newer ({INSTALL_HINT})",
                    version_string(loader_version)
                ),
            ));
        }
        let create = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: the create info and the application info it points at live across the call.
        let instance = unsafe { entry.create_instance(&create, None) }.map_err(|r| {
            let mut e = vk_error("vkCreateInstance", r);
            if e.kind == ErrorKind::NoDevice {
                e.message = format!("the Vulkan loader found no driver ({INSTALL_HINT})");
            }
            e
        })?;
        let instance = Arc::new(Instance {
            instance,
            _entry: entry,
        });
        // SAFETY: our instance, alive.
        let handles = unsafe { instance.instance.enumerate_physical_devices() }
            .map_err(vk_err("vkEnumeratePhysicalDevices"))?;
        let mut devices: Vec<Arc<DeviceShared>> = Vec::new();
        let mut seen = HashSet::new();
        for handle in handles {
            let p = describe(&instance.instance, handle, devices.len() as u32);
            // The same device reached through two drivers is listed once.
            if !seen.insert(p.info.uuid.clone()) {
                continue;
            }
            devices.push(Arc::new(DeviceShared {
                instance: instance.clone(),
                physical: p,
                busy_ns: AtomicU64::new(0),
                allocated: AtomicU64::new(0),
                contexts: Mutex::new(Vec::new()),
            }));
        }
        if devices.is_empty() {
            return Err(Error::new(
                ErrorKind::NoDevice,
                format!("the Vulkan loader reports no device ({INSTALL_HINT})"),
            ));
        }
        Ok(VulkanBackend { devices })
    }

    /// Vulkan-specific facts about device `index`.
    pub fn details(&self, index: u32) -> Result<VulkanDetails> {
        Ok(self.shared(index)?.physical.details.clone())
    }

    fn shared(&self, index: u32) -> Result<&Arc<DeviceShared>> {
        self.devices.get(index as usize).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidDevice,
                format!(
                    "no Vulkan device {index} (there are {})",
                    self.devices.len()
                ),
            )
        })
    }
}

fn load_entry() -> Result<ash::Entry> {
    let explicit = std::env::var_os(LIBRARY_ENV).filter(|v| !v.is_empty());
    let loaded = match &explicit {
        // SAFETY: opening a library runs its initialisers; the Vulkan loader's are sound, and
        // the user named this file as one.
        Some(path) => unsafe { ash::Entry::load_from(path) },
        // SAFETY: as above, for the system's libvulkan.so.1.
        None => unsafe { ash::Entry::load() },
    };
    loaded.map_err(|e| {
        let which = explicit.as_ref().map_or_else(
            || "libvulkan.so.1".to_string(),
            |p| format!("{} (from {LIBRARY_ENV})", p.to_string_lossy()),
        );
        Error::new(
            ErrorKind::LibraryNotFound,
            format!("cannot load the Vulkan loader {which}: {e} ({INSTALL_HINT})"),
        )
    })
}

fn version_string(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

fn cstr_field(chars: &[std::ffi::c_char]) -> String {
    // The driver's fixed-size strings are NUL-terminated; read at most the array.
    let bytes: Vec<u8> = chars
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The driver version as its vendor spells it, where the driver gives no string.
fn driver_version(vendor: Vendor, v: u32) -> String {
    match vendor {
        Vendor::Nvidia => format!(
            "{}.{}.{}",
            (v >> 22) & 0x3ff,
            (v >> 14) & 0xff,
            (v >> 6) & 0xff
        ),
        _ => version_string(v),
    }
}

/// Everything the backend reads about one physical device.
fn describe(instance: &ash::Instance, handle: vk::PhysicalDevice, index: u32) -> Physical {
    // SAFETY: queries of a physical device of our live instance, through structs that live
    // across each call (the pNext chains point at locals).
    unsafe {
        let properties = instance.get_physical_device_properties(handle);
        let extensions: HashSet<String> = instance
            .enumerate_device_extension_properties(handle)
            .unwrap_or_default()
            .iter()
            .map(|e| cstr_field(&e.extension_name))
            .collect();
        let has = |name: &CStr| extensions.contains(name.to_str().unwrap_or_default());
        let v12 = properties.api_version >= vk::API_VERSION_1_2;

        let mut id = vk::PhysicalDeviceIDProperties::default();
        let mut driver = vk::PhysicalDeviceDriverProperties::default();
        let mut maint3 = vk::PhysicalDeviceMaintenance3Properties::default();
        let mut pci = vk::PhysicalDevicePCIBusInfoPropertiesEXT::default();
        let mut nv_sm = vk::PhysicalDeviceShaderSMBuiltinsPropertiesNV::default();
        let mut amd = vk::PhysicalDeviceShaderCorePropertiesAMD::default();
        let mut props2 = vk::PhysicalDeviceProperties2::default()
            .push_next(&mut id)
            .push_next(&mut maint3);
        if v12 {
            props2 = props2.push_next(&mut driver);
        }
        let pci_info = has(ash::ext::pci_bus_info::NAME);
        if pci_info {
            props2 = props2.push_next(&mut pci);
        }
        let nv = has(ash::nv::shader_sm_builtins::NAME);
        if nv {
            props2 = props2.push_next(&mut nv_sm);
        }
        let amd_cores = has(ash::amd::shader_core_properties::NAME);
        if amd_cores {
            props2 = props2.push_next(&mut amd);
        }
        instance.get_physical_device_properties2(handle, &mut props2);
        let memory = instance.get_physical_device_memory_properties(handle);
        let families = instance.get_physical_device_queue_family_properties(handle);

        let mut clock = vk::PhysicalDeviceShaderClockFeaturesKHR::default();
        let shader_clock = has(ash::khr::shader_clock::NAME);
        if shader_clock {
            let mut f2 = vk::PhysicalDeviceFeatures2::default().push_next(&mut clock);
            instance.get_physical_device_features2(handle, &mut f2);
        }

        let vendor = Vendor::from_pci_vendor_id(properties.vendor_id);
        let heaps: Vec<Heap> = memory.memory_heaps[..memory.memory_heap_count as usize]
            .iter()
            .map(|h| Heap {
                size_bytes: h.size,
                device_local: h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL),
            })
            .collect();
        let total: u64 = heaps
            .iter()
            .filter(|h| h.device_local)
            .map(|h| h.size_bytes)
            .sum();
        let device_type = match properties.device_type {
            vk::PhysicalDeviceType::DISCRETE_GPU => "discrete-gpu",
            vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated-gpu",
            vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual-gpu",
            vk::PhysicalDeviceType::CPU => "cpu",
            _ => "other",
        };
        let compute_units = if nv && nv_sm.shader_sm_count > 0 {
            nv_sm.shader_sm_count
        } else if amd_cores && amd.shader_engine_count > 0 {
            amd.shader_engine_count
                * amd.shader_arrays_per_engine_count
                * amd.compute_units_per_shader_array
        } else if properties.device_type == vk::PhysicalDeviceType::CPU {
            // lavapipe runs a thread per CPU.
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        } else {
            // Vulkan has no portable compute-unit count.
            1
        };
        let info_string = cstr_field(&driver.driver_info);
        let driver_name = cstr_field(&driver.driver_name);
        let pci_bus_id = if pci_info {
            format!(
                "{:04x}:{:02x}:{:02x}.{:x}",
                pci.pci_domain, pci.pci_bus, pci.pci_device, pci.pci_function
            )
        } else {
            String::new()
        };
        let numa_node = (!pci_bus_id.is_empty())
            .then(|| {
                std::fs::read_to_string(format!("/sys/bus/pci/devices/{pci_bus_id}/numa_node")).ok()
            })
            .flatten()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let info = DeviceInfo {
            index,
            uuid: DeviceUuid::from_bytes(id.device_uuid).to_string(),
            vendor,
            model: cstr_field(&properties.device_name),
            total_memory_bytes: total,
            compute_units,
            // Vulkan does not say; no table for every vendor's models yet.
            fp16_tflops: 0.0,
            pci_bus_id,
            numa_node,
            driver_version: if info_string.is_empty() {
                driver_version(vendor, properties.driver_version)
            } else {
                info_string
            },
            capabilities: Capabilities {
                // The Vulkan layer (vgpu/layer-vulkan) limits memory and compute in-process.
                soft_limit: true,
                ..Capabilities::default()
            },
            backend: BackendKind::Vulkan,
        };
        let details = VulkanDetails {
            device_type: device_type.into(),
            api_version: version_string(properties.api_version),
            vendor_id: properties.vendor_id,
            device_id: properties.device_id,
            driver_name,
            heaps,
            compute_queue_families: families
                .iter()
                .enumerate()
                .filter(|(_, f)| f.queue_flags.contains(vk::QueueFlags::COMPUTE))
                .map(|(i, f)| QueueFamily {
                    index: i as u32,
                    queue_count: f.queue_count,
                    graphics: f.queue_flags.contains(vk::QueueFlags::GRAPHICS),
                    transfer: f.queue_flags.contains(vk::QueueFlags::TRANSFER),
                    timestamp_valid_bits: f.timestamp_valid_bits,
                })
                .collect(),
            memory_budget: has(ash::ext::memory_budget::NAME),
            shader_device_clock: shader_clock && clock.shader_device_clock == vk::TRUE,
        };
        Physical {
            handle,
            info,
            details,
            properties,
            memory,
            max_allocation: if maint3.max_memory_allocation_size > 0 {
                maint3.max_memory_allocation_size
            } else {
                u64::MAX
            },
        }
    }
}

impl Backend for VulkanBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Vulkan
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(self
            .devices
            .iter()
            .map(|d| d.physical.info.clone())
            .collect())
    }

    fn device(&self, index: u32) -> Result<Arc<dyn Device>> {
        Ok(Arc::new(VulkanDevice {
            shared: self.shared(index)?.clone(),
        }))
    }

    fn topology(&self) -> Result<Vec<Link>> {
        // Vulkan does not describe links between devices.
        Ok(Vec::new())
    }
}

/// What a device's handles share: the instance, the physical device, and this process's
/// counters on it.
pub(crate) struct DeviceShared {
    pub(crate) instance: Arc<Instance>,
    pub(crate) physical: Physical,
    /// Device time of this process's completed kernels, ns.
    pub(crate) busy_ns: AtomicU64,
    /// Bytes this process holds in device memory through this backend.
    pub(crate) allocated: AtomicU64,
    /// Live contexts, whose completed work is counted on every busy-time reading.
    pub(crate) contexts: Mutex<Vec<Weak<context::Inner>>>,
}

/// One Vulkan device.
pub struct VulkanDevice {
    shared: Arc<DeviceShared>,
}

impl VulkanDevice {
    /// Vulkan-specific facts about this device.
    pub fn details(&self) -> &VulkanDetails {
        &self.shared.physical.details
    }
}

impl Device for VulkanDevice {
    fn info(&self) -> &DeviceInfo {
        &self.shared.physical.info
    }

    /// From `VK_EXT_memory_budget` where the driver has it (its usage and budget are this
    /// process's); otherwise the device-local heaps' size and what this process allocated.
    fn memory(&self) -> Result<MemoryInfo> {
        memory_info(&self.shared)
    }

    fn processes(&self) -> Result<Vec<ProcessUsage>> {
        Err(Error::not_supported(
            "Vulkan does not list the processes using a device",
        ))
    }

    /// Device time of this process's kernels launched through this backend (Vulkan has no
    /// device-wide counter).
    fn busy_sample(&self) -> Result<Option<BusySample>> {
        let live: Vec<Arc<context::Inner>> = {
            let mut list = self
                .shared
                .contexts
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for ctx in live {
            ctx.reap()?;
        }
        Ok(Some(BusySample {
            at_ns: tf_os::now_ns(),
            busy_ns: self.shared.busy_ns.load(Ordering::Acquire),
        }))
    }

    fn create_context(&self) -> Result<Arc<dyn Context>> {
        let ctx = VulkanContext::create(self.shared.clone())?;
        Ok(Arc::new(ctx))
    }
}

pub(crate) fn memory_info(shared: &DeviceShared) -> Result<MemoryInfo> {
    let p = &shared.physical;
    let total = p.info.total_memory_bytes;
    if p.details.memory_budget {
        let mut budget = vk::PhysicalDeviceMemoryBudgetPropertiesEXT::default();
        let mut props = vk::PhysicalDeviceMemoryProperties2::default().push_next(&mut budget);
        // SAFETY: a query of our live instance's physical device, the chain on the stack.
        unsafe {
            shared
                .instance
                .instance
                .get_physical_device_memory_properties2(p.handle, &mut props)
        };
        let memory = props.memory_properties;
        let heaps = &memory.memory_heaps[..memory.memory_heap_count as usize];
        let (mut used, mut free, mut total) = (0u64, 0u64, 0u64);
        for (i, h) in heaps.iter().enumerate() {
            if h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL) {
                used += budget.heap_usage[i];
                free += budget.heap_budget[i].saturating_sub(budget.heap_usage[i]);
                total += h.size;
            }
        }
        let total = total.max(used);
        return Ok(MemoryInfo {
            total_bytes: total,
            used_bytes: used,
            free_bytes: free.min(total - used),
        });
    }
    let used = shared.allocated.load(Ordering::Acquire).min(total);
    Ok(MemoryInfo {
        total_bytes: total,
        used_bytes: used,
        free_bytes: total - used,
    })
}
