//! # tf-remote
//!
//! [`RemoteBackend`]: a `tf-hal` backend whose device is owned by a tensor-fusion worker
//! (`tensor-fusion worker`) on this or another host, reached over a connection
//! (`tf-remote-protocol`: TCP, a Unix socket, or shared-memory rings). Everything written
//! against the HAL — the conformance suite, `tensor-fusion devices`, the client stub
//! `libcuda.so.1` — works remotely through it.
//!
//! - Handles are chosen here: creating a context, stream or event, loading a module or
//!   resolving a function sends the name this side picked, so stream and event creation need
//!   no round trip. Memory allocation waits for its answer: the program needs the address (it
//!   travels inside kernel arguments, which the worker cannot rewrite) and an out-of-memory
//!   error at once.
//! - Calls that answer nothing the program needs (launches, frees, stream-ordered copies and
//!   memsets, stream and event creation, destruction, records and waits) are sent without
//!   waiting. What can be checked here is checked first (every handle and every device range
//!   against this side's own tables), so misuse fails at once; the worker's own errors for
//!   such calls come back with the next call that waits, as the CUDA driver reports them.
//! - Bulk data goes from the caller's buffer to the transport, and from the transport into the
//!   caller's buffer, with no copy of its own; copies larger than a frame are sent in pieces.
//! - A connection that fails (the worker died, the network went) turns every later call into
//!   `DeviceLost` at once; none hangs: the transports notice a dead peer (socket EOF, the
//!   ring's liveness check every 100 ms).
//!
//! Design rules: this crate is a HAL backend and a protocol client, nothing more — no device
//! code, no FFI; every value the worker sends is decoded by the protocol's checked decoder.
#![cfg_attr(test, allow(unused_crate_dependencies))] // unit tests see the dev-dependencies too

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tf_hal::*;
use tf_remote_protocol::link::{Link, LinkError};
use tf_remote_protocol::session::{self, ConnectError, Welcome};
use tf_remote_protocol::wire::{FORMAT_BINARY, FORMAT_PTX, FORMAT_SPIRV, Msg, flags};
use tf_remote_protocol::{Address, auth};

/// The variable naming the worker's address (read by [`RemoteBackend::from_env`]).
pub const ADDR_ENV: &str = "TF_REMOTE";
/// The variable naming the token file.
pub const TOKEN_FILE_ENV: &str = "TF_REMOTE_TOKEN_FILE";

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An answer to a synchronous call.
#[derive(Debug)]
enum Reply {
    Done,
    Ptr(u64),
    Value(u64),
    Memory(MemoryInfo),
    Json(String),
    Params(Option<Vec<usize>>),
}

/// One connection to a worker, shared by everything opened through it.
pub struct Connection {
    link: Mutex<Box<dyn Link>>,
    addr: Address,
    dead: AtomicBool,
    next: AtomicU64,
    welcome: Welcome,
    max_data: usize,
}

impl Connection {
    /// Connect to the worker at `addr` and authenticate with `token`.
    pub fn connect(addr: &Address, token: &[u8]) -> std::result::Result<Arc<Self>, ConnectError> {
        let (link, welcome) = session::connect(addr, token)?;
        let max_data = link.max_data();
        Ok(Arc::new(Connection {
            link: Mutex::new(link),
            addr: addr.clone(),
            dead: AtomicBool::new(false),
            next: AtomicU64::new(0x1000),
            welcome,
            max_data,
        }))
    }

    /// The worker's address.
    pub fn address(&self) -> &Address {
        &self.addr
    }

    /// What the worker said about itself.
    pub fn worker(&self) -> &str {
        &self.welcome.worker
    }

    /// The vGPU's VRAM quota, when the worker has one.
    pub fn vram_quota(&self) -> Option<u64> {
        self.welcome.vram_quota
    }

    /// A fresh handle name.
    fn name(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn lost(&self, e: &LinkError) -> Error {
        self.dead.store(true, Ordering::Release);
        let why = match e {
            LinkError::Closed => {
                "the worker closed the connection (it exited or was killed)".to_string()
            }
            other => other.to_string(),
        };
        Error::new(
            ErrorKind::DeviceLost,
            format!("lost the remote vGPU at {}: {why}", self.addr),
        )
    }

    fn link(&self) -> Result<MutexGuard<'_, Box<dyn Link>>> {
        if self.dead.load(Ordering::Acquire) {
            return Err(Error::new(
                ErrorKind::DeviceLost,
                format!("the connection to the remote vGPU at {} is lost", self.addr),
            ));
        }
        Ok(lock(&self.link))
    }

