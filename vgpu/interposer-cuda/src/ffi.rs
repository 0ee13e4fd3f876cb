//! The C-boundary kit (`tf-ffi`) bound to the CUDA driver API's codes, for reading the caller's
//! arguments and writing its outputs.

tf_ffi::kit!(tf_cuda_abi::CudaDriverAbi);

/// How the interposer names itself in logs.
pub const LIBRARY: &str = "the tensor-fusion CUDA interposer";
