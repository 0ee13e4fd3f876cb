//! Process-wide state of the simulated runtime: the machine's NPUs, handle registries, each
//! device's default context (made by `aclrtSetDevice`), each thread's current context, and the
//! one mapping from engine errors to `aclError`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{CString, c_char};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};

use ascend_sys::acl::*;
use tf_fake_gpu::{
    Event, FakeContext, FakeDevice, FakeGpu, FakeGpuConfig, Function, Module, Stream,
};
use tf_hal::Vendor;

/// A result whose error is an `aclError`, carried in a `u32` like the C-boundary kit's codes.
pub type AclResult<T = ()> = Result<T, u32>;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The `aclError` of an engine error: the one mapping from HAL kinds to ACL codes.
pub fn code(e: &tf_hal::Error) -> u32 {
    use tf_hal::ErrorKind::*;
    #[allow(unreachable_patterns)] // kinds the HAL may add map to the runtime's internal error
    match e.kind {
        NotInitialized => ACL_ERROR_UNINITIALIZE,
        LibraryNotFound | DeviceLost => ACL_ERROR_RT_DEV_SETUP_ERROR,
        InvalidDevice => ACL_ERROR_RT_INVALID_DEVICEID,
        InvalidValue | Config => ACL_ERROR_RT_PARAM_INVALID,
        InvalidHandle => ACL_ERROR_RT_INVALID_HANDLE,
        OutOfMemory => ACL_ERROR_RT_MEMORY_ALLOCATION,
        NotSupported => ACL_ERROR_RT_FEATURE_NOT_SUPPORT,
        NotFound => ACL_ERROR_RT_KERNEL_LOOKUP,
        InvalidImage => ACL_ERROR_INVALID_FILE,
        LaunchFailed | IllegalAddress => ACL_ERROR_RT_AICORE_EXCEPTION,
        NotReady => ACL_ERROR_RT_EVENT_NOT_COMPLETE,
        _ => ACL_ERROR_RT_INTERNAL_ERROR,
    }
}

thread_local! {
    static RECENT: RefCell<CString> = RefCell::new(CString::default());
}

/// Turn an engine result into an ACL result; a failure's words are kept for
/// `aclGetRecentErrMsg` (per thread, as the real runtime does) and logged at debug level.
pub fn hal<T>(r: tf_hal::Result<T>) -> AclResult<T> {
    r.map_err(|e| {
        tracing::debug!("{e}");
        RECENT.with(|m| *m.borrow_mut() = CString::new(e.to_string()).unwrap_or_default());
        code(&e)
    })
}

/// The calling thread's last error message (empty when there was none).
pub fn recent_error() -> *const c_char {
    RECENT.with(|m| m.borrow().as_ptr())
}

/// Live handles of one kind: the handle is the object's address, so a bogus or stale handle is
/// found missing instead of dereferenced.
pub struct Registry<T> {
    map: Mutex<HashMap<usize, Arc<T>>>,
}

