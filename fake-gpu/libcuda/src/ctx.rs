//! Initialisation, devices, and contexts.

use std::ffi::c_char;

use tf_cuda_abi::driver::*;

use crate::ffi::{out, write_str_truncated};
use crate::state::*;

/// The CUDA version this driver reports (that of the header the ABI was generated from).
pub const DRIVER_VERSION: i32 = tf_cuda_abi::driver::CUDA_VERSION as i32;

pub fn driver_get_version(v: *mut i32) -> CuResult {
    out(v, DRIVER_VERSION)
}

pub fn device_get(d: *mut i32, ordinal: i32) -> CuResult {
    device(ordinal)?;
    out(d, ordinal)
}

pub fn device_count(c: *mut i32) -> CuResult {
    out(c, driver()?.visible.len() as i32)
}

pub fn device_name(name: *mut c_char, len: i32, dev: i32) -> CuResult {
    write_str_truncated(name, len, &device(dev)?.profile().model)
}

/// The 16 bytes of a device UUID (profiles are validated, so every UUID parses).
pub fn uuid_bytes(uuid: &str) -> [u8; 16] {
    tf_hal::DeviceUuid::parse(uuid)
        .map(|u| u.bytes())
        .unwrap_or_default()
}

pub fn device_uuid(uuid: *mut core::ffi::c_void, dev: i32) -> CuResult {
    let bytes = uuid_bytes(&device(dev)?.profile().uuid);
    out(uuid as *mut [u8; 16], bytes)
}

pub fn device_total_mem(bytes: *mut usize, dev: i32) -> CuResult {
    out(bytes, device(dev)?.profile().memory_bytes as usize)
}

pub fn compute_capability(major: *mut i32, minor: *mut i32, dev: i32) -> CuResult {
    let (a, b) = device(dev)?.profile().compute_capability;
    out(major, a as i32)?;
    out(minor, b as i32)
}

