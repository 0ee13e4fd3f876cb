//! # tf-cuda-abi
//!
//! The raw C ABI of NVIDIA's CUDA driver API (`libcuda.so.1`) and NVML (`libnvidia-ml.so.1`),
//! generated from NVIDIA's own headers by `gen/generate.py` (the headers are not committed; the
//! script says where to get them). It holds no code that calls a driver:
//!
//! - [`cuda_driver_functions!`] and [`nvml_functions!`] list every exported function with its
//!   exact signature in raw Rust types, for crates that implement or interpose the libraries;
//! - [`driver`] and [`nvml`] hold every enum constant of the headers and the symbolic names of
//!   the error codes;
//! - [`driver::PROC_ADDRESS_TABLE`] says which symbol `cuGetProcAddress` hands out for an API
//!   name, a CUDA version and a stream flavour;
//! - [`cuda_types`] and [`nvml_types`]: the structs and `#define` constants that cross the
//!   boundary (the generator emits functions and enums, not structs), written by hand with
//!   `#[repr(C)]` and checked against the real headers by `tests/layout.rs`, which compiles C
//!   against them;
//! - [`CudaDriverAbi`] and [`NvmlAbi`]: each API's codes, for the C-boundary kit (`tf-ffi`);
//! - [`facade`]: what every library implementing these APIs does alike (the simulated GPU's
//!   libraries and the remote client stub): the exported C face over a trait
//!   ([`cuda_driver_facade!`], [`nvml_facade!`]), `cuGetProcAddress`, error names, reading a
//!   launch's arguments, the thread's context stack ([`context_stack!`]).
//!
//! Rule: every struct layout, constant and signature that crosses the CUDA or NVML boundary in
//! this workspace comes from this crate; nobody types one by hand elsewhere.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too
#![allow(non_camel_case_types, non_snake_case)]

pub mod cuda_types;
pub mod driver;
pub mod facade;
pub mod nvml;
pub mod nvml_types;

pub use cuda_types::*;

macro_rules! fn_types {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        $(
            #[doc = concat!("Pointer type of `", stringify!($name), "`.")]
            pub type $name = unsafe extern "C" fn($($ty),*) -> $ret;
        )*
    };
}

/// One function-pointer type per CUDA driver function, named like the function: an
/// implementation can assert `const _: driver_fn::cuMemAlloc_v2 = my_cuMemAlloc_v2;`.
pub mod driver_fn {
    crate::cuda_driver_functions!(fn_types);
}

/// One function-pointer type per NVML function.
pub mod nvml_fn {
    crate::nvml_functions!(fn_types);
}

#[doc(hidden)]
pub mod __private {
    //! What the facade macros expand to, reachable from the crates that invoke them.
    pub use tf_ffi;
}

/// The CUDA driver API's codes, for the C-boundary kit.
pub struct CudaDriverAbi;

impl tf_ffi::Abi for CudaDriverAbi {
    const API: &'static str = "CUDA driver API";
    const SUCCESS: u32 = driver::CUDA_SUCCESS;
    const INVALID_VALUE: u32 = driver::CUDA_ERROR_INVALID_VALUE;
    const INSUFFICIENT_SIZE: u32 = driver::CUDA_ERROR_INVALID_VALUE;
    const NOT_SUPPORTED: u32 = driver::CUDA_ERROR_NOT_SUPPORTED;
    const INTERNAL_ERROR: u32 = driver::CUDA_ERROR_UNKNOWN;
    const NOT_SUPPORTED_NAME: &'static str = "CUDA_ERROR_NOT_SUPPORTED";
    const QUIET: &'static [u32] = &[driver::CUDA_ERROR_NOT_READY];
}

/// NVML's codes, for the C-boundary kit.
pub struct NvmlAbi;

impl tf_ffi::Abi for NvmlAbi {
    const API: &'static str = "NVML";
    const SUCCESS: u32 = nvml::NVML_SUCCESS;
    const INVALID_VALUE: u32 = nvml::NVML_ERROR_INVALID_ARGUMENT;
    const INSUFFICIENT_SIZE: u32 = nvml::NVML_ERROR_INSUFFICIENT_SIZE;
    const NOT_SUPPORTED: u32 = nvml::NVML_ERROR_NOT_SUPPORTED;
    const INTERNAL_ERROR: u32 = nvml::NVML_ERROR_UNKNOWN;
    const NOT_SUPPORTED_NAME: &'static str = "NVML_ERROR_NOT_SUPPORTED";
    const QUIET: &'static [u32] = &[nvml::NVML_ERROR_INSUFFICIENT_SIZE];
}

/// The symbolic name of a `CUresult` (e.g. `CUDA_ERROR_OUT_OF_MEMORY`).
pub fn cu_error_name(code: CUresult) -> Option<&'static str> {
    driver::CURESULT_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
}

