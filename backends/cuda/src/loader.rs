//! Finding and checking the NVIDIA driver libraries before cudarc or nvml-wrapper touch them.
//!
//! cudarc opens `libcuda` lazily on the first driver call and panics when the library or one of
//! its symbols is missing. This module opens the same library cudarc will open (the same list of
//! names, in the same order, through the same dynamic loader), checks that every entry point this
//! crate uses is there, and turns a missing library or symbol into
//! [`ErrorKind::LibraryNotFound`] with a message a user can act on. Every later cudarc call still
//! runs under [`guard`], which catches a panic (a symbol cudarc needs that we did not foresee) and
//! returns it as an error instead of unwinding through the caller.

use std::ffi::{CStr, OsStr, OsString, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libloading::Library;
use tf_hal::{Error, ErrorKind, Result};

/// Environment variable naming the CUDA driver library to use (a path to `libcuda.so.1`).
///
/// The dynamic loader still resolves the driver by name for cudarc, so the named library must be
/// the one those names find (it is loaded first, and a library of the same soname is then reused);
/// when another `libcuda` wins, opening the backend fails with a message saying so. A path that
/// does not exist is [`ErrorKind::LibraryNotFound`].
pub const CUDA_LIBRARY_ENV: &str = "TF_CUDA_LIBRARY";

/// Environment variable naming the NVML library to use (a path to `libnvidia-ml.so.1`). Without
/// it, a `libnvidia-ml.so.1` beside `$TF_CUDA_LIBRARY` is used, else the loader's search path.
pub const NVML_LIBRARY_ENV: &str = "TF_NVML_LIBRARY";

/// What a user should do when no driver library can be found.
pub const MISSING_DRIVER_HINT: &str = "is the NVIDIA driver installed? For the simulated GPU, run \
     `tensor-fusion fake-gpu install DIR` and set LD_LIBRARY_PATH=DIR";

/// Driver entry points this crate calls (directly or through cudarc), by the symbol names cudarc
/// resolves with its `cuda-12080` bindings. All of them exist in every CUDA 12 driver.
pub const REQUIRED_DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDriverGetVersion",
    "cuGetErrorName",
    "cuGetErrorString",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetName",
    "cuDeviceGetUuid",
    "cuDeviceTotalMem_v2",
    "cuDeviceGetAttribute",
    "cuDevicePrimaryCtxRetain",
    "cuDevicePrimaryCtxRelease_v2",
    "cuCtxGetCurrent",
    "cuCtxSetCurrent",
    "cuCtxSynchronize",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemGetInfo_v2",
    "cuMemcpyHtoD_v2",
    "cuMemcpyDtoH_v2",
    "cuMemcpyDtoD_v2",
    "cuMemsetD8_v2",
    "cuMemsetD32_v2",
    "cuModuleLoadData",
    "cuModuleUnload",
    "cuModuleGetFunction",
    "cuLaunchKernel",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamWaitEvent",
    "cuEventCreate",
    "cuEventDestroy_v2",
    "cuEventRecord",
    "cuEventQuery",
    "cuEventSynchronize",
    "cuEventElapsedTime",
];

/// The driver library this process uses, checked.
#[derive(Debug)]
pub struct DriverLibrary {
    /// Where the dynamic loader found it (from `dladdr`), or the name it was opened by.
    pub path: PathBuf,
    /// Kept open for the life of the process so the loader never unloads it between our checks
    /// and cudarc's own `dlopen` of the same name.
    lib: Library,
    /// The library `$TF_CUDA_LIBRARY` named, kept open likewise.
    _explicit: Option<Library>,
}

impl DriverLibrary {
    /// Whether the driver exports `name` (for entry points newer than CUDA 12.0, which this
    /// crate calls only where present, so cudarc never panics on them).
    pub fn has_symbol(&self, name: &str) -> bool {
        symbol_address(&self.lib, name).is_some()
    }
}

static DRIVER: OnceLock<std::result::Result<DriverLibrary, Error>> = OnceLock::new();

