//! Execution on one NVIDIA device: memory, copies, modules, launches, streams and events.
//!
//! A [`CudaContext`] runs on the device's primary context (the one the CUDA runtime and most
//! programs use), retained through cudarc's [`cudarc::driver::CudaContext`] and bound to the
//! calling thread before every driver call. The HAL's `u64` handles index per-context tables of
//! the raw driver objects, so an unknown or already released handle is
//! [`ErrorKind::InvalidHandle`] (or [`ErrorKind::InvalidValue`] for a pointer this context did not
//! allocate) instead of a driver crash. Dropping the context frees what it still holds.
//!
//! Streams are created with the default flags (they synchronise with the legacy default stream,
//! [`StreamHandle::DEFAULT`]). Copies and memsets wait for all earlier work on the context and
//! return when the bytes are in place, as the HAL requires.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{CString, c_void};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use cudarc::driver::{result, sys};
use tf_hal::{
    Context, DevicePtr, Error, ErrorKind, EventHandle, FunctionHandle, KernelArgs, LaunchConfig,
    MemoryInfo, ModuleHandle, ModuleImage, Result, StreamHandle,
};

use crate::{cu, loader};

type Driver = Arc<cudarc::driver::CudaContext>;

/// A loaded module; unloaded when the last reference goes.
struct RawModule {
    handle: sys::CUmodule,
    ctx: Driver,
}

/// A kernel entry of a module (keeping the module loaded), with its parameter sizes where the
/// driver can say (`cuFuncGetParamInfo`, CUDA 12.4+).
struct RawFunction {
    handle: sys::CUfunction,
    name: String,
    params: Option<Vec<usize>>,
    _module: Arc<RawModule>,
}

struct RawStream {
    handle: sys::CUstream,
    ctx: Driver,
}

struct RawEvent {
    handle: sys::CUevent,
    ctx: Driver,
}

// SAFETY: CUDA driver handles are process-wide values, valid on any thread that has their context
// current; every use binds the context first, and the tables serialise creation and destruction.
unsafe impl Send for RawModule {}
// SAFETY: as above; the driver API is thread-safe for these objects.
unsafe impl Sync for RawModule {}
// SAFETY: as above.
unsafe impl Send for RawFunction {}
// SAFETY: as above.
unsafe impl Sync for RawFunction {}
// SAFETY: as above.
unsafe impl Send for RawStream {}
// SAFETY: as above.
unsafe impl Sync for RawStream {}
// SAFETY: as above.
unsafe impl Send for RawEvent {}
// SAFETY: as above.
unsafe impl Sync for RawEvent {}

impl RawModule {
    fn unload(mut self) -> Result<()> {
        let h = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        bind(&self.ctx)?;
        // SAFETY: `h` is a module this context loaded and nobody else holds (we own `self`).
        cu("cuModuleUnload", || unsafe { result::module::unload(h) })
    }
}

impl Drop for RawModule {
    fn drop(&mut self) {
        if !self.handle.is_null() && bind(&self.ctx).is_ok() {
            // SAFETY: the last reference to a module this context loaded.
            let r = cu("cuModuleUnload", || unsafe {
                result::module::unload(self.handle)
            });
            if let Err(e) = r {
                tracing::debug!("unloading a module on release: {e}");
            }
        }
    }
}

impl RawStream {
    fn destroy(mut self) -> Result<()> {
        let h = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        bind(&self.ctx)?;
        // SAFETY: `h` is a stream this context created and nobody else holds.
        cu("cuStreamDestroy", || unsafe { result::stream::destroy(h) })
    }
}

impl Drop for RawStream {
    fn drop(&mut self) {
        if !self.handle.is_null() && bind(&self.ctx).is_ok() {
            // SAFETY: the last reference to a stream this context created.
            let r = cu("cuStreamDestroy", || unsafe {
                result::stream::destroy(self.handle)
            });
            if let Err(e) = r {
                tracing::debug!("destroying a stream on release: {e}");
            }
        }
    }
}

