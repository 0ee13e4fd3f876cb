//! # ascend-sys
//!
//! The raw C ABI of Huawei Ascend's runtime and management libraries, for the crates that call,
//! implement or interpose them:
//!
//! - `libascendcl.so` (ACL, the CANN runtime): initialisation, devices, contexts, streams,
//!   events, memory (`aclrtMalloc` family, copies, memset, `aclrtGetMemInfo`), kernel binaries
//!   and `aclrtLaunchKernel` — module [`acl`];
//! - `libdcmi.so` (DCMI, the driver's management interface): cards and devices, chip info with
//!   the AI-core count, memory, utilization, PCIe identity, die ID, per-process memory, and
//!   virtual NPUs (`dcmi_create_vdevice`, `dcmi_set_destroy_vdevice`, the `VDEV_MNG` queries) —
//!   module [`dcmi`].
//!
//! What is here:
//! - `include/acl_subset.h`, `include/dcmi_subset.h`: the subset tensor-fusion uses, written from
//!   Huawei's public documentation (no CANN header is copied or needed);
//! - [`acl`], [`dcmi`]: bindgen's output for them (`gen/generate.sh` regenerates it; the output is
//!   committed, so a build needs neither bindgen nor CANN);
//! - [`acl_functions!`], [`dcmi_functions!`]: every declared function with its exact signature,
//!   as a macro list (made from bindgen's output by the same script), from which [`acl_fn`] and
//!   [`dcmi_fn`] name each function-pointer type and [`Acl`]/[`Dcmi`] load the libraries at run
//!   time (libloading): a function the library lacks is `None`, a missing library an error;
//! - [`chips`]: per chip model, the vNPU templates, AI CPUs and peak FP16 TFLOPS (DCMI creates
//!   vNPUs by template name but cannot list the templates);
//! - [`AclAbi`], [`DcmiAbi`]: each API's codes for the C-boundary kit (`tf-ffi`), and
//!   [`acl_error_name`]/[`dcmi_error_name`].
//!
//! Design rule: every struct, constant and signature that crosses the ACL or DCMI boundary in
//! this workspace comes from this crate; nobody types one by hand elsewhere.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too
#![allow(non_camel_case_types, non_snake_case)]

pub mod chips;

#[path = "gen/acl.rs"]
pub mod acl;
#[path = "gen/dcmi.rs"]
pub mod dcmi;

#[path = "gen/acl_functions.rs"]
mod acl_functions;
#[path = "gen/dcmi_functions.rs"]
mod dcmi_functions;

pub use acl_functions::ACL_ERROR_NAMES;
pub use dcmi_functions::DCMI_ERROR_NAMES;

use std::ffi::OsStr;

macro_rules! fn_types {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[doc = concat!("Pointer type of `", stringify!($name), "`.")]
            pub type $name = unsafe extern "C" fn($($ty),*) -> $ret;
        )*
    };
}

/// One function-pointer type per ACL function, named like the function: an implementation can
/// assert `const _: acl_fn::aclrtMalloc = aclrtMalloc;`.
pub mod acl_fn {
    crate::acl_functions!(fn_types);
}

/// One function-pointer type per DCMI function.
pub mod dcmi_fn {
    crate::dcmi_functions!(fn_types);
}

/// Why a library could not be loaded.
#[derive(Debug)]
pub struct LoadError {
    /// The name or path that was tried.
    pub library: String,
    /// The dynamic loader's words.
    pub message: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot load {}: {}", self.library, self.message)
    }
}

impl std::error::Error for LoadError {}

macro_rules! loader {
    ($ty:ident, $doc:literal; $(fn $name:ident($($arg:ident: $t:ty),*) -> $ret:ty;)*) => {
        #[doc = $doc]
        ///
        /// Each field is the library's function of that name, `None` when the library does not
        /// export it. The library stays loaded while the value lives.
        pub struct $ty {
            $(pub $name: Option<unsafe extern "C" fn($($t),*) -> $ret>,)*
            library: libloading::Library,
        }

        impl $ty {
            /// Open `library` (a file name the dynamic loader searches for, or a path) and look
            /// up every function of the subset in it (and only in it: `dlsym` on its handle, so
            /// a preloaded interposer's definitions are not what is found).
            pub fn load(library: impl AsRef<OsStr>) -> Result<$ty, LoadError> {
                let name = library.as_ref();
                // SAFETY: loading a shared library runs its initialisers; the Ascend libraries
                // (and the simulated ones) have no initialisers with preconditions.
                let lib = unsafe { libloading::Library::new(name) }.map_err(|e| LoadError {
                    library: name.to_string_lossy().into_owned(),
                    message: e.to_string(),
                })?;
                Ok($ty {
                    $(
                        // SAFETY: the symbol is the library's function of this name, whose
                        // signature is the documented one this field has.
                        $name: unsafe {
                            lib.get::<unsafe extern "C" fn($($t),*) -> $ret>(
                                concat!(stringify!($name), "\0").as_bytes(),
                            )
                        }
                        .ok()
                        .map(|s| *s),
                    )*
                    library: lib,
                })
            }

            /// The names of the functions of `names` the library lacks.
            pub fn missing<'a>(&self, names: &[&'a str]) -> Vec<&'a str> {
                names
                    .iter()
                    .copied()
                    .filter(|n| match *n {
                        $(stringify!($name) => self.$name.is_none(),)*
                        _ => true,
                    })
                    .collect()
            }

            /// The loaded library.
            pub fn library(&self) -> &libloading::Library {
                &self.library
            }
        }
    };
}