/// An NVML return code's symbolic name (e.g. `NVML_ERROR_NOT_SUPPORTED`).
pub fn nvml_error_name(code: nvmlReturn_t) -> Option<&'static str> {
    nvml::NVML_RETURN_NAMES
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, n)| *n)
}

/// A readable description from a symbolic error name: `CUDA_ERROR_OUT_OF_MEMORY` → "out of memory".
pub fn describe(name: &str) -> String {
    let words = name
        .trim_start_matches("CUDA_ERROR_")
        .trim_start_matches("CUDA_")
        .trim_start_matches("NVML_ERROR_")
        .trim_start_matches("NVML_");
    words.to_ascii_lowercase().replace('_', " ")
}

/// How `cuGetProcAddress` resolved a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcLookup {
    Found(&'static str),
    /// The API exists, but only in versions newer than the one asked for.
    VersionNotSufficient,
    NotFound,
}

/// Which exported symbol serves API `name` for a caller built against CUDA `version`, with
/// per-thread default stream semantics if `per_thread`. A name that is not in the versioned
/// table resolves through `exported` (the implementation's own export list), so that exact
/// symbol names such as `cuMemAlloc_v2` also work.
pub fn proc_address_symbol(
    name: &str,
    version: u32,
    per_thread: bool,
    exported: impl Fn(&str) -> Option<&'static str>,
) -> ProcLookup {
    let best = |pt: u8| {
        driver::PROC_ADDRESS_TABLE
            .iter()
            .filter(|(n, v, p, _)| *n == name && *p == pt && *v <= version)
            .max_by_key(|(_, v, _, _)| *v)
            .map(|(_, _, _, s)| *s)
    };
    let found = if per_thread {
        best(1).or_else(|| best(0))
    } else {
        best(0)
    };
    if let Some(s) = found {
        return ProcLookup::Found(s);
    }
    if driver::PROC_ADDRESS_TABLE.iter().any(|(n, ..)| *n == name) {
        return ProcLookup::VersionNotSufficient;
    }
    match exported(name) {
        Some(s) => ProcLookup::Found(s),
        None => ProcLookup::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    macro_rules! count {
        ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
            [$(stringify!($name)),*]
        };
    }

    #[test]
    fn every_driver_function_is_listed() {
        let names = cuda_driver_functions!(count);
        for must in [
            "cuInit",
            "cuMemAlloc",
            "cuMemAlloc_v2",
            "cuLaunchKernel",
            "cuLaunchKernel_ptsz",
            "cuMemcpyHtoD_v2_ptds",
            "cuGetProcAddress",
            "cuGetProcAddress_v2",
            "cuMemCreate",
            "cuGraphLaunch",
            "cuLaunchKernelEx",
            "cuMemAllocAsync",
        ] {
            assert!(names.contains(&must), "{must} missing");
        }
        assert!(names.len() > 600, "{}", names.len());
        let nvml = nvml_functions!(count);
        for must in [
            "nvmlInit_v2",
            "nvmlInit",
            "nvmlDeviceGetCount_v2",
            "nvmlDeviceGetMemoryInfo",
            "nvmlErrorString",
        ] {
            assert!(nvml.contains(&must), "{must} missing");
        }
    }

    #[test]
    fn proc_address_follows_versions_and_stream_flavour() {
        let none = |_: &str| None;
        assert_eq!(
            proc_address_symbol("cuMemAlloc", 12000, false, none),
            ProcLookup::Found("cuMemAlloc_v2")
        );
        assert_eq!(
            proc_address_symbol("cuMemAlloc", 2000, false, none),
            ProcLookup::Found("cuMemAlloc")
        );
        assert_eq!(
            proc_address_symbol("cuCtxCreate", 11040, false, none),
            ProcLookup::Found("cuCtxCreate_v3")
        );
        assert_eq!(
            proc_address_symbol("cuCtxCreate", 12090, false, none),
            ProcLookup::Found("cuCtxCreate_v4")
        );
        assert_eq!(
            proc_address_symbol("cuMemcpyHtoD", 12000, true, none),
            ProcLookup::Found("cuMemcpyHtoD_v2_ptds")
        );
        assert_eq!(
            proc_address_symbol("cuLaunchKernel", 12000, true, none),
            ProcLookup::Found("cuLaunchKernel_ptsz")
        );
        // No per-thread flavour: the plain one.
        assert_eq!(
            proc_address_symbol("cuMemAlloc", 12000, true, none),
            ProcLookup::Found("cuMemAlloc_v2")
        );
        assert_eq!(
            proc_address_symbol("cuMemCreate", 10000, false, none),
            ProcLookup::VersionNotSufficient
        );
        assert_eq!(
            proc_address_symbol("cuNoSuchThing", 12000, false, none),
            ProcLookup::NotFound
        );
        assert_eq!(cu_error_name(2), Some("CUDA_ERROR_OUT_OF_MEMORY"));
        assert_eq!(describe("CUDA_ERROR_OUT_OF_MEMORY"), "out of memory");
    }
}
