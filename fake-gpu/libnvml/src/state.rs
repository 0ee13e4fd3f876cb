//! Library state: the init reference count and the device handles.
//!
//! A handle (`nvmlDevice_t`) is the address of a static per-device [`Handle`], made once when the
//! library is first initialised and never freed, so handles stay valid across
//! `nvmlShutdown`/`nvmlInit` like the real ones. Handles from callers are checked against the
//! known addresses before anything is read through them.

use std::ffi::c_void;
use std::sync::{Arc, Mutex, OnceLock};

use tf_cuda_abi::nvml::*;
use tf_fake_gpu::{FakeDevice, FakeGpu};

use crate::ffi::NvmlResult;
use crate::logging;
use crate::model::PciAddress;
use tf_fake_gpu::model::{self, ModelSpec};

/// One device as NVML clients see it.
pub struct Handle {
    pub index: u32,
    pub dev: Arc<FakeDevice>,
    pub spec: ModelSpec,
    pub pci: PciAddress,
    pub serial: String,
}

impl Handle {
    /// The `nvmlDevice_t` of this device.
    pub fn as_ptr(&'static self) -> *mut c_void {
        self as *const Handle as *mut c_void
    }
}

static INIT_COUNT: Mutex<u32> = Mutex::new(0);
static HANDLES: OnceLock<Box<[Handle]>> = OnceLock::new();

fn count() -> std::sync::MutexGuard<'static, u32> {
    INIT_COUNT.lock().unwrap_or_else(|p| p.into_inner())
}

/// A 13-digit board serial number, stable for a UUID.
fn serial_of(uuid: &str) -> String {
    let h = uuid.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}", 1_650_000_000_000 + h % 10_000_000_000)
}

fn make_handles(gpu: &FakeGpu) -> Box<[Handle]> {
    gpu.devices()
        .iter()
        .map(|dev| {
            let profile = dev.profile();
            let pci = PciAddress::parse(&profile.pci_bus_id).unwrap_or_else(|| {
                tracing::warn!(
                    "simulated device {}: PCI bus id {:?} is not domain:bus:device.function; NVML reports bus {:#x}",
                    dev.index(),
                    profile.pci_bus_id,
                    0x18 + dev.index()
                );
                PciAddress {
                    domain: 0,
                    bus: (0x18 + dev.index()) & 0xff,
                    device: 0,
                    function: 0,
                }
            });
            Handle {
                index: dev.index(),
                dev: dev.clone(),
                spec: model::spec(profile),
                pci,
                serial: serial_of(&profile.uuid),
            }
        })
        .collect()
}

/// `nvmlInit*`: open the simulated machine (once) and count one more user.
pub fn init() -> NvmlResult {
    logging::init();
    let mut n = count();
    if HANDLES.get().is_none() {
        let gpu = FakeGpu::global().map_err(|e| {
            tracing::error!("nvmlInit: the simulated GPU cannot be opened: {e}");
            NVML_ERROR_DRIVER_NOT_LOADED
        })?;
        let _ = HANDLES.set(make_handles(&gpu));
    }
    *n += 1;
    tracing::debug!("nvmlInit: reference count {}", *n);
    Ok(())
}

/// `nvmlShutdown`: one user fewer; `NVML_ERROR_UNINITIALIZED` if there was none.
pub fn shutdown() -> NvmlResult {
    let mut n = count();
    if *n == 0 {
        return Err(NVML_ERROR_UNINITIALIZED);
    }
    *n -= 1;
    Ok(())
}

/// The devices, or `NVML_ERROR_UNINITIALIZED` before `nvmlInit` (or after the last shutdown).
pub fn devices() -> NvmlResult<&'static [Handle]> {
    if *count() == 0 {
        return Err(NVML_ERROR_UNINITIALIZED);
    }
    HANDLES.get().map(|h| &**h).ok_or(NVML_ERROR_UNINITIALIZED)
}

/// Check that the library is initialised.
pub fn check_init() -> NvmlResult {
    devices().map(|_| ())
}

/// The device a caller's handle names: `NVML_ERROR_UNINITIALIZED` before init,
/// `NVML_ERROR_INVALID_ARGUMENT` for anything that is not one of our handles (checked by address,
/// without reading through it).
pub fn device(handle: *mut c_void) -> NvmlResult<&'static Handle> {
    devices()?
        .iter()
        .find(|h| std::ptr::eq(*h as *const Handle as *const c_void, handle))
        .ok_or(NVML_ERROR_INVALID_ARGUMENT)
}
