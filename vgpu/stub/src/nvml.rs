//! NVML for the remote vGPU: initialisation, device enumeration, names, UUIDs, PCI bus ids and
//! memory (the vGPU's quota as the total, when the worker has one). Everything else answers
//! `NVML_ERROR_NOT_SUPPORTED` (logged once). It shares the driver's connection to the worker.

use std::ffi::{c_char, c_void};

use tf_cuda_abi::nvml::*;
use tf_cuda_abi::nvml_types::{nvmlMemory_t, nvmlMemory_v2_t};
use tf_hal::Backend as _;

use crate::Nvml;
use crate::state::{device, driver, init};

tf_ffi::kit!(tf_cuda_abi::NvmlAbi, checked);

/// The remote vGPU's NVML.
pub struct RemoteNvml;

type NvResult<T = ()> = Result<T, u32>;

fn start() -> NvResult {
    init().map_err(|_| NVML_ERROR_DRIVER_NOT_LOADED)
}

/// Device handles are `index + 1` (never dereferenced).
fn index_of(h: *mut c_void) -> NvResult<u32> {
    start()?;
    let i = (h as usize)
        .checked_sub(1)
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    device(i as i32).map_err(|_| NVML_ERROR_INVALID_ARGUMENT)?;
    Ok(i as u32)
}

fn memory(h: *mut c_void) -> NvResult<tf_hal::MemoryInfo> {
    let i = index_of(h)?;
    let d = driver().map_err(|_| NVML_ERROR_UNINITIALIZED)?;
    d.backend
        .device(i)
        .and_then(|dev| dev.memory())
        .map_err(|e| {
            tracing::debug!("{e}");
            NVML_ERROR_GPU_IS_LOST
        })
}

fn count() -> NvResult<u32> {
    start()?;
    Ok(driver()
        .map_err(|_| NVML_ERROR_UNINITIALIZED)?
        .devices
        .len() as u32)
}

impl Nvml for RemoteNvml {
    unsafe fn nvmlInit() -> u32 {
        status(start())
    }
    unsafe fn nvmlInit_v2() -> u32 {
        status(start())
    }
    unsafe fn nvmlInitWithFlags(_f: u32) -> u32 {
        status(start())
    }
    unsafe fn nvmlShutdown() -> u32 {
        NVML_SUCCESS
    }
    unsafe fn nvmlDeviceGetCount(c: *mut u32) -> u32 {
        status(count().and_then(|n| out(c, n)))
    }
    unsafe fn nvmlDeviceGetCount_v2(c: *mut u32) -> u32 {
        status(count().and_then(|n| out(c, n)))
    }
    unsafe fn nvmlDeviceGetHandleByIndex(i: u32, d: *mut *mut c_void) -> u32 {
        status(count().and_then(|n| {
            if i >= n {
                return Err(NVML_ERROR_INVALID_ARGUMENT);
            }
            out(d, (i as usize + 1) as *mut c_void)
        }))
    }
    unsafe fn nvmlDeviceGetHandleByIndex_v2(i: u32, d: *mut *mut c_void) -> u32 {
        // SAFETY: the same arguments and contract as the v1 entry.
        unsafe { Self::nvmlDeviceGetHandleByIndex(i, d) }
    }
    unsafe fn nvmlDeviceGetHandleByUUID(u: *const c_char, d: *mut *mut c_void) -> u32 {
        status((|| {
            start()?;
            let want = cstr(u)?;
            let drv = driver().map_err(|_| NVML_ERROR_UNINITIALIZED)?;
            let i = drv
                .devices
                .iter()
                .position(|x| tf_hal::DeviceUuid::parse(&x.uuid).is_ok_and(|id| id.matches(&want)))
                .ok_or(NVML_ERROR_NOT_FOUND)?;
            out(d, (i + 1) as *mut c_void)
        })())
    }
    unsafe fn nvmlDeviceGetIndex(d: *mut c_void, i: *mut u32) -> u32 {
        status(index_of(d).and_then(|x| out(i, x)))
    }
    unsafe fn nvmlDeviceGetName(d: *mut c_void, n: *mut c_char, l: u32) -> u32 {
        status(index_of(d).and_then(|i| {
            let info = device(i as i32).map_err(|_| NVML_ERROR_INVALID_ARGUMENT)?;
            write_str(n, l, &info.model)
        }))
    }
    unsafe fn nvmlDeviceGetUUID(d: *mut c_void, u: *mut c_char, l: u32) -> u32 {
        status(index_of(d).and_then(|i| {
            let info = device(i as i32).map_err(|_| NVML_ERROR_INVALID_ARGUMENT)?;
            write_str(u, l, &info.uuid)
        }))
    }
    unsafe fn nvmlDeviceGetMemoryInfo(d: *mut c_void, m: *mut c_void) -> u32 {
        status(memory(d).and_then(|x| {
            out(
                m as *mut nvmlMemory_t,
                nvmlMemory_t {
                    total: x.total_bytes,
                    free: x.free_bytes,
                    used: x.used_bytes,
                },
            )
        }))
    }
    unsafe fn nvmlDeviceGetMemoryInfo_v2(d: *mut c_void, m: *mut c_void) -> u32 {
        status(memory(d).and_then(|x| {
            let p = m as *mut nvmlMemory_v2_t;
            let v = read(p as *const nvmlMemory_v2_t)?;
            out(
                p,
                nvmlMemory_v2_t {
                    version: v.version,
                    total: x.total_bytes,
                    reserved: 0,
                    free: x.free_bytes,
                    used: x.used_bytes,
                },
            )
        }))
    }
    unsafe fn nvmlSystemGetDriverVersion(v: *mut c_char, l: u32) -> u32 {
        status(start().and_then(|()| {
            let d = device(0).map_err(|_| NVML_ERROR_UNINITIALIZED)?;
            write_str(v, l, &d.driver_version)
        }))
    }
    unsafe fn nvmlSystemGetCudaDriverVersion(v: *mut i32) -> u32 {
        status(start().and_then(|()| out(v, tf_cuda_abi::driver::CUDA_VERSION as i32)))
    }
    unsafe fn nvmlSystemGetCudaDriverVersion_v2(v: *mut i32) -> u32 {
        status(start().and_then(|()| out(v, tf_cuda_abi::driver::CUDA_VERSION as i32)))
    }
    unsafe fn nvmlErrorString(r: u32) -> *const c_char {
        static TEXTS: std::sync::OnceLock<std::collections::HashMap<u32, std::ffi::CString>> =
            std::sync::OnceLock::new();
        let m = TEXTS.get_or_init(|| {
            NVML_RETURN_NAMES
                .iter()
                .map(|(c, n)| (*c, std::ffi::CString::new(*n).unwrap_or_default()))
                .collect()
        });
        m.get(&r)
            .map_or(c"NVML_ERROR_UNKNOWN".as_ptr(), |s| s.as_ptr())
    }
}
