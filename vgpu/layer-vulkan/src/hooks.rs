//! The layer's entry points: negotiation, the two proc-address lookups, and the intercepted
//! instance and device functions. Each runs under the kit's guard ([`crate::ffi`]).

#![allow(non_snake_case)] // the exported names are Vulkan's

use std::ffi::{CStr, c_char, c_void};
use std::sync::Mutex;

use ash::vk;

use crate::chain::{self, LayerDeviceLink, LayerInstanceLink, NegotiateLayerInterface};
use crate::ffi::{guarded, guarded_other};
use crate::{DeviceData, InstanceData, LAYER_NAME, client, devices, instances, lookup};

fn raw<H: vk::Handle>(h: H) -> *mut c_void {
    h.as_raw() as usize as *mut c_void
}

/// Look `name` up with a `vkGet*ProcAddr` and cast it to `F`.
macro_rules! next_fn {
    ($get:expr, $handle:expr, $name:literal, $ty:ty) => {{
        // SAFETY: the next layer's lookup with a live handle and a NUL-terminated name.
        let f = unsafe { ($get)($handle, concat!($name, "\0").as_ptr().cast()) };
        // SAFETY: the loader returns the function of that name, whose type is `$ty`.
        f.map(|f| unsafe { std::mem::transmute::<unsafe extern "system" fn(), $ty>(f) })
    }};
}

// ---------------------------------------------------------------------------------------------
// Negotiation and lookups.

/// The loader's first call: agree on interface version 2 and hand over our lookups.
#[unsafe(no_mangle)]
pub unsafe extern "system" fn vkNegotiateLoaderLayerInterfaceVersion(
    p: *mut NegotiateLayerInterface,
) -> vk::Result {
    guarded("vkNegotiateLoaderLayerInterfaceVersion", || {
        if p.is_null() {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        }
        // SAFETY: the loader passes a valid negotiation struct.
        let n = unsafe { &mut *p };
        if n.s_type != chain::LAYER_NEGOTIATE_INTERFACE_STRUCT
            || n.loader_layer_interface_version < chain::LAYER_INTERFACE_VERSION
        {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        }
        n.loader_layer_interface_version = chain::LAYER_INTERFACE_VERSION;
        n.pfn_get_instance_proc_addr = Some(vkGetInstanceProcAddr);
        n.pfn_get_device_proc_addr = Some(vkGetDeviceProcAddr);
        n.pfn_get_physical_device_proc_addr = None;
        vk::Result::SUCCESS
    })
}

/// Our function of this name, if we intercept it.
fn hook(name: &[u8]) -> vk::PFN_vkVoidFunction {
    macro_rules! table {
        ($($name:literal => $f:expr, $ty:ty;)*) => {
            match name {
                $($name => Some(
                    // SAFETY: a function pointer cast to the generic one the API returns.
                    unsafe { std::mem::transmute::<$ty, unsafe extern "system" fn()>($f) }
                ),)*
                _ => None,
            }
        };
    }
    table! {
        b"vkGetInstanceProcAddr" => vkGetInstanceProcAddr, vk::PFN_vkGetInstanceProcAddr;
        b"vkGetDeviceProcAddr" => vkGetDeviceProcAddr, vk::PFN_vkGetDeviceProcAddr;
        b"vkCreateInstance" => create_instance, vk::PFN_vkCreateInstance;
        b"vkDestroyInstance" => destroy_instance, vk::PFN_vkDestroyInstance;
        b"vkEnumeratePhysicalDevices" => enumerate_physical_devices, vk::PFN_vkEnumeratePhysicalDevices;
        b"vkEnumeratePhysicalDeviceGroups" => enumerate_groups, vk::PFN_vkEnumeratePhysicalDeviceGroups;
        b"vkEnumeratePhysicalDeviceGroupsKHR" => enumerate_groups, vk::PFN_vkEnumeratePhysicalDeviceGroups;
        b"vkGetPhysicalDeviceMemoryProperties" => memory_properties, vk::PFN_vkGetPhysicalDeviceMemoryProperties;
        b"vkGetPhysicalDeviceMemoryProperties2" => memory_properties2, vk::PFN_vkGetPhysicalDeviceMemoryProperties2;
        b"vkGetPhysicalDeviceMemoryProperties2KHR" => memory_properties2, vk::PFN_vkGetPhysicalDeviceMemoryProperties2;
        b"vkEnumerateDeviceExtensionProperties" => enumerate_device_extensions, vk::PFN_vkEnumerateDeviceExtensionProperties;
        b"vkCreateDevice" => create_device, vk::PFN_vkCreateDevice;
        b"vkDestroyDevice" => destroy_device, vk::PFN_vkDestroyDevice;
        b"vkAllocateMemory" => allocate_memory, vk::PFN_vkAllocateMemory;
        b"vkFreeMemory" => free_memory, vk::PFN_vkFreeMemory;
        b"vkGetDeviceQueue" => get_device_queue, vk::PFN_vkGetDeviceQueue;
        b"vkGetDeviceQueue2" => get_device_queue2, vk::PFN_vkGetDeviceQueue2;
        b"vkQueueSubmit" => queue_submit, vk::PFN_vkQueueSubmit;
        b"vkQueueSubmit2" => queue_submit2, vk::PFN_vkQueueSubmit2;
        b"vkQueueSubmit2KHR" => queue_submit2, vk::PFN_vkQueueSubmit2;
    }
}