fn pci_parts(id: &str) -> (i32, i32, i32) {
    // "0000:18:00.0" or "00000000:18:00.0": domain, bus, device
    let mut it = id.split([':', '.']);
    let domain = it
        .next()
        .and_then(|s| i32::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    let bus = it
        .next()
        .and_then(|s| i32::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    let dev = it
        .next()
        .and_then(|s| i32::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    (domain, bus, dev)
}

pub fn attribute(pi: *mut i32, attrib: u32, dev: i32) -> CuResult {
    let d = device(dev)?;
    let p = d.profile();
    let (domain, bus, pdev) = pci_parts(&p.pci_bus_id);
    let (major, minor) = p.compute_capability;
    let v: i32 = match attrib {
        CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK => 1024,
        CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X | CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y => 1024,
        CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z => 64,
        CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X => i32::MAX,
        CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y | CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z => 65535,
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK => 49152,
        CU_DEVICE_ATTRIBUTE_TOTAL_CONSTANT_MEMORY => 65536,
        CU_DEVICE_ATTRIBUTE_WARP_SIZE => 32,
        CU_DEVICE_ATTRIBUTE_MAX_PITCH => i32::MAX,
        CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_BLOCK => 65536,
        CU_DEVICE_ATTRIBUTE_CLOCK_RATE => 1_980_000,
        CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT => 512,
        CU_DEVICE_ATTRIBUTE_GPU_OVERLAP => 1,
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT => p.sms as i32,
        CU_DEVICE_ATTRIBUTE_KERNEL_EXEC_TIMEOUT => 0,
        CU_DEVICE_ATTRIBUTE_INTEGRATED => 0,
        CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY => 1,
        CU_DEVICE_ATTRIBUTE_COMPUTE_MODE => 0,
        CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS => 1,
        CU_DEVICE_ATTRIBUTE_ECC_ENABLED => 1,
        CU_DEVICE_ATTRIBUTE_PCI_BUS_ID => bus,
        CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID => pdev,
        CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID => domain,
        CU_DEVICE_ATTRIBUTE_TCC_DRIVER => 0,
        CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE => 2_619_000,
        CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH => 5120,
        CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE => 50 << 20,
        CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR => 2048,
        CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT => 5,
        CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING => 1,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR => major as i32,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR => minor as i32,
        CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_GLOBAL_L1_CACHE_SUPPORTED
        | CU_DEVICE_ATTRIBUTE_LOCAL_L1_CACHE_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR => 233_472,
        CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR => 65536,
        CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY => 1,
        CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD => 0,
        CU_DEVICE_ATTRIBUTE_MULTI_GPU_BOARD_GROUP_ID => dev,
        CU_DEVICE_ATTRIBUTE_SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO => 2,
        CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS => 1,
        CU_DEVICE_ATTRIBUTE_COMPUTE_PREEMPTION_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM => 1,
        CU_DEVICE_ATTRIBUTE_COOPERATIVE_LAUNCH => 1,
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN => 232_448,
        CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR => 32,
        CU_DEVICE_ATTRIBUTE_MAX_PERSISTING_L2_CACHE_SIZE => 30 << 20,
        CU_DEVICE_ATTRIBUTE_MAX_ACCESS_POLICY_WINDOW_SIZE => 128 << 20,
        CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK => 1024,
        CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_MEMPOOL_SUPPORTED_HANDLE_TYPES => 1,
        CU_DEVICE_ATTRIBUTE_CLUSTER_LAUNCH => (major >= 9) as i32,
        CU_DEVICE_ATTRIBUTE_MEM_SYNC_DOMAIN_COUNT => 4,
        CU_DEVICE_ATTRIBUTE_NUMA_ID => p.numa_node as i32,
        a if a < CU_DEVICE_ATTRIBUTE_MAX => 0,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    out(pi, v)
}

pub fn pci_bus_id(buf: *mut c_char, len: i32, dev: i32) -> CuResult {
    let id = &device(dev)?.profile().pci_bus_id;
    // The driver API uses a 4-digit domain: "0000:18:00.0".
    let short = match id.split_once(':') {
        Some((dom, rest)) if dom.len() > 4 => format!("{}:{rest}", &dom[dom.len() - 4..]),
        _ => id.clone(),
    };
    write_str_truncated(buf, len, &short)
}

pub fn by_pci_bus_id(dev: *mut i32, id: *const c_char) -> CuResult {
    let want = pci_parts(&crate::ffi::cstr(id)?);
    let d = driver()?;
    let found = d
        .visible
        .iter()
        .position(|x| pci_parts(&x.profile().pci_bus_id) == want)
        .ok_or(CUDA_ERROR_INVALID_DEVICE)?;
    out(dev, found as i32)
}

// --- contexts ---

pub fn ctx_create(pctx: *mut *mut core::ffi::c_void, flags: u32, dev: i32) -> CuResult {
    if pctx.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let h = new_context(dev, false, flags)?;
    push_current(h);
    out(pctx, h as *mut _)
}

pub fn ctx_destroy(h: *mut core::ffi::c_void) -> CuResult {
    driver()?;
    let ctx = CONTEXTS.get(h as usize)?;
    if ctx.primary {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    // Like the driver: what the context holds goes with it.
    let _ = ctx.engine.synchronize();
    ctx.engine.device().free_all_of(ctx.engine.id());
    CONTEXTS.remove(h as usize)?;
    forget_current(h as usize);
    // Streams created in it go with it.
    for (sh, s) in STREAMS.all() {
        if s.ctx == h as usize {
            let _ = STREAMS.remove(sh);
            s.stream.close();
        }
    }
    Ok(())
}

pub fn ctx_get_current(pctx: *mut *mut core::ffi::c_void) -> CuResult {
    driver()?;
    out(pctx, current_handle().unwrap_or(0) as *mut _)
}

pub fn ctx_set_current(h: *mut core::ffi::c_void) -> CuResult {
    driver()?;
    if h.is_null() {
        set_current(None);
        return Ok(());
    }
    CONTEXTS.get(h as usize)?;
    set_current(Some(h as usize));
    Ok(())
}

pub fn ctx_push(h: *mut core::ffi::c_void) -> CuResult {
    driver()?;
    CONTEXTS.get(h as usize)?;
    push_current(h as usize);
    Ok(())
}

pub fn ctx_pop(pctx: *mut *mut core::ffi::c_void) -> CuResult {
    driver()?;
    let h = pop_current().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    if !pctx.is_null() {
        out(pctx, h as *mut _)?;
    }
    Ok(())
}

pub fn ctx_get_device(dev: *mut i32) -> CuResult {
    let (_, c) = current()?;
    out(dev, c.device)
}

pub fn ctx_synchronize() -> CuResult {
    let (_, c) = current()?;
    hal(c.engine.synchronize())
}

pub fn ctx_get_flags(flags: *mut u32) -> CuResult {
    let (_, c) = current()?;
    out(flags, *lock(&c.flags))
}

pub fn ctx_set_flags(flags: u32) -> CuResult {
    let (_, c) = current()?;
    *lock(&c.flags) = flags;
    Ok(())
}

pub fn ctx_get_id(h: *mut core::ffi::c_void, id: *mut u64) -> CuResult {
    let c = if h.is_null() {
        current()?.1
    } else {
        CONTEXTS.get(h as usize)?
    };
    out(id, c.id)
}

pub fn ctx_api_version(h: *mut core::ffi::c_void, v: *mut u32) -> CuResult {
    if !h.is_null() {
        CONTEXTS.get(h as usize)?;
    } else {
        current()?;
    }
    out(v, 12010)
}

pub fn ctx_get_limit(v: *mut usize, limit: u32) -> CuResult {
    current()?;
    let value = match limit {
        CU_LIMIT_STACK_SIZE => 1024,
        CU_LIMIT_PRINTF_FIFO_SIZE => 1 << 20,
        CU_LIMIT_MALLOC_HEAP_SIZE => 8 << 20,
        CU_LIMIT_DEV_RUNTIME_SYNC_DEPTH => 2,
        CU_LIMIT_DEV_RUNTIME_PENDING_LAUNCH_COUNT => 2048,
        CU_LIMIT_MAX_L2_FETCH_GRANULARITY => 64,
        CU_LIMIT_PERSISTING_L2_CACHE_SIZE => 0,
        _ => return Err(CUDA_ERROR_UNSUPPORTED_LIMIT),
    };
    out(v, value)
}

pub fn primary_retain(pctx: *mut *mut core::ffi::c_void, dev: i32) -> CuResult {
    let d = driver()?;
    device(dev)?;
    let h = {
        let mut prim = lock(&d.primary);
        match prim[dev as usize] {
            Some(h) => h,
            None => {
                let h = new_context(dev, true, 0)?;
                prim[dev as usize] = Some(h);
                h
            }
        }
    };
    lock(&d.primary_refs)[dev as usize] += 1;
    out(pctx, h as *mut _)
}

pub fn primary_release(dev: i32) -> CuResult {
    let d = driver()?;
    device(dev)?;
    let mut refs = lock(&d.primary_refs);
    if refs[dev as usize] == 0 {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    refs[dev as usize] -= 1;
    if refs[dev as usize] == 0 {
        // The last reference: like the driver, the primary context's memory is released.
        if let Some(h) = lock(&d.primary)[dev as usize] {
            let ctx = CONTEXTS.get(h)?;
            let _ = ctx.engine.synchronize();
            ctx.engine.device().free_all_of(ctx.engine.id());
        }
    }
    Ok(())
}

pub fn primary_reset(dev: i32) -> CuResult {
    let d = driver()?;
    device(dev)?;
    // The primary context keeps its handle; its allocations and streams are released.
    if let Some(h) = lock(&d.primary)[dev as usize] {
        let ctx = CONTEXTS.get(h)?;
        let _ = ctx.engine.synchronize();
        ctx.engine.device().free_all_of(ctx.engine.id());
    }
    lock(&d.primary_refs)[dev as usize] = 0;
    Ok(())
}

pub fn primary_state(dev: i32, flags: *mut u32, active: *mut i32) -> CuResult {
    let d = driver()?;
    device(dev)?;
    let f = match lock(&d.primary)[dev as usize] {
        Some(h) => *lock(&CONTEXTS.get(h)?.flags),
        None => 0,
    };
    out(flags, f)?;
    out(active, (lock(&d.primary_refs)[dev as usize] > 0) as i32)
}

pub fn primary_set_flags(dev: i32, flags: u32) -> CuResult {
    let d = driver()?;
    device(dev)?;
    if let Some(h) = lock(&d.primary)[dev as usize] {
        *lock(&CONTEXTS.get(h)?.flags) = flags;
    }
    Ok(())
}

pub fn default_mem_pool(pool: *mut *mut core::ffi::c_void, dev: i32) -> CuResult {
    let d = driver()?;
    device(dev)?;
    out(pool, d.default_pools[dev as usize] as *mut _)
}
