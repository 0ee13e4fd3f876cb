//! # tf-ffi
//!
//! The kit for the C boundary, used by every library tensor-fusion loads into someone else's
//! program: the CUDA interposer and the simulated driver libraries (`libcuda.so.1`,
//! `libnvidia-ml.so.1`). One copy, so that they all behave alike at the boundary.
//!
//! Design rules:
//! - **Nothing unwinds into C.** Every exported function runs its body under [`guard`], which
//!   catches a panic, logs the panic's message with the function's name, and answers the API's
//!   "internal error" code ([`Answer::internal_error`]).
//! - **A C API is described once, by its codes** ([`Abi`]): which value means success, invalid
//!   argument, buffer too small, not supported, internal error. The helpers take the API as a type
//!   parameter and answer in its codes, so a CUDA function never returns an NVML code.
//! - **Arguments are checked before use**: a null out-parameter, input pointer or string is the
//!   API's invalid-value code, never a dereference. What a non-null pointer points at is the
//!   caller's contract (the C API's), which each `unsafe` block below names.
//! - **"Not supported" is logged once per function** ([`not_supported`]), so a program calling an
//!   unimplemented function in a loop does not flood its logs.
//!
//! - **The helpers are the trust boundary, and only for pointers that came across it.** They
//!   are safe functions that take raw pointers because the pointers they are given are the C
//!   caller's arguments, whose validity (beyond null, which they check) is the C API's contract,
//!   upheld by the caller of the exported `unsafe extern "C"` function. They are not for pointers
//!   a Rust caller made up (hence `clippy::not_unsafe_ptr_arg_deref` is allowed here, and only
//!   here).
//!
//! A library binds the helpers to its API once with [`kit!`], which defines `out`, `read`,
//! `cstr`, `write_str`, `write_str_truncated` and `write_list` in the calling module with the
//! API's codes.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too
#![allow(clippy::not_unsafe_ptr_arg_deref)] // see "the trust boundary" above

use std::ffi::{CStr, c_char};
use std::panic::AssertUnwindSafe;

/// A C API, described by the codes it answers with (e.g. the CUDA driver API's `CUresult`,
/// NVML's `nvmlReturn_t`).
pub trait Abi: 'static {
    /// The API's name in logs (e.g. "CUDA driver API").
    const API: &'static str;
    const SUCCESS: u32;
    /// A null or malformed argument.
    const INVALID_VALUE: u32;
    /// A caller's buffer too small for the answer (APIs without such a code use their
    /// invalid-value code).
    const INSUFFICIENT_SIZE: u32;
    const NOT_SUPPORTED: u32;
    /// What a function answers when it failed unexpectedly (a panic: a bug of ours).
    const INTERNAL_ERROR: u32;
    /// The symbolic name of [`Abi::NOT_SUPPORTED`], for the log line.
    const NOT_SUPPORTED_NAME: &'static str;
    /// Failure codes that are part of normal use (a query that says "not ready", a size probe):
    /// not logged as failures.
    const QUIET: &'static [u32];
}

/// The result of a call across the boundary: `Err` holds the API's code.
pub type CResult<T = ()> = Result<T, u32>;

/// What an exported function returns: a status code, or (rarely) a string.
pub trait Answer<A: Abi>: Sized {
    /// The answer of a function the library does not implement.
    fn not_supported() -> Self;
    /// The answer of a function that panicked.
    fn internal_error() -> Self;
    /// Whether this answer is a failure worth a debug log line.
    fn is_failure(&self) -> bool {
        false
    }
}

impl<A: Abi> Answer<A> for u32 {
    fn not_supported() -> u32 {
        A::NOT_SUPPORTED
    }
    fn internal_error() -> u32 {
        A::INTERNAL_ERROR
    }
    fn is_failure(&self) -> bool {
        *self != A::SUCCESS && !A::QUIET.contains(self)
    }
}