    /// Send a call that answers nothing.
    fn post(&self, msg: &Msg<'_>, data: &[u8]) -> Result<()> {
        let mut link = self.link()?;
        link.send(msg, data).map_err(|e| self.lost(&e))
    }

    /// Receive and decode one answer on a locked link.
    fn answer(&self, link: &mut Box<dyn Link>) -> Result<Reply> {
        let mut buf = Vec::new();
        let h = link.recv(&mut buf).map_err(|e| self.lost(&e))?;
        let msg = Msg::decode(h.tag, &buf).map_err(|e| self.lost(&e.into()))?;
        Ok(match msg {
            Msg::Done {} => Reply::Done,
            Msg::Ptr { ptr } => Reply::Ptr(ptr),
            Msg::Value { value } => Reply::Value(value),
            Msg::Memory { total, used, free } => Reply::Memory(MemoryInfo {
                total_bytes: total,
                used_bytes: used,
                free_bytes: free,
            }),
            Msg::Json { text } => Reply::Json(text.to_string()),
            Msg::Params { known, sizes } => {
                Reply::Params(known.then(|| sizes.0.into_iter().map(|s| s as usize).collect()))
            }
            m @ Msg::Failed { .. } => {
                return Err(m
                    .to_error()
                    .unwrap_or_else(|| Error::new(ErrorKind::Other, "failed")));
            }
            other => {
                let e = LinkError::Protocol(tf_remote_protocol::ProtocolError::Invalid {
                    what: other.name(),
                    why: "not an answer".into(),
                });
                return Err(self.lost(&e));
            }
        })
    }

    /// Send a call and wait for its answer.
    fn call(&self, msg: &Msg<'_>, data: &[u8]) -> Result<Reply> {
        let mut link = self.link()?;
        link.send(msg, data).map_err(|e| self.lost(&e))?;
        self.answer(&mut link)
    }

    fn done(&self, msg: &Msg<'_>) -> Result<()> {
        match self.call(msg, &[])? {
            Reply::Done => Ok(()),
            r => Err(unexpected(r)),
        }
    }

    fn json<T: serde::de::DeserializeOwned>(&self, msg: &Msg<'_>) -> Result<T> {
        match self.call(msg, &[])? {
            Reply::Json(t) => serde_json::from_str(&t).map_err(|e| {
                Error::new(
                    ErrorKind::Other,
                    format!("the worker's answer does not parse: {e}"),
                )
            }),
            r => Err(unexpected(r)),
        }
    }

    /// The protocol's round trip (a ping), for benchmarks and liveness checks.
    pub fn ping(&self, n: u64) -> Result<u64> {
        let mut link = self.link()?;
        link.send(&Msg::Ping { n }, &[])
            .map_err(|e| self.lost(&e))?;
        let mut buf = Vec::new();
        let h = link.recv(&mut buf).map_err(|e| self.lost(&e))?;
        match Msg::decode(h.tag, &buf) {
            Ok(Msg::Pong { n }) => Ok(n),
            _ => Err(Error::new(
                ErrorKind::Other,
                "the worker did not answer the ping",
            )),
        }
    }

    /// Send `src` to device memory at `dst` in frames of the transport's size; the last one
    /// asks for an answer when `stream` is `None` (a synchronous copy).
    fn copy_htod(&self, ctx: u64, dst: u64, src: &[u8], stream: Option<u64>) -> Result<()> {
        let mut link = self.link()?;
        let chunk = self.max_data.max(1);
        let n = src.len().div_ceil(chunk).max(1);
        for i in 0..n {
            let piece = &src[(i * chunk).min(src.len())..((i + 1) * chunk).min(src.len())];
            let last = i + 1 == n;
            let f = match stream {
                Some(_) => flags::ASYNC,
                None if last => flags::ACK,
                None => 0,
            };
            link.send(
                &Msg::CopyHtoD {
                    ctx,
                    stream: stream.unwrap_or(0),
                    dst: dst + (i * chunk) as u64,
                    flags: f,
                },
                piece,
            )
            .map_err(|e| self.lost(&e))?;
        }
        if stream.is_none() {
            match self.answer(&mut link)? {
                Reply::Done => {}
                r => return Err(unexpected(r)),
            }
        }
        Ok(())
    }