impl<T> Registry<T> {
    pub fn new() -> Self {
        Registry {
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn insert(&self, obj: T) -> usize {
        let arc = Arc::new(obj);
        let h = Arc::as_ptr(&arc) as usize;
        lock(&self.map).insert(h, arc);
        h
    }

    pub fn get(&self, h: usize) -> AclResult<Arc<T>> {
        lock(&self.map)
            .get(&h)
            .cloned()
            .ok_or(ACL_ERROR_RT_INVALID_HANDLE)
    }

    pub fn remove(&self, h: usize) -> AclResult<Arc<T>> {
        lock(&self.map)
            .remove(&h)
            .ok_or(ACL_ERROR_RT_INVALID_HANDLE)
    }
}

/// A context: an engine context on one device.
pub struct Ctx {
    pub engine: Arc<FakeContext>,
    pub device: i32,
}

pub struct StreamObj {
    pub stream: Arc<Stream>,
    /// The stream's context lives at least as long as the stream.
    pub _ctx: Arc<Ctx>,
}

pub struct BinObj {
    pub module: Arc<Module>,
    /// entry name -> function handle, so the same name yields the same handle.
    pub functions: Mutex<HashMap<String, usize>>,
}

pub struct FuncObj {
    pub func: Arc<Function>,
    pub binary: usize,
}

pub static CONTEXTS: LazyLock<Registry<Ctx>> = LazyLock::new(Registry::new);
pub static STREAMS: LazyLock<Registry<StreamObj>> = LazyLock::new(Registry::new);
pub static EVENTS: LazyLock<Registry<Event>> = LazyLock::new(Registry::new);
pub static BINARIES: LazyLock<Registry<BinObj>> = LazyLock::new(Registry::new);
pub static FUNCTIONS: LazyLock<Registry<FuncObj>> = LazyLock::new(Registry::new);

/// The simulated machine's NPUs as this process sees them.
pub struct Machine {
    /// Keeps the machine (its segments) open.
    pub _gpu: Arc<FakeGpu>,
    /// Visible devices, in device-id order.
    pub devices: Vec<Arc<FakeDevice>>,
    /// The default context of each device (made by `aclrtSetDevice`).
    pub defaults: Mutex<Vec<Option<usize>>>,
}

static MACHINE: OnceLock<Result<Machine, u32>> = OnceLock::new();
static INITIALISED: AtomicBool = AtomicBool::new(false);

/// The machine, opened on first use (every entry point works after `aclInit`; a program that
/// skips `aclInit` is not refused).
pub fn machine() -> AclResult<&'static Machine> {
    MACHINE
        .get_or_init(|| {
            tf_os::init_logging();
            let opened = FakeGpuConfig::from_env_for(Vendor::Ascend).and_then(FakeGpu::new);
            match opened {
                Ok(gpu) => {
                    let npus: Vec<_> = gpu
                        .devices()
                        .iter()
                        .filter(|d| d.profile().vendor == Vendor::Ascend)
                        .cloned()
                        .collect();
                    let devices = visible(
                        &npus,
                        std::env::var("ASCEND_RT_VISIBLE_DEVICES").ok().as_deref(),
                    );
                    tracing::info!(
                        devices = devices.len(),
                        "tensor-fusion simulated ACL runtime initialised"
                    );
                    let n = devices.len();
                    Ok(Machine {
                        _gpu: gpu,
                        devices,
                        defaults: Mutex::new(vec![None; n]),
                    })
                }
                Err(e) => {
                    eprintln!("tensor-fusion simulated ACL runtime: cannot initialise: {e}");
                    Err(ACL_ERROR_RT_NO_DEVICE)
                }
            }
        })
        .as_ref()
        .map_err(|e| *e)
}

/// `ASCEND_RT_VISIBLE_DEVICES`: a comma-separated list of device indices; an entry that is not
/// a device hides it and everything after it; an empty value hides every device.
pub fn visible(all: &[Arc<FakeDevice>], spec: Option<&str>) -> Vec<Arc<FakeDevice>> {
    let Some(spec) = spec else {
        return all.to_vec();
    };
    let mut out: Vec<Arc<FakeDevice>> = Vec::new();
    for item in spec.split(',').map(str::trim) {
        match item.parse::<usize>().ok().and_then(|i| all.get(i)) {
            Some(d) if !out.iter().any(|o| Arc::ptr_eq(o, d)) => out.push(d.clone()),
            _ => break,
        }
    }
    out
}

pub fn init() -> AclResult {
    machine()?;
    if INITIALISED.swap(true, Ordering::AcqRel) {
        return Err(ACL_ERROR_REPEAT_INITIALIZE);
    }
    Ok(())
}

pub fn finalize() -> AclResult {
    if !INITIALISED.swap(false, Ordering::AcqRel) {
        return Err(ACL_ERROR_REPEAT_FINALIZE);
    }
    Ok(())
}

pub fn device(id: i32) -> AclResult<&'static Arc<FakeDevice>> {
    let m = machine()?;
    usize::try_from(id)
        .ok()
        .and_then(|i| m.devices.get(i))
        .ok_or(ACL_ERROR_RT_INVALID_DEVICEID)
}

