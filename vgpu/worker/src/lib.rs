//! # tf-remote-worker
//!
//! The worker of a remote vGPU: it owns one device (through any `tf-hal` backend the command
//! line gives it), accepts clients on a listening address, and executes their calls.
//!
//! - Every connection authenticates with the worker's token before anything else
//!   (`tf_remote_protocol::session`); a wrong token is refused and logged with the peer.
//! - Each connection is served by its own thread, with its own handle namespace: contexts,
//!   modules, functions, streams and events are named by the client and translated to the
//!   backend's handles in tables private to the connection, and every device address a
//!   copy, memset or free names must lie in one of the connection's own allocations. A forged
//!   or foreign handle is an `InvalidHandle`/`InvalidValue` error, never another client's
//!   object. (Addresses inside kernel arguments are opaque bytes: on a real GPU each client's
//!   context has its own address space; the simulated GPU does not model that.)
//! - Calls that answer nothing (launches, frees, async copies and memsets, stream and event
//!   creation) are executed without a reply; the first error among them is kept and returned
//!   by the connection's next synchronous call (which is then not executed), as the CUDA driver
//!   reports asynchronous errors.
//! - Hard isolation: the vGPU's VRAM quota is charged to a limiter region the worker owns
//!   (`tf_vgpu_limiter::Region`), and its compute share paces launches through the same
//!   region's admission (GCRA), with the limiter's `Controller` adjusting the pacing from the
//!   device time the worker's process used. Clients cannot bypass either: they never touch the
//!   device.
//! - On a node daemon's vGPU (`tensor-fusion run --vgpu NAME -- tensor-fusion worker ...`, with
//!   no limits of its own): the worker is one of the vGPU's processes; its charges and launches
//!   go through the vGPU's limits page and region (`tf_vgpu_limiter::Client`, as an interposed
//!   program's do), so the daemon's control loop paces it with the vGPU's other programs.
//! - A connection that ends — closed, killed, or cut after a protocol error — gives back
//!   everything it held: its streams and events are destroyed, its allocations freed, its
//!   modules unloaded, its contexts dropped, its quota uncharged.
//!
//! Design rules: the worker trusts nothing a client sends (the protocol decoder bounds every
//! frame; this crate checks every handle and range); it owns every resource it opens and
//! releases it when the owner goes; it knows devices only through `tf-hal`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tf_hal::{
    Backend, Context, Device, DeviceInfo, DevicePtr, Error, ErrorKind, EventHandle, FunctionHandle,
    KernelArgs, LaunchConfig, MemoryInfo, ModuleHandle, ModuleImage, Result, StreamHandle,
};
use tf_remote_protocol::link::{Link, LinkError};
use tf_remote_protocol::session::{Accepted, Listener};
use tf_remote_protocol::wire::{
    self, FORMAT_BINARY, FORMAT_PTX, FORMAT_SPIRV, Header, MAX_MODULE, Msg, U32List, flags,
};
use tf_vgpu_limiter::{Controller, Estimator, Limits, Region, RegionMap};

/// What a worker serves and how.
#[derive(Debug, Clone)]
pub struct Config {
    /// The backend's device to serve.
    pub device: u32,
    /// The token every client must present.
    pub token: Vec<u8>,
    /// VRAM quota of the vGPU, shared by the worker's clients (`None`: the whole device).
    pub vram_quota: Option<u64>,
    /// Share of the device's time in (0, 1) (`None`: unlimited).
    pub compute_share: Option<f64>,
}

/// Counters, for logs and tests.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub refused: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub active: AtomicUsize,
}

/// A worker: one device of a backend, served to authenticated clients.
pub struct Worker {
    backend: Arc<dyn Backend>,
    device: Arc<dyn Device>,
    /// The device as clients see it: index 0, the quota as its memory, backend `remote`.
    info: DeviceInfo,
    config: Config,
    region: RegionMap,
    slot: usize,
    /// The node daemon's vGPU this worker runs on, if any (its limits page and region).
    vgpu: Option<tf_vgpu_limiter::Client>,
    description: String,
    /// Whether launches are timed with events for the controller (a compute share on a backend
    /// with no per-process busy time, like a real NVIDIA driver).
    sample_launches: AtomicBool,
    pub stats: Stats,
}

fn lost(what: &str) -> Error {
    Error::new(ErrorKind::InvalidHandle, what.to_string())
}

