//! Our exported `dlsym` and `dlvsym`: a few instructions that look at the handle and the first
//! two characters of the name. Names starting with `cu`, `nv` or `dl` looked up in a handle go to
//! [`dlsym_hook`] (or [`dlvsym_hook`]), which hand out our wrappers for the functions we
//! interpose; every other lookup *jumps* to the real function with the caller's own stack frame,
//! so lookups whose meaning depends on who calls (`RTLD_NEXT`) keep their exact meaning for the
//! rest of the program. `dlvsym` is interposed too, so that asking for a versioned symbol does
//! not reach the driver around the limiter, and asking either of them for `dlsym` or `dlvsym`
//! itself returns ours (the real ones would be a way around).

use std::ffi::{CStr, c_char, c_void};

// The exported dlsym. Only the handle and the first two bytes of the name are examined before
// either jumping to our hook (`cu…`, `nv…` looked up in a handle) or tail-jumping to the real
// dlsym with the stack untouched. `RTLD_NEXT` lookups always go to the real dlsym: their meaning
// depends on the caller, which only the real dlsym can see. If the real dlsym is not known yet
// (a constructor that ran before ours), a slow path finds it first. One body per architecture.
macro_rules! exported_dlsym {
    ($arch:literal: $($asm:literal),* $(,)?) => {
        exported_dlsym!(@ $arch, dlsym(handle: *mut c_void, symbol: *const c_char),
            dlsym_hook, TF_REAL_DLSYM, dlsym_slow: $($asm),*);
        exported_dlsym!(@ $arch,
            dlvsym(handle: *mut c_void, symbol: *const c_char, version: *const c_char),
            dlvsym_hook, TF_REAL_DLVSYM, dlvsym_slow: $($asm),*);
    };
    (@ $arch:literal, $name:ident($($arg:ident: $ty:ty),*), $hook:ident, $real:ident, $slow:ident:
     $($asm:literal),*) => {
        #[cfg(target_arch = $arch)]
        #[unsafe(naked)]
        #[unsafe(no_mangle)]
        /// # Safety
        /// Called by the dynamic loader's users with the arguments of the C library's function
        /// of this name (the trampoline reads only the first two and passes all on untouched).
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> *mut c_void {
            core::arch::naked_asm!(
                $($asm),*,
                hook = sym $hook,
                real = sym crate::real::$real,
                slow = sym $slow,
            )
        }
    };
}

exported_dlsym!("x86_64":
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
    "jne 5f",
    "cmp byte ptr [rsi + 1], 0x76", // 'v'
    "je 1f",
    "jmp 2f",
    "5:",
    "cmp al, 0x64", // 'd'
    "jne 2f",
    "cmp byte ptr [rsi + 1], 0x6c", // 'l'
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
);

exported_dlsym!("aarch64":
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
    "b.ne 5f",
    "ldrb w9, [x1, #1]",
    "cmp w9, #0x76",
    "b.eq 1f",
    "b 2f",
    "5:",
    "cmp w9, #0x64",
    "b.ne 2f",
    "ldrb w9, [x1, #1]",
    "cmp w9, #0x6c",
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
);

/// Our `dlsym` before the constructor found the real one: find it and forward (the caller is
/// then seen as this library, which only matters for `RTLD_NEXT` this early).
unsafe extern "C" fn dlsym_slow(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    match crate::real::real_dlsym() {
        // SAFETY: forwarding the caller's own arguments to the real dlsym.
        Some(f) => unsafe { f(handle, symbol) },
        None => std::ptr::null_mut(),
    }
}

/// Our `dlvsym` before the constructor found the real one.
unsafe extern "C" fn dlvsym_slow(
    handle: *mut c_void,
    symbol: *const c_char,
    version: *const c_char,
) -> *mut c_void {
    match crate::real::real_dlvsym() {
        // SAFETY: forwarding the caller's own arguments to the real dlvsym.
        Some(f) => unsafe { f(handle, symbol, version) },
        None => std::ptr::null_mut(),
    }
}

/// Our `dlvsym` for names starting with `cu` or `nv`: the real versioned lookup, then our
/// wrapper instead if the name is one we interpose (whatever version was asked for: the
/// wrapper forwards to the version the driver resolves for its own name).
///
/// # Safety
/// Called with the arguments of `dlvsym(3)`.
unsafe extern "C" fn dlvsym_hook(
    handle: *mut c_void,
    symbol: *const c_char,
    version: *const c_char,
) -> *mut c_void {
    let Some(real) = crate::real::real_dlvsym() else {
        return std::ptr::null_mut();
    };
    // SAFETY: forwarding the caller's own arguments.
    let found = unsafe { real(handle, symbol, version) };
    // SAFETY: the caller's symbol argument, checked non-null by the trampoline.
    unsafe { ours_instead(found, symbol) }
}

/// Our `dlsym` for names starting with `cu` or `nv` (see the module documentation): the real
/// lookup, then our wrapper instead if the name is one we interpose.
///
/// # Safety
/// Called with the arguments of `dlsym(3)`.
unsafe extern "C" fn dlsym_hook(handle: *mut c_void, symbol: *const c_char) -> *mut c_void {
    let Some(real) = crate::real::real_dlsym() else {
        return std::ptr::null_mut();
    };
    // SAFETY: forwarding the caller's own arguments.
    let found = unsafe { real(handle, symbol) };
    // SAFETY: the caller's symbol argument, checked non-null by the trampoline.
    unsafe { ours_instead(found, symbol) }
}

/// What the real lookup `found` for `symbol`, or our wrapper if we interpose that name.
///
/// # Safety
/// `symbol` is a non-null, NUL-terminated string.
unsafe fn ours_instead(found: *mut c_void, symbol: *const c_char) -> *mut c_void {
    if found.is_null() {
        return found;
    }
    // SAFETY: the caller's contract.
    let name = unsafe { CStr::from_ptr(symbol) }.to_bytes();
    match name {
        // Asking for the loader's own lookup functions gets ours: the real ones would look the
        // driver up around the limiter.
        b"dlsym" => dlsym as *const () as *mut c_void,
        b"dlvsym" => dlvsym as *const () as *mut c_void,
        _ => match crate::hooks::wrapper(name) {
            Some(w) => w as *mut c_void,
            None => found,
        },
    }
}
