//! One vGPU session: the single owner of a vGPU's limits and region and of everything derived
//! from them.
//!
//! A [`Vgpu`] creates its limits page (a sealed memfd only it can write: see [`crate::limits`])
//! and its region (in a fresh folder of its own, mode 0700, after removing vGPUs nobody uses any
//! more), produces the environment a program needs to run on it ([`Vgpu::environment`]: the
//! page's and the region's paths, the interposer in `LD_PRELOAD`, the driver library path, the
//! visible device), and runs the control loop against a `&dyn tf_hal::Device`
//! ([`Vgpu::run_controller`]): pacing, a heartbeat, and an audit of what the driver itself says
//! the vGPU's processes use ([`Watch`]), which reports (and by policy kills) processes that
//! escape the interposer. It owns its mappings, and removes its folder when dropped.
//! `tensor-fusion run` is a thin front end over it; the node daemon uses it unchanged.
//!
//! The environment contract (read by `tf_vgpu_limiter::client` inside the program): limits reach
//! the program one way only, through the limits page named by `TF_VGPU_LIMITS`; the region named
//! by `TF_VGPU_REGION` is shared state its processes may write, and is never trusted.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tf_hal::{Device, DeviceInfo};

use crate::client::{LIMITS_ENV, REGION_ENV};
use crate::controller::{Controller, Estimator};
use crate::limits::LimitsOwner;
use crate::region::{Limits, Region, RegionError, RegionMap, RegionStats};

/// Each vGPU's folder is named `tf-vgpu-<pid>-<start time>-<sequence>` and holds its region
/// file, [`REGION_FILE`].
pub const REGION_PREFIX: &str = "tf-vgpu-";
/// The region file inside a vGPU's folder.
pub const REGION_FILE: &str = "region";
/// How often the controller ticks.
pub const TICK: Duration = Duration::from_millis(100);

/// What a program needs injected to run on a vGPU, found by whoever installed tensor-fusion.
#[derive(Debug, Clone, Default)]
pub struct Injection {
    /// Libraries put first in `LD_PRELOAD` (an interposer: `libtf_cuda_interposer.so`,
    /// `libtf_acl_interposer.so`); none for an API whose loader loads the limiter itself (the
    /// Vulkan layer).
    pub preload: Vec<PathBuf>,
    /// Directories put first on `LD_LIBRARY_PATH` (the simulated driver libraries, when the
    /// device is simulated).
    pub library_dirs: Vec<PathBuf>,
    /// Other `:`-separated lists the program gets with these entries first: the Vulkan
    /// loader's `VK_ADD_LAYER_PATH` (the layer manifest's folder) and `VK_INSTANCE_LAYERS`.
    pub path_lists: Vec<(String, OsString)>,
}

impl Injection {
    /// The variables that inject these libraries into a program: `LD_PRELOAD` (the preloaded
    /// libraries first, then what `inherited` had; left alone when there are none), the path
    /// lists (their entries first) and `LD_LIBRARY_PATH` (the directories first). Part of
    /// [`Vgpu::environment`]; a remote vGPU (`tensor-fusion run --remote`, whose driver is the
    /// client stub on `LD_LIBRARY_PATH`) uses it alone.
    pub fn environment(
        &self,
        inherited: impl Fn(&str) -> Option<OsString>,
    ) -> Vec<(OsString, OsString)> {
        let mut env = Vec::new();
        if !self.preload.is_empty() {
            let libs = std::env::join_paths(&self.preload).unwrap_or_default();
            env.push(("LD_PRELOAD".into(), prepend(&libs, inherited("LD_PRELOAD"))));
        }
        for (name, first) in &self.path_lists {
            env.push((name.into(), prepend(first, inherited(name))));
        }
        if !self.library_dirs.is_empty() {
            let dirs = std::env::join_paths(&self.library_dirs).unwrap_or_default();
            env.push((
                "LD_LIBRARY_PATH".into(),
                prepend(&dirs, inherited("LD_LIBRARY_PATH")),
            ));
        }
        env
    }
}

/// A vGPU: its limits page and region (owned; its folder is removed on drop) and the device it
/// is on.
#[derive(Debug)]
pub struct Vgpu {
    folder: PathBuf,
    path: PathBuf,
    region: RegionMap,
    limits: LimitsOwner,
    device: DeviceInfo,
    escapes: std::sync::Mutex<Vec<Escape>>,
}