    /// Receive device memory at `src` into `dst`.
    fn copy_dtoh(&self, ctx: u64, dst: &mut [u8], src: u64, stream: Option<u64>) -> Result<()> {
        let mut link = self.link()?;
        link.send(
            &Msg::CopyDtoH {
                ctx,
                stream: stream.unwrap_or(0),
                src,
                len: dst.len() as u64,
                flags: if stream.is_some() { flags::ASYNC } else { 0 },
            },
            &[],
        )
        .map_err(|e| self.lost(&e))?;
        let mut off = 0usize;
        let mut buf = Vec::new();
        loop {
            let h = link.recv(&mut buf).map_err(|e| self.lost(&e))?;
            let msg = Msg::decode(h.tag, &buf).map_err(|e| self.lost(&e.into()))?;
            match msg {
                Msg::Data {} => {
                    let n = h.data_len as usize;
                    let Some(piece) = dst.get_mut(off..off + n) else {
                        return Err(self.lost(&LinkError::Protocol(
                            tf_remote_protocol::ProtocolError::Invalid {
                                what: "Data",
                                why: "more bytes than the copy asked for".into(),
                            },
                        )));
                    };
                    link.recv_data_into(piece).map_err(|e| self.lost(&e))?;
                    off += n;
                }
                Msg::Done {} if off == dst.len() => return Ok(()),
                m @ Msg::Failed { .. } => {
                    return Err(m
                        .to_error()
                        .unwrap_or_else(|| Error::new(ErrorKind::Other, "failed")));
                }
                other => {
                    return Err(self.lost(&LinkError::Protocol(
                        tf_remote_protocol::ProtocolError::Invalid {
                            what: other.name(),
                            why: "not part of a device-to-host copy".into(),
                        },
                    )));
                }
            }
        }
    }
}

fn unexpected(r: Reply) -> Error {
    Error::new(
        ErrorKind::Other,
        format!("the worker gave an unexpected answer: {r:?}"),
    )
}

/// A tf-hal backend served by a remote worker.
#[derive(Clone)]
pub struct RemoteBackend {
    conn: Arc<Connection>,
    devices: Vec<DeviceInfo>,
}

impl RemoteBackend {
    /// Connect to the worker at `addr`, authenticating with `token`.
    pub fn connect(addr: &Address, token: &[u8]) -> Result<RemoteBackend> {
        let conn = Connection::connect(addr, token)
            .map_err(|e| Error::new(ErrorKind::Other, e.to_string()))?;
        let mut devices: Vec<DeviceInfo> = conn.json(&Msg::Devices {})?;
        for (i, d) in devices.iter_mut().enumerate() {
            d.index = i as u32;
            d.backend = BackendKind::Remote;
        }
        Ok(RemoteBackend { conn, devices })
    }

    /// Connect with the token read from `token_file`.
    pub fn connect_with_file(addr: &Address, token_file: &Path) -> Result<RemoteBackend> {
        let token = auth::read_token_file(token_file)
            .map_err(|e| Error::new(ErrorKind::Config, e.to_string()))?;
        RemoteBackend::connect(addr, &token)
    }

    /// Connect to the worker named by `TF_REMOTE`, with the token file `TF_REMOTE_TOKEN_FILE`.
    pub fn from_env() -> Result<RemoteBackend> {
        let addr = std::env::var(ADDR_ENV).map_err(|_| {
            Error::new(
                ErrorKind::Config,
                format!("{ADDR_ENV} is not set: it names the worker (tcp://HOST:PORT, unix:///PATH or shm://NAME)"),
            )
        })?;
        let addr: Address = addr
            .parse()
            .map_err(|e: tf_remote_protocol::addr::BadAddress| {
                Error::new(ErrorKind::Config, format!("{ADDR_ENV}: {e}"))
            })?;
        let file = std::env::var_os(TOKEN_FILE_ENV).ok_or_else(|| {
            Error::new(
                ErrorKind::Config,
                format!(
                    "{TOKEN_FILE_ENV} is not set: it names the file holding the worker's token"
                ),
            )
        })?;
        RemoteBackend::connect_with_file(&addr, Path::new(&file))
    }

