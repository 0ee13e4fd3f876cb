//! # tf-fake-ascendcl
//!
//! The simulated GPU as a drop-in Ascend ACL runtime, `libascendcl.so`: unmodified programs that
//! use the ACL runtime API (C programs linked with `-lascendcl`, the Ascend HAL backend) run on
//! the simulated machine's NPUs with `LD_LIBRARY_PATH` pointing at
//! `tensor-fusion fake-gpu install DIR`.
//!
//! Every function of `ascend-sys`'s ACL subset is exported with its documented signature. The
//! [`Acl`] trait has one method per function; its default answers `ACL_ERROR_API_NOT_SUPPORT`
//! and logs once, and [`FakeAcl`] overrides what the simulator implements, so the compiler
//! checks every implemented signature against the subset's. No panic crosses the C boundary:
//! each export runs under `tf_ffi::guard` and a panic becomes `ACL_ERROR_INTERNAL_ERROR`.
//!
//! Devices are the simulated machine's Ascend devices (`vendor = "ascend"` in the profile; with
//! no profile, two Ascend 910B3), in profile order, filtered by `ASCEND_RT_VISIBLE_DEVICES`
//! (a comma-separated list of device indices) like the real runtime. They share the engine's
//! per-device segments with every other process, so memory used, the kernel arbiter and
//! utilization are machine-wide, and a process that dies gives its memory back.
//!
//! Kernels: `aclrtBinaryLoadFromData`/`FromFile` take a kernel binary; the simulator loads
//! binaries whose text is PTX (such as the project's `hal/kernels/tf_kernels.ptx`): the `.entry`
//! names select the engine's built-in kernels (`tf_vector_add_f32`, `tf_saxpy_f32`,
//! `tf_fill_u32`, `tf_busy`; any other entry only takes its modeled time) and each entry's
//! parameter list gives the layout of the argument block `aclrtLaunchKernel` passes: the
//! parameters in order, each aligned to its own size (a C struct of them). As on an Ascend AI
//! core, a launch's `blockDim` says how many cores share the work, not how many elements there
//! are: a built-in processes every element its count argument names. The argument block is
//! device memory, read when the launch is queued (write it with a synchronous copy first).
//!
//! Copies: `aclrtMemcpy` from host to device writes at once, without waiting for queued work;
//! copies that read device memory wait for the context's queued work first.
//!
//! Design rules: state lives in the engine (device segments) or in this process's handle
//! registries (handles are object addresses, checked before use); errors come from the engine as
//! HAL errors and are mapped to `aclError` in one place ([`state::code`]).
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too
#![allow(non_snake_case)]

mod ffi;
mod imp;
mod state;

use std::ffi::{c_char, c_void};

use ascend_sys::AclAbi;
use ascend_sys::acl::*;

/// How the simulated runtime names itself in logs.
pub const LIBRARY: &str = "the tensor-fusion simulated ACL runtime";

fn r(res: state::AclResult) -> aclError {
    ffi::status(res) as aclError
}

macro_rules! define_acl {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)*) => {
        /// Every function of the ACL subset. Defaults answer `ACL_ERROR_API_NOT_SUPPORT` (a
        /// null string for the functions that return one).
        #[allow(clippy::too_many_arguments, clippy::missing_safety_doc)]
        pub trait Acl {
            $(
                unsafe fn $name($($arg: $ty),*) -> $ret {
                    $(let _ = $arg;)*
                    <$ret as Unsupported>::unsupported(stringify!($name))
                }
            )*
        }

        $(
            /// Exported with the signature of the ACL documentation.
            ///
            /// # Safety
            /// The ACL runtime's contract for this function.
            #[unsafe(no_mangle)]
            #[allow(clippy::too_many_arguments)]
            pub unsafe extern "C" fn $name($($arg: $ty),*) -> $ret {
                <$ret as Unsupported>::guarded(stringify!($name), || {
                    // SAFETY: forwarded with the caller's own arguments and contract.
                    unsafe { <FakeAcl as Acl>::$name($($arg),*) }
                })
            }
        )*
    };
}

