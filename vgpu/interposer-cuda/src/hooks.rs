//! The interposed functions. Each is exported under the driver's own name with the signature of
//! NVIDIA's header (checked at compile time against `tf_cuda_abi::{driver_fn, nvml_fn}`), runs
//! under the C-boundary kit's panic guard, and reaches the real function through
//! [`crate::real`].

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::{Mutex, OnceLock};

use tf_cuda_abi::driver::*;
use tf_cuda_abi::nvml::{NVML_ERROR_UNINITIALIZED, NVML_SUCCESS};
use tf_cuda_abi::nvml_types::{nvmlMemory_t, nvmlMemory_v2_t};
use tf_cuda_abi::{CUDA_ARRAY_DESCRIPTOR, CUDA_ARRAY3D_DESCRIPTOR};

use crate::ffi::{LIBRARY, read};
use crate::ledger::{self, Entry, Kind};
use crate::real::{Lib, real};
use crate::state::{self, client};

/// The C API of each real library, for the panic guard's answer.
mod abi {
    pub type Cuda = tf_cuda_abi::CudaDriverAbi;
    pub type Nvml = tf_cuda_abi::NvmlAbi;
}

macro_rules! hooks {
    ($( $lib:ident $abi:ident fn $name:ident($($arg:ident: $ty:ty),*) $body:block )*) => {
        $(
            /// Interposed; see the module documentation.
            ///
            /// # Safety
            /// The driver API's contract for this function.
            #[unsafe(no_mangle)]
            #[allow(non_snake_case, clippy::too_many_arguments)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> u32 {
                #[allow(dead_code)]
                fn real() -> Option<tf_cuda_abi::$abi::$name> {
                    real!($abi::$name)
                }
                tf_ffi::guard::<abi::$lib, u32>(LIBRARY, stringify!($name), || $body)
            }
            // The signature is the header's.
            const _: tf_cuda_abi::$abi::$name = $name;
        )*

        /// (name, library, our wrapper) of every interposed function.
        pub fn wrappers() -> &'static [(&'static str, Lib, usize)] {
            static W: OnceLock<Vec<(&'static str, Lib, usize)>> = OnceLock::new();
            W.get_or_init(|| vec![$( (stringify!($name), Lib::$lib, $name as *const () as usize) ),*])
        }
    };
}

/// Our wrapper for the function `name`, if we interpose it.
pub fn wrapper(name: &[u8]) -> Option<usize> {
    wrappers()
        .iter()
        .find(|(n, _, _)| n.as_bytes() == name)
        .map(|(_, _, w)| *w)
}

/// The real driver's address of each CUDA function we interpose, mapped to our wrapper.
fn substitutes() -> &'static HashMap<usize, usize> {
    static M: OnceLock<HashMap<usize, usize>> = OnceLock::new();
    M.get_or_init(|| {
        wrappers()
            .iter()
            .filter(|(_, l, _)| *l == Lib::Cuda)
            .filter_map(|(name, _, wrapper)| {
                let n = std::ffi::CString::new(*name).ok()?;
                let real = crate::real::lookup(Lib::Cuda.handle(), &n);
                (real != 0).then_some((real, *wrapper))
            })
            .collect()
    })
}

/// After cuGetProcAddress: if the driver handed out one of the functions we interpose, hand out
/// our wrapper instead (matched by address, so the version the caller asked for is kept).
fn substitute(pfn: *mut *mut c_void) {
    if let Ok(p) = read(pfn as *const *mut c_void)
        && let Some(&w) = substitutes().get(&(p as usize))
    {
        // SAFETY: cuGetProcAddress just wrote a function pointer through pfn (non-null: read
        // above); the wrapper has the same signature as the real function.
        unsafe { *pfn = w as *mut c_void };
    }
}

fn not_loaded(lib: Lib) -> u32 {
    match lib {
        Lib::Cuda => CUDA_ERROR_NOT_INITIALIZED,
        Lib::Nvml => NVML_ERROR_UNINITIALIZED,
    }
}

