//! Process-wide state of the fake driver: initialisation, handle registries, primary contexts,
//! and each thread's context stack.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, OnceLock};

use tf_cuda_abi::driver::*;
use tf_fake_gpu::{Event, FakeContext, FakeGpu, Function, Module, Stream};

pub type CuResult<T = ()> = Result<T, u32>;

pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The HAL error's vendor code where it has one, else a close CUDA code.
pub fn code(e: &tf_hal::Error) -> u32 {
    use tf_hal::ErrorKind::*;
    if let Some(v) = &e.vendor
        && v.code >= 0
        && v.code < 1000
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

/// Turn an engine result into a CUDA result, logging failures at debug level.
pub fn hal<T>(r: tf_hal::Result<T>) -> CuResult<T> {
    r.map_err(|e| {
        tracing::debug!("{e}");
        code(&e)
    })
}

/// A context handle's object.
pub struct Ctx {
    pub engine: Arc<FakeContext>,
    pub device: i32,
    pub primary: bool,
    pub flags: Mutex<u32>,
    pub id: u64,
}

pub struct StreamObj {
    pub stream: Arc<Stream>,
    pub ctx: usize,
    pub flags: u32,
    pub priority: i32,
    /// Kernel launches recorded while the stream captures a graph.
    pub capture: Mutex<Option<Vec<GraphNode>>>,
}

pub struct EventObj {
    pub event: Arc<Event>,
    pub flags: u32,
}

pub struct ModuleObj {
    pub module: Arc<Module>,
    /// entry name -> function handle, so the same name yields the same handle.
    pub functions: Mutex<HashMap<String, usize>>,
}

pub struct FuncObj {
    pub func: Arc<Function>,
    pub module: usize,
    pub name: std::ffi::CString,
}

pub struct PoolObj {
    pub device: i32,
    pub release_threshold: AtomicU64,
}

/// One kernel launch recorded in a graph.
#[derive(Clone)]
pub struct GraphNode {
    pub func: Arc<Function>,
    pub config: tf_hal::LaunchConfig,
    pub params: Vec<Vec<u8>>,
}

pub struct GraphObj {
    pub nodes: Vec<GraphNode>,
}

pub struct GraphExecObj {
    pub nodes: Vec<GraphNode>,
}

/// Live handles of one kind: the handle is the address of the object, so a bogus or stale
/// handle is found missing instead of dereferenced.
pub struct Registry<T> {
    map: Mutex<HashMap<usize, Arc<T>>>,
    missing: u32,
}

impl<T> Registry<T> {
    pub fn new(missing: u32) -> Self {
        Registry {
            map: Mutex::new(HashMap::new()),
            missing,
        }
    }

    /// Register an object and return its handle.
    pub fn insert(&self, obj: T) -> usize {
        let arc = Arc::new(obj);
        let h = Arc::as_ptr(&arc) as usize;
        lock(&self.map).insert(h, arc);
        h
    }

    pub fn get(&self, h: usize) -> CuResult<Arc<T>> {
        lock(&self.map).get(&h).cloned().ok_or(self.missing)
    }

    pub fn remove(&self, h: usize) -> CuResult<Arc<T>> {
        lock(&self.map).remove(&h).ok_or(self.missing)
    }

    pub fn all(&self) -> Vec<(usize, Arc<T>)> {
        lock(&self.map)
            .iter()
            .map(|(h, o)| (*h, o.clone()))
            .collect()
    }
}

pub static CONTEXTS: LazyLock<Registry<Ctx>> =
    LazyLock::new(|| Registry::new(CUDA_ERROR_INVALID_CONTEXT));
pub static STREAMS: LazyLock<Registry<StreamObj>> =
    LazyLock::new(|| Registry::new(CUDA_ERROR_INVALID_HANDLE));
pub static EVENTS: LazyLock<Registry<EventObj>> =
    LazyLock::new(|| Registry::new(CUDA_ERROR_INVALID_HANDLE));
pub static MODULES: LazyLock<Registry<ModuleObj>> =
    LazyLock::new(|| Registry::new(CUDA_ERROR_INVALID_HANDLE));
pub static FUNCTIONS: LazyLock<Registry<FuncObj>> =
    LazyLock::new(|| Registry::new(CUDA_ERROR_INVALID_HANDLE));
pub static POOLS: LazyLock<Registry<PoolObj>> =
    LazyLock::new(|| Registry::new(CUDA_ERROR_INVALID_HANDLE));
pub static GRAPHS: LazyLock<Registry<GraphObj>> =
    LazyLock::new(|| Registry::new(CUDA_ERROR_INVALID_HANDLE));
pub static GRAPH_EXECS: LazyLock<Registry<GraphExecObj>> =
    LazyLock::new(|| Registry::new(CUDA_ERROR_INVALID_HANDLE));
pub static PHYSICAL: LazyLock<Registry<tf_fake_gpu::vmm::Physical>> =
    LazyLock::new(|| Registry::new(CUDA_ERROR_INVALID_VALUE));

/// The initialised driver.
pub struct Driver {
    pub gpu: Arc<FakeGpu>,
    /// The devices this process sees, in ordinal order (CUDA_VISIBLE_DEVICES applied).
    pub visible: Vec<Arc<tf_fake_gpu::FakeDevice>>,
    /// Primary context handle per device, created on first retain.
    pub primary: Mutex<Vec<Option<usize>>>,
    pub primary_refs: Mutex<Vec<u32>>,
    pub default_pools: Vec<usize>,
    pub next_ctx_id: AtomicU64,
}

static DRIVER: OnceLock<Result<Driver, u32>> = OnceLock::new();

/// cuInit: open the simulated machine once.
pub fn init() -> CuResult {
    DRIVER
        .get_or_init(|| {
            crate::logging::init();
            match FakeGpu::global() {
                Ok(gpu) => {
                    let visible = visible_devices(
                        gpu.devices(),
                        std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
                    );
                    let n = visible.len();
                    let default_pools = (0..n)
                        .map(|d| {
                            POOLS.insert(PoolObj {
                                device: d as i32,
                                release_threshold: AtomicU64::new(0),
                            })
                        })
                        .collect();
                    tracing::info!(devices = n, "tensor-fusion simulated libcuda initialised");
                    Ok(Driver {
                        gpu,
                        visible,
                        primary: Mutex::new(vec![None; n]),
                        primary_refs: Mutex::new(vec![0; n]),
                        default_pools,
                        next_ctx_id: AtomicU64::new(1),
                    })
                }
                Err(e) => {
                    eprintln!("tensor-fusion simulated libcuda: cannot initialise: {e}");
                    Err(CUDA_ERROR_NO_DEVICE)
                }
            }
        })
        .as_ref()
        .map(|_| ())
        .map_err(|e| *e)
}

/// Apply CUDA_VISIBLE_DEVICES like the real driver: a comma-separated list of ordinals or UUIDs
/// (a unique prefix is enough); an invalid entry hides it and everything after it; an empty
/// value hides every device.
pub fn visible_devices(
    all: &[Arc<tf_fake_gpu::FakeDevice>],
    spec: Option<&str>,
) -> Vec<Arc<tf_fake_gpu::FakeDevice>> {
    let Some(spec) = spec else {
        return all.to_vec();
    };
    let mut out: Vec<Arc<tf_fake_gpu::FakeDevice>> = Vec::new();
    for item in spec.split(',').map(str::trim) {
        let found = if let Ok(i) = item.parse::<usize>() {
            all.get(i)
        } else if item
            .get(..4)
            .is_some_and(|p| p.eq_ignore_ascii_case("GPU-") || p.eq_ignore_ascii_case("MIG-"))
        {
            let matches: Vec<_> = all
                .iter()
                .filter(|d| {
                    tf_hal::DeviceUuid::parse(&d.profile().uuid).is_ok_and(|u| u.has_prefix(item))
                })
                .collect();
            if matches.len() == 1 {
                Some(matches[0])
            } else {
                None
            }
        } else {
            None
        };
        match found {
            Some(d) if !out.iter().any(|o| Arc::ptr_eq(o, d)) => out.push(d.clone()),
            _ => break,
        }
    }
    out
}

/// The driver, or CUDA_ERROR_NOT_INITIALIZED before cuInit.
pub fn driver() -> CuResult<&'static Driver> {
    match DRIVER.get() {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(*e),
        None => Err(CUDA_ERROR_NOT_INITIALIZED),
    }
}