    /// The connection (for its address, the worker's description, pings).
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// Device `index` with its concrete type (the client stub needs [`RemoteContext`]'s
    /// extras).
    pub fn remote_device(&self, index: u32) -> Result<RemoteDevice> {
        let info = self.devices.get(index as usize).cloned().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidDevice,
                format!(
                    "no device {index}: the worker at {} serves {}",
                    self.conn.addr,
                    self.devices.len()
                ),
            )
        })?;
        Ok(RemoteDevice {
            conn: self.conn.clone(),
            info,
        })
    }
}

impl Backend for RemoteBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Remote
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(self.devices.clone())
    }

    fn device(&self, index: u32) -> Result<Arc<dyn Device>> {
        Ok(Arc::new(self.remote_device(index)?))
    }

    fn topology(&self) -> Result<Vec<tf_hal::Link>> {
        Ok(Vec::new())
    }
}

/// A worker's device.
pub struct RemoteDevice {
    conn: Arc<Connection>,
    info: DeviceInfo,
}

impl RemoteDevice {
    /// Create a context with the concrete type (the client stub needs its extras).
    pub fn open_context(&self) -> Result<Arc<RemoteContext>> {
        let id = self.conn.name();
        self.conn.done(&Msg::ContextCreate {
            ctx: id,
            device: self.info.index,
        })?;
        Ok(Arc::new(RemoteContext {
            conn: self.conn.clone(),
            id,
            device: self.info.index,
            t: Mutex::new(Tables::default()),
        }))
    }
}

impl Device for RemoteDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn memory(&self) -> Result<MemoryInfo> {
        match self.conn.call(
            &Msg::DeviceMemory {
                device: self.info.index,
            },
            &[],
        )? {
            Reply::Memory(m) => Ok(m),
            r => Err(unexpected(r)),
        }
    }

    fn processes(&self) -> Result<Vec<ProcessUsage>> {
        self.conn.json(&Msg::DeviceProcesses {
            device: self.info.index,
        })
    }

    fn busy_sample(&self) -> Result<Option<BusySample>> {
        self.conn.json(&Msg::DeviceBusy {
            device: self.info.index,
        })
    }

    fn utilization(&self, window: Duration) -> Result<f64> {
        match self.conn.call(
            &Msg::DeviceUtilization {
                device: self.info.index,
                window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            },
            &[],
        )? {
            Reply::Value(v) => Ok(f64::from_bits(v)),
            r => Err(unexpected(r)),
        }
    }

    fn create_context(&self) -> Result<Arc<dyn Context>> {
        Ok(self.open_context()?)
    }
}

/// What this side knows of a context's objects (to check handles and ranges before sending).
#[derive(Default)]
struct Tables {
    allocs: BTreeMap<u64, u64>,
    modules: HashSet<u64>,
    /// function → (module, parameter sizes when the worker could tell).
    functions: HashMap<u64, (u64, Option<Vec<usize>>)>,
    streams: HashSet<u64>,
    events: HashSet<u64>,
}

/// A context on a worker's device.
pub struct RemoteContext {
    conn: Arc<Connection>,
    id: u64,
    device: u32,
    t: Mutex<Tables>,
}

fn bad_handle(what: &str, h: u64) -> Error {
    Error::invalid_handle(format!("unknown {what} handle {h:#x}"))
}

impl RemoteContext {
    /// The connection this context lives on.
    pub fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    /// The allocation containing `ptr`: (base, size).
    pub fn allocation(&self, ptr: u64) -> Option<(u64, u64)> {
        let t = lock(&self.t);
        let (&b, &s) = t.allocs.range(..=ptr).next_back()?;
        (ptr < b + s).then_some((b, s))
    }

    /// The parameter sizes of a function, when known (no round trip).
    pub fn param_sizes(&self, f: FunctionHandle) -> Result<Vec<usize>> {
        let t = lock(&self.t);
        match t.functions.get(&f.0) {
            Some((_, Some(s))) => Ok(s.clone()),
            Some((_, None)) => Err(Error::not_supported(
                "the worker's backend cannot tell this kernel's parameter sizes",
            )),
            None => Err(bad_handle("function", f.0)),
        }
    }

    /// The module a function came from.
    pub fn function_module(&self, f: FunctionHandle) -> Result<ModuleHandle> {
        lock(&self.t)
            .functions
            .get(&f.0)
            .map(|(m, _)| ModuleHandle(*m))
            .ok_or_else(|| bad_handle("function", f.0))
    }

