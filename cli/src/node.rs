//! `tensor-fusion node` (the daemon), `tensor-fusion vgpu create|ls|rm` and
//! `tensor-fusion run --vgpu NAME` (a front end attached to one of the daemon's vGPUs): thin
//! front ends over `tf_hypervisor`.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::Deserialize;
use tf_hal::BackendKind;
use tf_hypervisor::api;
use tf_vgpu_limiter::{Limits, LimitsOwner, Pacing};

use crate::args;

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Examples:\n  tensor-fusion node\n  tensor-fusion node --metrics 127.0.0.1:9400\n  tensor-fusion node --config /etc/tensor-fusion/node.toml\n\nThe config file (TOML) takes the same settings: socket, state_dir, run_dir, metrics,\ntcp, token_file, backend. Flags win over the file."
)]
pub struct NodeArgs {
    /// A TOML file with the daemon's settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The API's Unix socket (default: $TF_NODE_SOCKET, /run/tensor-fusion/node.sock for root,
    /// else $TMPDIR/tensor-fusion-<uid>/node.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Where the state database lives (default: /var/lib/tensor-fusion for root, else
    /// $XDG_STATE_HOME/tensor-fusion or ~/.local/state/tensor-fusion).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Where the vGPUs' regions live, a folder their programs can reach (default: the socket's
    /// folder).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9400; port 0 picks one).
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Also serve the API on TCP at ADDR; every call must carry the token of --token-file.
    #[arg(long, requires = "token_file")]
    pub tcp: Option<SocketAddr>,
    /// With --tcp: the file holding the token.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Backend: fake, cuda, vulkan or ascend (default: $TF_BACKEND, the config file, or fake).
    #[arg(long)]
    pub backend: Option<String>,
    /// Register this node with Kubernetes in the GPUPool POOL: its GPUNode and GPUs from the
    /// devices, kept true by a heartbeat (as `tensor-fusion node-agent` does).
    #[arg(long)]
    pub kube_pool: Option<String>,
    /// With --kube-pool: this node's name (default: $NODE_NAME, else the host name).
    #[arg(long, requires = "kube_pool")]
    pub kube_node: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeFile {
    socket: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    run_dir: Option<PathBuf>,
    metrics: Option<SocketAddr>,
    tcp: Option<SocketAddr>,
    token_file: Option<PathBuf>,
    backend: Option<String>,
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn default_state_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/tensor-fusion");
    }
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("tensor-fusion");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/tensor-fusion")
}

