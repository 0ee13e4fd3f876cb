//! The one place that finds the real driver: the real `dlsym` (found at load time), the real
//! `libcuda.so.1` and `libnvidia-ml.so.1` (opened once), and each real function, resolved on
//! first use and cached ([`real!`]).

use std::ffi::{CStr, c_char, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// Address of the real `dlsym`, 0 until known (read by the trampoline in
/// [`crate::trampoline`], which reaches it PC-relative).
pub static TF_REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

fn resolve_real_dlsym() -> usize {
    for version in [c"GLIBC_2.34", c"GLIBC_2.2.5", c"GLIBC_2.17"] {
        // SAFETY: dlvsym with valid NUL-terminated strings; RTLD_NEXT from this library finds
        // the C library's dlsym.
        let p = unsafe { libc::dlvsym(libc::RTLD_NEXT, c"dlsym".as_ptr(), version.as_ptr()) };
        if !p.is_null() {
            return p as usize;
        }
    }
    0
}

extern "C" fn init_real_dlsym() {
    TF_REAL_DLSYM.store(resolve_real_dlsym(), Ordering::Release);
}

/// Runs when the library is loaded, before anything can call our `dlsym`.
#[used]
#[unsafe(link_section = ".init_array")]
static INIT_REAL_DLSYM: extern "C" fn() = init_real_dlsym;

/// The real `dlsym`.
pub fn real_dlsym() -> Option<DlsymFn> {
    let mut p = TF_REAL_DLSYM.load(Ordering::Acquire);
    if p == 0 {
        p = resolve_real_dlsym();
        TF_REAL_DLSYM.store(p, Ordering::Release);
    }
    // SAFETY: a non-zero value is the address of glibc's dlsym, whose type is DlsymFn.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, DlsymFn>(p) })
}

/// Look `name` up in `handle` with the real `dlsym` (0 if absent).
pub fn lookup(handle: *mut c_void, name: &CStr) -> usize {
    match real_dlsym() {
        // SAFETY: the real dlsym with a loader handle and a NUL-terminated name.
        Some(f) if !handle.is_null() => unsafe { f(handle, name.as_ptr()) as usize },
        _ => 0,
    }
}

/// The real libraries whose functions are interposed.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Lib {
    Cuda,
    Nvml,
}

impl Lib {
    /// The real library's loader handle (opened once; null if it cannot be loaded).
    pub fn handle(self) -> *mut c_void {
        static CUDA: OnceLock<usize> = OnceLock::new();
        static NVML: OnceLock<usize> = OnceLock::new();
        let (cell, name) = match self {
            Lib::Cuda => (&CUDA, c"libcuda.so.1"),
            Lib::Nvml => (&NVML, c"libnvidia-ml.so.1"),
        };
        *cell.get_or_init(|| {
            // SAFETY: dlopen with a NUL-terminated name; RTLD_NOLOAD only returns an already
            // loaded library, otherwise we load it (the application is about to use it anyway).
            unsafe {
                let h = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
                if !h.is_null() {
                    return h as usize;
                }
                libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) as usize
            }
        }) as *mut c_void
    }
}

/// The address of the real function `name` (NUL-terminated) in `lib`, cached in `slot`.
pub fn resolve(slot: &AtomicUsize, lib: Lib, name: &'static str) -> usize {
    let p = slot.load(Ordering::Relaxed);
    if p != 0 {
        return p;
    }
    let Ok(cname) = CStr::from_bytes_with_nul(name.as_bytes()) else {
        return 0;
    };
    let p = lookup(lib.handle(), cname);
    slot.store(p, Ordering::Relaxed);
    p
}

/// `real!(driver_fn::cuMemAlloc_v2)` or `real!(nvml_fn::nvmlDeviceGetMemoryInfo)`: the real
/// function, typed by the header's signature (`tf_cuda_abi`), or `None` if the real library
/// lacks it.
macro_rules! real {
    (driver_fn :: $name:ident) => {
        $crate::real::real!(@ Cuda, driver_fn, $name)
    };
    (nvml_fn :: $name:ident) => {
        $crate::real::real!(@ Nvml, nvml_fn, $name)
    };
    (@ $lib:ident, $abi:ident, $name:ident) => {{
        static SLOT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let p = $crate::real::resolve(
            &SLOT,
            $crate::real::Lib::$lib,
            concat!(stringify!($name), "\0"),
        );
        // SAFETY: `p` is the address of the real library's function of this name, whose type is
        // the header's, which `tf_cuda_abi::$abi::$name` is.
        (p != 0).then(|| unsafe { std::mem::transmute::<usize, tf_cuda_abi::$abi::$name>(p) })
    }};
}
pub(crate) use real;