thread_local! {
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// The calling thread's current context.
pub fn current() -> AclResult<(usize, Arc<Ctx>)> {
    let h = CURRENT.with(Cell::get);
    if h == 0 {
        return Err(ACL_ERROR_RT_CONTEXT_NULL);
    }
    Ok((h, CONTEXTS.get(h).map_err(|_| ACL_ERROR_RT_CONTEXT_NULL)?))
}

fn new_context(id: i32) -> AclResult<usize> {
    let dev = device(id)?.clone();
    let engine = hal(FakeContext::new(dev))?;
    Ok(CONTEXTS.insert(Ctx { engine, device: id }))
}

/// `aclrtSetDevice`: the device's default context becomes the thread's current one.
pub fn set_device(id: i32) -> AclResult {
    device(id)?;
    let m = machine()?;
    let h = {
        let mut d = lock(&m.defaults);
        let slot = &mut d[id as usize];
        match *slot {
            Some(h) => h,
            None => {
                let h = new_context(id)?;
                *slot = Some(h);
                h
            }
        }
    };
    CURRENT.with(|c| c.set(h));
    Ok(())
}

/// `aclrtResetDevice`: the device's default context and what it holds go.
pub fn reset_device(id: i32) -> AclResult {
    device(id)?;
    let m = machine()?;
    if let Some(h) = lock(&m.defaults)[id as usize].take() {
        let _ = CONTEXTS.remove(h);
        CURRENT.with(|c| {
            if c.get() == h {
                c.set(0)
            }
        });
    }
    Ok(())
}

/// `aclrtCreateContext`: a new context, current on the calling thread.
pub fn create_context(id: i32) -> AclResult<usize> {
    let h = new_context(id)?;
    CURRENT.with(|c| c.set(h));
    Ok(h)
}

pub fn destroy_context(h: usize) -> AclResult {
    let m = machine()?;
    if lock(&m.defaults).contains(&Some(h)) {
        // The default context belongs to aclrtSetDevice/aclrtResetDevice.
        return Err(ACL_ERROR_RT_PARAM_INVALID);
    }
    CONTEXTS.remove(h)?;
    CURRENT.with(|c| {
        if c.get() == h {
            c.set(0)
        }
    });
    Ok(())
}

pub fn set_current_context(h: usize) -> AclResult {
    CONTEXTS.get(h)?;
    CURRENT.with(|c| c.set(h));
    Ok(())
}

/// The stream a handle means: NULL is the current context's default stream.
pub fn stream(h: usize) -> AclResult<Arc<Stream>> {
    if h == 0 {
        let (_, ctx) = current()?;
        return Ok(ctx.engine.default_stream().clone());
    }
    Ok(STREAMS.get(h)?.stream.clone())
}

/// `aclrtGetSocName`: the current (or first) device's model, e.g. `Ascend910B3`.
pub fn soc_name() -> *const c_char {
    static NAMES: LazyLock<Mutex<HashMap<String, CString>>> = LazyLock::new(Default::default);
    let model = match current() {
        Ok((_, c)) => device(c.device).ok().map(|d| d.profile().model.clone()),
        Err(_) => machine()
            .ok()
            .and_then(|m| m.devices.first())
            .map(|d| d.profile().model.clone()),
    };
    let Some(model) = model else {
        return std::ptr::null();
    };
    let mut names = lock(&NAMES);
    names
        .entry(model.clone())
        .or_insert_with(|| CString::new(model).unwrap_or_default())
        .as_ptr()
}
