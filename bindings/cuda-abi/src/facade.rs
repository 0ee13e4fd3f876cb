//! What every library that *implements* the CUDA driver API or NVML does alike — the simulated
//! GPU's `libcuda.so.1` and `libnvidia-ml.so.1`, and the remote vGPU's client stub: one copy
//! here, so that they answer the same way at the boundary.
//!
//! - [`cuda_driver_facade!`] and [`nvml_facade!`] define, in the calling module, a trait with
//!   one method per function of the header (defaults answer "not supported", logged once), one
//!   exported `extern "C"` function per header function calling the implementation under the
//!   C-boundary kit's panic guard, and (for the driver) the table `cuGetProcAddress` hands out.
//!   The compiler checks every override against the header's signature.
//! - [`error_name`], [`error_string`], [`get_proc_address`]: `cuGetErrorName`,
//!   `cuGetErrorString` and `cuGetProcAddress` as the header and NVIDIA's driver define them.
//! - [`read_kernel_args`]: a launch's argument values from `kernelParams` or `extra`, every
//!   pointer checked before it is read.
//! - [`context_stack!`]: the calling thread's stack of current contexts.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::sync::OnceLock;

use crate::driver::*;

/// The driver API's result: `Err` holds the `CUresult`.
pub type CuResult<T = ()> = Result<T, u32>;

mod kit {
    tf_ffi::kit!(crate::CudaDriverAbi, checked);
}

/// Define the CUDA driver API's C face in the calling module, implemented by `$imp`:
///
/// - `pub trait Driver`, one `unsafe fn` per function of `cuda.h` with its exact signature,
///   whose default answers `CUDA_ERROR_NOT_SUPPORTED` (logged once per function, naming
///   `$library`);
/// - one `#[no_mangle] pub unsafe extern "C" fn` per function, calling `<$imp as Driver>::f`
///   under `tf_ffi::guard` (a panic is logged and answered with `CUDA_ERROR_UNKNOWN`);
/// - `pub fn exports() -> &'static HashMap<&'static str, usize>`: every exported function by
///   name, for [`get_proc_address`].
///
/// `$imp` must implement `Driver` in the same crate.
#[macro_export]
macro_rules! cuda_driver_facade {
    ($imp:ty, $library:expr) => {
        $crate::cuda_driver_functions!($crate::__cuda_driver_facade, ($imp), ($library));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __cuda_driver_facade {
    (($imp:ty), ($library:expr) $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Every function of the CUDA driver API. Defaults answer `CUDA_ERROR_NOT_SUPPORTED`.
        ///
        /// # Safety
        ///
        /// Each method has the contract of the `cuda.h` function of its name.
        #[allow(non_snake_case, clippy::too_many_arguments, clippy::missing_safety_doc)]
        pub trait Driver {
            $(
                unsafe fn $name($($arg: $ty),*) -> $ret {
                    $(let _ = $arg;)*
                    $crate::__private::tf_ffi::not_supported::<$crate::CudaDriverAbi, u32>(
                        $library,
                        stringify!($name),
                    )
                }
            )*
        }

        $(
            /// Exported with the signature of NVIDIA's `cuda.h`.
            ///
            /// # Safety
            ///
            /// The driver API's contract for this function.
            #[unsafe(no_mangle)]
            #[allow(non_snake_case, clippy::too_many_arguments)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                $crate::__private::tf_ffi::guard::<$crate::CudaDriverAbi, u32>(
                    $library,
                    stringify!($name),
                    // SAFETY: forwarded with the caller's own arguments, under the contract
                    // of the function of the same name, which is the method's.
                    || unsafe { <$imp as Driver>::$name($($arg),*) },
                )
            }
        )*

        /// Every exported driver function by name, for `cuGetProcAddress`.
        pub fn exports() -> &'static ::std::collections::HashMap<&'static str, usize> {
            static MAP: ::std::sync::OnceLock<::std::collections::HashMap<&'static str, usize>> =
                ::std::sync::OnceLock::new();
            MAP.get_or_init(|| {
                let mut m = ::std::collections::HashMap::new();
                $( m.insert(stringify!($name), $name as *const () as usize); )*
                m
            })
        }
    };
}

