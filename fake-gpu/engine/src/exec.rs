//! Execution on a simulated device: modules, streams (one worker thread each, running work in
//! order), events, and contexts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use tf_hal::{Error, ErrorKind, LaunchConfig, Result};

use crate::device::{FakeDevice, MemKind, Region};
use crate::kernels::{self, Builtin, Job};
use crate::ptx;
use crate::sys;

/// How many operations a stream queues before a launch blocks (real drivers block too).
pub const STREAM_QUEUE_DEPTH: usize = 1024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// A kernel entry of a loaded module.
#[derive(Debug)]
pub struct Function {
    pub name: String,
    pub param_sizes: Vec<usize>,
    pub builtin: Builtin,
}

/// A loaded PTX module.
#[derive(Debug)]
pub struct Module {
    functions: HashMap<String, Arc<Function>>,
}

impl Module {
    /// Load PTX text. A module without entries is an error.
    pub fn from_ptx(text: &str) -> Result<Arc<Module>> {
        let entries = ptx::parse_entries(text)?;
        let functions = entries
            .into_iter()
            .map(|e| {
                let builtin = Builtin::for_entry(&e.name, &e.param_sizes);
                (
                    e.name.clone(),
                    Arc::new(Function {
                        name: e.name,
                        param_sizes: e.param_sizes,
                        builtin,
                    }),
                )
            })
            .collect();
        Ok(Arc::new(Module { functions }))
    }

    /// Load a module image: PTX text, possibly NUL-terminated. Binary images (cubin, fatbin)
    /// carry machine code the simulator cannot run, unless they embed PTX text.
    pub fn from_image(image: &[u8]) -> Result<Arc<Module>> {
        let text_end = image.iter().position(|&b| b == 0).unwrap_or(image.len());
        match std::str::from_utf8(&image[..text_end]) {
            Ok(text) if text.contains(".entry") || text.contains(".version") => {
                Module::from_ptx(text)
            }
            _ => Err(Error::new(
                ErrorKind::InvalidImage,
                "the simulated GPU loads PTX text; this image is a binary (cubin/fatbin) without PTX",
            )),
        }
    }

    pub fn function(&self, name: &str) -> Result<Arc<Function>> {
        self.functions.get(name).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("no kernel entry named {name:?} in this module"),
            )
        })
    }

    pub fn function_names(&self) -> Vec<String> {
        let mut v: Vec<_> = self.functions.keys().cloned().collect();
        v.sort();
        v
    }
}

#[derive(Default)]
struct EventState {
    recorded: u64,
    completed: u64,
    at_ns: u64,
}

/// A marker in a stream's work; completes when the work before it has.
#[derive(Default)]
pub struct Event {
    st: Mutex<EventState>,
    cv: Condvar,
}

impl Event {
    pub fn new() -> Arc<Event> {
        Arc::new(Event::default())
    }

    fn complete(&self, generation: u64, at_ns: u64) {
        let mut s = lock(&self.st);
        if generation > s.completed {
            s.completed = generation;
            s.at_ns = at_ns;
        }
        self.cv.notify_all();
    }

    fn wait_for(&self, generation: u64) {
        let mut s = lock(&self.st);
        while s.completed < generation {
            s = self.cv.wait(s).unwrap_or_else(|p| p.into_inner());
        }
    }

    pub fn is_recorded(&self) -> bool {
        lock(&self.st).recorded > 0
    }

    /// True when all captured work has finished (an event never recorded is complete).
    pub fn query(&self) -> bool {
        let s = lock(&self.st);
        s.completed >= s.recorded
    }

    pub fn synchronize(&self) {
        let target = lock(&self.st).recorded;
        self.wait_for(target);
    }

