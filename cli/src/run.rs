//! `tensor-fusion run`: run a command on a fraction of one GPU, with no daemon.
//!
//! A thin front end over the vGPU session (`tf_vgpu_limiter::Vgpu`): it checks the arguments,
//! creates the vGPU on the chosen device, starts the command with the vGPU's environment,
//! runs the session's control loop while the command runs, and drops the session (removing its
//! region) when the command ends, however it ends. The exit code is the command's.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context as _, Result, bail};
use tf_hal::BackendKind;
use tf_vgpu_limiter::vgpu::{EscapePolicy, Watch};
use tf_vgpu_limiter::{Estimator, Injection, Limits, Vgpu};

use crate::args;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  tensor-fusion run --vram 4GiB --compute-percent 30 -- python train.py\n  tensor-fusion run --device 1 --tflops 100 -- ./my_cuda_program\n\nOn the simulated GPU (the default backend) the simulated driver libraries are put on\nLD_LIBRARY_PATH for the command, so unmodified CUDA programs run there."
)]
pub struct RunArgs {
    /// Device index to run on (see `tensor-fusion devices`).
    #[arg(long, default_value_t = 0, value_parser = args::device_index, allow_negative_numbers = true)]
    pub device: u32,
    /// VRAM quota with a unit, e.g. 4GiB or 512MiB (default: no quota).
    #[arg(long, value_parser = args::quota, allow_negative_numbers = true)]
    pub vram: Option<u64>,
    /// Share of the device's time, in percent, in (0, 100] (default: no limit).
    #[arg(long, conflicts_with = "tflops", value_parser = args::percent, allow_negative_numbers = true)]
    pub compute_percent: Option<f64>,
    /// Compute limit in TFLOPS, as a share of the device's peak FP16 TFLOPS.
    #[arg(long, value_parser = args::positive, allow_negative_numbers = true)]
    pub tflops: Option<f64>,
    /// Backend: fake, cuda, vulkan or ascend (default: $TF_BACKEND, the config file, or fake).
    #[arg(long)]
    pub backend: Option<String>,
    /// Write the vGPU's statistics as JSON to this file when the command ends (checked before
    /// the command starts).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Directory for the vGPU's folder (its region lives in a folder of its own, mode 0700).
    #[arg(long, env = "TF_VGPU_DIR", default_value = "/dev/shm")]
    pub region_dir: PathBuf,
    /// What to do about a process of the command that escapes the vGPU (the driver's own
    /// count says it uses more memory or device time than allowed, or it uses the device
    /// without the interposer): warn (log it, and list it in --report) or kill it.
    #[arg(long, value_name = "warn|kill", default_value = "warn", value_parser = parse_escape)]
    pub on_escape: EscapePolicy,
    /// Let the command keep running if `tensor-fusion run` itself is killed (by default it is
    /// killed with it, so that nothing runs on a vGPU without its controller and owner).
    #[arg(long)]
    pub keep_running: bool,
    /// Run on a remote vGPU: the worker's address (tcp://HOST:PORT, unix:///PATH or
    /// shm://NAME). The command gets the client stub as its libcuda.so.1; the worker enforces
    /// its own limits (the local limits flags do not apply).
    #[arg(long, value_parser = crate::remote::parse_addr,
          conflicts_with_all = ["vram", "compute_percent", "tflops", "backend", "report"])]
    pub remote: Option<tf_remote_protocol::Address>,
    /// With --remote: the file holding the worker's token.
    #[arg(long, requires = "remote")]
    pub token_file: Option<PathBuf>,
    /// Run on a vGPU of the node daemon (`tensor-fusion vgpu create`): the daemon controls its
    /// share; the command runs under the vGPU's limits (the local limits flags do not apply).
    #[arg(long, value_name = "NAME",
          conflicts_with_all = ["vram", "compute_percent", "tflops", "backend", "report", "remote"])]
    pub vgpu: Option<String>,
    /// With --vgpu: the daemon's socket (default: $TF_NODE_SOCKET or the user's runtime folder).
    #[arg(long, requires = "vgpu")]
    pub socket: Option<PathBuf>,
    /// The command and its arguments.
    #[arg(trailing_var_arg = true, required = true, num_args = 1.., value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

