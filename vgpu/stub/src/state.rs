//! The stub's process-wide state: the connection to the worker (opened by `cuInit`), the
//! driver API's handles and what each belongs to, primary contexts, and each thread's context
//! stack.
//!
//! Handles given to the program are the names `RemoteBackend` chose (non-zero integers), so a
//! stream or event handle needs no table of its own on the worker side; the tables here say
//! which context each belongs to, and a handle not in them is `CUDA_ERROR_INVALID_HANDLE`
//! (or `CUDA_ERROR_INVALID_CONTEXT`), never dereferenced.

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};

use tf_cuda_abi::driver::*;
use tf_hal::{Context as _, DeviceInfo, EventHandle, StreamHandle};
use tf_remote::{RemoteBackend, RemoteContext};

pub type CuResult<T = ()> = Result<T, u32>;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The HAL error's CUDA code: the vendor's code where the worker's backend had one, else the
/// closest code for its kind (a lost worker is `CUDA_ERROR_DEVICE_UNAVAILABLE`).
pub fn code(e: &tf_hal::Error) -> u32 {
    use tf_hal::ErrorKind::*;
    if let Some(v) = &e.vendor
        && v.name.starts_with("CUDA_")
        && (0..1000).contains(&v.code)
    {
        return v.code as u32;
    }
    match e.kind {
        NotInitialized => CUDA_ERROR_NOT_INITIALIZED,
        LibraryNotFound => CUDA_ERROR_SHARED_OBJECT_INIT_FAILED,
        InvalidDevice => CUDA_ERROR_INVALID_DEVICE,
        NoDevice => CUDA_ERROR_NO_DEVICE,
        InvalidValue => CUDA_ERROR_INVALID_VALUE,
        InvalidHandle => CUDA_ERROR_INVALID_HANDLE,
        OutOfMemory => CUDA_ERROR_OUT_OF_MEMORY,
        NotSupported => CUDA_ERROR_NOT_SUPPORTED,
        NotFound => CUDA_ERROR_NOT_FOUND,
        InvalidImage => CUDA_ERROR_INVALID_IMAGE,
        LaunchFailed => CUDA_ERROR_LAUNCH_FAILED,
        IllegalAddress => CUDA_ERROR_ILLEGAL_ADDRESS,
        NotReady => CUDA_ERROR_NOT_READY,
        DeviceLost => CUDA_ERROR_DEVICE_UNAVAILABLE,
        Config | Other => CUDA_ERROR_UNKNOWN,
    }
}

/// A HAL result as a CUDA result; failures are logged (debug), a lost worker once as an error.
pub fn hal<T>(r: tf_hal::Result<T>) -> CuResult<T> {
    r.map_err(|e| {
        if e.kind == tf_hal::ErrorKind::DeviceLost && tf_os::first_time("tf-remote-lost") {
            tracing::error!("{e}");
        } else {
            tracing::debug!("{e}");
        }
        code(&e)
    })
}

/// A context handle's object.
pub struct Ctx {
    pub remote: Arc<RemoteContext>,
    pub device: i32,
    pub primary: bool,
    pub flags: Mutex<u32>,
    pub id: u64,
}

pub struct StreamObj {
    pub ctx: u64,
    pub flags: u32,
    pub priority: i32,
}

pub struct EventObj {
    pub ctx: u64,
    pub flags: u32,
}

pub struct FuncObj {
    pub ctx: u64,
    pub module: u64,
    pub name: CString,
}

/// Handles of every kind, by value.
#[derive(Default)]
pub struct Handles {
    pub contexts: HashMap<u64, Arc<Ctx>>,
    pub streams: HashMap<u64, Arc<StreamObj>>,
    pub events: HashMap<u64, Arc<EventObj>>,
    /// module → its context.
    pub modules: HashMap<u64, u64>,
    pub functions: HashMap<u64, Arc<FuncObj>>,
    /// Page-locked host memory (local to this process): address → size.
    pub host: std::collections::BTreeMap<u64, usize>,
}

pub static HANDLES: LazyLock<Mutex<Handles>> = LazyLock::new(Mutex::default);

/// The initialised driver.
pub struct Driver {
    pub backend: RemoteBackend,
    pub devices: Vec<DeviceInfo>,
    pub primary: Mutex<Vec<Option<u64>>>,
    pub primary_refs: Mutex<Vec<u32>>,
    next_ctx: AtomicU64,
}

static DRIVER: OnceLock<Result<Driver, u32>> = OnceLock::new();

