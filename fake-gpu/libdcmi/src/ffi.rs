//! The C-boundary kit (`tf-ffi`) bound to DCMI's codes: a null pointer or a buffer too small is
//! `DCMI_ERR_CODE_INVALID_PARAMETER`.

tf_ffi::kit!(ascend_sys::DcmiAbi);
