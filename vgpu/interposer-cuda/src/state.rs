//! The process's vGPU and what it needs to know about devices: which device ordinals (after
//! `CUDA_VISIBLE_DEVICES` remapping) and NVML handles are the vGPU's device, identified by UUID
//! ([`tf_hal::DeviceUuid`]: the driver's bytes and NVML's `GPU-…`/`MIG-…` text compare by value).

use std::collections::HashMap;
use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use tf_cuda_abi::driver::*;
use tf_hal::DeviceUuid;
use tf_vgpu_limiter::Client;

use crate::real::real;

/// The process's vGPU, if it has one (from the environment; see `tf_vgpu_limiter::client`).
pub fn client() -> Option<&'static Client> {
    static C: OnceLock<Option<Client>> = OnceLock::new();
    C.get_or_init(|| {
        tf_os::init_logging();
        let c = Client::from_env();
        if let Some(c) = &c {
            let l = c.limits();
            tracing::info!(
                device = c.device_uuid(),
                vram_quota = ?l.vram_quota,
                compute_share = ?l.compute_share,
                "tensor-fusion vGPU limits in force"
            );
        }
        c
    })
    .as_ref()
}

/// The vGPU's device (`None`: not known, so every device counts as the vGPU's).
fn vgpu_device(c: &Client) -> Option<DeviceUuid> {
    static U: OnceLock<Option<DeviceUuid>> = OnceLock::new();
    *U.get_or_init(|| DeviceUuid::parse(c.device_uuid()).ok())
}

const UNKNOWN: u8 = 0;
const LIMITED: u8 = 1;
const OTHER: u8 = 2;
const MAX_ORDINALS: usize = 64;

fn ordinal_cache() -> &'static [AtomicU8; MAX_ORDINALS] {
    static C: [AtomicU8; MAX_ORDINALS] = [const { AtomicU8::new(UNKNOWN) }; MAX_ORDINALS];
    &C
}

/// Whether device `ordinal` (as this process numbers devices) is the vGPU's device.
pub fn device_limited(c: &Client, ordinal: i32) -> bool {
    let Ok(i) = usize::try_from(ordinal) else {
        return true;
    };
    let cache = ordinal_cache();
    if let Some(v) = cache.get(i) {
        match v.load(Ordering::Relaxed) {
            LIMITED => return true,
            OTHER => return false,
            _ => {}
        }
    }
    let uuid = device_uuid(ordinal);
    let limited = match (uuid, vgpu_device(c)) {
        (Some(u), Some(mine)) => u == mine,
        _ => true, // cannot tell: enforce
    };
    if uuid.is_some()
        && let Some(v) = cache.get(i)
    {
        v.store(if limited { LIMITED } else { OTHER }, Ordering::Relaxed);
    }
    limited
}

fn device_uuid(ordinal: i32) -> Option<DeviceUuid> {
    let mut b = [0u8; 16];
    let rc = if let Some(f) = real!(driver_fn::cuDeviceGetUuid_v2) {
        // SAFETY: a 16-byte CUuuid buffer and a device ordinal.
        unsafe { f(b.as_mut_ptr() as *mut c_void, ordinal) }
    } else if let Some(f) = real!(driver_fn::cuDeviceGetUuid) {
        // SAFETY: as above.
        unsafe { f(b.as_mut_ptr() as *mut c_void, ordinal) }
    } else {
        return None;
    };
    (rc == CUDA_SUCCESS).then(|| DeviceUuid::from_bytes(b))
}

/// How many devices this process sees (0 if unknown yet).
fn visible_devices() -> i32 {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.load(Ordering::Relaxed);
    if n != 0 {
        return n as i32 - 1;
    }
    let mut count = 0i32;
    let rc = match real!(driver_fn::cuDeviceGetCount) {
        // SAFETY: an i32 output.
        Some(f) => unsafe { f(&mut count) },
        None => CUDA_ERROR_NOT_INITIALIZED,
    };
    if rc != CUDA_SUCCESS {
        return 0;
    }
    N.store(count as usize + 1, Ordering::Relaxed);
    count
}

