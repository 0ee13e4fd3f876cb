//! An execution context: one ACL context, made current on the calling thread before each call,
//! and the tables of the handles it gave out (checked before any reaches the runtime).

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, c_void};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ascend_sys::acl::*;
use tf_hal::{
    DevicePtr, Error, ErrorKind, EventHandle, FunctionHandle, KernelArgs, LaunchConfig, MemoryInfo,
    ModuleHandle, ModuleImage, Result, StreamHandle,
};

use crate::Libs;
use crate::error::acl_call;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The largest `blockDim` a launch asks for.
pub const MAX_BLOCK_DIM: u64 = 65_535;

#[derive(Default)]
struct Tables {
    streams: HashSet<u64>,
    events: HashSet<u64>,
    /// module -> its functions
    modules: HashMap<u64, HashSet<u64>>,
    functions: HashSet<u64>,
    /// Argument blocks of launches, freed once their stream has been synchronized:
    /// (stream, block).
    pending: Vec<(u64, u64)>,
}

pub struct AscendContext {
    libs: Arc<Libs>,
    device: u32,
    ctx: usize,
    t: Mutex<Tables>,
}

impl AscendContext {
    pub(crate) fn new(libs: Arc<Libs>, device: u32) -> Result<AscendContext> {
        let mut ctx: aclrtContext = std::ptr::null_mut();
        acl_call!(libs, aclrtCreateContext(&mut ctx, device as i32))?;
        Ok(AscendContext {
            libs,
            device,
            ctx: ctx as usize,
            t: Mutex::new(Tables::default()),
        })
    }

    /// Make this context current on the calling thread.
    fn bind(&self) -> Result<()> {
        acl_call!(self.libs, aclrtSetCurrentContext(self.ctx as aclrtContext))
    }

    fn stream(&self, s: StreamHandle) -> Result<aclrtStream> {
        if s == StreamHandle::DEFAULT || lock(&self.t).streams.contains(&s.0) {
            Ok(s.0 as aclrtStream)
        } else {
            Err(Error::invalid_handle(format!(
                "no stream {s} in this context"
            )))
        }
    }

    fn event(&self, e: EventHandle) -> Result<aclrtEvent> {
        if lock(&self.t).events.contains(&e.0) {
            Ok(e.0 as aclrtEvent)
        } else {
            Err(Error::invalid_handle(format!(
                "no event {e} in this context"
            )))
        }
    }

    /// Free the argument blocks of launches on `stream` (every stream: `None`), now finished.
    fn release_args(&self, stream: Option<u64>) {
        let done: Vec<u64> = {
            let mut t = lock(&self.t);
            let (done, keep) = t
                .pending
                .drain(..)
                .partition(|(s, _)| stream.is_none_or(|x| x == *s));
            t.pending = keep;
            done.into_iter().map(|(_, p)| p).collect()
        };
        for p in done {
            let _ = acl_call!(self.libs, aclrtFree(p as *mut c_void));
        }
    }

    fn copy(&self, dst: usize, src: usize, len: usize, kind: aclrtMemcpyKind) -> Result<()> {
        // Copies come after prior work on the context (the HAL's contract).
        self.synchronize_all()?;
        acl_call!(
            self.libs,
            aclrtMemcpy(dst as *mut c_void, len, src as *const c_void, len, kind)
        )
    }

    fn synchronize_all(&self) -> Result<()> {
        self.bind()?;
        acl_call!(self.libs, aclrtSynchronizeDevice())?;
        self.release_args(None);
        Ok(())
    }
}

/// Pack the HAL's arguments as a C struct of them: each aligned to its own size (at most 8).
pub fn pack_args(args: &KernelArgs) -> Vec<u8> {
    let mut block = Vec::new();
    for p in args.params() {
        let align = p.len().clamp(1, 8).next_power_of_two();
        block.resize(block.len().div_ceil(align) * align, 0);
        block.extend_from_slice(p);
    }
    block.resize(block.len().div_ceil(8) * 8, 0);
    block
}

impl tf_hal::Context for AscendContext {
    fn device_index(&self) -> u32 {
        self.device
    }