    fn range(&self, ptr: DevicePtr, len: u64) -> Result<()> {
        let t = lock(&self.t);
        let ok = t
            .allocs
            .range(..=ptr.0)
            .next_back()
            .is_some_and(|(&b, &s)| ptr.0.checked_add(len).is_some_and(|e| e <= b + s));
        if ok {
            Ok(())
        } else {
            Err(Error::invalid_value(format!(
                "{len} bytes at {ptr} are outside every allocation of this context"
            )))
        }
    }

    fn stream(&self, s: StreamHandle) -> Result<u64> {
        if s == StreamHandle::DEFAULT || lock(&self.t).streams.contains(&s.0) {
            Ok(s.0)
        } else {
            Err(bad_handle("stream", s.0))
        }
    }

    fn event(&self, e: EventHandle) -> Result<u64> {
        if lock(&self.t).events.contains(&e.0) {
            Ok(e.0)
        } else {
            Err(bad_handle("event", e.0))
        }
    }

    fn memset(
        &self,
        dst: DevicePtr,
        value: u32,
        width: u8,
        count: u64,
        s: Option<StreamHandle>,
    ) -> Result<()> {
        self.range(dst, count.saturating_mul(width as u64))?;
        let stream = match s {
            Some(s) => self.stream(s)?,
            None => 0,
        };
        self.conn.post(
            &Msg::Memset {
                ctx: self.id,
                stream,
                dst: dst.0,
                value,
                width,
                count,
                flags: if s.is_some() { flags::ASYNC } else { 0 },
            },
            &[],
        )
    }

    fn copy_dtod_on(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
        s: Option<StreamHandle>,
    ) -> Result<()> {
        self.range(dst, bytes)?;
        self.range(src, bytes)?;
        let stream = match s {
            Some(s) => self.stream(s)?,
            None => 0,
        };
        self.conn.post(
            &Msg::CopyDtoD {
                ctx: self.id,
                stream,
                dst: dst.0,
                src: src.0,
                bytes,
                flags: if s.is_some() { flags::ASYNC } else { 0 },
            },
            &[],
        )
    }
}

impl Drop for RemoteContext {
    fn drop(&mut self) {
        let _ = self.conn.post(&Msg::ContextDestroy { ctx: self.id }, &[]);
    }
}

impl Context for RemoteContext {
    fn device_index(&self) -> u32 {
        self.device
    }

    fn mem_alloc(&self, bytes: u64) -> Result<DevicePtr> {
        if bytes == 0 {
            return Err(Error::invalid_value("cannot allocate 0 bytes"));
        }
        match self.conn.call(
            &Msg::MemAlloc {
                ctx: self.id,
                bytes,
            },
            &[],
        )? {
            Reply::Ptr(p) => {
                lock(&self.t).allocs.insert(p, bytes);
                Ok(DevicePtr(p))
            }
            r => Err(unexpected(r)),
        }
    }

    fn mem_free(&self, ptr: DevicePtr) -> Result<()> {
        if lock(&self.t).allocs.remove(&ptr.0).is_none() {
            return Err(Error::invalid_value(format!(
                "{ptr} is not the start of an allocation of this context"
            )));
        }
        self.conn.post(
            &Msg::MemFree {
                ctx: self.id,
                ptr: ptr.0,
            },
            &[],
        )
    }

    fn mem_info(&self) -> Result<MemoryInfo> {
        match self.conn.call(&Msg::MemInfo { ctx: self.id }, &[])? {
            Reply::Memory(m) => Ok(m),
            r => Err(unexpected(r)),
        }
    }

    fn copy_htod(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.range(dst, src.len() as u64)?;
        self.conn.copy_htod(self.id, dst.0, src, None)
    }

    fn copy_dtoh(&self, dst: &mut [u8], src: DevicePtr) -> Result<()> {
        self.range(src, dst.len() as u64)?;
        self.conn.copy_dtoh(self.id, dst, src.0, None)
    }

    fn copy_dtod(&self, dst: DevicePtr, src: DevicePtr, bytes: u64) -> Result<()> {
        self.copy_dtod_on(dst, src, bytes, None)
    }

    fn memset_d8(&self, dst: DevicePtr, value: u8, count: u64) -> Result<()> {
        self.memset(dst, value as u32, 1, count, None)
    }

    fn memset_d16(&self, dst: DevicePtr, value: u16, count: u64) -> Result<()> {
        self.memset(dst, value as u32, 2, count, None)
    }

