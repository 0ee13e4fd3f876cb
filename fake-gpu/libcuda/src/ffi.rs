//! The C-boundary kit (`tf-ffi`) bound to the CUDA driver API's codes: a null pointer or a
//! malformed string is `CUDA_ERROR_INVALID_VALUE`.

tf_ffi::kit!(tf_cuda_abi::CudaDriverAbi, checked);