/// `tensor-fusion node`: run the daemon until SIGINT or SIGTERM.
pub fn node(args: NodeArgs) -> Result<()> {
    let file: NodeFile = match &args.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", p.display()))?
        }
        None => NodeFile::default(),
    };
    let socket = args
        .socket
        .or(file.socket)
        .unwrap_or_else(api::default_socket);
    let state_dir = args
        .state_dir
        .or(file.state_dir)
        .unwrap_or_else(default_state_dir);
    let run_dir = args
        .run_dir
        .or(file.run_dir)
        .or_else(|| socket.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/run/tensor-fusion"));
    let metrics = args.metrics.or(file.metrics);
    let tcp = args.tcp.or(file.tcp);
    let token_file = args.token_file.or(file.token_file);
    let tcp = match (tcp, token_file) {
        (Some(addr), Some(f)) => {
            let token = std::fs::read_to_string(&f)
                .with_context(|| format!("reading the token file {}", f.display()))?
                .trim()
                .to_string();
            if token.len() < 16 {
                bail!(
                    "the token in {} is shorter than 16 characters: write a long random one (e.g. `head -c 32 /dev/urandom | base64`)",
                    f.display()
                );
            }
            Some((addr, token))
        }
        (Some(_), None) => bail!("--tcp needs --token-file (the token every call must carry)"),
        _ => None,
    };
    let agent = match &args.kube_pool {
        Some(pool) => Some(crate::k8s::agent_config(pool, args.kube_node.clone())?),
        None => None,
    };
    let backend = args.backend.or(file.backend);
    let kind = crate::config::select_backend(backend.as_deref())?;
    let backend = crate::backends::open_kind(kind)?;
    let infos = backend.devices().context("listing the devices")?;
    let mut devices = Vec::new();
    for i in &infos {
        devices.push((
            backend
                .device(i.index)
                .with_context(|| format!("opening device {}", i.index))?,
            kind,
        ));
    }
    let config = tf_hypervisor::NodeConfig {
        state_dir: state_dir.clone(),
        run_dir,
        capacity: 1.0,
        memory_allowance: if kind == BackendKind::Fake {
            0
        } else {
            1 << 30
        },
        worker: std::env::current_exe()
            .ok()
            .map(|exe| tf_hypervisor::WorkerLaunch {
                exe,
                socket: socket.clone(),
                backend: kind.as_str().to_string(),
            }),
    };
    let node = tf_hypervisor::Node::open(config, devices).map_err(|e| anyhow!(e))?;
    let loops = node.start_control_loops();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listen = tf_hypervisor::server::Listen {
        socket: socket.clone(),
        tcp,
        metrics,
    };
    let n = infos.len();
    let result = rt.block_on(async {
        // Registered with Kubernetes for as long as the daemon serves.
        let _agent = match agent {
            Some(cfg) => Some(
                crate::k8s::start_agent(backend.clone(), cfg)
                    .await
                    .map_err(|e| format!("{e:#}"))?,
            ),
            None => None,
        };
        // The handlers are in place before the daemon says it serves: a SIGTERM from then on
        // stops it cleanly.
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
            tracing::info!("stopping");
        };
        tf_hypervisor::server::serve(node.clone(), listen, shutdown, |m| {
            let metrics = m
                .map(|a| format!(", metrics on http://{a}/metrics"))
                .unwrap_or_default();
            println!(
                "tensor-fusion node: {n} device(s), state in {}, serving on {}{metrics}",
                state_dir.display(),
                socket.display()
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
        })
        .await
    });
    node.shutdown();
    for l in loops {
        let _ = l.join();
    }
    rt.shutdown_timeout(Duration::from_millis(200));
    result.map_err(|e| anyhow!(e))
}

#[derive(Debug, clap::Args)]
pub struct VgpuArgs {
    /// The daemon's socket (default: $TF_NODE_SOCKET or the user's runtime folder).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    #[command(subcommand)]
    pub command: VgpuCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum VgpuCommand {
    /// Create a vGPU: a compute limit (--compute-percent or --tflops) and a VRAM limit, with
    /// optional requests (guaranteed; default: the limits) and a QoS.
    #[command(
        after_help = "Examples:\n  tensor-fusion vgpu create train --compute-percent 50 --vram 8GiB --qos high\n  tensor-fusion vgpu create batch --device 0 --compute-percent 60 --request-percent 20 --vram 4GiB --qos low"
    )]
    Create(CreateArgs),
    /// List the vGPUs with their target and achieved shares.
    Ls {
        /// One JSON array instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Remove a vGPU.
    Rm {
        name: String,
        /// Remove it even while programs are attached (their front ends lose it).
        #[arg(long)]
        force: bool,
    },
    /// List the node's devices with what their vGPUs request.
    Devices {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub name: String,
    /// Device index (default: the scheduler engine places it).
    #[arg(long, value_parser = args::device_index, allow_negative_numbers = true)]
    pub device: Option<u32>,
    /// Compute limit: a share of the device's time in percent, in (0, 100].
    #[arg(long, conflicts_with = "tflops", required_unless_present = "tflops",
          value_parser = args::percent, allow_negative_numbers = true)]
    pub compute_percent: Option<f64>,
    /// Compute limit in TFLOPS (a share of the device's peak FP16 TFLOPS).
    #[arg(long, value_parser = args::positive, allow_negative_numbers = true)]
    pub tflops: Option<f64>,
    /// VRAM limit (the quota) with a unit, e.g. 4GiB.
    #[arg(long, required = true, value_parser = args::quota, allow_hyphen_values = true)]
    pub vram: u64,
    /// Guaranteed compute in percent (default: the limit).
    #[arg(long, conflicts_with = "request_tflops", value_parser = args::percent, allow_negative_numbers = true)]
    pub request_percent: Option<f64>,
    /// Guaranteed compute in TFLOPS (default: the limit).
    #[arg(long, value_parser = args::positive, allow_negative_numbers = true)]
    pub request_tflops: Option<f64>,
    /// Guaranteed VRAM (default: the limit).
    #[arg(long, value_parser = args::quota, allow_hyphen_values = true)]
    pub request_vram: Option<u64>,
    /// low, medium, high or critical: who borrows idle capacity first.
    #[arg(long, default_value = "medium")]
    pub qos: String,
    /// A remote vGPU: the daemon runs a worker on it, and `run --vgpu NAME` runs programs
    /// against the worker (hard isolation: they never touch the device).
    #[arg(long)]
    pub remote: bool,
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