/// Define NVML's C face in the calling module, implemented by `$imp`: `pub trait Nvml`, one
/// `unsafe fn` per function of `nvml.h` whose default answers `NVML_ERROR_NOT_SUPPORTED`
/// (logged once, naming `$library`), and one exported `extern "C"` function per function
/// calling `<$imp as Nvml>::f` under `tf_ffi::guard`.
#[macro_export]
macro_rules! nvml_facade {
    ($imp:ty, $library:expr) => {
        $crate::nvml_functions!($crate::__nvml_facade, ($imp), ($library));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __nvml_facade {
    (($imp:ty), ($library:expr) $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Every NVML function; the defaults say `NVML_ERROR_NOT_SUPPORTED` (logged once per
        /// function).
        ///
        /// # Safety
        ///
        /// The arguments follow `nvml.h`'s contract: non-null pointers point at storage of the
        /// documented type and size.
        #[allow(non_snake_case, clippy::too_many_arguments, clippy::missing_safety_doc)]
        pub trait Nvml {
            $(
                unsafe fn $name($($arg: $ty),*) -> $ret {
                    $(let _ = $arg;)*
                    $crate::__private::tf_ffi::not_supported::<$crate::NvmlAbi, $ret>(
                        $library,
                        stringify!($name),
                    )
                }
            )*
        }

        $(
            /// Exported with the signature of NVIDIA's `nvml.h`.
            ///
            /// # Safety
            ///
            /// As for the real NVML function: non-null pointers point at storage of the
            /// documented type and size.
            #[unsafe(no_mangle)]
            #[allow(non_snake_case, clippy::too_many_arguments)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                $crate::__private::tf_ffi::guard::<$crate::NvmlAbi, $ret>(
                    $library,
                    stringify!($name),
                    // SAFETY: the caller upholds nvml.h's contract for these arguments, which
                    // is the contract of the trait method.
                    || unsafe { <$imp as Nvml>::$name($($arg),*) },
                )
            }
        )*
    };
}

/// Define the calling thread's stack of current contexts in the calling module, with handles of
/// type `$handle`: `current_handle()` (the top), `set_current(Option<h>)` (replaces the top, as
/// `cuCtxSetCurrent`; `None` pops it), `push_current(h)`, `pop_current()`, and
/// `forget_current(h)` (a destroyed context leaves every level of the stack).
#[macro_export]
macro_rules! context_stack {
    ($handle:ty) => {
        thread_local! {
            static STACK: ::std::cell::RefCell<Vec<$handle>> =
                const { ::std::cell::RefCell::new(Vec::new()) };
        }

        /// The calling thread's current context, if any.
        pub fn current_handle() -> Option<$handle> {
            STACK.with(|s| s.borrow().last().copied())
        }

        /// Replace the calling thread's current context (`None`: pop it).
        pub fn set_current(h: Option<$handle>) {
            STACK.with(|s| {
                let mut s = s.borrow_mut();
                s.pop();
                if let Some(h) = h {
                    s.push(h);
                }
            });
        }

        /// Push a context on the calling thread's stack.
        pub fn push_current(h: $handle) {
            STACK.with(|s| s.borrow_mut().push(h));
        }

        /// Pop the calling thread's current context.
        pub fn pop_current() -> Option<$handle> {
            STACK.with(|s| s.borrow_mut().pop())
        }

        /// Remove a destroyed context from every level of the calling thread's stack.
        pub fn forget_current(h: $handle) {
            STACK.with(|s| s.borrow_mut().retain(|&x| x != h));
        }
    };
}

/// `(name, description)` of a `CUresult`, as C strings that live as long as the library.
fn error_texts(code: u32) -> CuResult<&'static (CString, CString)> {
    static TEXTS: OnceLock<HashMap<u32, (CString, CString)>> = OnceLock::new();
    TEXTS
        .get_or_init(|| {
            CURESULT_NAMES
                .iter()
                .map(|(c, n)| {
                    let name = CString::new(*n).unwrap_or_default();
                    let text = CString::new(crate::describe(n)).unwrap_or_default();
                    (*c, (name, text))
                })
                .collect()
        })
        .get(&code)
        .ok_or(CUDA_ERROR_INVALID_VALUE)
}

