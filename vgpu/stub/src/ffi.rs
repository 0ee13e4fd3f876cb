//! The C-boundary kit (`tf-ffi`) bound to the CUDA driver API's codes, checking every pointer.

tf_ffi::kit!(tf_cuda_abi::CudaDriverAbi, checked);