/// APIs whose status is a signed 32-bit enum (Vulkan's `VkResult`, whose errors are negative)
/// describe their codes in [`Abi`] by the same 32 bits (`VK_ERROR_UNKNOWN as u32`), and their
/// functions answer an `i32` with those bits.
impl<A: Abi> Answer<A> for i32 {
    fn not_supported() -> i32 {
        A::NOT_SUPPORTED as i32
    }
    fn internal_error() -> i32 {
        A::INTERNAL_ERROR as i32
    }
    fn is_failure(&self) -> bool {
        let code = *self as u32;
        code != A::SUCCESS && !A::QUIET.contains(&code)
    }
}

/// Functions that return nothing (`void`): a panic is logged and the call simply returns.
impl<A: Abi> Answer<A> for () {
    fn not_supported() {}
    fn internal_error() {}
}

/// Functions that answer an optional pointer (a proc-address lookup): `None` (C's `NULL`)
/// when unsupported or after a panic.
impl<A: Abi, T> Answer<A> for Option<T> {
    fn not_supported() -> Option<T> {
        None
    }
    fn internal_error() -> Option<T> {
        None
    }
}

/// Functions that answer with a static string (`nvmlErrorString`).
impl<A: Abi> Answer<A> for *const c_char {
    fn not_supported() -> *const c_char {
        c"Not Supported".as_ptr()
    }
    fn internal_error() -> *const c_char {
        c"Unknown Error".as_ptr()
    }
}

/// The status of a result.
pub fn status<A: Abi>(r: CResult) -> u32 {
    match r {
        Ok(()) => A::SUCCESS,
        Err(code) => code,
    }
}

/// Run the body of exported function `function` of library `library` (e.g. "the tensor-fusion
/// interposer"): a panic is caught, logged with its message, and becomes the API's internal
/// error; a failing answer is logged at debug level, every call at trace level.
pub fn guard<A: Abi, R: Answer<A>>(
    library: &'static str,
    function: &'static str,
    body: impl FnOnce() -> R,
) -> R {
    tracing::trace!(function);
    match std::panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => {
            if r.is_failure() {
                tracing::debug!(function, "call failed");
            }
            r
        }
        Err(payload) => {
            let msg = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".into());
            tf_os::init_logging();
            tracing::error!("internal error of {library} in {function}: {msg}");
            R::internal_error()
        }
    }
}

/// The answer of a function `library` does not implement: logged once per function.
pub fn not_supported<A: Abi, R: Answer<A>>(library: &'static str, function: &'static str) -> R {
    if tf_os::first_time(function) {
        tf_os::init_logging();
        tracing::warn!(
            "{function} is not supported by {library} ({})",
            A::NOT_SUPPORTED_NAME
        );
    }
    R::not_supported()
}

/// Store `v` at `p`: directly (the caller's contract vouches for `p`), or, `CHECKED`, through
/// `tf_os::copy_checked`, so that a bad address is an error rather than a crash.
fn store<T, const CHECKED: bool>(p: *mut T, v: T) -> bool {
    if CHECKED {
        let ok = tf_os::copy_checked(p as usize, &v as *const T as usize, size_of::<T>()).is_ok();
        std::mem::forget(v); // its bytes now live at `p` (T is plain C data)
        ok
    } else {
        // SAFETY: the C API's contract is that a non-null out-parameter points at writable
        // storage for a T (the caller checked null). Unaligned-safe.
        unsafe { p.write_unaligned(v) };
        true
    }
}

/// Load the `T` at `p` (see [`store`]).
fn load<T: Copy, const CHECKED: bool>(p: *const T) -> Option<T> {
    if CHECKED {
        let mut v = std::mem::MaybeUninit::<T>::uninit();
        tf_os::copy_checked(v.as_mut_ptr() as usize, p as usize, size_of::<T>()).ok()?;
        // SAFETY: all size_of::<T>() bytes were copied in; T is plain C data (Copy), valid for
        // the bit patterns a C caller passes.
        Some(unsafe { v.assume_init() })
    } else {
        // SAFETY: the C API's contract is that a non-null input pointer points at a valid T
        // (the caller checked null). Unaligned-safe.
        Some(unsafe { p.read_unaligned() })
    }
}

/// Write `v` through an out-parameter.
pub fn out<A: Abi, T>(p: *mut T, v: T) -> CResult {
    out_with::<A, T, false>(p, v)
}

