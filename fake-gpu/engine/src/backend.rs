//! The `tf-hal` backend over the simulated GPU engine.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tf_hal::*;

use crate::device::{FakeDevice, MemKind};
use crate::exec::{Event, FakeContext, Fill, Function, Module, Stream};
use crate::{FakeGpu, FakeGpuConfig};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The simulated GPU as a HAL backend.
#[derive(Clone)]
pub struct FakeBackend {
    gpu: Arc<FakeGpu>,
}

impl FakeBackend {
    /// The process-wide simulated machine from the environment.
    pub fn from_env() -> Result<Self> {
        Ok(FakeBackend {
            gpu: FakeGpu::global()?,
        })
    }

    /// A simulated machine from an explicit configuration (tests use their own shm directory).
    pub fn with_config(config: FakeGpuConfig) -> Result<Self> {
        Ok(FakeBackend {
            gpu: FakeGpu::new(config)?,
        })
    }

    pub fn gpu(&self) -> &Arc<FakeGpu> {
        &self.gpu
    }
}

impl Backend for FakeBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Fake
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(self
            .gpu
            .devices()
            .iter()
            .map(|d| d.info().clone())
            .collect())
    }

    fn device(&self, index: u32) -> Result<Arc<dyn tf_hal::Device>> {
        Ok(Arc::new(HalDevice(self.gpu.device(index)?.clone())))
    }

    fn topology(&self) -> Result<Vec<Link>> {
        let devs = self.gpu.devices();
        let mut links = Vec::new();
        for (i, a) in devs.iter().enumerate() {
            for b in &devs[i + 1..] {
                let (pa, pb) = (a.profile(), b.profile());
                let kind = if pa.numa_node != pb.numa_node {
                    LinkKind::CrossNuma
                } else if pa.nvlink && pb.nvlink {
                    LinkKind::NvLink { links: 18 }
                } else {
                    LinkKind::PcieHostBridge
                };
                links.push(Link {
                    a: a.index(),
                    b: b.index(),
                    kind,
                });
            }
        }
        Ok(links)
    }
}

struct HalDevice(Arc<FakeDevice>);

impl tf_hal::Device for HalDevice {
    fn info(&self) -> &DeviceInfo {
        self.0.info()
    }

    fn memory(&self) -> Result<MemoryInfo> {
        Ok(self.0.memory())
    }

    fn processes(&self) -> Result<Vec<ProcessUsage>> {
        Ok(self
            .0
            .segment()
            .processes()
            .into_iter()
            .map(Into::into)
            .collect())
    }

    fn busy_sample(&self) -> Result<Option<BusySample>> {
        let (at_ns, busy_ns) = self.0.segment().busy_now();
        Ok(Some(BusySample { at_ns, busy_ns }))
    }

    /// The sensor model over the segment's history ([`crate::model`]).
    fn sensors(&self) -> Result<tf_hal::Sensors> {
        Ok(self.0.sensors())
    }

    /// From the segment's history: no waiting.
    fn utilization(&self, window: Duration) -> Result<f64> {
        Ok(self.0.segment().utilization(window.as_nanos() as u64))
    }

    fn create_context(&self) -> Result<Arc<dyn Context>> {
        Ok(Arc::new(HalContext::new(FakeContext::new(self.0.clone())?)))
    }

    fn partition_templates(&self) -> Result<Vec<PartitionTemplate>> {
        Ok(self.0.partition_templates())
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>> {
        Ok(self.0.partitions())
    }

    fn create_partition(&self, template: &str) -> Result<PartitionInfo> {
        self.0.create_partition(template)
    }

    fn destroy_partition(&self, id: &str) -> Result<()> {
        self.0.destroy_partition(id)
    }
}

#[derive(Default)]
struct Tables {
    modules: HashMap<u64, Arc<Module>>,
    functions: HashMap<u64, Arc<Function>>,
    streams: HashMap<u64, Arc<Stream>>,
    events: HashMap<u64, Arc<Event>>,
}

/// A HAL context: the engine's context plus handle tables.
pub struct HalContext {
    ctx: Arc<FakeContext>,
    tables: Mutex<Tables>,
    next: AtomicU64,
}

fn missing(what: &str, h: u64) -> Error {
    Error::invalid_handle(format!("unknown {what} handle {h:#x}"))
}

impl HalContext {
    pub fn new(ctx: Arc<FakeContext>) -> Self {
        HalContext {
            ctx,
            tables: Mutex::new(Tables::default()),
            next: AtomicU64::new(0x1000),
        }
    }

    pub fn engine(&self) -> &Arc<FakeContext> {
        &self.ctx
    }