/// Call the real function, or report the library missing.
macro_rules! call {
    ($lib:ident, $($arg:expr),*) => {
        match real() {
            // SAFETY: forwarding the caller's own arguments to the real function.
            Some(f) => unsafe { f($($arg),*) },
            None => not_loaded(Lib::$lib),
        }
    };
}

// ---------- shared bodies ----------

/// Allocate through `alloc` after charging `bytes` to the vGPU; returns OOM past the quota, and
/// refuses devices outside the vGPU (they are not the tenant's to use, and would escape its
/// quota). On success the allocation `key()` names is written in the ledger.
fn charged(
    bytes: u64,
    key: impl FnOnce() -> Option<(Kind, u64)>,
    alloc: impl FnOnce() -> u32,
) -> u32 {
    let Some(c) = client() else { return alloc() };
    if !state::current_device_limited(c) {
        tracing::warn!("allocation refused: the current device is not the vGPU's");
        return CUDA_ERROR_INVALID_DEVICE;
    }
    if !c.charge(bytes) {
        tracing::debug!(bytes, "allocation refused: over the vGPU's VRAM quota");
        return CUDA_ERROR_OUT_OF_MEMORY;
    }
    let rc = alloc();
    if rc != CUDA_SUCCESS {
        c.uncharge(bytes);
        return rc;
    }
    match key() {
        Some((kind, k)) => {
            let entry = Entry {
                bytes,
                ctx: state::current_context(),
            };
            if let Some(stale) = ledger::record(kind, k, entry) {
                // An address the driver handed out again without our seeing its free.
                c.uncharge(stale.bytes);
            }
        }
        None => c.uncharge(bytes), // nothing to free it by: do not keep a charge we cannot return
    }
    rc
}

/// Free `key` through `free`, giving back exactly what was charged for it, once, when the
/// driver frees it. An unknown key (never charged, or already freed) gives nothing back.
fn released(kind: Kind, key: u64, free: impl FnOnce() -> u32) -> u32 {
    let entry = ledger::take(kind, key);
    let rc = free();
    match entry {
        Some(e) if rc == CUDA_SUCCESS => {
            if let Some(c) = client() {
                c.uncharge(e.bytes);
            }
        }
        Some(e) => ledger::restore(kind, key, e),
        None => {}
    }
    rc
}

/// After a context is gone (destroyed, or a primary context released for the last time or
/// reset): give back what it still held.
fn context_gone(ctx: usize) {
    let bytes = ledger::take_context(ctx);
    if bytes > 0
        && let Some(c) = client()
    {
        c.uncharge(bytes);
    }
}

/// Launch on `stream`, paced to the vGPU's compute share (and now and then timed, so the
/// controller learns what a launch costs). Launches on a device outside the vGPU are refused
/// (they would escape its share). Unlimited vGPUs pay two loads.
fn paced(stream: *mut c_void, launch: impl FnOnce() -> u32) -> u32 {
    if let Some(c) = client() {
        if !state::current_device_limited(c) {
            tracing::warn!("launch refused: the current device is not the vGPU's");
            return CUDA_ERROR_INVALID_DEVICE;
        }
        if c.compute_share().is_some() && !state::capturing(stream) {
            c.before_launch();
            return crate::sampler::launch(c, stream, launch);
        }
    }
    launch()
}

/// The stream a `_ptsz` (per-thread default stream) entry point means by NULL.
fn ptsz(stream: *mut c_void) -> *mut c_void {
    if stream.is_null() {
        tf_cuda_abi::CU_STREAM_PER_THREAD as *mut c_void
    } else {
        stream
    }
}

/// (quota, used) to report for an NVML device that is the vGPU's, with an output to write.
fn nvml_quota(device: *mut c_void, memory: *mut c_void) -> Option<(u64, u64)> {
    let c = client()?;
    let quota = c.vram_quota()?;
    (!memory.is_null() && state::nvml_device_limited(c, device))
        .then(|| (quota, c.vram_used().min(quota)))
}