fn parse_escape(s: &str) -> Result<EscapePolicy, String> {
    EscapePolicy::parse(s).ok_or_else(|| format!("{s:?} is not a policy: use warn or kill"))
}

/// Everything a command needs injected to run on a vGPU of a `kind` backend: the interposer
/// of the vendor's API (the ACL one on Ascend NPUs, the CUDA one otherwise), and the simulated
/// driver's folder on the simulated GPU (on Ascend, the folder of `$TF_ASCEND_LIBRARY` when the
/// backend was pointed at a runtime by path, so the command uses the same one).
pub fn injection(kind: BackendKind) -> Result<Injection> {
    if kind == BackendKind::Vulkan {
        // The Vulkan loader loads the limiter itself: a layer, enabled by name, whose manifest
        // the loader finds in VK_ADD_LAYER_PATH.
        return Ok(Injection {
            path_lists: vec![
                ("VK_ADD_LAYER_PATH".into(), vulkan_layer_dir()?.into()),
                ("VK_INSTANCE_LAYERS".into(), VULKAN_LAYER.into()),
            ],
            ..Injection::default()
        });
    }
    let interposer = match kind {
        BackendKind::Ascend => "libtf_acl_interposer.so",
        _ => "libtf_cuda_interposer.so",
    };
    let (interposer, _) = tf_os::artifacts::find(interposer)?;
    let mut library_dirs = Vec::new();
    if kind == BackendKind::Fake {
        library_dirs.push(tf_fake_gpu::install::driver_dir()?);
    }
    if kind == BackendKind::Ascend
        && let Some(lib) = std::env::var_os("TF_ASCEND_LIBRARY")
        && let Some(dir) = std::path::Path::new(&lib).parent()
        && !dir.as_os_str().is_empty()
    {
        library_dirs.push(dir.to_path_buf());
    }
    Ok(Injection {
        preload: vec![interposer],
        library_dirs,
        path_lists: Vec::new(),
    })
}

/// The Vulkan layer: its name, library and manifest (`vgpu/layer-vulkan`).
pub const VULKAN_LAYER: &str = "VK_LAYER_TENSOR_FUSION_vgpu";
pub const VULKAN_LAYER_LIB: &str = "libtf_vulkan_layer.so";
pub const VULKAN_LAYER_MANIFEST: &str = "VK_LAYER_TENSOR_FUSION_vgpu.json";
/// The manifest as shipped: its library beside it (`./libtf_vulkan_layer.so`).
pub const VULKAN_LAYER_MANIFEST_TEXT: &str =
    include_str!("../../vgpu/layer-vulkan/VK_LAYER_TENSOR_FUSION_vgpu.json");

