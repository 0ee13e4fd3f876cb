//! The dynamic loader side of interposition.
//!
//! - The real `dlsym`, found once at load time (an ELF constructor) with
//!   `dlvsym(RTLD_NEXT, "dlsym", …)`.
//! - Our exported `dlsym`: a few instructions that look at the first two characters of the
//!   name. Names starting with `cu` or `nv` go to [`crate::hooks::dlsym_hook`], which hands out
//!   our wrappers for the functions we interpose; every other name *jumps* to the real `dlsym`
//!   with the caller's own stack frame, so lookups that depend on who calls (`RTLD_NEXT`) keep
//!   their exact meaning for the rest of the program.
//! - Handles of the real driver libraries, opened once.

use std::ffi::{CStr, c_char, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;

/// Address of the real `dlsym` (read by the trampoline below; not exported, so the trampoline
/// reaches it PC-relative).
static TF_REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);

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

/// Look `name` up in `handle` with the real `dlsym`.
pub fn lookup(handle: *mut c_void, name: &CStr) -> usize {
    match real_dlsym() {
        // SAFETY: the real dlsym with a loader handle and a NUL-terminated name.
        Some(f) if !handle.is_null() => unsafe { f(handle, name.as_ptr()) as usize },
        _ => 0,
    }
}

fn open(name: &CStr) -> usize {
    // SAFETY: dlopen with a NUL-terminated name; RTLD_NOLOAD only returns an already loaded
    // library, otherwise we load it (the application is about to use it anyway).
    unsafe {
        let h = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if !h.is_null() {
            return h as usize;
        }
        libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) as usize
    }
}

/// The real CUDA driver library.
pub fn libcuda() -> *mut c_void {
    static H: OnceLock<usize> = OnceLock::new();
    *H.get_or_init(|| open(c"libcuda.so.1")) as *mut c_void
}

/// The real NVML library.
pub fn libnvml() -> *mut c_void {
    static H: OnceLock<usize> = OnceLock::new();
    *H.get_or_init(|| open(c"libnvidia-ml.so.1")) as *mut c_void
}

// The exported dlsym. Only the first two bytes of the name are examined before either jumping
// to our hook (`cu…`, `nv…`) or tail-jumping to the real dlsym with the stack untouched.
// The exported dlsym. Only the handle and the first two bytes of the name are examined before
// either jumping to our hook (`cu…`, `nv…` looked up in a handle) or tail-jumping to the real
// dlsym with the stack untouched. `RTLD_NEXT` lookups always go to the real dlsym: their meaning
// depends on the caller, which only the real dlsym can see. If the real dlsym is not known yet
// (a constructor that ran before ours), a slow path finds it first.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
/// # Safety
/// Called by the dynamic loader's users with the arguments of `dlsym(3)`.
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "cmp rdi, -1", // RTLD_NEXT
        "je 2f",
        "test rsi, rsi",
        "jz 2f",
        "movzx eax, byte ptr [rsi]",
        "cmp al, 0x63", // 'c'
        "jne 3f",
        "cmp byte ptr [rsi + 1], 0x75", // 'u'
        "je 1f",
        "jmp 2f",
        "3:",
        "cmp al, 0x6e", // 'n'
        "jne 2f",
        "cmp byte ptr [rsi + 1], 0x76", // 'v'
        "jne 2f",
        "1:",
        "jmp {hook}",
        "2:",
        "mov rax, qword ptr [rip + {real}]",
        "test rax, rax",
        "jz 4f",
        "jmp rax",
        "4:",
        "jmp {slow}",
        hook = sym crate::hooks::dlsym_hook,
        real = sym TF_REAL_DLSYM,
        slow = sym dlsym_slow,
    )
}

#[cfg(target_arch = "aarch64")]
#[unsafe(naked)]
#[unsafe(no_mangle)]
/// # Safety
/// Called by the dynamic loader's users with the arguments of `dlsym(3)`.
pub unsafe extern "C" fn dlsym(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    core::arch::naked_asm!(
        "cmn x0, #1", // RTLD_NEXT
        "b.eq 2f",
        "cbz x1, 2f",
        "ldrb w9, [x1]",
        "cmp w9, #0x63",
        "b.ne 3f",
        "ldrb w9, [x1, #1]",
        "cmp w9, #0x75",
        "b.eq 1f",
        "b 2f",
        "3:",
        "cmp w9, #0x6e",
        "b.ne 2f",
        "ldrb w9, [x1, #1]",
        "cmp w9, #0x76",
        "b.ne 2f",
        "1:",
        "b {hook}",
        "2:",
        "adrp x16, {real}",
        "ldr x16, [x16, :lo12:{real}]",
        "cbz x16, 4f",
        "br x16",
        "4:",
        "b {slow}",
        hook = sym crate::hooks::dlsym_hook,
        real = sym TF_REAL_DLSYM,
        slow = sym dlsym_slow,
    )
}

/// Our `dlsym` before the constructor found the real one: find it and forward (the caller is
/// then seen as this library, which only matters for `RTLD_NEXT` this early).
unsafe extern "C" fn dlsym_slow(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    match real_dlsym() {
        // SAFETY: forwarding the caller's own arguments to the real dlsym.
        Some(f) => unsafe { f(handle, symbol) },
        None => std::ptr::null_mut(),
    }
}