/// [`out`], trusting the pointer (`CHECKED = false`) or checking it (`true`).
pub fn out_with<A: Abi, T, const CHECKED: bool>(p: *mut T, v: T) -> CResult {
    if p.is_null() || !store::<T, CHECKED>(p, v) {
        return Err(A::INVALID_VALUE);
    }
    Ok(())
}

/// Read the `T` an input pointer points at.
pub fn read<A: Abi, T: Copy>(p: *const T) -> CResult<T> {
    read_with::<A, T, false>(p)
}

/// [`read`], trusting the pointer or checking it.
pub fn read_with<A: Abi, T: Copy, const CHECKED: bool>(p: *const T) -> CResult<T> {
    if p.is_null() {
        return Err(A::INVALID_VALUE);
    }
    load::<T, CHECKED>(p).ok_or(A::INVALID_VALUE)
}

/// The longest C string a checked read follows before giving up (a PTX module can be large).
pub const MAX_CHECKED_STR: usize = 64 << 20;

/// Read a NUL-terminated UTF-8 string argument.
pub fn cstr<'a, A: Abi>(p: *const c_char) -> CResult<&'a str> {
    if p.is_null() {
        return Err(A::INVALID_VALUE);
    }
    // SAFETY: the C API's contract is that a non-null string argument is NUL-terminated and
    // outlives the call; null was rejected above.
    unsafe { CStr::from_ptr(p) }
        .to_str()
        .map_err(|_| A::INVALID_VALUE)
}

/// [`cstr`], checking every page of the string before reading it: an unmapped pointer or a
/// string with no NUL within [`MAX_CHECKED_STR`] bytes is an invalid value. Returns an owned
/// copy (the bytes were copied to be checked).
pub fn cstr_checked<A: Abi>(p: *const c_char) -> CResult<String> {
    if p.is_null() {
        return Err(A::INVALID_VALUE);
    }
    const PAGE: usize = 4096;
    let mut bytes = Vec::new();
    let mut at = p as usize;
    while bytes.len() < MAX_CHECKED_STR {
        // Up to the end of this page: a later page may be unmapped after the NUL.
        let n = PAGE - at % PAGE;
        let mut chunk = vec![0u8; n];
        tf_os::copy_checked(chunk.as_mut_ptr() as usize, at, n).map_err(|_| A::INVALID_VALUE)?;
        if let Some(end) = chunk.iter().position(|&b| b == 0) {
            bytes.extend_from_slice(&chunk[..end]);
            return String::from_utf8(bytes).map_err(|_| A::INVALID_VALUE);
        }
        bytes.extend_from_slice(&chunk);
        at += n;
    }
    Err(A::INVALID_VALUE)
}

/// `len` bytes of the caller's memory at `addr`, every page checked before it is read: a null
/// or unmapped pointer is an invalid value, never a crash (for memory a C API's arguments
/// point into, such as a kernel launch's argument values).
pub fn read_bytes_checked<A: Abi>(addr: usize, len: usize) -> CResult<Vec<u8>> {
    let mut v = vec![0u8; len];
    if len > 0 {
        if addr == 0 {
            return Err(A::INVALID_VALUE);
        }
        tf_os::copy_checked(v.as_mut_ptr() as usize, addr, len).map_err(|_| A::INVALID_VALUE)?;
    }
    Ok(v)
}

/// A caller's buffer length as a `usize` (a negative length is an invalid value).
fn buffer_len<A: Abi>(len: impl TryInto<usize>) -> CResult<usize> {
    len.try_into().map_err(|_| A::INVALID_VALUE)
}

/// Copy `s` and a NUL into a caller's buffer of `len` bytes; a buffer too small for all of it
/// is the API's insufficient-size code, with nothing written.
pub fn write_str<A: Abi>(buf: *mut c_char, len: impl TryInto<usize>, s: &str) -> CResult {
    write_str_with::<A, false>(buf, len, s)
}