/// What an unimplemented function answers, and the panic guard for each return type (`aclError`
/// travels through the C-boundary kit as its bits in a `u32`).
trait Unsupported: Sized {
    fn unsupported(function: &'static str) -> Self;
    fn guarded(function: &'static str, body: impl FnOnce() -> Self) -> Self;
}

impl Unsupported for aclError {
    fn unsupported(function: &'static str) -> Self {
        tf_ffi::not_supported::<AclAbi, u32>(LIBRARY, function) as aclError
    }
    fn guarded(function: &'static str, body: impl FnOnce() -> Self) -> Self {
        tf_ffi::guard::<AclAbi, u32>(LIBRARY, function, || body() as u32) as aclError
    }
}

impl Unsupported for *const c_char {
    fn unsupported(function: &'static str) -> Self {
        tf_ffi::not_supported::<AclAbi, *const c_char>(LIBRARY, function)
    }
    fn guarded(function: &'static str, body: impl FnOnce() -> Self) -> Self {
        tf_ffi::guard::<AclAbi, *const c_char>(LIBRARY, function, body)
    }
}

ascend_sys::acl_functions!(define_acl);

/// The simulated runtime's implementation of the ACL subset.
pub struct FakeAcl;

impl Acl for FakeAcl {
    // --- initialisation and versions ---
    unsafe fn aclInit(_config: *const c_char) -> aclError {
        r(state::init())
    }
    unsafe fn aclFinalize() -> aclError {
        r(state::finalize())
    }
    unsafe fn aclrtGetVersion(major: *mut i32, minor: *mut i32, patch: *mut i32) -> aclError {
        r(ffi::out(major, 1)
            .and_then(|()| ffi::out(minor, 0))
            .and_then(|()| ffi::out(patch, 0)))
    }
    unsafe fn aclrtGetSocName() -> *const c_char {
        state::soc_name()
    }
    unsafe fn aclGetRecentErrMsg() -> *const c_char {
        state::recent_error()
    }
    unsafe fn aclrtGetRunMode(mode: *mut aclrtRunMode) -> aclError {
        r(ffi::out(mode, ACL_HOST))
    }

    // --- devices and contexts ---
    unsafe fn aclrtSetDevice(id: i32) -> aclError {
        r(state::set_device(id))
    }
    unsafe fn aclrtResetDevice(id: i32) -> aclError {
        r(state::reset_device(id))
    }
    unsafe fn aclrtGetDevice(id: *mut i32) -> aclError {
        r(state::current().and_then(|(_, c)| ffi::out(id, c.device)))
    }
    unsafe fn aclrtGetDeviceCount(count: *mut u32) -> aclError {
        r(state::machine().and_then(|m| ffi::out(count, m.devices.len() as u32)))
    }
    unsafe fn aclrtSynchronizeDevice() -> aclError {
        r(state::current().and_then(|(_, c)| state::hal(c.engine.synchronize())))
    }
    unsafe fn aclrtCreateContext(ctx: *mut aclrtContext, id: i32) -> aclError {
        r(state::create_context(id).and_then(|h| ffi::out(ctx, h as aclrtContext)))
    }
    unsafe fn aclrtDestroyContext(ctx: aclrtContext) -> aclError {
        r(state::destroy_context(ctx as usize))
    }
    unsafe fn aclrtSetCurrentContext(ctx: aclrtContext) -> aclError {
        r(state::set_current_context(ctx as usize))
    }
    unsafe fn aclrtGetCurrentContext(ctx: *mut aclrtContext) -> aclError {
        r(state::current().and_then(|(h, _)| ffi::out(ctx, h as aclrtContext)))
    }

    // --- streams and events ---
    unsafe fn aclrtCreateStream(stream: *mut aclrtStream) -> aclError {
        r(imp::create_stream().and_then(|h| ffi::out(stream, h as aclrtStream)))
    }
    unsafe fn aclrtDestroyStream(stream: aclrtStream) -> aclError {
        r(imp::destroy_stream(stream as usize))
    }
    unsafe fn aclrtSynchronizeStream(stream: aclrtStream) -> aclError {
        r(state::stream(stream as usize).and_then(|s| state::hal(s.synchronize())))
    }
    unsafe fn aclrtStreamQuery(stream: aclrtStream, status: *mut aclrtStreamStatus) -> aclError {
        r(state::stream(stream as usize).and_then(|s| {
            ffi::out(
                status,
                if s.query() {
                    ACL_STREAM_STATUS_COMPLETE
                } else {
                    ACL_STREAM_STATUS_NOT_READY
                },
            )
        }))
    }
    unsafe fn aclrtStreamWaitEvent(stream: aclrtStream, event: aclrtEvent) -> aclError {
        r(imp::stream_wait_event(stream as usize, event as usize))
    }
    unsafe fn aclrtCreateEvent(event: *mut aclrtEvent) -> aclError {
        r(imp::create_event().and_then(|h| ffi::out(event, h as aclrtEvent)))
    }
    unsafe fn aclrtDestroyEvent(event: aclrtEvent) -> aclError {
        r(state::EVENTS.remove(event as usize).map(|_| ()))
    }
    unsafe fn aclrtRecordEvent(event: aclrtEvent, stream: aclrtStream) -> aclError {
        r(imp::record_event(event as usize, stream as usize))
    }
    unsafe fn aclrtQueryEventStatus(
        event: aclrtEvent,
        status: *mut aclrtEventRecordedStatus,
    ) -> aclError {
        r(imp::query_event(event as usize, status))
    }
    unsafe fn aclrtSynchronizeEvent(event: aclrtEvent) -> aclError {
        r(state::EVENTS.get(event as usize).map(|e| e.synchronize()))
    }
    unsafe fn aclrtEventElapsedTime(ms: *mut f32, start: aclrtEvent, end: aclrtEvent) -> aclError {
        r(imp::elapsed(ms, start as usize, end as usize))
    }

    // --- memory ---
    unsafe fn aclrtMalloc(
        p: *mut *mut c_void,
        size: usize,
        _policy: aclrtMemMallocPolicy,
    ) -> aclError {
        r(imp::malloc(p, size))
    }
    unsafe fn aclrtMallocCached(
        p: *mut *mut c_void,
        size: usize,
        _policy: aclrtMemMallocPolicy,
    ) -> aclError {
        r(imp::malloc(p, size))
    }
    unsafe fn aclrtMallocAlign32(
        p: *mut *mut c_void,
        size: usize,
        _policy: aclrtMemMallocPolicy,
    ) -> aclError {
        r(imp::malloc(p, size))
    }
    unsafe fn aclrtFree(p: *mut c_void) -> aclError {
        r(imp::free(p as u64))
    }
    unsafe fn aclrtMallocHost(p: *mut *mut c_void, size: usize) -> aclError {
        r(imp::malloc_host(p, size))
    }
    unsafe fn aclrtFreeHost(p: *mut c_void) -> aclError {
        r(imp::free(p as u64))
    }
    unsafe fn aclrtMemset(dst: *mut c_void, max: usize, value: i32, count: usize) -> aclError {
        r(imp::memset(dst as u64, max, value, count, None))
    }
    unsafe fn aclrtMemsetAsync(
        dst: *mut c_void,
        max: usize,
        value: i32,
        count: usize,
        stream: aclrtStream,
    ) -> aclError {
        r(imp::memset(
            dst as u64,
            max,
            value,
            count,
            Some(stream as usize),
        ))
    }
    unsafe fn aclrtMemcpy(
        dst: *mut c_void,
        max: usize,
        src: *const c_void,
        count: usize,
        kind: aclrtMemcpyKind,
    ) -> aclError {
        r(imp::memcpy(
            dst as usize,
            max,
            src as usize,
            count,
            kind,
            None,
        ))
    }
    unsafe fn aclrtMemcpyAsync(
        dst: *mut c_void,
        max: usize,
        src: *const c_void,
        count: usize,
        kind: aclrtMemcpyKind,
        stream: aclrtStream,
    ) -> aclError {
        r(imp::memcpy(
            dst as usize,
            max,
            src as usize,
            count,
            kind,
            Some(stream as usize),
        ))
    }
    unsafe fn aclrtGetMemInfo(
        _attr: aclrtMemAttr,
        free: *mut usize,
        total: *mut usize,
    ) -> aclError {
        r(imp::mem_info(free, total))
    }

    // --- kernels ---
    unsafe fn aclrtBinaryLoadFromData(
        data: *const c_void,
        len: usize,
        _options: *const aclrtBinaryLoadOptions,
        bin: *mut aclrtBinHandle,
    ) -> aclError {
        r(imp::load_binary_data(data, len).and_then(|h| ffi::out(bin, h as aclrtBinHandle)))
    }
    unsafe fn aclrtBinaryLoadFromFile(
        path: *const c_char,
        _options: *mut aclrtBinaryLoadOptions,
        bin: *mut aclrtBinHandle,
    ) -> aclError {
        r(imp::load_binary_file(path).and_then(|h| ffi::out(bin, h as aclrtBinHandle)))
    }
    unsafe fn aclrtBinaryUnLoad(bin: aclrtBinHandle) -> aclError {
        r(state::BINARIES.remove(bin as usize).map(|_| ()))
    }
    unsafe fn aclrtBinaryGetFunction(
        bin: aclrtBinHandle,
        name: *const c_char,
        func: *mut aclrtFuncHandle,
    ) -> aclError {
        r(
            imp::get_function(bin as usize, name)
                .and_then(|h| ffi::out(func, h as aclrtFuncHandle)),
        )
    }
    unsafe fn aclrtLaunchKernel(
        func: aclrtFuncHandle,
        block_dim: u32,
        args: *const c_void,
        args_size: usize,
        stream: aclrtStream,
    ) -> aclError {
        r(imp::launch(
            func as usize,
            block_dim,
            args as u64,
            args_size,
            stream as usize,
        ))
    }
}
