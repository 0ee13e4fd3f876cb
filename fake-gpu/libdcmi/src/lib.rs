//! # tf-fake-dcmi
//!
//! The simulated GPU as a drop-in DCMI, `libdcmi.so`: management programs (the Ascend HAL
//! backend, `npu-smi`-style tools) see the simulated machine's NPUs with
//! `LD_LIBRARY_PATH` pointing at `tensor-fusion fake-gpu install DIR`.
//!
//! Every function of `ascend-sys`'s DCMI subset is exported with its documented signature
//! through the [`Dcmi`] trait (defaults answer `DCMI_ERR_CODE_NOT_SUPPORT` and log once);
//! [`FakeDcmi`] implements them. Layout: card `i` holds one chip, device 0, which is the
//! machine's `i`-th Ascend device (its logic ID is `i`). Chip info, memory (HBM on 910-class
//! chips, `memory_info_v3` on every chip), PCIe identity, die ID (the profile UUID's bytes),
//! per-process memory and AI-core utilization (over the last 100 ms, from the engine's shared
//! busy history) come from the machine's profile and device segments.
//!
//! Virtual NPUs: `dcmi_create_vdevice` with a template name the chip offers (the profile's
//! [`tf_fake_gpu::profile::ASCEND_CHIPS`]: e.g. `vir05_1c_16g` on a 910B3, `vir02` on a 310P3)
//! creates a vNPU if the chip's free AI cores, AI CPUs and memory allow it;
//! `dcmi_set_destroy_vdevice` removes it; `dcmi_get_device_info(VDEV_MNG, …)` lists them
//! (`GET_TOTAL_RESOURCE`), describes one (`GET_VDEV_RESOURCE`) and tells what is free
//! (`GET_FREE_RESOURCE`). Like real vNPUs they outlive the process that made them: they live in
//! a file per device in the machine's shared folder, changed under a file lock.
//! vNPU IDs are `100 + 16 × device + slot`.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too
#![allow(non_snake_case, non_camel_case_types)]

mod ffi;
mod imp;
mod vnpu;

use std::ffi::{c_char, c_int, c_uint, c_void};

use ascend_sys::DcmiAbi;
use ascend_sys::dcmi::*;

/// How the simulated DCMI names itself in logs.
pub const LIBRARY: &str = "the tensor-fusion simulated DCMI";

fn r(res: imp::DcmiResult) -> c_int {
    ffi::status(res) as c_int
}

macro_rules! define_dcmi {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Every function of the DCMI subset. Defaults answer `DCMI_ERR_CODE_NOT_SUPPORT`.
        #[allow(clippy::too_many_arguments, clippy::missing_safety_doc)]
        pub trait Dcmi {
            $(
                unsafe fn $name($($arg: $ty),*) -> $ret {
                    $(let _ = $arg;)*
                    tf_ffi::not_supported::<DcmiAbi, u32>(LIBRARY, stringify!($name)) as $ret
                }
            )*
        }

        $(
            /// Exported with the signature of the DCMI documentation.
            ///
            /// # Safety
            /// DCMI's contract for this function.
            #[unsafe(no_mangle)]
            #[allow(clippy::too_many_arguments)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                tf_ffi::guard::<DcmiAbi, u32>(LIBRARY, stringify!($name), || {
                    // SAFETY: forwarded with the caller's own arguments and contract.
                    unsafe { <FakeDcmi as Dcmi>::$name($($arg),*) as u32 }
                }) as $ret
            }
        )*
    };
}

ascend_sys::dcmi_functions!(define_dcmi);

/// The simulated DCMI.
pub struct FakeDcmi;

impl Dcmi for FakeDcmi {
    unsafe fn dcmi_init() -> c_int {
        r(imp::machine().map(|_| ()))
    }
    unsafe fn dcmi_get_dcmi_version(buf: *mut c_char, len: c_uint) -> c_int {
        r(ffi::write_str(buf, len, imp::VERSION))
    }
    unsafe fn dcmi_get_driver_version(buf: *mut c_char, len: c_uint) -> c_int {
        r(ffi::write_str(buf, len, imp::VERSION))
    }
    unsafe fn dcmi_get_card_list(num: *mut c_int, list: *mut c_int, len: c_int) -> c_int {
        r(imp::card_list(num, list, len))
    }
    unsafe fn dcmi_get_card_num_list(num: *mut c_int, list: *mut c_int, len: c_int) -> c_int {
        r(imp::card_list(num, list, len))
    }
    unsafe fn dcmi_get_device_num_in_card(card: c_int, num: *mut c_int) -> c_int {
        r(imp::device(card, 0).and_then(|_| ffi::out(num, 1)))
    }
    unsafe fn dcmi_get_device_logic_id(logic: *mut c_int, card: c_int, dev: c_int) -> c_int {
        r(imp::device(card, dev).and_then(|_| ffi::out(logic, card)))
    }
    unsafe fn dcmi_get_device_chip_info(
        card: c_int,
        dev: c_int,
        info: *mut dcmi_chip_info,
    ) -> c_int {
        r(imp::chip_info(card, dev, info))
    }
    unsafe fn dcmi_get_device_pcie_info(
        card: c_int,
        dev: c_int,
        info: *mut dcmi_pcie_info,
    ) -> c_int {
        r(imp::pcie_info(card, dev, info))
    }
    unsafe fn dcmi_get_device_die_v2(
        card: c_int,
        dev: c_int,
        kind: dcmi_die_type,
        die: *mut dcmi_die_id,
    ) -> c_int {
        r(imp::die(card, dev, kind, die))
    }
    unsafe fn dcmi_get_device_hbm_info(card: c_int, dev: c_int, info: *mut dcmi_hbm_info) -> c_int {
        r(imp::hbm_info(card, dev, info))
    }
    unsafe fn dcmi_get_device_memory_info_v3(
        card: c_int,
        dev: c_int,
        info: *mut dcmi_get_memory_info_stru,
    ) -> c_int {
        r(imp::memory_info(card, dev, info))
    }
    unsafe fn dcmi_get_device_utilization_rate(
        card: c_int,
        dev: c_int,
        kind: c_int,
        rate: *mut c_uint,
    ) -> c_int {
        r(imp::utilization(card, dev, kind, rate))
    }
    unsafe fn dcmi_get_device_resource_info(
        card: c_int,
        dev: c_int,
        procs: *mut dcmi_proc_mem_info,
        num: *mut c_int,
    ) -> c_int {
        r(imp::processes(card, dev, procs, num))
    }
    unsafe fn dcmi_get_device_info(
        card: c_int,
        dev: c_int,
        main: dcmi_main_cmd,
        sub: c_uint,
        buf: *mut c_void,
        size: *mut c_uint,
    ) -> c_int {
        r(vnpu::device_info(card, dev, main, sub, buf, size))
    }
    unsafe fn dcmi_create_vdevice(
        card: c_int,
        dev: c_int,
        vdev: *mut dcmi_create_vdev_res_stru,
        out: *mut dcmi_create_vdev_out,
    ) -> c_int {
        r(vnpu::create(card, dev, vdev, out))
    }
    unsafe fn dcmi_set_destroy_vdevice(card: c_int, dev: c_int, id: c_uint) -> c_int {
        r(vnpu::destroy(card, dev, id))
    }
}
