//! The daemon: vGPUs, attachments, the per-device control loops and the API service.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tf_hal::{BackendKind, Device};
use tf_scheduler::{AllocationId, Amount, GpuSpec, NodeSpec, PoolConfig, Qos, Request, Scheduler};
use tf_vgpu_limiter::vgpu::{EscapePolicy, TICK, Watch};
use tf_vgpu_limiter::{Control, Estimator, Limits, Vgpu};
use tokio::sync::watch;
use tonic::{Code, Status};

use crate::api;
use crate::share::{Demand, divide};
use crate::store::{AttachmentRecord, Store, VgpuRecord};

const POOL: &str = "node";
const NODE: &str = "local";
/// Samples kept per vGPU (one per tick).
const WINDOW: usize = 6;
/// Ticks over which activity and hunger are judged (300 ms).
const DEMAND_TICKS: usize = 3;
/// Ticks over which the achieved share is reported (500 ms).
const ACHIEVED_TICKS: usize = 5;

/// Where the daemon keeps things and what it serves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The database (`state.redb`) lives here.
    pub state_dir: PathBuf,
    /// vGPU regions (`vgpus/<name>/region`) live here: a tmpfs folder the vGPUs' programs can
    /// reach.
    pub run_dir: PathBuf,
    /// The share of each device the vGPUs divide (1.0: all of it).
    pub capacity: f64,
    /// Device memory a process may hold beyond what its region charged it (the audit's
    /// allowance: what a real driver reserves for contexts).
    pub memory_allowance: u64,
    /// How to start the worker of a remote vGPU (`None`: remote vGPUs are refused).
    pub worker: Option<WorkerLaunch>,
}

/// How the daemon starts a remote vGPU's worker: `EXE run --vgpu NAME --socket SOCKET -- EXE
/// worker --listen unix://FOLDER/worker.sock --token-file FOLDER/worker.token --device N
/// --backend BACKEND`, with `TF_VGPU_WORKER=1` (so that its front end runs it on the region
/// rather than as a client of itself). The front end attaches like any program's, so the
/// worker is paced with the vGPU and survives a restart of the daemon as programs do.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    /// The `tensor-fusion` binary.
    pub exe: PathBuf,
    /// The daemon's socket.
    pub socket: PathBuf,
    /// The backend's name.
    pub backend: String,
}

/// The environment variable that marks a remote vGPU's worker front end.
pub const WORKER_ENV: &str = "TF_VGPU_WORKER";

/// An error the API reports: a gRPC code and a message that names the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub code: Code,
    pub message: String,
}

impl Refusal {
    fn new(code: Code, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> Refusal {
        Refusal::new(Code::InvalidArgument, message)
    }
}

impl From<Refusal> for Status {
    fn from(r: Refusal) -> Status {
        Status::new(r.code, r.message)
    }
}

/// One window sample of a vGPU.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    now: u64,
    busy: u64,
    launches: u64,
    throttled: u64,
}

struct Entry {
    rec: VgpuRecord,
    qos: Qos,
    vgpu: Vgpu,
    control: Control,
    alloc: AllocationId,
    /// Attachment id → the front end's pid in the daemon's namespace (0: unknown), and whether
    /// it lives in another pid namespace.
    attached: BTreeMap<u64, (u32, bool)>,
    /// A front end from another pid namespace detached: once none is attached, every process
    /// registered in the region is gone (front ends take their commands with them) and the
    /// region is emptied; until then nothing is reclaimed by pid.
    foreign_left: bool,
    /// No pid-based reclaim before this tick (a recovered vGPU: its front ends, maybe in other
    /// namespaces, have not attached again yet).
    reclaim_from_tick: u64,
    updates: watch::Sender<api::AttachUpdate>,
    window: VecDeque<Sample>,
    /// Busy time of the vGPU's processes accumulated since the daemon started watching it
    /// (the backend's per-process counters vanish with their processes; this only grows).
    busy_total: u64,
    last_busy: Option<u64>,
    target: f64,
    achieved: f64,
    active: bool,
    hungry: bool,
    ticks: u64,
}

struct State {
    vgpus: BTreeMap<String, Entry>,
    scheduler: Scheduler,
    utilization: Vec<Option<f64>>,
    next_attachment: u64,
}