    fn memset_d32(&self, dst: DevicePtr, value: u32, count: u64) -> Result<()> {
        self.memset(dst, value, 4, count, None)
    }

    fn copy_htod_async(&self, dst: DevicePtr, src: &[u8], stream: StreamHandle) -> Result<()> {
        self.range(dst, src.len() as u64)?;
        let s = self.stream(stream)?;
        self.conn.copy_htod(self.id, dst.0, src, Some(s))
    }

    fn copy_dtoh_async(&self, dst: &mut [u8], src: DevicePtr, stream: StreamHandle) -> Result<()> {
        self.range(src, dst.len() as u64)?;
        let s = self.stream(stream)?;
        self.conn.copy_dtoh(self.id, dst, src.0, Some(s))
    }

    fn copy_dtod_async(
        &self,
        dst: DevicePtr,
        src: DevicePtr,
        bytes: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        self.copy_dtod_on(dst, src, bytes, Some(stream))
    }

    fn memset_d8_async(
        &self,
        dst: DevicePtr,
        value: u8,
        count: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        self.memset(dst, value as u32, 1, count, Some(stream))
    }

    fn memset_d16_async(
        &self,
        dst: DevicePtr,
        value: u16,
        count: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        self.memset(dst, value as u32, 2, count, Some(stream))
    }

    fn memset_d32_async(
        &self,
        dst: DevicePtr,
        value: u32,
        count: u64,
        stream: StreamHandle,
    ) -> Result<()> {
        self.memset(dst, value, 4, count, Some(stream))
    }

    fn load_module(&self, image: ModuleImage<'_>) -> Result<ModuleHandle> {
        let (format, bytes) = match image {
            ModuleImage::Ptx(t) => (FORMAT_PTX, t.as_bytes()),
            ModuleImage::Binary(b) => (FORMAT_BINARY, b),
            ModuleImage::SpirV(b) => (FORMAT_SPIRV, b),
        };
        if bytes.len() > tf_remote_protocol::wire::MAX_MODULE {
            return Err(Error::new(
                ErrorKind::InvalidImage,
                format!(
                    "a module image of {} bytes is over the remote limit of {}",
                    bytes.len(),
                    tf_remote_protocol::wire::MAX_MODULE
                ),
            ));
        }
        let module = self.conn.name();
        let chunk = self.conn.max_data.max(1);
        let pieces: Vec<&[u8]> = if bytes.is_empty() {
            vec![&[]]
        } else {
            bytes.chunks(chunk).collect()
        };
        let mut link = self.conn.link()?;
        for (i, piece) in pieces.iter().enumerate() {
            let more = i + 1 < pieces.len();
            link.send(
                &Msg::ModuleLoad {
                    ctx: self.id,
                    module,
                    format,
                    flags: if more { flags::MORE } else { 0 },
                },
                piece,
            )
            .map_err(|e| self.conn.lost(&e))?;
        }
        match self.conn.answer(&mut link)? {
            Reply::Done => {}
            r => return Err(unexpected(r)),
        }
        drop(link);
        lock(&self.t).modules.insert(module);
        Ok(ModuleHandle(module))
    }

    fn unload_module(&self, module: ModuleHandle) -> Result<()> {
        let mut t = lock(&self.t);
        if !t.modules.remove(&module.0) {
            return Err(bad_handle("module", module.0));
        }
        t.functions.retain(|_, (m, _)| *m != module.0);
        drop(t);
        self.conn.post(
            &Msg::ModuleUnload {
                ctx: self.id,
                module: module.0,
            },
            &[],
        )
    }

    fn function(&self, module: ModuleHandle, name: &str) -> Result<FunctionHandle> {
        if !lock(&self.t).modules.contains(&module.0) {
            return Err(bad_handle("module", module.0));
        }
        let function = self.conn.name();
        match self.conn.call(
            &Msg::FunctionGet {
                ctx: self.id,
                module: module.0,
                function,
                name,
            },
            &[],
        )? {
            Reply::Params(sizes) => {
                lock(&self.t).functions.insert(function, (module.0, sizes));
                Ok(FunctionHandle(function))
            }
            r => Err(unexpected(r)),
        }
    }

    fn function_param_sizes(&self, function: FunctionHandle) -> Result<Vec<usize>> {
        self.param_sizes(function)
    }

