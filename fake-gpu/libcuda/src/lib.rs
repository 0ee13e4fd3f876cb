//! # tf-fake-libcuda
//!
//! The simulated GPU as a drop-in `libcuda.so.1`: unmodified driver-API programs (C programs
//! linked with `-lcuda`, cudarc, the CUDA Python bindings) run on the simulated devices with
//! `LD_LIBRARY_PATH` pointing at `tensor-fusion fake-gpu install DIR`.
//!
//! Every function of NVIDIA's `cuda.h` is exported with its real signature (the list comes from
//! `tf-cuda-abi`, generated from the header). The [`Driver`] trait has one method per function;
//! its default answers `CUDA_ERROR_NOT_SUPPORTED` and logs once, and [`FakeCuda`] overrides the
//! functions the simulator implements — so the compiler checks each implemented signature
//! against the header's. No panic crosses the C boundary: each export runs under the C-boundary
//! kit's guard (`tf_ffi::guard`), and a panic is logged and becomes `CUDA_ERROR_UNKNOWN`.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too
#![allow(non_snake_case)]

mod ctx;
mod exec;
mod ffi;
mod logging;
mod mem;
mod state;

use std::ffi::{c_char, c_void};

use tf_cuda_abi::driver::*;
use tf_fake_gpu::{Fill, MemKind};

use crate::ffi::out;
use crate::state::{CuResult, driver};

/// How the simulated libcuda names itself in logs.
pub const LIBRARY: &str = "the tensor-fusion simulated GPU's libcuda";

fn r(res: CuResult) -> u32 {
    ffi::status(res)
}

tf_cuda_abi::cuda_driver_facade!(FakeCuda, LIBRARY);

use tf_cuda_abi::facade::{error_name, error_string, get_proc_address};

/// The simulated GPU's implementation of the driver API.
pub struct FakeCuda;

/// Null stream handle, for the synchronous variants that run on the default stream.
const NO_STREAM: Option<*mut c_void> = None;

impl Driver for FakeCuda {
    // --- initialisation, versions, errors, entry points ---
    unsafe fn cuInit(_flags: u32) -> u32 {
        r(state::init())
    }
    unsafe fn cuDriverGetVersion(v: *mut i32) -> u32 {
        r(ctx::driver_get_version(v))
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
        r(ctx::device_get(d, o))
    }
    unsafe fn cuDeviceGetCount(c: *mut i32) -> u32 {
        r(ctx::device_count(c))
    }
    unsafe fn cuDeviceGetName(n: *mut c_char, l: i32, d: i32) -> u32 {
        r(ctx::device_name(n, l, d))
    }
    unsafe fn cuDeviceGetUuid(u: *mut c_void, d: i32) -> u32 {
        r(ctx::device_uuid(u, d))
    }
    unsafe fn cuDeviceGetUuid_v2(u: *mut c_void, d: i32) -> u32 {
        r(ctx::device_uuid(u, d))
    }
    unsafe fn cuDeviceTotalMem_v2(b: *mut usize, d: i32) -> u32 {
        r(ctx::device_total_mem(b, d))
    }
    unsafe fn cuDeviceGetAttribute(p: *mut i32, a: u32, d: i32) -> u32 {
        r(ctx::attribute(p, a, d))
    }
    unsafe fn cuDeviceComputeCapability(a: *mut i32, b: *mut i32, d: i32) -> u32 {
        r(ctx::compute_capability(a, b, d))
    }
    unsafe fn cuDeviceGetPCIBusId(b: *mut c_char, l: i32, d: i32) -> u32 {
        r(ctx::pci_bus_id(b, l, d))
    }
    unsafe fn cuDeviceGetByPCIBusId(d: *mut i32, id: *const c_char) -> u32 {
        r(ctx::by_pci_bus_id(d, id))
    }
    unsafe fn cuDeviceCanAccessPeer(c: *mut i32, a: i32, b: i32) -> u32 {
        r(state::device(a)
            .and_then(|_| state::device(b))
            .and_then(|_| out(c, (a != b) as i32)))
    }
    unsafe fn cuDeviceGetP2PAttribute(v: *mut i32, _a: u32, s: i32, d: i32) -> u32 {
        r(state::device(s)
            .and_then(|_| state::device(d))
            .and_then(|_| out(v, (s != d) as i32)))
    }
    unsafe fn cuDeviceGetDefaultMemPool(p: *mut *mut c_void, d: i32) -> u32 {
        r(ctx::default_mem_pool(p, d))
    }
    unsafe fn cuDeviceGetMemPool(p: *mut *mut c_void, d: i32) -> u32 {
        r(ctx::default_mem_pool(p, d))
    }
    unsafe fn cuDeviceGetExecAffinitySupport(p: *mut i32, _t: u32, d: i32) -> u32 {
        r(state::device(d).and_then(|_| out(p, 0)))
    }

