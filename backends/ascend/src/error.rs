//! `aclError` and DCMI return codes as HAL errors: the one mapping, keeping the vendor's code
//! and name.

use ascend_sys::acl::*;
use ascend_sys::dcmi::*;
use tf_hal::{Error, ErrorKind, Result};

use crate::Libs;

/// The HAL kind of an `aclError`.
pub fn acl_kind(code: i32) -> ErrorKind {
    match code as u32 {
        ACL_ERROR_RT_MEMORY_ALLOCATION | ACL_ERROR_BAD_ALLOC => ErrorKind::OutOfMemory,
        ACL_ERROR_INVALID_PARAM | ACL_ERROR_RT_PARAM_INVALID | ACL_ERROR_RT_MEMORY_FREE => {
            ErrorKind::InvalidValue
        }
        ACL_ERROR_RT_INVALID_HANDLE | ACL_ERROR_RT_STREAM_CONTEXT => ErrorKind::InvalidHandle,
        ACL_ERROR_RT_INVALID_DEVICEID | ACL_ERROR_INVALID_DEVICE | ACL_ERROR_RT_NO_DEVICE => {
            ErrorKind::InvalidDevice
        }
        ACL_ERROR_UNINITIALIZE | ACL_ERROR_RT_CONTEXT_NULL => ErrorKind::NotInitialized,
        ACL_ERROR_API_NOT_SUPPORT | ACL_ERROR_RT_FEATURE_NOT_SUPPORT => ErrorKind::NotSupported,
        ACL_ERROR_RT_KERNEL_LOOKUP => ErrorKind::NotFound,
        ACL_ERROR_INVALID_FILE => ErrorKind::InvalidImage,
        ACL_ERROR_RT_AICORE_EXCEPTION => ErrorKind::IllegalAddress,
        ACL_ERROR_RT_EVENT_NOT_COMPLETE | ACL_ERROR_RT_STREAM_NOT_COMPLETE => ErrorKind::NotReady,
        ACL_ERROR_RT_DEV_SETUP_ERROR => ErrorKind::DeviceLost,
        _ => ErrorKind::Other,
    }
}

/// `Ok` for `ACL_SUCCESS`, else the HAL error of `code` from `what`.
pub fn acl(code: i32, what: &str) -> Result<()> {
    if code == ACL_SUCCESS as i32 {
        return Ok(());
    }
    let name = ascend_sys::acl_error_name(code).unwrap_or("aclError");
    Err(Error::new(acl_kind(code), what.to_string()).with_vendor(code as i64, name))
}

/// `Ok` for `DCMI_OK`, else the HAL error of `code` from `what`.
pub fn dcmi(code: i32, what: &str) -> Result<()> {
    if code == DCMI_OK as i32 {
        return Ok(());
    }
    let kind = match code {
        DCMI_ERR_CODE_INVALID_PARAMETER => ErrorKind::InvalidValue,
        DCMI_ERR_CODE_INVALID_DEVICE_ID | DCMI_ERR_CODE_DEVICE_NOT_EXIST => {
            ErrorKind::InvalidDevice
        }
        DCMI_ERR_CODE_NOT_SUPPORT => ErrorKind::NotSupported,
        DCMI_ERR_CODE_RESOURCE_OCCUPIED => ErrorKind::OutOfMemory,
        _ => ErrorKind::Other,
    };
    let name = ascend_sys::dcmi_error_name(code).unwrap_or("DCMI error");
    Err(Error::new(kind, what.to_string()).with_vendor(code as i64, name))
}

/// `aclInit`, once per process (a second call's `ACL_ERROR_REPEAT_INITIALIZE` is success).
pub fn acl_init(libs: &Libs) -> Result<()> {
    let f = libs.acl.aclInit.expect("checked at load");
    // SAFETY: a null configuration path means no configuration file.
    let rc = unsafe { f(std::ptr::null()) };
    if rc == ACL_ERROR_REPEAT_INITIALIZE as i32 {
        return Ok(());
    }
    acl(rc, "aclInit")
}

/// Call an ACL function of `$libs` (checked at load) and map its answer.
macro_rules! acl_call {
    ($libs:expr, $name:ident($($arg:expr),*)) => {{
        let f = $libs.acl.$name.expect(concat!(stringify!($name), " is checked at load"));
        // SAFETY: the arguments follow the ACL documentation's contract for this function
        // (valid out-pointers, handles from this context's tables).
        $crate::error::acl(unsafe { f($($arg),*) }, stringify!($name))
    }};
}

/// Call a DCMI function of `$libs`; `Err(NotSupported)` when the library lacks it.
macro_rules! dcmi_call {
    ($libs:expr, $name:ident($($arg:expr),*)) => {{
        match $libs.dcmi.$name {
            // SAFETY: the arguments follow the DCMI documentation's contract for this function
            // (valid out-pointers to structs of the documented layout).
            Some(f) => $crate::error::dcmi(unsafe { f($($arg),*) }, stringify!($name)),
            None => Err(tf_hal::Error::not_supported(concat!(
                stringify!($name),
                " is not in this libdcmi"
            ))),
        }
    }};
}

pub(crate) use {acl_call, dcmi_call};
