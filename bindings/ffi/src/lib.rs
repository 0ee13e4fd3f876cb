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

/// Write `v` through an out-parameter.
pub fn out<A: Abi, T>(p: *mut T, v: T) -> CResult {
    if p.is_null() {
        return Err(A::INVALID_VALUE);
    }
    // SAFETY: the C API's contract is that a non-null out-parameter points at writable storage
    // for a T; null was rejected above. Unaligned-safe.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// Read the `T` an input pointer points at.
pub fn read<A: Abi, T: Copy>(p: *const T) -> CResult<T> {
    if p.is_null() {
        return Err(A::INVALID_VALUE);
    }
    // SAFETY: the C API's contract is that a non-null input pointer points at a valid T; null
    // was rejected above. Unaligned-safe.
    Ok(unsafe { p.read_unaligned() })
}

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

/// A caller's buffer length as a `usize` (a negative length is an invalid value).
fn buffer_len<A: Abi>(len: impl TryInto<usize>) -> CResult<usize> {
    len.try_into().map_err(|_| A::INVALID_VALUE)
}

/// Copy `s` and a NUL into a caller's buffer of `len` bytes; a buffer too small for all of it
/// is the API's insufficient-size code, with nothing written.
pub fn write_str<A: Abi>(buf: *mut c_char, len: impl TryInto<usize>, s: &str) -> CResult {
    let len = buffer_len::<A>(len)?;
    if buf.is_null() {
        return Err(A::INVALID_VALUE);
    }
    if len < s.len() + 1 {
        return Err(A::INSUFFICIENT_SIZE);
    }
    // SAFETY: the caller's buffer has `len` writable bytes (the C API's contract) and we write
    // s.len() + 1 <= len of them.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

/// Like [`write_str`], but a buffer too small gets the string truncated at a character
/// boundary (still NUL-terminated); only an empty buffer is an invalid value.
pub fn write_str_truncated<A: Abi>(buf: *mut c_char, len: impl TryInto<usize>, s: &str) -> CResult {
    let len = buffer_len::<A>(len)?;
    if len == 0 {
        return Err(A::INVALID_VALUE);
    }
    let mut n = s.len().min(len - 1);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    write_str::<A>(buf, len, &s[..n])
}

/// The list protocol of NVML-style queries: `*count` says how many entries `buf` can hold; on
/// return it is the number of entries. When they do not fit the answer is the insufficient-size
/// code (with nothing written), so a caller may ask with a count of 0 to learn the size. An
/// empty list is success with a count of 0.
pub fn write_list<A: Abi, T: Copy>(count: *mut u32, buf: *mut T, items: &[T]) -> CResult {
    let cap = read::<A, u32>(count)?;
    let n = u32::try_from(items.len()).map_err(|_| A::INTERNAL_ERROR)?;
    out::<A, u32>(count, n)?;
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
        // SAFETY: the caller's buffer holds `cap >= n > i` entries of T (the C API's contract);
        // null was rejected above. Unaligned-safe.
        unsafe { buf.add(i).write_unaligned(*item) };
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
/// answering in that API's codes.
#[macro_export]
macro_rules! kit {
    ($abi:ty) => {
        /// Write `v` through an out-parameter (null: invalid value).
        #[allow(dead_code)]
        pub fn out<T>(p: *mut T, v: T) -> $crate::CResult {
            $crate::out::<$abi, T>(p, v)
        }
        /// Read what an input pointer points at (null: invalid value).
        #[allow(dead_code)]
        pub fn read<T: Copy>(p: *const T) -> $crate::CResult<T> {
            $crate::read::<$abi, T>(p)
        }
        /// A NUL-terminated UTF-8 string argument.
        #[allow(dead_code)]
        pub fn cstr<'a>(p: *const ::std::ffi::c_char) -> $crate::CResult<&'a str> {
            $crate::cstr::<$abi>(p)
        }
        /// A string into a caller's buffer; too small: the API's insufficient-size code.
        #[allow(dead_code)]
        pub fn write_str(
            buf: *mut ::std::ffi::c_char,
            len: impl TryInto<usize>,
            s: &str,
        ) -> $crate::CResult {
            $crate::write_str::<$abi>(buf, len, s)
        }
        /// A string into a caller's buffer, truncated to fit.
        #[allow(dead_code)]
        pub fn write_str_truncated(
            buf: *mut ::std::ffi::c_char,
            len: impl TryInto<usize>,
            s: &str,
        ) -> $crate::CResult {
            $crate::write_str_truncated::<$abi>(buf, len, s)
        }
        /// A list into a caller's buffer (NVML's count protocol).
        #[allow(dead_code)]
        pub fn write_list<T: Copy>(count: *mut u32, buf: *mut T, items: &[T]) -> $crate::CResult {
            $crate::write_list::<$abi, T>(count, buf, items)
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