async fn connect(socket: &Path) -> Result<api::HypervisorClient<tonic::transport::Channel>> {
    api::connect(socket).await.map_err(|e| {
        anyhow!(
            "cannot reach the node daemon at {}: {e}; is `tensor-fusion node` running? (start it, or point --socket / TF_NODE_SOCKET at its socket)",
            socket.display()
        )
    })
}

fn refused(s: tonic::Status) -> anyhow::Error {
    anyhow!("{}", s.message())
}

/// A vGPU as `vgpu ls --json` prints it.
pub fn vgpu_json(v: &api::Vgpu) -> serde_json::Value {
    serde_json::json!({
        "name": v.name,
        "device": v.device_index,
        "device_uuid": v.device_uuid,
        "qos": v.qos,
        "compute_request": v.compute_request,
        "compute_limit": v.compute_limit,
        "target_share": v.target_share,
        "achieved_share": v.achieved_share,
        "busy_ns": v.busy_ns,
        "busy_at_ns": v.busy_at_ns,
        "active": v.active,
        "vram_request": v.vram_request_bytes,
        "vram_limit": v.vram_limit_bytes,
        "vram_used": v.vram_used_bytes,
        "launches": v.launches,
        "throttled_launches": v.throttled_launches,
        "throttled_ns": v.throttled_ns,
        "attached_pids": v.attached_pids,
        "region": v.region_path,
        "remote_address": v.remote_address,
        "token_file": v.token_file,
        "created_unix_ms": v.created_unix_ms,
    })
}

/// A device as `vgpu devices --json` prints it.
pub fn device_json(d: &api::Device) -> serde_json::Value {
    serde_json::json!({
        "index": d.index,
        "uuid": d.uuid,
        "model": d.model,
        "backend": d.backend,
        "total_memory": d.total_memory_bytes,
        "used_memory": d.used_memory_bytes,
        "fp16_tflops": d.fp16_tflops,
        "utilization": d.utilization,
        "compute_requested": d.compute_requested,
        "vram_requested": d.vram_requested_bytes,
        "vgpus": d.vgpus,
        "temperature_c": d.temperature_c,
        "power_w": d.power_w,
    })
}

fn pct(s: f64) -> String {
    format!("{:.1}%", s * 100.0)
}