/// The daemon's core (shared by the API, the control loops and the metrics endpoint).
pub struct Node {
    devices: Vec<Arc<dyn Device>>,
    kinds: Vec<BackendKind>,
    store: Store,
    config: NodeConfig,
    state: Mutex<State>,
    stop: AtomicBool,
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn fmt_bytes(b: u64) -> String {
    tf_hal::units::format_bytes(b)
}

fn pct(s: f64) -> String {
    format!("{:.1}%", s * 100.0)
}

/// A share as the scheduler counts it (permille, rounded up so that a request is never
/// under-reserved).
fn permille(share: f64) -> u32 {
    ((share * 1000.0) - 1e-6).ceil().clamp(0.0, 1000.0) as u32
}

/// Whether `name` can name a vGPU: 1-63 letters, digits, `.`, `_` or `-`, starting with a
/// letter or digit.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

fn parse_qos(s: &str) -> Result<Qos, Refusal> {
    match s.trim().to_ascii_lowercase().as_str() {
        "" | "medium" => Ok(Qos::Medium),
        "low" => Ok(Qos::Low),
        "high" => Ok(Qos::High),
        "critical" => Ok(Qos::Critical),
        other => Err(Refusal::invalid(format!(
            "unknown QoS {other:?}: use low, medium, high or critical"
        ))),
    }
}

impl Node {
    /// Open the state in `config.state_dir` and recover every stored vGPU on `devices` (each
    /// with its backend kind). Region folders without a record are removed.
    pub fn open(
        config: NodeConfig,
        devices: Vec<(Arc<dyn Device>, BackendKind)>,
    ) -> Result<Arc<Node>, String> {
        for d in [&config.state_dir, &config.run_dir.join("vgpus")] {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(d)
                .map_err(|e| format!("creating {}: {e}", d.display()))?;
        }
        let store = Store::open(&config.state_dir.join("state.redb")).map_err(|e| e.to_string())?;
        let mut scheduler = Scheduler::new(tf_scheduler::Policy::default());
        scheduler
            .add_pool(PoolConfig::new(POOL))
            .map_err(|e| e.to_string())?;
        let gpus = devices
            .iter()
            .map(|(d, _)| {
                let i = d.info();
                GpuSpec {
                    model: i.model.clone(),
                    vendor: i.vendor,
                    tflops_milli: ((i.fp16_tflops * 1000.0) as u64).max(1000),
                    vram_bytes: i.total_memory_bytes,
                    topology: Default::default(),
                }
            })
            .collect();
        scheduler
            .add_node(NodeSpec {
                name: NODE.into(),
                pool: POOL.into(),
                cpu_milli: u64::MAX / 4,
                memory_bytes: u64::MAX / 4,
                gpus,
            })
            .map_err(|e| e.to_string())?;
        let n_devices = devices.len();
        let node = Arc::new(Node {
            kinds: devices.iter().map(|(_, k)| *k).collect(),
            devices: devices.into_iter().map(|(d, _)| d).collect(),
            store,
            config,
            state: Mutex::new(State {
                vgpus: BTreeMap::new(),
                scheduler,
                utilization: vec![None; n_devices],
                next_attachment: 1,
            }),
            stop: AtomicBool::new(false),
        });
        node.recover()?;
        Ok(node)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The node's devices.
    pub fn devices(&self) -> &[Arc<dyn Device>] {
        &self.devices
    }

    fn vgpus_dir(&self) -> PathBuf {
        self.config.run_dir.join("vgpus")
    }

    fn limits_of(rec: &VgpuRecord) -> Limits {
        Limits {
            vram_quota: Some(rec.vram_limit),
            compute_share: Some(rec.compute_limit).filter(|&s| s < 1.0),
        }
    }

    /// The scheduler request that reserves a stored vGPU again (rounded to the nearest
    /// permille, so that what fitted when it was created fits again).
    fn request_of(rec: &VgpuRecord) -> Request {
        // Placed at the lowest QoS so that placement never preempts another vGPU; the vGPU's
        // QoS orders lending only.
        let mut r = Request::new(POOL, "default", 1).with_qos(Qos::Low);
        r.tflops = Amount::Permille((rec.compute_request * 1000.0).round() as u32);
        r.vram = Amount::Absolute(rec.vram_request);
        r
    }

    fn new_entry(
        &self,
        rec: VgpuRecord,
        qos: Qos,
        vgpu: Vgpu,
        alloc: AllocationId,
        recovered: bool,
    ) -> Entry {
        let kind = self.kinds[rec.device_index as usize];
        let target = rec.compute_request.min(rec.compute_limit);
        let (updates, _) = watch::channel(api::AttachUpdate::default());
        Entry {
            control: Control::with_target(target.max(1e-3), Estimator::for_backend(kind)),
            target,
            rec,
            qos,
            vgpu,
            alloc,
            attached: BTreeMap::new(),
            foreign_left: false,
            // 2 s: front ends try to attach again every 100 ms.
            reclaim_from_tick: if recovered { 20 } else { 0 },
            updates,
            window: VecDeque::new(),
            busy_total: 0,
            last_busy: None,
            achieved: 0.0,
            active: false,
            hungry: false,
            ticks: 0,
        }
    }

    /// Rebuild every stored vGPU (after a restart or a kill -9): its region is reopened with the
    /// usage its processes left in it, its placement reserved again.
    fn recover(&self) -> Result<(), String> {
        let records = self.store.list().map_err(|e| e.to_string())?;
        let before = self.store.attachments().map_err(|e| e.to_string())?;
        let mut st = self.lock();
        st.next_attachment = before.iter().map(|a| a.id + 1).max().unwrap_or(1);
        for rec in records {
            let Some(device) = self.devices.get(rec.device_index as usize) else {
                tracing::error!(vgpu = %rec.name, device = rec.device_index, "the vGPU's device is gone; it stays stored but is not served");
                continue;
            };
            let info = device.info();
            if info.uuid != rec.device_uuid {
                tracing::error!(vgpu = %rec.name, stored = %rec.device_uuid, found = %info.uuid, "device {} is another device now; the vGPU stays stored but is not served", rec.device_index);
                continue;
            }
            let qos = parse_qos(&rec.qos).unwrap_or(Qos::Medium);
            let limits = Node::limits_of(&rec);
            let vgpu = match Vgpu::recover(&rec.folder, info, &limits) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(vgpu = %rec.name, error = %e, "the region is gone (a reboot?): making it again");
                    let _ = std::fs::remove_dir_all(&rec.folder);
                    Vgpu::create_persistent(&rec.folder, info, &limits)
                        .map_err(|e| format!("vGPU {}: {e}", rec.name))?
                }
            };
            let req = Node::request_of(&rec).with_pin(NODE, &[rec.device_index]);
            let alloc = st
                .scheduler
                .reserve(&req)
                .map_err(|e| format!("vGPU {}: {e}", rec.name))?
                .id;
            tracing::info!(vgpu = %rec.name, device = rec.device_index, "recovered");
            let mut e = self.new_entry(rec, qos, vgpu, alloc, true);
            // Front ends attached when the daemon stopped attach again as new attachments.
            // Until then nothing is reclaimed by pid; if one of them lived in another pid
            // namespace, the region's pids mean nothing here, and the region is emptied once
            // none is attached after the grace period (the front ends that died while the
            // daemon was down took their programs with them).
            let was: Vec<&AttachmentRecord> =
                before.iter().filter(|a| a.vgpu == e.rec.name).collect();
            e.foreign_left = was.iter().any(|a| a.foreign);
            if !was.is_empty() {
                tracing::info!(vgpu = %e.rec.name, front_ends = was.len(), "front ends were attached when the daemon stopped");
            }
            if e.rec.remote {
                self.start_worker(&e.rec);
            }
            st.vgpus.insert(e.rec.name.clone(), e);
        }
        // The old attachments are superseded by the new ones front ends make.
        let ids: Vec<u64> = before.iter().map(|a| a.id).collect();
        self.store.detach(&ids).map_err(|e| e.to_string())?;
        // Folders nobody stored: a create cut short between the folder and the commit.
        if let Ok(dir) = std::fs::read_dir(self.vgpus_dir()) {
            for f in dir.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                if !st.vgpus.contains_key(&name) && !self.stored(&name) {
                    tracing::info!(folder = %f.path().display(), "removing a vGPU folder without a record");
                    let _ = std::fs::remove_dir_all(f.path());
                }
            }
        }
        Ok(())
    }

    fn stored(&self, name: &str) -> bool {
        self.store
            .list()
            .map(|l| l.iter().any(|r| r.name == name))
            .unwrap_or(true)
    }

    /// Create a vGPU. Every check runs before anything is written; nothing changes on refusal.
    pub fn create(&self, req: &api::CreateVgpuRequest) -> Result<api::Vgpu, Refusal> {
        let name = req.name.trim();
        if !valid_name(name) {
            return Err(Refusal::invalid(format!(
                "vGPU name {:?} is not valid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit",
                req.name
            )));
        }
        let qos = parse_qos(&req.qos)?;
        if req.remote && self.config.worker.is_none() {
            return Err(Refusal::new(
                Code::FailedPrecondition,
                "this daemon cannot start workers, so it has no remote vGPUs: create a local one (without --remote)",
            ));
        }
        let n = self.devices.len();
        let device = match req.device {
            Some(d) if d as usize >= n => {
                return Err(Refusal::new(
                    Code::NotFound,
                    format!(
                        "no device {d} on this node: it has {n} (indices 0..{}; see `tensor-fusion devices`)",
                        n.saturating_sub(1)
                    ),
                ));
            }
            d => d,
        };
        // The devices the vGPU could go on: the one asked for, or any.
        let candidates: Vec<usize> = match device {
            Some(d) => vec![d as usize],
            None => (0..n).collect(),
        };
        if candidates.is_empty() {
            return Err(Refusal::new(
                Code::FailedPrecondition,
                "this node has no devices",
            ));
        }
        let peak = |i: usize| self.devices[i].info().fp16_tflops;
        let max_peak = candidates.iter().map(|&i| peak(i)).fold(0.0, f64::max);
        let max_vram = candidates
            .iter()
            .map(|&i| self.devices[i].info().total_memory_bytes)
            .max()
            .unwrap_or(0);
        let which = match device {
            Some(d) => format!("device {d}"),
            None => "any device of this node".to_string(),
        };
        // Compute: a share, or TFLOPS (converted on the device it lands on).
        let finite = |v: f64, flag: &str| {
            if v.is_finite() {
                Ok(v)
            } else {
                Err(Refusal::invalid(format!(
                    "{flag} must be a number, got {v}"
                )))
            }
        };
        let share_or_tflops = |share: Option<f64>,
                               tflops: Option<f64>,
                               what: &str|
         -> Result<Option<(bool, f64)>, Refusal> {
            match (share, tflops) {
                (Some(_), Some(_)) => Err(Refusal::invalid(format!(
                    "give the compute {what} as a percent or as TFLOPS, not both"
                ))),
                (Some(s), None) => {
                    let s = finite(s, "--compute-percent")?;
                    if s <= 0.0 || s > 1.0 {
                        return Err(Refusal::invalid(format!(
                            "compute {what} {} is outside (0%, 100%]: a vGPU is at most the whole device; use a percent in (0, 100]",
                            pct(s)
                        )));
                    }
                    Ok(Some((false, s)))
                }
                (None, Some(t)) => {
                    let t = finite(t, "--tflops")?;
                    if t <= 0.0 || t > max_peak {
                        return Err(Refusal::invalid(format!(
                            "compute {what} {t} TFLOPS is outside (0, {max_peak:.1}], the peak of {which}; lower it"
                        )));
                    }
                    Ok(Some((true, t)))
                }
                (None, None) => Ok(None),
            }
        };
        let Some(limit) = share_or_tflops(req.compute_limit, req.tflops_limit, "limit")? else {
            return Err(Refusal::invalid(
                "a vGPU needs a compute limit: give --compute-percent P or --tflops T",
            ));
        };
        let request = share_or_tflops(req.compute_request, req.tflops_request, "request")?;
        if req.vram_limit_bytes == 0 {
            return Err(Refusal::invalid(
                "a vGPU needs a VRAM limit above 0: give --vram SIZE, e.g. --vram 4GiB",
            ));
        }
        if req.vram_limit_bytes > max_vram {
            return Err(Refusal::invalid(format!(
                "--vram {} is more than {which} has ({}); lower it",
                fmt_bytes(req.vram_limit_bytes),
                fmt_bytes(max_vram)
            )));
        }
        let vram_request = req.vram_request_bytes.unwrap_or(req.vram_limit_bytes);
        if vram_request > req.vram_limit_bytes {
            return Err(Refusal::invalid(format!(
                "--request-vram {} is above --vram {}: the request is the guaranteed part of the limit; lower the request or raise the limit",
                fmt_bytes(vram_request),
                fmt_bytes(req.vram_limit_bytes)
            )));
        }
        // Both as shares of a device with peak `p`.
        let as_share = |(is_tflops, v): (bool, f64), p: f64| if is_tflops { v / p } else { v };
        if let Some(r) = request {
            let over = candidates
                .iter()
                .all(|&i| as_share(r, peak(i)) > as_share(limit, peak(i)) + 1e-9);
            if over {
                return Err(Refusal::invalid(
                    "the compute request is above the compute limit: the request is the guaranteed part of the limit; lower --request-percent/--request-tflops or raise the limit",
                ));
            }
        }

        let mut st = self.lock();
        if st.vgpus.contains_key(name) {
            return Err(Refusal::new(
                Code::AlreadyExists,
                format!(
                    "a vGPU named {name:?} already exists: choose another name, or remove it first with `tensor-fusion vgpu rm {name}` (see `tensor-fusion vgpu ls`)"
                ),
            ));
        }
        // Placement: the scheduler engine, pinned to the device when one was named.
        let mut sreq = Request::new(POOL, "default", 1).with_qos(Qos::Low);
        sreq.vram = Amount::Absolute(vram_request);
        sreq.tflops = match request.unwrap_or(limit) {
            (true, t) => Amount::Absolute((t * 1000.0).ceil() as u64),
            (false, s) => Amount::Permille(permille(s)),
        };
        if let Some(d) = device {
            sreq = sreq.with_pin(NODE, &[d]);
        }
        let alloc = st.scheduler.reserve(&sreq).map_err(|e| {
            let free: Vec<String> = candidates
                .iter()
                .map(|&i| {
                    let (c, v) = requested(&st.vgpus, i as u32);
                    format!(
                        "device {i}: {} compute and {} VRAM unrequested",
                        pct((1.0 - c).max(0.0)),
                        fmt_bytes(self.devices[i].info().total_memory_bytes.saturating_sub(v))
                    )
                })
                .collect();
            Refusal::new(
                Code::ResourceExhausted,
                format!(
                    "vGPU {name} does not fit on {which} ({e}); {}: lower the request, or remove a vGPU",
                    free.join("; ")
                ),
            )
        })?;
        let index = alloc.gpus.first().map(|g| g.gpu).unwrap_or(0);
        let release = |st: &mut State| {
            let _ = st.scheduler.release(alloc.id);
        };
        let p = peak(index as usize);
        let compute_limit = as_share(limit, p).min(1.0);
        let compute_request = request.map(|r| as_share(r, p)).unwrap_or(compute_limit);
        if compute_request > compute_limit + 1e-9 {
            release(&mut st);
            return Err(Refusal::invalid(format!(
                "on device {index} the compute request ({}) is above the limit ({}): lower the request or raise the limit",
                pct(compute_request),
                pct(compute_limit)
            )));
        }
        let info = self.devices[index as usize].info().clone();
        let folder = self.vgpus_dir().join(name);
        let rec = VgpuRecord {
            name: name.to_string(),
            device_index: index,
            device_uuid: info.uuid.clone(),
            qos: qos.as_str().to_string(),
            compute_request,
            compute_limit,
            vram_request,
            vram_limit: req.vram_limit_bytes,
            folder: folder.clone(),
            created_unix_ms: now_unix_ms(),
            remote: req.remote,
        };
        // A folder of that name without a record is left from a create cut short.
        let _ = std::fs::remove_dir_all(&folder);
        let vgpu = match Vgpu::create_persistent(&folder, &info, &Node::limits_of(&rec)) {
            Ok(v) => v,
            Err(e) => {
                release(&mut st);
                return Err(Refusal::new(
                    Code::Internal,
                    format!("creating {name}: {e}"),
                ));
            }
        };
        if let Err(e) = self.store.insert(&rec) {
            release(&mut st);
            vgpu.remove();
            return Err(Refusal::new(Code::Internal, e.to_string()));
        }
        tracing::info!(vgpu = %name, device = index, qos = %qos, request = compute_request, limit = compute_limit, vram = rec.vram_limit, "vGPU created");
        let e = self.new_entry(rec, qos, vgpu, alloc.id, false);
        if e.rec.remote {
            self.start_worker(&e.rec);
        }
        let out = view(&e);
        st.vgpus.insert(name.to_string(), e);
        Ok(out)
    }

    /// Remove a vGPU (refused while programs are attached, unless `force`).
    pub fn remove(&self, name: &str, force: bool) -> Result<(), Refusal> {
        let mut st = self.lock();
        let Some(e) = st.vgpus.get(name) else {
            return Err(Refusal::new(
                Code::NotFound,
                format!("no vGPU named {name:?} (see `tensor-fusion vgpu ls`)"),
            ));
        };
        // A remote vGPU's front ends are its worker's (programs reach it through the worker).
        if !e.attached.is_empty() && !force && !e.rec.remote {
            return Err(Refusal::new(
                Code::FailedPrecondition,
                format!(
                    "vGPU {name} has {} program(s) attached (front ends {:?}): stop them first, or remove it with --force",
                    e.attached.len(),
                    e.attached.values().map(|a| a.0).collect::<Vec<_>>()
                ),
            ));
        }
        self.store
            .remove(name)
            .map_err(|e| Refusal::new(Code::Internal, e.to_string()))?;
        let e = st.vgpus.remove(name).expect("checked above");
        let _ = st.scheduler.release(e.alloc);
        if e.rec.remote {
            for &(pid, _) in e.attached.values() {
                if pid != 0 {
                    // SAFETY: kill(2) on the worker front end this daemon started (attached
                    // now, so alive); it stops the worker and ends.
                    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
                }
            }
        }
        // Attached front ends see their stream end.
        drop(e.updates);
        e.vgpu.remove();
        tracing::info!(vgpu = %name, "vGPU removed");
        Ok(())
    }

    /// Every vGPU.
    pub fn list(&self) -> Vec<api::Vgpu> {
        self.lock().vgpus.values().map(view).collect()
    }

    /// The devices, with their vGPUs' sums.
    pub fn list_devices(&self) -> Vec<api::Device> {
        let st = self.lock();
        self.devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let info = d.info();
                let (c, v) = requested(&st.vgpus, i as u32);
                let sensors = d.sensors().unwrap_or_default();
                api::Device {
                    index: info.index,
                    uuid: info.uuid.clone(),
                    model: info.model.clone(),
                    vendor: format!("{:?}", info.vendor).to_ascii_lowercase(),
                    backend: self.kinds[i].as_str().to_string(),
                    total_memory_bytes: info.total_memory_bytes,
                    used_memory_bytes: d.memory().map(|m| m.used_bytes).unwrap_or(0),
                    fp16_tflops: info.fp16_tflops,
                    utilization: st.utilization.get(i).copied().flatten(),
                    compute_requested: c,
                    vram_requested_bytes: v,
                    vgpus: st
                        .vgpus
                        .values()
                        .filter(|e| e.rec.device_index == i as u32)
                        .count() as u32,
                    temperature_c: sensors.temperature_c,
                    power_w: sensors.power_w,
                }
            })
            .collect()
    }

    /// Attach a front end (its pid in our namespace, 0 if unknown) to vGPU `name`: the first
    /// update (with the session) and the stream of the following ones, and a guard that
    /// detaches it when dropped.
    pub fn attach(
        self: &Arc<Self>,
        name: &str,
        pid: u32,
    ) -> Result<
        (
            api::AttachUpdate,
            watch::Receiver<api::AttachUpdate>,
            Detach,
        ),
        Refusal,
    > {
        let mut st = self.lock();
        let id = st.next_attachment;
        st.next_attachment += 1;
        let Some(e) = st.vgpus.get_mut(name) else {
            return Err(Refusal::new(
                Code::NotFound,
                format!(
                    "no vGPU named {name:?}: create it with `tensor-fusion vgpu create {name} ...` (see `tensor-fusion vgpu ls`)"
                ),
            ));
        };
        let foreign = pid == 0 || pid_namespace(pid) != pid_namespace(std::process::id());
        self.store
            .attach(&AttachmentRecord {
                id,
                vgpu: name.to_string(),
                pid,
                foreign,
                since_unix_ms: now_unix_ms(),
            })
            .map_err(|e| Refusal::new(Code::Internal, e.to_string()))?;
        e.attached.insert(id, (pid, foreign));
        let kind = self.kinds[e.rec.device_index as usize];
        let info = e.vgpu.device();
        let mut first = update(e);
        first.session = Some(api::Session {
            region_path: e.vgpu.path().display().to_string(),
            device_uuid: info.uuid.clone(),
            device_index: info.index,
            vendor: format!("{:?}", info.vendor).to_ascii_lowercase(),
            backend: kind.as_str().to_string(),
            remote_address: remote_address(&e.rec),
            token_file: remote_token(&e.rec),
        });
        tracing::info!(vgpu = %name, pid, foreign, attachment = id, "attached");
        Ok((
            first,
            e.updates.subscribe(),
            Detach {
                node: self.clone(),
                name: name.to_string(),
                id,
            },
        ))
    }

    fn detach(&self, name: &str, id: u64) {
        let mut st = self.lock();
        if let Err(e) = self.store.detach(&[id]) {
            tracing::error!(error = %e, attachment = id, "cannot forget the attachment");
        }
        if let Some(e) = st.vgpus.get_mut(name)
            && let Some((pid, foreign)) = e.attached.remove(&id)
        {
            tracing::info!(vgpu = %name, pid, attachment = id, "detached");
            e.foreign_left |= foreign;
            if e.foreign_left && e.attached.is_empty() {
                let bytes = e.vgpu.region().reclaim_all();
                e.foreign_left = false;
                tracing::info!(vgpu = %name, bytes, "the last front end left: its processes' memory is given back");
            }
        }
    }

    /// Stop the control loops (they notice within a tick).
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Start one control loop per device (threads; they run until [`Node::shutdown`]).
    pub fn start_control_loops(self: &Arc<Self>) -> Vec<std::thread::JoinHandle<()>> {
        (0..self.devices.len())
            .filter_map(|i| {
                let node = self.clone();
                std::thread::Builder::new()
                    .name(format!("control-{i}"))
                    .spawn(move || node.control_loop(i))
                    .map_err(|e| tracing::error!(device = i, error = %e, "cannot start the control loop"))
                    .ok()
            })
            .collect()
    }

    fn control_loop(&self, index: usize) {
        let device = self.devices[index].clone();
        let mut next = std::time::Instant::now();
        let mut util_window: VecDeque<tf_hal::BusySample> = VecDeque::new();
        while !self.stop.load(Ordering::Acquire) {
            next += TICK;
            let now_i = std::time::Instant::now();
            if next > now_i {
                std::thread::sleep(next - now_i);
            } else {
                next = now_i; // late (a loaded machine): no catching up in a burst
            }
            let util = match device.busy_sample() {
                Ok(Some(s)) => {
                    util_window.push_back(s);
                    while util_window.len() > 11 {
                        util_window.pop_front();
                    }
                    let first = util_window.front().copied().unwrap_or(s);
                    (first.at_ns < s.at_ns).then(|| s.utilization_since(&first) / 100.0)
                }
                _ => None,
            };
            let processes = device.processes().ok();
            self.tick_device(index, &*device, processes.as_deref(), util);
        }
    }

    /// One control tick of device `index`: every vGPU's controller ticks, its window is
    /// updated, the device is divided again and the pacing goes out to the front ends.
    fn tick_device(
        &self,
        index: usize,
        device: &dyn Device,
        processes: Option<&[tf_hal::ProcessUsage]>,
        util: Option<f64>,
    ) {
        let now = tf_os::now_ns();
        let mut st = self.lock();
        if let Some(u) = st.utilization.get_mut(index) {
            *u = util;
        }
        let names: Vec<String> = st
            .vgpus
            .iter()
            .filter(|(_, e)| e.rec.device_index == index as u32)
            .map(|(n, _)| n.clone())
            .collect();
        if names.is_empty() {
            return;
        }
        let mut demands = Vec::with_capacity(names.len());
        for name in &names {
            let e = st.vgpus.get_mut(name).expect("listed above");
            // By pid only where pids mean something here: not while front ends from another
            // pid namespace are (or were) attached, nor before a recovered vGPU's front ends
            // are back.
            if e.foreign_left && e.attached.is_empty() && e.ticks >= e.reclaim_from_tick {
                let bytes = e.vgpu.region().reclaim_all();
                e.foreign_left = false;
                tracing::info!(vgpu = %name, bytes, "front ends from another pid namespace did not come back: their processes' memory is given back");
            }
            e.control.set_reclaim_dead(
                !e.foreign_left
                    && e.ticks >= e.reclaim_from_tick
                    && !e.attached.values().any(|a| a.1),
            );
            let watch = Watch {
                roots: e
                    .attached
                    .values()
                    .map(|a| a.0)
                    .filter(|&p| p != 0)
                    .collect(),
                policy: EscapePolicy::Warn,
                memory_allowance: self.config.memory_allowance,
            };
            let t = e.control.tick(&e.vgpu, device, processes, &watch, now);
            for esc in &t.escapes {
                tracing::warn!(vgpu = %name, pid = esc.pid, kind = esc.kind, detail = %esc.detail, "escape");
            }
            if let Some(b) = t.busy_ns {
                // Processes that exit take their counters with them: only growth counts.
                if let Some(last) = e.last_busy {
                    e.busy_total += b.saturating_sub(last);
                }
                e.last_busy = Some(b);
            }
            e.window.push_back(Sample {
                now,
                busy: e.busy_total,
                launches: t.launches,
                throttled: t.throttled,
            });
            while e.window.len() > WINDOW {
                e.window.pop_front();
            }
            e.ticks += 1;
            let last = *e.window.back().expect("just pushed");
            let back = |n: usize| e.window[e.window.len().saturating_sub(n + 1)];
            let d = back(DEMAND_TICKS);
            let a = back(ACHIEVED_TICKS);
            let wall = last.now.saturating_sub(a.now).max(1) as f64;
            e.achieved = (last.busy.saturating_sub(a.busy) as f64 / wall).clamp(0.0, 1.0);
            let dwall = last.now.saturating_sub(d.now).max(1) as f64;
            let used = (last.busy.saturating_sub(d.busy) as f64 / dwall).clamp(0.0, 1.0);
            e.active = last.launches > d.launches || last.busy > d.busy;
            e.hungry = last.throttled > d.throttled;
            demands.push(Demand {
                request: e.rec.compute_request.min(e.rec.compute_limit),
                limit: e.rec.compute_limit,
                qos: e.qos,
                used,
                active: e.active,
                hungry: e.hungry,
            });
        }
        let targets = divide(&demands, self.config.capacity);
        for (name, target) in names.iter().zip(targets) {
            let e = st.vgpus.get_mut(name).expect("listed above");
            if (target - e.target).abs() > 1e-4 {
                tracing::debug!(vgpu = %name, from = e.target, to = target, "target share");
            }
            e.target = target;
            e.control.set_target(target.max(1e-3));
            let u = update(e);
            e.updates.send_replace(u);
        }
    }

    /// A consistent reading of everything, for metrics and `top`.
    pub fn snapshot(&self) -> (Vec<api::Device>, Vec<api::Vgpu>) {
        (self.list_devices(), self.list())
    }
}