    fn launch(
        &self,
        function: FunctionHandle,
        config: &LaunchConfig,
        stream: StreamHandle,
        args: &KernelArgs,
    ) -> Result<()> {
        if !lock(&self.t).functions.contains_key(&function.0) {
            return Err(bad_handle("function", function.0));
        }
        let s = self.stream(stream)?;
        let params: Vec<&[u8]> = args.params().iter().map(Vec::as_slice).collect();
        self.conn.post(
            &Msg::Launch {
                ctx: self.id,
                function: function.0,
                stream: s,
                grid: config.grid,
                block: config.block,
                shared: config.shared_mem_bytes,
                args: tf_remote_protocol::wire::Args(params),
            },
            &[],
        )
    }

    fn stream_create(&self) -> Result<StreamHandle> {
        let s = self.conn.name();
        self.conn.post(
            &Msg::StreamCreate {
                ctx: self.id,
                stream: s,
            },
            &[],
        )?;
        lock(&self.t).streams.insert(s);
        Ok(StreamHandle(s))
    }

    fn stream_destroy(&self, stream: StreamHandle) -> Result<()> {
        if !lock(&self.t).streams.remove(&stream.0) {
            return Err(bad_handle("stream", stream.0));
        }
        self.conn.post(
            &Msg::StreamDestroy {
                ctx: self.id,
                stream: stream.0,
            },
            &[],
        )
    }

    fn stream_synchronize(&self, stream: StreamHandle) -> Result<()> {
        let s = self.stream(stream)?;
        self.conn.done(&Msg::StreamSynchronize {
            ctx: self.id,
            stream: s,
        })
    }

    fn stream_query(&self, stream: StreamHandle) -> Result<bool> {
        let s = self.stream(stream)?;
        match self.conn.call(
            &Msg::StreamQuery {
                ctx: self.id,
                stream: s,
            },
            &[],
        )? {
            Reply::Value(v) => Ok(v != 0),
            r => Err(unexpected(r)),
        }
    }

    fn stream_wait_event(&self, stream: StreamHandle, event: EventHandle) -> Result<()> {
        let (s, e) = (self.stream(stream)?, self.event(event)?);
        self.conn.post(
            &Msg::StreamWaitEvent {
                ctx: self.id,
                stream: s,
                event: e,
            },
            &[],
        )
    }

    fn event_create(&self) -> Result<EventHandle> {
        let e = self.conn.name();
        self.conn.post(
            &Msg::EventCreate {
                ctx: self.id,
                event: e,
            },
            &[],
        )?;
        lock(&self.t).events.insert(e);
        Ok(EventHandle(e))
    }

    fn event_destroy(&self, event: EventHandle) -> Result<()> {
        if !lock(&self.t).events.remove(&event.0) {
            return Err(bad_handle("event", event.0));
        }
        self.conn.post(
            &Msg::EventDestroy {
                ctx: self.id,
                event: event.0,
            },
            &[],
        )
    }

    fn event_record(&self, event: EventHandle, stream: StreamHandle) -> Result<()> {
        let (e, s) = (self.event(event)?, self.stream(stream)?);
        self.conn.post(
            &Msg::EventRecord {
                ctx: self.id,
                event: e,
                stream: s,
            },
            &[],
        )
    }

    fn event_synchronize(&self, event: EventHandle) -> Result<()> {
        let e = self.event(event)?;
        self.conn.done(&Msg::EventSynchronize {
            ctx: self.id,
            event: e,
        })
    }

    fn event_query(&self, event: EventHandle) -> Result<bool> {
        let e = self.event(event)?;
        match self.conn.call(
            &Msg::EventQuery {
                ctx: self.id,
                event: e,
            },
            &[],
        )? {
            Reply::Value(v) => Ok(v != 0),
            r => Err(unexpected(r)),
        }
    }

    fn event_elapsed(&self, start: EventHandle, end: EventHandle) -> Result<Duration> {
        let (a, b) = (self.event(start)?, self.event(end)?);
        match self.conn.call(
            &Msg::EventElapsed {
                ctx: self.id,
                start: a,
                end: b,
            },
            &[],
        )? {
            Reply::Value(ns) => Ok(Duration::from_nanos(ns)),
            r => Err(unexpected(r)),
        }
    }

    fn synchronize(&self) -> Result<()> {
        self.conn.done(&Msg::Synchronize { ctx: self.id })
    }
}
