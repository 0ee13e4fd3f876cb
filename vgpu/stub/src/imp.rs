//! The driver API over a remote vGPU.

use std::ffi::{CString, c_char, c_void};
use std::sync::Arc;

use tf_cuda_abi::driver::*;
use tf_hal::{Context as _, DevicePtr, FunctionHandle, LaunchConfig, ModuleHandle};

use crate::ffi::{cstr, out, read, write_str_truncated};
use crate::state::*;
use crate::{Driver, exports};
use tf_cuda_abi::facade::{error_name, error_string, get_proc_address};

fn r(res: CuResult) -> u32 {
    crate::ffi::status(res)
}

/// The CUDA version this driver reports (that of the header the ABI was generated from).
const DRIVER_VERSION: i32 = tf_cuda_abi::driver::CUDA_VERSION as i32;

/// The remote vGPU's implementation of the driver API.
pub struct RemoteCuda;

// --- devices ---

/// Compute capability by model name (the HAL does not carry it).
fn compute_capability(model: &str) -> (i32, i32) {
    let m = model.to_ascii_uppercase();
    let table: [(&str, (i32, i32)); 12] = [
        ("B200", (10, 0)),
        ("B100", (10, 0)),
        ("H200", (9, 0)),
        ("H100", (9, 0)),
        ("H800", (9, 0)),
        ("H20", (9, 0)),
        ("GH200", (9, 0)),
        ("L40", (8, 9)),
        ("L4", (8, 9)),
        ("A100", (8, 0)),
        ("V100", (7, 0)),
        ("T4", (7, 5)),
    ];
    table
        .iter()
        .find(|(k, _)| m.contains(k))
        .map_or((8, 0), |(_, cc)| *cc)
}

fn pci_parts(id: &str) -> (i32, i32, i32) {
    let mut it = id.split([':', '.']);
    let mut next = || {
        it.next()
            .and_then(|s| i32::from_str_radix(s, 16).ok())
            .unwrap_or(0)
    };
    (next(), next(), next())
}

fn attribute(pi: *mut i32, attrib: u32, dev: i32) -> CuResult {
    let d = device(dev)?;
    let (domain, bus, pdev) = pci_parts(&d.pci_bus_id);
    let (major, minor) = compute_capability(&d.model);
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
        CU_DEVICE_ATTRIBUTE_TEXTURE_ALIGNMENT => 512,
        CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT => d.compute_units as i32,
        CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS => 1,
        CU_DEVICE_ATTRIBUTE_PCI_BUS_ID => bus,
        CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID => pdev,
        CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID => domain,
        CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR => 2048,
        CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT => 2,
        CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING => 1,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR => major,
        CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR => minor,
        CU_DEVICE_ATTRIBUTE_STREAM_PRIORITIES_SUPPORTED => 1,
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR => 233_472,
        CU_DEVICE_ATTRIBUTE_MAX_REGISTERS_PER_MULTIPROCESSOR => 65536,
        CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN => 232_448,
        CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR => 32,
        CU_DEVICE_ATTRIBUTE_NUMA_ID => d.numa_node.map_or(-1, |n| n as i32),
        // Host-coherent features a device across a network cannot offer.
        CU_DEVICE_ATTRIBUTE_MANAGED_MEMORY
        | CU_DEVICE_ATTRIBUTE_CONCURRENT_MANAGED_ACCESS
        | CU_DEVICE_ATTRIBUTE_CAN_MAP_HOST_MEMORY
        | CU_DEVICE_ATTRIBUTE_MEMORY_POOLS_SUPPORTED
        | CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED
        | CU_DEVICE_ATTRIBUTE_INTEGRATED => 0,
        a if a < CU_DEVICE_ATTRIBUTE_MAX => 0,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    out(pi, v)
}

fn uuid_bytes(uuid: &str) -> [u8; 16] {
    tf_hal::DeviceUuid::parse(uuid)
        .map(|u| u.bytes())
        .unwrap_or_default()
}

// --- contexts ---

fn ctx_create(pctx: *mut *mut c_void, flags: u32, dev: i32) -> CuResult {
    if pctx.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let h = new_context(dev, false, flags)?;
    push_current(h);
    out(pctx, h as *mut c_void)
}

fn ctx_destroy(h: *mut c_void) -> CuResult {
    driver()?;
    let c = context(h as u64)?;
    if c.primary {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    lock(&HANDLES).contexts.remove(&(h as u64));
    forget_current(h as u64);
    forget_context_objects(h as u64);
    Ok(())
}

fn primary_retain(pctx: *mut *mut c_void, dev: i32) -> CuResult {
    let d = driver()?;
    device(dev)?;
    if pctx.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
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
    out(pctx, h as *mut c_void)
}

fn primary_release(dev: i32) -> CuResult {
    let d = driver()?;
    device(dev)?;
    let mut refs = lock(&d.primary_refs);
    if refs[dev as usize] == 0 {
        return Err(CUDA_ERROR_INVALID_CONTEXT);
    }
    refs[dev as usize] -= 1;
    Ok(())
}

fn primary_state(dev: i32, flags: *mut u32, active: *mut i32) -> CuResult {
    let d = driver()?;
    device(dev)?;
    let f = match lock(&d.primary)[dev as usize] {
        Some(h) => *lock(&context(h)?.flags),
        None => 0,
    };
    out(flags, f)?;
    out(active, (lock(&d.primary_refs)[dev as usize] > 0) as i32)
}

// --- memory ---

fn mem_alloc(p: *mut u64, bytes: usize) -> CuResult {
    if p.is_null() || bytes == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let c = remote()?;
    let d = hal(c.mem_alloc(bytes as u64))?;
    out(p, d.0)
}

fn mem_free(p: u64) -> CuResult {
    if p == 0 {
        driver()?;
        return Ok(());
    }
    match device_allocation(p) {
        Some((c, base, _)) if base == p => hal(c.remote.mem_free(DevicePtr(p))),
        _ => Err(CUDA_ERROR_INVALID_VALUE),
    }
}

fn mem_info(free: *mut usize, total: *mut usize) -> CuResult {
    let m = hal(remote()?.mem_info())?;
    out(free, m.free_bytes as usize)?;
    out(total, m.total_bytes as usize)
}

fn alloc_host(pp: *mut *mut c_void, bytes: usize) -> CuResult {
    driver()?;
    if pp.is_null() || bytes == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // Page-locked memory is this process's: anonymous pages, page aligned like the driver's.
    // SAFETY: an anonymous private mapping chosen by the kernel.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            bytes,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(CUDA_ERROR_OUT_OF_MEMORY);
    }
    lock(&HANDLES).host.insert(p as u64, bytes);
    out(pp, p)
}

