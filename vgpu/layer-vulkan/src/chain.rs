//! The loader–layer interface (the Vulkan loader's `vk_layer.h`, interface version 2): the
//! structs the loader puts in `pNext` chains of `vkCreateInstance`/`vkCreateDevice` to tell a
//! layer how to reach the next one, and the negotiation struct. Written from the Khronos loader
//! documentation ("Architecture of the Vulkan Loader Interfaces", layer interface version 2);
//! their layout is checked against `vk_layer.h` by `tests/layout.rs` where that header exists.

use std::ffi::{c_char, c_void};

use ash::vk;

/// `VkNegotiateLayerStructType::LAYER_NEGOTIATE_INTERFACE_STRUCT`.
pub const LAYER_NEGOTIATE_INTERFACE_STRUCT: u32 = 1;
/// The interface version this layer speaks.
pub const LAYER_INTERFACE_VERSION: u32 = 2;

/// `VkLayerFunction`: what a `VkLayer{Instance,Device}CreateInfo` carries.
pub const VK_LAYER_LINK_INFO: u32 = 0;
pub const VK_LOADER_DATA_CALLBACK: u32 = 1;

/// `PFN_GetPhysicalDeviceProcAddr`.
pub type PfnGetPhysicalDeviceProcAddr =
    Option<unsafe extern "system" fn(vk::Instance, *const c_char) -> vk::PFN_vkVoidFunction>;
/// `PFN_vkSetDeviceLoaderData`: makes a dispatchable object a layer created (a command buffer)
/// usable through the loader's dispatch.
pub type PfnSetDeviceLoaderData =
    unsafe extern "system" fn(device: vk::Device, object: *mut c_void) -> vk::Result;

/// `VkNegotiateLayerInterface`.
#[repr(C)]
pub struct NegotiateLayerInterface {
    pub s_type: u32,
    pub p_next: *mut c_void,
    pub loader_layer_interface_version: u32,
    pub pfn_get_instance_proc_addr: Option<vk::PFN_vkGetInstanceProcAddr>,
    pub pfn_get_device_proc_addr: Option<vk::PFN_vkGetDeviceProcAddr>,
    pub pfn_get_physical_device_proc_addr: PfnGetPhysicalDeviceProcAddr,
}

/// `VkLayerInstanceLink`.
#[repr(C)]
pub struct LayerInstanceLink {
    pub p_next: *mut LayerInstanceLink,
    pub pfn_next_get_instance_proc_addr: vk::PFN_vkGetInstanceProcAddr,
    pub pfn_next_get_physical_device_proc_addr: PfnGetPhysicalDeviceProcAddr,
}

/// `VkLayerDeviceLink`.
#[repr(C)]
pub struct LayerDeviceLink {
    pub p_next: *mut LayerDeviceLink,
    pub pfn_next_get_instance_proc_addr: vk::PFN_vkGetInstanceProcAddr,
    pub pfn_next_get_device_proc_addr: vk::PFN_vkGetDeviceProcAddr,
}

/// `VkLayerInstanceCreateInfo` / `VkLayerDeviceCreateInfo`: the union `u` is two pointers wide
/// (its largest member is a pair of function pointers); which member is meant depends on
/// `function`.
#[repr(C)]
pub struct LayerCreateInfo {
    pub s_type: vk::StructureType,
    pub p_next: *const c_void,
    pub function: u32,
    pub u: [*mut c_void; 2],
}

/// The loader's create info of type `s_type` (`LOADER_INSTANCE_CREATE_INFO` or
/// `LOADER_DEVICE_CREATE_INFO`) carrying `function`, in the `pNext` chain starting at `next`.
///
/// # Safety
/// `next` is a valid `pNext` chain (every element starts with `sType` and `pNext`).
pub unsafe fn find(
    mut next: *const c_void,
    s_type: vk::StructureType,
    function: u32,
) -> Option<*mut LayerCreateInfo> {
    while !next.is_null() {
        let info = next as *mut LayerCreateInfo;
        // SAFETY: every element of a valid chain starts with sType and pNext; `function` is
        // read only from the loader's own structs, recognised by their sType.
        unsafe {
            if (*info).s_type == s_type && (*info).function == function {
                return Some(info);
            }
            next = (*info).p_next;
        }
    }
    None
}

/// The loader's dispatch key of a dispatchable handle: the pointer its first word holds. A
/// physical device has its instance's key, a queue or command buffer its device's.
///
/// # Safety
/// `handle` is a live dispatchable handle made by the loader.
pub unsafe fn key(handle: *mut c_void) -> usize {
    // SAFETY: the loader makes every dispatchable object start with its dispatch pointer.
    unsafe { *(handle as *const usize) }
}