/// Physical allocations of the VMM API: charged at `cuMemCreate`, given back when the last
/// reference goes — the handle (`cuMemRelease`), each mapping (`cuMemUnmap`), each retained
/// handle — as the driver frees them.
struct Vmm {
    /// handle -> references (the bytes are in the ledger, as `Kind::Physical`)
    handles: HashMap<u64, u32>,
    /// mapped address -> handle
    mappings: HashMap<u64, u64>,
}

fn vmm() -> std::sync::MutexGuard<'static, Vmm> {
    static M: OnceLock<Mutex<Vmm>> = OnceLock::new();
    M.get_or_init(|| {
        Mutex::new(Vmm {
            handles: HashMap::new(),
            mappings: HashMap::new(),
        })
    })
    .lock()
    .unwrap_or_else(|p| p.into_inner())
}

/// Drop one reference to a physical allocation; uncharge it when none is left.
fn vmm_unref(handle: u64) {
    let last = {
        let mut v = vmm();
        match v.handles.get_mut(&handle) {
            Some(refs) => {
                *refs = refs.saturating_sub(1);
                if *refs == 0 {
                    v.handles.remove(&handle);
                    true
                } else {
                    false
                }
            }
            None => false,
        }
    };
    if last
        && let Some(e) = ledger::take(Kind::Physical, handle)
        && let Some(c) = client()
    {
        c.uncharge(e.bytes);
    }
}

/// The pointer an allocation wrote through `dptr`, as a ledger key.
fn pointer(dptr: *mut u64) -> Option<(Kind, u64)> {
    get(dptr).map(|p| (Kind::Pointer, p))
}

/// The array handle an allocation wrote through `handle`, as a ledger key.
fn array(handle: *mut *mut c_void) -> Option<(Kind, u64)> {
    get(handle).map(|h| (Kind::Array, h as u64))
}

fn format_bytes(format: u32) -> u64 {
    match format {
        CU_AD_FORMAT_UNSIGNED_INT8 | CU_AD_FORMAT_SIGNED_INT8 => 1,
        CU_AD_FORMAT_UNSIGNED_INT16 | CU_AD_FORMAT_SIGNED_INT16 | CU_AD_FORMAT_HALF => 2,
        _ => 4,
    }
}

fn array_bytes(w: usize, h: usize, d: usize, format: u32, channels: u32) -> u64 {
    w.max(1) as u64
        * h.max(1) as u64
        * d.max(1) as u64
        * channels.max(1) as u64
        * format_bytes(format)
}

/// Write an output the real driver just filled successfully (nothing if it is null).
fn overwrite<T>(p: *mut T, v: T) {
    let _ = crate::ffi::out(p, v);
}

/// What the caller points at, if anything.
fn get<T: Copy>(p: *const T) -> Option<T> {
    read(p).ok()
}

