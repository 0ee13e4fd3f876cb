//! The C-boundary kit (`tf-ffi`) bound to the ACL runtime's codes: a null pointer or a malformed
//! string is `ACL_ERROR_INVALID_PARAM`.

tf_ffi::kit!(ascend_sys::AclAbi);