impl Vgpu {
    /// Create a vGPU on `device` with `limits`, its region in `dir` (created if missing, mode
    /// 0700). Regions in `dir` that nobody uses any more are removed first.
    pub fn create(dir: &Path, device: &DeviceInfo, limits: &Limits) -> Result<Vgpu, RegionError> {
        let io = |source| RegionError::Io {
            path: dir.to_path_buf(),
            source,
        };
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        remove_stale_regions(dir);
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        // pid and start time tell runs apart across pid reuse; the sequence, vGPUs of one process.
        let me = std::process::id();
        let started = tf_os::process_start_time(me).unwrap_or(0);
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let folder = dir.join(format!("{REGION_PREFIX}{me}-{started}-{n}"));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&folder)
                .map_err(|source| RegionError::Io {
                    path: folder.clone(),
                    source,
                })?;
        }
        let remove = |e| {
            let _ = std::fs::remove_dir_all(&folder);
            e
        };
        let path = folder.join(REGION_FILE);
        let region = Region::create(&path, &device.uuid, device.index, limits).map_err(remove)?;
        let limits = LimitsOwner::create(&device.uuid, device.index, limits)
            .map_err(|source| RegionError::Io {
                path: PathBuf::from("memfd:tf-vgpu-limits"),
                source,
            })
            .map_err(remove)?;
        let p = limits.page().pacing();
        region.set_pacing(p.interval_ns, p.burst_ns, 0, 0.0);
        Ok(Vgpu {
            folder,
            path,
            region,
            limits,
            device: device.clone(),
            escapes: Default::default(),
        })
    }

    /// The region file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The region (usage, launch admission, counters, and a copy of the limits).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The limits page (the owner's writable side).
    pub fn limits(&self) -> &LimitsOwner {
        &self.limits
    }

    /// What the audit found so far.
    pub fn escapes(&self) -> Vec<Escape> {
        self.escapes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The device the vGPU is on.
    pub fn device(&self) -> &DeviceInfo {
        &self.device
    }

    /// A reading of the region, dead processes' usage given back first.
    pub fn stats(&self) -> RegionStats {
        self.region.reclaim_dead();
        self.region.stats()
    }

    /// The environment a program runs with on this vGPU: `TF_VGPU_REGION`, `LD_PRELOAD` (the
    /// injection's libraries first, then what `inherited` had; left alone when it has none),
    /// `LD_LIBRARY_PATH` (the injection's directories first), the injection's other path lists
    /// (its entries first), and `CUDA_VISIBLE_DEVICES` (the vGPU's device only; on an Ascend NPU
    /// also `ASCEND_RT_VISIBLE_DEVICES`, by index). `inherited`
    /// looks a variable up in the environment the program would otherwise get.
    pub fn environment(
        &self,
        inject: &Injection,
        inherited: impl Fn(&str) -> Option<OsString>,
    ) -> Vec<(OsString, OsString)> {
        let mut env = vec![
            (REGION_ENV.into(), self.path.clone().into_os_string()),
            (
                LIMITS_ENV.into(),
                self.limits
                    .path()
                    .map(PathBuf::into_os_string)
                    .unwrap_or_default(),
            ),
            (
                "CUDA_VISIBLE_DEVICES".into(),
                self.device.uuid.clone().into(),
            ),
        ];
        if self.device.vendor == tf_hal::Vendor::Ascend {
            // The ACL runtime's own visibility list: the vNPU's device only (by index).
            env.push((
                "ASCEND_RT_VISIBLE_DEVICES".into(),
                self.device.index.to_string().into(),
            ));
        }
        env.extend(inject.environment(inherited));
        env
    }

    /// Run the control loop against `device` until `stop` is set: every [`TICK`], a heartbeat
    /// on the limits page, dead processes' memory given back, and, when the vGPU has a compute
    /// share, its pacing set from the device time its processes used; twice a second, the
    /// [`Watch`] audit.
    pub fn run_controller(
        &self,
        device: &dyn Device,
        estimator: Estimator,
        watch: &Watch,
        stop: &AtomicBool,
    ) {
        let mut controller = self
            .limits
            .page()
            .limits()
            .compute_share
            .map(Controller::new);
        let mut estimator = estimator;
        let mut audit = Audit::default();
        let mut ticks = 0u64;
        let mut family: Vec<u32> = Vec::new();
        while !stop.load(Ordering::Acquire) {
            let now = tf_os::now_ns();
            self.limits.heartbeat(now);
            // A region whose header was overwritten says nothing reliable: its processes have
            // moved to their own copies, and the pacing follows the driver's count alone until
            // it is valid again.
            let valid = self.region.is_valid();
            if !valid && ticks.is_multiple_of(50) {
                tracing::error!(region = %self.path.display(), "the vGPU's region was overwritten; pacing on the driver's count alone");
            }
            // The region is shared memory the vGPU's processes can write anything into: one
            // bad tick must not take the control loop (and the vGPU's limits) down with it.
            let tick = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.region.reclaim_dead();
                if let Some(c) = controller.as_mut() {
                    // Whose device time counts: the processes registered in the region, and
                    // (the region being the tenant's to overwrite) every process descended
                    // from the vGPU's root, refreshed once a second.
                    if ticks.is_multiple_of(10) {
                        family = watch.root_pid.map(descendants).unwrap_or_default();
                    }
                    let mut members = family.clone();
                    if valid {
                        members.extend(self.region.processes().iter().map(|p| p.0));
                    }
                    let busy = match estimator {
                        Estimator::Busy => process_busy_ns(device, &members).unwrap_or_else(|| {
                            tracing::warn!(
                                "the backend has no per-process busy time; timing launches instead"
                            );
                            estimator = Estimator::Samples;
                            0
                        }),
                        Estimator::Samples => 0,
                    };
                    let t = if valid {
                        c.tick_with(&self.region, Some(&self.limits), now, estimator, busy)
                    } else {
                        c.tick_blind(&self.limits, now, busy)
                    };
                    tracing::debug!(?t, ?estimator, valid, "controller tick");
                }
                if ticks.is_multiple_of(5) {
                    for e in audit.check(self, device, watch, now) {
                        self.escapes
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(e);
                    }
                }
            }));
            if tick.is_err() {
                tracing::error!(
                    "a control tick failed on the region's contents; the last pacing stays"
                );
            }
            ticks += 1;
            std::thread::sleep(TICK);
        }
    }
}