    // --- contexts ---
    unsafe fn cuCtxCreate_v2(p: *mut *mut c_void, f: u32, d: i32) -> u32 {
        r(ctx::ctx_create(p, f, d))
    }
    unsafe fn cuCtxCreate_v3(p: *mut *mut c_void, _a: *mut c_void, _n: i32, f: u32, d: i32) -> u32 {
        r(ctx::ctx_create(p, f, d))
    }
    unsafe fn cuCtxCreate_v4(p: *mut *mut c_void, _a: *mut c_void, f: u32, d: i32) -> u32 {
        r(ctx::ctx_create(p, f, d))
    }
    unsafe fn cuCtxDestroy_v2(c: *mut c_void) -> u32 {
        r(ctx::ctx_destroy(c))
    }
    unsafe fn cuCtxGetCurrent(p: *mut *mut c_void) -> u32 {
        r(ctx::ctx_get_current(p))
    }
    unsafe fn cuCtxSetCurrent(c: *mut c_void) -> u32 {
        r(ctx::ctx_set_current(c))
    }
    unsafe fn cuCtxPushCurrent_v2(c: *mut c_void) -> u32 {
        r(ctx::ctx_push(c))
    }
    unsafe fn cuCtxPopCurrent_v2(p: *mut *mut c_void) -> u32 {
        r(ctx::ctx_pop(p))
    }
    unsafe fn cuCtxGetDevice(d: *mut i32) -> u32 {
        r(ctx::ctx_get_device(d))
    }
    unsafe fn cuCtxSynchronize() -> u32 {
        r(ctx::ctx_synchronize())
    }
    unsafe fn cuCtxGetFlags(f: *mut u32) -> u32 {
        r(ctx::ctx_get_flags(f))
    }
    unsafe fn cuCtxSetFlags(f: u32) -> u32 {
        r(ctx::ctx_set_flags(f))
    }
    unsafe fn cuCtxGetId(c: *mut c_void, id: *mut u64) -> u32 {
        r(ctx::ctx_get_id(c, id))
    }
    unsafe fn cuCtxGetApiVersion(c: *mut c_void, v: *mut u32) -> u32 {
        r(ctx::ctx_api_version(c, v))
    }
    unsafe fn cuCtxGetLimit(v: *mut usize, l: u32) -> u32 {
        r(ctx::ctx_get_limit(v, l))
    }
    unsafe fn cuCtxSetLimit(_l: u32, _v: usize) -> u32 {
        r(state::current().map(|_| ()))
    }
    unsafe fn cuCtxGetCacheConfig(c: *mut u32) -> u32 {
        r(state::current().and_then(|_| out(c, CU_FUNC_CACHE_PREFER_NONE)))
    }
    unsafe fn cuCtxSetCacheConfig(_c: u32) -> u32 {
        r(state::current().map(|_| ()))
    }
    unsafe fn cuCtxGetStreamPriorityRange(l: *mut i32, g: *mut i32) -> u32 {
        r(state::current().and_then(|_| {
            if !l.is_null() {
                out(l, 0)?;
            }
            if !g.is_null() {
                out(g, -5)?;
            }
            Ok(())
        }))
    }
    unsafe fn cuCtxResetPersistingL2Cache() -> u32 {
        r(state::current().map(|_| ()))
    }
    unsafe fn cuCtxEnablePeerAccess(c: *mut c_void, _f: u32) -> u32 {
        r(state::CONTEXTS.get(c as usize).map(|_| ()))
    }
    unsafe fn cuCtxDisablePeerAccess(c: *mut c_void) -> u32 {
        r(state::CONTEXTS.get(c as usize).map(|_| ()))
    }
    unsafe fn cuDevicePrimaryCtxRetain(p: *mut *mut c_void, d: i32) -> u32 {
        r(ctx::primary_retain(p, d))
    }
    unsafe fn cuDevicePrimaryCtxRelease_v2(d: i32) -> u32 {
        r(ctx::primary_release(d))
    }
    unsafe fn cuDevicePrimaryCtxReset_v2(d: i32) -> u32 {
        r(ctx::primary_reset(d))
    }
    unsafe fn cuDevicePrimaryCtxGetState(d: i32, f: *mut u32, a: *mut i32) -> u32 {
        r(ctx::primary_state(d, f, a))
    }
    unsafe fn cuDevicePrimaryCtxSetFlags_v2(d: i32, f: u32) -> u32 {
        r(ctx::primary_set_flags(d, f))
    }

