//! The one place that finds the real driver: the real `dlsym` (found at load time), the real
//! `libcuda.so.1` and `libnvidia-ml.so.1` (opened once), and each real function, resolved on
//! first use and cached ([`real!`]).

use std::ffi::{CStr, c_char, c_void};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;
type DlvsymFn = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> *mut c_void;

/// Addresses of the real `dlsym` and `dlvsym`, 0 until known (read by the trampolines in
/// [`crate::trampoline`], which reach them PC-relative).
pub static TF_REAL_DLSYM: AtomicUsize = AtomicUsize::new(0);
pub static TF_REAL_DLVSYM: AtomicUsize = AtomicUsize::new(0);

/// The C library's own `name` (`dlsym` or `dlvsym`), read from its dynamic symbol table. Not
/// through `dlsym`/`dlvsym`: this library exports both itself, so any lookup we made through
/// them would come back to us.
fn resolve_real(name: &CStr) -> usize {
    libc_symbol(name.to_bytes())
}

/// One entry of an ELF dynamic section.
#[repr(C)]
struct Dyn {
    tag: i64,
    val: u64,
}

const DT_NULL: i64 = 0;
const DT_HASH: i64 = 4;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const DT_GNU_HASH: i64 = 0x6fff_fef5;

/// The address of `name` in the loaded C library (`libc.so.6`), from its `.dynsym`; 0 if it is
/// not there.
fn libc_symbol(name: &[u8]) -> usize {
    struct Search<'a> {
        name: &'a [u8],
        found: usize,
    }
    unsafe extern "C" fn each(
        info: *mut libc::dl_phdr_info,
        _size: libc::size_t,
        data: *mut c_void,
    ) -> libc::c_int {
        // SAFETY: dl_iterate_phdr passes a valid info for a loaded object, and `data` is the
        // Search below, alive for the whole iteration.
        let (info, search) = unsafe { (&*info, &mut *(data as *mut Search)) };
        if info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: a loaded object's name is a NUL-terminated string.
        let obj = unsafe { CStr::from_ptr(info.dlpi_name) }.to_bytes();
        if !obj.windows(7).any(|w| w == b"libc.so") {
            return 0;
        }
        // SAFETY: the loaded C library's own headers and tables, mapped for as long as it is
        // loaded (for the life of the process), read within their bounds.
        let found = unsafe { lookup_in(info, search.name) };
        search.found = found;
        (found != 0) as libc::c_int
    }
    let mut search = Search { name, found: 0 };
    // SAFETY: the callback only reads the objects' headers and returns; `search` outlives the
    // call.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut search as *mut Search as *mut c_void) };
    search.found
}

/// Find `name` in one loaded object's dynamic symbol table.
///
/// # Safety
/// `info` describes a loaded ELF object whose program headers and dynamic tables are mapped.
unsafe fn lookup_in(info: &libc::dl_phdr_info, name: &[u8]) -> usize {
    let base = info.dlpi_addr as usize;
    // SAFETY: dlpi_phdr holds dlpi_phnum program headers (the caller's contract).
    let phdrs = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum as usize) };
    let Some(dynamic) = phdrs.iter().find(|p| p.p_type == libc::PT_DYNAMIC) else {
        return 0;
    };
    // The loader may have relocated the table's pointers in place, or not.
    let at = |v: u64| {
        if (v as usize) < base {
            base + v as usize
        } else {
            v as usize
        }
    };
    let (mut symtab, mut strtab, mut hash, mut gnu_hash) = (0usize, 0usize, 0usize, 0usize);
    let mut d = (base + dynamic.p_vaddr as usize) as *const Dyn;
    // SAFETY: the dynamic section is an array ended by DT_NULL.
    unsafe {
        while (*d).tag != DT_NULL {
            match (*d).tag {
                DT_SYMTAB => symtab = at((*d).val),
                DT_STRTAB => strtab = at((*d).val),
                DT_HASH => hash = at((*d).val),
                DT_GNU_HASH => gnu_hash = at((*d).val),
                _ => {}
            }
            d = d.add(1);
        }
    }
    if symtab == 0 || strtab == 0 {
        return 0;
    }
    // How many symbols: the classic hash's chain count, or the end of the GNU hash's chains.
    let count = if hash != 0 {
        // SAFETY: DT_HASH starts with nbucket, nchain (u32 each).
        unsafe { *((hash + 4) as *const u32) as usize }
    } else if gnu_hash != 0 {
        // SAFETY: the GNU hash table: nbuckets, symoffset, bloom size, bloom shift, the bloom
        // words, the buckets, then one chain word per symbol from symoffset on, the last of
        // each chain with its low bit set.
        unsafe {
            let h = gnu_hash as *const u32;
            let (nbuckets, symoffset, bloom) =
                (*h as usize, *h.add(1) as usize, *h.add(2) as usize);
            let buckets = (gnu_hash + 16 + bloom * size_of::<usize>()) as *const u32;
            let chains = buckets.add(nbuckets);
            let mut last = (0..nbuckets)
                .map(|b| *buckets.add(b) as usize)
                .max()
                .unwrap_or(0);
            if last < symoffset {
                symoffset
            } else {
                while *chains.add(last - symoffset) & 1 == 0 {
                    last += 1;
                }
                last + 1
            }
        }
    } else {
        return 0;
    };
    for i in 0..count {
        // SAFETY: `i` is below the table's symbol count; names are NUL-terminated strings in
        // the string table.
        let (sym, sym_name) = unsafe {
            let sym = &*(symtab as *const libc::Elf64_Sym).add(i);
            (
                sym,
                CStr::from_ptr((strtab + sym.st_name as usize) as *const c_char),
            )
        };
        if sym.st_shndx != 0 && sym.st_value != 0 && sym_name.to_bytes() == name {
            return base + sym.st_value as usize;
        }
    }
    0
}

fn resolve_real_dlsym() -> usize {
    resolve_real(c"dlsym")
}

extern "C" fn init_real_dlsym() {
    TF_REAL_DLSYM.store(resolve_real_dlsym(), Ordering::Release);
    TF_REAL_DLVSYM.store(resolve_real(c"dlvsym"), Ordering::Release);
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

/// The real `dlvsym`.
pub fn real_dlvsym() -> Option<DlvsymFn> {
    let mut p = TF_REAL_DLVSYM.load(Ordering::Acquire);
    if p == 0 {
        p = resolve_real(c"dlvsym");
        TF_REAL_DLVSYM.store(p, Ordering::Release);
    }
    // SAFETY: a non-zero value is the address of glibc's dlvsym, whose type is DlvsymFn.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, DlvsymFn>(p) })
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
