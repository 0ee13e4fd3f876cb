//! # tf-vulkan-layer
//!
//! `VK_LAYER_TENSOR_FUSION_vgpu`: a Vulkan layer that puts an unmodified Vulkan program on a
//! vGPU — a VRAM quota and a compute share of one device — for any vendor's driver. It is the
//! Vulkan twin of the CUDA interposer, over the same limiter core (`tf_vgpu_limiter::Client`)
//! and the same shared region, so `tensor-fusion run` and the controller treat both alike.
//!
//! The loader loads it (explicit layer: `VK_ADD_LAYER_PATH` names the folder of its manifest,
//! `VK_INSTANCE_LAYERS` enables it; `tensor-fusion run --backend vulkan` sets both). Without
//! `TF_VGPU_REGION` it passes every call through untouched. With it:
//! - **Devices**: only the vGPU's device (by `VkPhysicalDeviceIDProperties::deviceUUID`) is
//!   enumerated, when the loader reports it; otherwise every device is limited.
//! - **Memory**: `vkAllocateMemory` from a device-local heap is charged to the region first and
//!   fails with `VK_ERROR_OUT_OF_DEVICE_MEMORY` past the quota; `vkFreeMemory` and
//!   `vkDestroyDevice` give it back, and a killed process's memory is reclaimed through the
//!   region's process table, as for CUDA. Device-local heaps report the quota as their size,
//!   and `VK_EXT_memory_budget` reports it as the budget (the layer provides the extension when
//!   the driver lacks it).
//! - **Compute**: each `vkQueueSubmit`/`vkQueueSubmit2` with work is admitted by the region's
//!   pacing (`Client::before_launch`); a submission every few milliseconds is bracketed with
//!   timestamps ([`sampler`]) and its device time fed to the controller (`Region::add_sample`).
//!
//! Design rules: every exported or returned function runs under `tf_ffi::guard` (no panic
//! crosses into C); the layer reaches the driver only through the next layer's functions (the
//! pointers the loader hands it), never the loader's exports; it knows the region only through
//! `tf_vgpu_limiter::Client`; the loader-interface structs are in [`chain`] and nowhere else;
//! objects it creates itself (timing command buffers, their memory) are never charged.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

pub mod chain;
mod ffi;
mod hooks;
mod sampler;

use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use ash::vk;
use tf_vgpu_limiter::Client;

/// The layer's name, as in its manifest.
pub const LAYER_NAME: &str = "VK_LAYER_TENSOR_FUSION_vgpu";

/// The process's vGPU, from `TF_VGPU_REGION`; `None` when it has none (the layer then passes
/// everything through).
pub(crate) fn client() -> Option<&'static Client> {
    static CLIENT: OnceLock<Option<Client>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            tf_os::init_logging();
            let c = Client::from_env();
            if let Some(c) = &c {
                tracing::info!(
                    device = c.device_uuid(),
                    quota = ?c.vram_quota(),
                    "{LAYER_NAME}: this process runs on a vGPU"
                );
            }
            c
        })
        .as_ref()
}

/// What the layer keeps per instance: the next layer's functions.
pub(crate) struct InstanceData {
    pub handle: vk::Instance,
    pub gipa: vk::PFN_vkGetInstanceProcAddr,
    /// The next layer's instance functions (missing ones panic if called: look up first).
    pub next: ash::Instance,
    /// Functions of Vulkan 1.1 (or their KHR extensions) where the next layer has them. They
    /// are looked up while the instance is being created: afterwards the loader's last lookup
    /// answers with the top of the chain (ourselves) for them.
    pub properties2: Option<vk::PFN_vkGetPhysicalDeviceProperties2>,
    pub memory_properties2: Option<vk::PFN_vkGetPhysicalDeviceMemoryProperties2>,
    pub groups: Option<vk::PFN_vkEnumeratePhysicalDeviceGroups>,
}

/// What the layer keeps per device.
pub(crate) struct DeviceData {
    pub handle: vk::Device,
    pub gdpa: vk::PFN_vkGetDeviceProcAddr,
    pub next: ash::Device,
    pub set_loader_data: Option<chain::PfnSetDeviceLoaderData>,
    /// Per memory type: whether its heap is device-local (charged to the quota).
    pub device_local_types: Vec<bool>,
    /// Charged allocations and their sizes (by `VkDeviceMemory`).
    pub charged: Mutex<HashMap<u64, u64>>,
    /// The queue family of each queue handed out.
    pub queue_family: Mutex<HashMap<u64, u32>>,
    pub timestamp_period: f64,
    /// Per queue family: bits of its timestamps (0: none), and whether it runs compute or
    /// graphics (where timestamps can be copied).
    pub families: Vec<(u32, bool)>,
    /// A host-visible coherent memory type, for the timing results.
    pub host_type: Option<u32>,
    pub samplers: Mutex<HashMap<u32, Option<sampler::Sampler>>>,
    /// `vkQueueSubmit2` (Vulkan 1.3, or `VK_KHR_synchronization2`) where the driver has it.
    pub submit2: Option<vk::PFN_vkQueueSubmit2>,
}

// SAFETY: the handles and function pointers in these structs are plain values that Vulkan
// allows on any thread; their mutable parts are behind mutexes.
unsafe impl Send for InstanceData {}
// SAFETY: as above.
unsafe impl Sync for InstanceData {}
// SAFETY: as above.
unsafe impl Send for DeviceData {}
// SAFETY: as above.
unsafe impl Sync for DeviceData {}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Table<T> = RwLock<HashMap<usize, Arc<T>>>;

pub(crate) fn instances() -> &'static Table<InstanceData> {
    static T: OnceLock<Table<InstanceData>> = OnceLock::new();
    T.get_or_init(Default::default)
}

pub(crate) fn devices() -> &'static Table<DeviceData> {
    static T: OnceLock<Table<DeviceData>> = OnceLock::new();
    T.get_or_init(Default::default)
}

/// The entry a dispatchable handle belongs to (by the loader's dispatch key).
pub(crate) fn lookup<T>(table: &Table<T>, handle: *mut c_void) -> Option<Arc<T>> {
    if handle.is_null() {
        return None;
    }
    // SAFETY: a dispatchable handle the loader passed to one of our entry points.
    let key = unsafe { chain::key(handle) };
    table
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&key)
        .cloned()
}

pub(crate) fn insert<T>(table: &Table<T>, handle: *mut c_void, value: T) {
    // SAFETY: a dispatchable handle the next layer just created.
    let key = unsafe { chain::key(handle) };
    table
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, Arc::new(value));
}

pub(crate) fn remove<T>(table: &Table<T>, handle: *mut c_void) -> Option<Arc<T>> {
    if handle.is_null() {
        return None;
    }
    // SAFETY: a dispatchable handle still alive (its destroy call has not gone down yet).
    let key = unsafe { chain::key(handle) };
    table
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&key)
}
