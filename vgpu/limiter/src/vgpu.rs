//! One vGPU session: the single owner of a vGPU's region and of everything derived from it.
//!
//! A [`Vgpu`] creates its region (a fresh, uniquely named file, readable and writable by its
//! owner only, after removing regions nobody uses any more), produces the environment a program
//! needs to run on it ([`Vgpu::environment`]: the region's path, the interposer in `LD_PRELOAD`,
//! the driver library path, the visible device), and runs the compute-share control loop
//! against a `&dyn tf_hal::Device` ([`Vgpu::run_controller`]). It owns the region's mapping, and
//! removes the region file when dropped. `tensor-fusion run` is a thin front end over it; the
//! node daemon uses it unchanged.
//!
//! The environment contract (read by `tf_vgpu_limiter::client` inside the program): limits reach
//! the program one way only, through the region named by `TF_VGPU_REGION`.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tf_hal::{Device, DeviceInfo};

use crate::client::REGION_ENV;
use crate::controller::{Controller, Estimator};
use crate::region::{Limits, Region, RegionError, RegionMap, RegionStats};

/// Region files are named `tf-vgpu-<pid>-<start time>-<sequence>`.
pub const REGION_PREFIX: &str = "tf-vgpu-";
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

/// A vGPU: its region (owned, removed on drop) and the device it is on.
#[derive(Debug)]
pub struct Vgpu {
    path: PathBuf,
    region: RegionMap,
    device: DeviceInfo,
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
        let path = dir.join(format!("{REGION_PREFIX}{me}-{started}-{n}"));
        let region = Region::create(&path, &device.uuid, device.index, limits)?;
        Ok(Vgpu {
            path,
            region,
            device: device.clone(),
        })
    }

    /// The region file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The region (limits, usage, pacing, counters).
    pub fn region(&self) -> &Region {
        &self.region
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
                "CUDA_VISIBLE_DEVICES".into(),
                self.device.uuid.clone().into(),
            ),
        ];
        if !inject.preload.is_empty() {
            let libs = std::env::join_paths(&inject.preload).unwrap_or_default();
            env.push(("LD_PRELOAD".into(), prepend(&libs, inherited("LD_PRELOAD"))));
        }
        for (name, first) in &inject.path_lists {
            env.push((name.into(), prepend(first, inherited(name))));
        }
        if self.device.vendor == tf_hal::Vendor::Ascend {
            // The ACL runtime's own visibility list: the vNPU's device only (by index).
            env.push((
                "ASCEND_RT_VISIBLE_DEVICES".into(),
                self.device.index.to_string().into(),
            ));
        }
        if !inject.library_dirs.is_empty() {
            let dirs = std::env::join_paths(&inject.library_dirs).unwrap_or_default();
            env.push((
                "LD_LIBRARY_PATH".into(),
                prepend(&dirs, inherited("LD_LIBRARY_PATH")),
            ));
        }
        env
    }

    /// Run the compute-share control loop against `device` until `stop` is set: every
    /// [`TICK`], give back dead processes' memory and, when the vGPU has a compute share, set
    /// its pacing from the device time its processes used.
    pub fn run_controller(&self, device: &dyn Device, estimator: Estimator, stop: &AtomicBool) {
        let mut controller = self.region.compute_share().map(Controller::new);
        let mut estimator = estimator;
        while !stop.load(Ordering::Acquire) {
            self.region.reclaim_dead();
            if let Some(c) = controller.as_mut() {
                let busy = match estimator {
                    Estimator::Busy => process_busy_ns(device, &self.region).unwrap_or_else(|| {
                        tracing::warn!(
                            "the backend has no per-process busy time; timing launches instead"
                        );
                        estimator = Estimator::Samples;
                        0
                    }),
                    Estimator::Samples => 0,
                };
                let t = c.tick(&self.region, tf_os::now_ns(), estimator, busy);
                tracing::debug!(?t, ?estimator, "controller tick");
            }
            std::thread::sleep(TICK);
        }
    }
}

impl Drop for Vgpu {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
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
fn process_busy_ns(device: &dyn Device, region: &Region) -> Option<u64> {
    let pids: Vec<u32> = region.processes().iter().map(|p| p.0).collect();
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

/// Remove regions in `dir` left behind by sessions that were killed: only regions nobody uses
/// any more (their owner and every registered process are gone). Returns how many.
pub fn remove_stale_regions(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut n = 0;
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(REGION_PREFIX) {
            continue;
        }
        if let Ok(r) = Region::open(&e.path())
            && !r.in_use()
        {
            tracing::info!(path = %e.path().display(), "removing a stale vGPU region");
            if std::fs::remove_file(e.path()).is_ok() {
                n += 1;
            }
        }
    }
    n
}