    /// Device time from `start` to `end`, both recorded and complete.
    pub fn elapsed(start: &Event, end: &Event) -> Result<Duration> {
        let read = |e: &Event| {
            let s = lock(&e.st);
            if s.recorded == 0 {
                return Err(Error::invalid_handle("event has not been recorded"));
            }
            if s.completed < s.recorded {
                return Err(Error::new(
                    ErrorKind::NotReady,
                    "event has not completed yet",
                ));
            }
            Ok(s.at_ns)
        };
        let (a, b) = (read(start)?, read(end)?);
        Ok(Duration::from_nanos(b.saturating_sub(a)))
    }

    /// The device timestamp of the last completed recording (monotonic ns).
    pub fn timestamp_ns(&self) -> u64 {
        lock(&self.st).at_ns
    }
}

/// A memset fill pattern.
#[derive(Debug, Clone, Copy)]
pub enum Fill {
    U8(u8),
    U16(u16),
    U32(u32),
}

impl Fill {
    fn width(self) -> u64 {
        match self {
            Fill::U8(_) => 1,
            Fill::U16(_) => 2,
            Fill::U32(_) => 4,
        }
    }
}

enum Op {
    Kernel {
        job: Job,
        duration_ns: u64,
        regions: Vec<Region>,
        enqueued_at: u64,
    },
    Copy {
        dst: usize,
        src: usize,
        len: usize,
        _keep: Vec<Region>,
    },
    Memset {
        dst: Region,
        fill: Fill,
        count: u64,
    },
    Write {
        dst: Region,
        data: Vec<u8>,
    },
    Record {
        event: Arc<Event>,
        generation: u64,
        enqueued_at: u64,
    },
    Wait {
        event: Arc<Event>,
        generation: u64,
    },
    Host(Box<dyn FnOnce() + Send>),
}

// SAFETY: the raw addresses inside Copy and Region point at memory the engine pins (Region holds
// an Arc of its mapping) or that the application promised to keep alive until the stream has
// finished the copy (the driver API's contract for asynchronous copies).
unsafe impl Send for Op {}

#[derive(Default)]
struct Progress {
    submitted: u64,
    completed: u64,
    error: Option<Error>,
}