/// What to do about a process that escapes the vGPU (the driver's own count says it uses more
/// memory or time than the vGPU allows, or it uses the device without the interposer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EscapePolicy {
    /// Report it (log, `--report`).
    #[default]
    Warn,
    /// Report it and kill it (SIGKILL).
    Kill,
}

impl EscapePolicy {
    pub fn parse(s: &str) -> Option<EscapePolicy> {
        match s.trim().to_ascii_lowercase().as_str() {
            "warn" => Some(EscapePolicy::Warn),
            "kill" => Some(EscapePolicy::Kill),
            _ => None,
        }
    }
}

/// How the control loop audits the vGPU's processes against the driver's own view.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// The vGPU's root process: it and its descendants belong to the vGPU (besides the
    /// processes registered in the region), whether or not they loaded the interposer.
    pub root_pid: Option<u32>,
    pub policy: EscapePolicy,
    /// Device memory a process may hold beyond what the region charged it (what a real driver
    /// reserves for contexts and modules outside allocation calls; 0 on the simulated GPU).
    pub memory_allowance: u64,
}

/// One escape the audit found.
#[derive(Debug, Clone, PartialEq)]
pub struct Escape {
    pub pid: u32,
    /// `unregistered` (uses the device without the interposer), `over-quota` or `over-share`.
    pub kind: &'static str,
    pub detail: String,
    /// Whether the policy killed it.
    pub killed: bool,
}

