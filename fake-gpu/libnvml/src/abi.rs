//! The exported C ABI: one `extern "C"` function per function of `nvml.h`, generated from the
//! header's list (`tf_cuda_abi::nvml_functions!`), each calling the [`Nvml`] trait under the
//! C-boundary kit's panic guard (`tf_ffi::guard`). The trait's default bodies answer `NVML_ERROR_NOT_SUPPORTED`; [`crate::imp`]
//! overrides the implemented ones, and the compiler checks every override against the header's
//! signature.

use tf_cuda_abi::NvmlAbi;

/// How the simulated NVML names itself in logs.
pub const LIBRARY: &str = "the tensor-fusion simulated GPU's NVML";

/// The simulated GPU's NVML implementation.
pub struct FakeNvml;

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
                    tf_ffi::not_supported::<NvmlAbi, $ret>(LIBRARY, stringify!($name))
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
                tf_ffi::guard::<NvmlAbi, $ret>(LIBRARY, stringify!($name), || unsafe { <FakeNvml as Nvml>::$name($($arg),*) })
            }
        )*
    };
}

tf_cuda_abi::nvml_functions!(define_nvml);
