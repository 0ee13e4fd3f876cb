//! Small helpers for reading arguments and writing results across the C ABI. Every one rejects a
//! null pointer with `NVML_ERROR_INVALID_ARGUMENT`.

use std::ffi::{CStr, c_char};

use tf_cuda_abi::nvml::*;

/// The result of an NVML call: `Err` holds the `nvmlReturn_t`.
pub type NvmlResult<T = ()> = Result<T, u32>;

/// The `nvmlReturn_t` of a result.
pub fn ret(r: NvmlResult) -> u32 {
    match r {
        Ok(()) => NVML_SUCCESS,
        Err(code) => code,
    }
}

/// Write `v` through an output pointer supplied by the caller.
pub fn out<T>(p: *mut T, v: T) -> NvmlResult {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: NVML's contract is that a non-null output pointer points at writable storage for a
    // T; null was rejected above. Unaligned-safe.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Read a `T` the caller points at.
pub fn read<T: Copy>(p: *const T) -> NvmlResult<T> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: the caller passes a pointer to a valid T (API contract); null was rejected.
    Ok(unsafe { p.read_unaligned() })
}

/// Read a NUL-terminated string argument.
pub fn cstr<'a>(p: *const c_char) -> NvmlResult<&'a str> {
    if p.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    // SAFETY: the caller passes a NUL-terminated string (API contract); null was rejected.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| NVML_ERROR_INVALID_ARGUMENT)
}

/// Copy `s` and a NUL into a caller's buffer of `len` bytes; a buffer too small for all of it is
/// `NVML_ERROR_INSUFFICIENT_SIZE` (as the real NVML answers for names, UUIDs and versions).
pub fn write_str(buf: *mut c_char, len: u32, s: &str) -> NvmlResult {
    if buf.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    if (len as usize) < s.len() + 1 {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    // SAFETY: the caller's buffer has `len` writable bytes (API contract) and we write
    // s.len() + 1 <= len of them.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

/// Like [`write_str`], but a buffer too small gets the string truncated (still NUL-terminated).
pub fn write_str_truncated(buf: *mut c_char, len: u32, s: &str) -> NvmlResult {
    if buf.is_null() || len == 0 {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    let mut n = s.len().min(len as usize - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    write_str(buf, len, &s[..n])
}

/// NVML's list protocol: `*count` says how many entries `buf` can hold. On return `*count` is the
/// number of entries; when they do not fit the answer is `NVML_ERROR_INSUFFICIENT_SIZE` (with
/// nothing written), so a caller may ask with a count of 0 to learn the size. An empty list is
/// success with a count of 0.
pub fn write_list<T>(count: *mut u32, buf: *mut T, items: &[T]) -> NvmlResult
where
    T: Copy,
{
    let cap = read(count)?;
    let n = items.len();
    out(count, n as u32)?;
    if n == 0 {
        return Ok(());
    }
    if (cap as usize) < n {
        return Err(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    if buf.is_null() {
        return Err(NVML_ERROR_INVALID_ARGUMENT);
    }
    for (i, item) in items.iter().enumerate() {
        // SAFETY: the caller's buffer holds `cap >= n > i` entries of T (API contract); null
        // was rejected. Unaligned-safe.
        unsafe { buf.add(i).write_unaligned(*item) };
    }
    Ok(())
}

/// Copy a string into a fixed C char array (truncated, always NUL-terminated).
pub fn fill_chars<const N: usize>(s: &str) -> [c_char; N] {
    let mut a = [0 as c_char; N];
    for (d, b) in a.iter_mut().zip(s.bytes().take(N.saturating_sub(1))) {
        *d = b as c_char;
    }
    a
}