/// The folder of the layer's manifest: beside the layer library where it was installed with
/// it (`tensor-fusion install`, or `$TF_LIB_DIR`); otherwise (a build folder) a copy in the
/// user's runtime folder naming the library by its full path.
fn vulkan_layer_dir() -> Result<std::path::PathBuf> {
    let (lib, _) = tf_os::artifacts::find(VULKAN_LAYER_LIB)?;
    let beside = lib.parent().map(|d| d.join(VULKAN_LAYER_MANIFEST));
    if let Some(m) = beside.filter(|m| m.is_file())
        && let Some(dir) = m.parent()
    {
        return Ok(dir.to_path_buf());
    }
    let text = VULKAN_LAYER_MANIFEST_TEXT.replace(
        "\"./libtf_vulkan_layer.so\"",
        &serde_json::to_string(&lib.to_string_lossy())?,
    );
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    lib.hash(&mut h);
    let dir = tf_os::user_runtime_dir()?.join(format!("vulkan-layer-{:016x}", h.finish()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(VULKAN_LAYER_MANIFEST);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
        // Written whole, then renamed: another run reading it never sees half a file.
        let tmp = dir.join(format!(".{VULKAN_LAYER_MANIFEST}.{}", std::process::id()));
        std::fs::write(&tmp, &text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(dir)
}

pub fn run(args: RunArgs) -> Result<i32> {
    if let Some(name) = &args.vgpu {
        return crate::node::run_attached(
            name,
            args.socket.clone(),
            &args.command,
            args.keep_running,
        );
    }
    if let Some(addr) = &args.remote {
        return crate::remote::run(addr, args.token_file.as_deref(), &args.command);
    }
    let kind = crate::config::select_backend(args.backend.as_deref())?;
    let backend = crate::backends::open_kind(kind)?;
    let device = backend
        .device(args.device)
        .with_context(|| format!("device {} (see `tensor-fusion devices`)", args.device))?;
    let info = device.info().clone();

    let share = match (args.compute_percent, args.tflops) {
        (Some(p), _) => Some(p / 100.0),
        (_, Some(t)) if t > info.fp16_tflops => bail!(
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
    if let Some(report) = &args.report {
        // Checked now, so that a path we cannot write never replaces the command's exit code.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(report)
            .with_context(|| format!("--report {}: cannot write there", report.display()))?;
    }
    let limits = Limits {
        vram_quota: args.vram,
        compute_share: share,
    };
    let inject = injection(kind)?;
    let vgpu = Vgpu::create(&args.region_dir, &info, &limits)
        .with_context(|| format!("creating the vGPU in {}", args.region_dir.display()))?;

    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .envs(vgpu.environment(&inject, |k| std::env::var_os(k)));
    tracing::info!(region = %vgpu.path().display(), ?limits, device = %info.uuid, "starting the command on its vGPU");

    let (mut child, forwarder) = match spawn(&mut cmd, args.keep_running, &args.command[0])? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };

    let stop = AtomicBool::new(false);
    let watch = Watch {
        roots: vec![child.id()],
        policy: args.on_escape,
        // What a real driver holds for a process's context beyond its allocations.
        memory_allowance: if kind == BackendKind::Fake {
            0
        } else {
            1 << 30
        },
    };
    let status = std::thread::scope(|scope| {
        let controller = std::thread::Builder::new()
            .name("vgpu-controller".into())
            .spawn_scoped(scope, || {
                vgpu.run_controller(&*device, Estimator::for_backend(kind), &watch, &stop)
            });
        if controller.is_err() {
            tracing::error!(
                "could not start the controller thread: the command runs without compute pacing"
            );
        }
        let status = child.wait();
        forwarder.stop();
        stop.store(true, Ordering::Release);
        status
    })
    .context("waiting for the command")?;
    // What the command's processes held goes back to the vGPU (and its stats) now.
    let s = vgpu.stats();

    if let Some(report) = &args.report {
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
            "escapes": vgpu.escapes().iter().map(|e| serde_json::json!({
                "pid": e.pid,
                "kind": e.kind,
                "detail": e.detail,
                "killed": e.killed,
            })).collect::<Vec<_>>(),
            "exit": exit_code(status),
        });
        std::fs::write(report, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", report.display()))?;
    }
    Ok(exit_code(status))
}

/// Start `cmd` as a vGPU's command: orphaned descendants stay ours (the audit follows them),
/// unless `keep_running` the command dies with us, and termination signals sent to us are
/// forwarded to it. `Err(code)` (127 or 126, reported) when it cannot start.
pub(crate) fn spawn(
    cmd: &mut Command,
    keep_running: bool,
    program: &std::ffi::OsStr,
) -> Result<Result<(std::process::Child, SignalForwarder), i32>> {
    // SAFETY: PR_SET_CHILD_SUBREAPER takes a plain integer and affects only this process.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
    if !keep_running {
        let parent = std::process::id();
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and calls only
        // async-signal-safe functions (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                );
                // We may have died between fork and prctl: then nobody would send the signal.
                if libc::getppid() as u32 != parent {
                    libc::_exit(137);
                }
                Ok(())
            })
        };
    }
    // Signals first, so that none can end us between spawning the command and watching it.
    let forwarder = SignalForwarder::install()?;
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            eprintln!(
                "tensor-fusion: cannot run {}: {e}",
                program.to_string_lossy()
            );
            forwarder.stop();
            return Ok(Err(code));
        }
    };
    forwarder.forward_to(child.id());
    Ok(Ok((child, forwarder)))
}

pub(crate) fn exit_code(status: ExitStatus) -> i32 {
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
pub(crate) struct SignalForwarder {
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

    pub(crate) fn stop(&self) {
        self.child.store(0, Ordering::Release);
        self.handle.close();
    }
}
