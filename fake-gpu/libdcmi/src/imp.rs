//! The simulated DCMI's queries over the engine: cards, chips, memory, utilization, processes.

use std::ffi::{c_int, c_uint};
use std::sync::{Arc, OnceLock};

use ascend_sys::dcmi::*;
use tf_fake_gpu::profile::ascend_chip;
use tf_fake_gpu::{FakeDevice, FakeGpu, FakeGpuConfig};
use tf_hal::Vendor;

use crate::ffi::out;

/// A result whose error is a DCMI return code, carried in a `u32` like the kit's codes.
pub type DcmiResult<T = ()> = Result<T, u32>;

/// A DCMI return code as the kit carries it.
pub const fn code(c: i32) -> u32 {
    c as u32
}

/// The version the simulated driver reports.
pub const VERSION: &str = concat!("tf-fake-gpu ", env!("CARGO_PKG_VERSION"));

/// The window of `dcmi_get_device_utilization_rate`'s AI-core figure.
pub const UTILIZATION_WINDOW_NS: u64 = 100_000_000;

/// The machine's NPUs (every Ascend device of the profile; DCMI manages them all).
pub struct Machine {
    pub gpu: Arc<FakeGpu>,
    pub devices: Vec<Arc<FakeDevice>>,
}

pub fn machine() -> DcmiResult<&'static Machine> {
    static M: OnceLock<Result<Machine, u32>> = OnceLock::new();
    M.get_or_init(|| {
        tf_os::init_logging();
        match FakeGpuConfig::from_env_for(Vendor::Ascend).and_then(FakeGpu::new) {
            Ok(gpu) => {
                let devices = gpu
                    .devices()
                    .iter()
                    .filter(|d| d.profile().vendor == Vendor::Ascend)
                    .cloned()
                    .collect();
                Ok(Machine { gpu, devices })
            }
            Err(e) => {
                eprintln!("tensor-fusion simulated DCMI: cannot initialise: {e}");
                Err(code(DCMI_ERR_CODE_DEVICE_NOT_EXIST))
            }
        }
    })
    .as_ref()
    .map_err(|e| *e)
}

/// The device of card `card`, chip `dev` (each card holds one chip, device 0).
pub fn device(card: c_int, dev: c_int) -> DcmiResult<&'static Arc<FakeDevice>> {
    let m = machine()?;
    if dev != 0 {
        return Err(code(DCMI_ERR_CODE_INVALID_DEVICE_ID));
    }
    usize::try_from(card)
        .ok()
        .and_then(|i| m.devices.get(i))
        .ok_or(code(DCMI_ERR_CODE_INVALID_DEVICE_ID))
}

pub fn card_list(num: *mut c_int, list: *mut c_int, len: c_int) -> DcmiResult {
    let n = machine()?.devices.len();
    if list.is_null() || len < 0 || (len as usize) < n {
        return Err(code(DCMI_ERR_CODE_INVALID_PARAMETER));
    }
    for i in 0..n {
        // SAFETY: the caller's list holds `len >= n` ints (DCMI's contract).
        unsafe { list.add(i).write_unaligned(i as c_int) };
    }
    out(num, n as c_int)
}

/// DCMI's chip name of a model: `Ascend910B3` → `910B3`.
pub fn chip_name(model: &str) -> String {
    ascend_chip(model)
        .map(|c| c.chip_name.to_string())
        .unwrap_or_else(|| model.trim_start_matches("Ascend").to_string())
}

pub fn chip_info(card: c_int, dev: c_int, info: *mut dcmi_chip_info) -> DcmiResult {
    let d = device(card, dev)?;
    let p = d.profile();
    let mut c = dcmi_chip_info {
        chip_type: [0; 32],
        chip_name: [0; 32],
        chip_ver: [0; 32],
        aicore_cnt: p.sms,
    };
    let fill = |dst: &mut [u8; 32], s: &str| {
        for (d, b) in dst.iter_mut().zip(s.bytes().take(31)) {
            *d = b;
        }
    };
    fill(&mut c.chip_type, "Ascend");
    fill(&mut c.chip_name, &chip_name(&p.model));
    fill(&mut c.chip_ver, "V1");
    out(info, c)
}