    fn mem_alloc(&self, bytes: u64) -> Result<DevicePtr> {
        self.bind()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        let len =
            usize::try_from(bytes).map_err(|_| Error::out_of_memory(format!("{bytes} bytes")))?;
        acl_call!(
            self.libs,
            aclrtMalloc(&mut p, len, ACL_MEM_MALLOC_HUGE_FIRST)
        )?;
        Ok(DevicePtr(p as u64))
    }

    fn mem_free(&self, ptr: DevicePtr) -> Result<()> {
        self.bind()?;
        acl_call!(self.libs, aclrtFree(ptr.0 as *mut c_void))
    }

    fn mem_info(&self) -> Result<MemoryInfo> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        acl_call!(
            self.libs,
            aclrtGetMemInfo(ACL_HBM_MEM, &mut free, &mut total)
        )?;
        let (free, total) = (free as u64, total as u64);
        Ok(MemoryInfo {
            total_bytes: total,
            used_bytes: total.saturating_sub(free),
            free_bytes: free.min(total),
        })
    }

    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.copy(
            dst.0 as usize,
            src.as_ptr() as usize,
            src.len(),
            ACL_MEMCPY_HOST_TO_DEVICE,
        )
    }

    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        self.copy(
            dst.as_mut_ptr() as usize,
            src.0 as usize,
            dst.len(),
            ACL_MEMCPY_DEVICE_TO_HOST,
        )
    }

    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: u64) -> Result<()> {
        self.copy(
            dst.0 as usize,
            src.0 as usize,
            bytes as usize,
            ACL_MEMCPY_DEVICE_TO_DEVICE,
        )
    }

    fn memset_d8(&self, dst: DevicePtr, value: u8, count: u64) -> Result<()> {
        self.synchronize_all()?;
        let n = count as usize;
        acl_call!(
            self.libs,
            aclrtMemset(dst.0 as *mut c_void, n, value as i32, n)
        )
    }

    /// ACL sets bytes only: a pattern of four different bytes is written from the host, in
    /// chunks.
    fn memset_d32(&self, dst: DevicePtr, value: u32, count: u64) -> Result<()> {
        let b = value.to_le_bytes();
        if b.iter().all(|&x| x == b[0]) {
            return self.memset_d8(dst, b[0], count * 4);
        }
        const CHUNK: u64 = 1 << 20;
        let chunk: Vec<u8> = std::iter::repeat_n(b, CHUNK.min(count) as usize)
            .flatten()
            .collect();
        let mut done = 0u64;
        while done < count {
            let n = CHUNK.min(count - done) as usize;
            self.copy_htod(dst.offset(done * 4), &chunk[..n * 4])?;
            done += n as u64;
        }
        Ok(())
    }

    fn load_module(&self, image: ModuleImage<'_>) -> Result<ModuleHandle> {
        self.bind()?;
        #[allow(unreachable_patterns)] // image kinds the HAL may add are not ACL binaries
        let bytes = match image {
            ModuleImage::Ptx(text) => text.as_bytes(),
            ModuleImage::Binary(b) => b,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidImage,
                    "the Ascend runtime loads kernel binaries (or, simulated, PTX text)",
                ));
            }
        };
        let mut bin: aclrtBinHandle = std::ptr::null_mut();
        acl_call!(
            self.libs,
            aclrtBinaryLoadFromData(
                bytes.as_ptr() as *const c_void,
                bytes.len(),
                std::ptr::null(),
                &mut bin
            )
        )?;
        lock(&self.t).modules.insert(bin as u64, HashSet::new());
        Ok(ModuleHandle(bin as u64))
    }

    fn unload_module(&self, module: ModuleHandle) -> Result<()> {
        self.bind()?;
        let funcs = lock(&self.t)
            .modules
            .remove(&module.0)
            .ok_or_else(|| Error::invalid_handle(format!("no module {module}")))?;
        {
            let mut t = lock(&self.t);
            for f in funcs {
                t.functions.remove(&f);
            }
        }
        acl_call!(self.libs, aclrtBinaryUnLoad(module.0 as aclrtBinHandle))
    }

    fn function(&self, module: ModuleHandle, name: &str) -> Result<tf_hal::FunctionHandle> {
        self.bind()?;
        if !lock(&self.t).modules.contains_key(&module.0) {
            return Err(Error::invalid_handle(format!("no module {module}")));
        }
        let cname = CString::new(name).map_err(|_| Error::invalid_value("a NUL in the name"))?;
        let mut f: aclrtFuncHandle = std::ptr::null_mut();
        acl_call!(
            self.libs,
            aclrtBinaryGetFunction(module.0 as aclrtBinHandle, cname.as_ptr(), &mut f)
        )
        .map_err(|e| {
            if e.kind == ErrorKind::NotFound {
                Error::new(
                    ErrorKind::NotFound,
                    format!("no kernel {name:?} in the module"),
                )
            } else {
                e
            }
        })?;
        let mut t = lock(&self.t);
        t.functions.insert(f as u64);
        if let Some(fs) = t.modules.get_mut(&module.0) {
            fs.insert(f as u64);
        }
        Ok(FunctionHandle(f as u64))
    }

    fn launch(
        &self,
        function: FunctionHandle,
        config: &LaunchConfig,
        stream: StreamHandle,
        args: &KernelArgs,
    ) -> Result<()> {
        self.bind()?;
        if !lock(&self.t).functions.contains(&function.0) {
            return Err(Error::invalid_handle(format!("no function {function}")));
        }
        let s = self.stream(stream)?;
        let block_dim = config.total_blocks().clamp(1, MAX_BLOCK_DIM) as u32;
        let packed = pack_args(args);
        let mut block: *mut c_void = std::ptr::null_mut();
        if !packed.is_empty() {
            acl_call!(
                self.libs,
                aclrtMalloc(&mut block, packed.len(), ACL_MEM_MALLOC_HUGE_FIRST)
            )?;
            lock(&self.t).pending.push((stream.0, block as u64));
            acl_call!(
                self.libs,
                aclrtMemcpy(
                    block,
                    packed.len(),
                    packed.as_ptr() as *const c_void,
                    packed.len(),
                    ACL_MEMCPY_HOST_TO_DEVICE
                )
            )?;
        }
        acl_call!(
            self.libs,
            aclrtLaunchKernel(
                function.0 as aclrtFuncHandle,
                block_dim,
                block,
                packed.len(),
                s
            )
        )
    }

    fn stream_create(&self) -> Result<StreamHandle> {
        self.bind()?;
        let mut s: aclrtStream = std::ptr::null_mut();
        acl_call!(self.libs, aclrtCreateStream(&mut s))?;
        lock(&self.t).streams.insert(s as u64);
        Ok(StreamHandle(s as u64))
    }

    fn stream_destroy(&self, stream: StreamHandle) -> Result<()> {
        self.bind()?;
        if stream == StreamHandle::DEFAULT || !lock(&self.t).streams.remove(&stream.0) {
            return Err(Error::invalid_handle(format!(
                "no stream {stream} to destroy"
            )));
        }
        acl_call!(self.libs, aclrtSynchronizeStream(stream.0 as aclrtStream))?;
        self.release_args(Some(stream.0));
        acl_call!(self.libs, aclrtDestroyStream(stream.0 as aclrtStream))
    }

    fn stream_synchronize(&self, stream: StreamHandle) -> Result<()> {
        self.bind()?;
        let s = self.stream(stream)?;
        acl_call!(self.libs, aclrtSynchronizeStream(s))?;
        self.release_args(Some(stream.0));
        Ok(())
    }

    /// `aclrtStreamQuery` where the runtime has it (CANN 8); else the HAL's default (an event
    /// recorded on the stream, queried).
    fn stream_query(&self, stream: StreamHandle) -> Result<bool> {
        self.bind()?;
        let s = self.stream(stream)?;
        if self.libs.acl.aclrtStreamQuery.is_none() {
            let e = self.event_create()?;
            let done = self
                .event_record(e, stream)
                .and_then(|()| self.event_query(e));
            self.event_destroy(e)?;
            return done;
        }
        let mut status = ACL_STREAM_STATUS_NOT_READY;
        acl_call!(self.libs, aclrtStreamQuery(s, &mut status))?;
        Ok(status == ACL_STREAM_STATUS_COMPLETE)
    }

    fn stream_wait_event(&self, stream: StreamHandle, event: EventHandle) -> Result<()> {
        self.bind()?;
        let (s, e) = (self.stream(stream)?, self.event(event)?);
        acl_call!(self.libs, aclrtStreamWaitEvent(s, e))
    }

    fn event_create(&self) -> Result<EventHandle> {
        self.bind()?;
        let mut e: aclrtEvent = std::ptr::null_mut();
        acl_call!(self.libs, aclrtCreateEvent(&mut e))?;
        lock(&self.t).events.insert(e as u64);
        Ok(EventHandle(e as u64))
    }

    fn event_destroy(&self, event: EventHandle) -> Result<()> {
        self.bind()?;
        if !lock(&self.t).events.remove(&event.0) {
            return Err(Error::invalid_handle(format!("no event {event}")));
        }
        acl_call!(self.libs, aclrtDestroyEvent(event.0 as aclrtEvent))
    }

    fn event_record(&self, event: EventHandle, stream: StreamHandle) -> Result<()> {
        self.bind()?;
        let (e, s) = (self.event(event)?, self.stream(stream)?);
        acl_call!(self.libs, aclrtRecordEvent(e, s))
    }

    fn event_synchronize(&self, event: EventHandle) -> Result<()> {
        self.bind()?;
        let e = self.event(event)?;
        acl_call!(self.libs, aclrtSynchronizeEvent(e))
    }

    fn event_query(&self, event: EventHandle) -> Result<bool> {
        self.bind()?;
        let e = self.event(event)?;
        let mut status = ACL_EVENT_RECORDED_STATUS_NOT_READY;
        acl_call!(self.libs, aclrtQueryEventStatus(e, &mut status))?;
        Ok(status == ACL_EVENT_RECORDED_STATUS_COMPLETE)
    }

    fn event_elapsed(&self, start: EventHandle, end: EventHandle) -> Result<Duration> {
        self.bind()?;
        let (a, b) = (self.event(start)?, self.event(end)?);
        let mut ms = 0f32;
        acl_call!(self.libs, aclrtEventElapsedTime(&mut ms, a, b))?;
        Ok(Duration::from_secs_f64(ms.max(0.0) as f64 / 1000.0))
    }

    fn synchronize(&self) -> Result<()> {
        self.synchronize_all()
    }
}