hooks! {
    // ----- allocation families -----
    Cuda driver_fn fn cuMemAlloc_v2(dptr: *mut u64, bytesize: usize) {
        charged(bytesize as u64, || pointer(dptr), || call!(Cuda, dptr, bytesize))
    }
    Cuda driver_fn fn cuMemAlloc(dptr: *mut u32, bytesize: u32) {
        charged(bytesize as u64, || get(dptr).map(|p| (Kind::Pointer, p as u64)), || call!(Cuda, dptr, bytesize))
    }
    Cuda driver_fn fn cuMemAllocManaged(dptr: *mut u64, bytesize: usize, flags: u32) {
        charged(bytesize as u64, || pointer(dptr), || call!(Cuda, dptr, bytesize, flags))
    }
    Cuda driver_fn fn cuMemAllocAsync(dptr: *mut u64, bytesize: usize, hStream: *mut c_void) {
        charged(bytesize as u64, || pointer(dptr), || call!(Cuda, dptr, bytesize, hStream))
    }
    Cuda driver_fn fn cuMemAllocAsync_ptsz(dptr: *mut u64, bytesize: usize, hStream: *mut c_void) {
        charged(bytesize as u64, || pointer(dptr), || call!(Cuda, dptr, bytesize, hStream))
    }
    Cuda driver_fn fn cuMemAllocFromPoolAsync(dptr: *mut u64, bytesize: usize, pool: *mut c_void, hStream: *mut c_void) {
        charged(bytesize as u64, || pointer(dptr), || call!(Cuda, dptr, bytesize, pool, hStream))
    }
    Cuda driver_fn fn cuMemAllocFromPoolAsync_ptsz(dptr: *mut u64, bytesize: usize, pool: *mut c_void, hStream: *mut c_void) {
        charged(bytesize as u64, || pointer(dptr), || call!(Cuda, dptr, bytesize, pool, hStream))
    }
    Cuda driver_fn fn cuMemAllocPitch_v2(dptr: *mut u64, pPitch: *mut usize, WidthInBytes: usize, Height: usize, ElementSizeBytes: u32) {
        let asked = WidthInBytes as u64 * Height as u64;
        let rc = charged(asked, || pointer(dptr), || call!(Cuda, dptr, pPitch, WidthInBytes, Height, ElementSizeBytes));
        // The pitch may pad each row: charge the padding too, or undo the allocation.
        if rc == CUDA_SUCCESS
            && let (Some(c), Some(pitch), Some(ptr)) = (client(), get(pPitch), get(dptr))
        {
            let extra = (pitch as u64 * Height as u64).saturating_sub(asked);
            if extra > 0 {
                if !c.charge(extra) {
                    if let Some(e) = ledger::take(Kind::Pointer, ptr) {
                        c.uncharge(e.bytes);
                    }
                    state::free_raw(ptr);
                    return CUDA_ERROR_OUT_OF_MEMORY;
                }
                ledger::grow(Kind::Pointer, ptr, extra);
            }
        }
        rc
    }
    Cuda driver_fn fn cuMemCreate(handle: *mut u64, size: usize, prop: *const c_void, flags: u64) {
        // Charged to the device the memory lands on: a location outside the vGPU is refused.
        if let Some(c) = client()
            && let Some(p) = get(prop as *const tf_cuda_abi::CUmemAllocationProp)
            && p.location.type_ == CU_MEM_LOCATION_TYPE_DEVICE
            && !state::device_limited(c, p.location.id)
        {
            tracing::warn!(device = p.location.id, "cuMemCreate refused: the device is not the vGPU's");
            return CUDA_ERROR_INVALID_DEVICE;
        }
        let rc = charged(size as u64, || get(handle).map(|h| (Kind::Physical, h)), || call!(Cuda, handle, size, prop, flags));
        if rc == CUDA_SUCCESS
            && let Some(h) = get(handle)
            && client().is_some()
        {
            vmm().handles.insert(h, 1);
        }
        rc
    }
    Cuda driver_fn fn cuMemMap(ptr: u64, size: usize, offset: usize, handle: u64, flags: u64) {
        let rc = call!(Cuda, ptr, size, offset, handle, flags);
        if rc == CUDA_SUCCESS {
            let mut v = vmm();
            if let Some(refs) = v.handles.get_mut(&handle) {
                *refs += 1;
                v.mappings.insert(ptr, handle);
            }
        }
        rc
    }
    Cuda driver_fn fn cuMemUnmap(ptr: u64, size: usize) {
        let rc = call!(Cuda, ptr, size);
        if rc == CUDA_SUCCESS {
            let handle = vmm().mappings.remove(&ptr);
            if let Some(h) = handle {
                vmm_unref(h);
            }
        }
        rc
    }
    Cuda driver_fn fn cuMemRetainAllocationHandle(handle: *mut u64, addr: *mut c_void) {
        let rc = call!(Cuda, handle, addr);
        if rc == CUDA_SUCCESS
            && let Some(h) = get(handle)
            && let Some(refs) = vmm().handles.get_mut(&h)
        {
            *refs += 1;
        }
        rc
    }
    Cuda driver_fn fn cuArrayCreate_v2(pHandle: *mut *mut c_void, pAllocateArray: *const c_void) {
        let bytes = get(pAllocateArray as *const CUDA_ARRAY_DESCRIPTOR)
            .map_or(0, |d| array_bytes(d.Width, d.Height, 1, d.Format, d.NumChannels));
        charged(bytes, || array(pHandle), || call!(Cuda, pHandle, pAllocateArray))
    }
    Cuda driver_fn fn cuArray3DCreate_v2(pHandle: *mut *mut c_void, pAllocateArray: *const c_void) {
        let bytes = get(pAllocateArray as *const CUDA_ARRAY3D_DESCRIPTOR)
            .map_or(0, |d| array_bytes(d.Width, d.Height, d.Depth, d.Format, d.NumChannels));
        charged(bytes, || array(pHandle), || call!(Cuda, pHandle, pAllocateArray))
    }
    Cuda driver_fn fn cuMipmappedArrayCreate(pHandle: *mut *mut c_void, pMipmappedArrayDesc: *const c_void, numMipmapLevels: u32) {
        // All levels together take at most 4/3 of the base level.
        let bytes = get(pMipmappedArrayDesc as *const CUDA_ARRAY3D_DESCRIPTOR)
            .map_or(0, |d| array_bytes(d.Width, d.Height, d.Depth, d.Format, d.NumChannels) * 4 / 3);
        charged(bytes, || array(pHandle), || call!(Cuda, pHandle, pMipmappedArrayDesc, numMipmapLevels))
    }

    // ----- frees -----
    Cuda driver_fn fn cuMemFree_v2(dptr: u64) {
        released(Kind::Pointer, dptr, || call!(Cuda, dptr))
    }
    Cuda driver_fn fn cuMemFree(dptr: u32) {
        released(Kind::Pointer, dptr as u64, || call!(Cuda, dptr))
    }
    Cuda driver_fn fn cuMemFreeAsync(dptr: u64, hStream: *mut c_void) {
        released(Kind::Pointer, dptr, || call!(Cuda, dptr, hStream))
    }
    Cuda driver_fn fn cuMemFreeAsync_ptsz(dptr: u64, hStream: *mut c_void) {
        released(Kind::Pointer, dptr, || call!(Cuda, dptr, hStream))
    }
    Cuda driver_fn fn cuMemRelease(handle: u64) {
        let rc = call!(Cuda, handle);
        if rc == CUDA_SUCCESS {
            vmm_unref(handle);
        }
        rc
    }
    Cuda driver_fn fn cuArrayDestroy(hArray: *mut c_void) {
        released(Kind::Array, hArray as u64, || call!(Cuda, hArray))
    }
    Cuda driver_fn fn cuMipmappedArrayDestroy(hMipmappedArray: *mut c_void) {
        released(Kind::Array, hMipmappedArray as u64, || call!(Cuda, hMipmappedArray))
    }

    // ----- contexts: what a context held goes when it goes -----
    Cuda driver_fn fn cuCtxDestroy_v2(ctx: *mut c_void) {
        let rc = call!(Cuda, ctx);
        if rc == CUDA_SUCCESS {
            context_gone(ctx as usize);
        }
        rc
    }
    Cuda driver_fn fn cuCtxDestroy(ctx: *mut c_void) {
        let rc = call!(Cuda, ctx);
        if rc == CUDA_SUCCESS {
            context_gone(ctx as usize);
        }
        rc
    }
    Cuda driver_fn fn cuDevicePrimaryCtxReset_v2(dev: i32) {
        let primary = state::primary_context(dev);
        let rc = call!(Cuda, dev);
        if rc == CUDA_SUCCESS && let Some(p) = primary {
            context_gone(p);
        }
        rc
    }
    Cuda driver_fn fn cuDevicePrimaryCtxReset(dev: i32) {
        let primary = state::primary_context(dev);
        let rc = call!(Cuda, dev);
        if rc == CUDA_SUCCESS && let Some(p) = primary {
            context_gone(p);
        }
        rc
    }
    Cuda driver_fn fn cuDevicePrimaryCtxRelease_v2(dev: i32) {
        let primary = state::primary_context(dev);
        let rc = call!(Cuda, dev);
        // The last release destroys the primary context, and frees what it held.
        if rc == CUDA_SUCCESS && let Some(p) = primary && state::primary_context(dev).is_none() {
            context_gone(p);
        }
        rc
    }
    Cuda driver_fn fn cuDevicePrimaryCtxRelease(dev: i32) {
        let primary = state::primary_context(dev);
        let rc = call!(Cuda, dev);
        if rc == CUDA_SUCCESS && let Some(p) = primary && state::primary_context(dev).is_none() {
            context_gone(p);
        }
        rc
    }

    // ----- what the application is told about memory -----
    Cuda driver_fn fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize) {
        let rc = call!(Cuda, free, total);
        if rc == CUDA_SUCCESS
            && let Some(c) = client()
            && let Some(quota) = c.vram_quota()
            && state::current_device_limited(c)
        {
            let left = quota.saturating_sub(c.vram_used());
            let real_free = get(free).unwrap_or(usize::MAX) as u64;
            overwrite(total, quota as usize);
            overwrite(free, left.min(real_free) as usize);
        }
        rc
    }
    Cuda driver_fn fn cuMemGetInfo(free: *mut u32, total: *mut u32) {
        let rc = call!(Cuda, free, total);
        if rc == CUDA_SUCCESS
            && let Some(c) = client()
            && let Some(quota) = c.vram_quota()
            && state::current_device_limited(c)
        {
            let left = quota.saturating_sub(c.vram_used());
            overwrite(total, quota.min(u32::MAX as u64) as u32);
            overwrite(free, left.min(get(free).unwrap_or(u32::MAX) as u64) as u32);
        }
        rc
    }
    Cuda driver_fn fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: i32) {
        let rc = call!(Cuda, bytes, dev);
        if rc == CUDA_SUCCESS
            && let Some(c) = client()
            && let Some(quota) = c.vram_quota()
            && state::device_limited(c, dev)
        {
            overwrite(bytes, quota as usize);
        }
        rc
    }
    Cuda driver_fn fn cuDeviceTotalMem(bytes: *mut u32, dev: i32) {
        let rc = call!(Cuda, bytes, dev);
        if rc == CUDA_SUCCESS
            && let Some(c) = client()
            && let Some(quota) = c.vram_quota()
            && state::device_limited(c, dev)
        {
            overwrite(bytes, quota.min(u32::MAX as u64) as u32);
        }
        rc
    }

    // ----- launches -----
    Cuda driver_fn fn cuLaunchKernel(f: *mut c_void, gridDimX: u32, gridDimY: u32, gridDimZ: u32, blockDimX: u32, blockDimY: u32, blockDimZ: u32, sharedMemBytes: u32, hStream: *mut c_void, kernelParams: *mut *mut c_void, extra: *mut *mut c_void) {
        paced(hStream, || call!(Cuda, f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams, extra))
    }
    Cuda driver_fn fn cuLaunchKernel_ptsz(f: *mut c_void, gridDimX: u32, gridDimY: u32, gridDimZ: u32, blockDimX: u32, blockDimY: u32, blockDimZ: u32, sharedMemBytes: u32, hStream: *mut c_void, kernelParams: *mut *mut c_void, extra: *mut *mut c_void) {
        paced(ptsz(hStream), || call!(Cuda, f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams, extra))
    }
    Cuda driver_fn fn cuLaunchKernelEx(config: *const c_void, f: *mut c_void, kernelParams: *mut *mut c_void, extra: *mut *mut c_void) {
        paced(get(config as *const tf_cuda_abi::CUlaunchConfig).map_or(std::ptr::null_mut(), |c| c.hStream), || call!(Cuda, config, f, kernelParams, extra))
    }
    Cuda driver_fn fn cuLaunchKernelEx_ptsz(config: *const c_void, f: *mut c_void, kernelParams: *mut *mut c_void, extra: *mut *mut c_void) {
        paced(ptsz(get(config as *const tf_cuda_abi::CUlaunchConfig).map_or(std::ptr::null_mut(), |c| c.hStream)), || call!(Cuda, config, f, kernelParams, extra))
    }
    Cuda driver_fn fn cuLaunchCooperativeKernel(f: *mut c_void, gridDimX: u32, gridDimY: u32, gridDimZ: u32, blockDimX: u32, blockDimY: u32, blockDimZ: u32, sharedMemBytes: u32, hStream: *mut c_void, kernelParams: *mut *mut c_void) {
        paced(hStream, || call!(Cuda, f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams))
    }
    Cuda driver_fn fn cuLaunchCooperativeKernel_ptsz(f: *mut c_void, gridDimX: u32, gridDimY: u32, gridDimZ: u32, blockDimX: u32, blockDimY: u32, blockDimZ: u32, sharedMemBytes: u32, hStream: *mut c_void, kernelParams: *mut *mut c_void) {
        paced(ptsz(hStream), || call!(Cuda, f, gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes, hStream, kernelParams))
    }
    Cuda driver_fn fn cuLaunchCooperativeKernelMultiDevice(launchParamsList: *mut c_void, numDevices: u32, flags: u32) {
        paced(std::ptr::null_mut(), || call!(Cuda, launchParamsList, numDevices, flags))
    }
    Cuda driver_fn fn cuLaunch(f: *mut c_void) {
        paced(std::ptr::null_mut(), || call!(Cuda, f))
    }
    Cuda driver_fn fn cuLaunchGrid(f: *mut c_void, grid_width: i32, grid_height: i32) {
        paced(std::ptr::null_mut(), || call!(Cuda, f, grid_width, grid_height))
    }
    Cuda driver_fn fn cuLaunchGridAsync(f: *mut c_void, grid_width: i32, grid_height: i32, hStream: *mut c_void) {
        paced(hStream, || call!(Cuda, f, grid_width, grid_height, hStream))
    }
    Cuda driver_fn fn cuGraphLaunch(hGraphExec: *mut c_void, hStream: *mut c_void) {
        paced(hStream, || call!(Cuda, hGraphExec, hStream))
    }
    Cuda driver_fn fn cuGraphLaunch_ptsz(hGraphExec: *mut c_void, hStream: *mut c_void) {
        paced(ptsz(hStream), || call!(Cuda, hGraphExec, hStream))
    }

    // ----- entry points handed out by the driver -----
    Cuda driver_fn fn cuGetProcAddress(symbol: *const c_char, pfn: *mut *mut c_void, cudaVersion: i32, flags: u64) {
        let rc = call!(Cuda, symbol, pfn, cudaVersion, flags);
        if rc == CUDA_SUCCESS {
            substitute(pfn);
        }
        rc
    }
    Cuda driver_fn fn cuGetProcAddress_v2(symbol: *const c_char, pfn: *mut *mut c_void, cudaVersion: i32, flags: u64, symbolStatus: *mut u32) {
        let rc = call!(Cuda, symbol, pfn, cudaVersion, flags, symbolStatus);
        if rc == CUDA_SUCCESS {
            substitute(pfn);
        }
        rc
    }

    // ----- NVML -----
    Nvml nvml_fn fn nvmlDeviceGetMemoryInfo(device: *mut c_void, memory: *mut c_void) {
        let rc = call!(Nvml, device, memory);
        if rc == NVML_SUCCESS
            && let Some((quota, used)) = nvml_quota(device, memory)
        {
            let m = nvmlMemory_t { total: quota, free: quota - used, used };
            overwrite(memory as *mut nvmlMemory_t, m);
        }
        rc
    }
    Nvml nvml_fn fn nvmlDeviceGetMemoryInfo_v2(device: *mut c_void, memory: *mut c_void) {
        let rc = call!(Nvml, device, memory);
        if rc == NVML_SUCCESS
            && let Some((quota, used)) = nvml_quota(device, memory)
        {
            let p = memory as *mut nvmlMemory_v2_t;
            if let Some(real) = get(p) {
                // The caller's version stays; the figures are the vGPU's.
                let m = nvmlMemory_v2_t { total: quota, reserved: 0, free: quota - used, used, ..real };
                overwrite(p, m);
            }
        }
        rc
    }
}