/// `cuGetErrorName`: the code's symbolic name (`CUDA_ERROR_INVALID_VALUE` for an unknown code).
pub fn error_name(code: u32) -> CuResult<&'static CStr> {
    error_texts(code).map(|t| t.0.as_c_str())
}

/// `cuGetErrorString`: the code's description (`CUDA_ERROR_INVALID_VALUE` for an unknown code).
pub fn error_string(code: u32) -> CuResult<&'static CStr> {
    error_texts(code).map(|t| t.1.as_c_str())
}

/// `cuGetProcAddress` (`status` null) and `cuGetProcAddress_v2` over a library's `exports`:
/// the symbol NVIDIA's table names for `symbol` at CUDA `version` and the stream flavour in
/// `flags`, written to `pfn`; a symbol not found, or one needing a newer version, writes null
/// and a status and answers `CUDA_ERROR_NOT_FOUND`.
pub fn get_proc_address(
    exports: &HashMap<&'static str, usize>,
    symbol: *const c_char,
    pfn: *mut *mut c_void,
    version: i32,
    flags: u64,
    status: *mut u32,
) -> CuResult {
    if pfn.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let name = kit::cstr(symbol)?;
    let per_thread = flags & CU_GET_PROC_ADDRESS_PER_THREAD_DEFAULT_STREAM as u64 != 0;
    let exported = |n: &str| exports.get_key_value(n).map(|(k, _)| *k);
    let found = crate::proc_address_symbol(&name, version.max(0) as u32, per_thread, exported);
    let (addr, st) = match found {
        crate::ProcLookup::Found(sym) => match exports.get(sym) {
            Some(&addr) => (addr, CU_GET_PROC_ADDRESS_SUCCESS),
            None => (0, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
        },
        crate::ProcLookup::VersionNotSufficient => (0, CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT),
        crate::ProcLookup::NotFound => (0, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND),
    };
    kit::out(pfn, addr as *mut c_void)?;
    if !status.is_null() {
        kit::out(status, st)?;
    }
    if addr == 0 {
        Err(CUDA_ERROR_NOT_FOUND)
    } else {
        Ok(())
    }
}

/// Where each argument of the given sizes starts in a packed `extra` buffer
/// (`CU_LAUNCH_PARAM_BUFFER_POINTER`): each at its natural alignment (the size's power of two,
/// at most 8), as nvcc lays them out.
pub fn packed_offsets(sizes: &[usize]) -> Vec<usize> {
    let mut off: usize = 0;
    sizes
        .iter()
        .map(|&s| {
            let align = s.clamp(1, 8).next_power_of_two().min(8);
            off = off.next_multiple_of(align);
            let o = off;
            off += s;
            o
        })
        .collect()
}

/// `cuFuncGetParamInfo` for a kernel whose parameters have `sizes`: parameter `index`'s offset
/// in the packed buffer and its size, each written where its pointer is not null; an index past
/// the last parameter is `CUDA_ERROR_INVALID_VALUE`.
pub fn param_info(sizes: &[usize], index: usize, offset: *mut usize, size: *mut usize) -> CuResult {
    if index >= sizes.len() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    if !offset.is_null() {
        kit::out(offset, packed_offsets(sizes)[index])?;
    }
    if !size.is_null() {
        kit::out(size, sizes[index])?;
    }
    Ok(())
}

/// The pointer-sized word at `addr` in the caller's memory.
fn fetch_word(addr: usize) -> CuResult<usize> {
    let b = tf_ffi::read_bytes_checked::<crate::CudaDriverAbi>(addr, size_of::<usize>())?;
    Ok(usize::from_ne_bytes(
        b.try_into().map_err(|_| CUDA_ERROR_INVALID_VALUE)?,
    ))
}

/// A launch's argument values, sized by the kernel's signature (`sizes`), from `kernelParams`
/// (an array of pointers to each value) or `extra` (a key/value array ended by
/// `CU_LAUNCH_PARAM_END`, naming a packed buffer and its size). Every pointer is checked as it
/// is read: a bad one, a missing or short buffer, or an unknown key is
/// `CUDA_ERROR_INVALID_VALUE`, never a crash.
pub fn read_kernel_args(
    sizes: &[usize],
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult<Vec<Vec<u8>>> {
    let fetch = tf_ffi::read_bytes_checked::<crate::CudaDriverAbi>;
    let word = size_of::<usize>();
    if !params.is_null() {
        return sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| fetch(fetch_word(params as usize + i * word)?, n))
            .collect();
    }
    if !extra.is_null() {
        let (mut buf, mut len) = (0usize, None::<usize>);
        // At most a few keys exist; a list with no end within 32 pairs is malformed.
        for i in (0..64).step_by(2) {
            match fetch_word(extra as usize + i * word)? {
                crate::CU_LAUNCH_PARAM_END => break,
                crate::CU_LAUNCH_PARAM_BUFFER_POINTER => {
                    buf = fetch_word(extra as usize + (i + 1) * word)?
                }
                crate::CU_LAUNCH_PARAM_BUFFER_SIZE => {
                    len = Some(fetch_word(fetch_word(extra as usize + (i + 1) * word)?)?)
                }
                _ => return Err(CUDA_ERROR_INVALID_VALUE),
            }
        }
        let offsets = packed_offsets(sizes);
        let need = offsets.last().map_or(0, |o| o + sizes[sizes.len() - 1]);
        if buf == 0 || len.is_none_or(|l| l < need) {
            return Err(CUDA_ERROR_INVALID_VALUE);
        }
        return offsets
            .iter()
            .zip(sizes)
            .map(|(&o, &n)| fetch(buf + o, n))
            .collect();
    }
    if sizes.is_empty() {
        Ok(Vec::new())
    } else {
        Err(CUDA_ERROR_INVALID_VALUE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_arguments_sit_at_their_natural_alignment() {
        assert_eq!(
            packed_offsets(&[8, 4, 8, 1, 2, 16]),
            vec![0, 8, 16, 24, 26, 32]
        );
        assert_eq!(packed_offsets(&[]), Vec::<usize>::new());
        let (mut off, mut size) = (usize::MAX, usize::MAX);
        param_info(&[8, 4, 8], 2, &mut off, &mut size).unwrap();
        assert_eq!((off, size), (16, 8));
        param_info(&[8, 4], 1, std::ptr::null_mut(), &mut size).unwrap();
        assert_eq!(size, 4);
        let past = param_info(&[8], 1, &mut off, &mut size);
        assert_eq!(past, Err(CUDA_ERROR_INVALID_VALUE));
    }

    #[test]
    fn kernel_arguments_come_from_params_or_a_packed_buffer_and_bad_pointers_are_refused() {
        let (a, b) = (7u64, 3u32);
        let mut ptrs = [
            &a as *const u64 as *mut c_void,
            &b as *const u32 as *mut c_void,
        ];
        let got = read_kernel_args(&[8, 4], ptrs.as_mut_ptr(), std::ptr::null_mut()).unwrap();
        assert_eq!(
            got,
            vec![7u64.to_ne_bytes().to_vec(), 3u32.to_ne_bytes().to_vec()]
        );

        let mut packed = [0u8; 12];
        packed[..8].copy_from_slice(&7u64.to_ne_bytes());
        packed[8..].copy_from_slice(&3u32.to_ne_bytes());
        let mut size = packed.len();
        let mut extra = [
            crate::CU_LAUNCH_PARAM_BUFFER_POINTER as *mut c_void,
            packed.as_mut_ptr() as *mut c_void,
            crate::CU_LAUNCH_PARAM_BUFFER_SIZE as *mut c_void,
            &mut size as *mut usize as *mut c_void,
            crate::CU_LAUNCH_PARAM_END as *mut c_void,
        ];
        let got = read_kernel_args(&[8, 4], std::ptr::null_mut(), extra.as_mut_ptr()).unwrap();
        assert_eq!(
            got,
            vec![7u64.to_ne_bytes().to_vec(), 3u32.to_ne_bytes().to_vec()]
        );

        // A buffer shorter than the signature, a bad pointer, an unknown key, no arguments.
        let mut short_size = 8usize;
        extra[3] = &mut short_size as *mut usize as *mut c_void;
        let short = read_kernel_args(&[8, 4], std::ptr::null_mut(), extra.as_mut_ptr());
        assert_eq!(short, Err(CUDA_ERROR_INVALID_VALUE));
        let mut bad = [0x10 as *mut c_void, 0x10 as *mut c_void];
        let r = read_kernel_args(&[8, 4], bad.as_mut_ptr(), std::ptr::null_mut());
        assert_eq!(r, Err(CUDA_ERROR_INVALID_VALUE));
        let mut unknown = [0x77 as *mut c_void, std::ptr::null_mut()];
        let r = read_kernel_args(&[8], std::ptr::null_mut(), unknown.as_mut_ptr());
        assert_eq!(r, Err(CUDA_ERROR_INVALID_VALUE));
        let none = read_kernel_args(&[8], std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(none, Err(CUDA_ERROR_INVALID_VALUE));
        let empty = read_kernel_args(&[], std::ptr::null_mut(), std::ptr::null_mut());
        assert_eq!(empty, Ok(Vec::new()));
    }

    #[test]
    fn error_names_and_strings_come_from_the_header() {
        assert_eq!(
            error_name(CUDA_ERROR_OUT_OF_MEMORY).unwrap(),
            c"CUDA_ERROR_OUT_OF_MEMORY"
        );
        assert!(!error_string(CUDA_ERROR_OUT_OF_MEMORY).unwrap().is_empty());
        assert_eq!(error_name(0xdead_beef), Err(CUDA_ERROR_INVALID_VALUE));
        assert_eq!(error_string(0xdead_beef), Err(CUDA_ERROR_INVALID_VALUE));
    }

    #[test]
    fn proc_address_hands_out_exports_and_says_why_not() {
        let mut exports = HashMap::new();
        exports.insert("cuMemAlloc_v2", 0x1234usize);
        let mut pfn = std::ptr::null_mut();
        let mut status = u32::MAX;
        get_proc_address(
            &exports,
            c"cuMemAlloc".as_ptr(),
            &mut pfn,
            12000,
            0,
            &mut status,
        )
        .unwrap();
        assert_eq!(
            (pfn as usize, status),
            (0x1234, CU_GET_PROC_ADDRESS_SUCCESS)
        );
        let r = get_proc_address(
            &exports,
            c"cuNoSuch".as_ptr(),
            &mut pfn,
            12000,
            0,
            &mut status,
        );
        assert_eq!(r, Err(CUDA_ERROR_NOT_FOUND));
        assert_eq!(
            (pfn as usize, status),
            (0, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND)
        );
        let r = get_proc_address(
            &exports,
            c"cuMemAlloc".as_ptr(),
            std::ptr::null_mut(),
            12000,
            0,
            &mut status,
        );
        assert_eq!(r, Err(CUDA_ERROR_INVALID_VALUE));
    }
}