/// Device-level functions we intercept (what `vkGetDeviceProcAddr` may answer with ours).
fn is_device_hook(name: &[u8]) -> bool {
    matches!(
        name,
        b"vkGetDeviceProcAddr"
            | b"vkDestroyDevice"
            | b"vkAllocateMemory"
            | b"vkFreeMemory"
            | b"vkGetDeviceQueue"
            | b"vkGetDeviceQueue2"
            | b"vkQueueSubmit"
            | b"vkQueueSubmit2"
            | b"vkQueueSubmit2KHR"
    )
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn vkGetInstanceProcAddr(
    instance: vk::Instance,
    name: *const c_char,
) -> vk::PFN_vkVoidFunction {
    guarded_other("vkGetInstanceProcAddr", || {
        if name.is_null() {
            return None;
        }
        // SAFETY: the caller passes a NUL-terminated function name.
        let n = unsafe { CStr::from_ptr(name) }.to_bytes();
        if let Some(f) = hook(n) {
            return Some(f);
        }
        let data = lookup(instances(), raw(instance))?;
        // SAFETY: the next layer's lookup, with its instance and the caller's name.
        unsafe { (data.gipa)(data.handle, name) }
    })
}

#[unsafe(no_mangle)]
pub unsafe extern "system" fn vkGetDeviceProcAddr(
    device: vk::Device,
    name: *const c_char,
) -> vk::PFN_vkVoidFunction {
    guarded_other("vkGetDeviceProcAddr", || {
        if name.is_null() {
            return None;
        }
        // SAFETY: the caller passes a NUL-terminated function name.
        let n = unsafe { CStr::from_ptr(name) }.to_bytes();
        let data = lookup(devices(), raw(device))?;
        if is_device_hook(n) {
            // Only what the next layer has (vkQueueSubmit2 needs Vulkan 1.3 or the extension).
            // SAFETY: the next layer's lookup, with its device and the caller's name.
            unsafe { (data.gdpa)(data.handle, name) }?;
            return hook(n);
        }
        // SAFETY: as above.
        unsafe { (data.gdpa)(data.handle, name) }
    })
}

// ---------------------------------------------------------------------------------------------
// Instances and physical devices.

unsafe extern "system" fn create_instance(
    info: *const vk::InstanceCreateInfo<'_>,
    allocator: *const vk::AllocationCallbacks<'_>,
    out: *mut vk::Instance,
) -> vk::Result {
    guarded("vkCreateInstance", || {
        if info.is_null() || out.is_null() {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        }
        // SAFETY: the loader's create info, whose chain holds its link info for us.
        let link = unsafe {
            chain::find(
                (*info).p_next,
                vk::StructureType::LOADER_INSTANCE_CREATE_INFO,
                chain::VK_LAYER_LINK_INFO,
            )
        };
        let Some(link) = link else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        // SAFETY: the loader's link info: its first union member is the chain of layers below.
        let layer = unsafe { (*link).u[0] } as *mut LayerInstanceLink;
        if layer.is_null() {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        }
        // SAFETY: the loader's link for us; we step it to the next layer before calling down,
        // as the interface requires.
        let gipa = unsafe { (*layer).pfn_next_get_instance_proc_addr };
        // SAFETY: as above.
        unsafe { (*link).u[0] = (*layer).p_next.cast() };
        let Some(create) = next_fn!(
            gipa,
            vk::Instance::null(),
            "vkCreateInstance",
            vk::PFN_vkCreateInstance
        ) else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        // SAFETY: the caller's arguments, passed down unchanged.
        let r = unsafe { create(info, allocator, out) };
        if r != vk::Result::SUCCESS {
            return r;
        }
        // SAFETY: the instance the next layer just created.
        let handle = unsafe { *out };
        // SAFETY: the next layer's functions for that instance.
        let next = unsafe {
            ash::Instance::load_with(
                |name| std::mem::transmute(gipa(handle, name.as_ptr())),
                handle,
            )
        };
        macro_rules! either {
            ($core:literal, $khr:literal, $ty:ty) => {
                next_fn!(gipa, handle, $core, $ty).or_else(|| next_fn!(gipa, handle, $khr, $ty))
            };
        }
        let data = InstanceData {
            handle,
            gipa,
            next,
            properties2: either!(
                "vkGetPhysicalDeviceProperties2",
                "vkGetPhysicalDeviceProperties2KHR",
                vk::PFN_vkGetPhysicalDeviceProperties2
            ),
            memory_properties2: either!(
                "vkGetPhysicalDeviceMemoryProperties2",
                "vkGetPhysicalDeviceMemoryProperties2KHR",
                vk::PFN_vkGetPhysicalDeviceMemoryProperties2
            ),
            groups: either!(
                "vkEnumeratePhysicalDeviceGroups",
                "vkEnumeratePhysicalDeviceGroupsKHR",
                vk::PFN_vkEnumeratePhysicalDeviceGroups
            ),
        };
        crate::insert(instances(), raw(handle), data);
        // The vGPU is read now, not on the first allocation.
        let _ = client();
        vk::Result::SUCCESS
    })
}

unsafe extern "system" fn destroy_instance(
    instance: vk::Instance,
    allocator: *const vk::AllocationCallbacks<'_>,
) {
    guarded_other("vkDestroyInstance", || {
        if let Some(data) = crate::remove(instances(), raw(instance)) {
            // SAFETY: the caller's instance, destroyed by the next layer.
            unsafe { (data.next.fp_v1_0().destroy_instance)(instance, allocator) };
        }
    })
}

/// The next layer's physical devices of `instance`, all of them.
fn all_physical_devices(data: &InstanceData) -> Result<Vec<vk::PhysicalDevice>, vk::Result> {
    // SAFETY: the next layer's function for its instance.
    unsafe { data.next.enumerate_physical_devices() }
}

/// Whether `pd` is the vGPU's device.
fn is_vgpu_device(data: &InstanceData, pd: vk::PhysicalDevice, uuid: &str) -> bool {
    let Some(f) = data.properties2 else {
        return false;
    };
    let mut id = vk::PhysicalDeviceIDProperties::default();
    let mut props = vk::PhysicalDeviceProperties2::default().push_next(&mut id);
    // SAFETY: the next layer's function, with its physical device and a chain on our stack.
    unsafe { f(pd, &mut props) };
    tf_hal::DeviceUuid::from_bytes(id.device_uuid).matches(uuid)
}

/// The devices the program may see: the vGPU's device where the loader reports it, otherwise
/// all of them (and all are limited).
fn visible(data: &InstanceData, all: Vec<vk::PhysicalDevice>) -> Vec<vk::PhysicalDevice> {
    let Some(c) = client() else {
        return all;
    };
    let uuid = c.device_uuid();
    let mine: Vec<vk::PhysicalDevice> = all
        .iter()
        .copied()
        .filter(|&pd| is_vgpu_device(data, pd, uuid))
        .collect();
    if mine.is_empty() {
        if tf_os::first_time("tf-vulkan-layer: no vGPU device") {
            tracing::warn!(
                "{LAYER_NAME}: no Vulkan device has the vGPU's UUID {uuid}; every device is limited"
            );
        }
        return all;
    }
    mine
}

/// Answer a Vulkan "count, then fill" query with `items`.
fn answer<T: Copy>(items: &[T], count: *mut u32, out: *mut T) -> vk::Result {
    if count.is_null() {
        return vk::Result::ERROR_INITIALIZATION_FAILED;
    }
    if out.is_null() {
        // SAFETY: the caller's count.
        unsafe { *count = items.len() as u32 };
        return vk::Result::SUCCESS;
    }
    // SAFETY: the caller's array has room for *count items.
    let room = unsafe { *count } as usize;
    let n = room.min(items.len());
    // SAFETY: n <= the caller's room; our items are plain values.
    unsafe {
        std::ptr::copy_nonoverlapping(items.as_ptr(), out, n);
        *count = n as u32;
    }
    if n < items.len() {
        vk::Result::INCOMPLETE
    } else {
        vk::Result::SUCCESS
    }
}

unsafe extern "system" fn enumerate_physical_devices(
    instance: vk::Instance,
    count: *mut u32,
    out: *mut vk::PhysicalDevice,
) -> vk::Result {
    guarded("vkEnumeratePhysicalDevices", || {
        let Some(data) = lookup(instances(), raw(instance)) else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        match all_physical_devices(&data) {
            Ok(all) => answer(&visible(&data, all), count, out),
            Err(r) => r,
        }
    })
}

unsafe extern "system" fn enumerate_groups(
    instance: vk::Instance,
    count: *mut u32,
    out: *mut vk::PhysicalDeviceGroupProperties<'_>,
) -> vk::Result {
    guarded("vkEnumeratePhysicalDeviceGroups", || {
        let Some(data) = lookup(instances(), raw(instance)) else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        let all = match all_physical_devices(&data) {
            Ok(a) => a,
            Err(r) => return r,
        };
        let shown = visible(&data, all.clone());
        if shown.len() == all.len() || count.is_null() {
            // Nothing hidden: the next layer answers.
            let Some(f) = data.groups else {
                return vk::Result::ERROR_INITIALIZATION_FAILED;
            };
            // SAFETY: the caller's arguments, passed down unchanged.
            return unsafe { f(instance, count, out) };
        }
        // One group per visible device.
        if out.is_null() {
            // SAFETY: the caller's count (checked non-null above).
            unsafe { *count = shown.len() as u32 };
            return vk::Result::SUCCESS;
        }
        // SAFETY: the caller's count and array of that many initialised structs.
        let room = unsafe { *count } as usize;
        let n = room.min(shown.len());
        for (i, &pd) in shown.iter().take(n).enumerate() {
            // SAFETY: i < the caller's room; we keep its sType and pNext.
            unsafe {
                let g = &mut *out.add(i);
                g.physical_device_count = 1;
                g.physical_devices = [vk::PhysicalDevice::null(); vk::MAX_DEVICE_GROUP_SIZE];
                g.physical_devices[0] = pd;
                g.subset_allocation = vk::FALSE;
            }
        }
        // SAFETY: the caller's count.
        unsafe { *count = n as u32 };
        if n < shown.len() {
            vk::Result::INCOMPLETE
        } else {
            vk::Result::SUCCESS
        }
    })
}

/// Show the quota as the size of every device-local heap.
fn clamp_heaps(props: &mut vk::PhysicalDeviceMemoryProperties) {
    let Some(quota) = client().and_then(|c| c.vram_quota()) else {
        return;
    };
    let n = (props.memory_heap_count as usize).min(vk::MAX_MEMORY_HEAPS);
    for h in &mut props.memory_heaps[..n] {
        if h.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL) {
            h.size = h.size.min(quota);
        }
    }
}