/// Open and check the CUDA driver library (once per process; later calls return the same
/// outcome).
pub fn driver() -> Result<&'static DriverLibrary> {
    DRIVER
        .get_or_init(|| {
            let explicit = std::env::var_os(CUDA_LIBRARY_ENV).filter(|v| !v.is_empty());
            open_driver(explicit.as_deref())
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn open_driver(explicit: Option<&OsStr>) -> Result<DriverLibrary> {
    let mut explicit_lib = None;
    let mut explicit_init = None;
    if let Some(path) = explicit {
        // SAFETY: loading a shared library runs its initialisers; the user named this file as
        // their CUDA driver, which is what we are about to call into anyway.
        let lib = unsafe { Library::new(path) }.map_err(|e| {
            Error::new(
                ErrorKind::LibraryNotFound,
                format!(
                    "{CUDA_LIBRARY_ENV}={} cannot be loaded ({}): {MISSING_DRIVER_HINT}",
                    Path::new(path).display(),
                    error_chain(&e)
                ),
            )
        })?;
        explicit_init = symbol_address(&lib, "cuInit");
        explicit_lib = Some(lib);
    }

    // The names cudarc tries, in its order: the first that opens is the library it will use.
    let candidates = cudarc::get_lib_name_candidates("cuda");
    let mut chosen = None;
    for name in &candidates {
        // SAFETY: as above: this is the library cudarc would load by the same name.
        if let Ok(lib) = unsafe { Library::new(name) } {
            chosen = Some((name.clone(), lib));
            break;
        }
    }
    let Some((name, lib)) = chosen else {
        let message = match explicit {
            Some(path) => format!(
                "{CUDA_LIBRARY_ENV}={} was loaded, but the dynamic loader does not find it by the \
                 names cudarc uses ({}): its soname must be libcuda.so.1; put its directory in \
                 LD_LIBRARY_PATH instead",
                Path::new(path).display(),
                candidates.join(", ")
            ),
            None => format!("libcuda.so.1 not found: {MISSING_DRIVER_HINT}"),
        };
        return Err(Error::new(ErrorKind::LibraryNotFound, message));
    };
    let init = symbol_address(&lib, "cuInit");
    let path = init
        .and_then(object_path)
        .unwrap_or_else(|| PathBuf::from(&name));

    let missing: Vec<&str> = REQUIRED_DRIVER_SYMBOLS
        .iter()
        .copied()
        .filter(|s| symbol_address(&lib, s).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(Error::new(
            ErrorKind::LibraryNotFound,
            format!(
                "the CUDA driver library {} lacks {}: it is not a CUDA 12 driver (update the \
                 NVIDIA driver, or point LD_LIBRARY_PATH at the simulated GPU's libraries)",
                path.display(),
                missing.join(", ")
            ),
        ));
    }
    if let (Some(explicit), Some(want)) = (explicit, explicit_init)
        && init != Some(want)
    {
        return Err(Error::new(
            ErrorKind::Config,
            format!(
                "{CUDA_LIBRARY_ENV}={} is not the library the dynamic loader resolves for the \
                 CUDA driver ({} wins): put the directory of the library you want first in \
                 LD_LIBRARY_PATH instead",
                Path::new(explicit).display(),
                path.display()
            ),
        ));
    }
    tracing::debug!(library = %path.display(), "CUDA driver library");
    Ok(DriverLibrary {
        path,
        lib,
        _explicit: explicit_lib,
    })
}

/// An error and its sources ("dlopen failed: libcuda.so.1: cannot open shared object file").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

fn symbol_address(lib: &Library, name: &str) -> Option<usize> {
    // SAFETY: we only read the symbol's address (as an opaque pointer), never call through it.
    let sym = unsafe { lib.get::<*const c_void>(name.as_bytes()) }.ok()?;
    Some(*sym as usize)
}

/// The file of the shared object that holds `addr`.
fn object_path(addr: usize) -> Option<PathBuf> {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    // SAFETY: dladdr only reads the loader's tables and fills `info`; a zero return means it
    // filled nothing.
    let rc = unsafe { libc::dladdr(addr as *const c_void, info.as_mut_ptr()) };
    if rc == 0 {
        return None;
    }
    // SAFETY: dladdr returned non-zero, so `info` is initialised.
    let info = unsafe { info.assume_init() };
    if info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader, alive while the object
    // stays loaded (we keep it loaded).
    let name = unsafe { CStr::from_ptr(info.dli_fname) };
    Some(PathBuf::from(OsString::from(
        name.to_string_lossy().into_owned(),
    )))
}

/// The NVML library to try first: `$TF_NVML_LIBRARY`, else a `libnvidia-ml.so.1` beside
/// `$TF_CUDA_LIBRARY`, else the loader's search path.
pub fn nvml_library_candidates() -> Vec<OsString> {
    let mut out = Vec::new();
    if let Some(p) = std::env::var_os(NVML_LIBRARY_ENV).filter(|v| !v.is_empty()) {
        out.push(p);
        return out;
    }
    if let Some(dir) = std::env::var_os(CUDA_LIBRARY_ENV)
        .filter(|v| !v.is_empty())
        .and_then(|p| Path::new(&p).parent().map(Path::to_path_buf))
    {
        let sibling = dir.join("libnvidia-ml.so.1");
        if sibling.is_file() {
            out.push(sibling.into_os_string());
        }
    }
    out.push("libnvidia-ml.so.1".into());
    out.push("libnvidia-ml.so".into());
    out
}

/// Run a call into cudarc, turning a panic (a missing library or symbol) into an error.
pub fn guard<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            let kind = if msg.contains("Missing symbol") || msg.contains("dynamically load") {
                ErrorKind::LibraryNotFound
            } else {
                ErrorKind::Other
            };
            Err(Error::new(
                kind,
                format!("{what}: the CUDA driver binding failed: {msg}"),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_explicit_library_is_library_not_found() {
        let err = open_driver(Some(OsStr::new("/nonexistent/dir/libcuda.so.1"))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::LibraryNotFound, "{err}");
        assert!(
            err.message.contains("/nonexistent/dir/libcuda.so.1"),
            "{err}"
        );
        assert!(err.message.contains("fake-gpu install"), "{err}");
    }

    #[test]
    fn guard_turns_panics_into_errors() {
        let err = guard::<()>("cuFoo", || panic!("Missing symbol cuFoo: undefined")).unwrap_err();
        assert_eq!(err.kind, ErrorKind::LibraryNotFound);
        assert!(err.message.contains("cuFoo"));
        let err = guard::<()>("x", || panic!("{}", String::from("boom"))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Other);
        assert_eq!(guard("ok", || Ok(3)).unwrap(), 3);
    }
}