impl RawEvent {
    fn destroy(mut self) -> Result<()> {
        let h = std::mem::replace(&mut self.handle, std::ptr::null_mut());
        bind(&self.ctx)?;
        // SAFETY: `h` is an event this context created and nobody else holds.
        cu("cuEventDestroy", || unsafe { result::event::destroy(h) })
    }
}

impl Drop for RawEvent {
    fn drop(&mut self) {
        if !self.handle.is_null() && bind(&self.ctx).is_ok() {
            // SAFETY: the last reference to an event this context created.
            let r = cu("cuEventDestroy", || unsafe {
                result::event::destroy(self.handle)
            });
            if let Err(e) = r {
                tracing::debug!("destroying an event on release: {e}");
            }
        }
    }
}

fn bind(ctx: &Driver) -> Result<()> {
    cu("cuCtxSetCurrent", || ctx.bind_to_thread())
}

#[derive(Default)]
struct Tables {
    next: u64,
    /// Device address -> size of each live allocation.
    allocations: BTreeMap<u64, u64>,
    modules: HashMap<u64, Arc<RawModule>>,
    functions: HashMap<u64, (u64, Arc<RawFunction>)>,
    streams: HashMap<u64, Arc<RawStream>>,
    events: HashMap<u64, Arc<RawEvent>>,
}

impl Tables {
    /// A fresh handle value, unique across kinds within the context, never 0 (the default
    /// stream).
    fn handle(&mut self) -> u64 {
        self.next += 1;
        self.next
    }
}

fn unknown(what: &str, handle: u64) -> Error {
    Error::invalid_handle(format!(
        "{what} {handle:#x} is not known to this context (never created here, or already released)"
    ))
}

/// An execution context of this process on one NVIDIA device.
pub struct CudaContext {
    device_index: u32,
    ctx: Driver,
    tables: Mutex<Tables>,
}

impl std::fmt::Debug for CudaContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaContext")
            .field("device_index", &self.device_index)
            .field("ordinal", &self.ctx.ordinal())
            .finish_non_exhaustive()
    }
}

impl CudaContext {
    /// Retain the primary context of the device with this driver ordinal.
    pub(crate) fn new(ordinal: i32, device_index: u32) -> Result<CudaContext> {
        loader::driver()?;
        let ctx = cu("cuDevicePrimaryCtxRetain", || {
            cudarc::driver::CudaContext::new(ordinal as usize)
        })?;
        Ok(CudaContext {
            device_index,
            ctx,
            tables: Mutex::new(Tables::default()),
        })
    }

    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bind(&self) -> Result<()> {
        bind(&self.ctx)
    }

    /// Wait for all earlier work on the context (the ordering the HAL promises for copies).
    fn sync_all(&self) -> Result<()> {
        cu("cuCtxSynchronize", result::ctx::synchronize)
    }

    fn stream(&self, stream: StreamHandle) -> Result<Option<Arc<RawStream>>> {
        if stream == StreamHandle::DEFAULT {
            return Ok(None);
        }
        self.tables()
            .streams
            .get(&stream.0)
            .cloned()
            .map(Some)
            .ok_or_else(|| unknown("stream", stream.0))
    }

    fn event(&self, event: EventHandle) -> Result<Arc<RawEvent>> {
        self.tables()
            .events
            .get(&event.0)
            .cloned()
            .ok_or_else(|| unknown("event", event.0))
    }

    /// Parameter sizes of a kernel, where the driver offers `cuFuncGetParamInfo`.
    fn param_sizes(f: sys::CUfunction) -> Option<Vec<usize>> {
        if !loader::driver().ok()?.has_symbol("cuFuncGetParamInfo") {
            return None;
        }
        let mut sizes = Vec::new();
        // A kernel has at most a few thousand bytes of parameters; 4096 bounds the loop.
        for index in 0..4096 {
            let (mut offset, mut size) = (0usize, 0usize);
            // SAFETY: `f` is a live function; the driver writes two usizes through the pointers.
            let r = cu("cuFuncGetParamInfo", || unsafe {
                sys::cuFuncGetParamInfo(f, index, &mut offset, &mut size).result()
            });
            match r {
                Ok(()) => sizes.push(size),
                // Past the last parameter.
                Err(e) if e.kind == ErrorKind::InvalidValue => return Some(sizes),
                // Not supported for this function or driver: no validation.
                Err(_) => return None,
            }
        }
        None
    }
}