/// Whether the current context's device is the vGPU's device.
pub fn current_device_limited(c: &Client) -> bool {
    // The usual case (`tensor-fusion run` shows the process only its vGPU's device): decided once.
    if visible_devices() == 1 {
        return device_limited(c, 0);
    }
    let mut dev = 0i32;
    let rc = match real!(driver_fn::cuCtxGetDevice) {
        // SAFETY: an i32 output.
        Some(f) => unsafe { f(&mut dev) },
        None => return true,
    };
    rc != CUDA_SUCCESS || device_limited(c, dev)
}

/// The current context's handle (0: none).
pub fn current_context() -> usize {
    let mut ctx: *mut c_void = std::ptr::null_mut();
    match real!(driver_fn::cuCtxGetCurrent) {
        // SAFETY: a valid output.
        Some(f) if unsafe { f(&mut ctx) } == CUDA_SUCCESS => ctx as usize,
        _ => 0,
    }
}

/// The handle of device `dev`'s primary context while it is active (`None`: inactive).
pub fn primary_context(dev: i32) -> Option<usize> {
    let (mut flags, mut active) = (0u32, 0i32);
    let state = real!(driver_fn::cuDevicePrimaryCtxGetState)?;
    // SAFETY: two outputs of the documented types.
    if unsafe { state(dev, &mut flags, &mut active) } != CUDA_SUCCESS || active == 0 {
        return None;
    }
    // Its handle: retain (it is active, so this creates nothing) and release again.
    let retain = real!(driver_fn::cuDevicePrimaryCtxRetain)?;
    let release = real!(driver_fn::cuDevicePrimaryCtxRelease_v2)?;
    let mut ctx: *mut c_void = std::ptr::null_mut();
    // SAFETY: a valid output; the retain is balanced by the release below.
    if unsafe { retain(&mut ctx, dev) } != CUDA_SUCCESS {
        return None;
    }
    // SAFETY: releasing the reference we just took.
    unsafe { release(dev) };
    Some(ctx as usize)
}

/// Free an allocation with the real driver (undoing one we could not charge in full).
pub fn free_raw(ptr: u64) {
    if let Some(f) = real!(driver_fn::cuMemFree_v2) {
        // SAFETY: freeing an allocation the real driver just made.
        unsafe { f(ptr) };
    }
}

/// Whether an NVML device handle is the vGPU's device (by UUID; cached per handle).
pub fn nvml_device_limited(c: &Client, device: *mut c_void) -> bool {
    static CACHE: OnceLock<Mutex<HashMap<usize, bool>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(&v) = cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(device as usize))
    {
        return v;
    }
    let Some(mine) = vgpu_device(c) else {
        return true;
    };
    let mut buf = [0 as c_char; 96];
    let Some(f) = real!(nvml_fn::nvmlDeviceGetUUID) else {
        return true;
    };
    // SAFETY: a 96-byte buffer for NVML's UUID string.
    let rc = unsafe { f(device, buf.as_mut_ptr(), buf.len() as u32) };
    if rc != tf_cuda_abi::nvml::NVML_SUCCESS {
        return true;
    }
    // SAFETY: NVML wrote a NUL-terminated string into buf.
    let uuid = unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy();
    let v = mine.matches(&uuid);
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(device as usize, v);
    v
}

/// Whether `stream` is capturing a graph (then launches are recorded, not run: they are not
/// paced).
pub fn capturing(stream: *mut c_void) -> bool {
    let mut status = CU_STREAM_CAPTURE_STATUS_NONE;
    match real!(driver_fn::cuStreamIsCapturing) {
        Some(f) => {
            // SAFETY: a valid output; the stream is the caller's.
            let rc = unsafe { f(stream, &mut status) };
            rc == CUDA_SUCCESS && status != CU_STREAM_CAPTURE_STATUS_NONE
        }
        None => false,
    }
}