pub fn pcie_info(card: c_int, dev: c_int, info: *mut dcmi_pcie_info) -> DcmiResult {
    let d = device(card, dev)?;
    let p = d.profile();
    // "dddddddd:bb:dd.f"
    let parts: Vec<&str> = p.pci_bus_id.split([':', '.']).collect();
    let hex = |i: usize| {
        parts
            .get(i)
            .and_then(|s| u32::from_str_radix(s, 16).ok())
            .unwrap_or(0)
    };
    out(
        info,
        dcmi_pcie_info {
            deviceid: if p.model.contains("310") {
                0xd500
            } else {
                0xd802
            },
            venderid: 0x19e5,
            subvenderid: 0x19e5,
            subdeviceid: 0x0100,
            bdf_deviceid: hex(2),
            bdf_busid: hex(1),
            bdf_funcid: hex(3),
        },
    )
}

/// The die ID: the profile UUID's 16 bytes (and a zero word), so every device's is unique.
pub fn die(card: c_int, dev: c_int, _kind: dcmi_die_type, die: *mut dcmi_die_id) -> DcmiResult {
    let d = device(card, dev)?;
    let bytes = tf_hal::DeviceUuid::parse(&d.profile().uuid)
        .map(|u| u.bytes())
        .unwrap_or_default();
    let mut soc_die = [0u32; 5];
    for (i, w) in bytes.chunks_exact(4).enumerate() {
        soc_die[i] = u32::from_be_bytes([w[0], w[1], w[2], w[3]]);
    }
    out(die, dcmi_die_id { soc_die })
}

const MB: u64 = 1 << 20;

/// HBM: the device memory of 910-class chips (others have none).
pub fn hbm_info(card: c_int, dev: c_int, info: *mut dcmi_hbm_info) -> DcmiResult {
    let d = device(card, dev)?;
    if !d.profile().model.contains("910") {
        return Err(code(DCMI_ERR_CODE_NOT_SUPPORT));
    }
    let m = d.memory();
    out(
        info,
        dcmi_hbm_info {
            memory_size: m.total_bytes / MB,
            freq: 1600,
            memory_usage: m.used_bytes / MB,
            temp: 40,
            bandwith_util_rate: 0,
        },
    )
}

/// The device memory (on every chip).
pub fn memory_info(card: c_int, dev: c_int, info: *mut dcmi_get_memory_info_stru) -> DcmiResult {
    let d = device(card, dev)?;
    let m = d.memory();
    out(
        info,
        dcmi_get_memory_info_stru {
            memory_size: m.total_bytes / MB,
            memory_available: m.free_bytes / MB,
            freq: 1600,
            hugepagesize: 2048,
            hugepages_total: 0,
            hugepages_free: 0,
            utiliza: (m.used_bytes * 100 / m.total_bytes.max(1)) as c_uint,
            reserve: [0; 60],
        },
    )
}

pub fn utilization(card: c_int, dev: c_int, kind: c_int, rate: *mut c_uint) -> DcmiResult {
    let d = device(card, dev)?;
    let v = match kind as u32 {
        DCMI_UTILIZATION_RATE_AICORE => d.segment().utilization(UTILIZATION_WINDOW_NS),
        DCMI_UTILIZATION_RATE_HBM | DCMI_UTILIZATION_RATE_DDR => {
            let m = d.memory();
            m.used_bytes as f64 * 100.0 / m.total_bytes.max(1) as f64
        }
        _ => return Err(code(DCMI_ERR_CODE_NOT_SUPPORT)),
    };
    out(rate, v.round().clamp(0.0, 100.0) as c_uint)
}

/// Processes holding memory: `*num` is the capacity of `procs` on the way in and the number of
/// processes on the way out (entries past the capacity are not written).
pub fn processes(
    card: c_int,
    dev: c_int,
    procs: *mut dcmi_proc_mem_info,
    num: *mut c_int,
) -> DcmiResult {
    let d = device(card, dev)?;
    let cap = crate::ffi::read(num as *const c_int)?.max(0) as usize;
    let list: Vec<_> = d
        .segment()
        .processes()
        .into_iter()
        .filter(|p| p.mem_used > 0)
        .collect();
    if !procs.is_null() {
        for (i, p) in list.iter().take(cap).enumerate() {
            // SAFETY: the caller's array holds `cap` entries (DCMI's contract), i < cap.
            unsafe {
                procs.add(i).write_unaligned(dcmi_proc_mem_info {
                    proc_id: p.pid as c_int,
                    proc_mem_usage: p.mem_used as _,
                })
            };
        }
    }
    out(num, list.len() as c_int)
}