impl Node {
    /// Start the worker of remote vGPU `rec`, unless one serves its socket already (it outlived
    /// a restart of the daemon). Its front end is reaped by a thread of its own.
    fn start_worker(&self, rec: &VgpuRecord) {
        let Some(w) = &self.config.worker else {
            return;
        };
        let sock = rec.folder.join("worker.sock");
        if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
            return;
        }
        let _ = std::fs::remove_file(&sock);
        let token = PathBuf::from(remote_token(rec));
        if !token.exists() {
            let mut bytes = [0u8; 24];
            let random = std::fs::File::open("/dev/urandom")
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes));
            if let Err(e) = random {
                tracing::error!(vgpu = %rec.name, error = %e, "no randomness for the worker's token");
                return;
            }
            let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let written = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&token)
                .and_then(|mut f| f.write_all(text.as_bytes()));
            if let Err(e) = written {
                tracing::error!(vgpu = %rec.name, error = %e, "writing the worker's token");
                return;
            }
        }
        let log = std::fs::File::create(rec.folder.join("worker.log")).ok();
        let mut cmd = std::process::Command::new(&w.exe);
        cmd.args(["run", "--vgpu", &rec.name, "--socket"])
            .arg(&w.socket)
            .arg("--")
            .arg(&w.exe)
            .args(["worker", "--listen", &remote_address(rec), "--token-file"])
            .arg(&token)
            .args([
                "--device",
                &rec.device_index.to_string(),
                "--backend",
                &w.backend,
            ])
            .env(WORKER_ENV, "1")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null());
        if let Some(log) = log {
            cmd.stderr(log);
        }
        match cmd.spawn() {
            Ok(mut child) => {
                tracing::info!(vgpu = %rec.name, pid = child.id(), address = %remote_address(rec), "worker started");
                let _ = std::thread::Builder::new()
                    .name("worker-reaper".into())
                    .spawn(move || {
                        let _ = child.wait();
                    });
            }
            Err(e) => tracing::error!(vgpu = %rec.name, error = %e, "cannot start the worker"),
        }
    }
}

