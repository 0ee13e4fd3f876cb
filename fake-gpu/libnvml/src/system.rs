//! Library and system calls: init and shutdown, versions, error strings, process names, device
//! enumeration and lookup.

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_void};
use std::sync::OnceLock;

use tf_cuda_abi::nvml::*;

use crate::ffi::{NvmlResult, cstr, out, write_str, write_str_truncated};
use crate::model::PciAddress;
use crate::state::{self, Handle};

/// The driver version the simulated GPU reports: a release of the R575 branch, the branch of
/// CUDA 12.9, whose headers the ABI is generated from. Clients parse it as `major.minor.patch`.
pub const DRIVER_VERSION: &str = "575.57.08";
/// `nvmlSystemGetNVMLVersion`: the NVML API version, then the driver version.
pub const NVML_VERSION: &str = "12.575.57.08";
/// `nvmlSystemGetCudaDriverVersion`: CUDA 12.9.
pub const CUDA_DRIVER_VERSION: i32 = 12090;

/// `nvmlInit`, `nvmlInit_v2`, `nvmlInitWithFlags`.
pub fn init(flags: u32) -> NvmlResult {
    tracing::debug!("nvmlInit (flags {flags:#x})");
    state::init()
}

/// `nvmlErrorString`: NVIDIA's wording for the common codes, a readable form of the symbolic
/// name for the rest.
pub fn error_string(code: u32) -> *const c_char {
    static STRINGS: OnceLock<HashMap<u32, CString>> = OnceLock::new();
    let table = STRINGS.get_or_init(|| {
        NVML_RETURN_NAMES
            .iter()
            .map(|&(c, name)| {
                let text = match c {
                    NVML_SUCCESS => "Success".to_string(),
                    NVML_ERROR_UNINITIALIZED => "Uninitialized".into(),
                    NVML_ERROR_INVALID_ARGUMENT => "Invalid Argument".into(),
                    NVML_ERROR_NOT_SUPPORTED => "Not Supported".into(),
                    NVML_ERROR_NO_PERMISSION => "Insufficient Permissions".into(),
                    NVML_ERROR_ALREADY_INITIALIZED => "Already Initialized".into(),
                    NVML_ERROR_NOT_FOUND => "Not Found".into(),
                    NVML_ERROR_INSUFFICIENT_SIZE => "Insufficient Size".into(),
                    NVML_ERROR_DRIVER_NOT_LOADED => "Driver Not Loaded".into(),
                    NVML_ERROR_TIMEOUT => "Timeout".into(),
                    NVML_ERROR_GPU_IS_LOST => "GPU is lost".into(),
                    NVML_ERROR_FUNCTION_NOT_FOUND => "Function Not Found".into(),
                    NVML_ERROR_ARGUMENT_VERSION_MISMATCH => "Argument Version Mismatch".into(),
                    NVML_ERROR_UNKNOWN => "Unknown Error".into(),
                    _ => {
                        let mut s = tf_cuda_abi::describe(name);
                        if let Some(first) = s.get_mut(0..1) {
                            first.make_ascii_uppercase();
                        }
                        s
                    }
                };
                (c, CString::new(text).unwrap_or_default())
            })
            .collect()
    });
    table
        .get(&code)
        .map(|s| s.as_ptr())
        .unwrap_or(c"Unknown Error".as_ptr())
}

/// `nvmlSystemGetDriverVersion`.
pub fn driver_version(buf: *mut c_char, len: u32) -> NvmlResult {
    state::check_init()?;
    write_str(buf, len, DRIVER_VERSION)
}

/// `nvmlSystemGetNVMLVersion`.
pub fn nvml_version(buf: *mut c_char, len: u32) -> NvmlResult {
    state::check_init()?;
    write_str(buf, len, NVML_VERSION)
}

/// `nvmlSystemGetCudaDriverVersion`, `_v2`.
pub fn cuda_driver_version(v: *mut i32) -> NvmlResult {
    state::check_init()?;
    out(v, CUDA_DRIVER_VERSION)
}

/// `nvmlSystemGetProcessName`: the executable's path (like the real NVML), else its command
/// line's first word, else its short name; truncated to the buffer.
pub fn process_name(pid: u32, buf: *mut c_char, len: u32) -> NvmlResult {
    state::check_init()?;
    if buf.is_null() || len == 0 {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let proc = format!("/proc/{pid}");
    let name = std::fs::read_link(format!("{proc}/exe"))
        .ok()
        .map(|p| p.display().to_string())
        .or_else(|| {
            let cmdline = std::fs::read(format!("{proc}/cmdline")).ok()?;
            let first = cmdline.split(|&b| b == 0).next()?;
            (!first.is_empty()).then(|| String::from_utf8_lossy(first).into_owned())
        })
        .or_else(|| {
            std::fs::read_to_string(format!("{proc}/comm"))
                .ok()
                .map(|s| s.trim_end().to_string())
        })
        .ok_or(NVML_ERROR_NOT_FOUND)?;
    write_str_truncated(buf, len, &name)
}

/// `nvmlDeviceGetCount`, `_v2`.
pub fn device_count(n: *mut u32) -> NvmlResult {
    let devices = state::devices()?;
    out(n, devices.len() as u32)
}

fn handle_out(h: &'static Handle, p: *mut *mut c_void) -> NvmlResult {
    out(p, h.as_ptr())
}

/// `nvmlDeviceGetHandleByIndex`, `_v2`.
pub fn handle_by_index(index: u32, p: *mut *mut c_void) -> NvmlResult {
    let devices = state::devices()?;
    let h = devices
        .get(index as usize)
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    handle_out(h, p)
}

/// `nvmlDeviceGetHandleByUUID` (case-insensitive).
pub fn handle_by_uuid(uuid: *const c_char, p: *mut *mut c_void) -> NvmlResult {
    let devices = state::devices()?;
    let uuid = cstr(uuid)?;
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let h = devices
        .iter()
        .find(|h| h.dev.profile().uuid.eq_ignore_ascii_case(uuid.trim()))
        .ok_or(NVML_ERROR_NOT_FOUND)?;
    handle_out(h, p)
}

/// `nvmlDeviceGetHandleByPciBusId`, `_v2`: any of `00000000:18:00.0`, `0000:18:00.0`, `18:00.0`.
pub fn handle_by_pci_bus_id(bus_id: *const c_char, p: *mut *mut c_void) -> NvmlResult {
    let devices = state::devices()?;
    let text = cstr(bus_id)?;
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let want = PciAddress::parse(&text).ok_or(NVML_ERROR_INVALID_ARGUMENT)?;
    let h = devices
        .iter()
        .find(|h| h.pci == want)
        .ok_or(NVML_ERROR_NOT_FOUND)?;
    handle_out(h, p)
}

/// `nvmlDeviceGetHandleBySerial`.
pub fn handle_by_serial(serial: *const c_char, p: *mut *mut c_void) -> NvmlResult {
    let devices = state::devices()?;
    let serial = cstr(serial)?;
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let h = devices
        .iter()
        .find(|h| h.serial == serial.trim())
        .ok_or(NVML_ERROR_NOT_FOUND)?;
    handle_out(h, p)
}