fn free_host(p: *mut c_void) -> CuResult {
    driver()?;
    let size = lock(&HANDLES)
        .host
        .remove(&(p as u64))
        .ok_or(CUDA_ERROR_INVALID_VALUE)?;
    // SAFETY: unmapping exactly a mapping alloc_host made, forgotten above.
    unsafe { libc::munmap(p, size) };
    Ok(())
}

fn host_allocation(p: u64) -> Option<(u64, u64)> {
    let h = lock(&HANDLES);
    let (&b, &s) = h.host.range(..=p).next_back()?;
    (p < b + s as u64).then_some((b, s as u64))
}

fn address_range(pbase: *mut u64, psize: *mut usize, ptr: u64) -> CuResult {
    let (_, base, size) = device_allocation(ptr).ok_or(CUDA_ERROR_NOT_FOUND)?;
    if !pbase.is_null() {
        out(pbase, base)?;
    }
    if !psize.is_null() {
        out(psize, size as usize)?;
    }
    Ok(())
}

fn pointer_attribute(data: *mut c_void, attr: u32, ptr: u64) -> CuResult {
    driver()?;
    if let Some((base, size)) = host_allocation(ptr) {
        return match attr {
            CU_POINTER_ATTRIBUTE_MEMORY_TYPE => out(data as *mut u32, CU_MEMORYTYPE_HOST),
            CU_POINTER_ATTRIBUTE_HOST_POINTER => out(data as *mut *mut c_void, ptr as *mut c_void),
            CU_POINTER_ATTRIBUTE_RANGE_START_ADDR => out(data as *mut u64, base),
            CU_POINTER_ATTRIBUTE_RANGE_SIZE => out(data as *mut usize, size as usize),
            CU_POINTER_ATTRIBUTE_IS_MANAGED => out(data as *mut u32, 0),
            _ => Err(CUDA_ERROR_INVALID_VALUE),
        };
    }
    let (c, base, size) = device_allocation(ptr).ok_or(CUDA_ERROR_INVALID_VALUE)?;
    match attr {
        CU_POINTER_ATTRIBUTE_CONTEXT => out(
            data as *mut *mut c_void,
            current_handle().unwrap_or(0) as *mut c_void,
        ),
        CU_POINTER_ATTRIBUTE_MEMORY_TYPE => out(data as *mut u32, CU_MEMORYTYPE_DEVICE),
        CU_POINTER_ATTRIBUTE_DEVICE_POINTER => out(data as *mut u64, ptr),
        CU_POINTER_ATTRIBUTE_IS_MANAGED => out(data as *mut u32, 0),
        CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL => out(data as *mut i32, c.device),
        CU_POINTER_ATTRIBUTE_RANGE_START_ADDR => out(data as *mut u64, base),
        CU_POINTER_ATTRIBUTE_RANGE_SIZE => out(data as *mut usize, size as usize),
        CU_POINTER_ATTRIBUTE_MAPPED => out(data as *mut u32, 1),
        CU_POINTER_ATTRIBUTE_BUFFER_ID => out(data as *mut u64, base),
        CU_POINTER_ATTRIBUTE_SYNC_MEMOPS => out(data as *mut u32, 0),
        _ => Err(CUDA_ERROR_NOT_SUPPORTED),
    }
}

/// What a copy's side is, by the entry point (`HtoD`: device destination, host source).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Device,
    Host,
    /// `cuMemcpy`: unified addressing decides.
    Any,
}

/// Whether `ptr` is device memory of the current context.
fn is_device(ptr: u64) -> bool {
    device_allocation(ptr).is_some()
}

/// `len` bytes of the caller's host memory.
///
/// # Safety
/// `p` points at `len` readable bytes (the driver API's contract for a host source).
unsafe fn host_slice<'a>(p: u64, len: usize) -> CuResult<&'a [u8]> {
    if p == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p as *const u8, len) })
}

/// # Safety
/// `p` points at `len` writable bytes (the driver API's contract for a host destination).
unsafe fn host_slice_mut<'a>(p: u64, len: usize) -> CuResult<&'a mut [u8]> {
    if p == 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) })
}

/// Copy `len` bytes; synchronous when `stream` is None (the legacy default stream's
/// semantics: after all prior work of the context).
///
/// # Safety
/// Host sides point at `len` bytes of the caller's memory (the driver API's contract).
unsafe fn copy(
    dst: u64,
    dst_is: Side,
    src: u64,
    src_is: Side,
    len: usize,
    stream: Option<*mut c_void>,
) -> CuResult {
    if len == 0 {
        driver()?;
        return Ok(());
    }
    let d_dev = match dst_is {
        Side::Device => true,
        Side::Host => false,
        Side::Any => is_device(dst),
    };
    let s_dev = match src_is {
        Side::Device => true,
        Side::Host => false,
        Side::Any => is_device(src),
    };
    let (c, s) = match stream {
        Some(h) => {
            let (c, s, _) = self::stream(h)?;
            (c.remote.clone(), Some(s))
        }
        None => (remote()?, None),
    };
    match (d_dev, s_dev) {
        (true, false) => {
            // SAFETY: the caller's contract for the host source.
            let src = unsafe { host_slice(src, len)? };
            hal(match s {
                Some(s) => c.copy_htod_async(DevicePtr(dst), src, s),
                None => c.copy_htod(DevicePtr(dst), src),
            })
        }
        (false, true) => {
            // SAFETY: the caller's contract for the host destination.
            let dst = unsafe { host_slice_mut(dst, len)? };
            hal(match s {
                Some(s) => c.copy_dtoh_async(dst, DevicePtr(src), s),
                None => c.copy_dtoh(dst, DevicePtr(src)),
            })
        }
        (true, true) => hal(match s {
            Some(s) => c.copy_dtod_async(DevicePtr(dst), DevicePtr(src), len as u64, s),
            None => c.copy_dtod(DevicePtr(dst), DevicePtr(src), len as u64),
        }),
        (false, false) => {
            if let Some(s) = s {
                hal(c.stream_synchronize(s))?;
            }
            tf_os::copy_checked(dst as usize, src as usize, len)
                .map_err(|_| CUDA_ERROR_INVALID_VALUE)
        }
    }
}

#[derive(Clone, Copy)]
enum Fill {
    U8(u8),
    U16(u16),
    U32(u32),
}