/// cuInit: connect to the worker named by `TF_REMOTE` with the token in
/// `TF_REMOTE_TOKEN_FILE`, once.
pub fn init() -> CuResult {
    DRIVER
        .get_or_init(|| {
            tf_os::init_logging();
            match RemoteBackend::from_env() {
                Ok(backend) => {
                    let devices = tf_hal::Backend::devices(&backend).unwrap_or_default();
                    let n = devices.len();
                    tracing::info!(
                        worker = backend.connection().worker(),
                        devices = n,
                        "tensor-fusion remote libcuda connected"
                    );
                    Ok(Driver {
                        backend,
                        devices,
                        primary: Mutex::new(vec![None; n]),
                        primary_refs: Mutex::new(vec![0; n]),
                        next_ctx: AtomicU64::new(1),
                    })
                }
                Err(e) => {
                    eprintln!("tensor-fusion remote libcuda: cannot reach the remote vGPU: {e}");
                    Err(match e.kind {
                        tf_hal::ErrorKind::Config => CUDA_ERROR_NOT_INITIALIZED,
                        _ => CUDA_ERROR_NO_DEVICE,
                    })
                }
            }
        })
        .as_ref()
        .map(|_| ())
        .map_err(|e| *e)
}

/// The driver, or CUDA_ERROR_NOT_INITIALIZED before cuInit.
pub fn driver() -> CuResult<&'static Driver> {
    match DRIVER.get() {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(*e),
        None => Err(CUDA_ERROR_NOT_INITIALIZED),
    }
}

pub fn device(ordinal: i32) -> CuResult<&'static DeviceInfo> {
    let d = driver()?;
    usize::try_from(ordinal)
        .ok()
        .and_then(|i| d.devices.get(i))
        .ok_or(CUDA_ERROR_INVALID_DEVICE)
}

tf_cuda_abi::context_stack!(u64);

pub fn context(h: u64) -> CuResult<Arc<Ctx>> {
    lock(&HANDLES)
        .contexts
        .get(&h)
        .cloned()
        .ok_or(CUDA_ERROR_INVALID_CONTEXT)
}

/// The calling thread's current context.
pub fn current() -> CuResult<(u64, Arc<Ctx>)> {
    driver()?;
    let h = current_handle().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    Ok((h, context(h)?))
}

/// Open a context on the worker's device `device`.
pub fn new_context(device: i32, primary: bool, flags: u32) -> CuResult<u64> {
    let d = driver()?;
    self::device(device)?;
    let dev = hal(d.backend.remote_device(device as u32))?;
    let remote = hal(dev.open_context())?;
    let id = d.next_ctx.fetch_add(1, Ordering::Relaxed);
    // Context handles: small aligned integers of our own, never dereferenced.
    let h = 0x10_0000 + id * 16;
    lock(&HANDLES).contexts.insert(
        h,
        Arc::new(Ctx {
            remote,
            device,
            primary,
            flags: Mutex::new(flags),
            id,
        }),
    );
    Ok(h)
}

/// Resolve a stream handle: NULL and the legacy/per-thread handles mean the current context's
/// default stream.
pub fn stream(
    h: *mut core::ffi::c_void,
) -> CuResult<(Arc<Ctx>, StreamHandle, Option<Arc<StreamObj>>)> {
    let v = h as usize;
    if v == 0 || v == tf_cuda_abi::CU_STREAM_LEGACY || v == tf_cuda_abi::CU_STREAM_PER_THREAD {
        let (_, c) = current()?;
        return Ok((c, StreamHandle::DEFAULT, None));
    }
    driver()?;
    let s = lock(&HANDLES)
        .streams
        .get(&(v as u64))
        .cloned()
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    Ok((context(s.ctx)?, StreamHandle(v as u64), Some(s)))
}

/// Resolve an event handle.
pub fn event(h: *mut core::ffi::c_void) -> CuResult<(Arc<Ctx>, EventHandle, Arc<EventObj>)> {
    driver()?;
    let e = lock(&HANDLES)
        .events
        .get(&(h as u64))
        .cloned()
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    Ok((context(e.ctx)?, EventHandle(h as u64), e))
}

/// Resolve a function handle.
pub fn function(h: *mut core::ffi::c_void) -> CuResult<(Arc<Ctx>, Arc<FuncObj>)> {
    driver()?;
    let f = lock(&HANDLES)
        .functions
        .get(&(h as u64))
        .cloned()
        .ok_or(CUDA_ERROR_INVALID_HANDLE)?;
    Ok((context(f.ctx)?, f))
}

/// Drop a context's handles (it is being destroyed or reset).
pub fn forget_context_objects(ctx: u64) {
    let mut h = lock(&HANDLES);
    h.streams.retain(|_, s| s.ctx != ctx);
    h.events.retain(|_, e| e.ctx != ctx);
    h.modules.retain(|_, c| *c != ctx);
    h.functions.retain(|_, f| f.ctx != ctx);
}

/// Whether the current context, if any, holds the device allocation containing `ptr`.
pub fn device_allocation(ptr: u64) -> Option<(Arc<Ctx>, u64, u64)> {
    let (_, c) = current().ok()?;
    let (base, size) = c.remote.allocation(ptr)?;
    Some((c, base, size))
}

/// Free everything a reset primary context held, keeping its handle.
pub fn reset_context(c: &Ctx, h: u64) {
    let _ = c.remote.synchronize();
    forget_context_objects(h);
}

/// The current context's remote context.
pub fn remote() -> CuResult<Arc<RemoteContext>> {
    Ok(current()?.1.remote.clone())
}