impl Worker {
    /// Open device `config.device` of `backend` and set up the vGPU's limits.
    pub fn new(backend: Arc<dyn Backend>, config: Config) -> Result<Worker> {
        let device = backend.device(config.device)?;
        let real = device.info().clone();
        if let Some(q) = config.vram_quota
            && q > real.total_memory_bytes
        {
            return Err(Error::invalid_value(format!(
                "a VRAM quota of {q} bytes is more than device {} has ({} bytes)",
                config.device, real.total_memory_bytes
            )));
        }
        // Without limits of its own, a worker started on a node daemon's vGPU follows that
        // vGPU's limits page (the daemon paces it with the vGPU's other programs).
        let vgpu = if config.vram_quota.is_none() && config.compute_share.is_none() {
            tf_vgpu_limiter::Client::from_env()
        } else {
            None
        };
        let mut config = config;
        if let Some(c) = &vgpu {
            config.vram_quota = c.vram_quota();
            tracing::info!(quota = ?config.vram_quota, "serving a node daemon's vGPU: its limits page paces the launches");
        }
        let mut info = real.clone();
        info.index = 0;
        info.total_memory_bytes = config.vram_quota.unwrap_or(real.total_memory_bytes);
        info.capabilities.hard_limit = true;
        info.capabilities.remoting = true;
        info.capabilities.snapshot = false;
        info.capabilities.partitioning = false;
        let limits = Limits {
            vram_quota: config.vram_quota,
            compute_share: config.compute_share.filter(|s| *s < 1.0),
        };
        // The daemon's vGPU holds the quota; the private region only counts.
        let limits = if vgpu.is_some() {
            Limits {
                vram_quota: None,
                compute_share: None,
            }
        } else {
            limits
        };
        let region = Region::private(&real.uuid, &limits);
        let slot = region.register(std::process::id()).ok_or_else(|| {
            Error::new(
                ErrorKind::Other,
                "the worker's limiter region has no free slot",
            )
        })?;
        let description = format!(
            "tensor-fusion {} worker, {} device {} ({}, {})",
            env!("CARGO_PKG_VERSION"),
            backend.kind(),
            config.device,
            real.model,
            real.uuid
        );
        Ok(Worker {
            backend,
            device,
            info,
            config,
            region,
            slot,
            vgpu,
            description,
            sample_launches: AtomicBool::new(false),
            stats: Stats::default(),
        })
    }