/// An in-order queue of device work with its own worker thread.
pub struct Stream {
    id: u64,
    device: Arc<FakeDevice>,
    tx: Mutex<Option<SyncSender<Op>>>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl Stream {
    pub fn new(device: Arc<FakeDevice>) -> Result<Arc<Stream>> {
        let (tx, rx) = sync_channel::<Op>(STREAM_QUEUE_DEPTH);
        let progress: Arc<(Mutex<Progress>, Condvar)> = Arc::default();
        let p = progress.clone();
        let dev = device.clone();
        let worker = std::thread::Builder::new()
            .name(format!("fake-gpu{}-stream", device.index()))
            .spawn(move || run_stream(dev, rx, p))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!("cannot start a stream thread: {e}"),
                )
            })?;
        Ok(Arc::new(Stream {
            id: next_id(),
            device,
            tx: Mutex::new(Some(tx)),
            progress,
            worker: Mutex::new(Some(worker)),
        }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    fn submit(&self, op: Op) -> Result<()> {
        let tx = lock(&self.tx)
            .clone()
            .ok_or_else(|| Error::invalid_handle("stream has been destroyed"))?;
        lock(&self.progress.0).submitted += 1;
        if tx.send(op).is_err() {
            lock(&self.progress.0).submitted -= 1;
            return Err(Error::new(ErrorKind::DeviceLost, "stream worker is gone"));
        }
        Ok(())
    }

    /// Queue a kernel. Arguments are checked against the entry's signature now; the memory it
    /// touches is checked when it runs.
    pub fn launch(&self, f: &Function, cfg: &LaunchConfig, params: &[Vec<u8>]) -> Result<()> {
        if cfg.grid.contains(&0) || cfg.block.contains(&0) {
            return Err(Error::invalid_value(
                "grid and block dimensions must be at least 1",
            ));
        }
        if cfg.block.iter().map(|&b| b as u64).product::<u64>() > 1024 {
            return Err(Error::invalid_value("more than 1024 threads per block"));
        }
        kernels::check_args(&f.name, &f.param_sizes, params)?;
        let job = kernels::decode(f.builtin, params, cfg);
        let duration_ns = kernels::duration_ns(&job, cfg, self.device.profile())?;
        let regions = kernels::regions(&job)
            .into_iter()
            .map(|(addr, len)| self.device.resolve(addr, len))
            .collect::<Result<Vec<_>>>();
        match regions {
            Ok(regions) => self.submit(Op::Kernel {
                job,
                duration_ns,
                regions,
                enqueued_at: sys::now_ns(),
            }),
            Err(e) => {
                // Like a GPU, a bad address is found when the kernel runs: the error is sticky
                // and surfaces at the next synchronization.
                self.fail(e);
                Ok(())
            }
        }
    }

    fn fail(&self, e: Error) {
        let mut p = lock(&self.progress.0);
        if p.error.is_none() {
            p.error = Some(e);
        }
    }

    /// Queue a copy between raw addresses. Device-side ranges must be resolved by the caller
    /// and passed in `keep`.
    ///
    /// # Safety
    /// Any host range among `dst`/`src` must stay valid until the stream has run the copy.
    pub unsafe fn copy_async(
        &self,
        dst: usize,
        src: usize,
        len: usize,
        keep: Vec<Region>,
    ) -> Result<()> {
        self.submit(Op::Copy {
            dst,
            src,
            len,
            _keep: keep,
        })
    }

    /// Queue a write of `data` (already copied out of the caller's memory) to device memory.
    /// `dst` must have been resolved for `data.len()` bytes.
    pub fn write_async(&self, dst: Region, data: Vec<u8>) -> Result<()> {
        self.submit(Op::Write { dst, data })
    }

    pub fn memset_async(&self, dst: Region, fill: Fill, count: u64) -> Result<()> {
        self.submit(Op::Memset { dst, fill, count })
    }

    pub fn record(&self, event: &Arc<Event>) -> Result<()> {
        let generation = {
            let mut s = lock(&event.st);
            s.recorded += 1;
            s.recorded
        };
        self.submit(Op::Record {
            event: event.clone(),
            generation,
            enqueued_at: sys::now_ns(),
        })
    }

    pub fn wait_event(&self, event: &Arc<Event>) -> Result<()> {
        let generation = lock(&event.st).recorded;
        self.submit(Op::Wait {
            event: event.clone(),
            generation,
        })
    }

    /// Run a host function in stream order.
    pub fn host_fn(&self, f: Box<dyn FnOnce() + Send>) -> Result<()> {
        self.submit(Op::Host(f))
    }

    /// True when all queued work has finished.
    pub fn query(&self) -> bool {
        let p = lock(&self.progress.0);
        p.completed >= p.submitted
    }

    /// Wait for all queued work; returns the first error a queued operation hit.
    pub fn synchronize(&self) -> Result<()> {
        let (m, cv) = &*self.progress;
        let mut p = lock(m);
        let target = p.submitted;
        while p.completed < target {
            p = cv.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        match &p.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    /// Stop accepting work; the worker finishes what is queued and exits.
    pub fn close(&self) {
        lock(&self.tx).take();
    }

    fn join(&self) {
        self.close();
        if let Some(h) = lock(&self.worker).take()
            && h.thread().id() != std::thread::current().id()
        {
            let _ = h.join();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.join();
    }
}

enum OpKind {
    Kernel,
    Record,
    Other,
}

fn run_stream(
    device: Arc<FakeDevice>,
    rx: Receiver<Op>,
    progress: Arc<(Mutex<Progress>, Condvar)>,
) {
    sys::precise_timers_for_this_thread();
    let mut stream_time = 0u64;
    for op in rx {
        let kind = match &op {
            Op::Kernel { .. } => OpKind::Kernel,
            Op::Record { .. } => OpKind::Record,
            _ => OpKind::Other,
        };
        let result: Result<()> = match op {
            Op::Kernel {
                job,
                duration_ns,
                regions,
                enqueued_at,
            } => match device.reserve_ready(duration_ns, stream_time.max(enqueued_at)) {
                Ok((start, end)) => {
                    sys::sleep_until(start);
                    // SAFETY: every region of the job was resolved against a live allocation
                    // and `regions` keeps those mappings alive until this op is dropped.
                    unsafe { kernels::execute(&job) };
                    drop(regions);
                    sys::sleep_until(end);
                    stream_time = end;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Op::Copy { dst, src, len, .. } => {
                // SAFETY: device ranges are pinned by `_keep`; host ranges are the caller's
                // promise (see `copy_async`). Ranges may overlap, so use memmove semantics.
                unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, len) };
                Ok(())
            }
            Op::Write { dst, data } => {
                // SAFETY: `dst` was resolved for data.len() bytes and is pinned by the Region.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst.ptr, data.len()) };
                Ok(())
            }
            Op::Memset { dst, fill, count } => {
                // SAFETY: `dst` was resolved for count × width bytes and is pinned by the Region.
                unsafe { memset(dst.ptr, fill, count) };
                Ok(())
            }
            Op::Record {
                event,
                generation,
                enqueued_at,
            } => {
                stream_time = stream_time.max(enqueued_at);
                event.complete(generation, stream_time);
                Ok(())
            }
            Op::Wait { event, generation } => {
                event.wait_for(generation);
                Ok(())
            }
            Op::Host(f) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
                    Error::new(ErrorKind::LaunchFailed, "a stream host function panicked")
                })
            }
        };
        if !matches!(kind, OpKind::Kernel | OpKind::Record) {
            // Copies, memsets, waits and host functions took real time on this stream.
            stream_time = stream_time.max(sys::now_ns());
        }
        let (m, cv) = &*progress;
        let mut p = lock(m);
        if let Err(e) = result
            && p.error.is_none()
        {
            p.error = Some(e);
        }
        p.completed += 1;
        cv.notify_all();
    }
}

/// Fill `count` elements at `dst`.
///
/// # Safety
/// `dst` must be valid for `count × width` bytes of writes.
pub unsafe fn memset(dst: *mut u8, fill: Fill, count: u64) {
    match fill {
        // SAFETY: caller's contract.
        Fill::U8(v) => unsafe { std::ptr::write_bytes(dst, v, count as usize) },
        Fill::U16(v) => {
            for i in 0..count as usize {
                // SAFETY: caller's contract; unaligned-safe.
                unsafe { (dst as *mut u16).add(i).write_unaligned(v) };
            }
        }
        Fill::U32(v) => {
            for i in 0..count as usize {
                // SAFETY: caller's contract; unaligned-safe.
                unsafe { (dst as *mut u32).add(i).write_unaligned(v) };
            }
        }
    }
}

/// An execution context of this process on one device: a default stream, the streams created
/// under it, and ownership of allocations.
pub struct FakeContext {
    id: u64,
    device: Arc<FakeDevice>,
    default_stream: Arc<Stream>,
    streams: Mutex<Vec<Weak<Stream>>>,
}

impl FakeContext {
    pub fn new(device: Arc<FakeDevice>) -> Result<Arc<FakeContext>> {
        device.slot()?;
        Ok(Arc::new(FakeContext {
            id: next_id(),
            default_stream: Stream::new(device.clone())?,
            device,
            streams: Mutex::new(Vec::new()),
        }))
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn device(&self) -> &Arc<FakeDevice> {
        &self.device
    }

    pub fn default_stream(&self) -> &Arc<Stream> {
        &self.default_stream
    }

    pub fn create_stream(&self) -> Result<Arc<Stream>> {
        let s = Stream::new(self.device.clone())?;
        let mut v = lock(&self.streams);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(&s));
        Ok(s)
    }

    /// Wait for every stream of the context; returns the first error any of them hit.
    pub fn synchronize(&self) -> Result<()> {
        let streams: Vec<Arc<Stream>> = lock(&self.streams)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let mut first = self.default_stream.synchronize().err();
        for s in streams {
            if let Err(e) = s.synchronize() {
                first.get_or_insert(e);
            }
        }
        match first {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub fn alloc(&self, bytes: u64, kind: MemKind) -> Result<u64> {
        self.device.alloc(bytes, kind, self.id, None)
    }

    pub fn free(&self, ptr: u64) -> Result<()> {
        // Like cuMemFree, wait for work that may still use it.
        self.synchronize().ok();
        self.device.free(ptr).map(|_| ())
    }

    /// Synchronous copy (after all prior work on the context). Either side may be device memory
    /// (checked) or host memory given as a slice.
    pub fn copy_to_device(&self, dst: u64, src: &[u8]) -> Result<()> {
        self.synchronize()?;
        let r = self.device.resolve(dst, src.len() as u64)?;
        // SAFETY: `r` covers src.len() bytes of live device memory; `src` is a valid slice.
        // A slice cannot overlap device memory the engine mapped for this allocation unless
        // the caller aliased it deliberately, so use memmove semantics anyway.
        unsafe { std::ptr::copy(src.as_ptr(), r.ptr, src.len()) };
        Ok(())
    }

    pub fn copy_from_device(&self, dst: &mut [u8], src: u64) -> Result<()> {
        self.synchronize()?;
        let r = self.device.resolve(src, dst.len() as u64)?;
        // SAFETY: `r` covers dst.len() bytes of live device memory; `dst` is a valid slice.
        unsafe { std::ptr::copy(r.ptr, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    pub fn copy_device_to_device(&self, dst: u64, src: u64, bytes: u64) -> Result<()> {
        self.synchronize()?;
        let s = self.device.resolve(src, bytes)?;
        let d = self.device.resolve(dst, bytes)?;
        // SAFETY: both ranges are live device memory of `bytes` bytes; may overlap.
        unsafe { std::ptr::copy(s.ptr, d.ptr, bytes as usize) };
        Ok(())
    }

    pub fn memset(&self, dst: u64, fill: Fill, count: u64) -> Result<()> {
        self.synchronize()?;
        let r = self
            .device
            .resolve(dst, count.saturating_mul(fill.width()))?;
        // SAFETY: resolved for count × width bytes of live device memory.
        unsafe { memset(r.ptr, fill, count) };
        Ok(())
    }

    /// Resolve a device range for an asynchronous operation.
    pub fn region(&self, addr: u64, len: u64) -> Result<Region> {
        self.device.resolve(addr, len)
    }

    /// Device memory held by this context, copied out.
    pub fn snapshot(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.synchronize()?;
        let mut out = Vec::new();
        for (ptr, size) in self.device.allocations_of(self.id) {
            let mut buf = vec![0u8; size as usize];
            self.copy_from_device(&mut buf, ptr)?;
            out.push((ptr, buf));
        }
        Ok(out)
    }

    /// Put allocations back at their addresses (allocating those that are gone).
    pub fn restore(&self, allocations: &[(u64, Vec<u8>)]) -> Result<()> {
        self.synchronize()?;
        for (ptr, bytes) in allocations {
            match self.device.lookup(*ptr) {
                Some((base, size, _)) if base == *ptr && size == bytes.len() as u64 => {}
                Some(_) => {
                    return Err(Error::invalid_value(format!(
                        "cannot restore {} bytes at {ptr:#x}: another allocation is there",
                        bytes.len()
                    )));
                }
                None => {
                    self.device
                        .alloc(bytes.len() as u64, MemKind::Device, self.id, Some(*ptr))?;
                }
            }
            self.copy_to_device(*ptr, bytes)?;
        }
        Ok(())
    }
}

impl Drop for FakeContext {
    fn drop(&mut self) {
        let streams: Vec<Arc<Stream>> = lock(&self.streams)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for s in streams {
            s.close();
        }
        self.default_stream.close();
        let _ = self.default_stream.synchronize();
        self.device.free_all_of(self.id);
    }
}