/// Check that a binary module image is a complete cubin (ELF) or fatbin, so the driver (which
/// reads the size from the image's own header) never reads past the buffer.
fn check_binary_image(b: &[u8]) -> Result<()> {
    let bad = |why: &str| {
        Error::new(
            ErrorKind::InvalidImage,
            format!("module image of {} bytes: {why}", b.len()),
        )
    };
    let u16_at = |o: usize| {
        b.get(o..o + 2)
            .map(|s| u16::from_le_bytes([s[0], s[1]]) as u64)
    };
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as u64)
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    let len = b.len() as u64;
    if b.starts_with(b"\x7fELF") {
        if b.len() < 64 || b[4] != 2 || b[5] != 1 {
            return Err(bad("not a 64-bit little-endian ELF (cubin) image"));
        }
        let field = |v: Option<u64>| v.ok_or_else(|| bad("truncated ELF header"));
        let (phoff, shoff) = (field(u64_at(0x20))?, field(u64_at(0x28))?);
        let (phentsize, phnum) = (field(u16_at(0x36))?, field(u16_at(0x38))?);
        let (shentsize, shnum) = (field(u16_at(0x3a))?, field(u16_at(0x3c))?);
        let fits = |off: u64, n: u64, size: u64| {
            n == 0
                || n.checked_mul(size)
                    .and_then(|t| t.checked_add(off))
                    .is_some_and(|end| end <= len)
        };
        if !fits(phoff, phnum, phentsize) || !fits(shoff, shnum, shentsize) {
            return Err(bad("ELF headers point past the end of the image"));
        }
        for i in 0..shnum {
            let sh = (shoff + i * shentsize) as usize;
            let kind = field(u32_at(sh + 4))?;
            let (offset, size) = (field(u64_at(sh + 0x18))?, field(u64_at(sh + 0x20))?);
            // SHT_NOBITS (8) occupies no bytes in the file.
            if kind != 8 && !fits(offset, 1, size) {
                return Err(bad("an ELF section lies past the end of the image"));
            }
        }
        return Ok(());
    }
    if u32_at(0) == Some(0xBA55_ED50) {
        let header = u16_at(6).ok_or_else(|| bad("truncated fatbin header"))?;
        let body = u64_at(8).ok_or_else(|| bad("truncated fatbin header"))?;
        if header.checked_add(body).is_none_or(|end| end > len) {
            return Err(bad(
                "the fatbin header claims more bytes than the image has",
            ));
        }
        return Ok(());
    }
    Err(bad(
        "not a cubin (ELF) or fatbin image; pass PTX text as ModuleImage::Ptx",
    ))
}

impl Context for CudaContext {
    fn device_index(&self) -> u32 {
        self.device_index
    }

    fn mem_alloc(&self, bytes: u64) -> Result<DevicePtr> {
        if bytes == 0 {
            return Err(Error::invalid_value("cannot allocate 0 bytes"));
        }
        let size = usize::try_from(bytes)
            .map_err(|_| Error::out_of_memory(format!("{bytes} bytes do not fit this host")))?;
        self.bind()?;
        // SAFETY: plain allocation in the current (bound) context.
        let ptr = cu("cuMemAlloc", || unsafe { result::malloc_sync(size) })?;
        self.tables().allocations.insert(ptr, bytes);
        Ok(DevicePtr(ptr))
    }