    /// The device as clients see it.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// The vGPU's limiter region (usage, quota, pacing).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// Accept and serve clients until `stop` is set (then shut `listener` down from another
    /// thread, or connect once, to wake the accept). Each client gets its own thread.
    pub fn serve(self: &Arc<Self>, listener: &Listener, stop: &AtomicBool) {
        let controller = self.clone();
        let ctl_stop = Arc::new(AtomicBool::new(false));
        let flag = ctl_stop.clone();
        let ctl = std::thread::Builder::new()
            .name("worker-controller".into())
            .spawn(move || controller.run_controller(&flag));
        while !stop.load(Ordering::Acquire) {
            let (pending, peer) = match listener.accept() {
                Ok(p) => p,
                Err(e) => {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    tracing::warn!("accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            if stop.load(Ordering::Acquire) {
                break;
            }
            let me = self.clone();
            let spawned = std::thread::Builder::new()
                .name("worker-conn".into())
                .spawn(move || me.handshake_and_serve(pending, peer));
            if let Err(e) = spawned {
                tracing::error!("cannot start a thread for a client: {e}");
            }
        }
        ctl_stop.store(true, Ordering::Release);
        if let Ok(h) = ctl {
            let _ = h.join();
        }
    }

    fn handshake_and_serve(&self, pending: tf_remote_protocol::session::Pending, peer: String) {
        let quota = self.config.vram_quota.unwrap_or(0);
        match pending.authenticate(&self.config.token, &self.description, quota) {
            Accepted::Ok(link) => {
                let n = self.stats.connections.fetch_add(1, Ordering::Relaxed) + 1;
                self.stats.active.fetch_add(1, Ordering::Relaxed);
                tracing::info!(client = n, %peer, "client connected");
                self.serve_link(link, n);
                self.stats.active.fetch_sub(1, Ordering::Relaxed);
            }
            Accepted::Refused(why) => {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%peer, "connection refused: {why}");
            }
        }
    }

    /// The compute-share control loop: every 100 ms, pacing from the device time used.
    fn run_controller(&self, stop: &AtomicBool) {
        let Some(share) = self.config.compute_share.filter(|s| *s < 1.0) else {
            return;
        };
        let mut c = Controller::new(share);
        let mut estimator = Estimator::for_backend(self.backend.kind());
        let me = std::process::id();
        self.sample_launches
            .store(estimator == Estimator::Samples, Ordering::Release);
        while !stop.load(Ordering::Acquire) {
            let busy = match estimator {
                Estimator::Busy => match self.device.processes() {
                    // A backend that keeps no busy time per process: pace from launch samples.
                    Ok(ps) if !ps.is_empty() && ps.iter().all(|p| p.busy_ns.is_none()) => {
                        tracing::warn!(
                            "the backend has no per-process busy time; pacing from launch samples"
                        );
                        estimator = Estimator::Samples;
                        self.sample_launches.store(true, Ordering::Release);
                        0
                    }
                    // The worker's own busy time (none yet before its first context).
                    Ok(ps) => ps
                        .iter()
                        .find(|p| p.pid == me)
                        .and_then(|p| p.busy_ns)
                        .unwrap_or(0),
                    Err(_) => 0,
                },
                Estimator::Samples => 0,
            };
            let t = c.tick(&self.region, tf_os::now_ns(), estimator, busy);
            tracing::debug!(?t, "controller tick");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Serve one authenticated connection until it ends, then release what it held.
    pub fn serve_link(&self, mut link: Box<dyn Link>, client: u64) {
        let mut conn = Conn::default();
        let mut buf = Vec::new();
        let end = loop {
            let h = match link.recv(&mut buf) {
                Ok(h) => h,
                Err(LinkError::Closed) => break "closed the connection".to_string(),
                Err(LinkError::Protocol(e)) => {
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    refuse_frame(&mut *link, &e.to_string());
                    break format!("sent a bad frame ({e}); connection closed");
                }
                Err(LinkError::Io(e)) => break format!("connection failed: {e}"),
            };
            let msg = match Msg::decode(h.tag, &buf) {
                Ok(m) => m,
                Err(e) => {
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    refuse_frame(&mut *link, &e.to_string());
                    break format!("sent a bad frame ({e}); connection closed");
                }
            };
            match self.handle(&mut conn, &mut *link, h, msg) {
                Ok(()) => {}
                Err(Stop::Link(LinkError::Closed)) => break "closed the connection".to_string(),
                Err(Stop::Link(e)) => break format!("connection failed: {e}"),
                Err(Stop::Protocol(why)) => {
                    self.stats.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    refuse_frame(&mut *link, &why);
                    break format!("{why}; connection closed");
                }
            }
        };
        let held = conn.charged;
        let contexts = conn.contexts.len();
        self.release(&mut conn);
        tracing::info!(
            client,
            contexts,
            bytes_released = held,
            "client {end}; everything it held is released"
        );
    }

    fn release(&self, conn: &mut Conn) {
        for (_, c) in conn.contexts.drain() {
            self.release_context(c, &mut conn.charged);
        }
    }

    /// Give `bytes` back to the private region and to the daemon's vGPU, if any.
    fn uncharge(&self, bytes: u64) {
        self.region.uncharge(self.slot, bytes);
        if let Some(v) = &self.vgpu {
            v.uncharge(bytes);
        }
    }

    fn release_context(&self, mut c: CtxState, charged: &mut u64) {
        let _ = c.ctx.synchronize();
        if let Some(x) = c.sampler.take() {
            let _ = c.ctx.event_destroy(x.start);
            let _ = c.ctx.event_destroy(x.end);
        }
        for (_, e) in c.events.drain() {
            let _ = c.ctx.event_destroy(e);
        }
        for (_, s) in c.streams.drain() {
            let _ = c.ctx.stream_destroy(s);
        }
        for (p, size) in std::mem::take(&mut c.allocs) {
            let _ = c.ctx.mem_free(DevicePtr(p));
            self.uncharge(size);
            *charged = charged.saturating_sub(size);
        }
        for (_, m) in c.modules.drain() {
            let _ = c.ctx.unload_module(m);
        }
    }

    fn memory(&self, ctx: Option<&dyn Context>) -> Result<MemoryInfo> {
        match self.config.vram_quota {
            Some(q) => {
                let used = self.region.vram_used().min(q);
                Ok(MemoryInfo {
                    total_bytes: q,
                    used_bytes: used,
                    free_bytes: q - used,
                })
            }
            None => match ctx {
                Some(c) => c.mem_info(),
                None => self.device.memory(),
            },
        }
    }

    fn check_device(&self, device: u32) -> Result<()> {
        if device == 0 {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::InvalidDevice,
                format!("no device {device}: this worker serves one device (0)"),
            ))
        }
    }

    /// Handle one message. Protocol violations end the connection.
    fn handle(
        &self,
        conn: &mut Conn,
        link: &mut dyn Link,
        h: Header,
        msg: Msg<'_>,
    ) -> std::result::Result<(), Stop> {
        use Msg::*;
        match msg {
            Ping { n } => return reply(link, &Pong { n }),
            Devices {} => {
                return self.sync(conn, link, |_| {
                    json(&vec![self.info.clone()]).map(Answer::Json)
                });
            }
            Topology {} => return self.sync(conn, link, |_| Ok(Answer::Json("[]".into()))),
            DeviceMemory { device } => {
                return self.sync(conn, link, |_| {
                    self.check_device(device)?;
                    self.memory(None).map(Answer::Memory)
                });
            }
            DeviceProcesses { device } => {
                return self.sync(conn, link, |_| {
                    self.check_device(device)?;
                    json(&self.device.processes()?).map(Answer::Json)
                });
            }
            DeviceBusy { device } => {
                return self.sync(conn, link, |_| {
                    self.check_device(device)?;
                    json(&self.device.busy_sample()?).map(Answer::Json)
                });
            }
            DeviceUtilization { device, window_ns } => {
                return self.sync(conn, link, |_| {
                    self.check_device(device)?;
                    let w = Duration::from_nanos(window_ns.min(10_000_000_000));
                    Ok(Answer::Value(self.device.utilization(w)?.to_bits()))
                });
            }
            ContextCreate { ctx, device } => {
                return self.sync(conn, link, |conn| {
                    self.check_device(device)?;
                    if conn.contexts.contains_key(&ctx) {
                        return Err(Error::invalid_value(format!(
                            "context {ctx:#x} already exists"
                        )));
                    }
                    let c = self.device.create_context()?;
                    conn.contexts.insert(ctx, CtxState::new(c));
                    Ok(Answer::Done)
                });
            }
            ContextDestroy { ctx } => {
                match conn.contexts.remove(&ctx) {
                    Some(c) => self.release_context(c, &mut conn.charged),
                    None => conn.defer(lost(&format!("unknown context {ctx:#x}"))),
                }
                return Ok(());
            }
            _ => {}
        }
        // Everything else names a context of this connection.
        let ctx_id = match &msg {
            Synchronize { ctx }
            | MemInfo { ctx }
            | MemAlloc { ctx, .. }
            | MemFree { ctx, .. }
            | CopyHtoD { ctx, .. }
            | CopyDtoH { ctx, .. }
            | CopyDtoD { ctx, .. }
            | Memset { ctx, .. }
            | ModuleLoad { ctx, .. }
            | ModuleUnload { ctx, .. }
            | FunctionGet { ctx, .. }
            | Launch { ctx, .. }
            | StreamCreate { ctx, .. }
            | StreamDestroy { ctx, .. }
            | StreamSynchronize { ctx, .. }
            | StreamQuery { ctx, .. }
            | StreamWaitEvent { ctx, .. }
            | EventCreate { ctx, .. }
            | EventDestroy { ctx, .. }
            | EventRecord { ctx, .. }
            | EventSynchronize { ctx, .. }
            | EventQuery { ctx, .. }
            | EventElapsed { ctx, .. } => *ctx,
            other => {
                return Err(Stop::Protocol(format!(
                    "a client may not send {}",
                    other.name()
                )));
            }
        };
        match msg {
            // --- synchronous calls ---
            Synchronize { .. } => self.sync(conn, link, |conn| {
                conn.ctx(ctx_id)?.ctx.synchronize().map(|()| Answer::Done)
            }),
            MemInfo { .. } => self.sync(conn, link, |conn| {
                let c = conn.ctx(ctx_id)?;
                self.memory(Some(&*c.ctx)).map(Answer::Memory)
            }),
            MemAlloc { bytes, .. } => self.sync(conn, link, |conn| {
                let charged = &mut conn.charged;
                let c = conn
                    .contexts
                    .get_mut(&ctx_id)
                    .ok_or_else(|| lost(&format!("unknown context {ctx_id:#x}")))?;
                if let Some(v) = &self.vgpu
                    && !v.charge(bytes)
                {
                    return Err(Error::out_of_memory(format!(
                        "{bytes} more bytes would pass the vGPU's VRAM quota ({} of {} bytes in use)",
                        v.vram_used(),
                        v.vram_quota().unwrap_or(0)
                    )));
                }
                if let Err(o) = self.region.charge(self.slot, bytes) {
                    if let Some(v) = &self.vgpu {
                        v.uncharge(bytes);
                    }
                    return Err(Error::out_of_memory(format!(
                        "{bytes} more bytes would pass the vGPU's VRAM quota ({} of {} bytes in use)",
                        o.used, o.quota
                    )));
                }
                match c.ctx.mem_alloc(bytes) {
                    Ok(p) => {
                        c.allocs.insert(p.0, bytes);
                        *charged += bytes;
                        Ok(Answer::Ptr(p.0))
                    }
                    Err(e) => {
                        self.uncharge(bytes);
                        Err(e)
                    }
                }
            }),
            CopyDtoH {
                stream,
                src,
                len,
                flags: f,
                ..
            } => self.copy_dtoh(conn, link, ctx_id, stream, src, len, f),
            CopyHtoD {
                stream,
                dst,
                flags: f,
                ..
            } => {
                let len = h.data_len as u64;
                let r = conn.ctx(ctx_id).and_then(|c| {
                    c.check_range(dst, len)?;
                    let s = if f & flags::ASYNC != 0 {
                        Some(c.stream(stream)?)
                    } else {
                        None
                    };
                    if s.is_none() {
                        // Straight from the transport into device memory where the backend
                        // lets the host write it in place.
                        return c.ctx.write_device(DevicePtr(dst), len, &mut |_, piece| {
                            link.recv_data_into(piece).map_err(|e| {
                                Error::new(ErrorKind::DeviceLost, format!("the client's data: {e}"))
                            })
                        });
                    }
                    let mut first: Option<Error> = None;
                    link.recv_data_with(&mut |off, piece| {
                        if first.is_some() {
                            return;
                        }
                        let at = DevicePtr(dst + off as u64);
                        let r = match s {
                            Some(s) => c.ctx.copy_htod_async(at, piece, s),
                            None => c.ctx.copy_htod(at, piece),
                        };
                        if let Err(e) = r {
                            first = Some(e);
                        }
                    })
                    .map_err(|e| Error::new(ErrorKind::DeviceLost, e.to_string()))?;
                    first.map_or(Ok(()), Err)
                });
                if f & flags::ACK != 0 {
                    let r = match conn.deferred.take() {
                        Some(e) => Err(e),
                        None => r,
                    };
                    answer(link, r.map(|()| Answer::Done))
                } else {
                    if let Err(e) = r {
                        conn.defer(e);
                    }
                    Ok(())
                }
            }
            ModuleLoad { module, format, flags: f, .. } => {
                let r = conn.ctx_mut(ctx_id).and_then(|c| {
                    let buf = c.module_buf.get_or_insert_with(Vec::new);
                    if buf.len() + h.data_len as usize > MAX_MODULE {
                        c.module_buf = None;
                        return Err(Error::invalid_value(format!(
                            "module images are limited to {MAX_MODULE} bytes"
                        )));
                    }
                    let _ = link.recv_data_with(&mut |_, piece| buf.extend_from_slice(piece));
                    Ok(())
                });
                if f & flags::MORE != 0 {
                    if let Err(e) = r {
                        conn.defer(e);
                    }
                    return Ok(());
                }
                self.sync(conn, link, |conn| {
                    r?;
                    let c = conn.ctx_mut(ctx_id)?;
                    let image = c.module_buf.take().unwrap_or_default();
                    if c.modules.contains_key(&module) || module == 0 {
                        return Err(Error::invalid_value(format!(
                            "module handle {module:#x} is in use"
                        )));
                    }
                    let m = match format {
                        FORMAT_PTX => {
                            let end = image.iter().position(|&b| b == 0).unwrap_or(image.len());
                            let text = std::str::from_utf8(&image[..end]).map_err(|_| {
                                Error::new(ErrorKind::InvalidImage, "PTX text is not UTF-8")
                            })?;
                            c.ctx.load_module(ModuleImage::Ptx(text))?
                        }
                        FORMAT_BINARY => c.ctx.load_module(ModuleImage::Binary(&image))?,
                        FORMAT_SPIRV => c.ctx.load_module(ModuleImage::SpirV(&image))?,
                        other => {
                            return Err(Error::invalid_value(format!(
                                "unknown module format {other}"
                            )));
                        }
                    };
                    c.modules.insert(module, m);
                    Ok(Answer::Done)
                })
            }
            FunctionGet {
                module,
                function,
                name,
                ..
            } => self.sync(conn, link, |conn| {
                let c = conn.ctx_mut(ctx_id)?;
                let m = *c
                    .modules
                    .get(&module)
                    .ok_or_else(|| lost(&format!("unknown module {module:#x}")))?;
                if c.functions.contains_key(&function) || function == 0 {
                    return Err(Error::invalid_value(format!(
                        "function handle {function:#x} is in use"
                    )));
                }
                let f = c.ctx.function(m, name)?;
                c.functions.insert(function, f);
                let (known, sizes) = match c.ctx.function_param_sizes(f) {
                    Ok(s) => (true, s.into_iter().map(|x| x as u32).collect()),
                    Err(_) => (false, Vec::new()),
                };
                Ok(Answer::Params(known, sizes))
            }),
            StreamSynchronize { stream, .. } => self.sync(conn, link, |conn| {
                let c = conn.ctx(ctx_id)?;
                c.ctx.stream_synchronize(c.stream(stream)?).map(|()| Answer::Done)
            }),
            StreamQuery { stream, .. } => self.sync(conn, link, |conn| {
                let c = conn.ctx(ctx_id)?;
                c.ctx
                    .stream_query(c.stream(stream)?)
                    .map(|b| Answer::Value(b as u64))
            }),
            EventSynchronize { event, .. } => self.sync(conn, link, |conn| {
                let c = conn.ctx(ctx_id)?;
                c.ctx.event_synchronize(c.event(event)?).map(|()| Answer::Done)
            }),
            EventQuery { event, .. } => self.sync(conn, link, |conn| {
                let c = conn.ctx(ctx_id)?;
                c.ctx
                    .event_query(c.event(event)?)
                    .map(|b| Answer::Value(b as u64))
            }),
            EventElapsed { start, end, .. } => self.sync(conn, link, |conn| {
                let c = conn.ctx(ctx_id)?;
                c.ctx
                    .event_elapsed(c.event(start)?, c.event(end)?)
                    .map(|d| Answer::Value(d.as_nanos() as u64))
            }),

            // --- calls answered by nothing: errors wait for the next synchronous call ---
            other => {
                let r = self.run_async(conn, ctx_id, other);
                if let Err(e) = r {
                    conn.defer(e);
                }
                Ok(())
            }
        }
    }

    fn run_async(&self, conn: &mut Conn, ctx_id: u64, msg: Msg<'_>) -> Result<()> {
        use Msg::*;
        let charged = &mut conn.charged;
        let c = conn
            .contexts
            .get_mut(&ctx_id)
            .ok_or_else(|| lost(&format!("unknown context {ctx_id:#x}")))?;
        match msg {
            MemFree { ptr, .. } => {
                let size = *c.allocs.get(&ptr).ok_or_else(|| {
                    Error::invalid_value(format!(
                        "{ptr:#x} is not the start of an allocation of this client"
                    ))
                })?;
                c.ctx.mem_free(DevicePtr(ptr))?;
                c.allocs.remove(&ptr);
                self.uncharge(size);
                *charged = charged.saturating_sub(size);
                Ok(())
            }
            CopyDtoD {
                stream,
                dst,
                src,
                bytes,
                flags: f,
                ..
            } => {
                c.check_range(dst, bytes)?;
                c.check_range(src, bytes)?;
                if f & flags::ASYNC != 0 {
                    let s = c.stream(stream)?;
                    c.ctx
                        .copy_dtod_async(DevicePtr(dst), DevicePtr(src), bytes, s)
                } else {
                    c.ctx.copy_dtod(DevicePtr(dst), DevicePtr(src), bytes)
                }
            }
            Memset {
                stream,
                dst,
                value,
                width,
                count,
                flags: f,
                ..
            } => {
                let w = match width {
                    1 | 2 | 4 => width as u64,
                    _ => return Err(Error::invalid_value(format!("memset width {width}"))),
                };
                c.check_range(dst, count.saturating_mul(w))?;
                let d = DevicePtr(dst);
                if f & flags::ASYNC != 0 {
                    let s = c.stream(stream)?;
                    match w {
                        1 => c.ctx.memset_d8_async(d, value as u8, count, s),
                        2 => c.ctx.memset_d16_async(d, value as u16, count, s),
                        _ => c.ctx.memset_d32_async(d, value, count, s),
                    }
                } else {
                    match w {
                        1 => c.ctx.memset_d8(d, value as u8, count),
                        2 => c.ctx.memset_d16(d, value as u16, count),
                        _ => c.ctx.memset_d32(d, value, count),
                    }
                }
            }
            ModuleUnload { module, .. } => {
                let m = c
                    .modules
                    .remove(&module)
                    .ok_or_else(|| lost(&format!("unknown module {module:#x}")))?;
                c.ctx.unload_module(m)
            }
            Launch {
                function,
                stream,
                grid,
                block,
                shared,
                args,
                ..
            } => {
                let f = *c
                    .functions
                    .get(&function)
                    .ok_or_else(|| lost(&format!("unknown function {function:#x}")))?;
                let s = c.stream(stream)?;
                if let Some(v) = &self.vgpu {
                    v.before_launch(); // the daemon's pacing, from the vGPU's limits page
                }
                let wait = self.region.admit_launch(self.slot, tf_os::now_ns());
                if wait > 0 {
                    std::thread::sleep(Duration::from_nanos(wait));
                }
                let mut ka = KernelArgs::new();
                for a in &args.0 {
                    ka = ka.bytes(a);
                }
                let cfg = LaunchConfig {
                    grid,
                    block,
                    shared_mem_bytes: shared,
                };
                if !self.sample_launches.load(Ordering::Relaxed) {
                    return c.ctx.launch(f, &cfg, s, &ka);
                }
                // Time about one launch every 5 ms with a pair of events, as the interposer
                // does, so that the controller learns the device time of launches.
                self.collect_sample(c);
                let now = tf_os::now_ns();
                let take = c
                    .sampler
                    .as_ref()
                    .is_none_or(|x| !x.pending && now.saturating_sub(x.last_ns) >= 5_000_000);
                if !take {
                    return c.ctx.launch(f, &cfg, s, &ka);
                }
                let (a, b) = match &c.sampler {
                    Some(x) => (x.start, x.end),
                    None => (c.ctx.event_create()?, c.ctx.event_create()?),
                };
                c.ctx.event_record(a, s)?;
                c.ctx.launch(f, &cfg, s, &ka)?;
                c.ctx.event_record(b, s)?;
                c.sampler = Some(Sampler {
                    start: a,
                    end: b,
                    pending: true,
                    last_ns: now,
                });
                Ok(())
            }
            StreamCreate { stream, .. } => {
                if stream == 0 || c.streams.contains_key(&stream) {
                    return Err(Error::invalid_value(format!(
                        "stream handle {stream:#x} is in use"
                    )));
                }
                let s = c.ctx.stream_create()?;
                c.streams.insert(stream, s);
                Ok(())
            }
            StreamDestroy { stream, .. } => {
                let s = c
                    .streams
                    .remove(&stream)
                    .ok_or_else(|| lost(&format!("unknown stream {stream:#x}")))?;
                c.ctx.stream_destroy(s)
            }
            StreamWaitEvent { stream, event, .. } => {
                let (s, e) = (c.stream(stream)?, c.event(event)?);
                c.ctx.stream_wait_event(s, e)
            }
            EventCreate { event, .. } => {
                if event == 0 || c.events.contains_key(&event) {
                    return Err(Error::invalid_value(format!(
                        "event handle {event:#x} is in use"
                    )));
                }
                let e = c.ctx.event_create()?;
                c.events.insert(event, e);
                Ok(())
            }
            EventDestroy { event, .. } => {
                let e = c
                    .events
                    .remove(&event)
                    .ok_or_else(|| lost(&format!("unknown event {event:#x}")))?;
                c.ctx.event_destroy(e)
            }
            EventRecord { event, stream, .. } => {
                let (e, s) = (c.event(event)?, c.stream(stream)?);
                c.ctx.event_record(e, s)
            }
            other => Err(Error::invalid_value(format!(
                "{} is not an asynchronous call",
                other.name()
            ))),
        }
    }

    /// Add a finished launch sample of `c` to the region's counters.
    fn collect_sample(&self, c: &mut CtxState) {
        if let Some(x) = c.sampler.as_mut()
            && x.pending
            && c.ctx.event_query(x.end).unwrap_or(false)
        {
            x.pending = false;
            if let Ok(d) = c.ctx.event_elapsed(x.start, x.end) {
                self.region.add_sample(d.as_nanos() as u64);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn copy_dtoh(
        &self,
        conn: &mut Conn,
        link: &mut dyn Link,
        ctx_id: u64,
        stream: u64,
        src: u64,
        len: u64,
        f: u8,
    ) -> std::result::Result<(), Stop> {
        if let Some(e) = conn.deferred.take() {
            return answer(link, Err(e));
        }
        let checked = conn.ctx(ctx_id).and_then(|c| {
            c.check_range(src, len)?;
            let s = if f & flags::ASYNC != 0 {
                Some(c.stream(stream)?)
            } else {
                None
            };
            Ok((c.ctx.clone(), s))
        });
        let (ctx, s) = match checked {
            Ok(x) => x,
            Err(e) => return answer(link, Err(e)),
        };
        // Wait for the work before the copy once; then the device's bytes go to the link in
        // frames, read in place where the backend allows (no copy of the worker's own on a
        // socket: `writev` from device memory; one copy into the ring on shm).
        let ready = match s {
            Some(s) => ctx.stream_synchronize(s),
            None => Ok(()),
        };
        if let Err(e) = ready {
            return answer(link, Err(e));
        }
        let chunk = link.max_data();
        let mut broken: Option<LinkError> = None;
        let r = ctx.read_device(DevicePtr(src), len, &mut |_, piece| {
            for part in piece.chunks(chunk) {
                if let Err(e) = link.send(&Msg::Data {}, part) {
                    broken = Some(e);
                    return Err(Error::new(ErrorKind::DeviceLost, "the connection failed"));
                }
            }
            Ok(())
        });
        if let Some(e) = broken {
            return Err(Stop::Link(e));
        }
        if let Err(e) = r {
            return answer(link, Err(e));
        }
        answer(link, Ok(Answer::Done))
    }

    /// Run a synchronous call and answer it: a pending asynchronous error is answered instead
    /// (and the call is not run).
    fn sync(
        &self,
        conn: &mut Conn,
        link: &mut dyn Link,
        f: impl FnOnce(&mut Conn) -> Result<Answer>,
    ) -> std::result::Result<(), Stop> {
        let r = match conn.deferred.take() {
            Some(e) => Err(e),
            None => f(conn),
        };
        answer(link, r)
    }
}

/// Why a connection stops being served.
enum Stop {
    Link(LinkError),
    Protocol(String),
}

/// What a synchronous call answers.
enum Answer {
    Done,
    Ptr(u64),
    Value(u64),
    Memory(MemoryInfo),
    Json(String),
    Params(bool, Vec<u32>),
}

fn json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::new(ErrorKind::Other, e.to_string()))
}

fn reply(link: &mut dyn Link, m: &Msg<'_>) -> std::result::Result<(), Stop> {
    link.send(m, &[]).map_err(Stop::Link)
}

fn answer(link: &mut dyn Link, r: Result<Answer>) -> std::result::Result<(), Stop> {
    match r {
        Ok(Answer::Done) => reply(link, &Msg::Done {}),
        Ok(Answer::Ptr(ptr)) => reply(link, &Msg::Ptr { ptr }),
        Ok(Answer::Value(value)) => reply(link, &Msg::Value { value }),
        Ok(Answer::Memory(m)) => reply(
            link,
            &Msg::Memory {
                total: m.total_bytes,
                used: m.used_bytes,
                free: m.free_bytes,
            },
        ),
        Ok(Answer::Json(text)) => reply(link, &Msg::Json { text: &text }),
        Ok(Answer::Params(known, sizes)) => reply(
            link,
            &Msg::Params {
                known,
                sizes: U32List(sizes),
            },
        ),
        Err(e) => reply(link, &Msg::failed(&e)),
    }
}

/// Tell a peer that broke the protocol why, best effort, before the connection is closed.
fn refuse_frame(link: &mut dyn Link, why: &str) {
    let e = Error::invalid_value(format!("protocol error: {why}"));
    let _ = link.send(&Msg::failed(&e), &[]);
}

/// One connection's state: its contexts and the first error of its asynchronous calls.
#[derive(Default)]
struct Conn {
    contexts: HashMap<u64, CtxState>,
    deferred: Option<Error>,
    /// Bytes of the vGPU's quota this connection holds.
    charged: u64,
}

impl Conn {
    fn ctx(&self, id: u64) -> Result<&CtxState> {
        self.contexts
            .get(&id)
            .ok_or_else(|| lost(&format!("unknown context {id:#x}")))
    }

    fn ctx_mut(&mut self, id: u64) -> Result<&mut CtxState> {
        self.contexts
            .get_mut(&id)
            .ok_or_else(|| lost(&format!("unknown context {id:#x}")))
    }

    fn defer(&mut self, e: Error) {
        tracing::debug!("asynchronous call failed: {e}");
        if self.deferred.is_none() {
            self.deferred = Some(e);
        }
    }
}

/// A context of one connection, with the connection's names for its objects.
struct CtxState {
    ctx: Arc<dyn Context>,
    /// Allocations: base address → size.
    allocs: BTreeMap<u64, u64>,
    modules: HashMap<u64, ModuleHandle>,
    functions: HashMap<u64, FunctionHandle>,
    streams: HashMap<u64, StreamHandle>,
    events: HashMap<u64, EventHandle>,
    /// A module image arriving in pieces.
    module_buf: Option<Vec<u8>>,
    /// The events that time one launch now and then (see `Worker::collect_sample`).
    sampler: Option<Sampler>,
}

/// A pair of events around one launch, and whether its time is still to be read.
struct Sampler {
    start: EventHandle,
    end: EventHandle,
    pending: bool,
    last_ns: u64,
}

impl CtxState {
    fn new(ctx: Arc<dyn Context>) -> Self {
        CtxState {
            ctx,
            allocs: BTreeMap::new(),
            modules: HashMap::new(),
            functions: HashMap::new(),
            streams: HashMap::new(),
            events: HashMap::new(),
            module_buf: None,
            sampler: None,
        }
    }

    /// `[ptr, ptr + len)` must lie inside one allocation of this client.
    fn check_range(&self, ptr: u64, len: u64) -> Result<()> {
        let ok = self
            .allocs
            .range(..=ptr)
            .next_back()
            .is_some_and(|(&base, &size)| {
                ptr.checked_add(len).is_some_and(|end| end <= base + size)
            });
        if ok {
            Ok(())
        } else {
            Err(Error::invalid_value(format!(
                "{len} bytes at {ptr:#x} are not memory of this client"
            )))
        }
    }

    fn stream(&self, s: u64) -> Result<StreamHandle> {
        if s == 0 {
            return Ok(StreamHandle::DEFAULT);
        }
        self.streams
            .get(&s)
            .copied()
            .ok_or_else(|| lost(&format!("unknown stream {s:#x}")))
    }

    fn event(&self, e: u64) -> Result<EventHandle> {
        self.events
            .get(&e)
            .copied()
            .ok_or_else(|| lost(&format!("unknown event {e:#x}")))
    }
}

/// The protocol's data limit, re-exported for the command line's help.
pub const MAX_DATA: usize = wire::MAX_DATA;
