//! # tf-backend-ascend
//!
//! The Huawei Ascend HAL backend: the ACL runtime (`libascendcl.so`) for execution and DCMI
//! (`libdcmi.so`) for enumeration, metrics and virtual NPUs, both through `ascend-sys` and
//! loaded at run time, so building needs no CANN. It runs on real Ascend NPUs and, unchanged,
//! on the simulated ones (`tensor-fusion fake-gpu install DIR`, `LD_LIBRARY_PATH=DIR`).
//!
//! - Enumeration: ACL's device IDs, described through DCMI (card/device of each logic ID): chip
//!   name, AI cores (compute units), HBM or device memory, PCIe bus ID, driver version; the UUID
//!   is made from the chip's die ID (Ascend has no UUIDs), spelled as 32 hex digits; peak FP16
//!   TFLOPS from `ascend_sys::chips`.
//! - Metrics: memory and processes from DCMI; utilization is DCMI's AI-core rate, sampled every
//!   100 ms over the window asked for (DCMI has no cumulative busy counter).
//! - Execution (`context`): one ACL context per HAL context, made current on the calling thread
//!   before each call; modules are kernel binaries (`aclrtBinaryLoadFromData`: on the simulated
//!   runtime, PTX text naming its entries); a launch packs the HAL's arguments into a C-struct
//!   argument block in device memory (kept until the next synchronization) and calls
//!   `aclrtLaunchKernel` with the grid's block count as `blockDim`.
//! - Partitions: the chip's vNPU templates (`ascend_sys::chips`), created and destroyed with
//!   `dcmi_create_vdevice`/`dcmi_set_destroy_vdevice`, listed with DCMI's `VDEV_MNG` queries.
//! - Errors: `aclError` and DCMI codes map to `ErrorKind` in one place (`error`), keeping the
//!   vendor's code and name; a missing library is `LibraryNotFound` with what to do.
//!
//! Design rules: handles the HAL hands out are the runtime's own, checked against this context's
//! tables before use, so a bogus handle is an error and never reaches the runtime; no panic
//! escapes a call into the libraries' code paths (they are C: they do not unwind).
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

mod context;
mod device;
mod error;

use std::sync::Arc;

use ascend_sys::{Acl, Dcmi};
use tf_hal::{Backend, BackendKind, Device as _, DeviceInfo, Error, ErrorKind, Link, Result};

pub use device::AscendDevice;

/// Environment variable naming the ACL runtime library (a path to `libascendcl.so`).
pub const ACL_LIBRARY_ENV: &str = "TF_ASCEND_LIBRARY";
/// Environment variable naming the DCMI library (a path to `libdcmi.so`).
pub const DCMI_LIBRARY_ENV: &str = "TF_DCMI_LIBRARY";

/// What a user should do when the libraries cannot be found.
pub const MISSING_DRIVER_HINT: &str = "is the Ascend driver and CANN installed (set \
     LD_LIBRARY_PATH to their lib64 folders)? For the simulated NPUs, run `tensor-fusion \
     fake-gpu install DIR` and set LD_LIBRARY_PATH=DIR";

/// ACL functions the backend calls.
pub const REQUIRED_ACL: &[&str] = &[
    "aclInit",
    "aclrtGetDeviceCount",
    "aclrtCreateContext",
    "aclrtDestroyContext",
    "aclrtSetCurrentContext",
    "aclrtMalloc",
    "aclrtFree",
    "aclrtMemcpy",
    "aclrtMemset",
    "aclrtGetMemInfo",
    "aclrtBinaryLoadFromData",
    "aclrtBinaryUnLoad",
    "aclrtBinaryGetFunction",
    "aclrtLaunchKernel",
    "aclrtCreateStream",
    "aclrtDestroyStream",
    "aclrtSynchronizeStream",
    "aclrtSynchronizeDevice",
    "aclrtStreamWaitEvent",
    "aclrtCreateEvent",
    "aclrtDestroyEvent",
    "aclrtRecordEvent",
    "aclrtQueryEventStatus",
    "aclrtSynchronizeEvent",
    "aclrtEventElapsedTime",
];

/// DCMI functions the backend calls.
pub const REQUIRED_DCMI: &[&str] = &[
    "dcmi_init",
    "dcmi_get_card_list",
    "dcmi_get_device_num_in_card",
    "dcmi_get_device_logic_id",
    "dcmi_get_device_chip_info",
    "dcmi_get_device_memory_info_v3",
];

/// The loaded libraries, shared by the backend's devices and contexts.
pub(crate) struct Libs {
    pub acl: Acl,
    pub dcmi: Dcmi,
}

fn load_checked<T>(
    env: &str,
    default: &str,
    what: &str,
    load: fn(&str) -> std::result::Result<T, ascend_sys::LoadError>,
    missing: fn(&T) -> Vec<&'static str>,
) -> Result<T> {
    let name = std::env::var(env).unwrap_or_else(|_| default.to_string());
    let lib = load(&name).map_err(|e| {
        Error::new(
            ErrorKind::LibraryNotFound,
            format!("the {what} ({name}): {} — {MISSING_DRIVER_HINT}", e.message),
        )
    })?;
    let gone = missing(&lib);
    if !gone.is_empty() {
        return Err(Error::new(
            ErrorKind::LibraryNotFound,
            format!("the {what} ({name}) lacks {}", gone.join(", ")),
        ));
    }
    Ok(lib)
}

/// The Ascend backend: the runtime and management libraries, initialised, and the devices.
pub struct AscendBackend {
    libs: Arc<Libs>,
    devices: Vec<Arc<AscendDevice>>,
}

impl AscendBackend {
    /// Load `libascendcl.so` and `libdcmi.so` (or `$TF_ASCEND_LIBRARY`, `$TF_DCMI_LIBRARY`),
    /// initialise both, and describe every device.
    pub fn new() -> Result<AscendBackend> {
        let acl = load_checked(
            ACL_LIBRARY_ENV,
            ascend_sys::ACL_LIBRARY,
            "Ascend ACL runtime",
            |n| Acl::load(n),
            |a| a.missing(REQUIRED_ACL),
        )?;
        let dcmi = load_checked(
            DCMI_LIBRARY_ENV,
            ascend_sys::DCMI_LIBRARY,
            "Ascend DCMI library",
            |n| Dcmi::load(n),
            |d| d.missing(REQUIRED_DCMI),
        )?;
        let libs = Arc::new(Libs { acl, dcmi });
        error::acl_init(&libs)?;
        error::dcmi_call!(libs, dcmi_init())?;
        let devices = device::enumerate(&libs)?;
        Ok(AscendBackend { libs, devices })
    }
}

impl Backend for AscendBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Ascend
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(self.devices.iter().map(|d| d.info().clone()).collect())
    }

    fn device(&self, index: u32) -> Result<Arc<dyn tf_hal::Device>> {
        let _ = &self.libs;
        self.devices
            .get(index as usize)
            .map(|d| d.clone() as Arc<dyn tf_hal::Device>)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidDevice,
                    format!(
                        "no NPU {index}: there are {} (0..{})",
                        self.devices.len(),
                        self.devices.len()
                    ),
                )
            })
    }

    /// HCCS and PCIe topology are not read yet (DCMI's topology query is outside the subset).
    fn topology(&self) -> Result<Vec<Link>> {
        Ok(Vec::new())
    }
}
