//! The loader–layer interface (the Vulkan loader's `vk_layer.h`, interface version 2): the
//! structs the loader puts in `pNext` chains of `vkCreateInstance`/`vkCreateDevice` to tell a
//! layer how to reach the next one, and the negotiation struct. Written from the Khronos loader
//! documentation ("Architecture of the Vulkan Loader Interfaces", layer interface version 2);
//! their layout is checked against the loader's `vk_layer.h` (Debian: libvulkan-dev) by this
//! module's test.

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

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};
    use std::process::Command;

    use super::*;

    /// Every field offset and size, and the constants, as a C compiler sees them in the
    /// loader's own header.
    #[test]
    fn layout_matches_vk_layer_h() {
        let header = std::path::Path::new("/usr/include/vulkan/vk_layer.h");
        assert!(
            header.exists(),
            "{} is missing: install libvulkan-dev (Debian/Ubuntu; .ci/run does) to check the layer's structs against it",
            header.display()
        );
        let dir = std::env::temp_dir().join(format!("tf-vk-layout-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("layout.c");
        std::fs::write(
            &src,
            r#"
#include <stdio.h>
#include <stddef.h>
#include <vulkan/vk_layer.h>
#define F(t, f) printf("%s.%s %zu\n", #t, #f, offsetof(t, f));
#define S(t) printf("%s %zu\n", #t, sizeof(t));
int main(void) {
    S(VkNegotiateLayerInterface) F(VkNegotiateLayerInterface, sType)
    F(VkNegotiateLayerInterface, pNext) F(VkNegotiateLayerInterface, loaderLayerInterfaceVersion)
    F(VkNegotiateLayerInterface, pfnGetInstanceProcAddr)
    F(VkNegotiateLayerInterface, pfnGetDeviceProcAddr)
    F(VkNegotiateLayerInterface, pfnGetPhysicalDeviceProcAddr)
    S(VkLayerInstanceLink) F(VkLayerInstanceLink, pNext)
    F(VkLayerInstanceLink, pfnNextGetInstanceProcAddr)
    F(VkLayerInstanceLink, pfnNextGetPhysicalDeviceProcAddr)
    S(VkLayerDeviceLink) F(VkLayerDeviceLink, pNext) F(VkLayerDeviceLink, pfnNextGetInstanceProcAddr)
    F(VkLayerDeviceLink, pfnNextGetDeviceProcAddr)
    S(VkLayerInstanceCreateInfo) F(VkLayerInstanceCreateInfo, sType)
    F(VkLayerInstanceCreateInfo, pNext) F(VkLayerInstanceCreateInfo, function)
    F(VkLayerInstanceCreateInfo, u)
    F(VkLayerDeviceCreateInfo, sType) F(VkLayerDeviceCreateInfo, pNext)
    F(VkLayerDeviceCreateInfo, function) F(VkLayerDeviceCreateInfo, u)
    printf("LAYER_NEGOTIATE_INTERFACE_STRUCT %d\n", LAYER_NEGOTIATE_INTERFACE_STRUCT);
    printf("VK_LAYER_LINK_INFO %d\n", VK_LAYER_LINK_INFO);
    printf("VK_LOADER_DATA_CALLBACK %d\n", VK_LOADER_DATA_CALLBACK);
    printf("CURRENT_LOADER_LAYER_INTERFACE_VERSION %d\n", CURRENT_LOADER_LAYER_INTERFACE_VERSION);
    return 0;
}
"#,
        )
        .unwrap();
        let exe = dir.join("layout");
        let cc = Command::new("cc")
            .arg("-o")
            .arg(&exe)
            .arg(&src)
            .output()
            .unwrap();
        assert!(
            cc.status.success(),
            "{}",
            String::from_utf8_lossy(&cc.stderr)
        );
        let out = Command::new(&exe).output().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let c: std::collections::HashMap<String, usize> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
            .collect();
        type N = NegotiateLayerInterface;
        type I = LayerInstanceLink;
        type D = LayerDeviceLink;
        type C = LayerCreateInfo;
        let rust = [
            ("VkNegotiateLayerInterface", size_of::<N>()),
            ("VkNegotiateLayerInterface.sType", offset_of!(N, s_type)),
            ("VkNegotiateLayerInterface.pNext", offset_of!(N, p_next)),
            (
                "VkNegotiateLayerInterface.loaderLayerInterfaceVersion",
                offset_of!(N, loader_layer_interface_version),
            ),
            (
                "VkNegotiateLayerInterface.pfnGetInstanceProcAddr",
                offset_of!(N, pfn_get_instance_proc_addr),
            ),
            (
                "VkNegotiateLayerInterface.pfnGetDeviceProcAddr",
                offset_of!(N, pfn_get_device_proc_addr),
            ),
            (
                "VkNegotiateLayerInterface.pfnGetPhysicalDeviceProcAddr",
                offset_of!(N, pfn_get_physical_device_proc_addr),
            ),
            ("VkLayerInstanceLink", size_of::<I>()),
            ("VkLayerInstanceLink.pNext", offset_of!(I, p_next)),
            (
                "VkLayerInstanceLink.pfnNextGetInstanceProcAddr",
                offset_of!(I, pfn_next_get_instance_proc_addr),
            ),
            (
                "VkLayerInstanceLink.pfnNextGetPhysicalDeviceProcAddr",
                offset_of!(I, pfn_next_get_physical_device_proc_addr),
            ),
            ("VkLayerDeviceLink", size_of::<D>()),
            ("VkLayerDeviceLink.pNext", offset_of!(D, p_next)),
            (
                "VkLayerDeviceLink.pfnNextGetInstanceProcAddr",
                offset_of!(D, pfn_next_get_instance_proc_addr),
            ),
            (
                "VkLayerDeviceLink.pfnNextGetDeviceProcAddr",
                offset_of!(D, pfn_next_get_device_proc_addr),
            ),
            // The instance create info's union is the widest, two pointers.
            ("VkLayerInstanceCreateInfo", size_of::<C>()),
            ("VkLayerInstanceCreateInfo.sType", offset_of!(C, s_type)),
            ("VkLayerInstanceCreateInfo.pNext", offset_of!(C, p_next)),
            (
                "VkLayerInstanceCreateInfo.function",
                offset_of!(C, function),
            ),
            ("VkLayerInstanceCreateInfo.u", offset_of!(C, u)),
            ("VkLayerDeviceCreateInfo.sType", offset_of!(C, s_type)),
            ("VkLayerDeviceCreateInfo.pNext", offset_of!(C, p_next)),
            ("VkLayerDeviceCreateInfo.function", offset_of!(C, function)),
            ("VkLayerDeviceCreateInfo.u", offset_of!(C, u)),
            (
                "LAYER_NEGOTIATE_INTERFACE_STRUCT",
                LAYER_NEGOTIATE_INTERFACE_STRUCT as usize,
            ),
            ("VK_LAYER_LINK_INFO", VK_LAYER_LINK_INFO as usize),
            ("VK_LOADER_DATA_CALLBACK", VK_LOADER_DATA_CALLBACK as usize),
        ];
        for (name, value) in rust {
            assert_eq!(c.get(name), Some(&value), "{name}");
        }
        // The loader may be newer than the interface we speak; never older.
        assert!(c["CURRENT_LOADER_LAYER_INTERFACE_VERSION"] >= LAYER_INTERFACE_VERSION as usize);
    }
}
