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
use crate::controller::{Controller, Estimator, Tick};
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

/// A vGPU: its limits page and region (owned; its folder is removed on drop unless the vGPU is
/// persistent) and the device it is on.
#[derive(Debug)]
pub struct Vgpu {
    folder: PathBuf,
    path: PathBuf,
    region: RegionMap,
    limits: LimitsOwner,
    device: DeviceInfo,
    escapes: std::sync::Mutex<Vec<Escape>>,
    /// Kept on drop (the node daemon's vGPUs outlive the daemon process).
    persistent: bool,
}

impl Vgpu {
    /// Create a vGPU on `device` with `limits`, its region in `dir` (created if missing, mode
    /// 0700). Regions in `dir` that nobody uses any more are removed first.
    pub fn create(dir: &Path, device: &DeviceInfo, limits: &Limits) -> Result<Vgpu, RegionError> {
        ensure_dir(dir)?;
        remove_stale_regions(dir);
        static SEQUENCE: AtomicU64 = AtomicU64::new(0);
        // pid and start time tell runs apart across pid reuse; the sequence, vGPUs of one process.
        let me = std::process::id();
        let started = tf_os::process_start_time(me).unwrap_or(0);
        let n = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let folder = dir.join(format!("{REGION_PREFIX}{me}-{started}-{n}"));
        Vgpu::create_in(folder, device, limits, false)
    }

    /// Create a persistent vGPU whose folder is `folder` (created, mode 0700; its parent must
    /// exist): the node daemon's vGPUs, named by the daemon, kept when the value is dropped and
    /// reopened by [`Vgpu::recover`] after a restart. The caller removes the folder
    /// ([`Vgpu::remove`]) when the vGPU is deleted.
    pub fn create_persistent(
        folder: &Path,
        device: &DeviceInfo,
        limits: &Limits,
    ) -> Result<Vgpu, RegionError> {
        if let Some(parent) = folder.parent() {
            ensure_dir(parent)?;
        }
        Vgpu::create_in(folder.to_path_buf(), device, limits, true)
    }

    fn create_in(
        folder: PathBuf,
        device: &DeviceInfo,
        limits: &Limits,
        persistent: bool,
    ) -> Result<Vgpu, RegionError> {
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
            persistent,
        })
    }

    /// Reopen a persistent vGPU left by an earlier owner (a node daemon that was restarted or
    /// killed): its region (usage and counters as the processes left them) is adopted, and a
    /// fresh limits page is made with `limits`. Programs still running keep the page they
    /// mapped (the last limits and pacing they were given) until their front end hands them
    /// the new pacing.
    pub fn recover(
        folder: &Path,
        device: &DeviceInfo,
        limits: &Limits,
    ) -> Result<Vgpu, RegionError> {
        let path = folder.join(REGION_FILE);
        let region = Region::open(&path)?;
        region.adopt();
        region.set_limits(limits);
        let limits = LimitsOwner::create(&device.uuid, device.index, limits).map_err(|source| {
            RegionError::Io {
                path: PathBuf::from("memfd:tf-vgpu-limits"),
                source,
            }
        })?;
        Ok(Vgpu {
            folder: folder.to_path_buf(),
            path,
            region,
            limits,
            device: device.clone(),
            escapes: Default::default(),
            persistent: true,
        })
    }

    /// Delete the vGPU: its folder (region) goes now, whatever `persistent` says.
    pub fn remove(self) {
        let _ = std::fs::remove_dir_all(&self.folder);
    }

    /// The region file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The vGPU's folder.
    pub fn folder(&self) -> &Path {
        &self.folder
    }

    /// The region (usage, launch admission, counters, and a copy of the limits).
    pub fn region(&self) -> &Region {
        &self.region
    }

    /// The limits page (the owner's writable side).
    pub fn limits(&self) -> &LimitsOwner {
        &self.limits
    }

    /// Change the vGPU's limits: the page and the region's copy.
    pub fn set_limits(&self, limits: &Limits) {
        self.limits.set_limits(limits);
        self.region.set_limits(limits);
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

    /// The environment a program runs with on this vGPU: `TF_VGPU_REGION`, `TF_VGPU_LIMITS`,
    /// `CUDA_VISIBLE_DEVICES` (the vGPU's device only; on an Ascend NPU also
    /// `ASCEND_RT_VISIBLE_DEVICES`, by index) and the injection's variables (see
    /// [`Injection::environment`]). `inherited` looks a variable up in the environment the
    /// program would otherwise get.
    pub fn environment(
        &self,
        inject: &Injection,
        inherited: impl Fn(&str) -> Option<OsString>,
    ) -> Vec<(OsString, OsString)> {
        let limits = self.limits.path().unwrap_or_default();
        environment(
            &self.path,
            &limits,
            &self.device.uuid,
            self.device.index,
            self.device.vendor,
            inject,
            inherited,
        )
    }

    /// Run the control loop against `device` until `stop` is set: every [`TICK`], one
    /// [`Control::tick`] (a heartbeat on the limits page, dead processes' memory given back,
    /// the pacing set from the device time its processes used when the vGPU has a compute
    /// share, and twice a second the [`Watch`] audit).
    pub fn run_controller(
        &self,
        device: &dyn Device,
        estimator: Estimator,
        watch: &Watch,
        stop: &AtomicBool,
    ) {
        let mut control = Control::new(self, estimator);
        while !stop.load(Ordering::Acquire) {
            control.tick(self, device, None, watch, tf_os::now_ns());
            std::thread::sleep(TICK);
        }
    }
}