    // --- memory ---
    unsafe fn cuMemGetInfo_v2(f: *mut usize, t: *mut usize) -> u32 {
        r(mem::mem_info(f, t))
    }
    unsafe fn cuMemAlloc_v2(p: *mut u64, n: usize) -> u32 {
        r(mem::alloc(p, n, MemKind::Device))
    }
    unsafe fn cuMemAllocPitch_v2(
        p: *mut u64,
        pitch: *mut usize,
        w: usize,
        h: usize,
        e: u32,
    ) -> u32 {
        r(mem::alloc_pitch(p, pitch, w, h, e))
    }
    unsafe fn cuMemAllocManaged(p: *mut u64, n: usize, _f: u32) -> u32 {
        r(mem::alloc(p, n, MemKind::Managed))
    }
    unsafe fn cuMemAllocHost_v2(p: *mut *mut c_void, n: usize) -> u32 {
        r(mem::alloc_host(p, n))
    }
    unsafe fn cuMemHostAlloc(p: *mut *mut c_void, n: usize, _f: u32) -> u32 {
        r(mem::alloc_host(p, n))
    }
    unsafe fn cuMemFree_v2(p: u64) -> u32 {
        r(mem::free(p))
    }
    unsafe fn cuMemFreeHost(p: *mut c_void) -> u32 {
        r(mem::free_host(p))
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
    unsafe fn cuMemHostGetDevicePointer_v2(d: *mut u64, p: *mut c_void, _f: u32) -> u32 {
        r(mem::host_get_device_pointer(d, p))
    }
    unsafe fn cuMemHostGetFlags(f: *mut u32, p: *mut c_void) -> u32 {
        r(mem::find(p as u64).and_then(|_| out(f, 0)))
    }
    unsafe fn cuMemGetAddressRange_v2(b: *mut u64, s: *mut usize, p: u64) -> u32 {
        r(mem::address_range(b, s, p))
    }
    unsafe fn cuMemAllocAsync(p: *mut u64, n: usize, s: *mut c_void) -> u32 {
        r(state::stream(s).and_then(|_| mem::alloc(p, n, MemKind::Device)))
    }
    unsafe fn cuMemAllocAsync_ptsz(p: *mut u64, n: usize, s: *mut c_void) -> u32 {
        // SAFETY: the same arguments and contract as the per-thread flavour's.
        unsafe { Self::cuMemAllocAsync(p, n, s) }
    }
    unsafe fn cuMemAllocFromPoolAsync(
        p: *mut u64,
        n: usize,
        pool: *mut c_void,
        s: *mut c_void,
    ) -> u32 {
        r(state::POOLS
            .get(pool as usize)
            .and_then(|_| state::stream(s))
            .and_then(|_| mem::alloc(p, n, MemKind::Device)))
    }
    unsafe fn cuMemAllocFromPoolAsync_ptsz(
        p: *mut u64,
        n: usize,
        pool: *mut c_void,
        s: *mut c_void,
    ) -> u32 {
        // SAFETY: the same arguments and contract as the per-thread flavour's.
        unsafe { Self::cuMemAllocFromPoolAsync(p, n, pool, s) }
    }
    unsafe fn cuMemFreeAsync(p: u64, s: *mut c_void) -> u32 {
        r(mem::free_async(p, s))
    }
    unsafe fn cuMemFreeAsync_ptsz(p: u64, s: *mut c_void) -> u32 {
        r(mem::free_async(p, s))
    }
    unsafe fn cuMemPoolCreate(p: *mut *mut c_void, props: *const c_void) -> u32 {
        r(mem::pool_create(p, props))
    }
    unsafe fn cuMemPoolDestroy(p: *mut c_void) -> u32 {
        r(mem::pool_destroy(p))
    }
    unsafe fn cuMemPoolGetAttribute(p: *mut c_void, a: u32, v: *mut c_void) -> u32 {
        r(mem::pool_attribute(p, a, v, false))
    }
    unsafe fn cuMemPoolSetAttribute(p: *mut c_void, a: u32, v: *mut c_void) -> u32 {
        r(mem::pool_attribute(p, a, v, true))
    }
    unsafe fn cuMemPoolTrimTo(p: *mut c_void, _n: usize) -> u32 {
        r(state::POOLS.get(p as usize).map(|_| ()))
    }
    unsafe fn cuMemPoolSetAccess(p: *mut c_void, _m: *const c_void, _n: usize) -> u32 {
        r(state::POOLS.get(p as usize).map(|_| ()))
    }
    unsafe fn cuDeviceSetMemPool(d: i32, p: *mut c_void) -> u32 {
        r(state::device(d)
            .and_then(|_| state::POOLS.get(p as usize))
            .map(|_| ()))
    }
    unsafe fn cuMemCreate(h: *mut u64, n: usize, prop: *const c_void, _f: u64) -> u32 {
        r(mem::mem_create(h, n, prop))
    }
    unsafe fn cuMemRelease(h: u64) -> u32 {
        r(mem::mem_release(h))
    }
    unsafe fn cuMemAddressReserve(p: *mut u64, n: usize, a: usize, _addr: u64, _f: u64) -> u32 {
        r(mem::address_reserve(p, n, a))
    }
    unsafe fn cuMemAddressFree(p: u64, n: usize) -> u32 {
        r(mem::address_free(p, n))
    }
    unsafe fn cuMemMap(p: u64, n: usize, o: usize, h: u64, _f: u64) -> u32 {
        r(mem::mem_map(p, n, o, h))
    }
    unsafe fn cuMemUnmap(p: u64, n: usize) -> u32 {
        r(mem::mem_unmap(p, n))
    }
    unsafe fn cuMemSetAccess(p: u64, _n: usize, _d: *const c_void, _c: usize) -> u32 {
        r(mem::find(p).map(|_| ()))
    }
    unsafe fn cuMemGetAllocationGranularity(g: *mut usize, _p: *const c_void, _o: u32) -> u32 {
        r(mem::granularity(g))
    }
    unsafe fn cuPointerGetAttribute(d: *mut c_void, a: u32, p: u64) -> u32 {
        r(mem::pointer_attribute(d, a, p))
    }
    unsafe fn cuPointerGetAttributes(n: u32, a: *mut u32, d: *mut *mut c_void, p: u64) -> u32 {
        r(mem::pointer_attributes(n, a, d, p))
    }

    // --- copies and memsets ---
    unsafe fn cuMemcpy(d: u64, s: u64, n: usize) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Any,
            s,
            mem::Expect::Any,
            n,
            NO_STREAM,
        ))
    }
    unsafe fn cuMemcpy_ptds(d: u64, s: u64, n: usize) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Any,
            s,
            mem::Expect::Any,
            n,
            NO_STREAM,
        ))
    }
    unsafe fn cuMemcpyAsync(d: u64, s: u64, n: usize, st: *mut c_void) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Any,
            s,
            mem::Expect::Any,
            n,
            Some(st),
        ))
    }
    unsafe fn cuMemcpyAsync_ptsz(d: u64, s: u64, n: usize, st: *mut c_void) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Any,
            s,
            mem::Expect::Any,
            n,
            Some(st),
        ))
    }
    unsafe fn cuMemcpyHtoD_v2(d: u64, s: *const c_void, n: usize) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Device,
            s as u64,
            mem::Expect::Host,
            n,
            NO_STREAM,
        ))
    }
    unsafe fn cuMemcpyHtoD_v2_ptds(d: u64, s: *const c_void, n: usize) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Device,
            s as u64,
            mem::Expect::Host,
            n,
            NO_STREAM,
        ))
    }
    unsafe fn cuMemcpyDtoH_v2(d: *mut c_void, s: u64, n: usize) -> u32 {
        r(mem::copy(
            d as u64,
            mem::Expect::Host,
            s,
            mem::Expect::Device,
            n,
            NO_STREAM,
        ))
    }
    unsafe fn cuMemcpyDtoH_v2_ptds(d: *mut c_void, s: u64, n: usize) -> u32 {
        r(mem::copy(
            d as u64,
            mem::Expect::Host,
            s,
            mem::Expect::Device,
            n,
            NO_STREAM,
        ))
    }
    unsafe fn cuMemcpyDtoD_v2(d: u64, s: u64, n: usize) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Device,
            s,
            mem::Expect::Device,
            n,
            NO_STREAM,
        ))
    }
    unsafe fn cuMemcpyDtoD_v2_ptds(d: u64, s: u64, n: usize) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Device,
            s,
            mem::Expect::Device,
            n,
            NO_STREAM,
        ))
    }
    unsafe fn cuMemcpyHtoDAsync_v2(d: u64, s: *const c_void, n: usize, st: *mut c_void) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Device,
            s as u64,
            mem::Expect::Host,
            n,
            Some(st),
        ))
    }
    unsafe fn cuMemcpyHtoDAsync_v2_ptsz(
        d: u64,
        s: *const c_void,
        n: usize,
        st: *mut c_void,
    ) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Device,
            s as u64,
            mem::Expect::Host,
            n,
            Some(st),
        ))
    }
    unsafe fn cuMemcpyDtoHAsync_v2(d: *mut c_void, s: u64, n: usize, st: *mut c_void) -> u32 {
        r(mem::copy(
            d as u64,
            mem::Expect::Host,
            s,
            mem::Expect::Device,
            n,
            Some(st),
        ))
    }
    unsafe fn cuMemcpyDtoHAsync_v2_ptsz(d: *mut c_void, s: u64, n: usize, st: *mut c_void) -> u32 {
        r(mem::copy(
            d as u64,
            mem::Expect::Host,
            s,
            mem::Expect::Device,
            n,
            Some(st),
        ))
    }
    unsafe fn cuMemcpyDtoDAsync_v2(d: u64, s: u64, n: usize, st: *mut c_void) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Device,
            s,
            mem::Expect::Device,
            n,
            Some(st),
        ))
    }
    unsafe fn cuMemcpyDtoDAsync_v2_ptsz(d: u64, s: u64, n: usize, st: *mut c_void) -> u32 {
        r(mem::copy(
            d,
            mem::Expect::Device,
            s,
            mem::Expect::Device,
            n,
            Some(st),
        ))
    }
    unsafe fn cuMemcpy2D_v2(p: *const c_void) -> u32 {
        r(mem::copy_2d(p, NO_STREAM))
    }
    unsafe fn cuMemcpy2D_v2_ptds(p: *const c_void) -> u32 {
        r(mem::copy_2d(p, NO_STREAM))
    }
    unsafe fn cuMemcpy2DUnaligned_v2(p: *const c_void) -> u32 {
        r(mem::copy_2d(p, NO_STREAM))
    }
    unsafe fn cuMemcpy2DUnaligned_v2_ptds(p: *const c_void) -> u32 {
        r(mem::copy_2d(p, NO_STREAM))
    }
    unsafe fn cuMemcpy2DAsync_v2(p: *const c_void, s: *mut c_void) -> u32 {
        r(mem::copy_2d(p, Some(s)))
    }
    unsafe fn cuMemcpy2DAsync_v2_ptsz(p: *const c_void, s: *mut c_void) -> u32 {
        r(mem::copy_2d(p, Some(s)))
    }
    unsafe fn cuMemsetD8_v2(d: u64, v: u8, n: usize) -> u32 {
        r(mem::memset(d, Fill::U8(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD8_v2_ptds(d: u64, v: u8, n: usize) -> u32 {
        r(mem::memset(d, Fill::U8(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD16_v2(d: u64, v: u16, n: usize) -> u32 {
        r(mem::memset(d, Fill::U16(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD16_v2_ptds(d: u64, v: u16, n: usize) -> u32 {
        r(mem::memset(d, Fill::U16(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD32_v2(d: u64, v: u32, n: usize) -> u32 {
        r(mem::memset(d, Fill::U32(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD32_v2_ptds(d: u64, v: u32, n: usize) -> u32 {
        r(mem::memset(d, Fill::U32(v), n, NO_STREAM))
    }
    unsafe fn cuMemsetD8Async(d: u64, v: u8, n: usize, s: *mut c_void) -> u32 {
        r(mem::memset(d, Fill::U8(v), n, Some(s)))
    }
    unsafe fn cuMemsetD8Async_ptsz(d: u64, v: u8, n: usize, s: *mut c_void) -> u32 {
        r(mem::memset(d, Fill::U8(v), n, Some(s)))
    }
    unsafe fn cuMemsetD16Async(d: u64, v: u16, n: usize, s: *mut c_void) -> u32 {
        r(mem::memset(d, Fill::U16(v), n, Some(s)))
    }
    unsafe fn cuMemsetD16Async_ptsz(d: u64, v: u16, n: usize, s: *mut c_void) -> u32 {
        r(mem::memset(d, Fill::U16(v), n, Some(s)))
    }
    unsafe fn cuMemsetD32Async(d: u64, v: u32, n: usize, s: *mut c_void) -> u32 {
        r(mem::memset(d, Fill::U32(v), n, Some(s)))
    }
    unsafe fn cuMemsetD32Async_ptsz(d: u64, v: u32, n: usize, s: *mut c_void) -> u32 {
        r(mem::memset(d, Fill::U32(v), n, Some(s)))
    }

    // --- modules, libraries, functions ---
    unsafe fn cuModuleLoad(m: *mut *mut c_void, f: *const c_char) -> u32 {
        r(exec::module_load_file(m, f))
    }
    unsafe fn cuModuleLoadData(m: *mut *mut c_void, i: *const c_void) -> u32 {
        r(exec::module_load_data(m, i))
    }
    unsafe fn cuModuleLoadDataEx(
        m: *mut *mut c_void,
        i: *const c_void,
        _n: u32,
        _o: *mut u32,
        _v: *mut *mut c_void,
    ) -> u32 {
        r(exec::module_load_data(m, i))
    }
    unsafe fn cuModuleLoadFatBinary(m: *mut *mut c_void, i: *const c_void) -> u32 {
        r(exec::module_load_data(m, i))
    }
    unsafe fn cuModuleUnload(m: *mut c_void) -> u32 {
        r(exec::module_unload(m))
    }
    unsafe fn cuModuleGetFunction(f: *mut *mut c_void, m: *mut c_void, n: *const c_char) -> u32 {
        r(exec::module_get_function(f, m, n))
    }
    unsafe fn cuModuleGetGlobal_v2(
        d: *mut u64,
        b: *mut usize,
        m: *mut c_void,
        n: *const c_char,
    ) -> u32 {
        r(exec::module_get_global(d, b, m, n))
    }
    unsafe fn cuModuleGetLoadingMode(m: *mut u32) -> u32 {
        r(driver().and_then(|_| out(m, CU_MODULE_EAGER_LOADING)))
    }
    unsafe fn cuLibraryLoadData(
        l: *mut *mut c_void,
        c: *const c_void,
        _a: *mut u32,
        _b: *mut *mut c_void,
        _n: u32,
        _d: *mut u32,
        _e: *mut *mut c_void,
        _m: u32,
    ) -> u32 {
        r(exec::library_load_data(l, c))
    }
    unsafe fn cuLibraryLoadFromFile(
        l: *mut *mut c_void,
        f: *const c_char,
        _a: *mut u32,
        _b: *mut *mut c_void,
        _n: u32,
        _d: *mut u32,
        _e: *mut *mut c_void,
        _m: u32,
    ) -> u32 {
        r(exec::library_load_file(l, f))
    }
    unsafe fn cuLibraryUnload(l: *mut c_void) -> u32 {
        r(exec::module_unload(l))
    }
    unsafe fn cuLibraryGetKernel(k: *mut *mut c_void, l: *mut c_void, n: *const c_char) -> u32 {
        r(exec::module_get_function(k, l, n))
    }
    unsafe fn cuLibraryGetModule(m: *mut *mut c_void, l: *mut c_void) -> u32 {
        r(exec::library_get_module(m, l))
    }
    unsafe fn cuKernelGetFunction(f: *mut *mut c_void, k: *mut c_void) -> u32 {
        r(state::FUNCTIONS.get(k as usize).and_then(|_| out(f, k)))
    }
    unsafe fn cuKernelGetName(n: *mut *const c_char, k: *mut c_void) -> u32 {
        r(exec::function_name(n, k))
    }
    unsafe fn cuKernelGetAttribute(p: *mut i32, a: u32, k: *mut c_void, _d: i32) -> u32 {
        r(exec::func_attribute(p, a, k))
    }
    unsafe fn cuKernelSetAttribute(_a: u32, _v: i32, k: *mut c_void, _d: i32) -> u32 {
        r(state::FUNCTIONS.get(k as usize).map(|_| ()))
    }
    unsafe fn cuFuncGetModule(m: *mut *mut c_void, f: *mut c_void) -> u32 {
        r(exec::function_module(m, f))
    }
    unsafe fn cuFuncGetName(n: *mut *const c_char, f: *mut c_void) -> u32 {
        r(exec::function_name(n, f))
    }
    unsafe fn cuFuncGetAttribute(p: *mut i32, a: u32, f: *mut c_void) -> u32 {
        r(exec::func_attribute(p, a, f))
    }
    unsafe fn cuFuncSetAttribute(f: *mut c_void, _a: u32, _v: i32) -> u32 {
        r(state::FUNCTIONS.get(f as usize).map(|_| ()))
    }
    unsafe fn cuFuncSetCacheConfig(f: *mut c_void, _c: u32) -> u32 {
        r(state::FUNCTIONS.get(f as usize).map(|_| ()))
    }
    unsafe fn cuFuncGetParamInfo(f: *mut c_void, i: usize, o: *mut usize, s: *mut usize) -> u32 {
        r(exec::param_info(f, i, o, s))
    }
    unsafe fn cuOccupancyMaxActiveBlocksPerMultiprocessor(
        n: *mut i32,
        f: *mut c_void,
        b: i32,
        _s: usize,
    ) -> u32 {
        r(exec::max_active_blocks(n, f, b))
    }
    unsafe fn cuOccupancyMaxActiveBlocksPerMultiprocessorWithFlags(
        n: *mut i32,
        f: *mut c_void,
        b: i32,
        _s: usize,
        _fl: u32,
    ) -> u32 {
        r(exec::max_active_blocks(n, f, b))
    }
    unsafe fn cuOccupancyMaxPotentialBlockSize(
        g: *mut i32,
        b: *mut i32,
        f: *mut c_void,
        _cb: *mut c_void,
        _s: usize,
        l: i32,
    ) -> u32 {
        r(exec::max_potential_block_size(g, b, f, l))
    }
    unsafe fn cuOccupancyMaxPotentialBlockSizeWithFlags(
        g: *mut i32,
        b: *mut i32,
        f: *mut c_void,
        _cb: *mut c_void,
        _s: usize,
        l: i32,
        _fl: u32,
    ) -> u32 {
        r(exec::max_potential_block_size(g, b, f, l))
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
        r(exec::launch(f, [gx, gy, gz], [bx, by, bz], sh, s, p, e))
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
        r(exec::launch(f, [gx, gy, gz], [bx, by, bz], sh, s, p, e))
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
        r(exec::launch(
            f,
            [gx, gy, gz],
            [bx, by, bz],
            sh,
            s,
            p,
            std::ptr::null_mut(),
        ))
    }
    unsafe fn cuLaunchCooperativeKernel_ptsz(
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
        r(exec::launch(
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
        r(exec::launch_ex(c, f, p, e))
    }
    unsafe fn cuLaunchKernelEx_ptsz(
        c: *const c_void,
        f: *mut c_void,
        p: *mut *mut c_void,
        e: *mut *mut c_void,
    ) -> u32 {
        r(exec::launch_ex(c, f, p, e))
    }
    unsafe fn cuLaunchHostFunc(s: *mut c_void, f: *mut c_void, u: *mut c_void) -> u32 {
        r(exec::host_func(s, f, u))
    }
    unsafe fn cuLaunchHostFunc_ptsz(s: *mut c_void, f: *mut c_void, u: *mut c_void) -> u32 {
        r(exec::host_func(s, f, u))
    }

    // --- streams ---
    unsafe fn cuStreamCreate(p: *mut *mut c_void, f: u32) -> u32 {
        r(exec::stream_create(p, f, 0))
    }
    unsafe fn cuStreamCreateWithPriority(p: *mut *mut c_void, f: u32, pr: i32) -> u32 {
        r(exec::stream_create(p, f, pr))
    }
    unsafe fn cuStreamDestroy_v2(s: *mut c_void) -> u32 {
        r(exec::stream_destroy(s))
    }
    unsafe fn cuStreamSynchronize(s: *mut c_void) -> u32 {
        r(exec::stream_synchronize(s))
    }
    unsafe fn cuStreamSynchronize_ptsz(s: *mut c_void) -> u32 {
        r(exec::stream_synchronize(s))
    }
    unsafe fn cuStreamQuery(s: *mut c_void) -> u32 {
        r(exec::stream_query(s))
    }
    unsafe fn cuStreamQuery_ptsz(s: *mut c_void) -> u32 {
        r(exec::stream_query(s))
    }
    unsafe fn cuStreamWaitEvent(s: *mut c_void, e: *mut c_void, _f: u32) -> u32 {
        r(exec::stream_wait_event(s, e))
    }
    unsafe fn cuStreamWaitEvent_ptsz(s: *mut c_void, e: *mut c_void, _f: u32) -> u32 {
        r(exec::stream_wait_event(s, e))
    }
    unsafe fn cuStreamGetFlags(s: *mut c_void, f: *mut u32) -> u32 {
        r(exec::stream_flags(s, f))
    }
    unsafe fn cuStreamGetFlags_ptsz(s: *mut c_void, f: *mut u32) -> u32 {
        r(exec::stream_flags(s, f))
    }
    unsafe fn cuStreamGetPriority(s: *mut c_void, p: *mut i32) -> u32 {
        r(exec::stream_priority(s, p))
    }
    unsafe fn cuStreamGetPriority_ptsz(s: *mut c_void, p: *mut i32) -> u32 {
        r(exec::stream_priority(s, p))
    }
    unsafe fn cuStreamGetCtx(s: *mut c_void, c: *mut *mut c_void) -> u32 {
        r(exec::stream_ctx(s, c))
    }
    unsafe fn cuStreamGetCtx_ptsz(s: *mut c_void, c: *mut *mut c_void) -> u32 {
        r(exec::stream_ctx(s, c))
    }
    unsafe fn cuStreamGetDevice(s: *mut c_void, d: *mut i32) -> u32 {
        r(exec::stream_device(s, d))
    }
    unsafe fn cuStreamGetDevice_ptsz(s: *mut c_void, d: *mut i32) -> u32 {
        r(exec::stream_device(s, d))
    }
    unsafe fn cuStreamGetId(s: *mut c_void, i: *mut u64) -> u32 {
        r(exec::stream_id(s, i))
    }
    unsafe fn cuStreamGetId_ptsz(s: *mut c_void, i: *mut u64) -> u32 {
        r(exec::stream_id(s, i))
    }
    unsafe fn cuStreamAddCallback(s: *mut c_void, c: *mut c_void, u: *mut c_void, _f: u32) -> u32 {
        r(exec::add_callback(s, c, u))
    }
    unsafe fn cuStreamAddCallback_ptsz(
        s: *mut c_void,
        c: *mut c_void,
        u: *mut c_void,
        _f: u32,
    ) -> u32 {
        r(exec::add_callback(s, c, u))
    }
    unsafe fn cuStreamAttachMemAsync(s: *mut c_void, _p: u64, _n: usize, _f: u32) -> u32 {
        r(state::stream(s).map(|_| ()))
    }
    unsafe fn cuStreamAttachMemAsync_ptsz(s: *mut c_void, _p: u64, _n: usize, _f: u32) -> u32 {
        r(state::stream(s).map(|_| ()))
    }
    unsafe fn cuStreamBeginCapture_v2(s: *mut c_void, _m: u32) -> u32 {
        r(exec::begin_capture(s))
    }
    unsafe fn cuStreamBeginCapture_v2_ptsz(s: *mut c_void, _m: u32) -> u32 {
        r(exec::begin_capture(s))
    }
    unsafe fn cuStreamBeginCapture(s: *mut c_void) -> u32 {
        r(exec::begin_capture(s))
    }
    unsafe fn cuStreamBeginCapture_ptsz(s: *mut c_void) -> u32 {
        r(exec::begin_capture(s))
    }
    unsafe fn cuStreamEndCapture(s: *mut c_void, g: *mut *mut c_void) -> u32 {
        r(exec::end_capture(s, g))
    }
    unsafe fn cuStreamEndCapture_ptsz(s: *mut c_void, g: *mut *mut c_void) -> u32 {
        r(exec::end_capture(s, g))
    }
    unsafe fn cuStreamIsCapturing(s: *mut c_void, st: *mut u32) -> u32 {
        r(exec::is_capturing(s, st))
    }
    unsafe fn cuStreamIsCapturing_ptsz(s: *mut c_void, st: *mut u32) -> u32 {
        r(exec::is_capturing(s, st))
    }

    // --- graphs ---
    unsafe fn cuGraphInstantiateWithFlags(e: *mut *mut c_void, g: *mut c_void, _f: u64) -> u32 {
        r(exec::graph_instantiate(e, g))
    }
    unsafe fn cuGraphInstantiate_v2(
        e: *mut *mut c_void,
        g: *mut c_void,
        _n: *mut *mut c_void,
        _l: *mut c_char,
        _s: usize,
    ) -> u32 {
        r(exec::graph_instantiate(e, g))
    }
    unsafe fn cuGraphInstantiateWithParams(
        e: *mut *mut c_void,
        g: *mut c_void,
        _p: *mut c_void,
    ) -> u32 {
        r(exec::graph_instantiate(e, g))
    }
    unsafe fn cuGraphInstantiateWithParams_ptsz(
        e: *mut *mut c_void,
        g: *mut c_void,
        _p: *mut c_void,
    ) -> u32 {
        r(exec::graph_instantiate(e, g))
    }
    unsafe fn cuGraphLaunch(e: *mut c_void, s: *mut c_void) -> u32 {
        r(exec::graph_launch(e, s))
    }
    unsafe fn cuGraphLaunch_ptsz(e: *mut c_void, s: *mut c_void) -> u32 {
        r(exec::graph_launch(e, s))
    }
    unsafe fn cuGraphDestroy(g: *mut c_void) -> u32 {
        r(driver()
            .and_then(|_| state::GRAPHS.remove(g as usize))
            .map(|_| ()))
    }
    unsafe fn cuGraphExecDestroy(e: *mut c_void) -> u32 {
        r(driver()
            .and_then(|_| state::GRAPH_EXECS.remove(e as usize))
            .map(|_| ()))
    }

    // --- stream capture mode (kept per thread; the simulator needs no enforcement) ---
    unsafe fn cuThreadExchangeStreamCaptureMode(mode: *mut u32) -> u32 {
        r(driver().and_then(|_| {
            let new = ffi::read(mode)?;
            thread_local! { static MODE: std::cell::Cell<u32> = const { std::cell::Cell::new(CU_STREAM_CAPTURE_MODE_GLOBAL) }; }
            out(mode, MODE.with(|m| m.replace(new)))
        }))
    }

    // --- events ---
    unsafe fn cuEventCreate(p: *mut *mut c_void, f: u32) -> u32 {
        r(exec::event_create(p, f))
    }
    unsafe fn cuEventDestroy_v2(e: *mut c_void) -> u32 {
        r(exec::event_destroy(e))
    }
    unsafe fn cuEventRecord(e: *mut c_void, s: *mut c_void) -> u32 {
        r(exec::event_record(e, s))
    }
    unsafe fn cuEventRecord_ptsz(e: *mut c_void, s: *mut c_void) -> u32 {
        r(exec::event_record(e, s))
    }
    unsafe fn cuEventRecordWithFlags(e: *mut c_void, s: *mut c_void, _f: u32) -> u32 {
        r(exec::event_record(e, s))
    }
    unsafe fn cuEventRecordWithFlags_ptsz(e: *mut c_void, s: *mut c_void, _f: u32) -> u32 {
        r(exec::event_record(e, s))
    }
    unsafe fn cuEventQuery(e: *mut c_void) -> u32 {
        r(exec::event_query(e))
    }
    unsafe fn cuEventSynchronize(e: *mut c_void) -> u32 {
        r(exec::event_synchronize(e))
    }
    unsafe fn cuEventElapsedTime(ms: *mut f32, a: *mut c_void, b: *mut c_void) -> u32 {
        r(exec::event_elapsed(ms, a, b))
    }
    unsafe fn cuEventElapsedTime_v2(ms: *mut f32, a: *mut c_void, b: *mut c_void) -> u32 {
        r(exec::event_elapsed(ms, a, b))
    }
}
