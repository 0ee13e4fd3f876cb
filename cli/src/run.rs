//! `tensor-fusion run`: run a command on a fraction of one GPU, with no daemon.
//!
//! Creates a vGPU region for the command (VRAM quota, compute share), injects the CUDA
//! interposer with `LD_PRELOAD`, shows the command only its device (`CUDA_VISIBLE_DEVICES`),
//! runs the compute-share controller while the command runs, and removes the region when the
//! command ends, however it ends. The exit code is the command's.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use tf_hal::{BackendKind, Device};
use tf_vgpu_limiter::{Controller, Estimator, Limits, Region};

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  tensor-fusion run --vram 4GiB --compute-percent 30 -- python train.py\n  tensor-fusion run --device 1 --tflops 100 -- ./my_cuda_program\n\nOn the simulated GPU (the default backend) the simulated driver libraries are put on\nLD_LIBRARY_PATH for the command, so unmodified CUDA programs run there."
)]
pub struct RunArgs {
    /// Device index to run on.
    #[arg(long, default_value_t = 0)]
    pub device: u32,
    /// VRAM quota, e.g. 4GiB or 512MiB (default: no quota).
    #[arg(long, value_parser = parse_size)]
    pub vram: Option<u64>,
    /// Share of the device's time, in percent (default: no limit).
    #[arg(long, conflicts_with = "tflops")]
    pub compute_percent: Option<f64>,
    /// Compute limit in TFLOPS, as a share of the device's peak FP16 TFLOPS.
    #[arg(long)]
    pub tflops: Option<f64>,
    /// Backend: fake, cuda or ascend (default: $TF_BACKEND, the config file, or fake).
    #[arg(long)]
    pub backend: Option<String>,
    /// Write the vGPU's statistics as JSON to this file when the command ends.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Directory for the vGPU region.
    #[arg(long, env = "TF_VGPU_DIR", default_value = "/dev/shm")]
    pub region_dir: PathBuf,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1.., value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn parse_size(s: &str) -> Result<u64, String> {
    match tf_hal::units::parse_bytes(s) {
        Ok(0) => Err("the quota must be more than 0 bytes".into()),
        Ok(v) => Ok(v),
        Err(e) => Err(e.message),
    }
}

/// Removes a region file when dropped (however the command that created it ends).
pub(crate) struct RegionFile(pub(crate) PathBuf);

impl Drop for RegionFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Remove regions left behind by `run` processes that were killed.
fn remove_stale_regions(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if !name.to_string_lossy().starts_with("tf-vgpu-") {
            continue;
        }
        // Only regions nobody uses any more: the owner and every registered process are gone.
        if let Ok(r) = Region::open(&e.path())
            && !r.in_use()
        {
            tracing::info!(path = %e.path().display(), "removing a stale vGPU region");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

pub fn run(args: RunArgs) -> Result<i32> {
    let kind = tf_hal::config::select_backend(args.backend.as_deref())?;
    let backend = crate::backends::open_kind(kind)?;
    let device = backend
        .device(args.device)
        .with_context(|| format!("device {} (see `tensor-fusion devices`)", args.device))?;
    let info = device.info().clone();

    let share = match (args.compute_percent, args.tflops) {
        (Some(p), _) if !(p > 0.0 && p <= 100.0) => {
            bail!("--compute-percent must be in (0, 100], got {p}")
        }
        (Some(p), _) => Some(p / 100.0),
        (_, Some(t)) if !(t > 0.0 && t <= info.fp16_tflops) => bail!(
            "--tflops must be in (0, {:.1}] (the peak of a {}), got {t}",
            info.fp16_tflops,
            info.model
        ),
        (_, Some(t)) => Some(t / info.fp16_tflops),
        _ => None,
    }
    .filter(|&s| s < 1.0);
    if let Some(v) = args.vram
        && v > info.total_memory_bytes
    {
        bail!(
            "--vram {} is more than device {} has ({})",
            tf_hal::units::format_bytes(v),
            args.device,
            tf_hal::units::format_bytes(info.total_memory_bytes)
        );
    }
    let limits = Limits {
        vram_quota: args.vram,
        compute_share: share,
    };

    std::fs::create_dir_all(&args.region_dir)
        .with_context(|| format!("creating {}", args.region_dir.display()))?;
    remove_stale_regions(&args.region_dir);
    // A fresh, unique name: pid and start time tell runs apart across pid reuse.
    let me = std::process::id();
    let started = tf_vgpu_limiter::sys::process_start_time(me).unwrap_or(0);
    let path = args
        .region_dir
        .join(format!("tf-vgpu-{me}-{started}-{}", info.index));
    let region = Region::create(&path, &info.uuid, info.index, &limits)
        .with_context(|| format!("creating the vGPU region {}", path.display()))?;
    let _file = RegionFile(path.clone());

    let interposer = tf_hal::artifacts::find_built("libtf_cuda_interposer.so")
        .context("locating the CUDA interposer")?;
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..]);
    let preload = match std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
        Some(old) => {
            let mut v = interposer.clone().into_os_string();
            v.push(":");
            v.push(old);
            v
        }
        None => interposer.into_os_string(),
    };
    cmd.env("LD_PRELOAD", preload)
        .env(tf_vgpu_limiter::client::REGION_ENV, &path)
        .env(tf_vgpu_limiter::client::DEVICE_UUID_ENV, &info.uuid)
        .env("CUDA_VISIBLE_DEVICES", &info.uuid);
    if let Some(v) = args.vram {
        cmd.env(tf_vgpu_limiter::client::VRAM_ENV, v.to_string());
    }
    if let Some(s) = share {
        cmd.env(tf_vgpu_limiter::client::COMPUTE_ENV, s.to_string());
    }
    if kind == BackendKind::Fake {
        let dir = crate::fakegpu::installed_driver_dir()?;
        let mut ld = dir.into_os_string();
        if let Some(old) = std::env::var_os("LD_LIBRARY_PATH").filter(|v| !v.is_empty()) {
            ld.push(":");
            ld.push(old);
        }
        cmd.env("LD_LIBRARY_PATH", ld);
    }
    tracing::info!(region = %path.display(), ?limits, device = %info.uuid, "starting the command on its vGPU");