fn ensure_dir(dir: &Path) -> Result<(), RegionError> {
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| RegionError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// One vGPU's control state between ticks: its controller (when it has a compute share), the
/// estimator in use, the audit's memory and the family of processes that count as its own.
/// [`Vgpu::run_controller`] ticks one; the node daemon ticks every vGPU of a device in one loop,
/// changing each one's target share as it lends idle capacity ([`Control::set_target`]).
pub struct Control {
    controller: Option<Controller>,
    estimator: Estimator,
    audit: Audit,
    ticks: u64,
    family: Vec<u32>,
    /// Whether dead processes' memory is given back by pid (off while the vGPU's processes
    /// live in a pid namespace whose pids this process cannot judge).
    reclaim_dead: bool,
}

/// What one [`Control::tick`] saw and decided.
#[derive(Debug, Clone, Default)]
pub struct ControlTick {
    /// Cumulative device time of the vGPU's processes, ns, where the backend reports it.
    pub busy_ns: Option<u64>,
    /// The region's launch counters (admitted, held back).
    pub launches: u64,
    pub throttled: u64,
    /// What the controller decided (none without a compute share, or on a failed tick).
    pub tick: Option<Tick>,
    /// Escapes found by this tick's audit.
    pub escapes: Vec<Escape>,
    /// Whether the region's header was valid.
    pub valid: bool,
}

impl Control {
    /// The control state of `vgpu`, with a controller if its limits page has a compute share.
    pub fn new(vgpu: &Vgpu, estimator: Estimator) -> Control {
        Control {
            controller: vgpu
                .limits
                .page()
                .limits()
                .compute_share
                .map(Controller::new),
            estimator,
            audit: Audit::default(),
            ticks: 0,
            family: Vec::new(),
            reclaim_dead: true,
        }
    }

    /// Control state that paces at `target` whatever the page says (the daemon's vGPUs: the
    /// page holds the limit, the target moves between request and limit).
    pub fn with_target(target: f64, estimator: Estimator) -> Control {
        Control {
            controller: Some(Controller::new(target)),
            estimator,
            audit: Audit::default(),
            ticks: 0,
            family: Vec::new(),
            reclaim_dead: true,
        }
    }

    /// Whether ticks give back dead processes' memory by pid (see [`Region::reclaim_dead`]):
    /// the node daemon turns it off while a vGPU has processes in another pid namespace, where
    /// `/proc/<pid>` of its own namespace says nothing about them.
    pub fn set_reclaim_dead(&mut self, on: bool) {
        self.reclaim_dead = on;
    }

    /// Change the target share (takes effect at the next tick).
    pub fn set_target(&mut self, target: f64) {
        match &mut self.controller {
            Some(c) => c.set_target(target),
            None => self.controller = Some(Controller::new(target)),
        }
    }

    /// The target share, if the vGPU is paced.
    pub fn target(&self) -> Option<f64> {
        self.controller.as_ref().map(Controller::target)
    }

    /// The estimator in use (it falls back to launch samples when the backend has no
    /// per-process busy time).
    pub fn estimator(&self) -> Estimator {
        self.estimator
    }

    /// One tick at `now`: a heartbeat on the limits page, dead processes' memory given back,
    /// the pacing set from the device time the vGPU's processes used, and every fifth tick the
    /// [`Watch`] audit (escapes are also kept in [`Vgpu::escapes`]). `processes` is the
    /// device's per-process view when the caller already read it (one reading serves every
    /// vGPU of a device); `None` reads it here.
    pub fn tick(
        &mut self,
        vgpu: &Vgpu,
        device: &dyn Device,
        processes: Option<&[tf_hal::ProcessUsage]>,
        watch: &Watch,
        now: u64,
    ) -> ControlTick {
        vgpu.limits.heartbeat(now);
        // A region whose header was overwritten says nothing reliable: its processes have
        // moved to their own copies, and the pacing follows the driver's count alone until
        // it is valid again.
        let valid = vgpu.region.is_valid();
        if !valid && self.ticks.is_multiple_of(50) {
            tracing::error!(region = %vgpu.path.display(), "the vGPU's region was overwritten; pacing on the driver's count alone");
        }
        let fetched;
        let processes = match processes {
            Some(p) => Some(p),
            None => {
                fetched = device.processes().ok();
                fetched.as_deref()
            }
        };
        let mut out = ControlTick {
            valid,
            ..ControlTick::default()
        };
        // The region is shared memory the vGPU's processes can write anything into: one
        // bad tick must not take the control loop (and the vGPU's limits) down with it.
        let ticks = self.ticks;
        let reclaim = self.reclaim_dead;
        let tick = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if reclaim {
                vgpu.region.reclaim_dead();
            }
            // Whose device time counts: the processes registered in the region, and (the
            // region being the tenant's to overwrite) every process descended from the vGPU's
            // roots, refreshed once a second.
            if ticks.is_multiple_of(10) {
                self.family = descendants_of(&watch.roots);
            }
            let mut members = self.family.clone();
            if valid {
                members.extend(vgpu.region.processes().iter().map(|p| p.0));
                let (launches, throttled) = vgpu.region.launch_counters();
                out.launches = launches;
                out.throttled = throttled;
            }
            out.busy_ns = processes.and_then(|p| process_busy_ns(p, &members));
            if let Some(c) = self.controller.as_mut() {
                let busy = match self.estimator {
                    Estimator::Busy => out.busy_ns.unwrap_or_else(|| {
                        tracing::warn!(
                            "the backend has no per-process busy time; timing launches instead"
                        );
                        self.estimator = Estimator::Samples;
                        0
                    }),
                    Estimator::Samples => 0,
                };
                let t = if valid {
                    c.tick_with(&vgpu.region, Some(&vgpu.limits), now, self.estimator, busy)
                } else {
                    c.tick_blind(&vgpu.limits, now, busy)
                };
                tracing::trace!(?t, estimator = ?self.estimator, valid, "controller tick");
                out.tick = Some(t);
            }
            if ticks.is_multiple_of(5) {
                for e in self.audit.check(vgpu, processes, watch, now) {
                    out.escapes.push(e.clone());
                    vgpu.escapes
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
        self.ticks += 1;
        out
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
    /// The vGPU's root processes (the command `run` started; for the node daemon, each
    /// attached `run`): they and their descendants belong to the vGPU (besides the processes
    /// registered in the region), whether or not they loaded the interposer.
    pub roots: Vec<u32>,
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
    fn check(
        &mut self,
        vgpu: &Vgpu,
        driver: Option<&[tf_hal::ProcessUsage]>,
        watch: &Watch,
        now: u64,
    ) -> Vec<Escape> {
        let Some(driver) = driver else {
            return Vec::new(); // the backend cannot say: nothing to audit against
        };
        let registered: Vec<(u32, u64, u64)> = vgpu.region.processes();
        let mut members: std::collections::HashSet<u32> = registered.iter().map(|p| p.0).collect();
        members.extend(descendants_of(&watch.roots));
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
    descendants_of(&[root])
}

/// `roots` and every process descended from any of them (one pass over `/proc/*/stat`).
pub fn descendants_of(roots: &[u32]) -> Vec<u32> {
    if roots.is_empty() {
        return Vec::new();
    }
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
    let mut found = roots.to_vec();
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        for &(c, _) in parent_of.iter().filter(|(_, pp)| *pp == p) {
            if !found.contains(&c) {
                found.push(c);
            }
        }
        i += 1;
    }
    found
}

impl Drop for Vgpu {
    fn drop(&mut self) {
        if !self.persistent {
            let _ = std::fs::remove_dir_all(&self.folder);
        }
    }
}

/// The environment a program runs with on a vGPU whose region is `region` and whose limits
/// page a process opens at `limits` (see [`Vgpu::environment`]; `tensor-fusion run --vgpu`
/// builds it for a vGPU the node daemon owns, with the page it received from the daemon).
pub fn environment(
    region: &Path,
    limits: &Path,
    device_uuid: &str,
    device_index: u32,
    vendor: tf_hal::Vendor,
    inject: &Injection,
    inherited: impl Fn(&str) -> Option<OsString>,
) -> Vec<(OsString, OsString)> {
    let mut env = vec![
        (REGION_ENV.into(), region.as_os_str().to_os_string()),
        (LIMITS_ENV.into(), limits.as_os_str().to_os_string()),
        ("CUDA_VISIBLE_DEVICES".into(), device_uuid.into()),
    ];
    if vendor == tf_hal::Vendor::Ascend {
        // The ACL runtime's own visibility list: the vNPU's device only (by index).
        env.push((
            "ASCEND_RT_VISIBLE_DEVICES".into(),
            device_index.to_string().into(),
        ));
    }
    env.extend(inject.environment(inherited));
    env
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
fn process_busy_ns(procs: &[tf_hal::ProcessUsage], pids: &[u32]) -> Option<u64> {
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