/// A remote vGPU's worker address (`unix://FOLDER/worker.sock`), empty for a local one.
fn remote_address(rec: &VgpuRecord) -> String {
    if rec.remote {
        format!("unix://{}", rec.folder.join("worker.sock").display())
    } else {
        String::new()
    }
}

/// A remote vGPU's worker token file, empty for a local one.
fn remote_token(rec: &VgpuRecord) -> String {
    if rec.remote {
        rec.folder.join("worker.token").display().to_string()
    } else {
        String::new()
    }
}

/// Detaches an attachment when dropped (its stream ended: the front end is gone).
pub struct Detach {
    node: Arc<Node>,
    name: String,
    id: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        self.node.detach(&self.name, self.id);
    }
}

/// What the vGPUs of device `index` request: (compute share, VRAM bytes).
fn requested(vgpus: &BTreeMap<String, Entry>, index: u32) -> (f64, u64) {
    vgpus
        .values()
        .filter(|e| e.rec.device_index == index)
        .fold((0.0, 0), |(c, v), e| {
            (c + e.rec.compute_request, v + e.rec.vram_request)
        })
}

/// The pacing update front ends of `e` get.
fn update(e: &Entry) -> api::AttachUpdate {
    let page = e.vgpu.limits().page();
    let p = page.pacing();
    let (est, measured) = page.estimates();
    api::AttachUpdate {
        session: None,
        interval_ns: p.interval_ns,
        burst_ns: p.burst_ns,
        est_launch_ns: est,
        measured_share: measured,
        vram_quota_bytes: e.rec.vram_limit,
        compute_limit: e.rec.compute_limit,
        tick: e.ticks,
    }
}