    // Signals first, so that none can end us between spawning the command and watching it.
    let forwarder = SignalForwarder::install()?;
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!(
                "tensor-fusion: cannot run {}: {e}",
                args.command[0].to_string_lossy()
            );
            return Ok(code);
        }
    };
    forwarder.forward_to(child.id());

    let done = Arc::new(AtomicBool::new(false));
    let monitor = {
        let done = done.clone();
        let device = device.clone();
        std::thread::Builder::new()
            .name("vgpu-controller".into())
            .spawn(move || control_loop(region, &*device, share, estimator(kind), &done))
    };
    let status = child.wait();
    forwarder.stop();
    done.store(true, Ordering::Release);
    if let Ok(m) = monitor {
        let _ = m.join();
    } else {
        tracing::error!(
            "could not start the controller thread: the command ran without compute pacing"
        );
    }
    let status = status.context("waiting for the command")?;

    region.reclaim_dead();
    if let Some(report) = &args.report {
        let s = region.stats();
        let json = serde_json::json!({
            "device_uuid": s.device_uuid,
            "vram_quota": s.vram_quota,
            "vram_used": s.vram_used,
            "vram_peak": s.vram_peak,
            "oom_events": s.oom_events,
            "compute_share": s.compute_share,
            "launches": s.launches,
            "throttled_launches": s.throttled_launches,
            "throttled_ns": s.throttled_ns,
            "est_launch_ns": s.est_launch_ns,
            "measured_share": s.measured_share,
            "samples": s.samples,
            "sampled_ns": s.sampled_ns,
            "launch_interval_ns": s.launch_interval_ns,
            "exit": exit_code(status),
        });
        std::fs::write(report, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", report.display()))?;
    }
    Ok(exit_code(status))
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(sig)) => 128 + sig,
        _ => 1,
    }
}

/// Forwards termination signals sent to us (by `kill`, a supervisor) to the command. Signals
/// from the terminal reach the command directly (it is in our process group), so they are not
/// sent twice. Installed before the command starts and stopped as soon as it has been reaped.
struct SignalForwarder {
    child: Arc<std::sync::atomic::AtomicU32>,
    handle: signal_hook::iterator::Handle,
}

impl SignalForwarder {
    fn install() -> Result<SignalForwarder> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
        use signal_hook::iterator::SignalsInfo;
        use signal_hook::iterator::exfiltrator::WithRawSiginfo;
        let mut signals = SignalsInfo::<WithRawSiginfo>::new([SIGHUP, SIGINT, SIGQUIT, SIGTERM])?;
        let handle = signals.handle();
        let child = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let target = child.clone();
        std::thread::Builder::new()
            .name("signal-forwarder".into())
            .spawn(move || {
                for info in signals.forever() {
                    let pid = target.load(Ordering::Acquire);
                    // si_code <= 0: sent by a process (kill, sigqueue, tkill); the terminal's
                    // signals come from the kernel and already reached the command.
                    // SAFETY: si_pid is valid for signals sent by a process, which we checked.
                    let sender = (info.si_code <= 0).then(|| unsafe { info.si_pid() });
                    if pid != 0 && sender.is_some_and(|p| p as u32 != pid) {
                        // SAFETY: kill(2) on our own child's pid; it is cleared as soon as the
                        // child has been reaped, so only that instant could see a reused pid.
                        unsafe { libc::kill(pid as i32, info.si_signo) };
                    }
                }
            })?;
        Ok(SignalForwarder { child, handle })
    }

    fn forward_to(&self, pid: u32) {
        self.child.store(pid, Ordering::Release);
    }

    fn stop(&self) {
        self.child.store(0, Ordering::Release);
        self.handle.close();
    }
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

/// `TF_VGPU_ESTIMATOR=busy|samples` chooses where the controller learns device time; by
/// default per-process busy time when the backend has it, else launches timed by the
/// interposer.
fn estimator(kind: BackendKind) -> Estimator {
    match std::env::var("TF_VGPU_ESTIMATOR") {
        Ok(v) => Estimator::parse(&v).unwrap_or_else(|| {
            tracing::warn!("TF_VGPU_ESTIMATOR={v:?} is not busy or samples; using the default");
            default_estimator(kind)
        }),
        Err(_) => default_estimator(kind),
    }
}

fn default_estimator(kind: BackendKind) -> Estimator {
    if kind == BackendKind::Fake {
        Estimator::Busy
    } else {
        Estimator::Samples
    }
}

fn control_loop(
    region: &'static Region,
    device: &dyn Device,
    share: Option<f64>,
    estimator: Estimator,
    done: &AtomicBool,
) {
    let mut controller = share.map(Controller::new);
    let mut estimator = estimator;
    while !done.load(Ordering::Acquire) {
        region.reclaim_dead();
        if let Some(c) = controller.as_mut() {
            let busy = match estimator {
                Estimator::Busy => process_busy_ns(device, region).unwrap_or_else(|| {
                    tracing::warn!(
                        "the backend has no per-process busy time; timing launches instead"
                    );
                    estimator = Estimator::Samples;
                    0
                }),
                Estimator::Samples => 0,
            };
            let t = c.tick(region, tf_vgpu_limiter::sys::now_ns(), estimator, busy);
            tracing::debug!(?t, ?estimator, "controller tick");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