    fn handle(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn stream(&self, s: StreamHandle) -> Result<Arc<Stream>> {
        if s == StreamHandle::DEFAULT {
            return Ok(self.ctx.default_stream().clone());
        }
        lock(&self.tables)
            .streams
            .get(&s.0)
            .cloned()
            .ok_or_else(|| missing("stream", s.0))
    }

    fn event(&self, e: EventHandle) -> Result<Arc<Event>> {
        lock(&self.tables)
            .events
            .get(&e.0)
            .cloned()
            .ok_or_else(|| missing("event", e.0))
    }
}

impl Context for HalContext {
    fn device_index(&self) -> u32 {
        self.ctx.device().index()
    }

    fn mem_alloc(&self, bytes: u64) -> Result<DevicePtr> {
        self.ctx.alloc(bytes, MemKind::Device).map(DevicePtr)
    }

    fn mem_free(&self, ptr: DevicePtr) -> Result<()> {
        self.ctx.free(ptr.0)
    }

    fn mem_info(&self) -> Result<MemoryInfo> {
        Ok(self.ctx.device().memory())
    }

    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.ctx.copy_to_device(dst.0, src)
    }

    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        self.ctx.copy_from_device(dst, src.0)
    }

    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: u64) -> Result<()> {
        self.ctx.copy_device_to_device(dst.0, src.0, bytes)
    }

    fn memset_d8(&self, dst: DevicePtr, value: u8, count: u64) -> Result<()> {
        self.ctx.memset(dst.0, Fill::U8(value), count)
    }

    fn memset_d32(&self, dst: DevicePtr, value: u32, count: u64) -> Result<()> {
        self.ctx.memset(dst.0, Fill::U32(value), count)
    }

    fn load_module(&self, image: ModuleImage<'_>) -> Result<ModuleHandle> {
        let m = match image {
            ModuleImage::Ptx(text) => Module::from_ptx(text)?,
            ModuleImage::Binary(bytes) => Module::from_image(bytes)?,
            ModuleImage::SpirV(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidImage,
                    "the simulated GPU runs PTX modules, not SPIR-V (use the vulkan backend for SPIR-V)",
                ));
            }
        };
        let h = self.handle();
        lock(&self.tables).modules.insert(h, m);
        Ok(ModuleHandle(h))
    }

    fn unload_module(&self, module: ModuleHandle) -> Result<()> {
        lock(&self.tables)
            .modules
            .remove(&module.0)
            .map(|_| ())
            .ok_or_else(|| missing("module", module.0))
    }

    fn function(&self, module: ModuleHandle, name: &str) -> Result<FunctionHandle> {
        let m = lock(&self.tables)
            .modules
            .get(&module.0)
            .cloned()
            .ok_or_else(|| missing("module", module.0))?;
        let f = m.function(name)?;
        let h = self.handle();
        lock(&self.tables).functions.insert(h, f);
        Ok(FunctionHandle(h))
    }

    fn launch(
        &self,
        function: FunctionHandle,
        config: &LaunchConfig,
        stream: StreamHandle,
        args: &KernelArgs,
    ) -> Result<()> {
        let f = lock(&self.tables)
            .functions
            .get(&function.0)
            .cloned()
            .ok_or_else(|| missing("function", function.0))?;
        self.stream(stream)?.launch(&f, config, args.params())
    }

    fn stream_create(&self) -> Result<StreamHandle> {
        let s = self.ctx.create_stream()?;
        let h = self.handle();
        lock(&self.tables).streams.insert(h, s);
        Ok(StreamHandle(h))
    }

    fn stream_destroy(&self, stream: StreamHandle) -> Result<()> {
        let s = lock(&self.tables)
            .streams
            .remove(&stream.0)
            .ok_or_else(|| missing("stream", stream.0))?;
        s.close();
        Ok(())
    }

    fn stream_synchronize(&self, stream: StreamHandle) -> Result<()> {
        self.stream(stream)?.synchronize()
    }

    fn stream_wait_event(&self, stream: StreamHandle, event: EventHandle) -> Result<()> {
        let e = self.event(event)?;
        self.stream(stream)?.wait_event(&e)
    }

    fn event_create(&self) -> Result<EventHandle> {
        let h = self.handle();
        lock(&self.tables).events.insert(h, Event::new());
        Ok(EventHandle(h))
    }

    fn event_destroy(&self, event: EventHandle) -> Result<()> {
        lock(&self.tables)
            .events
            .remove(&event.0)
            .map(|_| ())
            .ok_or_else(|| missing("event", event.0))
    }

    fn event_record(&self, event: EventHandle, stream: StreamHandle) -> Result<()> {
        let e = self.event(event)?;
        self.stream(stream)?.record(&e)
    }

    fn event_synchronize(&self, event: EventHandle) -> Result<()> {
        self.event(event)?.synchronize();
        Ok(())
    }

    fn event_query(&self, event: EventHandle) -> Result<bool> {
        Ok(self.event(event)?.query())
    }

    fn event_elapsed(&self, start: EventHandle, end: EventHandle) -> Result<Duration> {
        Event::elapsed(&*self.event(start)?, &*self.event(end)?)
    }

    fn synchronize(&self) -> Result<()> {
        self.ctx.synchronize()
    }

    fn copy_htod_async(&self, dst: DevicePtr, src: &[u8], stream: StreamHandle) -> Result<()> {
        let s = self.stream(stream)?;
        let region = self.ctx.region(dst.0, src.len() as u64)?;
        s.write_async(region, src.to_vec())
    }

    fn copy_dtod_async(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        let s = self.stream(stream)?;
        let (d, r) = (
            self.ctx.region(dst.0, bytes)?,
            self.ctx.region(src.0, bytes)?,
        );
        let (da, sa) = (d.ptr as usize, r.ptr as usize);
        // SAFETY: both ranges were resolved against live allocations for `bytes` bytes, and the
        // regions passed as `keep` hold their mappings until the stream has run the copy.
        unsafe { s.copy_async(da, sa, bytes as usize, vec![d, r]) }
    }

    fn memset_d16(&self, dst: DevicePtr, value: u16, count: u64) -> Result<()> {
        self.ctx.memset(dst.0, Fill::U16(value), count)
    }

    fn memset_d8_async(
        &self,
        dst: DevicePtr,
        value: u8,
        count: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        let region = self.ctx.region(dst.0, count)?;
        self.stream(stream)?
            .memset_async(region, Fill::U8(value), count)
    }

    fn memset_d16_async(
        &self,
        dst: DevicePtr,
        value: u16,
        count: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        let region = self.ctx.region(dst.0, count.saturating_mul(2))?;
        self.stream(stream)?
            .memset_async(region, Fill::U16(value), count)
    }

    fn memset_d32_async(
        &self,
        dst: DevicePtr,
        value: u32,
        count: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        let region = self.ctx.region(dst.0, count.saturating_mul(4))?;
        self.stream(stream)?
            .memset_async(region, Fill::U32(value), count)
    }

    fn read_device(
        &self,
        src: DevicePtr,
        len: u64,
        sink: &mut dyn FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        self.ctx.synchronize()?;
        let region = self.ctx.region(src.0, len)?;
        // SAFETY: `region` was resolved for `len` bytes of live device memory (host memory on
        // the simulated GPU) and pins its mapping until it is dropped, after `sink` returns.
        // Work queued after this point may write the range concurrently, which changes the
        // bytes read, as on a GPU, not the soundness of the read.
        let bytes = unsafe { std::slice::from_raw_parts(region.ptr as *const u8, len as usize) };
        sink(0, bytes)
    }

    fn write_device(
        &self,
        dst: DevicePtr,
        len: u64,
        source: &mut dyn FnMut(u64, &mut [u8]) -> Result<()>,
    ) -> Result<()> {
        self.ctx.synchronize()?;
        let region = self.ctx.region(dst.0, len)?;
        // SAFETY: as in read_device: `len` bytes of live device memory (host memory here),
        // pinned by `region` until `source` has returned.
        let bytes = unsafe { std::slice::from_raw_parts_mut(region.ptr, len as usize) };
        source(0, bytes)
    }

    fn stream_query(&self, stream: StreamHandle) -> Result<bool> {
        Ok(self.stream(stream)?.query())
    }

    fn function_param_sizes(&self, function: FunctionHandle) -> Result<Vec<usize>> {
        lock(&self.tables)
            .functions
            .get(&function.0)
            .map(|f| f.param_sizes.clone())
            .ok_or_else(|| missing("function", function.0))
    }

    fn snapshot(&self) -> Result<ContextSnapshot> {
        Ok(ContextSnapshot {
            device_uuid: self.ctx.device().info().uuid.clone(),
            allocations: self
                .ctx
                .snapshot()?
                .into_iter()
                .map(|(p, b)| (DevicePtr(p), b))
                .collect(),
        })
    }

    fn restore(&self, snapshot: &ContextSnapshot) -> Result<()> {
        if snapshot.device_uuid != self.ctx.device().info().uuid {
            return Err(Error::invalid_value(format!(
                "snapshot was taken on device {}, not {}",
                snapshot.device_uuid,
                self.ctx.device().info().uuid
            )));
        }
        let allocs: Vec<(u64, Vec<u8>)> = snapshot
            .allocations
            .iter()
            .map(|(p, b)| (p.0, b.clone()))
            .collect();
        self.ctx.restore(&allocs)
    }
}