/// [`write_str`], trusting the buffer or checking it.
pub fn write_str_with<A: Abi, const CHECKED: bool>(
    buf: *mut c_char,
    len: impl TryInto<usize>,
    s: &str,
) -> CResult {
    let len = buffer_len::<A>(len)?;
    if buf.is_null() {
        return Err(A::INVALID_VALUE);
    }
    if len < s.len() + 1 {
        return Err(A::INSUFFICIENT_SIZE);
    }
    let mut bytes = Vec::with_capacity(s.len() + 1);
    bytes.extend_from_slice(s.as_bytes());
    bytes.push(0);
    if CHECKED {
        tf_os::copy_checked(buf as usize, bytes.as_ptr() as usize, bytes.len())
            .map_err(|_| A::INVALID_VALUE)
    } else {
        // SAFETY: the caller's buffer has `len` writable bytes (the C API's contract) and we
        // write s.len() + 1 <= len of them.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf as *mut u8, bytes.len()) };
        Ok(())
    }
}

/// Like [`write_str`], but a buffer too small gets the string truncated at a character
/// boundary (still NUL-terminated); only an empty buffer is an invalid value.
pub fn write_str_truncated<A: Abi>(buf: *mut c_char, len: impl TryInto<usize>, s: &str) -> CResult {
    write_str_truncated_with::<A, false>(buf, len, s)
}