/// `tensor-fusion vgpu ...`.
pub fn vgpu(args: VgpuArgs) -> Result<()> {
    let socket = args.socket.unwrap_or_else(api::default_socket);
    let rt = runtime()?;
    rt.block_on(async {
        let mut c = connect(&socket).await?;
        match args.command {
            VgpuCommand::Create(a) => {
                let v = c
                    .create_vgpu(api::CreateVgpuRequest {
                        name: a.name,
                        device: a.device,
                        compute_limit: a.compute_percent.map(|p| p / 100.0),
                        tflops_limit: a.tflops,
                        vram_limit_bytes: a.vram,
                        compute_request: a.request_percent.map(|p| p / 100.0),
                        tflops_request: a.request_tflops,
                        vram_request_bytes: a.request_vram,
                        qos: a.qos,
                        remote: a.remote,
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                println!(
                    "created vGPU {} on device {}: compute {} guaranteed, up to {}; VRAM {} guaranteed, up to {}; QoS {}",
                    v.name,
                    v.device_index,
                    pct(v.compute_request),
                    pct(v.compute_limit),
                    tf_hal::units::format_bytes(v.vram_request_bytes),
                    tf_hal::units::format_bytes(v.vram_limit_bytes),
                    v.qos
                );
            }
            VgpuCommand::Ls { json } => {
                let vs = c
                    .list_vgpus(api::ListVgpusRequest {})
                    .await
                    .map_err(refused)?
                    .into_inner()
                    .vgpus;
                if json {
                    let all: Vec<_> = vs.iter().map(vgpu_json).collect();
                    println!("{}", serde_json::Value::Array(all));
                } else {
                    println!(
                        "{:<16} {:>3} {:<8} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10} {:>8}",
                        "NAME", "DEV", "QOS", "REQUEST", "LIMIT", "TARGET", "ACHIEVED", "VRAM USED",
                        "VRAM LIMIT", "ATTACHED"
                    );
                    for v in &vs {
                        println!(
                            "{:<16} {:>3} {:<8} {:>7} {:>7} {:>7} {:>8} {:>10} {:>10} {:>8}",
                            v.name,
                            v.device_index,
                            v.qos,
                            pct(v.compute_request),
                            pct(v.compute_limit),
                            pct(v.target_share),
                            pct(v.achieved_share),
                            tf_hal::units::format_bytes(v.vram_used_bytes),
                            tf_hal::units::format_bytes(v.vram_limit_bytes),
                            v.attached_pids.len()
                        );
                    }
                }
            }
            VgpuCommand::Rm { name, force } => {
                c.remove_vgpu(api::RemoveVgpuRequest {
                    name: name.clone(),
                    force,
                })
                .await
                .map_err(refused)?;
                println!("removed vGPU {name}");
            }
            VgpuCommand::Devices { json } => {
                let ds = c
                    .list_devices(api::ListDevicesRequest {})
                    .await
                    .map_err(refused)?
                    .into_inner()
                    .devices;
                if json {
                    let all: Vec<_> = ds.iter().map(device_json).collect();
                    println!("{}", serde_json::Value::Array(all));
                } else {
                    for d in &ds {
                        println!(
                            "{} {} {}: {} vGPU(s), {} compute and {} of {} VRAM requested",
                            d.index,
                            d.model,
                            d.uuid,
                            d.vgpus,
                            pct(d.compute_requested),
                            tf_hal::units::format_bytes(d.vram_requested_bytes),
                            tf_hal::units::format_bytes(d.total_memory_bytes)
                        );
                    }
                }
            }
        }
        Ok(())
    })
}

/// Write an update into the front end's limits page: limits (when they changed), pacing, and
/// a heartbeat.
fn apply(page: &LimitsOwner, u: &api::AttachUpdate) {
    let limits = Limits {
        vram_quota: Some(u.vram_quota_bytes).filter(|&q| q > 0),
        compute_share: Some(u.compute_limit).filter(|&s| s > 0.0 && s < 1.0),
    };
    if page.page().limits() != limits {
        page.set_limits(&limits);
    }
    page.set_pacing(
        Pacing {
            interval_ns: u.interval_ns,
            burst_ns: u.burst_ns,
        },
        u.est_launch_ns,
        u.measured_share,
    );
    page.heartbeat(tf_os::now_ns());
}

async fn attach(
    socket: &Path,
    name: &str,
) -> Result<(api::AttachUpdate, tonic::Streaming<api::AttachUpdate>)> {
    let mut c = connect(socket).await?;
    let mut stream = c
        .attach(api::AttachRequest {
            name: name.to_string(),
            pid: std::process::id(),
        })
        .await
        .map_err(refused)?
        .into_inner();
    let first = stream
        .message()
        .await
        .map_err(refused)?
        .ok_or_else(|| anyhow!("the daemon closed the attachment to {name} at once"))?;
    Ok((first, stream))
}

/// Follow the daemon's updates into `page` until `stop`; when the daemon goes away the page
/// keeps the last pacing (limits never fail open) and the front end attaches again as soon as
/// the daemon is back.
async fn follow(
    mut stream: tonic::Streaming<api::AttachUpdate>,
    page: Arc<LimitsOwner>,
    socket: PathBuf,
    name: String,
    stop: Arc<AtomicBool>,
) {
    loop {
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            match tokio::time::timeout(Duration::from_millis(200), stream.message()).await {
                Err(_) => continue, // no update yet: look at `stop` again
                Ok(Ok(Some(u))) => apply(&page, &u),
                Ok(Ok(None)) | Ok(Err(_)) => break,
            }
        }
        tracing::warn!(vgpu = %name, "the node daemon went away: keeping the last limits and pacing until it is back");
        loop {
            if stop.load(Ordering::Acquire) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            match attach(&socket, &name).await {
                Ok((first, s)) => {
                    apply(&page, &first);
                    tracing::info!(vgpu = %name, "attached again");
                    stream = s;
                    break;
                }
                Err(e) => tracing::debug!(error = %e, "the daemon is not back yet"),
            }
        }
    }
}

/// `tensor-fusion run --vgpu NAME -- CMD`: attach to the daemon's vGPU, run the command under
/// it, and keep its limits page following the daemon's pacing until the command ends.
pub fn run_attached(
    name: &str,
    socket: Option<PathBuf>,
    command: &[OsString],
    keep_running: bool,
) -> Result<i32> {
    let socket = socket.unwrap_or_else(api::default_socket);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (first, stream) = rt.block_on(attach(&socket, name))?;
    let session = first
        .session
        .clone()
        .ok_or_else(|| anyhow!("the daemon sent no session for {name}"))?;
    if !session.remote_address.is_empty() && std::env::var_os(tf_hypervisor::WORKER_ENV).is_none() {
        // A remote vGPU: the program is a client of the vGPU's worker (the daemon paces the
        // worker); the attachment is not needed.
        drop(stream);
        rt.shutdown_timeout(Duration::from_millis(100));
        let addr = crate::remote::parse_addr(&session.remote_address).map_err(|e| anyhow!(e))?;
        // The daemon starts the worker with the vGPU: give it a moment to listen.
        if let Some(path) = session.remote_address.strip_prefix("unix://") {
            let t = std::time::Instant::now();
            while std::os::unix::net::UnixStream::connect(path).is_err()
                && t.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        return crate::remote::run(&addr, Some(Path::new(&session.token_file)), command);
    }
    let kind: BackendKind = session
        .backend
        .parse()
        .map_err(|_| anyhow!("the daemon's backend {:?} is unknown here", session.backend))?;
    let vendor: tf_hal::Vendor = session.vendor.parse().unwrap_or(tf_hal::Vendor::Nvidia);
    let limits = Limits {
        vram_quota: Some(first.vram_quota_bytes).filter(|&q| q > 0),
        compute_share: Some(first.compute_limit).filter(|&s| s > 0.0 && s < 1.0),
    };
    let page = Arc::new(
        LimitsOwner::create(&session.device_uuid, session.device_index, &limits)
            .context("creating the limits page")?,
    );
    apply(&page, &first);
    let page_path = page
        .path()
        .ok_or_else(|| anyhow!("the limits page has no path"))?;
    let inject = crate::run::injection(kind)?;
    let env = tf_vgpu_limiter::vgpu::environment(
        Path::new(&session.region_path),
        &page_path,
        &session.device_uuid,
        session.device_index,
        vendor,
        &inject,
        |k| std::env::var_os(k),
    );
    let mut cmd = Command::new(&command[0]);
    cmd.args(&command[1..]).envs(env);
    tracing::info!(vgpu = %name, region = %session.region_path, "starting the command on the daemon's vGPU");
    let (mut child, forwarder) = match crate::run::spawn(&mut cmd, keep_running, &command[0])? {
        Ok(c) => c,
        Err(code) => return Ok(code),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let follower = rt.spawn(follow(
        stream,
        page.clone(),
        socket,
        name.to_string(),
        stop.clone(),
    ));
    let status = child.wait();
    forwarder.stop();
    stop.store(true, Ordering::Release);
    let _ = rt.block_on(follower);
    rt.shutdown_timeout(Duration::from_millis(100));
    let status = status.context("waiting for the command")?;
    Ok(crate::run::exit_code(status))
}