pub fn device(ordinal: i32) -> CuResult<&'static Arc<tf_fake_gpu::FakeDevice>> {
    let d = driver()?;
    usize::try_from(ordinal)
        .ok()
        .and_then(|i| d.visible.get(i))
        .ok_or(CUDA_ERROR_INVALID_DEVICE)
}

tf_cuda_abi::context_stack!(usize);

/// The calling thread's current context.
pub fn current() -> CuResult<(usize, Arc<Ctx>)> {
    driver()?;
    let h = current_handle().ok_or(CUDA_ERROR_INVALID_CONTEXT)?;
    Ok((h, CONTEXTS.get(h)?))
}

pub fn new_context(device: i32, primary: bool, flags: u32) -> CuResult<usize> {
    let d = driver()?;
    let dev = self::device(device)?.clone();
    let engine = hal(FakeContext::new(dev))?;
    Ok(CONTEXTS.insert(Ctx {
        engine,
        device,
        primary,
        flags: Mutex::new(flags),
        id: d.next_ctx_id.fetch_add(1, Ordering::Relaxed),
    }))
}

/// Resolve a stream handle: NULL and the legacy/per-thread handles mean the current context's
/// default stream.
pub fn stream(h: *mut core::ffi::c_void) -> CuResult<(Arc<Stream>, Option<Arc<StreamObj>>)> {
    let h = h as usize;
    if h == 0 || h == tf_cuda_abi::CU_STREAM_LEGACY || h == tf_cuda_abi::CU_STREAM_PER_THREAD {
        let (_, ctx) = current()?;
        return Ok((ctx.engine.default_stream().clone(), None));
    }
    let s = STREAMS.get(h)?;
    Ok((s.stream.clone(), Some(s)))
}
