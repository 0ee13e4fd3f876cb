//! Small helpers for reading arguments and writing results across the C ABI.

use std::ffi::{CStr, c_char};

use tf_cuda_abi::driver::*;

use crate::state::CuResult;

/// Write `v` through an output pointer supplied by the caller.
pub fn out<T>(p: *mut T, v: T) -> CuResult {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the driver API's contract is that a non-null output pointer points at writable
    // storage for a T; null was rejected above. Unaligned-safe.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Read a NUL-terminated string argument.
pub fn cstr<'a>(p: *const c_char) -> CuResult<&'a str> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the caller passes a NUL-terminated string (API contract); null was rejected.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| CUDA_ERROR_INVALID_VALUE)
}

/// Copy `s` (NUL-terminated, truncated) into a caller's buffer of `len` bytes.
pub fn write_str(buf: *mut c_char, len: i32, s: &str) -> CuResult {
    if buf.is_null() || len <= 0 {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    let n = s.len().min(len as usize - 1);
    // SAFETY: the caller's buffer has `len` writable bytes (API contract); we write n + 1 <= len.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
    Ok(())
}

/// Read a `T` the caller points at.
pub fn read<T: Copy>(p: *const T) -> CuResult<T> {
    if p.is_null() {
        return Err(CUDA_ERROR_INVALID_VALUE);
    }
    // SAFETY: the caller passes a pointer to a valid T (API contract); null was rejected.
    Ok(unsafe { p.read_unaligned() })
}