    fn mem_free(&self, ptr: DevicePtr) -> Result<()> {
        if self.tables().allocations.remove(&ptr.0).is_none() {
            return Err(Error::invalid_value(format!(
                "free of {ptr}: not an allocation of this context (never allocated, or already freed)"
            )));
        }
        self.bind()?;
        // SAFETY: `ptr` was returned by cuMemAlloc in this context and is freed once (we just
        // removed it from the table under the lock).
        cu("cuMemFree", || unsafe { result::free_sync(ptr.0) })
    }

    fn mem_info(&self) -> Result<MemoryInfo> {
        self.bind()?;
        let (free, total) = cu("cuMemGetInfo", result::mem_get_info)?;
        Ok(MemoryInfo {
            total_bytes: total as u64,
            used_bytes: total.saturating_sub(free) as u64,
            free_bytes: free as u64,
        })
    }

    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        if src.is_empty() {
            return Ok(());
        }
        self.bind()?;
        self.sync_all()?;
        // SAFETY: `src` is a live host slice for the duration of the call; the driver checks
        // that `dst..dst+len` is device memory.
        cu("cuMemcpyHtoD", || unsafe {
            result::memcpy_htod_sync(dst.0, src)
        })?;
        // A pageable-memory upload may return once the bytes are staged: wait until they land.
        self.sync_all()
    }

    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        if dst.is_empty() {
            return Ok(());
        }
        self.bind()?;
        self.sync_all()?;
        // SAFETY: `dst` is a live, exclusively borrowed host slice the driver fills; it checks
        // that `src..src+len` is device memory.
        cu("cuMemcpyDtoH", || unsafe {
            result::memcpy_dtoh_sync(dst, src.0)
        })
    }

    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: u64) -> Result<()> {
        if bytes == 0 {
            return Ok(());
        }
        let n = usize::try_from(bytes).map_err(|_| Error::invalid_value("copy too large"))?;
        self.bind()?;
        self.sync_all()?;
        // SAFETY: device-to-device copy; the driver validates both ranges.
        cu("cuMemcpyDtoD", || unsafe {
            result::memcpy_dtod_sync(dst.0, src.0, n)
        })?;
        self.sync_all()
    }

    fn memset_d8(&self, dst: DevicePtr, value: u8, count: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        let n = usize::try_from(count).map_err(|_| Error::invalid_value("memset too large"))?;
        self.bind()?;
        self.sync_all()?;
        // SAFETY: the driver validates the device range.
        cu("cuMemsetD8", || unsafe {
            result::memset_d8_sync(dst.0, value, n)
        })?;
        self.sync_all()
    }

    fn memset_d32(&self, dst: DevicePtr, value: u32, count: u64) -> Result<()> {
        if count == 0 {
            return Ok(());
        }
        if !dst.0.is_multiple_of(4) {
            return Err(Error::invalid_value(format!(
                "memset_d32 at {dst}: the address must be 4-byte aligned"
            )));
        }
        let n = usize::try_from(count).map_err(|_| Error::invalid_value("memset too large"))?;
        self.bind()?;
        self.sync_all()?;
        // SAFETY: the driver validates the device range (count 32-bit words from `dst`).
        cu("cuMemsetD32", || unsafe {
            sys::cuMemsetD32_v2(dst.0, value, n).result()
        })?;
        self.sync_all()
    }

    fn load_module(&self, image: ModuleImage<'_>) -> Result<ModuleHandle> {
        // Owned, NUL-terminated (PTX) or 8-byte aligned (binary) copies of the image.
        let (ptx, bin): (Option<CString>, Option<Vec<u64>>) = match image {
            ModuleImage::Ptx(text) => {
                let c = CString::new(text).map_err(|_| {
                    Error::new(ErrorKind::InvalidImage, "PTX text contains a NUL byte")
                })?;
                (Some(c), None)
            }
            ModuleImage::Binary(bytes) => {
                check_binary_image(bytes)?;
                let mut words = vec![0u64; bytes.len().div_ceil(8)];
                for (w, chunk) in words.iter_mut().zip(bytes.chunks(8)) {
                    let mut b = [0u8; 8];
                    b[..chunk.len()].copy_from_slice(chunk);
                    *w = u64::from_le_bytes(b);
                }
                (None, Some(words))
            }
            ModuleImage::SpirV(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidImage,
                    "the CUDA driver loads PTX, cubin or fatbin images, not SPIR-V (use the vulkan backend for SPIR-V)",
                ));
            }
        };
        let ptr: *const c_void = match (&ptx, &bin) {
            (Some(c), _) => c.as_ptr().cast(),
            (_, Some(w)) => w.as_ptr().cast(),
            _ => unreachable!("one of the two images is set"),
        };
        self.bind()?;
        // SAFETY: `ptr` points at a NUL-terminated PTX string or a checked cubin/fatbin image,
        // alive for the call (the driver copies what it keeps).
        let handle = cu("cuModuleLoadData", || unsafe {
            result::module::load_data(ptr)
        })?;
        let module = Arc::new(RawModule {
            handle,
            ctx: self.ctx.clone(),
        });
        let mut t = self.tables();
        let h = t.handle();
        t.modules.insert(h, module);
        Ok(ModuleHandle(h))
    }

    fn unload_module(&self, module: ModuleHandle) -> Result<()> {
        let m = {
            let mut t = self.tables();
            let m = t
                .modules
                .remove(&module.0)
                .ok_or_else(|| unknown("module", module.0))?;
            t.functions.retain(|_, (owner, _)| *owner != module.0);
            m
        };
        match Arc::try_unwrap(m) {
            Ok(m) => m.unload(),
            // A launch on another thread still holds one of its functions: the module is
            // unloaded when that call returns.
            Err(_) => Ok(()),
        }
    }

    fn function(&self, module: ModuleHandle, name: &str) -> Result<FunctionHandle> {
        let m = self
            .tables()
            .modules
            .get(&module.0)
            .cloned()
            .ok_or_else(|| unknown("module", module.0))?;
        let cname = CString::new(name)
            .map_err(|_| Error::invalid_value("a kernel name cannot contain a NUL byte"))?;
        self.bind()?;
        // SAFETY: `m.handle` is a live module (we hold a reference); `cname` is NUL-terminated.
        let handle = cu(&format!("cuModuleGetFunction({name})"), || unsafe {
            result::module::get_function(m.handle, cname)
        })?;
        let params = Self::param_sizes(handle);
        let f = Arc::new(RawFunction {
            handle,
            name: name.to_string(),
            params,
            _module: m,
        });
        let mut t = self.tables();
        if !t.modules.contains_key(&module.0) {
            // Unloaded by another thread meanwhile.
            return Err(unknown("module", module.0));
        }
        let h = t.handle();
        t.functions.insert(h, (module.0, f));
        Ok(FunctionHandle(h))
    }

    /// Launch with packed arguments. Where the driver describes kernel parameters
    /// (`cuFuncGetParamInfo`, CUDA 12.4+) the argument count and sizes are checked first
    /// ([`ErrorKind::InvalidValue`] on a mismatch); with older drivers the list is trusted, as
    /// `cuLaunchKernel` itself does.
    fn function_param_sizes(&self, function: FunctionHandle) -> Result<Vec<usize>> {
        let t = self.tables();
        let (_, f) = t
            .functions
            .get(&function.0)
            .ok_or_else(|| unknown("function", function.0))?;
        f.params.clone().ok_or_else(|| {
            Error::not_supported(format!(
                "the driver cannot tell the parameters of {} (cuFuncGetParamInfo needs CUDA 12.4)",
                f.name
            ))
        })
    }

    fn launch(
        &self,
        function: FunctionHandle,
        config: &LaunchConfig,
        stream: StreamHandle,
        args: &KernelArgs,
    ) -> Result<()> {
        let f = self
            .tables()
            .functions
            .get(&function.0)
            .map(|(_, f)| f.clone())
            .ok_or_else(|| unknown("function", function.0))?;
        let s = self.stream(stream)?;
        if config.grid.contains(&0) || config.block.contains(&0) {
            return Err(Error::invalid_value(format!(
                "launch of {}: grid {:?} and block {:?} must be non-zero",
                f.name, config.grid, config.block
            )));
        }
        if let Some(sizes) = &f.params {
            let given: Vec<usize> = args.params().iter().map(Vec::len).collect();
            if &given != sizes {
                return Err(Error::invalid_value(format!(
                    "launch of {}: the kernel takes parameters of {sizes:?} bytes, got {given:?}",
                    f.name
                )));
            }
        }
        // Own copies, each padded to at least 8 bytes, so that even where the driver cannot
        // tell us the parameter sizes a too-short scalar never makes it read past a buffer.
        let mut bufs: Vec<Vec<u8>> = args
            .params()
            .iter()
            .map(|p| {
                let mut b = p.clone();
                b.resize(p.len().max(8).next_multiple_of(8), 0);
                b
            })
            .collect();
        let mut ptrs: Vec<*mut c_void> = bufs.iter_mut().map(|b| b.as_mut_ptr().cast()).collect();
        let stream_handle = s.as_ref().map_or(std::ptr::null_mut(), |s| s.handle);
        let g = config.grid;
        let b = config.block;
        self.bind()?;
        // SAFETY: `f.handle` is a live function (we hold it, and through it its module);
        // `stream_handle` is null (the default stream) or a live stream we hold; `ptrs` holds one
        // pointer per kernel parameter into `bufs`, which outlive the call (the driver copies
        // the values at launch).
        cu(&format!("cuLaunchKernel({})", f.name), || unsafe {
            result::launch_kernel(
                f.handle,
                (g[0], g[1], g[2]),
                (b[0], b[1], b[2]),
                config.shared_mem_bytes,
                stream_handle,
                &mut ptrs,
            )
        })
    }

    fn stream_create(&self) -> Result<StreamHandle> {
        self.bind()?;
        let handle = cu("cuStreamCreate", || {
            result::stream::create(result::stream::StreamKind::Default)
        })?;
        let s = Arc::new(RawStream {
            handle,
            ctx: self.ctx.clone(),
        });
        let mut t = self.tables();
        let h = t.handle();
        t.streams.insert(h, s);
        Ok(StreamHandle(h))
    }

    fn stream_destroy(&self, stream: StreamHandle) -> Result<()> {
        if stream == StreamHandle::DEFAULT {
            return Err(Error::invalid_handle(
                "the default stream cannot be destroyed",
            ));
        }
        let s = self
            .tables()
            .streams
            .remove(&stream.0)
            .ok_or_else(|| unknown("stream", stream.0))?;
        match Arc::try_unwrap(s) {
            Ok(s) => s.destroy(),
            // In use by a call on another thread: destroyed when that call returns.
            Err(_) => Ok(()),
        }
    }

    fn stream_synchronize(&self, stream: StreamHandle) -> Result<()> {
        let s = self.stream(stream)?;
        let h = s.as_ref().map_or(std::ptr::null_mut(), |s| s.handle);
        self.bind()?;
        // SAFETY: null (the default stream) or a live stream we hold.
        cu("cuStreamSynchronize", || unsafe {
            result::stream::synchronize(h)
        })
    }

    fn stream_wait_event(&self, stream: StreamHandle, event: EventHandle) -> Result<()> {
        let s = self.stream(stream)?;
        let e = self.event(event)?;
        let h = s.as_ref().map_or(std::ptr::null_mut(), |s| s.handle);
        self.bind()?;
        // SAFETY: a live stream (or the default) and a live event, both held.
        cu("cuStreamWaitEvent", || unsafe {
            result::stream::wait_event(h, e.handle, sys::CUevent_wait_flags::CU_EVENT_WAIT_DEFAULT)
        })
    }

    fn event_create(&self) -> Result<EventHandle> {
        self.bind()?;
        // Timing enabled: event_elapsed needs it.
        let handle = cu("cuEventCreate", || {
            result::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT)
        })?;
        let e = Arc::new(RawEvent {
            handle,
            ctx: self.ctx.clone(),
        });
        let mut t = self.tables();
        let h = t.handle();
        t.events.insert(h, e);
        Ok(EventHandle(h))
    }

    fn event_destroy(&self, event: EventHandle) -> Result<()> {
        let e = self
            .tables()
            .events
            .remove(&event.0)
            .ok_or_else(|| unknown("event", event.0))?;
        match Arc::try_unwrap(e) {
            Ok(e) => e.destroy(),
            Err(_) => Ok(()),
        }
    }

    fn event_record(&self, event: EventHandle, stream: StreamHandle) -> Result<()> {
        let e = self.event(event)?;
        let s = self.stream(stream)?;
        let h = s.as_ref().map_or(std::ptr::null_mut(), |s| s.handle);
        self.bind()?;
        // SAFETY: a live event and a live stream (or the default), both held.
        cu("cuEventRecord", || unsafe {
            result::event::record(e.handle, h)
        })
    }

    fn event_synchronize(&self, event: EventHandle) -> Result<()> {
        let e = self.event(event)?;
        self.bind()?;
        // SAFETY: a live event we hold.
        cu("cuEventSynchronize", || unsafe {
            result::event::synchronize(e.handle)
        })
    }

    fn event_query(&self, event: EventHandle) -> Result<bool> {
        let e = self.event(event)?;
        self.bind()?;
        // SAFETY: a live event we hold.
        match cu("cuEventQuery", || unsafe { result::event::query(e.handle) }) {
            Ok(()) => Ok(true),
            Err(err) if err.kind == ErrorKind::NotReady => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn event_elapsed(&self, start: EventHandle, end: EventHandle) -> Result<Duration> {
        let a = self.event(start)?;
        let b = self.event(end)?;
        self.bind()?;
        // SAFETY: two live events we hold.
        let ms = cu("cuEventElapsedTime", || unsafe {
            result::event::elapsed(a.handle, b.handle)
        })?;
        if !ms.is_finite() || ms < 0.0 {
            return Err(Error::invalid_value(format!(
                "event {end} was recorded before event {start} ({ms} ms)"
            )));
        }
        Ok(Duration::from_secs_f64(ms as f64 / 1000.0))
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        self.sync_all()
    }
}

impl Drop for CudaContext {
    fn drop(&mut self) {
        let t = std::mem::take(&mut *self.tables());
        if bind(&self.ctx).is_err() {
            return;
        }
        let _ = self.sync_all();
        for &ptr in t.allocations.keys() {
            // SAFETY: a live allocation of this context, freed once (the table is gone).
            let _ = cu("cuMemFree", || unsafe { result::free_sync(ptr) });
        }
        // Events, streams, functions and modules are released as the tables drop; the primary
        // context is released after them (it is the last field to drop).
        drop(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_images_are_checked_before_the_driver_reads_them() {
        let e = check_binary_image(b"hello").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidImage);
        // A truncated ELF header.
        let e = check_binary_image(b"\x7fELF\x02\x01").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidImage);
        // An ELF whose section table lies past the end.
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x28..0x30].copy_from_slice(&1000u64.to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&1u16.to_le_bytes());
        assert!(check_binary_image(&elf).is_err());
        // No sections, no program headers: complete.
        elf[0x3c..0x3e].copy_from_slice(&0u16.to_le_bytes());
        check_binary_image(&elf).unwrap();
        // A fatbin claiming more than it has.
        let mut fat = vec![0u8; 16];
        fat[..4].copy_from_slice(&0xBA55_ED50u32.to_le_bytes());
        fat[6..8].copy_from_slice(&16u16.to_le_bytes());
        fat[8..16].copy_from_slice(&100u64.to_le_bytes());
        assert!(check_binary_image(&fat).is_err());
        fat[8..16].copy_from_slice(&0u64.to_le_bytes());
        check_binary_image(&fat).unwrap();
    }
}