impl Drop for AscendContext {
    fn drop(&mut self) {
        let _ = self.synchronize_all();
        let t = std::mem::take(&mut *lock(&self.t));
        for e in t.events {
            let _ = acl_call!(self.libs, aclrtDestroyEvent(e as aclrtEvent));
        }
        for s in t.streams {
            let _ = acl_call!(self.libs, aclrtDestroyStream(s as aclrtStream));
        }
        for m in t.modules.keys() {
            let _ = acl_call!(self.libs, aclrtBinaryUnLoad(*m as aclrtBinHandle));
        }
        let _ = acl_call!(self.libs, aclrtDestroyContext(self.ctx as aclrtContext));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_pack_as_a_c_struct() {
        let a = KernelArgs::new().u32(1).f32(2.0).u64(3).u64(4);
        assert_eq!(pack_args(&a).len(), 24);
        let b = KernelArgs::new().u64(1).u64(2).u64(3).u32(4);
        let p = pack_args(&b);
        assert_eq!(p.len(), 32, "tail padding to 8");
        assert_eq!(&p[24..28], &4u32.to_le_bytes());
        let c = KernelArgs::new().u32(1).u64(2);
        assert_eq!(
            &pack_args(&c)[8..16],
            &2u64.to_le_bytes(),
            "u64 aligned to 8"
        );
        assert!(pack_args(&KernelArgs::new()).is_empty());
    }
}