unsafe extern "system" fn memory_properties(
    pd: vk::PhysicalDevice,
    out: *mut vk::PhysicalDeviceMemoryProperties,
) {
    guarded_other("vkGetPhysicalDeviceMemoryProperties", || {
        let Some(data) = lookup(instances(), raw(pd)) else {
            return;
        };
        // SAFETY: the caller's arguments, passed down unchanged.
        unsafe { (data.next.fp_v1_0().get_physical_device_memory_properties)(pd, out) };
        if !out.is_null() {
            // SAFETY: the caller's struct, just filled in.
            clamp_heaps(unsafe { &mut *out });
        }
    })
}

unsafe extern "system" fn memory_properties2(
    pd: vk::PhysicalDevice,
    out: *mut vk::PhysicalDeviceMemoryProperties2<'_>,
) {
    guarded_other("vkGetPhysicalDeviceMemoryProperties2", || {
        let Some(data) = lookup(instances(), raw(pd)) else {
            return;
        };
        if out.is_null() {
            return;
        }
        let f = data.memory_properties2;
        let driver_budget = driver_has_budget(&data, pd);
        match f {
            // SAFETY: the caller's arguments, passed down unchanged.
            Some(f) => unsafe { f(pd, out) },
            // SAFETY: as above, through the 1.0 query.
            None => unsafe {
                (data.next.fp_v1_0().get_physical_device_memory_properties)(
                    pd,
                    &mut (*out).memory_properties,
                )
            },
        }
        // SAFETY: the caller's struct and its chain, just filled in.
        unsafe {
            let props = &mut (*out).memory_properties;
            let original = *props;
            clamp_heaps(props);
            let mut next = (*out).p_next;
            while !next.is_null() {
                let base = next as *mut vk::BaseOutStructure<'_>;
                if (*base).s_type == vk::StructureType::PHYSICAL_DEVICE_MEMORY_BUDGET_PROPERTIES_EXT
                {
                    fill_budget(
                        &mut *(next as *mut vk::PhysicalDeviceMemoryBudgetPropertiesEXT<'_>),
                        &original,
                        driver_budget,
                    );
                }
                next = (*base).p_next.cast();
            }
        }
    })
}

/// `VK_EXT_memory_budget` as the vGPU sees it: on device-local heaps the budget is at most
/// the quota and the usage is the vGPU's; where the driver lacks the extension, the layer
/// fills it in (other heaps: their size, and no usage known).
fn fill_budget(
    b: &mut vk::PhysicalDeviceMemoryBudgetPropertiesEXT<'_>,
    props: &vk::PhysicalDeviceMemoryProperties,
    driver_filled: bool,
) {
    let n = (props.memory_heap_count as usize).min(vk::MAX_MEMORY_HEAPS);
    let quota = client().and_then(|c| c.vram_quota());
    let used = client().map_or(0, |c| c.vram_used());
    // The vGPU's usage goes on its largest device-local heap.
    let main = (0..n)
        .filter(|&i| {
            props.memory_heaps[i]
                .flags
                .contains(vk::MemoryHeapFlags::DEVICE_LOCAL)
        })
        .max_by_key(|&i| props.memory_heaps[i].size);
    for i in 0..n {
        let heap = props.memory_heaps[i];
        if !driver_filled {
            b.heap_budget[i] = heap.size;
            b.heap_usage[i] = 0;
        }
        if heap.flags.contains(vk::MemoryHeapFlags::DEVICE_LOCAL) && client().is_some() {
            if let Some(q) = quota {
                b.heap_budget[i] = b.heap_budget[i].min(q);
            }
            b.heap_usage[i] = if Some(i) == main { used } else { 0 };
        }
    }
    for i in n..vk::MAX_MEMORY_HEAPS {
        b.heap_budget[i] = 0;
        b.heap_usage[i] = 0;
    }
}

/// Device extensions the next layer (the driver) has.
fn driver_extensions(data: &InstanceData, pd: vk::PhysicalDevice) -> Vec<vk::ExtensionProperties> {
    // SAFETY: the next layer's function with its physical device.
    unsafe { data.next.enumerate_device_extension_properties(pd) }.unwrap_or_default()
}

fn driver_has_budget(data: &InstanceData, pd: vk::PhysicalDevice) -> bool {
    driver_extensions(data, pd).iter().any(|e| {
        e.extension_name_as_c_str()
            .is_ok_and(|n| n == ash::ext::memory_budget::NAME)
    })
}

fn budget_extension() -> vk::ExtensionProperties {
    vk::ExtensionProperties::default()
        .spec_version(1)
        .extension_name(ash::ext::memory_budget::NAME)
        .unwrap_or_default()
}

unsafe extern "system" fn enumerate_device_extensions(
    pd: vk::PhysicalDevice,
    layer: *const c_char,
    count: *mut u32,
    out: *mut vk::ExtensionProperties,
) -> vk::Result {
    guarded("vkEnumerateDeviceExtensionProperties", || {
        let ours = !layer.is_null()
            // SAFETY: the caller's NUL-terminated layer name.
            && unsafe { CStr::from_ptr(layer) }.to_bytes() == LAYER_NAME.as_bytes();
        if ours {
            return answer(&[budget_extension()], count, out);
        }
        let Some(data) = lookup(instances(), raw(pd)) else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        if !layer.is_null() {
            // Another layer's extensions: not ours to answer.
            // SAFETY: the caller's arguments, passed down unchanged.
            return unsafe {
                (data.next.fp_v1_0().enumerate_device_extension_properties)(pd, layer, count, out)
            };
        }
        let mut all = driver_extensions(&data, pd);
        if !all.iter().any(|e| {
            e.extension_name_as_c_str()
                .is_ok_and(|n| n == ash::ext::memory_budget::NAME)
        }) {
            all.push(budget_extension());
        }
        answer(&all, count, out)
    })
}

// ---------------------------------------------------------------------------------------------
// Devices.

unsafe extern "system" fn create_device(
    pd: vk::PhysicalDevice,
    info: *const vk::DeviceCreateInfo<'_>,
    allocator: *const vk::AllocationCallbacks<'_>,
    out: *mut vk::Device,
) -> vk::Result {
    guarded("vkCreateDevice", || {
        if info.is_null() || out.is_null() {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        }
        let Some(inst) = lookup(instances(), raw(pd)) else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        // SAFETY: the loader's create info, whose chain holds its link info and callback.
        let (link, callback) = unsafe {
            (
                chain::find(
                    (*info).p_next,
                    vk::StructureType::LOADER_DEVICE_CREATE_INFO,
                    chain::VK_LAYER_LINK_INFO,
                ),
                chain::find(
                    (*info).p_next,
                    vk::StructureType::LOADER_DEVICE_CREATE_INFO,
                    chain::VK_LOADER_DATA_CALLBACK,
                ),
            )
        };
        let Some(link) = link else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        // SAFETY: the loader's link info: its first union member is the chain below us.
        let layer = unsafe { (*link).u[0] } as *mut LayerDeviceLink;
        if layer.is_null() {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        }
        // SAFETY: the loader's link for us, stepped to the next layer before calling down.
        let (gipa, gdpa) = unsafe {
            (
                (*layer).pfn_next_get_instance_proc_addr,
                (*layer).pfn_next_get_device_proc_addr,
            )
        };
        // SAFETY: as above.
        unsafe { (*link).u[0] = (*layer).p_next.cast() };
        let set_loader_data = callback.map(|c| {
            // SAFETY: the loader's callback member, a PFN_vkSetDeviceLoaderData.
            unsafe { std::mem::transmute::<*mut c_void, chain::PfnSetDeviceLoaderData>((*c).u[0]) }
        });
        let Some(create) = next_fn!(gipa, inst.handle, "vkCreateDevice", vk::PFN_vkCreateDevice)
        else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        // VK_EXT_memory_budget is ours when the driver lacks it: not passed down.
        let driver_budget = driver_has_budget(&inst, pd);
        // SAFETY: the caller's create info and its extension names.
        let names: Vec<*const c_char> = unsafe {
            let i = &*info;
            (0..i.enabled_extension_count as usize)
                .map(|k| *i.pp_enabled_extension_names.add(k))
                .filter(|&n| {
                    driver_budget
                        || n.is_null()
                        || CStr::from_ptr(n) != ash::ext::memory_budget::NAME
                })
                .collect()
        };
        // SAFETY: a copy of the caller's create info (same chain), with our extension list.
        let mut mine = unsafe { *info };
        mine.enabled_extension_count = names.len() as u32;
        mine.pp_enabled_extension_names = names.as_ptr();
        // SAFETY: the next layer's vkCreateDevice with the caller's arguments (ours live
        // across the call).
        let r = unsafe { create(pd, &mine, allocator, out) };
        if r != vk::Result::SUCCESS {
            return r;
        }
        // SAFETY: the device the next layer just created.
        let handle = unsafe { *out };
        // SAFETY: the next layer's functions for that device.
        let next = unsafe {
            ash::Device::load_with(
                |name| std::mem::transmute(gdpa(handle, name.as_ptr())),
                handle,
            )
        };
        // SAFETY: queries of the next layer with the caller's physical device.
        let (memory, families, props) = unsafe {
            (
                inst.next.get_physical_device_memory_properties(pd),
                inst.next.get_physical_device_queue_family_properties(pd),
                inst.next.get_physical_device_properties(pd),
            )
        };
        let types = &memory.memory_types[..memory.memory_type_count as usize];
        let device_local_types = types
            .iter()
            .map(|t| {
                memory.memory_heaps[t.heap_index as usize]
                    .flags
                    .contains(vk::MemoryHeapFlags::DEVICE_LOCAL)
            })
            .collect();
        let host_type = types
            .iter()
            .position(|t| {
                t.property_flags.contains(
                    vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
                )
            })
            .map(|i| i as u32);
        crate::insert(
            devices(),
            raw(handle),
            DeviceData {
                handle,
                gdpa,
                next,
                set_loader_data,
                device_local_types,
                charged: Mutex::default(),
                queue_family: Mutex::default(),
                timestamp_period: props.limits.timestamp_period as f64,
                families: families
                    .iter()
                    .map(|f| {
                        (
                            f.timestamp_valid_bits,
                            f.queue_flags
                                .intersects(vk::QueueFlags::COMPUTE | vk::QueueFlags::GRAPHICS),
                        )
                    })
                    .collect(),
                host_type,
                samplers: Mutex::default(),
                submit2: next_fn!(gdpa, handle, "vkQueueSubmit2", vk::PFN_vkQueueSubmit2).or_else(
                    || next_fn!(gdpa, handle, "vkQueueSubmit2KHR", vk::PFN_vkQueueSubmit2),
                ),
            },
        );
        vk::Result::SUCCESS
    })
}

unsafe extern "system" fn destroy_device(
    device: vk::Device,
    allocator: *const vk::AllocationCallbacks<'_>,
) {
    guarded_other("vkDestroyDevice", || {
        let Some(data) = crate::remove(devices(), raw(device)) else {
            return;
        };
        crate::sampler::destroy_all(&data);
        // What the device still holds goes back with it.
        let held: u64 = crate::lock(&data.charged).drain().map(|(_, n)| n).sum();
        if held > 0
            && let Some(c) = client()
        {
            c.uncharge(held);
        }
        // SAFETY: the caller's device, destroyed by the next layer.
        unsafe { (data.next.fp_v1_0().destroy_device)(device, allocator) };
    })
}

unsafe extern "system" fn allocate_memory(
    device: vk::Device,
    info: *const vk::MemoryAllocateInfo<'_>,
    allocator: *const vk::AllocationCallbacks<'_>,
    out: *mut vk::DeviceMemory,
) -> vk::Result {
    guarded("vkAllocateMemory", || {
        let Some(data) = lookup(devices(), raw(device)) else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        let call = || {
            // SAFETY: the caller's arguments, passed down unchanged.
            unsafe { (data.next.fp_v1_0().allocate_memory)(device, info, allocator, out) }
        };
        let Some(c) = client() else {
            return call();
        };
        if info.is_null() || out.is_null() {
            return call();
        }
        // SAFETY: the caller's allocate info.
        let (size, type_index) = unsafe { ((*info).allocation_size, (*info).memory_type_index) };
        let charged = data
            .device_local_types
            .get(type_index as usize)
            .copied()
            .unwrap_or(false);
        if !charged {
            return call();
        }
        if !c.charge(size) {
            tracing::debug!(size, "vkAllocateMemory refused: past the vGPU's VRAM quota");
            return vk::Result::ERROR_OUT_OF_DEVICE_MEMORY;
        }
        let r = call();
        if r == vk::Result::SUCCESS {
            // SAFETY: the handle the next layer just wrote.
            let memory = unsafe { *out };
            crate::lock(&data.charged).insert(vk::Handle::as_raw(memory), size);
        } else {
            c.uncharge(size);
        }
        r
    })
}

unsafe extern "system" fn free_memory(
    device: vk::Device,
    memory: vk::DeviceMemory,
    allocator: *const vk::AllocationCallbacks<'_>,
) {
    guarded_other("vkFreeMemory", || {
        let Some(data) = lookup(devices(), raw(device)) else {
            return;
        };
        let size = crate::lock(&data.charged).remove(&vk::Handle::as_raw(memory));
        // SAFETY: the caller's arguments, passed down unchanged.
        unsafe { (data.next.fp_v1_0().free_memory)(device, memory, allocator) };
        if let (Some(n), Some(c)) = (size, client()) {
            c.uncharge(n);
        }
    })
}

unsafe extern "system" fn get_device_queue(
    device: vk::Device,
    family: u32,
    index: u32,
    out: *mut vk::Queue,
) {
    guarded_other("vkGetDeviceQueue", || {
        let Some(data) = lookup(devices(), raw(device)) else {
            return;
        };
        // SAFETY: the caller's arguments, passed down unchanged.
        unsafe { (data.next.fp_v1_0().get_device_queue)(device, family, index, out) };
        if !out.is_null() {
            // SAFETY: the queue the next layer just wrote.
            let q = unsafe { *out };
            crate::lock(&data.queue_family).insert(vk::Handle::as_raw(q), family);
        }
    })
}

unsafe extern "system" fn get_device_queue2(
    device: vk::Device,
    info: *const vk::DeviceQueueInfo2<'_>,
    out: *mut vk::Queue,
) {
    guarded_other("vkGetDeviceQueue2", || {
        let Some(data) = lookup(devices(), raw(device)) else {
            return;
        };
        // SAFETY: the caller's arguments, passed down unchanged.
        unsafe { (data.next.fp_v1_1().get_device_queue2)(device, info, out) };
        if !out.is_null() && !info.is_null() {
            // SAFETY: the caller's info and the queue the next layer just wrote.
            let (q, family) = unsafe { (*out, (*info).queue_family_index) };
            crate::lock(&data.queue_family).insert(vk::Handle::as_raw(q), family);
        }
    })
}

unsafe extern "system" fn queue_submit(
    queue: vk::Queue,
    count: u32,
    submits: *const vk::SubmitInfo<'_>,
    fence: vk::Fence,
) -> vk::Result {
    guarded("vkQueueSubmit", || {
        let Some(data) = lookup(devices(), raw(queue)) else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        let batches: &[vk::SubmitInfo<'_>] = if submits.is_null() || count == 0 {
            &[]
        } else {
            // SAFETY: the caller's array of `count` submit infos.
            unsafe { std::slice::from_raw_parts(submits, count as usize) }
        };
        let work = batches.iter().any(|b| b.command_buffer_count > 0);
        if let (Some(c), true) = (client(), work) {
            c.before_launch();
            if let Some(timed) = crate::sampler::wrap_submit(&data, c, queue, batches) {
                // SAFETY: the caller's batches with our timing command buffers added (their
                // arrays live in `timed` across the call).
                let r = unsafe {
                    (data.next.fp_v1_0().queue_submit)(
                        queue,
                        timed.infos.len() as u32,
                        timed.infos.as_ptr(),
                        fence,
                    )
                };
                crate::sampler::submitted(&data, timed.family, r);
                return r;
            }
        }
        // SAFETY: the caller's arguments, passed down unchanged.
        unsafe { (data.next.fp_v1_0().queue_submit)(queue, count, submits, fence) }
    })
}

unsafe extern "system" fn queue_submit2(
    queue: vk::Queue,
    count: u32,
    submits: *const vk::SubmitInfo2<'_>,
    fence: vk::Fence,
) -> vk::Result {
    guarded("vkQueueSubmit2", || {
        let Some(data) = lookup(devices(), raw(queue)) else {
            return vk::Result::ERROR_INITIALIZATION_FAILED;
        };
        let batches: &[vk::SubmitInfo2<'_>] = if submits.is_null() || count == 0 {
            &[]
        } else {
            // SAFETY: the caller's array of `count` submit infos.
            unsafe { std::slice::from_raw_parts(submits, count as usize) }
        };
        let Some(f) = data.submit2 else {
            return vk::Result::ERROR_FEATURE_NOT_PRESENT;
        };
        let work = batches.iter().any(|b| b.command_buffer_info_count > 0);
        if let (Some(c), true) = (client(), work) {
            c.before_launch();
            if let Some(timed) = crate::sampler::wrap_submit2(&data, c, queue, batches) {
                // SAFETY: the caller's batches with our timing command buffers added (their
                // arrays live in `timed` across the call).
                let r = unsafe { f(queue, timed.infos.len() as u32, timed.infos.as_ptr(), fence) };
                crate::sampler::submitted(&data, timed.family, r);
                return r;
            }
        }
        match Some(f) {
            // SAFETY: the next layer's vkQueueSubmit2 (or its KHR alias) with the caller's
            // arguments, passed down unchanged.
            Some(f) => unsafe { f(queue, count, submits, fence) },
            None => vk::Result::ERROR_FEATURE_NOT_PRESENT,
        }
    })
}
