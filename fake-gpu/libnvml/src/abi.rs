//! The exported C ABI (`tf_cuda_abi::nvml_facade!`): one `extern "C"` function per function of
//! `nvml.h`, each calling the [`Nvml`] trait under the C-boundary kit's panic guard
//! (`tf_ffi::guard`). The trait's default bodies answer `NVML_ERROR_NOT_SUPPORTED`;
//! [`crate::imp`] overrides the implemented ones, and the compiler checks every override
//! against the header's signature.

/// How the simulated NVML names itself in logs.
pub const LIBRARY: &str = "the tensor-fusion simulated GPU's NVML";

/// The simulated GPU's NVML implementation.
pub struct FakeNvml;

tf_cuda_abi::nvml_facade!(FakeNvml, LIBRARY);