fn memset(dst: u64, fill: Fill, count: usize, stream: Option<*mut c_void>) -> CuResult {
    if count == 0 {
        driver()?;
        return Ok(());
    }
    let (c, s) = match stream {
        Some(h) => {
            let (c, s, _) = self::stream(h)?;
            (c.remote.clone(), Some(s))
        }
        None => (remote()?, None),
    };
    let (d, n) = (DevicePtr(dst), count as u64);
    hal(match (fill, s) {
        (Fill::U8(v), None) => c.memset_d8(d, v, n),
        (Fill::U16(v), None) => c.memset_d16(d, v, n),
        (Fill::U32(v), None) => c.memset_d32(d, v, n),
        (Fill::U8(v), Some(s)) => c.memset_d8_async(d, v, n, s),
        (Fill::U16(v), Some(s)) => c.memset_d16_async(d, v, n, s),
        (Fill::U32(v), Some(s)) => c.memset_d32_async(d, v, n, s),
    })
}

// --- modules ---

/// The length of a module image in memory: PTX text up to its NUL, an ELF cubin from its
/// section table, a fatbin from its header.
fn image_len(image: *const c_void) -> CuResult<(u8, usize)> {
    if image.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let head: [u8; 16] = read(image as *const [u8; 16])?;
    let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    if &head[..4] == b"\x7fELF" {
        let h: [u8; 64] = read(image as *const [u8; 64])?;
        let shoff = u64::from_le_bytes(h[40..48].try_into().unwrap_or_default());
        let shentsize = u16::from_le_bytes([h[58], h[59]]) as u64;
        let shnum = u16::from_le_bytes([h[60], h[61]]) as u64;
        let len = shoff.saturating_add(shentsize * shnum);
        return Ok((1, len.min(1 << 30) as usize));
    }
    if magic == 0xBA55_ED50 {
        let header_size = u16::from_le_bytes([head[6], head[7]]) as u64;
        let fat = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        return Ok((1, (header_size + fat).min(1 << 30) as usize));
    }
    if magic == 0x4662_43B1 {
        return Err(CUDA_ERROR_NOT_SUPPORTED);
    }
    let text = cstr(image as *const c_char).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
    Ok((0, text.len()))
}

fn module_load_bytes(m: *mut *mut c_void, ptx: bool, bytes: &[u8]) -> CuResult {
    if m.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let (h, c) = current()?;
    let image = if ptx {
        let text = std::str::from_utf8(bytes).map_err(|_| CUDA_ERROR_INVALID_IMAGE)?;
        tf_hal::ModuleImage::Ptx(text)
    } else {
        tf_hal::ModuleImage::Binary(bytes)
    };
    let module = hal(c.remote.load_module(image))?;
    lock(&HANDLES).modules.insert(module.0, h);
    out(m, module.0 as *mut c_void)
}

fn module_load_data(m: *mut *mut c_void, image: *const c_void) -> CuResult {
    current()?;
    let (kind, len) = image_len(image)?;
    // SAFETY: image_len found `len` bytes of image at `image` (text up to its NUL, checked
    // page by page; a binary's own header gives its length, as the real driver reads it).
    let bytes = unsafe { std::slice::from_raw_parts(image as *const u8, len) };
    module_load_bytes(m, kind == 0, bytes)
}

fn module_load_file(m: *mut *mut c_void, fname: *const c_char) -> CuResult {
    current()?;
    let bytes = std::fs::read(cstr(fname)?).map_err(|_| CUDA_ERROR_FILE_NOT_FOUND)?;
    let ptx = !bytes.starts_with(b"\x7fELF") && !bytes.starts_with(&0xBA55_ED50u32.to_le_bytes());
    module_load_bytes(m, ptx, &bytes)
}

fn module_unload(h: *mut c_void) -> CuResult {
    driver()?;
    let ctx = lock(&HANDLES)
        .modules
        .remove(&(h as u64))
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    lock(&HANDLES).functions.retain(|_, f| f.module != h as u64);
    let c = context(ctx)?;
    hal(c.remote.unload_module(ModuleHandle(h as u64)))
}

fn module_get_function(f: *mut *mut c_void, h: *mut c_void, name: *const c_char) -> CuResult {
    driver()?;
    if f.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let ctx = *lock(&HANDLES)
        .modules
        .get(&(h as u64))
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    let name = cstr(name)?;
    let c = context(ctx)?;
    let func = hal(c.remote.function(ModuleHandle(h as u64), &name))?;
    lock(&HANDLES).functions.insert(
        func.0,
        Arc::new(FuncObj {
            ctx,
            module: h as u64,
            name: CString::new(name).map_err(|_| CUDA_ERROR_INVALID_VALUE)?,
        }),
    );
    out(f, func.0 as *mut c_void)
}

fn func_attribute(pi: *mut i32, attrib: u32, f: *mut c_void) -> CuResult {
    function(f)?;
    let v = match attrib {
        CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK => 1024,
        CU_FUNC_ATTRIBUTE_NUM_REGS => 32,
        CU_FUNC_ATTRIBUTE_PTX_VERSION => 70,
        CU_FUNC_ATTRIBUTE_BINARY_VERSION => 90,
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES => 49152,
        CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT => -1,
        a if a < CU_FUNC_ATTRIBUTE_MAX => 0,
        _ => return Err(CUDA_ERROR_INVALID_VALUE),
    };
    out(pi, v)
}

fn param_info(f: *mut c_void, index: usize, offset: *mut usize, size: *mut usize) -> CuResult {
    let (c, _) = function(f)?;
    let sizes = hal(c.remote.param_sizes(FunctionHandle(f as u64)))?;
    tf_cuda_abi::facade::param_info(&sizes, index, offset, size)
}

