//! The exported C ABI: one `extern "C"` function per function of `nvml.h`, generated from the
//! header's list (`tf_cuda_abi::nvml_functions!`), each calling the [`Nvml`] trait under a panic
//! guard. The trait's default bodies answer `NVML_ERROR_NOT_SUPPORTED`; [`crate::imp`]
//! overrides the implemented ones, and the compiler checks every override against the header's
//! signature.

use std::ffi::c_char;
use std::panic::AssertUnwindSafe;

use tf_cuda_abi::nvml::{NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_UNKNOWN};

use crate::logging;

/// The simulated GPU's NVML implementation.
pub struct FakeNvml;

/// What an NVML function returns when it is not implemented, or when it failed unexpectedly.
pub trait Unsupported: Sized {
    /// The answer of a function the simulated GPU does not implement (logged once per function).
    fn unsupported(name: &'static str) -> Self;
    /// The answer of a function that panicked (a bug): never unwinds into C.
    fn failed() -> Self;
}

impl Unsupported for u32 {
    fn unsupported(name: &'static str) -> u32 {
        logging::unsupported_once(name);
        NVML_ERROR_NOT_SUPPORTED
    }

    fn failed() -> u32 {
        NVML_ERROR_UNKNOWN
    }
}

impl Unsupported for *const c_char {
    fn unsupported(name: &'static str) -> *const c_char {
        logging::unsupported_once(name);
        c"Not Supported".as_ptr()
    }

    fn failed() -> *const c_char {
        c"Unknown Error".as_ptr()
    }
}

/// Run one exported function: a panic is logged and becomes `R::failed()`
/// (`NVML_ERROR_UNKNOWN`), so nothing unwinds across `extern "C"`.
pub fn guard<R: Unsupported>(name: &'static str, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            logging::init();
            tracing::error!("{name} panicked inside the simulated NVML: {msg}");
            R::failed()
        }
    }
}

macro_rules! define_nvml {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Every NVML function; the defaults say NOT_SUPPORTED (logged once per function).
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
                    <$ret as Unsupported>::unsupported(stringify!($name))
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
                // SAFETY: the caller upholds nvml.h's contract for these arguments, which is the
                // contract of the trait method.
                guard(stringify!($name), || unsafe { <FakeNvml as Nvml>::$name($($arg),*) })
            }
        )*
    };
}

tf_cuda_abi::nvml_functions!(define_nvml);
