//! # tf-remote-stub
//!
//! The client stub of a remote vGPU: a drop-in `libcuda.so.1` (installed also as `libcuda.so`
//! and as `libnvidia-ml.so.1`) that implements the CUDA driver API over
//! [`tf_remote::RemoteBackend`], so unmodified programs — C programs built against NVIDIA's
//! `cuda.h` and linked with `-lcuda`, cudarc, NVIDIA's `cuda-bindings`, programs that reach the
//! driver only through `cuGetProcAddress` — run against a GPU owned by a worker on this or
//! another host. `cuInit` connects to the worker named by `TF_REMOTE` with the token in
//! `TF_REMOTE_TOKEN_FILE` (`tensor-fusion run --remote` sets both).
//!
//! Every function of `cuda.h` and `nvml.h` is exported with its real signature, from
//! `tf-cuda-abi`'s generated lists: the [`Driver`] and [`Nvml`] traits have one method per
//! function whose default answers `CUDA_ERROR_NOT_SUPPORTED` (`NVML_ERROR_NOT_SUPPORTED`) and
//! logs once; [`RemoteCuda`] overrides what the remote path implements (devices, contexts,
//! memory, copies, memsets, modules, launches, streams, events, errors, `cuGetProcAddress`) and
//! [`RemoteNvml`] answers device and memory queries for the remote vGPU. Each export runs
//! under `tf_ffi::guard`: no panic crosses the C boundary.
//!
//! Why not the simulated driver's façade (`fake-gpu/libcuda`): that library is written against
//! the simulated engine's own objects, not a HAL context — its device pointers are host
//! addresses it dereferences, its page-locked memory, VMM, stream callbacks and graph capture
//! are engine features the HAL does not express — so it cannot serve a remote device without
//! being rewritten. This stub keeps to the HAL and the same generated lists and C-boundary kit.
//!
//! Design rules: the program's handles are checked against this library's tables before use
//! and never dereferenced; host pointers are the caller's (as with the real driver); calls that
//! return nothing the program needs at once are sent without waiting (`tf-remote`), so their
//! errors surface at the next synchronising call, as CUDA's do.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too
#![allow(non_snake_case)]

mod ffi;
mod imp;
mod nvml;
mod state;

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::OnceLock;

use tf_cuda_abi::driver::*;
use tf_cuda_abi::{CudaDriverAbi, NvmlAbi};

use crate::ffi::{cstr, out};
use crate::state::CuResult;

pub use imp::RemoteCuda;
pub use nvml::RemoteNvml;

/// How the stub names itself in logs.
pub const LIBRARY: &str = "the tensor-fusion remote vGPU's libcuda";
/// How its NVML names itself in logs.
pub const NVML_LIBRARY: &str = "the tensor-fusion remote vGPU's NVML";

macro_rules! define_driver {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Every function of the CUDA driver API. Defaults answer CUDA_ERROR_NOT_SUPPORTED.
        #[allow(clippy::too_many_arguments, clippy::missing_safety_doc)]
        pub trait Driver {
            $(
                unsafe fn $name($($arg: $ty),*) -> $ret {
                    $(let _ = $arg;)*
                    tf_ffi::not_supported::<CudaDriverAbi, u32>(LIBRARY, stringify!($name))
                }
            )*
        }

        $(
            /// Exported with the signature of NVIDIA's cuda.h.
            ///
            /// # Safety
            /// The driver API's contract for this function.
            #[unsafe(no_mangle)]
            #[allow(clippy::too_many_arguments)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                // SAFETY: forwarded with the caller's own arguments and contract.
                tf_ffi::guard::<CudaDriverAbi, u32>(LIBRARY, stringify!($name), || unsafe { <RemoteCuda as Driver>::$name($($arg),*) })
            }
        )*

        /// Every exported driver function by name, for cuGetProcAddress.
        pub fn exports() -> &'static HashMap<&'static str, usize> {
            static MAP: OnceLock<HashMap<&'static str, usize>> = OnceLock::new();
            MAP.get_or_init(|| {
                let mut m = HashMap::new();
                $( m.insert(stringify!($name), $name as *const () as usize); )*
                m
            })
        }
    };
}

tf_cuda_abi::cuda_driver_functions!(define_driver);

macro_rules! define_nvml {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Every NVML function; the defaults say NOT_SUPPORTED (logged once per function).
        #[allow(clippy::too_many_arguments, clippy::missing_safety_doc)]
        pub trait Nvml {
            $(
                unsafe fn $name($($arg: $ty),*) -> $ret {
                    $(let _ = $arg;)*
                    tf_ffi::not_supported::<NvmlAbi, $ret>(NVML_LIBRARY, stringify!($name))
                }
            )*
        }

        $(
            /// Exported with the signature of NVIDIA's `nvml.h`.
            ///
            /// # Safety
            /// The NVML contract for this function.
            #[unsafe(no_mangle)]
            #[allow(clippy::too_many_arguments)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                // SAFETY: forwarded with the caller's own arguments and contract.
                tf_ffi::guard::<NvmlAbi, $ret>(NVML_LIBRARY, stringify!($name), || unsafe { <RemoteNvml as Nvml>::$name($($arg),*) })
            }
        )*
    };
}

tf_cuda_abi::nvml_functions!(define_nvml);

/// `(name, description)` of every CUresult, as C strings.
fn error_texts(code: u32) -> CuResult<&'static (CString, CString)> {
    static NAMES: OnceLock<HashMap<u32, (CString, CString)>> = OnceLock::new();
    NAMES
        .get_or_init(|| {
            CURESULT_NAMES
                .iter()
                .map(|(c, n)| {
                    (
                        *c,
                        (
                            CString::new(*n).unwrap_or_default(),
                            CString::new(tf_cuda_abi::describe(n)).unwrap_or_default(),
                        ),
                    )
                })
                .collect()
        })
        .get(&code)
        .ok_or(CUDA_ERROR_INVALID_VALUE)
}

fn error_name(code: u32) -> CuResult<&'static CStr> {
    error_texts(code).map(|t| t.0.as_c_str())
}

fn error_string(code: u32) -> CuResult<&'static CStr> {
    error_texts(code).map(|t| t.1.as_c_str())
}

fn get_proc_address(
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
    status: *mut u32,
) -> CuResult {
    if pfn.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let name = cstr(symbol)?;
    let per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM as u64 != 0;
    let exported = |n: &str| exports().get_key_value(n).map(|(k, _)| *k);
    let found =
        tf_cuda_abi::proc_address_symbol(&name, version.max(0) as u32, per_thread, exported);
    let set_status = |s: u32| {
        if status.is_null() {
            Ok(())
        } else {
            out(status, s)
        }
    };
    let (addr, st) = match found {
        tf_cuda_abi::ProcLookup::Found(sym) => match exports().get(sym) {
            Some(&addr) => (addr, CU_GET_PROC_ADDRESS_SUCCESS),
            None => (0, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
        },
        tf_cuda_abi::ProcLookup::VersionNotSufficient => {
            (0, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT)
        }
        tf_cuda_abi::ProcLookup::NotFound => (0, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
    };
    out(pfn, addr as *mut c_void)?;
    set_status(st)?;
    if addr == 0 {
        Err(CUDA_ERROR_NOT_FOUND)
    } else {
        Ok(())
    }
}