/// The audit's memory between checks: busy time per process at the previous check.
#[derive(Default)]
struct Audit {
    last: Option<(u64, Vec<(u32, u64)>)>,
    reported: std::collections::HashSet<(u32, &'static str)>,
}

impl Audit {
    fn check(&mut self, vgpu: &Vgpu, device: &dyn Device, watch: &Watch, now: u64) -> Vec<Escape> {
        let Ok(driver) = device.processes() else {
            return Vec::new(); // the backend cannot say: nothing to audit against
        };
        let registered: Vec<(u32, u64, u64)> = vgpu.region.processes();
        let mut members: std::collections::HashSet<u32> = registered.iter().map(|p| p.0).collect();
        if let Some(root) = watch.root_pid {
            members.extend(descendants(root));
        }
        let mine: Vec<&tf_hal::ProcessUsage> =
            driver.iter().filter(|p| members.contains(&p.pid)).collect();
        let limits = vgpu.limits.page().limits();
        let mut found: Vec<(u32, &'static str, String)> = Vec::new();
        for p in &mine {
            let charged = registered.iter().find(|r| r.0 == p.pid).map(|r| r.1);
            if charged.is_none() && (p.memory_bytes > watch.memory_allowance || p.busy_ns > Some(0))
            {
                found.push((
                    p.pid,
                    "unregistered",
                    format!(
                        "uses the device without the interposer ({} bytes of device memory)",
                        p.memory_bytes
                    ),
                ));
            }
        }
        if let Some(quota) = limits.vram_quota {
            let total: u64 = mine.iter().map(|p| p.memory_bytes).sum();
            let allowed = quota.saturating_add(watch.memory_allowance * mine.len() as u64);
            if total > allowed {
                // The process holding the most beyond what it was charged.
                let worst = mine.iter().max_by_key(|p| {
                    let charged = registered.iter().find(|r| r.0 == p.pid).map_or(0, |r| r.1);
                    p.memory_bytes.saturating_sub(charged)
                });
                if let Some(w) = worst {
                    found.push((
                        w.pid,
                        "over-quota",
                        format!("the vGPU's processes hold {total} bytes by the driver's count, the quota is {quota}"),
                    ));
                }
            }
        }
        let busy: Vec<(u32, u64)> = mine
            .iter()
            .filter_map(|p| Some((p.pid, p.busy_ns?)))
            .collect();
        if let (Some(share), Some((then, before))) = (limits.compute_share, &self.last)
            && now > *then + 1_000_000_000
        {
            let used: Vec<(u32, u64)> = busy
                .iter()
                .map(|&(pid, b)| {
                    let prev = before.iter().find(|x| x.0 == pid).map_or(0, |x| x.1);
                    (pid, b.saturating_sub(prev))
                })
                .collect();
            let total: u64 = used.iter().map(|u| u.1).sum();
            let measured = total as f64 / (now - then) as f64;
            if measured > share + 0.10
                && let Some(&(pid, _)) = used.iter().max_by_key(|u| u.1)
            {
                found.push((
                    pid,
                    "over-share",
                    format!(
                        "the vGPU's processes used {:.0} % of the device by the driver's count, the share is {:.0} %",
                        measured * 100.0,
                        share * 100.0
                    ),
                ));
            }
        }
        if self
            .last
            .as_ref()
            .is_none_or(|(then, _)| now > *then + 1_000_000_000)
        {
            self.last = Some((now, busy));
        }
        found
            .into_iter()
            .filter(|(pid, kind, _)| {
                watch.policy == EscapePolicy::Kill || self.reported.insert((*pid, *kind))
            })
            .map(|(pid, kind, detail)| {
                let killed = watch.policy == EscapePolicy::Kill
                    // SAFETY: kill(2) with a pid the driver reports as using the device and that
                    // belongs to this vGPU; no memory is involved.
                    && unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0;
                tracing::warn!(pid, kind, killed, "a process escapes its vGPU: {detail}");
                Escape {
                    pid,
                    kind,
                    detail,
                    killed,
                }
            })
            .collect()
    }
}

/// `root` and every process descended from it (from `/proc/*/stat`).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Field 4 (ppid) follows the command name, which is in parentheses.
            let ppid = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    found
}

impl Drop for Vgpu {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }
}

/// `first`, then `rest` if there is one, joined with `:`.
fn prepend(first: &OsStr, rest: Option<OsString>) -> OsString {
    let mut v = first.to_os_string();
    if let Some(old) = rest.filter(|o| !o.is_empty()) {
        v.push(":");
        v.push(old);
    }
    v
}

/// Cumulative device time of the vGPU's processes, where the backend reports it per process
/// (the simulated GPU does; NVML's per-process utilization is too coarse to pace on).
fn process_busy_ns(device: &dyn Device, pids: &[u32]) -> Option<u64> {
    let procs = device.processes().ok()?;
    if !procs.is_empty() && procs.iter().all(|p| p.busy_ns.is_none()) {
        return None;
    }
    Some(
        procs
            .iter()
            .filter(|p| pids.contains(&p.pid))
            .filter_map(|p| p.busy_ns)
            .sum(),
    )
}

/// Whether the process that named a vGPU folder `tf-vgpu-<pid>-<start time>-<n>` is alive.
fn creator_alive(name: &str) -> bool {
    let mut parts = name.trim_start_matches(REGION_PREFIX).split('-');
    let pid = parts.next().and_then(|p| p.parse::<u32>().ok());
    let start = parts.next().and_then(|s| s.parse::<u64>().ok());
    match (pid, start) {
        (Some(pid), Some(start)) => tf_os::process_start_time(pid) == Some(start),
        _ => false,
    }
}

/// Remove vGPUs in `dir` left behind by sessions that were killed: only those nobody uses any
/// more (their owner and every registered process are gone). Returns how many.
pub fn remove_stale_regions(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(REGION_PREFIX) {
            continue;
        }
        let path = e.path();
        let (region, is_folder) = if path.is_dir() {
            (path.join(REGION_FILE), true)
        } else {
            (path.clone(), false) // a region file of an earlier version
        };
        let unused = match Region::open(&region) {
            Ok(r) => !r.in_use(),
            // A folder without a valid region: stale once its creator (named in the folder's
            // name, `tf-vgpu-<pid>-<start time>-<n>`) is gone.
            Err(_) => is_folder && !creator_alive(&e.file_name().to_string_lossy()),
        };
        if unused {
            tracing::info!(path = %path.display(), "removing a stale vGPU");
            let removed = if is_folder {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            if removed.is_ok() {
                n += 1;
            }
        }
    }
    n
}
