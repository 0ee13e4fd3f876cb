//! The C-boundary kit (`tf-ffi`) bound to NVML's codes: every helper rejects a null pointer with
//! `NVML_ERROR_INVALID_ARGUMENT` and a buffer too small with `NVML_ERROR_INSUFFICIENT_SIZE`.

pub use tf_ffi::fill_chars;

tf_ffi::kit!(tf_cuda_abi::NvmlAbi, checked);

/// The result of an NVML call: `Err` holds the `nvmlReturn_t`.
pub type NvmlResult<T = ()> = tf_ffi::CResult<T>;

/// The `nvmlReturn_t` of a result.
pub fn ret(r: NvmlResult) -> u32 {
    status(r)
}