fn view(e: &Entry) -> api::Vgpu {
    let s = e.vgpu.region().stats();
    api::Vgpu {
        name: e.rec.name.clone(),
        device_index: e.rec.device_index,
        device_uuid: e.rec.device_uuid.clone(),
        qos: e.rec.qos.clone(),
        compute_request: e.rec.compute_request,
        compute_limit: e.rec.compute_limit,
        vram_request_bytes: e.rec.vram_request,
        vram_limit_bytes: e.rec.vram_limit,
        target_share: e.target,
        achieved_share: e.achieved,
        busy_ns: e.busy_total,
        busy_at_ns: e.window.back().map(|w| w.now).unwrap_or(0),
        remote_address: remote_address(&e.rec),
        token_file: remote_token(&e.rec),
        vram_used_bytes: s.vram_used,
        launches: s.launches,
        throttled_launches: s.throttled_launches,
        throttled_ns: s.throttled_ns,
        attached_pids: e.attached.values().map(|a| a.0).collect(),
        region_path: e.vgpu.path().display().to_string(),
        created_unix_ms: e.rec.created_unix_ms,
        active: e.active,
    }
}

/// The pid namespace of process `pid` (`/proc/<pid>/ns/pid`), if it can be read.
fn pid_namespace(pid: u32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// Make the state and run folders (mode 0700) and refuse a socket path another daemon serves.
pub fn prepare_socket(path: &Path) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "{} is served by a running daemon: stop it first, or give another --socket",
                path.display()
            ));
        }
        std::fs::remove_file(path).map_err(|e| format!("removing {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Wait for `Duration` or until `stop` is set.
pub fn sleep_unless(stop: &AtomicBool, d: Duration) {
    let end = std::time::Instant::now() + d;
    while !stop.load(Ordering::Acquire) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20).min(d));
    }
}