macro_rules! acl_loader {
    ($($t:tt)*) => { loader!(Acl, "`libascendcl.so`, loaded at run time."; $($t)*); };
}
macro_rules! dcmi_loader {
    ($($t:tt)*) => { loader!(Dcmi, "`libdcmi.so`, loaded at run time."; $($t)*); };
}
acl_functions!(acl_loader);
dcmi_functions!(dcmi_loader);

/// The file name of the ACL runtime library.
pub const ACL_LIBRARY: &str = "libascendcl.so";
/// The file name of the DCMI library.
pub const DCMI_LIBRARY: &str = "libdcmi.so";

/// ACL's codes, for the C-boundary kit (`aclError` is an `int`; the kit carries it as `u32`).
pub struct AclAbi;

impl tf_ffi::Abi for AclAbi {
    const API: &'static str = "ACL runtime";
    const SUCCESS: u32 = acl::ACL_SUCCESS;
    const INVALID_VALUE: u32 = acl::ACL_ERROR_INVALID_PARAM;
    const INSUFFICIENT_SIZE: u32 = acl::ACL_ERROR_INVALID_PARAM;
    const NOT_SUPPORTED: u32 = acl::ACL_ERROR_API_NOT_SUPPORT;
    const INTERNAL_ERROR: u32 = acl::ACL_ERROR_INTERNAL_ERROR;
    const NOT_SUPPORTED_NAME: &'static str = "ACL_ERROR_API_NOT_SUPPORT";
    const QUIET: &'static [u32] = &[
        acl::ACL_ERROR_RT_EVENT_NOT_COMPLETE,
        acl::ACL_ERROR_RT_STREAM_NOT_COMPLETE,
    ];
}

/// DCMI's codes, for the C-boundary kit (negative `int`s, carried as `u32`).
pub struct DcmiAbi;

impl tf_ffi::Abi for DcmiAbi {
    const API: &'static str = "DCMI";
    const SUCCESS: u32 = dcmi::DCMI_OK;
    const INVALID_VALUE: u32 = dcmi::DCMI_ERR_CODE_INVALID_PARAMETER as u32;
    const INSUFFICIENT_SIZE: u32 = dcmi::DCMI_ERR_CODE_INVALID_PARAMETER as u32;
    const NOT_SUPPORTED: u32 = dcmi::DCMI_ERR_CODE_NOT_SUPPORT as u32;
    const INTERNAL_ERROR: u32 = dcmi::DCMI_ERR_CODE_INNER_ERR as u32;
    const NOT_SUPPORTED_NAME: &'static str = "DCMI_ERR_CODE_NOT_SUPPORT";
    const QUIET: &'static [u32] = &[];
}

/// The symbolic name of an `aclError` (e.g. `ACL_ERROR_RT_MEMORY_ALLOCATION`).
pub fn acl_error_name(code: i32) -> Option<&'static str> {
    ACL_ERROR_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
}

/// The symbolic name of a DCMI return code (e.g. `DCMI_ERR_CODE_INVALID_PARAMETER`).
pub fn dcmi_error_name(code: i32) -> Option<&'static str> {
    DCMI_ERROR_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! names {
        ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
            [$(stringify!($name)),*]
        };
    }

    #[test]
    fn the_subset_lists_what_the_issue_names() {
        let acl = acl_functions!(names);
        for f in [
            "aclInit",
            "aclFinalize",
            "aclrtSetDevice",
            "aclrtGetDeviceCount",
            "aclrtCreateContext",
            "aclrtCreateStream",
            "aclrtMalloc",
            "aclrtFree",
            "aclrtMemcpy",
            "aclrtMemcpyAsync",
            "aclrtMemset",
            "aclrtGetMemInfo",
            "aclrtLaunchKernel",
            "aclrtCreateEvent",
            "aclrtSynchronizeStream",
        ] {
            assert!(acl.contains(&f), "{f}");
        }
        let dcmi = dcmi_functions!(names);
        for f in [
            "dcmi_init",
            "dcmi_get_card_list",
            "dcmi_get_device_num_in_card",
            "dcmi_get_device_chip_info",
            "dcmi_get_device_memory_info_v3",
            "dcmi_get_device_utilization_rate",
            "dcmi_create_vdevice",
            "dcmi_set_destroy_vdevice",
        ] {
            assert!(dcmi.contains(&f), "{f}");
        }
        assert_eq!(
            acl_error_name(207001),
            Some("ACL_ERROR_RT_MEMORY_ALLOCATION")
        );
        assert_eq!(
            dcmi_error_name(-8001),
            Some("DCMI_ERR_CODE_INVALID_PARAMETER")
        );
        // DCMI's negative codes survive the kit's u32.
        assert_eq!(<DcmiAbi as tf_ffi::Abi>::NOT_SUPPORTED as i32, -8255);
    }

    #[test]
    fn structs_have_the_documented_sizes() {
        use std::mem::size_of;
        assert_eq!(size_of::<dcmi::dcmi_chip_info>(), 100);
        assert_eq!(size_of::<dcmi::dcmi_get_memory_info_stru>(), 112); // LP64
        assert_eq!(size_of::<dcmi::dcmi_create_vdev_res_stru>(), 104);
        assert_eq!(size_of::<dcmi::dcmi_die_id>(), 20);
    }

    #[test]
    fn a_missing_library_is_an_error_that_names_it() {
        let e = Acl::load("/no/such/libascendcl.so")
            .err()
            .expect("must fail");
        assert!(e.to_string().contains("/no/such/libascendcl.so"), "{e}");
    }
}