/// A launch's arguments from `kernelParams` or `extra`, sized by the kernel's signature.
fn read_params(
    sizes: &[usize],
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult<Vec<Vec<u8>>> {
    tf_cuda_abi::facade::read_kernel_args(sizes, params, extra)
}

#[allow(clippy::too_many_arguments)]
fn launch(
    f: *mut c_void,
    grid: [u32; 3],
    block: [u32; 3],
    shared: u32,
    stream: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    let (fc, _) = function(f)?;
    let (sc, s, _) = self::stream(stream)?;
    if fc.id != sc.id {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    if grid.contains(&0) || block.contains(&0) {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let sizes = hal(fc.remote.param_sizes(FunctionHandle(f as u64)))?;
    let args = read_params(&sizes, params, extra)?;
    let mut ka = tf_hal::KernelArgs::new();
    for a in &args {
        ka = ka.bytes(a);
    }
    let cfg = LaunchConfig {
        grid,
        block,
        shared_mem_bytes: shared,
    };
    hal(fc.remote.launch(FunctionHandle(f as u64), &cfg, s, &ka))
}

fn launch_ex(
    config: *const c_void,
    f: *mut c_void,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    let c = read(config as *const tf_cuda_abi::CUlaunchConfig)?;
    launch(
        f,
        [c.gridDimX, c.gridDimY, c.gridDimZ],
        [c.blockDimX, c.blockDimY, c.blockDimZ],
        c.sharedMemBytes,
        c.hStream,
        params,
        extra,
    )
}

// --- streams and events ---

fn stream_create(ph: *mut *mut c_void, flags: u32, priority: i32) -> CuResult {
    let (h, c) = current()?;
    if ph.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let s = hal(c.remote.stream_create())?;
    lock(&HANDLES).streams.insert(
        s.0,
        Arc::new(StreamObj {
            ctx: h,
            flags,
            priority: priority.clamp(-5, 0),
        }),
    );
    out(ph, s.0 as *mut c_void)
}

fn stream_destroy(h: *mut c_void) -> CuResult {
    let (c, s, o) = stream(h)?;
    if o.is_none() {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    lock(&HANDLES).streams.remove(&s.0);
    hal(c.remote.stream_destroy(s))
}

fn stream_synchronize(h: *mut c_void) -> CuResult {
    let (c, s, _) = stream(h)?;
    hal(c.remote.stream_synchronize(s))
}

fn stream_query(h: *mut c_void) -> CuResult {
    let (c, s, _) = stream(h)?;
    if hal(c.remote.stream_query(s))? {
        Ok(())
    } else {
        Err(CUDA_ERROR_NOT_READY)
    }
}

fn stream_wait_event(h: *mut c_void, e: *mut c_void) -> CuResult {
    let (c, s, _) = stream(h)?;
    let (ec, ev, _) = event(e)?;
    if ec.id != c.id {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    hal(c.remote.stream_wait_event(s, ev))
}

fn event_create(ph: *mut *mut c_void, flags: u32) -> CuResult {
    let (h, c) = current()?;
    if ph.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let e = hal(c.remote.event_create())?;
    lock(&HANDLES)
        .events
        .insert(e.0, Arc::new(EventObj { ctx: h, flags }));
    out(ph, e.0 as *mut c_void)
}

fn event_destroy(e: *mut c_void) -> CuResult {
    let (c, ev, _) = event(e)?;
    lock(&HANDLES).events.remove(&ev.0);
    hal(c.remote.event_destroy(ev))
}

fn event_record(e: *mut c_void, h: *mut c_void) -> CuResult {
    let (c, ev, _) = event(e)?;
    let (sc, s, _) = stream(h)?;
    if sc.id != c.id {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    hal(c.remote.event_record(ev, s))
}

fn event_query(e: *mut c_void) -> CuResult {
    let (c, ev, _) = event(e)?;
    if hal(c.remote.event_query(ev))? {
        Ok(())
    } else {
        Err(CUDA_ERROR_NOT_READY)
    }
}

fn event_synchronize(e: *mut c_void) -> CuResult {
    let (c, ev, _) = event(e)?;
    hal(c.remote.event_synchronize(ev))
}

fn event_elapsed(ms: *mut f32, a: *mut c_void, b: *mut c_void) -> CuResult {
    let (c, ea, oa) = event(a)?;
    let (_, eb, ob) = event(b)?;
    if (oa.flags | ob.flags) & CU_EVENT_DISABLE_TIMING != 0 {
        return Err(CUDA_ERROR_INVALID_HANDLE);
    }
    let d = hal(c.remote.event_elapsed(ea, eb))?;
    out(ms, (d.as_secs_f64() * 1e3) as f32)
}

/// A host function in stream order: the stub waits for the stream, then calls it (the
/// worker cannot call back into this process).
fn host_func(h: *mut c_void, f: *mut c_void, user: *mut c_void) -> CuResult {
    if f.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    stream_synchronize(h)?;
    // SAFETY: the caller passes a CUhostFn, `void (*)(void*)` (API contract).
    let func: extern "C" fn(*mut c_void) = unsafe { std::mem::transmute(f) };
    func(user);
    Ok(())
}

const NO_STREAM: Option<*mut c_void> = None;

impl Driver for RemoteCuda {
    // --- initialisation, versions, errors, entry points ---
    unsafe fn cuInit(_flags: u32) -> u32 {
        r(init())
    }
    unsafe fn cuDriverGetVersion(v: *mut i32) -> u32 {
        r(out(v, DRIVER_VERSION))
    }
    unsafe fn cuGetErrorName(e: u32, p: *mut *const c_char) -> u32 {
        r(error_name(e).and_then(|s| out(p, s.as_ptr())))
    }
    unsafe fn cuGetErrorString(e: u32, p: *mut *const c_char) -> u32 {
        r(error_string(e).and_then(|s| out(p, s.as_ptr())))
    }
    unsafe fn cuGetProcAddress(s: *const c_char, pfn: *mut *mut c_void, v: i32, f: u64) -> u32 {
        r(get_proc_address(
            exports(),
            s,
            pfn,
            v,
            f,
            std::ptr::null_mut(),
        ))
    }
    unsafe fn cuGetProcAddress_v2(
        s: *const c_char,
        pfn: *mut *mut c_void,
        v: i32,
        f: u64,
        st: *mut u32,
    ) -> u32 {
        r(get_proc_address(exports(), s, pfn, v, f, st))
    }

    // --- devices ---
    unsafe fn cuDeviceGet(d: *mut i32, o: i32) -> u32 {
        r(device(o).and_then(|_| out(d, o)))
    }
    unsafe fn cuDeviceGetCount(c: *mut i32) -> u32 {
        r(driver().and_then(|d| out(c, d.devices.len() as i32)))
    }
    unsafe fn cuDeviceGetName(n: *mut c_char, l: i32, d: i32) -> u32 {
        r(device(d).and_then(|i| write_str_truncated(n, l, &i.model)))
    }
    unsafe fn cuDeviceGetUuid(u: *mut c_void, d: i32) -> u32 {
        r(device(d).and_then(|i| out(u as *mut [u8; 16], uuid_bytes(&i.uuid))))
    }
    unsafe fn cuDeviceGetUuid_v2(u: *mut c_void, d: i32) -> u32 {
        r(device(d).and_then(|i| out(u as *mut [u8; 16], uuid_bytes(&i.uuid))))
    }
    unsafe fn cuDeviceTotalMem_v2(b: *mut usize, d: i32) -> u32 {
        r(device(d).and_then(|i| out(b, i.total_memory_bytes as usize)))
    }
    unsafe fn cuDeviceGetAttribute(p: *mut i32, a: u32, d: i32) -> u32 {
        r(attribute(p, a, d))
    }
    unsafe fn cuDeviceComputeCapability(a: *mut i32, b: *mut i32, d: i32) -> u32 {
        r(device(d).and_then(|i| {
            let (x, y) = compute_capability(&i.model);
            out(a, x)?;
            out(b, y)
        }))
    }
    unsafe fn cuDeviceGetPCIBusId(b: *mut c_char, l: i32, d: i32) -> u32 {
        r(device(d).and_then(|i| write_str_truncated(b, l, &i.pci_bus_id)))
    }
    unsafe fn cuDeviceCanAccessPeer(c: *mut i32, a: i32, b: i32) -> u32 {
        r(device(a).and_then(|_| device(b)).and_then(|_| out(c, 0)))
    }
    unsafe fn cuDeviceGetP2PAttribute(v: *mut i32, _a: u32, s: i32, d: i32) -> u32 {
        r(device(s).and_then(|_| device(d)).and_then(|_| out(v, 0)))
    }

    // --- contexts ---
    unsafe fn cuCtxCreate_v2(p: *mut *mut c_void, f: u32, d: i32) -> u32 {
        r(ctx_create(p, f, d))
    }
    unsafe fn cuCtxCreate_v3(p: *mut *mut c_void, _a: *mut c_void, _n: i32, f: u32, d: i32) -> u32 {
        r(ctx_create(p, f, d))
    }
    unsafe fn cuCtxCreate_v4(p: *mut *mut c_void, _a: *mut c_void, f: u32, d: i32) -> u32 {
        r(ctx_create(p, f, d))
    }
    unsafe fn cuCtxDestroy_v2(c: *mut c_void) -> u32 {
        r(ctx_destroy(c))
    }
    unsafe fn cuCtxGetCurrent(p: *mut *mut c_void) -> u32 {
        r(driver().and_then(|_| out(p, current_handle().unwrap_or(0) as *mut c_void)))
    }
    unsafe fn cuCtxSetCurrent(c: *mut c_void) -> u32 {
        r(driver().and_then(|_| {
            if c.is_null() {
                set_current(None);
            } else {
                context(c as u64)?;
                set_current(Some(c as u64));
            }
            Ok(())
        }))
    }
    unsafe fn cuCtxPushCurrent_v2(c: *mut c_void) -> u32 {
        r(driver()
            .and_then(|_| context(c as u64))
            .map(|_| push_current(c as u64)))
    }
    unsafe fn cuCtxPopCurrent_v2(p: *mut *mut c_void) -> u32 {
        r(driver().and_then(|_| {
            let h = pop_current().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
            if !p.is_null() {
                out(p, h as *mut c_void)?;
            }
            Ok(())
        }))
    }
    unsafe fn cuCtxGetDevice(d: *mut i32) -> u32 {
        r(current().and_then(|(_, c)| out(d, c.device)))
    }
    unsafe fn cuCtxSynchronize() -> u32 {
        r(remote().and_then(|c| hal(c.synchronize())))
    }
    unsafe fn cuCtxGetFlags(f: *mut u32) -> u32 {
        r(current().and_then(|(_, c)| out(f, *lock(&c.flags))))
    }
    unsafe fn cuCtxSetFlags(f: u32) -> u32 {
        r(current().map(|(_, c)| *lock(&c.flags) = f))
    }
    unsafe fn cuCtxGetId(c: *mut c_void, id: *mut u64) -> u32 {
        r((|| {
            let c = if c.is_null() {
                current()?.1
            } else {
                context(c as u64)?
            };
            out(id, c.id)
        })())
    }
    unsafe fn cuCtxGetApiVersion(c: *mut c_void, v: *mut u32) -> u32 {
        r((|| {
            if c.is_null() {
                current()?;
            } else {
                context(c as u64)?;
            }
            out(v, 12010)
        })())
    }
    unsafe fn cuCtxGetLimit(v: *mut usize, l: u32) -> u32 {
        r(current().and_then(|_| {
            let value = match l {
                CU_LIMIT_STACK_SIZE => 1024,
                CU_LIMIT_PRINTF_FIFO_SIZE => 1 << 20,
                CU_LIMIT_MALLOC_HEAP_SIZE => 8 << 20,
                _ => return Err(CUDA_ERROR_UNSUPPORTED_LIMIT),
            };
            out(v, value)
        }))
    }
    unsafe fn cuCtxSetLimit(_l: u32, _v: usize) -> u32 {
        r(current().map(|_| ()))
    }
    unsafe fn cuCtxGetCacheConfig(c: *mut u32) -> u32 {
        r(current().and_then(|_| out(c, CU_FUNC_CACHE_PREFER_NONE)))
    }
    unsafe fn cuCtxSetCacheConfig(_c: u32) -> u32 {
        r(current().map(|_| ()))
    }
    unsafe fn cuCtxGetStreamPriorityRange(l: *mut i32, g: *mut i32) -> u32 {
        r(current().and_then(|_| {
            if !l.is_null() {
                out(l, 0)?;
            }
            if !g.is_null() {
                out(g, -5)?;
            }
            Ok(())
        }))
    }
    unsafe fn cuDevicePrimaryCtxRetain(p: *mut *mut c_void, d: i32) -> u32 {
        r(primary_retain(p, d))
    }
    unsafe fn cuDevicePrimaryCtxRelease_v2(d: i32) -> u32 {
        r(primary_release(d))
    }
    unsafe fn cuDevicePrimaryCtxReset_v2(d: i32) -> u32 {
        r((|| {
            let drv = driver()?;
            device(d)?;
            if let Some(h) = lock(&drv.primary)[d as usize] {
                let c = context(h)?;
                reset_context(&c, h);
            }
            lock(&drv.primary_refs)[d as usize] = 0;
            Ok(())
        })())
    }
    unsafe fn cuDevicePrimaryCtxGetState(d: i32, f: *mut u32, a: *mut i32) -> u32 {
        r(primary_state(d, f, a))
    }
    unsafe fn cuDevicePrimaryCtxSetFlags_v2(d: i32, f: u32) -> u32 {
        r((|| {
            let drv = driver()?;
            device(d)?;
            if let Some(h) = lock(&drv.primary)[d as usize] {
                *lock(&context(h)?.flags) = f;
            }
            Ok(())
        })())
    }

    // --- memory ---
    unsafe fn cuMemGetInfo_v2(f: *mut usize, t: *mut usize) -> u32 {
        r(mem_info(f, t))
    }
    unsafe fn cuMemAlloc_v2(p: *mut u64, n: usize) -> u32 {
        r(mem_alloc(p, n))
    }
    unsafe fn cuMemAllocPitch_v2(
        p: *mut u64,
        pitch: *mut usize,
        w: usize,
        h: usize,
        e: u32,
    ) -> u32 {
        r((|| {
            if !matches!(e, 4 | 8 | 16) || w == 0 || h == 0 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            let row = w.next_multiple_of(512);
            mem_alloc(p, row.checked_mul(h).ok_or(CUDA_ERROR_INVALID_VALUE)?)?;
            out(pitch, row)
        })())
    }
    unsafe fn cuMemFree_v2(p: u64) -> u32 {
        r(mem_free(p))
    }
    unsafe fn cuMemAllocAsync(p: *mut u64, n: usize, s: *mut c_void) -> u32 {
        r(stream(s).and_then(|_| mem_alloc(p, n)))
    }
    unsafe fn cuMemAllocAsync_ptsz(p: *mut u64, n: usize, s: *mut c_void) -> u32 {
        r(stream(s).and_then(|_| mem_alloc(p, n)))
    }
    unsafe fn cuMemFreeAsync(p: u64, s: *mut c_void) -> u32 {
        r(stream(s).and_then(|_| mem_free(p)))
    }
    unsafe fn cuMemFreeAsync_ptsz(p: u64, s: *mut c_void) -> u32 {
        r(stream(s).and_then(|_| mem_free(p)))
    }
    unsafe fn cuMemAllocHost_v2(p: *mut *mut c_void, n: usize) -> u32 {
        r(alloc_host(p, n))
    }
    unsafe fn cuMemHostAlloc(p: *mut *mut c_void, n: usize, _f: u32) -> u32 {
        r(alloc_host(p, n))
    }
    unsafe fn cuMemFreeHost(p: *mut c_void) -> u32 {
        r(free_host(p))
    }
    unsafe fn cuMemHostRegister_v2(p: *mut c_void, n: usize, _f: u32) -> u32 {
        r(driver().and_then(|_| {
            if p.is_null() || n == 0 {
                Err(CUDA_ERROR_INVALID_VALUE)
            } else {
                Ok(())
            }
        }))
    }
    unsafe fn cuMemHostUnregister(p: *mut c_void) -> u32 {
        r(driver().and_then(|_| {
            if p.is_null() {
                Err(CUDA_ERROR_INVALID_VALUE)
            } else {
                Ok(())
            }
        }))
    }
    unsafe fn cuMemHostGetFlags(f: *mut u32, p: *mut c_void) -> u32 {
        r(driver()
            .and_then(|_| host_allocation(p as u64).ok_or(CUDA_ERROR_INVALID_VALUE))
            .and_then(|_| out(f, 0)))
    }
    unsafe fn cuMemGetAddressRange_v2(b: *mut u64, s: *mut usize, p: u64) -> u32 {
        r(address_range(b, s, p))
    }
    unsafe fn cuPointerGetAttribute(d: *mut c_void, a: u32, p: u64) -> u32 {
        r(pointer_attribute(d, a, p))
    }
    unsafe fn cuPointerGetAttributes(n: u32, a: *mut u32, d: *mut *mut c_void, p: u64) -> u32 {
        r((|| {
            if a.is_null() || d.is_null() {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            for i in 0..n as usize {
                let (attr, data) = (read(a.wrapping_add(i))?, read(d.wrapping_add(i))?);
                pointer_attribute(data, attr, p)?;
            }
            Ok(())
        })())
    }

    // --- copies ---
    unsafe fn cuMemcpy(d: u64, s: u64, n: usize) -> u32 {
        // SAFETY: the caller's contract for the host sides.
        r(unsafe { copy(d, Side::Any, s, Side::Any, n, NO_STREAM) })
    }
    unsafe fn cuMemcpy_ptds(d: u64, s: u64, n: usize) -> u32 {
        // SAFETY: as above.
        r(unsafe { copy(d, Side::Any, s, Side::Any, n, NO_STREAM) })
    }
    unsafe fn cuMemcpyAsync(d: u64, s: u64, n: usize, st: *mut c_void) -> u32 {
        // SAFETY: as above.
        r(unsafe { copy(d, Side::Any, s, Side::Any, n, Some(st)) })
    }
    unsafe fn cuMemcpyAsync_ptsz(d: u64, s: u64, n: usize, st: *mut c_void) -> u32 {
        // SAFETY: as above.
        r(unsafe { copy(d, Side::Any, s, Side::Any, n, Some(st)) })
    }
    unsafe fn cuMemcpyHtoD_v2(d: u64, s: *const c_void, n: usize) -> u32 {
        // SAFETY: as above.
        r(unsafe { copy(d, Side::Device, s as u64, Side::Host, n, NO_STREAM) })
    }
    unsafe fn cuMemcpyHtoD_v2_ptds(d: u64, s: *const c_void, n: usize) -> u32 {
        // SAFETY: as above.
        r(unsafe { copy(d, Side::Device, s as u64, Side::Host, n, NO_STREAM) })
    }
    unsafe fn cuMemcpyDtoH_v2(d: *mut c_void, s: u64, n: usize) -> u32 {
        // SAFETY: as above.
        r(unsafe { copy(d as u64, Side::Host, s, Side::Device, n, NO_STREAM) })
    }
    unsafe fn cuMemcpyDtoH_v2_ptds(d: *mut c_void, s: u64, n: usize) -> u32 {
        // SAFETY: as above.
        r(unsafe { copy(d as u64, Side::Host, s, Side::Device, n, NO_STREAM) })
    }
    unsafe fn cuMemcpyDtoD_v2(d: u64, s: u64, n: usize) -> u32 {
        // SAFETY: device sides only.
        r(unsafe { copy(d, Side::Device, s, Side::Device, n, NO_STREAM) })
    }
    unsafe fn cuMemcpyDtoD_v2_ptds(d: u64, s: u64, n: usize) -> u32 {
        // SAFETY: device sides only.
        r(unsafe { copy(d, Side::Device, s, Side::Device, n, NO_STREAM) })
    }
    unsafe fn cuMemcpyHtoDAsync_v2(d: u64, s: *const c_void, n: usize, st: *mut c_void) -> u32 {
        // SAFETY: the caller's contract for the host source.
        r(unsafe { copy(d, Side::Device, s as u64, Side::Host, n, Some(st)) })
    }
    unsafe fn cuMemcpyHtoDAsync_v2_ptsz(
        d: u64,
        s: *const c_void,
        n: usize,
        st: *mut c_void,
    ) -> u32 {
        // SAFETY: as above.
        r(unsafe { copy(d, Side::Device, s as u64, Side::Host, n, Some(st)) })
    }
    unsafe fn cuMemcpyDtoHAsync_v2(d: *mut c_void, s: u64, n: usize, st: *mut c_void) -> u32 {
        // SAFETY: the caller's contract for the host destination.
        r(unsafe { copy(d as u64, Side::Host, s, Side::Device, n, Some(st)) })
    }
    unsafe fn cuMemcpyDtoHAsync_v2_ptsz(d: *mut c_void, s: u64, n: usize, st: *mut c_void) -> u32 {
        // SAFETY: as above.
        r(unsafe { copy(d as u64, Side::Host, s, Side::Device, n, Some(st)) })
    }
    unsafe fn cuMemcpyDtoDAsync_v2(d: u64, s: u64, n: usize, st: *mut c_void) -> u32 {
        // SAFETY: device sides only.
        r(unsafe { copy(d, Side::Device, s, Side::Device, n, Some(st)) })
    }
    unsafe fn cuMemcpyDtoDAsync_v2_ptsz(d: u64, s: u64, n: usize, st: *mut c_void) -> u32 {
        // SAFETY: device sides only.
        r(unsafe { copy(d, Side::Device, s, Side::Device, n, Some(st)) })
    }

    // --- memsets ---
    unsafe fn cuMemsetD8_v2(d: u64, v: u8, n: usize) -> u32 {
        r(memset(d, Fill::U8(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD8_v2_ptds(d: u64, v: u8, n: usize) -> u32 {
        r(memset(d, Fill::U8(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD16_v2(d: u64, v: u16, n: usize) -> u32 {
        r(memset(d, Fill::U16(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD16_v2_ptds(d: u64, v: u16, n: usize) -> u32 {
        r(memset(d, Fill::U16(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD32_v2(d: u64, v: u32, n: usize) -> u32 {
        r(memset(d, Fill::U32(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD32_v2_ptds(d: u64, v: u32, n: usize) -> u32 {
        r(memset(d, Fill::U32(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD8Async(d: u64, v: u8, n: usize, s: *mut c_void) -> u32 {
        r(memset(d, Fill::U8(v), n, Some(s)))
    }
    unsafe fn cuMemsetD8Async_ptsz(d: u64, v: u8, n: usize, s: *mut c_void) -> u32 {
        r(memset(d, Fill::U8(v), n, Some(s)))
    }
    unsafe fn cuMemsetD16Async(d: u64, v: u16, n: usize, s: *mut c_void) -> u32 {
        r(memset(d, Fill::U16(v), n, Some(s)))
    }
    unsafe fn cuMemsetD16Async_ptsz(d: u64, v: u16, n: usize, s: *mut c_void) -> u32 {
        r(memset(d, Fill::U16(v), n, Some(s)))
    }
    unsafe fn cuMemsetD32Async(d: u64, v: u32, n: usize, s: *mut c_void) -> u32 {
        r(memset(d, Fill::U32(v), n, Some(s)))
    }
    unsafe fn cuMemsetD32Async_ptsz(d: u64, v: u32, n: usize, s: *mut c_void) -> u32 {
        r(memset(d, Fill::U32(v), n, Some(s)))
    }

    // --- modules and functions ---
    unsafe fn cuModuleLoad(m: *mut *mut c_void, f: *const c_char) -> u32 {
        r(module_load_file(m, f))
    }
    unsafe fn cuModuleLoadData(m: *mut *mut c_void, i: *const c_void) -> u32 {
        r(module_load_data(m, i))
    }
    unsafe fn cuModuleLoadDataEx(
        m: *mut *mut c_void,
        i: *const c_void,
        _n: u32,
        _o: *mut u32,
        _v: *mut *mut c_void,
    ) -> u32 {
        r(module_load_data(m, i))
    }
    unsafe fn cuModuleLoadFatBinary(m: *mut *mut c_void, i: *const c_void) -> u32 {
        r(module_load_data(m, i))
    }
    unsafe fn cuModuleUnload(m: *mut c_void) -> u32 {
        r(module_unload(m))
    }
    unsafe fn cuModuleGetFunction(f: *mut *mut c_void, m: *mut c_void, n: *const c_char) -> u32 {
        r(module_get_function(f, m, n))
    }
    unsafe fn cuModuleGetLoadingMode(m: *mut u32) -> u32 {
        r(driver().and_then(|_| out(m, CU_MODULE_EAGER_LOADING)))
    }
    unsafe fn cuFuncGetAttribute(p: *mut i32, a: u32, f: *mut c_void) -> u32 {
        r(func_attribute(p, a, f))
    }
    unsafe fn cuFuncSetAttribute(f: *mut c_void, _a: u32, _v: i32) -> u32 {
        r(function(f).map(|_| ()))
    }
    unsafe fn cuFuncSetCacheConfig(f: *mut c_void, _c: u32) -> u32 {
        r(function(f).map(|_| ()))
    }
    unsafe fn cuFuncGetName(n: *mut *const c_char, f: *mut c_void) -> u32 {
        // The name lives as long as the function handle (the table keeps it).
        r(function(f).and_then(|(_, fo)| out(n, fo.name.as_ptr())))
    }
    unsafe fn cuFuncGetModule(m: *mut *mut c_void, f: *mut c_void) -> u32 {
        r(function(f).and_then(|(_, fo)| out(m, fo.module as *mut c_void)))
    }
    unsafe fn cuFuncGetParamInfo(f: *mut c_void, i: usize, o: *mut usize, s: *mut usize) -> u32 {
        r(param_info(f, i, o, s))
    }
    unsafe fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
        n: *mut i32,
        f: *mut c_void,
        b: i32,
        _s: usize,
    ) -> u32 {
        r(function(f).and_then(|_| {
            if b <= 0 {
                return Err(CUDA_ERROR_INVALID_VALUE);
            }
            out(n, (2048 / b).clamp(0, 32))
        }))
    }
    unsafe fn cuOccupancyMaxPotentialBlockSize(
        g: *mut i32,
        b: *mut i32,
        f: *mut c_void,
        _cb: *mut c_void,
        _s: usize,
        l: i32,
    ) -> u32 {
        r(function(f).and_then(|(c, _)| {
            let block = if l > 0 { l.min(1024) } else { 1024 };
            let sms = device(c.device)?.compute_units as i32;
            out(b, block)?;
            out(g, sms * (2048 / block).clamp(1, 32))
        }))
    }

    // --- launches ---
    unsafe fn cuLaunchKernel(
        f: *mut c_void,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        sh: u32,
        s: *mut c_void,
        p: *mut *mut c_void,
        e: *mut *mut c_void,
    ) -> u32 {
        r(launch(f, [gx, gy, gz], [bx, by, bz], sh, s, p, e))
    }
    unsafe fn cuLaunchKernel_ptsz(
        f: *mut c_void,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        sh: u32,
        s: *mut c_void,
        p: *mut *mut c_void,
        e: *mut *mut c_void,
    ) -> u32 {
        r(launch(f, [gx, gy, gz], [bx, by, bz], sh, s, p, e))
    }
    unsafe fn cuLaunchCooperativeKernel(
        f: *mut c_void,
        gx: u32,
        gy: u32,
        gz: u32,
        bx: u32,
        by: u32,
        bz: u32,
        sh: u32,
        s: *mut c_void,
        p: *mut *mut c_void,
    ) -> u32 {
        r(launch(
            f,
            [gx, gy, gz],
            [bx, by, bz],
            sh,
            s,
            p,
            std::ptr::null_mut(),
        ))
    }
    unsafe fn cuLaunchKernelEx(
        c: *const c_void,
        f: *mut c_void,
        p: *mut *mut c_void,
        e: *mut *mut c_void,
    ) -> u32 {
        r(launch_ex(c, f, p, e))
    }
    unsafe fn cuLaunchKernelEx_ptsz(
        c: *const c_void,
        f: *mut c_void,
        p: *mut *mut c_void,
        e: *mut *mut c_void,
    ) -> u32 {
        r(launch_ex(c, f, p, e))
    }
    unsafe fn cuLaunchHostFunc(s: *mut c_void, f: *mut c_void, u: *mut c_void) -> u32 {
        r(host_func(s, f, u))
    }
    unsafe fn cuLaunchHostFunc_ptsz(s: *mut c_void, f: *mut c_void, u: *mut c_void) -> u32 {
        r(host_func(s, f, u))
    }

    // --- streams ---
    unsafe fn cuStreamCreate(p: *mut *mut c_void, f: u32) -> u32 {
        r(stream_create(p, f, 0))
    }
    unsafe fn cuStreamCreateWithPriority(p: *mut *mut c_void, f: u32, pr: i32) -> u32 {
        r(stream_create(p, f, pr))
    }
    unsafe fn cuStreamDestroy_v2(s: *mut c_void) -> u32 {
        r(stream_destroy(s))
    }
    unsafe fn cuStreamSynchronize(s: *mut c_void) -> u32 {
        r(stream_synchronize(s))
    }
    unsafe fn cuStreamSynchronize_ptsz(s: *mut c_void) -> u32 {
        r(stream_synchronize(s))
    }
    unsafe fn cuStreamQuery(s: *mut c_void) -> u32 {
        r(stream_query(s))
    }
    unsafe fn cuStreamQuery_ptsz(s: *mut c_void) -> u32 {
        r(stream_query(s))
    }
    unsafe fn cuStreamWaitEvent(s: *mut c_void, e: *mut c_void, _f: u32) -> u32 {
        r(stream_wait_event(s, e))
    }
    unsafe fn cuStreamWaitEvent_ptsz(s: *mut c_void, e: *mut c_void, _f: u32) -> u32 {
        r(stream_wait_event(s, e))
    }
    unsafe fn cuStreamGetFlags(s: *mut c_void, f: *mut u32) -> u32 {
        r(stream(s).and_then(|(_, _, o)| out(f, o.map_or(0, |o| o.flags))))
    }
    unsafe fn cuStreamGetPriority(s: *mut c_void, p: *mut i32) -> u32 {
        r(stream(s).and_then(|(_, _, o)| out(p, o.map_or(0, |o| o.priority))))
    }
    unsafe fn cuStreamGetCtx(s: *mut c_void, c: *mut *mut c_void) -> u32 {
        r(stream(s).and_then(|(_, _, o)| {
            let h = match o {
                Some(o) => o.ctx,
                None => current()?.0,
            };
            out(c, h as *mut c_void)
        }))
    }
    unsafe fn cuStreamGetDevice(s: *mut c_void, d: *mut i32) -> u32 {
        r(stream(s).and_then(|(c, _, _)| out(d, c.device)))
    }
    unsafe fn cuStreamGetId(s: *mut c_void, i: *mut u64) -> u32 {
        r(stream(s).and_then(|(_, h, _)| out(i, h.0)))
    }
    unsafe fn cuStreamAttachMemAsync(s: *mut c_void, _p: u64, _n: usize, _f: u32) -> u32 {
        r(stream(s).map(|_| ()))
    }
    unsafe fn cuStreamIsCapturing(s: *mut c_void, st: *mut u32) -> u32 {
        r(stream(s).and_then(|_| out(st, CU_STREAM_CAPTURE_STATUS_NONE)))
    }
    unsafe fn cuThreadExchangeStreamCaptureMode(mode: *mut u32) -> u32 {
        r(driver().and_then(|_| read(mode).map(|_| ())))
    }

    // --- events ---
    unsafe fn cuEventCreate(p: *mut *mut c_void, f: u32) -> u32 {
        r(event_create(p, f))
    }
    unsafe fn cuEventDestroy_v2(e: *mut c_void) -> u32 {
        r(event_destroy(e))
    }
    unsafe fn cuEventRecord(e: *mut c_void, s: *mut c_void) -> u32 {
        r(event_record(e, s))
    }
    unsafe fn cuEventRecord_ptsz(e: *mut c_void, s: *mut c_void) -> u32 {
        r(event_record(e, s))
    }
    unsafe fn cuEventRecordWithFlags(e: *mut c_void, s: *mut c_void, _f: u32) -> u32 {
        r(event_record(e, s))
    }
    unsafe fn cuEventRecordWithFlags_ptsz(e: *mut c_void, s: *mut c_void, _f: u32) -> u32 {
        r(event_record(e, s))
    }
    unsafe fn cuEventQuery(e: *mut c_void) -> u32 {
        r(event_query(e))
    }
    unsafe fn cuEventSynchronize(e: *mut c_void) -> u32 {
        r(event_synchronize(e))
    }
    unsafe fn cuEventElapsedTime(ms: *mut f32, a: *mut c_void, b: *mut c_void) -> u32 {
        r(event_elapsed(ms, a, b))
    }
    unsafe fn cuEventElapsedTime_v2(ms: *mut f32, a: *mut c_void, b: *mut c_void) -> u32 {
        r(event_elapsed(ms, a, b))
    }
}