/// [`write_str_truncated`], trusting the buffer or checking it.
pub fn write_str_truncated_with<A: Abi, const CHECKED: bool>(
    buf: *mut c_char,
    len: impl TryInto<usize>,
    s: &str,
) -> CResult {
    let len = buffer_len::<A>(len)?;
    if len == 0 {
        return Err(A::INVALID_VALUE);
    }
    let mut n = s.len().min(len - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    write_str_with::<A, CHECKED>(buf, len, &s[..n])
}

/// The list protocol of NVML-style queries: `*count` says how many entries `buf` can hold; on
/// return it is the number of entries. When they do not fit the answer is the insufficient-size
/// code (with nothing written), so a caller may ask with a count of 0 to learn the size. An
/// empty list is success with a count of 0.
pub fn write_list<A: Abi, T: Copy>(count: *mut u32, buf: *mut T, items: &[T]) -> CResult {
    write_list_with::<A, T, false>(count, buf, items)
}

/// [`write_list`], trusting the buffers or checking them.
pub fn write_list_with<A: Abi, T: Copy, const CHECKED: bool>(
    count: *mut u32,
    buf: *mut T,
    items: &[T],
) -> CResult {
    let cap = read_with::<A, u32, CHECKED>(count)?;
    let n = u32::try_from(items.len()).map_err(|_| A::INTERNAL_ERROR)?;
    out_with::<A, u32, CHECKED>(count, n)?;
    if n == 0 {
        return Ok(());
    }
    if cap < n {
        return Err(A::INSUFFICIENT_SIZE);
    }
    if buf.is_null() {
        return Err(A::INVALID_VALUE);
    }
    for (i, item) in items.iter().enumerate() {
        // The i-th entry of the caller's buffer (which holds `cap >= n > i` entries by the C
        // API's contract; checked when CHECKED).
        if !store::<T, CHECKED>(buf.wrapping_add(i), *item) {
            return Err(A::INVALID_VALUE);
        }
    }
    Ok(())
}

/// A string as a fixed C `char` array (truncated, always NUL-terminated).
pub fn fill_chars<const N: usize>(s: &str) -> [c_char; N] {
    let mut a = [0 as c_char; N];
    for (d, b) in a.iter_mut().zip(s.bytes().take(N.saturating_sub(1))) {
        *d = b as c_char;
    }
    a
}

/// Bind the helpers to one API in the calling module: `tf_ffi::kit!(tf_cuda_abi::CudaDriverAbi);`
/// defines `out`, `read`, `cstr`, `write_str`, `write_str_truncated`, `write_list` and `status`
/// answering in that API's codes, trusting the caller's non-null pointers (for an interposer,
/// which only touches what the real library just accepted). `tf_ffi::kit!(Abi, checked);`
/// checks every pointer before touching it (for an implementation of the API, which must answer
/// a bad pointer with an error code, never crash); its `cstr` returns an owned `String`.
#[macro_export]
macro_rules! kit {
    ($abi:ty) => {
        $crate::kit!(@ $abi, false);
        /// A NUL-terminated UTF-8 string argument.
        #[allow(dead_code)]
        pub fn cstr<'a>(p: *const ::std::ffi::c_char) -> $crate::CResult<&'a str> {
            $crate::cstr::<$abi>(p)
        }
    };
    ($abi:ty, checked) => {
        $crate::kit!(@ $abi, true);
        /// A NUL-terminated UTF-8 string argument, every page checked before it is read.
        #[allow(dead_code)]
        pub fn cstr(p: *const ::std::ffi::c_char) -> $crate::CResult<String> {
            $crate::cstr_checked::<$abi>(p)
        }
    };
    (@ $abi:ty, $checked:literal) => {
        /// Write `v` through an out-parameter (null: invalid value).
        #[allow(dead_code)]
        pub fn out<T>(p: *mut T, v: T) -> $crate::CResult {
            $crate::out_with::<$abi, T, $checked>(p, v)
        }
        /// Read what an input pointer points at (null: invalid value).
        #[allow(dead_code)]
        pub fn read<T: Copy>(p: *const T) -> $crate::CResult<T> {
            $crate::read_with::<$abi, T, $checked>(p)
        }
        /// A string into a caller's buffer; too small: the API's insufficient-size code.
        #[allow(dead_code)]
        pub fn write_str(
            buf: *mut ::std::ffi::c_char,
            len: impl TryInto<usize>,
            s: &str,
        ) -> $crate::CResult {
            $crate::write_str_with::<$abi, $checked>(buf, len, s)
        }
        /// A string into a caller's buffer, truncated to fit.
        #[allow(dead_code)]
        pub fn write_str_truncated(
            buf: *mut ::std::ffi::c_char,
            len: impl TryInto<usize>,
            s: &str,
        ) -> $crate::CResult {
            $crate::write_str_truncated_with::<$abi, $checked>(buf, len, s)
        }
        /// A list into a caller's buffer (NVML's count protocol).
        #[allow(dead_code)]
        pub fn write_list<T: Copy>(count: *mut u32, buf: *mut T, items: &[T]) -> $crate::CResult {
            $crate::write_list_with::<$abi, T, $checked>(count, buf, items)
        }
        /// The status code of a result.
        #[allow(dead_code)]
        pub fn status(r: $crate::CResult) -> u32 {
            $crate::status::<$abi>(r)
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Test;
    impl Abi for Test {
        const API: &'static str = "test API";
        const SUCCESS: u32 = 0;
        const INVALID_VALUE: u32 = 1;
        const INSUFFICIENT_SIZE: u32 = 7;
        const NOT_SUPPORTED: u32 = 3;
        const INTERNAL_ERROR: u32 = 999;
        const NOT_SUPPORTED_NAME: &'static str = "TEST_NOT_SUPPORTED";
        const QUIET: &'static [u32] = &[5];
    }

    mod bound {
        crate::kit!(super::Test);
    }

    mod checked {
        crate::kit!(super::Test, checked);
    }

    #[test]
    fn checked_helpers_answer_bad_pointers_with_the_invalid_value_code() {
        let bad = 0x10 as *mut u64;
        assert_eq!(checked::out(bad, 7), Err(1));
        assert_eq!(checked::read(bad as *const u64), Err(1));
        let mut v = 0u64;
        assert_eq!(checked::out(&mut v, 42), Ok(()));
        assert_eq!(checked::read(&v), Ok(42));
        assert_eq!(checked::cstr(0x10 as *const c_char), Err(1));
        assert_eq!(
            checked::cstr(c"ptx text".as_ptr()).as_deref(),
            Ok("ptx text")
        );
        let big = "x".repeat(10_000) + "\0";
        assert_eq!(
            checked::cstr(big.as_ptr() as *const c_char).map(|s| s.len()),
            Ok(10_000)
        );
        assert_eq!(read_bytes_checked::<Test>(0x10, 8), Err(1));
        assert_eq!(read_bytes_checked::<Test>(0, 1), Err(1));
        assert_eq!(read_bytes_checked::<Test>(0, 0), Ok(Vec::new()));
        let bytes = [1u8, 2, 3];
        assert_eq!(
            read_bytes_checked::<Test>(bytes.as_ptr() as usize, 3),
            Ok(vec![1, 2, 3])
        );
        assert_eq!(checked::write_str(0x10 as *mut c_char, 8, "abc"), Err(1));
        let mut count = 4u32;
        assert_eq!(
            checked::write_list(&mut count, 0x10 as *mut u16, &[1, 2]),
            Err(1)
        );
        assert_eq!(
            checked::write_list(0x10 as *mut u32, std::ptr::null_mut::<u16>(), &[1]),
            Err(1)
        );
    }

    #[test]
    fn a_panic_becomes_the_internal_error_code() {
        let r: u32 = guard::<Test, u32>("the test library", "f", || panic!("boom"));
        assert_eq!(r, 999);
        let r: u32 = guard::<Test, u32>("the test library", "g", || 5);
        assert_eq!(r, 5);
        let s: *const c_char = guard::<Test, _>("the test library", "h", || -> *const c_char {
            panic!("{}", String::from("owned message"))
        });
        // SAFETY: the guard answers with a static NUL-terminated string.
        assert_eq!(unsafe { CStr::from_ptr(s) }, c"Unknown Error");
        assert_eq!(not_supported::<Test, u32>("the test library", "k"), 3);
        assert_eq!(not_supported::<Test, u32>("the test library", "k"), 3);
    }

    #[test]
    fn null_pointers_and_small_buffers_get_the_apis_codes() {
        assert_eq!(bound::out::<u32>(std::ptr::null_mut(), 1), Err(1));
        let mut v = 0u64;
        assert_eq!(bound::out(&mut v, 42), Ok(()));
        assert_eq!(v, 42);
        assert_eq!(bound::read::<u64>(std::ptr::null()), Err(1));
        assert_eq!(bound::read(&v), Ok(42));
        assert_eq!(bound::cstr(std::ptr::null()), Err(1));
        assert_eq!(bound::cstr(c"hé".as_ptr()), Ok("hé"));
        let bad = [0xffu8 as c_char, 0];
        assert_eq!(bound::cstr(bad.as_ptr()), Err(1));

        let mut buf = [1 as c_char; 4];
        assert_eq!(bound::write_str(buf.as_mut_ptr(), 4, "abcd"), Err(7));
        assert_eq!(buf, [1; 4], "nothing written");
        assert_eq!(bound::write_str(buf.as_mut_ptr(), 4, "abc"), Ok(()));
        assert_eq!(buf.map(|c| c as u8), *b"abc\0");
        assert_eq!(bound::write_str(buf.as_mut_ptr(), -1, "a"), Err(1));
        assert_eq!(bound::write_str(std::ptr::null_mut(), 4, "a"), Err(1));
        assert_eq!(
            bound::write_str_truncated(buf.as_mut_ptr(), 3i32, "héllo"),
            Ok(())
        );
        // "h" + a 2-byte 'é' does not fit in 2 bytes: cut at the character boundary.
        assert_eq!(
            buf[..2].iter().map(|&c| c as u8).collect::<Vec<_>>(),
            b"h\0"
        );
        assert_eq!(
            bound::write_str_truncated(buf.as_mut_ptr(), 0u32, "x"),
            Err(1)
        );

        let mut count = 0u32;
        let mut list = [0u16; 2];
        assert_eq!(
            bound::write_list(&mut count, list.as_mut_ptr(), &[1, 2]),
            Err(7)
        );
        assert_eq!(count, 2, "the size is reported");
        assert_eq!(
            bound::write_list(&mut count, list.as_mut_ptr(), &[1, 2]),
            Ok(())
        );
        assert_eq!(list, [1, 2]);
        count = 2;
        assert_eq!(
            bound::write_list::<u16>(&mut count, std::ptr::null_mut(), &[]),
            Ok(())
        );
        assert_eq!(count, 0);
        assert_eq!(bound::status(Err(9)), 9);
        assert_eq!(bound::status(Ok(())), 0);
        assert_eq!(fill_chars::<3>("abcdef").map(|c| c as u8), *b"ab\0");
    }
}
